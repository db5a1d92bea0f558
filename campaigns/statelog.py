"""One structured log line per message state change, with the job and attempt behind it.

Lines read ``message_state message_id=… campaign_id=… from=… to=… job_id=… attempt=…``
(the job fields when a job made the change): ids, states and error codes only, never a
phone number or a message's text. The job comes from a context variable that the
worker's task middleware sets (``jobs.context.flask_context``), so the domain code
needs no job passed down to it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from contextvars import ContextVar
from enum import Enum

logger = logging.getLogger("campaigns.messages")

# (job id, attempt: 1 for the first run) of the job running in this thread, if any.
current_job: ContextVar[tuple[int, int] | None] = ContextVar("current_job", default=None)


def _text(value: object) -> str:
    return str(value.value if isinstance(value, Enum) else value)


def _log(fields: dict[str, object], detail: dict[str, object]) -> None:
    if not logger.isEnabledFor(logging.INFO):
        return  # two of these a message: build nothing nobody reads
    job = current_job.get()
    if job is not None:
        fields |= {"job_id": job[0], "attempt": job[1]}
    fields |= {key: value for key, value in detail.items() if value is not None}
    logger.info("message_state %s", " ".join(f"{k}={_text(v)}" for k, v in fields.items()))


def moved(message_id: int, campaign_id: int, old: object, new: object, **detail: object) -> None:
    """One message moved from ``old`` to ``new`` (``detail``: an error code, say)."""
    fields = {"message_id": message_id, "campaign_id": campaign_id, "from": old, "to": new}
    _log(fields, detail)


def moved_many(campaign_id: int, old: object, new: object, count: int) -> None:
    """``count`` messages of a campaign moved together (queued by the pump, paused, loaded)."""
    if count:
        _log({"campaign_id": campaign_id, "from": old, "to": new, "count": count}, {})


def moved_each(message_ids: Iterable[int], campaign_id: int, old: object, new: object) -> None:
    """Each of these messages moved from ``old`` to ``new`` (a batch claimed, sent): a line each."""
    if logger.isEnabledFor(logging.INFO):
        for message_id in message_ids:
            moved(message_id, campaign_id, old, new)
