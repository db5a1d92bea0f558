"""The words the interface shows for codes: enum values, skip codes, audit actions, job
statuses, segment criteria. A page never shows the raw value (``sending``,
``opted_in_only``); it shows :func:`label`, translated for the reader.

Each label is a lazy string (translated when shown), with a context (msgctxt) naming
what it labels: "Paused" is *Pausada* for a campaign and *Pausado* for a template.
Extraction reads ``_lp(context, text)`` (``-k _lp:1c,2``, see the Makefile).

:func:`label` never raises: a value it has no word for (a status added to
Procrastinate, an old audit action) is shown as it is.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from campaigns import audit
from campaigns.i18n import (
    _l,
    _lp,
    format_date,
    format_money,
    format_number,
    get_locale,
    ngettext,
)
from campaigns.models import (
    CampaignStatus,
    HeaderFormat,
    MessageStatus,
    ParameterFormat,
    Provider,
    Role,
    TemplateCategory,
    TemplateQuality,
    TemplateStatus,
)
from campaigns.providers import errors

Labels = Mapping[str, Any]  # code → lazy string

CAMPAIGN_STATUS: Labels = {
    CampaignStatus.DRAFT: _lp("campaign status", "Draft"),
    CampaignStatus.SCHEDULED: _lp("campaign status", "Scheduled"),
    CampaignStatus.SENDING: _lp("campaign status", "Sending"),
    CampaignStatus.PAUSED: _lp("campaign status", "Paused"),
    CampaignStatus.COMPLETED: _lp("campaign status", "Completed"),
    CampaignStatus.CANCELLED: _lp("campaign status", "Cancelled"),
    CampaignStatus.FAILED: _lp("campaign status", "Failed"),
}
MESSAGE_STATUS: Labels = {
    MessageStatus.PENDING: _lp("message status", "Pending"),
    MessageStatus.QUEUED: _lp("message status", "Queued"),
    MessageStatus.SENDING: _lp("message status", "Sending"),
    MessageStatus.RETRYING: _lp("message status", "Retrying"),
    MessageStatus.SENT: _lp("message status", "Sent"),
    MessageStatus.DELIVERED: _lp("message status", "Delivered"),
    MessageStatus.READ: _lp("message status", "Read"),
    MessageStatus.FAILED: _lp("message status", "Failed"),
    MessageStatus.SKIPPED: _lp("message status", "Skipped"),
    MessageStatus.CANCELLED: _lp("message status", "Cancelled"),
}
TEMPLATE_STATUS: Labels = {
    TemplateStatus.DRAFT: _lp("template status", "Draft"),
    TemplateStatus.PENDING: _lp("template status", "In review"),
    TemplateStatus.APPROVED: _lp("template status", "Approved"),
    TemplateStatus.REJECTED: _lp("template status", "Rejected"),
    TemplateStatus.PAUSED: _lp("template status", "Paused"),
    TemplateStatus.DISABLED: _lp("template status", "Disabled"),
}
TEMPLATE_QUALITY: Labels = {
    TemplateQuality.GREEN: _lp("template quality", "High (green)"),
    TemplateQuality.YELLOW: _lp("template quality", "Medium (yellow)"),
    TemplateQuality.RED: _lp("template quality", "Low (red)"),
    TemplateQuality.UNKNOWN: _lp("template quality", "Not rated yet"),
}
TEMPLATE_CATEGORY: Labels = {
    TemplateCategory.MARKETING: _lp("template category", "Marketing"),
    TemplateCategory.UTILITY: _lp("template category", "Utility"),
    TemplateCategory.AUTHENTICATION: _lp("template category", "Authentication"),
}
PARAMETER_FORMAT: Labels = {
    ParameterFormat.NAMED: _lp("template variables", "Named"),
    ParameterFormat.POSITIONAL: _lp("template variables", "Positional"),
}
ROLE: Labels = {
    Role.VIEWER: _lp("role", "Viewer"),
    Role.SUPERVISOR: _lp("role", "Supervisor"),
    Role.ADMIN: _lp("role", "Admin"),
}
PROVIDER: Labels = {
    Provider.MOCK: _lp("provider", "Mock (development)"),
    Provider.CLOUD_API: _lp("provider", "WhatsApp Cloud API"),
}
# Disparo's own codes on a message (why it was skipped, or failed on Disparo's side);
# Meta's numeric codes have no short word, only their explanation (errors.explain).
ERROR_CODE: Labels = {
    "invalid_phone": _lp("error code", "Invalid number"),
    "suppressed": _lp("error code", "Opted out"),
    "duplicate": _lp("error code", "Duplicate number"),
    "missing_value": _lp("error code", "Missing variable"),
    "erased": _lp("error code", "Data erased"),
    errors.UNDELIVERABLE_CODE: _lp("error code", "Undeliverable lately"),
    errors.FREQUENCY_CAP_CODE: _lp("error code", "Within the frequency cap"),
    errors.IN_OTHER_CAMPAIGN_CODE: _lp("error code", "In another running campaign"),
    errors.JOB_FAILED_CODE: _lp("error code", "Sending job failed"),
    errors.WORKER_STOPPED_CODE: _lp("error code", "Worker stopped"),
    errors.SENDER_WITHOUT_ACCESS_TOKEN: _lp("error code", "Sender without token"),
    errors.SENDER_WITHOUT_PHONE_NUMBER_ID: _lp("error code", "Sender without number id"),
}
SUPPRESSION_SOURCE: Labels = {
    "manual": _lp("opt-out source", "Added by hand"),
    "import": _lp("opt-out source", "CSV import"),
    "opt_out_reply": _lp("opt-out source", "Replied to opt out"),
    "provider": _lp("opt-out source", "Reported by WhatsApp"),
}
AUDIT_ACTION: Labels = {
    "user.create": _lp("audit action", "User created"),
    "user.role_change": _lp("audit action", "Role changed"),
    "user.disable": _lp("audit action", "User disabled"),
    "user.enable": _lp("audit action", "User enabled"),
    "user.password_reset": _lp("audit action", "Password reset"),
    "api_token.create": _lp("audit action", "API token created"),
    "api_token.revoke": _lp("audit action", "API token revoked"),
    "sender.create": _lp("audit action", "Sender created"),
    "sender.update": _lp("audit action", "Sender changed"),
    "suppression.add": _lp("audit action", "Opt-out added"),
    "suppression.remove": _lp("audit action", "Opt-out removed"),
    "suppression.import": _lp("audit action", "Opt-outs imported"),
    "settings.change": _lp("audit action", "Limits changed"),
    "message_rate.create": _lp("audit action", "Message rate added"),
    "message_rate.update": _lp("audit action", "Message rate changed"),
    "message_rate.delete": _lp("audit action", "Message rate deleted"),
    "campaign_defaults.update": _lp("audit action", "Campaign defaults changed"),
    "data.erase": _lp("audit action", "Personal data erased"),
}
# Who acted, when it was not a user (audit.current_actor); "cli:<OS user>" stays as it is.
AUDIT_ACTOR: Labels = {
    audit.SYSTEM: _lp("audit actor", "System"),
    "anonymous": _lp("audit actor", "Anonymous"),
    "cli": _lp("audit actor", "Command line"),
}
AUDIT_TARGET: Labels = {
    "user": _lp("audit target", "User"),
    "api_token": _lp("audit target", "API token"),
    "sender": _lp("audit target", "Sender"),
    "suppression": _lp("audit target", "Opt-out"),
    "phone": _lp("audit target", "Phone number"),
    "message_rate": _lp("audit target", "Message rate"),
    "campaign_defaults": _lp("audit target", "Campaign defaults"),
}
# The keys of an audit event's details (and the secrets named in credentials_*).
AUDIT_DETAIL: Labels = {
    "role": _lp("audit detail", "Role"),
    "user_id": _lp("audit detail", "User"),
    "name": _lp("audit detail", "Name"),
    "provider": _lp("audit detail", "Provider"),
    "phone_number_id": _lp("audit detail", "Phone number id"),
    "display_phone_number": _lp("audit detail", "Display phone number"),
    "waba_id": _lp("audit detail", "WABA id"),
    "business_id": _lp("audit detail", "Business portfolio id"),
    "messaging_limit": _lp("audit detail", "Messaging limit (users a day)"),
    "messaging_limit_overridden": _lp("audit detail", "Messaging limit set by an admin"),
    "rate_limit_per_minute": _lp("audit detail", "Messages per minute"),
    "min_interval_ms": _lp("audit detail", "Minimum gap between messages (ms)"),
    "webhook_verify_token": _lp("audit detail", "Webhook verify token"),
    "access_token": _lp("audit detail", "Access token"),
    "app_secret": _lp("audit detail", "App secret"),
    "credentials_set": _lp("audit detail", "Credentials set"),
    "credentials_replaced": _lp("audit detail", "Credentials replaced"),
    "campaign_rate_limit_per_minute": _lp("audit detail", "Campaign messages per minute"),
    "api_rate_limit_per_minute": _lp("audit detail", "API requests per minute"),
    "source": _lp("audit detail", "Source"),
    "numbers": _lp("audit detail", "Numbers read"),
    "added": _lp("audit detail", "Added"),
    "invalid": _lp("audit detail", "Invalid"),
    "category": _lp("audit detail", "Category"),
    "country": _lp("audit detail", "Country"),
    "currency": _lp("audit detail", "Currency"),
    "amount": _lp("audit detail", "Price per message"),
    "effective_from": _lp("audit detail", "In force from"),
    "frequency_cap_days": _lp("audit detail", "Frequency cap (days)"),
    "exclude_running": _lp("audit detail", "Leave out numbers in running campaigns"),
    "send_window": _lp("audit detail", "Sending window"),
    "phone_last4": _lp("audit detail", "Last digits"),
    "phone_hash_prefix": _lp("audit detail", "Hash starts with"),
    "messages": _lp("audit detail", "Messages"),
    "campaigns": _lp("audit detail", "Campaigns"),
    "cancelled": _lp("audit detail", "Cancelled"),
    "opt_out_kept_as_hash": _lp("audit detail", "Opt-out kept as a hash"),
    "undeliverable_deleted": _lp("audit detail", "Undeliverable number record deleted"),
    "contact_history_deleted": _lp("audit detail", "Contact history record deleted"),
    "activity_entries": _lp("audit detail", "Activity entries"),
    "audience_rows": _lp("audit detail", "Rows of uploaded audiences deleted"),
}
# Procrastinate's job statuses (procrastinate.jobs.Status), as the queue monitor shows them.
JOB_STATUS: Labels = {
    "todo": _lp("job status", "To do"),
    "doing": _lp("job status", "Running"),
    "succeeded": _lp("job status", "Succeeded"),
    "failed": _lp("job status", "Failed"),
    "cancelled": _lp("job status", "Cancelled"),
    "aborting": _lp("job status", "Aborting"),
    "aborted": _lp("job status", "Aborted"),
}
# A campaign's audience criteria (erp.SEGMENT_KEYS), in the order the campaign page lists them.
SEGMENT_KEY: Labels = {
    "city": _lp("audience criterion", "City"),
    "state": _lp("audience criterion", "State"),
    "tags": _lp("audience criterion", "Tags (any of)"),
    "min_total_spent": _lp("audience criterion", "Minimum total spent"),
    "last_purchase_within_days": _lp("audience criterion", "Last purchase"),
    "max_audience": _lp("audience criterion", "At most (pilot wave)"),
    "opted_in_only": _lp("audience criterion", "Only customers who opted in"),
}
# The ERP's customer fields a template variable can be filled from (validation.CUSTOMER_FIELDS).
CUSTOMER_FIELD: Labels = {
    "first_name": _lp("customer field", "First name"),
    "name": _lp("customer field", "Name"),
    "phone": _lp("customer field", "Phone"),
    "email": _lp("customer field", "Email"),
    "city": _lp("customer field", "City"),
    "state": _lp("customer field", "State"),
    "tags": _lp("customer field", "Tags"),
    "total_spent": _lp("customer field", "Total spent"),
    "last_purchase_at": _lp("customer field", "Last purchase"),
    "id": _lp("customer field", "Customer id"),
    "language": _lp("customer field", "Language"),
}
# Why Meta rejected a template (its rejected_reason, kept as Meta sent it).
TEMPLATE_REJECTION: Labels = {
    "ABUSIVE_CONTENT": _lp("template rejection", "Meta found the content abusive."),
    "INVALID_FORMAT": _lp(
        "template rejection", "The format is not valid (variables, length or characters)."
    ),
    "PROMOTIONAL": _lp("template rejection", "The content is promotional for the category chosen."),
    "TAG_CONTENT_MISMATCH": _lp(
        "template rejection", "The content does not match the category chosen."
    ),
    "INCORRECT_CATEGORY": _lp("template rejection", "The category chosen is not the right one."),
    "SCAM": _lp("template rejection", "Meta judged the content a scam."),
    "NONE": _lp("template rejection", "Meta gave no reason."),
    # Not Meta's: Disparo's word for a template gone from its WABA (template_import.py).
    "DELETED": _lp("template rejection", "Deleted in WhatsApp Manager."),
}
# A template's header kinds (HeaderFormat) and button kinds (Meta's button types).
HEADER_FORMAT: Labels = {
    "TEXT": _lp("header format", "Text"),
    "IMAGE": _lp("header format", "Image"),
    "VIDEO": _lp("header format", "Video"),
    "DOCUMENT": _lp("header format", "Document"),
    "LOCATION": _lp("header format", "Location"),
}
BUTTON_KIND: Labels = {
    "QUICK_REPLY": _lp("button kind", "Quick reply"),
    "URL": _lp("button kind", "Link"),
    "PHONE_NUMBER": _lp("button kind", "Call"),
    "COPY_CODE": _lp("button kind", "Copy code"),
}
YES = _l("Yes")
NO = _l("No")

KINDS: dict[str, Labels] = {
    "campaign_status": CAMPAIGN_STATUS,
    "message_status": MESSAGE_STATUS,
    "template_status": TEMPLATE_STATUS,
    "template_category": TEMPLATE_CATEGORY,
    "template_quality": TEMPLATE_QUALITY,
    "parameter_format": PARAMETER_FORMAT,
    "role": ROLE,
    "provider": PROVIDER,
    "error_code": ERROR_CODE,
    "suppression_source": SUPPRESSION_SOURCE,
    "audit_action": AUDIT_ACTION,
    "audit_actor": AUDIT_ACTOR,
    "audit_target": AUDIT_TARGET,
    "audit_detail": AUDIT_DETAIL,
    "job_status": JOB_STATUS,
    "segment_key": SEGMENT_KEY,
    "customer_field": CUSTOMER_FIELD,
    "template_rejection": TEMPLATE_REJECTION,
    "header_format": HEADER_FORMAT,
    "button_kind": BUTTON_KIND,
}
ENUM_KINDS: dict[type[enum.Enum], str] = {
    CampaignStatus: "campaign_status",
    MessageStatus: "message_status",
    TemplateStatus: "template_status",
    TemplateCategory: "template_category",
    TemplateQuality: "template_quality",
    ParameterFormat: "parameter_format",
    Role: "role",
    Provider: "provider",
    HeaderFormat: "header_format",
}
EMPTY = "—"


def _raw(value: Any) -> str:
    return str(value.value if isinstance(value, enum.Enum) else value)


def label(value: Any, kind: str | None = None) -> str:
    """The word for ``value``, translated now: an enum member by its type, anything else
    by ``kind`` (a key of :data:`KINDS`); a boolean is Yes/No and None a dash. A value
    with no word (or an unknown kind) is shown as it is; this never raises."""
    if value is None:
        return EMPTY
    if isinstance(value, bool):
        return str(YES if value else NO)
    if kind is None and isinstance(value, enum.Enum):
        kind = ENUM_KINDS.get(type(value))
    table = KINDS.get(kind or "", {})
    try:
        text = table.get(value)
    except TypeError:  # unhashable (a list from a JSON column)
        text = None
    return _raw(value) if text is None else str(text)


def label_for(kind: str, value: Any) -> str:
    """``label(value, kind)``, kind first: ``label_for("job_status", "todo")``."""
    return label(value, kind)


def explain(code: str | None) -> str:
    """What an error code on a message means (Meta's or Disparo's), translated now."""
    return errors.explain(code)


def weekday_name(day: int) -> str:
    """A day of the week (0 Monday ... 6 Sunday), abbreviated, in the reader's language."""
    locale = get_locale()
    names = locale.days["format"]["abbreviated"] if locale is not None else None
    return str(names[day]) if names and day in names else str(day)


