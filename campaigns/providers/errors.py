"""What to do about a provider error, from Meta's ``error.code`` (never its title).

The codes and their handling follow Meta's error-code reference for the Cloud API
(developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes); docs/architecture.md
says what each kind does to a message and its campaign.
"""

from __future__ import annotations

import enum
import re
from typing import Any

from campaigns.i18n import _l

# Disparo's own reasons a sender cannot send (SendError.reason): worded there too.
from campaigns.reasons import SENDER_WITHOUT_ACCESS_TOKEN, SENDER_WITHOUT_PHONE_NUMBER_ID


class ErrorKind(enum.StrEnum):
    RETRY = "retry"  # transient: try again with backoff
    THROTTLED = "throttled"  # this number sends too fast: later, no try spent; it slows
    SLOW_RETRY = "slow_retry"  # held, tried once more a day later (per-user marketing cap)
    # Too many messages to this one recipient: that message waits, without spending a
    # try; unlike THROTTLED, the sender is not slowed (the limit is the pair's, not its).
    PAIR_LIMITED = "pair_limited"
    PERMANENT = "permanent"  # this message will never go: fail it
    PAUSE_CAMPAIGN = "pause_campaign"  # the campaign cannot go on until someone acts
    PAUSE_SENDER = "pause_sender"  # every campaign of this number must stop


THROTTLED_CODES = frozenset({130429})
PAIR_LIMITED_CODES = frozenset({131056})
RETRY_CODES = frozenset({1, 2, 131000, 131016, 131057, 4, 80007})
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
# Meta's permission errors (2xx codes, not HTTP statuses): the app lacks a permission.
PERMISSION_CODES = range(200, 300)
# Numbers that opted out: the code feeds the suppression list too.
OPT_OUT_CODES = frozenset({131050})
# Numbers WhatsApp cannot deliver to: remembered for a while, skipped by later campaigns
# (services/undeliverable.py).
UNDELIVERABLE_CODES = frozenset({131026})
# Disparo's own code for a recipient skipped because its number was undeliverable lately.
UNDELIVERABLE_CODE = "undeliverable"
# Disparo's own codes for a recipient skipped by a campaign's exclusions (exclusions.py):
# another campaign contacted the number within its frequency cap; the number has a
# message in another sending or paused campaign.
FREQUENCY_CAP_CODE = "frequency_cap"
IN_OTHER_CAMPAIGN_CODE = "in_other_campaign"
# Disparo's own code for a message whose sending job failed unexpectedly (maintenance.py).
JOB_FAILED_CODE = "job_failed"
# Disparo's own code for a message whose worker died during its call: sent again.
WORKER_STOPPED_CODE = "worker_stopped"
# Disparo's own codes: the row keeps no text (the code is worded when shown), except
# missing_value, whose text is the names of the variables that had no value.
OWN_CODES = frozenset(
    {"invalid_phone", "suppressed", "duplicate", "missing_value", "erased", UNDELIVERABLE_CODE}
    | {FREQUENCY_CAP_CODE, IN_OTHER_CAMPAIGN_CODE}
    | {JOB_FAILED_CODE, WORKER_STOPPED_CODE}
    | {SENDER_WITHOUT_ACCESS_TOKEN, SENDER_WITHOUT_PHONE_NUMBER_ID}
)


def classify(code: int | None, http_status: int | None) -> ErrorKind:
    """The handling for an error; without a Meta code, the HTTP status decides."""
    if code is not None:
        if code in THROTTLED_CODES:
            return ErrorKind.THROTTLED
        if code in PAIR_LIMITED_CODES:
            return ErrorKind.PAIR_LIMITED
        if code in RETRY_CODES:
            return ErrorKind.RETRY
        if code in SLOW_RETRY_CODES:
            return ErrorKind.SLOW_RETRY
        if code in PERMANENT_CODES:
            return ErrorKind.PERMANENT
        if code in PAUSE_CAMPAIGN_CODES or code in PERMISSION_CODES:  # auth and permissions
            return ErrorKind.PAUSE_CAMPAIGN
        if code in PAUSE_SENDER_CODES:
            return ErrorKind.PAUSE_SENDER
    if http_status == 429:
        return ErrorKind.THROTTLED
    if http_status is None or http_status >= 500:
        return ErrorKind.RETRY  # unreachable or failing: transient
    if http_status in (401, 403):
        return ErrorKind.PAUSE_CAMPAIGN
    return ErrorKind.PERMANENT


