"""What Disparo says happened, kept as a code and its parameters and worded when shown.

Nothing the app stores is a sentence in one language. A campaign's status reason,
the detail of an activity entry and a notification are stored as a stable code of
this catalogue plus its parameters (JSONB); :func:`render` words them in the
reader's language when a page shows them (the request's locale), a job writing to
one person wraps itself in ``i18n.for_user``, and the JSON API gives English
(:func:`render_english`) next to the code itself.

A code is stable: rename or drop one only with a migration that converts the rows
(``migrations/versions/*_0014_reason_codes.py`` has the first catalogue's English
formats). Parameters are data, never words: counts, ids, a campaign's name, a
masked phone, an ISO timestamp, and the words WhatsApp or the ERP gave (provider
text, shown as it came). A reason inside another (a notification's "was paused:
…") is a nested ``{"code": …, "params": …}``.

:func:`render` never raises: an unknown code gives a generic text with the code, a
missing parameter shows as "?", and a broken translation falls back to the code.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from flask_babel import LazyString

from campaigns.i18n import _, _l, force_locale, format_datetime, format_number

logger = logging.getLogger(__name__)

# -- a campaign's status reason (why it is paused or failed); also an activity's detail
FAILURE_RATE = "failure_rate"
WHATSAPP_STOP = "whatsapp_stop"
TEMPLATE_DISABLED = "template_disabled"
TEMPLATE_PAUSED = "template_paused"  # message_template_status_update said PAUSED
TEMPLATE_DELETED = "template_deleted"  # gone from its WABA (import or webhook)
# Its template changed since it was scheduled: {"needs": the variables or the header media}
TEMPLATE_UNREADY = "template_unready"
ERP_FAILED = "erp_failed"  # rows before the ERP's problems had codes: {"message": text}
ERP_AUDIENCE_FAILED = "erp_audience_failed"  # {"problem": one of the ERP_* below, nested}
# -- what went wrong with the ERP (erp.ErpError.reason): shown where it happened, and
# nested in a campaign's failure
ERP_TIMEOUT = "erp_timeout"
ERP_UNREACHABLE = "erp_unreachable"
ERP_REFUSED = "erp_refused"
ERP_FAILED_STATUS = "erp_failed_status"
ERP_FAILED_SAID = "erp_failed_said"
ERP_NOT_JSON = "erp_not_json"
ERP_NO_COUNT = "erp_no_count"
ERP_NO_CUSTOMERS = "erp_no_customers"
ERP_BAD_CURSOR = "erp_bad_cursor"
ERP_SAME_CURSOR = "erp_same_cursor"
ERP_NO_TAGS = "erp_no_tags"
# providers' SendError.reason, also a message row's error code (providers/errors.py)
SENDER_WITHOUT_ACCESS_TOKEN = "sender_without_access_token"
SENDER_WITHOUT_PHONE_NUMBER_ID = "sender_without_phone_number_id"
# -- an activity entry's detail
SCHEDULED_TIME_REACHED = "scheduled_time_reached"
SENT_NOW = "sent_now"
SCHEDULED_FOR = "scheduled_for"
DUPLICATED_FROM = "duplicated_from"
DUPLICATED_AS = "duplicated_as"
TEST_PHONE = "test_phone"
RETRIED_MESSAGES = "retried_messages"
RETENTION_REACHED = "retention_reached"
COMMAND_LINE = "command_line"  # {"actor": "cli:<OS user>"}: done by a `flask` command
RUN_OF = "run_of"  # a recurring campaign's run: {"id": its series}
RUN_MADE = "run_made"  # on the series: {"id": the run, "number": its number}
# On the series: {"at": the occurrence, "id", "number": the run that had not finished}
RUN_SKIPPED = "run_skipped"
# -- a notification
CAMPAIGN_STARTED = "campaign_started"
CAMPAIGN_COMPLETED = "campaign_completed"
CAMPAIGN_PAUSED = "campaign_paused"
CAMPAIGN_FAILED = "campaign_failed"
CAMPAIGN_PAUSED_BY_HAND = "campaign_paused_by_hand"
CAMPAIGN_CANCELLED = "campaign_cancelled"
TEMPLATE_APPROVED = "template_approved"
TEMPLATE_REJECTED = "template_rejected"
TEMPLATE_REJECTED_WHY = "template_rejected_why"
ACCOUNT_QUALITY_DROPPED = "account_quality_dropped"
TEMPLATE_QUALITY_RED = "template_quality_red"
RECURRING_RUN_SKIPPED = "recurring_run_skipped"  # {"name", "at": the occurrence skipped}
# -- words kept as they came, shown verbatim in every language (rows the migration could
# not read back into a code; tests' own notices)
TEXT = "text"

CODE_WIDTH = 40  # the code columns' width
MISSING = "?"
NESTED_DEPTH = 3


@dataclass(frozen=True)
class Wording:
    """A code's English format (translated when shown) and how its parameters are shown."""

    text: LazyString
    numbers: tuple[str, ...] = ()  # counts: 1,000 / 1.000 in the reader's locale
    datetimes: tuple[str, ...] = ()  # ISO timestamps: in the reader's zone and format
    nested: tuple[str, ...] = ()  # reasons inside this one: {"code": …, "params": …}