def window_words(window: Mapping[str, Any] | None) -> str:
    """A sending window in words: "09:00 to 20:00, Mon, Tue" (None: any time)."""
    if not window:
        return str(_l("Any time"))
    days = ", ".join(weekday_name(day) for day in window.get("days") or [] if isinstance(day, int))
    return str(_l("%(start)s to %(end)s, %(days)s")) % {
        "start": window.get("start"),
        "end": window.get("end"),
        "days": days,
    }


def _number(value: Any) -> str:
    if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        try:
            return format_number(value)
        except (ValueError, ArithmeticError):
            pass
    return str(value)


def _exact_number(value: Any) -> str:
    try:
        return format_number(Decimal(str(value)), exact=True)
    except (InvalidOperation, ValueError, ArithmeticError):
        return str(value)


def _iso_date(value: Any) -> str:
    try:
        return format_date(date.fromisoformat(str(value)))
    except ValueError:
        return str(value)


def _segment_value(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return label(value)
    if key == "min_total_spent" and not isinstance(value, bool):
        try:
            return format_money(Decimal(str(value)))
        except (InvalidOperation, ValueError, ArithmeticError):
            return str(value)
    if key == "last_purchase_within_days" and isinstance(value, int):
        # Flask-Babel's ngettext fills %(num)s itself, unformatted: the count goes as %(n)s.
        days = format_number(value)
        return ngettext("within the last %(n)s day", "within the last %(n)s days", value, n=days)
    if isinstance(value, list | tuple):
        return ", ".join(str(item) for item in value)
    return _number(value)


def segment_facts(segment: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """A campaign's audience criteria as (criterion, value) in words, in the form's order
    (criteria the ERP no longer knows come last, as stored)."""
    if not isinstance(segment, Mapping):
        return []
    order = list(SEGMENT_KEY)
    keys = sorted(segment, key=lambda k: (order.index(k) if k in order else len(order), str(k)))
    return [(label_for("segment_key", key), _segment_value(str(key), segment[key])) for key in keys]


def _detail_items(values: Iterable[Any]) -> str:
    return ", ".join(label_for("audit_detail", item) for item in values)


def audit_value(value: Any, key: str) -> str:
    """One value of an audit event's details (under ``key``), in words: a role's or a
    provider's label, a local number, Yes/No, the labels of the secrets replaced
    (``{{ value|audit_value(key) }}``)."""
    key = str(key)
    if value is None or isinstance(value, bool):
        return label(value)
    if key == "role":
        return label_for("role", value)
    if key == "provider":
        return label_for("provider", value)
    if key == "source":
        return label_for("suppression_source", value)
    if key == "category":
        return label_for("template_category", value)
    if key == "amount":  # a price per message, every decimal kept (services/pricing)
        return _exact_number(value)
    if key == "effective_from":
        return _iso_date(value)
    if key == "send_window" and isinstance(value, Mapping):
        return window_words(value)
    if key in ("credentials_set", "credentials_replaced") and isinstance(value, list):
        return _detail_items(value)
    if isinstance(value, list | tuple):
        return ", ".join(str(item) for item in value)
    if key.endswith("_id") or key == "phone_last4" or key == "phone_hash_prefix":
        return str(value)  # an identifier, not a quantity: no thousands separator
    return _number(value)
