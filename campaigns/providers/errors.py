"""What to do about a provider error, from Meta's ``error.code`` (never its title).

The codes and their handling follow ARCHITECTURE.md (Providers) and Meta's
error-code reference (see ../shared/notes/whatsapp-cloud-api.md, A5).
"""

from __future__ import annotations

import enum


class ErrorKind(enum.StrEnum):
    RETRY = "retry"  # transient: try again with backoff
    SLOW_RETRY = "slow_retry"  # try again, hours later (per-user marketing cap)
    PERMANENT = "permanent"  # this message will never go: fail it
    PAUSE_CAMPAIGN = "pause_campaign"  # the campaign cannot go on until someone acts
    PAUSE_SENDER = "pause_sender"  # every campaign of this number must stop


RETRY_CODES = frozenset({130429, 131056, 1, 2, 131000, 131016, 131057, 4, 80007})
SLOW_RETRY_CODES = frozenset({131049})
PERMANENT_CODES = frozenset(
    {
        131026,
        131050,
        131047,
        132000,
        132001,
        132005,
        132007,
        132012,
        131008,
        131009,
        100,
        130472,
        131030,
        131052,
        131053,
    }
)
PAUSE_CAMPAIGN_CODES = frozenset({131048, 132015, 132016, 0, 190, 3, 10})
PAUSE_SENDER_CODES = frozenset({368, 131031, 131042})
# Numbers that opted out: the code feeds the suppression list too.
OPT_OUT_CODES = frozenset({131050})


def classify(code: int | None, http_status: int | None) -> ErrorKind:
    """The handling for an error; without a Meta code, the HTTP status decides."""
    if code is not None:
        if code in RETRY_CODES:
            return ErrorKind.RETRY
        if code in SLOW_RETRY_CODES:
            return ErrorKind.SLOW_RETRY
        if code in PERMANENT_CODES:
            return ErrorKind.PERMANENT
        if code in PAUSE_CAMPAIGN_CODES or 200 <= code <= 299:  # auth and permissions
            return ErrorKind.PAUSE_CAMPAIGN
        if code in PAUSE_SENDER_CODES:
            return ErrorKind.PAUSE_SENDER
    if http_status is None or http_status == 429 or http_status >= 500:
        return ErrorKind.RETRY  # unreachable, throttled or failing: transient
    if http_status in (401, 403):
        return ErrorKind.PAUSE_CAMPAIGN
    return ErrorKind.PERMANENT