# What each code means, in words for the operator (lazy: translated for each reader).
# Keys are codes as message rows keep them: Meta's error.code, or Disparo's own reason
# for a skipped recipient (campaigns/labels.py has their short names).
EXPLANATIONS: dict[str, Any] = {  # lazy strings (_l)
    "130429": _l(
        "Too many messages per second for this number: Disparo slows the sender (down to"
        " half its rate, back to full speed a few minutes after the last such error) and"
        " sends the message again, without counting it as a try."
    ),
    "131056": _l(
        "Too many messages to this one customer lately: Disparo waits a little and tries"
        " again, without counting it as a try and without slowing the sender."
    ),
    "4": _l("The app reached its WhatsApp API call limit; it passes after a few minutes."),
    "80007": _l("The business account reached its API call limit; it passes after a few minutes."),
    "1": _l("WhatsApp reported an unknown, temporary problem."),
    "2": _l("WhatsApp's service was temporarily unavailable."),
    "131000": _l("Something went wrong at WhatsApp; a later try usually works."),
    "131016": _l("WhatsApp's service was overloaded or unavailable for a moment."),
    "131057": _l("The account was in maintenance (a throughput upgrade); it passes in a minute."),
    "131049": _l(
        "Held: WhatsApp's per-user marketing limit (the customer got enough marketing"
        " lately); Disparo tries it once more later (24 h by default) and fails it if it is"
        " held again."
    ),
    "131026": _l(
        "The message could not be delivered: the number may not be on WhatsApp, use an old"
        " app, or have blocked the business. Disparo skips this number in later campaigns"
        " for a while (30 days by default)."
    ),
    "131050": _l("The customer stopped marketing messages; the number is on the opt-out list."),
    "131047": _l("More than 24 hours since the customer last replied; only templates can go."),
    "132000": _l("The number of variables does not match the approved template."),
    "132001": _l("The template does not exist in this language, or is not approved."),
    "132005": _l("The text with its variables filled in is too long."),
    "132007": _l("The filled-in text breaks WhatsApp's formatting rules."),
    "132012": _l("A variable's value does not have the format the template expects."),
    "131008": _l("A required parameter is missing."),
    "131009": _l("A parameter value is not valid."),
    "100": _l("WhatsApp rejected a parameter of the request as invalid."),
    "130472": _l("The customer's number is part of a Meta experiment and gets no such messages."),
    "131030": _l("The number is not among the test sender's allowed recipients."),
    "131052": _l("WhatsApp could not download the message's media."),
    "131053": _l("The message's media could not be uploaded."),
    "131048": _l("WhatsApp limited this number after spam reports; check its quality rating."),
    "132015": _l("WhatsApp paused the template for low quality."),
    "132016": _l("WhatsApp disabled the template after repeated pauses."),
    "0": _l("WhatsApp could not authenticate the request; check the sender's access token."),
    "190": _l("The sender's access token expired or is not valid."),
    "3": _l("The app lacks the capability this call needs."),
    "10": _l("The app lacks a permission needed to send for this number."),
    "368": _l("The number is temporarily blocked for breaking WhatsApp's policies."),
    "131031": _l("The WhatsApp Business Account is locked."),
    "131042": _l("The business account has a payment problem."),
    "invalid_phone": _l(
        "The recipient's phone number (from the ERP or the CSV file) is not a valid number."
    ),
    "suppressed": _l("The number is on the opt-out list."),
    "duplicate": _l("Another customer of this campaign has the same number."),
    "missing_value": _l("A template variable had no value for this customer."),
    "erased": _l("Not sent: the person's data was erased on their request."),
    UNDELIVERABLE_CODE: _l(
        "Not sent: WhatsApp could not deliver to this number lately (131026); Disparo skips"
        " it for a while (30 days by default)."
    ),
    FREQUENCY_CAP_CODE: _l(
        "Not sent: another campaign messaged this number within the campaign's frequency cap."
    ),
    IN_OTHER_CAMPAIGN_CODE: _l(
        "Not sent: the number is in another campaign that is sending or paused."
    ),
    JOB_FAILED_CODE: _l(
        "Disparo's sending job failed on an unexpected error; the message may be retried."
    ),
    WORKER_STOPPED_CODE: _l(
        "Its worker stopped during the call; it is sent again (it may arrive twice)."
    ),
    SENDER_WITHOUT_ACCESS_TOKEN: _l(
        "The sender has no access token: add it on the sender's page, then resume."
    ),
    SENDER_WITHOUT_PHONE_NUMBER_ID: _l(
        "The sender has no phone number id: add it on the sender's page, then resume."
    ),
}
NO_CODE_EXPLANATION = _l("WhatsApp could not be reached, or gave no reason.")
PERMISSION_EXPLANATION = _l("The app lacks a permission for this number or account.")
HTTP_STATUS_EXPLANATION = _l("WhatsApp answered with an HTTP error and no error code.")
UNKNOWN_EXPLANATION = _l("A code Disparo does not know; see Meta's error-code reference.")

