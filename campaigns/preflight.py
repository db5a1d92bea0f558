"""The pre-flight check: what a campaign will do, and what stands in its way, before it is
sent.

Run on demand (the campaign page, ``GET /api/v1/campaigns/{id}/preflight``) and by
"Schedule" and "Send now" (services/campaigns.py), it reads the template (approved? its
quality), the sender (active and connected? the number's quality, the portfolio's
24-hour messaging limit), the audience (an estimate from the ERP's count before the
fan-out, exact after it: the messages still to send), how much of the 24-hour budget it
takes and over how many days (waves.py), how long it takes at the limits, and what Meta
will charge for it (pricing.py, the rates admins keep on the Settings page).

What it finds is *blocking* (the campaign cannot go: refused, whatever the operator says),
a *warning that needs confirmation* (exactly three: the budget overrun, the number's
quality RED, the template's quality RED: an operator must say they mean it), or a
*note* (told, nothing to confirm). Findings are codes and parameters, worded when shown,
in the reader's language (English in the API).

No transaction is kept open while the ERP is asked for its count.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from app import db
from campaigns import counters, erp, exclusions, pricing, ratelimit, reasons, send_windows, waves
from campaigns.clock import database_now
from campaigns.config import ConfigError
from campaigns.i18n import _l, force_locale, format_datetime, format_number
from campaigns.labels import label
from campaigns.models import Campaign, Provider, TemplateStatus

# A count of a large segment takes the ERP a while; a page waits for it at most this long.
ERP_TIMEOUT = (3.05, 10.0)

# The warnings an operator must confirm (the API's contract: exactly these three).
BUDGET_OVERRUN = "budget_overrun"
NUMBER_QUALITY_RED = "number_quality_red"
TEMPLATE_QUALITY_RED = "template_quality_red"
NEEDS_CONFIRMATION = frozenset({BUDGET_OVERRUN, NUMBER_QUALITY_RED, TEMPLATE_QUALITY_RED})

WORDS: dict[str, Any] = {
    # blocking
    "template_not_approved": _l(
        "The template is not approved by WhatsApp (its status is “%(status)s”)."
    ),
    "sender_inactive": _l("The sender is switched off."),
    "sender_not_connected": _l(
        "The sender is not connected to WhatsApp: it has no phone number id or access token."
    ),
    "no_budget": _l(
        "The portfolio's 24-hour messaging limit, less the safety margin, allows no"
        " recipient at all."
    ),
    # confirmation
    BUDGET_OVERRUN: _l(
        "The campaign needs more than the 24-hour messaging limit has left. Recipients"
        " today: %(today)s; the remaining %(rest)s from %(rest_from)s; %(days)s days in all."
    ),
    NUMBER_QUALITY_RED: _l(
        "WhatsApp rates this number's quality RED: more complaints may get it restricted."
    ),
    TEMPLATE_QUALITY_RED: _l(
        "WhatsApp rates this template's quality RED: Meta may pause or disable it."
    ),
    # notes
    "number_quality_yellow": _l("WhatsApp rates this number's quality YELLOW."),
    "template_quality_yellow": _l("WhatsApp rates this template's quality YELLOW."),
    "messaging_limit_unknown": _l(
        "WhatsApp has not said this number's messaging limit yet: no 24-hour budget is"
        " applied until it does."
    ),
    "audience_estimated": _l(
        "The audience is the ERP's count: opted-out, undeliverable, invalid and repeated"
        " numbers are left out when it is loaded."
    ),
    "audience_unknown": _l("The ERP could not be asked for the audience's size: %(error)s"),
    "exclusions": _l(
        "Left out when the audience is loaded: %(suppressed)s opted out, %(undeliverable)s"
        " undeliverable lately, %(capped)s messaged within the frequency cap, %(running)s in"
        " another running campaign; %(remaining)s remain."
    ),
    "exclusions_estimated": _l(
        "Left out when the audience is loaded, estimated from its first %(sampled)s"
        " customers: %(suppressed)s opted out, %(undeliverable)s undeliverable lately,"
        " %(capped)s messaged within the frequency cap, %(running)s in another running"
        " campaign; about %(remaining)s remain."
    ),
    "unpriced": _l(
        "Recipients in countries without a rate (%(countries)s), left out of the cost"
        " estimate: %(count)s."
    ),
    "list_price": _l("The estimate is Meta's list price; a provider's fee is extra."),
    "in_progress": _l("Messages already out: %(sent)s. The figures are for the rest."),
}


@dataclass(frozen=True)
class Finding:
    """One thing the check found: a code of WORDS and its parameters, worded when shown."""

    code: str
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def needs_confirmation(self) -> bool:
        return self.code in NEEDS_CONFIRMATION

    @property
    def message(self) -> str:
        """In the reader's language, numbers and times in their format."""
        return str(WORDS[self.code]) % {name: _shown(value) for name, value in self.params.items()}

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def _shown(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return label(value)
    if isinstance(value, datetime):
        return format_datetime(value)
    if isinstance(value, int):
        return format_number(value)
    if isinstance(value, reasons.Reason):
        return reasons.render(value.code, value.params)
    return value


@dataclass(frozen=True)
class Preflight:
    """What the check found (figures as of ``checked_at``)."""

    audience: int  # recipients still to reach (0 when the ERP could not say)
    audience_exact: bool  # counted from the loaded audience, not the ERP's estimate
    audience_known: bool  # False: the ERP could not be asked; the figures leave it out
    budget_limit: int | None  # the portfolio's budget a day (the limit less the margin)
    budget_remaining: int | None
    messaging_limit: int | None  # Meta's, before the margin
    waves: waves.Waves
    cost: pricing.CostEstimate
    duration_seconds: float  # 0 when it can never go (a blocking problem says why)
    checked_at: datetime
    warnings: tuple[Finding, ...] = ()  # those needing confirmation first
    blocking: tuple[Finding, ...] = ()

    @property
    def to_confirm(self) -> tuple[Finding, ...]:
        return tuple(w for w in self.warnings if w.needs_confirmation)

    @property
    def ok(self) -> bool:
        """Nothing blocks it and nothing needs confirming: it can go as it is."""
        return not self.blocking and not self.to_confirm

    def as_dict(self) -> dict[str, object]:
        """The API's answer (its contract), worded in English."""
        with force_locale("en"):
            return {
                "ok": self.ok,
                "audience": self.audience,
                "budget": {
                    "limit": self.budget_limit,
                    "remaining": self.budget_remaining,
                    "days": self.waves.days,
                },
                "estimated_cost": {
                    "currency": self.cost.currency,
                    "amount": float(self.cost.amount),
                },
                "estimated_duration_seconds": self.duration_seconds,
                "warnings": [w.as_dict() for w in self.warnings],
                "blocking": [b.as_dict() for b in self.blocking],
            }


def check(campaign: Campaign, config: Mapping[str, Any]) -> Preflight:
    """Check ``campaign`` now. Ends the session's transaction before asking the ERP (a read
    only; nothing is written), so call it holding no lock."""
    sender, template = campaign.sender, campaign.template
    blocking: list[Finding] = []
    notes: list[Finding] = []
    confirm: list[Finding] = []

    if template.status is not TemplateStatus.APPROVED:
        blocking.append(Finding("template_not_approved", {"status": template.status}))
    if not sender.is_active:
        blocking.append(Finding("sender_inactive"))
    elif sender.provider is Provider.CLOUD_API and not (
        sender.phone_number_id and sender.access_token
    ):
        blocking.append(Finding("sender_not_connected"))
    for quality, red, yellow in (
        (sender.quality_rating, NUMBER_QUALITY_RED, "number_quality_yellow"),
        (template.quality_rating, TEMPLATE_QUALITY_RED, "template_quality_yellow"),
    ):
        if quality == "RED":
            confirm.append(Finding(red))
        elif quality == "YELLOW":
            notes.append(Finding(yellow))

    audience, exact, sent, known = _audience(campaign, config, notes)
    if known and not exact:
        _exclusions(campaign, config, notes)
    if sent:
        notes.append(Finding("in_progress", {"sent": sent}))
    now = database_now(db.session)
    budget = ratelimit.budget(sender, config["MESSAGING_LIMIT_MARGIN_PERCENT"])
    usage = None if budget is None else ratelimit.budget_usage(db.session, budget)
    if budget is None and sender.account_read_at is None and sender.provider is Provider.CLOUD_API:
        notes.append(Finding("messaging_limit_unknown"))
    pace = ratelimit.pace(sender, campaign.owner)
    plan = waves.plan(audience, usage, now, pace.per_minute / 60.0)
    if plan.days == 0:
        blocking.append(Finding("no_budget"))
    elif plan.carried_over and plan.rest_from is not None:
        confirm.append(
            Finding(
                BUDGET_OVERRUN,
                {
                    "today": plan.today,
                    "rest": plan.rest,
                    "rest_from": plan.rest_from,
                    "days": plan.days,
                },
            )
        )
    by_country = (
        pricing.audience_by_country(db.session, campaign.id)
        if exact
        else {config["PHONE_DEFAULT_REGION"]: audience}
    )
    # The rates in force on the day it is to go (a new rate card may start before then).
    when = campaign.scheduled_at if campaign.scheduled_at and not exact else now
    cost = pricing.estimate(
        db.session, template.category, by_country, on=when.astimezone(UTC).date()
    )
    if cost.unpriced:
        notes.append(
            Finding(
                "unpriced",
                {"count": cost.unpriced, "countries": ", ".join(cost.unpriced_countries)},
            )
        )
    notes.append(Finding("list_price"))
    return Preflight(
        audience=audience,
        audience_exact=exact,
        audience_known=known,
        budget_limit=None if budget is None else budget.limit,
        budget_remaining=None if usage is None else usage.remaining,
        messaging_limit=sender.messaging_limit,
        waves=plan,
        cost=cost,
        duration_seconds=_with_window(
            campaign, config, plan.seconds or 0.0, audience, now, pace.per_minute / 60.0
        ),
        checked_at=now,
        warnings=(*confirm, *notes),
        blocking=tuple(blocking),
    )


def _exclusions(campaign: Campaign, config: Mapping[str, Any], notes: list[Finding]) -> None:
    """A campaign with exclusions of its own (a frequency cap, numbers in running
    campaigns) and its audience still to load: what they will leave out, as the form's
    live count says (campaigns/exclusions.py); a CSV file's rows, or a sample of the ERP's
    first pages read with no transaction open. Nothing said when the ERP cannot answer
    (its count did) or the file is gone (its own finding does)."""
    if not (campaign.frequency_cap_days or campaign.exclude_running):
        return
    try:
        counts = exclusions.of_campaign(campaign, config, ERP_TIMEOUT)
    except (erp.ErpError, ConfigError):
        return
    if counts is None:
        return
    notes.append(
        Finding(
            "exclusions_estimated" if counts.estimated else "exclusions",
            {
                "sampled": counts.sampled,
                "suppressed": counts.suppressed,
                "undeliverable": counts.undeliverable,
                "capped": counts.frequency_cap or 0,
                "running": counts.in_other_campaign or 0,
                "remaining": counts.remaining,
            },
        )
    )


def _audience(
    campaign: Campaign, config: Mapping[str, Any], notes: list[Finding]
) -> tuple[int, bool, int, bool]:
    """(recipients still to reach, whether counted exactly, messages already out, whether
    known at all).

    Once the fan-out has loaded the audience, its messages still to send, from the
    counters; before, a CSV file's rows, or the ERP's count of the segment (asked with no
    transaction open)."""
    if campaign.audience_loaded_at is not None:
        totals = counters.totals(db.session, campaign.id)
        to_send = totals["pending"] + totals["queued"] + totals["sending"] + totals["retrying"]
        return to_send, True, totals["sent"] + totals["failed"], True
    if campaign.audience_file_id is not None or campaign.audience_phone_column:
        # A CSV audience: its rows, counted at the upload (skips are not known yet).
        file = campaign.audience_file
        return (file.row_count if file else 0), False, 0, file is not None
    segment = dict(campaign.segment)
    db.session.rollback()  # no transaction (nor lock) held while the ERP answers
    try:
        with erp.client_from_config(config, timeout=ERP_TIMEOUT) as client:
            count = client.count(segment)
    except ConfigError as error:  # no ERP configured: said, not a 500
        notes.append(Finding("audience_unknown", {"error": str(error)}))
        return 0, False, 0, False
    except erp.ErpError as error:
        notes.append(Finding("audience_unknown", {"error": error.reason}))
        return 0, False, 0, False
    notes.append(Finding("audience_estimated"))
    return count, False, 0, True


def _with_window(
    campaign: Campaign,
    config: Mapping[str, Any],
    seconds: float,
    audience: int,
    now: datetime,
    per_second: float,
) -> float:
    """The duration with the sending window's waits (send_windows.py), from its start: the
    audience's zones as the fan-out counted them, or before it all in DISPLAY_TIMEZONE
    (the business's zone, most recipients'), at the limits' pace."""
    window = send_windows.Window.of(campaign.send_window)
    if window is None or audience <= 0 or per_second <= 0:
        return seconds
    start = max(now, campaign.scheduled_at or now)
    zones = send_windows.zone_counts(campaign.window_zones, audience, config["DISPLAY_TIMEZONE"])
    drain = send_windows.drain_seconds(window, zones, start, per_second)
    return seconds if drain is None else max(seconds, drain)