WORDINGS: dict[str, Wording] = {
    FAILURE_RATE: Wording(
        _l("Paused: %(failed)s of the last %(n)s messages failed, more than %(pct)s %% allowed."),
        numbers=("failed", "n", "pct"),
    ),
    # code: WhatsApp's error code (an id: never grouped); message: WhatsApp's own words.
    WHATSAPP_STOP: Wording(_l("Paused by WhatsApp's answer %(code)s: %(message)s")),
    TEMPLATE_DISABLED: Wording(_l("WhatsApp disabled the template (132016).")),
    TEMPLATE_PAUSED: Wording(_l("WhatsApp paused the template. Resume once it is approved again.")),
    TEMPLATE_DELETED: Wording(_l("The template was deleted in WhatsApp Manager.")),
    TEMPLATE_UNREADY: Wording(
        _l(
            "The template changed since the campaign was scheduled and now needs %(needs)s:"
            " duplicate the campaign and give it."
        )
    ),
    ERP_FAILED: Wording(_l("The ERP could not give the audience: %(message)s")),
    ERP_AUDIENCE_FAILED: Wording(
        _l("The ERP could not give the audience: %(message)s"), nested=("message",)
    ),
    # url and error are the ERP's address (credentials masked) and requests' own words.
    ERP_TIMEOUT: Wording(_l("The ERP did not answer in time (%(url)s).")),
    ERP_UNREACHABLE: Wording(_l("Could not reach the ERP at %(url)s: %(error)s")),
    ERP_REFUSED: Wording(_l("The ERP refused the request (%(status)s).")),
    ERP_FAILED_STATUS: Wording(_l("The ERP failed (%(status)s).")),
    ERP_FAILED_SAID: Wording(_l("The ERP failed (%(status)s): %(message)s")),
    ERP_NOT_JSON: Wording(_l("The ERP answered with something that is not JSON.")),
    ERP_NO_COUNT: Wording(_l("The ERP's count answer has no count.")),
    ERP_NO_CUSTOMERS: Wording(_l("The ERP's page has no list of customers.")),
    ERP_BAD_CURSOR: Wording(_l("The ERP's next cursor is not a string.")),
    ERP_SAME_CURSOR: Wording(_l("The ERP returned the same cursor twice.")),
    ERP_NO_TAGS: Wording(_l("The ERP's tags answer has no list of tags.")),
    SENDER_WITHOUT_ACCESS_TOKEN: Wording(
        _l("Paused: the sender has no access token. Add it on the sender's page, then resume.")
    ),
    SENDER_WITHOUT_PHONE_NUMBER_ID: Wording(
        _l("Paused: the sender has no phone number id. Add it on the sender's page, then resume.")
    ),
    SCHEDULED_TIME_REACHED: Wording(_l("scheduled time reached")),
    SENT_NOW: Wording(_l("sent now")),
    SCHEDULED_FOR: Wording(_l("for %(at)s"), datetimes=("at",)),
    DUPLICATED_FROM: Wording(_l("duplicated from #%(id)s")),
    DUPLICATED_AS: Wording(_l("as #%(id)s")),
    TEST_PHONE: Wording(_l("to %(phone)s")),
    RETRIED_MESSAGES: Wording(_l("messages: %(n)s; error codes: %(codes)s"), numbers=("n",)),
    RETENTION_REACHED: Wording(_l("retention period reached")),
    COMMAND_LINE: Wording(_l("from the command line (%(actor)s)")),
    RUN_OF: Wording(_l("a run of the repeating campaign #%(id)s")),
    RUN_MADE: Wording(_l("run %(number)s, campaign #%(id)s")),
    RUN_SKIPPED: Wording(
        _l("the run due %(at)s: run %(number)s (campaign #%(id)s) had not finished"),
        datetimes=("at",),
    ),
    CAMPAIGN_STARTED: Wording(_l("Campaign “%(name)s” started sending.")),
    CAMPAIGN_COMPLETED: Wording(
        _l("Campaign “%(name)s” completed: %(sent)s sent, %(failed)s failed."),
        numbers=("sent", "failed"),
    ),
    CAMPAIGN_PAUSED: Wording(_l("Campaign “%(name)s” was paused: %(reason)s"), nested=("reason",)),
    CAMPAIGN_FAILED: Wording(_l("Campaign “%(name)s” failed: %(reason)s"), nested=("reason",)),
    CAMPAIGN_PAUSED_BY_HAND: Wording(
        _l("Campaign “%(name)s” was paused by an operator; it sends again once resumed.")
    ),
    CAMPAIGN_CANCELLED: Wording(
        _l("Campaign “%(name)s” was cancelled: %(sent)s sent, %(cancelled)s not sent."),
        numbers=("sent", "cancelled"),
    ),
    # name: the template's name; language: its language code (pt_BR), both as WhatsApp has them.
    TEMPLATE_APPROVED: Wording(
        _l("Template “%(name)s” (%(language)s) was approved: campaigns can use it now.")
    ),
    TEMPLATE_REJECTED: Wording(_l("Template “%(name)s” (%(language)s) was rejected.")),
    # reason: WhatsApp's own words (INVALID_FORMAT…), shown as they came.
    TEMPLATE_REJECTED_WHY: Wording(
        _l("Template “%(name)s” (%(language)s) was rejected: %(reason)s")
    ),
    # name: the sender's name; before, quality: Meta's ratings (GREEN, YELLOW, RED, UNKNOWN).
    ACCOUNT_QUALITY_DROPPED: Wording(
        _l(
            "Sender “%(name)s”: WhatsApp lowered its quality rating from %(before)s to"
            " %(quality)s; its messaging limit may drop if this goes on."
        )
    ),
    TEMPLATE_QUALITY_RED: Wording(
        _l(
            "Template “%(name)s” (%(language)s) dropped to low quality (red):"
            " WhatsApp may pause it."
        )
    ),
    RECURRING_RUN_SKIPPED: Wording(
        _l(
            "Repeating campaign “%(name)s” skipped its run due %(at)s: the previous run"
            " had not finished."
        ),
        datetimes=("at",),
    ),
}