KNOWN_CODES = (
    THROTTLED_CODES
    | PAIR_LIMITED_CODES
    | RETRY_CODES
    | SLOW_RETRY_CODES
    | PERMANENT_CODES
    | PAUSE_CAMPAIGN_CODES
    | PAUSE_SENDER_CODES
)


def _number(code: str) -> int | None:
    return int(code) if code.isdigit() else None


def stored_kind(code: str | None) -> ErrorKind | None:
    """The handling of an error as a message row keeps it; None when it cannot be told.

    Rows keep Meta's code, or the HTTP status when Meta gave no code, or nothing when
    WhatsApp could not be reached; Disparo's own reasons (``invalid_phone``…) are words.
    """
    if not code:
        return classify(None, None)
    if code in (JOB_FAILED_CODE, WORKER_STOPPED_CODE):  # Disparo's own, not the message's
        return ErrorKind.RETRY
    if code in (SENDER_WITHOUT_ACCESS_TOKEN, SENDER_WITHOUT_PHONE_NUMBER_ID):
        return ErrorKind.PAUSE_SENDER
    number = _number(code)
    if number is None:
        return ErrorKind.PERMANENT
    if number in KNOWN_CODES or number in PERMISSION_CODES:
        return classify(number, None)
    if 400 <= number <= 599:  # no Meta code lives in this range: it is the HTTP status
        return classify(None, number)
    return None


def is_retryable(code: str | None) -> bool:
    """May a message that failed with this code be sent again?

    Yes unless the error is about the message itself (a bad number, an opt-out, a
    template it does not fit) or unknown. Pausing errors qualify: if their cause
    persists, the engine pauses the campaign again instead of failing the message.
    """
    kind = stored_kind(code)
    return kind is not None and kind is not ErrorKind.PERMANENT


def explain(code: str | None) -> str:
    """A short sentence saying what the code means, in the current reader's language."""
    return str(_explanation(code))


# What the fan-out and earlier versions wrote as missing_value's text, before the names.
_OLD_MISSING_VALUE = re.compile(r"^No value for (.*)\.$")


def detail(code: str | None, text: str | None) -> str | None:
    """What a message row's error text adds to its code: WhatsApp's own text, or the
    names of the variables that had no value; nothing for Disparo's other codes.

    Rows written before Disparo's codes were worded when shown hold an English sentence
    for them: it is not shown (the code's wording is), only missing_value's names."""
    if code not in OWN_CODES:
        return text or None
    if code == "missing_value" and text:
        return _OLD_MISSING_VALUE.sub(r"\1", text)
    return None


def describe(code: str | None, text: str | None) -> str:
    """A message row's error in one text (the CSV's): Disparo's own codes worded in the
    reader's language with their detail, WhatsApp's text as WhatsApp gave it."""
    if code in OWN_CODES:
        extra = detail(code, text)
        return f"{explain(code)} ({extra})" if extra else explain(code)
    return text or explain(code)


def _explanation(code: str | None) -> Any:
    if not code:
        return NO_CODE_EXPLANATION
    if code in EXPLANATIONS:
        return EXPLANATIONS[code]
    number = _number(code)
    if number in PERMISSION_CODES:
        return PERMISSION_EXPLANATION
    if number is not None and 400 <= number <= 599:
        return HTTP_STATUS_EXPLANATION
    return UNKNOWN_EXPLANATION
