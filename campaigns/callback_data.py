"""The ``biz_opaque_callback_data`` of a campaign message's call, and reading it back.

WhatsApp echoes it in every status webhook about the call, and the webhook finds the
message by it while the send has not recorded the call's wamid yet. It names the call,
not only the message: ``"<message id>.<attempt>"``, the attempt being the message's
``attempts`` once the call was claimed (each claim counts one, an unclaim gives it back).
A status of an earlier call of the same message (the one 131049 held it for, the one
before "Retry failed"), replayed or late while a newer call is in flight, then names an
attempt that is no longer the message's and is dropped, however recent its time.

The plain ``"<message id>"`` of calls made before the attempt was added (in flight
across a deploy) is still read, with no attempt: the webhook falls back to telling
an earlier call's status by its time. Test sends' ``"test-<campaign id>"`` names no
message. Meta allows up to 512 characters; these are at most 20 + 1 + 10.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from campaigns.validation import BIGINT_MAX

_MAX_ID_DIGITS = len(str(BIGINT_MAX))  # messages.id is a bigint
_MAX_ATTEMPT_DIGITS = 10  # messages.attempts is an integer


@dataclass(frozen=True)
class CallbackData:
    """The message a call was for, and which of its calls (None: the plain old form)."""

    message_id: int
    attempt: int | None


def for_call(message_id: int, attempt: int) -> str:
    """The callback data of a message's call, its ``attempt`` counted by the claim."""
    return f"{message_id}.{attempt}"


def parse(value: Any) -> CallbackData | None:
    """The message and attempt a status's callback data names; None when it names none
    (absent, a test send's, or anything else Disparo never sends)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # as the handler always took it; Meta echoes the text sent
    if not isinstance(value, str) or not value.isascii():
        return None
    message, dot, attempt = value.partition(".")
    message_id = _number(message, _MAX_ID_DIGITS)
    if message_id is None or message_id > BIGINT_MAX:
        return None
    if not dot:
        return CallbackData(message_id, None)
    number = _number(attempt, _MAX_ATTEMPT_DIGITS)
    # Exactly as for_call writes it: a call's attempt is at least 1, without leading zeros.
    if number is None or number < 1 or str(number) != attempt:
        return None
    return CallbackData(message_id, number)


def _number(text: str, max_digits: int) -> int | None:
    return int(text) if 0 < len(text) <= max_digits and text.isdigit() else None