# What was done to a campaign (CampaignActivity.action), said of who did it: an email,
# or "Disparo" for the system.
ACTIONS: dict[str, LazyString] = {
    "created": _l("%(who)s created the campaign"),
    "updated": _l("%(who)s edited the campaign"),
    "scheduled": _l("%(who)s scheduled the campaign"),
    "unscheduled": _l("%(who)s unscheduled the campaign"),
    "duplicated": _l("%(who)s duplicated the campaign"),
    "started": _l("%(who)s started sending"),
    "paused": _l("%(who)s paused the campaign"),
    "resumed": _l("%(who)s resumed the campaign"),
    "cancelled": _l("%(who)s cancelled the campaign"),
    "completed": _l("Sending completed"),
    "failed": _l("The campaign failed"),
    "test_sent": _l("%(who)s sent a test message"),
    "retried_failed": _l("%(who)s sent the failed messages again"),
    "data_erased": _l("%(who)s erased the recipients' personal data"),
    "run_made": _l("%(who)s started a run of the campaign"),
    "run_skipped": _l("%(who)s skipped a run of the campaign"),
}


@dataclass(frozen=True)
class Reason:
    """A code of this catalogue and its parameters: what a row stores."""

    code: str
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.code) > CODE_WIDTH:
            raise ValueError(f"reason code {self.code!r} is longer than {CODE_WIDTH}")

    def as_json(self) -> dict[str, Any]:
        """The nested form, for a reason inside another's parameters."""
        return {"code": self.code, "params": dict(self.params)}


