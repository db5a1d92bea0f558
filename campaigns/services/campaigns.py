"""Campaigns: create, edit, schedule, start, pause, resume, cancel, duplicate; the audience's
live count and a dry run, a test send to one number, and sending failed messages again.

Which statuses each operator action starts from is :data:`CAMPAIGN_TRANSITIONS`,
enforced here for the UI and the API alike; the changes themselves use the
engine's own (``campaign_states``, ``message_states``), so a pause from the
page and an automatic pause leave the same rows behind.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from flask import current_app

from app import db
from campaigns import (
    audiences,
    campaign_states,
    erp,
    fanout,
    message_states,
    phones,
    preflight,
    providers,
    queues,
    ratelimit,
    reasons,
    recurrence,
    rendering,
    sending,
    template_parts,
    tracked_links,
)
from campaigns.clock import database_now
from campaigns.i18n import _, _l
from campaigns.labels import label
from campaigns.models import (
    Campaign,
    CampaignStatus,
    Message,
    MessageStatus,
    MessageTemplate,
    Sender,
    TemplateStatus,
)
from campaigns.providers.errors import explain, is_retryable
from campaigns.services import (
    Blocked,
    ConfirmationRequired,
    Conflict,
    NotFound,
    ServiceError,
)
from campaigns.services.suppressions import is_suppressed
from campaigns.template_parts import COUPON_MAX_CHARS
from campaigns.validation import CampaignFields, row_id

logger = logging.getLogger(__name__)

# What an operator confirmed of the pre-flight check's warnings: all of them (the API's
# "confirm": true), or those named (the page's checkbox names the ones it showed).
Confirmation = bool | frozenset[str]


# Which statuses each operator action starts from (enforced here, for UI and API alike).
CAMPAIGN_TRANSITIONS: dict[str, frozenset[CampaignStatus]] = {
    "edit": frozenset({CampaignStatus.DRAFT, CampaignStatus.SCHEDULED}),
    "schedule": frozenset({CampaignStatus.DRAFT, CampaignStatus.SCHEDULED}),
    "unschedule": frozenset({CampaignStatus.SCHEDULED}),
    "send_now": frozenset({CampaignStatus.DRAFT, CampaignStatus.SCHEDULED}),
    "pause": frozenset({CampaignStatus.SENDING}),
    "resume": frozenset({CampaignStatus.PAUSED}),
    "cancel": frozenset(
        {
            CampaignStatus.DRAFT,
            CampaignStatus.SCHEDULED,
            CampaignStatus.SENDING,
            CampaignStatus.PAUSED,
        }
    ),
}
# What the operator is told when the campaign's status does not allow the action: one
# whole sentence each (a translation cannot be assembled from "edited", "paused"…).
REFUSALS = {
    "edit": _l("A campaign with status “%(status)s” cannot be edited."),
    "schedule": _l("A campaign with status “%(status)s” cannot be scheduled."),
    "unschedule": _l("A campaign with status “%(status)s” cannot be unscheduled."),
    "send_now": _l("A campaign with status “%(status)s” cannot be sent now."),
    "pause": _l("A campaign with status “%(status)s” cannot be paused."),
    "resume": _l("A campaign with status “%(status)s” cannot be resumed."),
    "cancel": _l("A campaign with status “%(status)s” cannot be cancelled."),
}


def refusal(action: str, status: CampaignStatus) -> str:
    """Why a campaign in ``status`` cannot take ``action``, in the reader's words."""
    return str(REFUSALS[action]) % {"status": label(status)}


# A test message shows what the campaign will send: offered while it may still send. A
# completed campaign may ("retry failed" sends its failures again, and the operator may
# test first); a cancelled or failed one never sends again (its copy, a draft, can test).
TEST_SEND_STATUSES = frozenset(
    {
        CampaignStatus.DRAFT,
        CampaignStatus.SCHEDULED,
        CampaignStatus.SENDING,
        CampaignStatus.PAUSED,
        CampaignStatus.COMPLETED,
    }
)