def verbatim(text: str) -> Reason:
    """Words shown as they are, in every language (not for Disparo's own sentences)."""
    return Reason(TEXT, {"text": text})


class _Values(dict[str, str]):
    """Parameters as shown; a missing one is "?" rather than a KeyError."""

    def __missing__(self, key: str) -> str:
        return MISSING


def _shown(value: Any) -> str:
    if value is None:
        return "—"
    return str(value)


def _number(value: Any) -> str:
    if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        return format_number(value)
    return _shown(value)


def _datetime(value: Any) -> str:
    if isinstance(value, str):
        try:
            at = datetime.fromisoformat(value)
        except ValueError:
            return value
        if at.tzinfo is not None:
            return format_datetime(at)
    return _shown(value)


def _nested(value: Any, depth: int) -> str:
    if isinstance(value, Mapping) and isinstance(value.get("code"), str):
        return _render(value["code"], value.get("params"), depth + 1)
    return _shown(value)


def _values(wording: Wording, params: Mapping[str, Any], depth: int) -> _Values:
    values = _Values()
    for name, value in params.items():
        if name in wording.numbers:
            values[name] = _number(value)
        elif name in wording.datetimes:
            values[name] = _datetime(value)
        elif name in wording.nested:
            values[name] = _nested(value, depth)
        else:
            values[name] = _shown(value)
    return values


def _unknown(code: str) -> str:
    try:
        return _("Disparo has no words for this (code %(code)s).") % {"code": code}
    except (KeyError, TypeError, ValueError):  # a broken translation of the fallback itself
        return code


def _render(code: str, params: Any, depth: int) -> str:
    values = params if isinstance(params, Mapping) else {}
    if code == TEXT:
        return _shown(values.get("text", ""))
    wording = WORDINGS.get(code)
    if wording is None or depth > NESTED_DEPTH:
        logger.warning("no wording for reason code %r", code)
        return _unknown(code)
    try:
        return str(wording.text) % _values(wording, values, depth)
    except (KeyError, TypeError, ValueError) as error:  # a translation that breaks a placeholder
        logger.warning("reason %r could not be worded: %s", code, error)
        return _unknown(code)


def render(code: str | None, params: Mapping[str, Any] | None = None) -> str:
    """The code and its parameters in the reader's language ("" for no code); never raises."""
    if not code:
        return ""
    return _render(code, params, 0)


def render_or_none(code: str | None, params: Mapping[str, Any] | None = None) -> str | None:
    """As :func:`render`, but None when there is no code (a column that may be empty)."""
    return render(code, params) if code else None


def render_english(code: str | None, params: Mapping[str, Any] | None = None) -> str | None:
    """The English text, as the JSON API gives it whatever the reader's language."""
    if not code:
        return None
    with force_locale("en"):
        return render(code, params)


def action_text(action: str, who: str | None) -> str:
    """An activity entry's action said of who did it ("ana@… paused the campaign");
    ``who`` is None for the system (Disparo)."""
    name = who or _("Disparo")
    label = ACTIONS.get(action)
    try:
        if label is not None:
            return str(label) % {"who": name}
    except (KeyError, TypeError, ValueError) as error:
        logger.warning("action %r could not be worded: %s", action, error)
    return _("%(who)s: %(action)s") % {"who": name, "action": action}