def allowed_actions(status: CampaignStatus, *, repeating: bool = False) -> set[str]:
    """What the campaign page offers in ``status``: its transitions, and ``test_send``. A
    recurring campaign (``repeating``) is never sent itself: no "send now"."""
    actions = {action for action, sources in CAMPAIGN_TRANSITIONS.items() if status in sources}
    if status in TEST_SEND_STATUSES:
        actions.add("test_send")
    if repeating:
        actions.discard("send_now")
    return actions


def template_variables_for(template_id: Any) -> list[str] | None:
    """The variables of an approved template, or None if there is no such approved template."""
    template_key = row_id(template_id)
    template = db.session.get(MessageTemplate, template_key) if template_key else None
    if template is None or template.status is not TemplateStatus.APPROVED:
        return None
    return template_parts.keys(template)


def _check_audience_file(fields: CampaignFields) -> None:
    """A CSV audience's file exists, has the phone column, and every mapped field (and
    the language and time zone fields) is one of its columns. An ERP audience's fields were checked
    against the ERP's (validation.CUSTOMER_FIELDS) when parsed."""
    if fields.audience_file_id is None:
        if fields.audience_phone_column:
            # Its file was deleted with its data (the retention): nothing left to send to.
            raise ServiceError(
                _("The audience's file was deleted with its data; upload it again."),
                "audience_file_id",
            )
        return
    audience = audiences.get(fields.audience_file_id)
    if audience is None:
        raise ServiceError(
            _("There is no such audience file; upload it again."), "audience_file_id"
        )
    columns = set(audience.columns)
    if fields.audience_phone_column not in columns:
        raise ServiceError(
            _("The file has no column “%(name)s”.") % {"name": fields.audience_phone_column},
            "audience_phone_column",
        )
    for name, source in fields.variable_mapping.items():
        if "field" in source and source["field"] not in columns:
            raise ServiceError(
                _("The file has no column “%(name)s”.") % {"name": source["field"]},
                f"variables.{name}",
            )
    for field in ("language_field", "time_zone_field"):
        column = getattr(fields, field)
        if column and column not in columns:
            raise ServiceError(_("The file has no column “%(name)s”.") % {"name": column}, field)


def _check_sender_and_template(fields: CampaignFields) -> None:
    _check_audience_file(fields)
    sender = db.session.get(Sender, fields.sender_id)
    if sender is None or not sender.is_active:
        raise ServiceError(_("Choose an active sender."), "sender_id")
    template = db.session.get(MessageTemplate, fields.template_id)
    if template is None or template.status is not TemplateStatus.APPROVED:
        raise ServiceError(_("Choose an approved template."), "template_id")
    lacking = template_parts.unready(template, fields.variable_mapping)
    if "header" in lacking:
        raise ServiceError(
            _(
                "This template's header shows media it has none of yet:"
                " edit it to give a link or a file."
            ),
            "template_id",
        )
    if lacking:
        # The template changed since the campaign was made (an import, a webhook): every
        # message would fail with 132000, so say so before any goes.
        raise ServiceError(
            _("The template now also needs %(keys)s: edit the campaign to map it.")
            % {"keys": ", ".join(lacking)},
            "variables",
        )
    _check_tracked_links(template, fields.variable_mapping)
    _check_coupons(template, fields.variable_mapping)
    template_sender = template.sender
    same_account = template.sender_id == sender.id or (
        sender.waba_id is not None and template_sender.waba_id == sender.waba_id
    )
    if not same_account:
        raise ServiceError(
            _("This template belongs to another WhatsApp account than the sender's."), "template_id"
        )


def _check_tracked_links(template: MessageTemplate, mapping: Mapping[str, Any]) -> None:
    """A tracked link's button must be a link to Disparo's own /l/{{1}}: sent to any
    other address, the token would land the recipient on a page that does not exist."""
    base = current_app.config["APP_BASE_URL"]
    for index in tracked_links.tracked(mapping):
        if not tracked_links.leads_here(template, f"button.{index}", base):
            raise ServiceError(
                _(
                    "A tracked link needs the template's button to lead to %(address)s;"
                    " this one leads elsewhere."
                )
                % {"address": tracked_links.button_address(base)},
                f"variables.button.{index}",
            )


def _check_coupons(template: MessageTemplate, mapping: Mapping[str, Any]) -> None:
    """A copy-code button's fixed code fits WhatsApp's limit. A code from a customer field
    is not checked before it goes: WhatsApp refuses the messages whose code is longer,
    each failing with its error."""
    for index, button in enumerate(template.buttons or []):
        code = mapping.get(f"button.{index}", {}).get("text")
        if button.get("type") == "COPY_CODE" and code and len(code) > COUPON_MAX_CHARS:
            raise ServiceError(
                _("WhatsApp takes a code of at most %(n)d characters.") % {"n": COUPON_MAX_CHARS},
                f"variables.button.{index}",
            )


def _locked_campaign(campaign_id: int) -> Campaign:
    campaign = campaign_states.lock(db.session, campaign_id)
    if campaign is None:
        raise NotFound(_("There is no such campaign."))
    return campaign


def _require(campaign: Campaign, action: str) -> None:
    if campaign.status not in CAMPAIGN_TRANSITIONS[action]:
        db.session.rollback()
        raise Conflict(refusal(action, campaign.status))


def create_campaign(fields: CampaignFields, owner_id: int) -> Campaign:
    """Create a draft campaign."""
    _check_sender_and_template(fields)
    campaign = Campaign(
        name=fields.name,
        owner_id=owner_id,
        sender_id=fields.sender_id,
        template_id=fields.template_id,
        segment=fields.segment,
        variable_mapping=fields.variable_mapping,
        language_field=fields.language_field,
        audience_file_id=fields.audience_file_id,
        audience_phone_column=fields.audience_phone_column,
        recurrence=fields.recurrence,
        send_window=fields.send_window,
        time_zone_field=fields.time_zone_field,
        frequency_cap_days=fields.frequency_cap_days,
        exclude_running=fields.exclude_running,
        status=CampaignStatus.DRAFT,
    )
    db.session.add(campaign)
    db.session.flush()
    campaign_states.record_activity(db.session, campaign.id, owner_id, "created")
    db.session.commit()
    return campaign


def update_campaign(campaign_id: int, fields: CampaignFields, user_id: int) -> Campaign:
    """Change a draft or scheduled campaign."""
    campaign = _locked_campaign(campaign_id)
    _require(campaign, "edit")
    _check_sender_and_template(fields)
    campaign.name = fields.name
    campaign.sender_id = fields.sender_id
    campaign.template_id = fields.template_id
    campaign.segment = fields.segment
    campaign.variable_mapping = fields.variable_mapping
    campaign.language_field = fields.language_field
    campaign.audience_file_id = fields.audience_file_id
    campaign.audience_phone_column = fields.audience_phone_column
    _change_recurrence(campaign, fields.recurrence)
    campaign.send_window = fields.send_window
    campaign.time_zone_field = fields.time_zone_field
    campaign.frequency_cap_days = fields.frequency_cap_days
    campaign.exclude_running = fields.exclude_running
    campaign_states.record_activity(db.session, campaign.id, user_id, "updated")
    db.session.commit()
    return campaign


def _change_recurrence(campaign: Campaign, rule: dict[str, Any] | None) -> None:
    """An edit's new rule. Its runs go on as they were made; a scheduled series moves to
    the new rule's next occurrence. A series stops repeating only unscheduled, and never
    once it has runs (they name it as theirs): a one-off is its duplicate's business."""
    if rule == campaign.recurrence:
        return
    if rule is None:
        if _has_runs(campaign.id):
            raise ServiceError(
                _("This campaign has runs, so it keeps repeating; duplicate it for a one-off."),
                "recurrence",
            )
        if campaign.status is CampaignStatus.SCHEDULED:
            raise ServiceError(
                _("Unschedule the campaign before it stops repeating."), "recurrence"
            )
    campaign.recurrence = rule
    if rule is not None and campaign.status is CampaignStatus.SCHEDULED:
        campaign.scheduled_at = recurrence.next_occurrence(rule, database_now(db.session))


def _has_runs(campaign_id: int) -> bool:
    return bool(
        db.session.scalar(sa.select(sa.exists().where(Campaign.recurrence_of_id == campaign_id)))
    )


def schedule_campaign(
    campaign_id: int, when: datetime | None, user_id: int, *, confirm: Confirmation = False
) -> Campaign:
    """Schedule (or reschedule) a campaign for a future time, once the pre-flight check
    passes (its warnings confirmed with ``confirm``).

    A recurring campaign starts repeating: it is scheduled for its rule's next occurrence,
    not before ``when`` if given (else from now)."""
    if when is not None and when.tzinfo is None:
        raise ServiceError(_("Give the time with its time zone."), "scheduled_at")
    if when is not None and _past_the_calendar(when):
        raise ServiceError(_("Choose an earlier time."), "scheduled_at")
    campaign = _campaign(campaign_id)
    _require(campaign, "schedule")  # first: a campaign that cannot be scheduled says so
    if campaign.recurrence is not None:
        when = _first_occurrence(campaign.recurrence, when)
    if when is None:
        raise ServiceError(_("Choose a date and time."), "scheduled_at")
    _require_future(when)
    _check_sender_and_template(_fields_of(campaign))
    campaign = _checked_and_locked(campaign, "schedule", confirm)
    if campaign.recurrence is not None:  # as locked: the check took time
        when = _first_occurrence(campaign.recurrence, when)
    _require_future(when)  # again: the check's ERP call may have taken it into the past
    campaign.status = CampaignStatus.SCHEDULED
    campaign.scheduled_at = when
    campaign.set_status_reason(None)
    campaign_states.record_activity(
        db.session,
        campaign.id,
        user_id,
        "scheduled",
        reasons.Reason(reasons.SCHEDULED_FOR, {"at": when.astimezone(UTC).isoformat()}),
    )
    db.session.commit()
    return campaign


def _first_occurrence(rule: dict[str, Any], not_before: datetime | None) -> datetime:
    """A series' first occurrence from now, or at or after ``not_before`` (aware) if later."""
    now = database_now(db.session)
    try:
        if not_before is None or not_before <= now:
            return recurrence.next_occurrence(rule, now)
        return recurrence.next_occurrence(rule, not_before - timedelta(microseconds=1))
    except (OverflowError, ValueError):
        # Near the end of the calendar (9999-12-31) the next occurrence, or the time in
        # the rule's zone, falls past year 9999, which datetime cannot hold.
        db.session.rollback()
        raise ServiceError(
            _("Choose an earlier time: the campaign's next run would fall after the year 9999."),
            "scheduled_at",
        ) from None


def _past_the_calendar(when: datetime) -> bool:
    """9999-12-31T12:00-12:00 is parsed, but in UTC it is past year 9999: datetime cannot
    hold it, so neither the activity line nor the occurrences could be worked out."""
    try:
        when.astimezone(UTC)
    except OverflowError:
        return True
    return False


def _require_future(when: datetime) -> None:
    if when <= database_now(db.session):
        db.session.rollback()
        raise ServiceError(_("Choose a time in the future."), "scheduled_at")


def _campaign(campaign_id: int) -> Campaign:
    campaign = db.session.get(Campaign, campaign_id)
    if campaign is None:
        raise NotFound(_("There is no such campaign."))
    return campaign


def _checked_and_locked(campaign: Campaign, action: str, confirm: Confirmation) -> Campaign:
    """The pre-flight check (campaigns/preflight.py), run holding no lock (it asks the
    ERP): what it blocks is refused, and what needs confirming is refused without it.
    Then the campaign locked, as checked: changed meanwhile (an edit, another action),
    the action is refused rather than going ahead on what was not checked."""
    checked_at = campaign.updated_at
    _preflight(campaign, confirm)
    locked = _locked_campaign(campaign.id)
    _require(locked, action)
    if locked.updated_at != checked_at:
        db.session.rollback()
        raise Conflict(_("The campaign changed while it was being checked: try again."))
    return locked


def _preflight(campaign: Campaign, confirm: Confirmation) -> None:
    result = preflight.check(campaign, current_app.config)
    if result.blocking:
        raise Blocked(result.blocking[0].message, result)
    codes = {warning.code for warning in result.to_confirm}
    confirmed = confirm if isinstance(confirm, bool) else codes <= confirm
    if codes and not confirmed:
        raise ConfirmationRequired(
            _("Confirm the pre-flight check's warnings to go ahead: %(warnings)s")
            % {"warnings": " ".join(w.message for w in result.to_confirm)},
            result,
        )


def _fields_of(campaign: Campaign) -> CampaignFields:
    return CampaignFields(
        campaign.name,
        campaign.sender_id,
        campaign.template_id,
        campaign.segment,
        campaign.variable_mapping,
        campaign.language_field,
        audience_file_id=campaign.audience_file_id,
        audience_phone_column=campaign.audience_phone_column,
        recurrence=campaign.recurrence,
        send_window=campaign.send_window,
        time_zone_field=campaign.time_zone_field,
        frequency_cap_days=campaign.frequency_cap_days,
        exclude_running=campaign.exclude_running,
    )


# A sending or paused campaign's window may change (its recipients' zones are already
# chosen; the pump applies the new window from its next run): wider to let the waiting
# ones go, narrower to hold the rest back. Draft and scheduled ones change it by editing.
WINDOW_CHANGE_STATUSES = frozenset({CampaignStatus.SENDING, CampaignStatus.PAUSED})


def change_send_window(campaign_id: int, window: dict[str, Any] | None, user_id: int) -> Campaign:
    """Set a sending or paused campaign's window (validated: ``validation.parse_send_window``;
    None: any time); its pump comes at once rather than at the old window's next opening."""
    campaign = _locked_campaign(campaign_id)
    if campaign.status not in WINDOW_CHANGE_STATUSES:
        db.session.rollback()
        raise Conflict(refusal("edit", campaign.status))
    campaign.send_window = window
    if window is None:
        # Nothing keeps the zone counts without a window (the fan-out and the pump leave
        # them): a window set again later has them counted afresh by the pump.
        campaign.window_zones = None
    if campaign.status is CampaignStatus.SENDING and campaign.audience_loaded_at is not None:
        queues.defer_pump(db.session, campaign.id)
    campaign_states.record_activity(db.session, campaign.id, user_id, "updated")
    db.session.commit()
    return campaign


def unschedule_campaign(campaign_id: int, user_id: int) -> Campaign:
    """Put a scheduled campaign back to draft."""
    campaign = _locked_campaign(campaign_id)
    _require(campaign, "unschedule")
    campaign.status = CampaignStatus.DRAFT
    campaign.scheduled_at = None
    campaign_states.record_activity(db.session, campaign.id, user_id, "unscheduled")
    db.session.commit()
    return campaign


def duplicate_campaign(campaign_id: int, user_id: int) -> Campaign:
    """A new draft with the same sender, template, audience, mapping, language field and
    exclusions (its frequency cap, the exclusion of numbers in running campaigns)."""
    source = db.session.get(Campaign, campaign_id)
    if source is None:
        raise NotFound(_("There is no such campaign."))
    # Campaign.copy: every column of its configuration (a recurring campaign's runs are
    # made by it too); a duplicate of a series repeats alike, a run's sends once.
    copy = source.copy(name=(_("Copy of %(name)s") % {"name": source.name})[:200], owner_id=user_id)
    db.session.add(copy)
    db.session.flush()
    campaign_states.record_activity(
        db.session,
        copy.id,
        user_id,
        "created",
        reasons.Reason(reasons.DUPLICATED_FROM, {"id": source.id}),
    )
    campaign_states.record_activity(
        db.session,
        source.id,
        user_id,
        "duplicated",
        reasons.Reason(reasons.DUPLICATED_AS, {"id": copy.id}),
    )
    db.session.commit()
    return copy


def send_campaign_now(campaign_id: int, user_id: int, *, confirm: Confirmation = False) -> Campaign:
    """Start a draft or scheduled campaign at once (the scheduler's own start, without
    waiting), once the pre-flight check passes (its warnings confirmed with ``confirm``)."""
    campaign = _campaign(campaign_id)
    _require(campaign, "send_now")
    _require_one_off(campaign)
    _check_sender_and_template(_fields_of(campaign))
    campaign = _checked_and_locked(campaign, "send_now", confirm)
    _require_one_off(campaign)
    campaign_states.start(db.session, campaign)
    campaign_states.record_activity(
        db.session, campaign.id, user_id, "started", reasons.Reason(reasons.SENT_NOW)
    )
    db.session.commit()
    return campaign


def _require_one_off(campaign: Campaign) -> None:
    if campaign.recurrence is not None:
        db.session.rollback()
        raise Conflict(
            _("A repeating campaign sends through its runs: schedule it to start repeating.")
        )


def pause_campaign(campaign_id: int, user_id: int) -> Campaign:
    """Stop sending: queued messages return to pending; one mid-call finishes its call."""
    campaign = _locked_campaign(campaign_id)
    _require(campaign, "pause")
    campaign.status = CampaignStatus.PAUSED
    campaign.set_status_reason(None)
    message_states.unqueue(db.session, campaign.id)
    campaign_states.record_activity(db.session, campaign.id, user_id, "paused")
    queues.defer_notification(db.session, campaign.id, "paused")
    db.session.commit()
    return campaign


def resume_campaign(campaign_id: int, user_id: int) -> Campaign:
    """Carry on sending a paused campaign from where it stopped."""
    campaign = _locked_campaign(campaign_id)
    _require(campaign, "resume")
    _check_sender_and_template(_fields_of(campaign))
    if campaign.recurrence is not None:
        # A series paused while scheduled (WhatsApp paused its template): repeating again,
        # from its next occurrence; one that passed meanwhile is not made up for.
        campaign.status = CampaignStatus.SCHEDULED
        campaign.set_status_reason(None)
        now = database_now(db.session)
        if campaign.scheduled_at is None or campaign.scheduled_at <= now:
            campaign.scheduled_at = recurrence.next_occurrence(campaign.recurrence, now)
    elif (
        campaign.started_at is None
        and campaign.scheduled_at is not None
        and (campaign.scheduled_at > database_now(db.session))
    ):
        # Paused before its time (WhatsApp paused its template): scheduled again, so it
        # starts at the time the operator chose, not now.
        campaign.status = CampaignStatus.SCHEDULED
        campaign.set_status_reason(None)
    elif campaign.started_at is None:
        # Paused before it started and its time has passed: it starts now.
        campaign_states.start(db.session, campaign)
    else:
        campaign.status = CampaignStatus.SENDING
        campaign.set_status_reason(None)
        campaign.pace_cursor_at = None
        if campaign.send_window:
            # Messages the batches put back to pending around the pause (a pausing
            # code's, a retry that found it paused) went uncounted by zone: the pump
            # counts them all again, once (message_states.forget_zone_counts).
            campaign.window_zones = None
        campaign_states.defer_next_step(
            db.session, campaign.id, audience_loaded=campaign.audience_loaded_at is not None
        )
    campaign_states.record_activity(db.session, campaign.id, user_id, "resumed")
    db.session.commit()
    return campaign


def cancel_campaign(
    campaign_id: int, user_id: int | None, detail: reasons.Reason | None = None
) -> Campaign:
    """Cancel for good: every message not yet being sent is cancelled at once (retrying
    ones too, those 131049 holds among them: their jobs find nothing left to do).

    ``detail`` goes on the activity entry (``flask queue cancel-campaign``: from the
    command line, by whom)."""
    campaign = _locked_campaign(campaign_id)
    _require(campaign, "cancel")
    campaign.status = CampaignStatus.CANCELLED
    campaign.completed_at = sa.func.now()
    message_states.cancel_unsent(db.session, campaign.id)
    campaign_states.record_activity(db.session, campaign.id, user_id, "cancelled", detail)
    queues.defer_notification(db.session, campaign.id, "cancelled")
    db.session.commit()
    return campaign


def audience_count(segment: Mapping[str, Any], config: Mapping[str, Any]) -> int:
    """How many customers the ERP selects for these criteria (raises erp.ErpError)."""
    with erp.client_from_config(config) as client:
        return client.count(segment)


def _first_customers(
    campaign: Campaign, config: Mapping[str, Any], limit: int
) -> list[tuple[str, dict[str, Any]]]:
    """The audience's first customers, each with its ref: the CSV file's first rows, or
    the ERP segment's first page (raises erp.ErpError)."""
    if campaign.audience_file is not None:
        return audiences.first_customers(campaign.audience_file, limit)
    if campaign.audience_phone_column:
        return []  # a CSV audience whose file was deleted with its data
    with erp.client_from_config(config) as client:
        customers = client.page(campaign.segment, None, limit).customers
    return [(str(customer.get("id", "")), customer) for customer in customers]


@dataclass(frozen=True)
class DryRunRow:
    customer_ref: str
    name: str
    phone: str | None
    params: dict[str, str]
    text: str
    skip_reason: str | None


def dry_run(campaign: Campaign, config: Mapping[str, Any], limit: int = 10) -> list[DryRunRow]:
    """The first ``limit`` messages exactly as they would be sent (real ERP data; nothing sent)."""
    template = campaign.template
    refs_customers = _first_customers(campaign, config, limit)
    customers = [customer for _ref, customer in refs_customers]
    region = config["PHONE_DEFAULT_REGION"]
    phone_of = fanout.phone_field(campaign)
    normalised = [phones.normalise(c.get(phone_of), region) for c in customers]
    suppressed = is_suppressed([p for p in normalised if p])
    rows, seen = [], set()
    for (ref, customer), phone in zip(refs_customers, normalised, strict=True):
        params = rendering.params_for(campaign.variable_mapping, customer)
        reason = None
        if phone is None:
            reason = _("invalid phone number")
        elif phone in suppressed:
            reason = _("opted out (suppression list)")
        elif phone in seen:
            reason = _("duplicate phone number")
        elif empty := rendering.missing_params(params):
            reason = _("no value for %(v)s") % {"v": ", ".join(empty)}
        seen.add(phone)
        rows.append(
            DryRunRow(
                customer_ref=ref,
                name=str(customer.get("name") or ""),
                phone=phone or str(customer.get(phone_of) or ""),
                params=params,
                text=rendering.render(template.body_text, template.parameter_format, params),
                skip_reason=reason,
            )
        )
    return rows


def send_test_message(campaign_id: int, phone_raw: str, user_id: int) -> str:
    """Send the campaign's message to one number, filled from the audience's first customer.

    It goes through the sender's provider and its WhatsApp limit like any send;
    nothing is recorded as a campaign message. Returns the provider's message id.
    """
    campaign = db.session.get(Campaign, campaign_id)
    if campaign is None:
        raise NotFound(_("There is no such campaign."))
    if campaign.status not in TEST_SEND_STATUSES:
        raise Conflict(
            _(
                "A campaign with status “%(status)s” sends nothing more, so it has no test;"
                " duplicate it to try its message."
            )
            % {"status": label(campaign.status)}
        )
    phone = phones.normalise(phone_raw, current_app.config["PHONE_DEFAULT_REGION"])
    if phone is None:
        raise ServiceError(
            _("Enter a phone number with its area code, e.g. +55 11 98765-4321."), "phone"
        )
    if is_suppressed([phone]):
        # A test is still a message: someone who said stop gets none, whoever asks.
        raise ServiceError(
            _("This number is on the opt-out list; WhatsApp messages to it are not sent."),
            "phone",
        )
    try:
        customers = _first_customers(campaign, current_app.config, 1)
    except erp.ErpError as error:
        raise ServiceError(_("The ERP did not answer: %(m)s") % {"m": error.message}) from error
    sample = customers[0][1] if customers else {}
    params = rendering.params_for(campaign.variable_mapping, sample)
    if empty := rendering.missing_params(params):
        params |= rendering.sample_values(empty, campaign.template.parameter_format)
    # A test's tracked links name no message (0): they lead on and count nothing.
    secret = current_app.config["SECRET_KEY"]
    params = tracked_links.fill(params, campaign.variable_mapping, secret, campaign_id, 0)
    config = current_app.config
    try:
        # Before the limit is taken: a header file's upload ends this transaction.
        header_media = sending.header_media(campaign, config)
    except providers.ProviderError as error:  # its header's file could not be uploaded
        raise ServiceError(error.message) from error
    decision = ratelimit.consume(db.session, ratelimit.whatsapp_limits(campaign.sender))
    if not decision.allowed:
        raise ServiceError(
            _("The sender's limit is used up; try again in %(s)d s.")
            % {"s": int(decision.retry_after) + 1}
        )
    try:
        result = providers.for_sender(campaign.sender, config).send_template(
            to=phone,
            template=campaign.template,
            params=params,
            callback_data=f"test-{campaign_id}",
            header_media=header_media,
        )
    except providers.SendError as error:
        if error.reason:  # Disparo's own finding, said in the reader's words
            raise ServiceError(reasons.render(error.reason)) from error
        # What the code means in the reader's words, and WhatsApp's own as it gave them.
        code = error.row_code
        said = f"{explain(code)} ({error.message})" if error.message else explain(code)
        raise ServiceError(_("WhatsApp refused it: %(m)s") % {"m": said}) from error
    campaign_states.record_activity(
        db.session,
        campaign_id,
        user_id,
        "test_sent",
        reasons.Reason(reasons.TEST_PHONE, {"phone": phone[:-4] + "****"}),
    )
    db.session.commit()
    return result.provider_message_id


# Sending failed messages again is not in CAMPAIGN_TRANSITIONS: it is no change of the
# campaign's own state, and a finished (completed) campaign offers no other action.
RETRY_FAILED_STATUSES = frozenset(
    {CampaignStatus.SENDING, CampaignStatus.PAUSED, CampaignStatus.COMPLETED}
)


def retry_failed(campaign_id: int, user_id: int) -> int:
    """Send again the failed messages whose error may pass; returns how many.

    Failures about the message itself (a bad number, an opt-out, a template it
    does not fit) stay failed, and so does a number suppressed since. A completed
    campaign goes back to sending; a paused one sends them once resumed.
    """

    campaign = _locked_campaign(campaign_id)
    if campaign.status not in RETRY_FAILED_STATUSES:
        db.session.rollback()
        raise Conflict(
            _("A campaign with status “%(status)s” cannot send its failed messages again.")
            % {"status": label(campaign.status)}
        )
    failed_codes = db.session.scalars(
        sa.select(Message.error_code)
        .where(Message.campaign_id == campaign_id, Message.status == MessageStatus.FAILED)
        .distinct()
    ).all()
    codes = [code for code in failed_codes if is_retryable(code)]
    retried = 0
    if codes:
        _check_sender_and_template(_fields_of(campaign))
        retried = message_states.reopen_failed(db.session, campaign_id, codes)
    if not retried:
        db.session.rollback()
        raise Conflict(_("No failed message has an error worth retrying."))
    if campaign.status is CampaignStatus.COMPLETED:
        campaign.status = CampaignStatus.SENDING
        campaign.set_status_reason(None)
        campaign.completed_at = None
    if campaign.status is CampaignStatus.SENDING:
        campaign_states.defer_next_step(
            db.session, campaign.id, audience_loaded=campaign.audience_loaded_at is not None
        )
    campaign_states.record_activity(
        db.session,
        campaign.id,
        user_id,
        "retried_failed",
        reasons.Reason(
            reasons.RETRIED_MESSAGES,
            {"n": retried, "codes": ", ".join(sorted(code or "—" for code in codes))},
        ),
    )
    db.session.commit()
    logger.info("campaign %s: %d failed messages retried by user %s", campaign.id, retried, user_id)
    return retried
