"""WhatsApp's template webhooks: a template's status, quality and category as they change.

Meta posts them on the WhatsApp Business Account object (``entry[].id`` is the WABA
id; the change's ``value`` has no ``metadata.phone_number_id``):

- ``message_template_status_update``: ``event`` (APPROVED, REJECTED, PAUSED,
  DISABLED, PENDING, and the statuses the template import reads as one of them:
  IN_APPEAL, LIMIT_EXCEEDED, PENDING_DELETION, ARCHIVED, DELETED; others, such as
  FLAGGED or REINSTATED, are logged), ``reason``;
- ``message_template_quality_update``: ``previous_quality_score``,
  ``new_quality_score`` (GREEN, YELLOW, RED, UNKNOWN);
- ``template_category_update``: ``previous_category``, ``new_category``;

each with ``message_template_id``, ``message_template_name`` and
``message_template_language``. The template is found by Meta's id
(``provider_template_id``), else by name and language in a sender of that WABA, and
only among the senders whose app secret (or the global one) signed the body.

Approved and rejected have the effect the periodic sync's finding would (the
creator is told); PAUSED pauses the template's sending and scheduled campaigns at
once (``template_paused``; LIMIT_EXCEEDED too), DISABLED fails its sending, scheduled
and paused ones (``template_disabled``; PENDING_DELETION and ARCHIVED too, DELETED with
the reason ``DELETED`` and ``template_deleted`` as the import's), each owner told as for
any automatic pause. A template
approved again resumes nothing: the operator does. A drop to RED warns the
template's creator. The periodic sync stays the fallback for a review's outcome
never received (it asks about pending templates only: a lost PAUSED is not caught).

Meta retries a webhook for days and does not keep their order: each change is applied
as of its entry's ``time`` (the time of arrival if it has none or one ahead of the
database's clock), and each template keeps
the time of the change that last set its status, quality and category
(``status_event_at``…); an older change about the same thing is ignored (counted
``templates_stale``), so a replayed APPROVED cannot undo a later PAUSED. Disparo's own
changes are stamped too (``services/templates.py``: an edit, a submission, the review
sync; ``services/template_import.py``: the listing's time).

Parsing is as tolerant as ``webhooks.py``'s: a part of the wrong shape is skipped
with the request's warning, a template Disparo does not have is logged and ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import sqlalchemy as sa

from app import db
from campaigns import campaign_states, clock, notifications, reasons
from campaigns.models import (
    Campaign,
    CampaignStatus,
    MessageTemplate,
    Sender,
    TemplateCategory,
    TemplateQuality,
    TemplateStatus,
)
from campaigns.providers.base import META_TEMPLATE_STATUS
from campaigns.validation import identifier

logger = logging.getLogger(__name__)

STATUS_FIELD = "message_template_status_update"
QUALITY_FIELD = "message_template_quality_update"
CATEGORY_FIELD = "template_category_update"
FIELDS = frozenset({STATUS_FIELD, QUALITY_FIELD, CATEGORY_FIELD})
# Where each field's applied time is kept: an older change of that field is ignored.
EVENT_TIMES = {
    STATUS_FIELD: "status_event_at",
    QUALITY_FIELD: "quality_event_at",
    CATEGORY_FIELD: "category_event_at",
}
MAX_ID = 64  # provider_template_id's and waba_id's width
# The status reason of a template gone from its WABA (services/template_import.py); its
# campaigns fail with reasons.TEMPLATE_DELETED.
DELETED_REASON = "DELETED"
MAX_NAME = 512
MAX_LANGUAGE = 16
MAX_REASON = 200
# The campaigns a template's stop reaches: those that would send with it next.
PAUSED_REACHES = (CampaignStatus.SENDING, CampaignStatus.SCHEDULED)
DISABLED_REACHES = (CampaignStatus.SENDING, CampaignStatus.SCHEDULED, CampaignStatus.PAUSED)


class Skipper(Protocol):
    def __call__(self, where: str, what: str) -> None: ...


class Signed(Protocol):
    def cover(self, sender_id: int) -> bool: ...


@dataclass(frozen=True)
class Stop:
    """A template WhatsApp paused or disabled: its campaigns stop once the webhook commits."""

    template_id: int
    status: TemplateStatus
    # The campaigns' reason when it is not the status's own (a template deleted in
    # WhatsApp Manager: services/template_import.py).
    reason: str | None = None


def apply(payload: Any, signed: Signed, skipped: Skipper) -> tuple[dict[str, int], list[Stop]]:
    """Apply every template change of a webhook (the caller commits, then calls
    :func:`stop_campaigns` with the stops). Parts ``webhooks.py`` already reports as
    malformed (the body, ``entry``, ``changes``) are passed over silently here.

    The templates every change is about are found first, then locked together in id
    order (``FOR NO KEY UPDATE``: a campaign being created with one still goes on), then
    the changes applied in the payload's order: two webhooks, or a webhook and the
    template import (which locks in id order too), never wait on each other in a
    cycle."""
    summary = {"templates_applied": 0, "templates_unknown": 0, "templates_stale": 0}
    stops: list[Stop] = []
    found: list[_Found] = []
    entries = payload.get("entry") if isinstance(payload, dict) else None
    now: datetime | None = None  # the database's, in whole seconds as Meta's times
    for e, entry in enumerate(entries if isinstance(entries, list) else []):
        changes = entry.get("changes") if isinstance(entry, dict) else None
        at, time_ok = clock.entry_time(entry) if isinstance(entry, dict) else (None, False)
        if not time_ok:
            continue  # webhooks.py reports a time that is not one
        for c, change in enumerate(changes if isinstance(changes, list) else []):
            field = change.get("field") if isinstance(change, dict) else None
            if not isinstance(field, str) or field not in FIELDS:
                continue  # webhooks.py reports a field that is not text
            where = f"entry[{e}].changes[{c}]"
            value = change.get("value")
            if not isinstance(value, dict):
                skipped(f"{where}.value", "is not an object")
                continue
            waba_id = identifier(entry.get("id"), MAX_ID, number=True)
            now = now or clock.database_now(db.session).replace(microsecond=0)
            # A time ahead of ours is taken as now (as webhooks._apply_account does): one
            # bogus future time would otherwise hold off every change until then.
            when = min(at, now) if at is not None else now
            update = _update(field, value, stops, where, skipped)
            if update is None:
                continue
            templates = _templates(value, waba_id, signed, where, skipped)
            if templates is not None:
                found.append(_Found(field, value, where, when, update, templates))
    locked = lock_in_order({t.id for item in found for t in item.templates})
    for item in found:
        outcome = _apply_change(item, [t for t in item.templates if t.id in locked])
        summary[outcome] += 1
    return summary, stops


@dataclass(frozen=True)
class _Found:
    """A change read, and the templates it is about (not locked yet)."""

    field: str
    value: Mapping[str, Any]
    where: str
    at: datetime
    update: Callable[[MessageTemplate], None]
    templates: list[MessageTemplate]


def lock_in_order(template_ids: set[int]) -> set[int]:
    """Lock these templates ``FOR NO KEY UPDATE`` in id order and read their rows again
    (what a writer committed meanwhile); the ids still there. Every writer of several
    templates at once (the webhooks, the template import) locks through here."""
    if not template_ids:
        return set()
    return {
        t.id
        for t in db.session.scalars(
            sa.select(MessageTemplate)
            .where(MessageTemplate.id.in_(sorted(template_ids)))
            .order_by(MessageTemplate.id)
            .with_for_update(key_share=True)
            .execution_options(populate_existing=True)
        )
    }


def _templates(
    value: Mapping[str, Any], waba_id: str | None, signed: Signed, where: str, skipped: Skipper
) -> list[MessageTemplate] | None:
    """The templates a change is about (not locked: :func:`apply` locks them all in id
    order); None if it names none usably."""
    meta_id = identifier(value.get("message_template_id"), MAX_ID, number=True)
    name = identifier(value.get("message_template_name"), MAX_NAME)
    language = identifier(value.get("message_template_language"), MAX_LANGUAGE)
    if meta_id is None and (name is None or language is None):
        skipped(f"{where}.value", "names no template (message_template_id, or name and language)")
        return None
    query = sa.select(MessageTemplate).join(Sender, Sender.id == MessageTemplate.sender_id)
    if waba_id is not None:  # a sender without its WABA id recorded is not excluded
        query = query.where(sa.or_(Sender.waba_id == waba_id, Sender.waba_id.is_(None)))
    found: list[MessageTemplate] = []
    if meta_id is not None:
        found = list(
            db.session.scalars(
                query.where(MessageTemplate.provider_template_id == meta_id).order_by(
                    MessageTemplate.id
                )
            )
        )
    if not found and name is not None and language is not None and waba_id is not None:
        by_name = query.where(
            Sender.waba_id == waba_id,
            MessageTemplate.name == name,
            MessageTemplate.language == language,
        )
        found = list(db.session.scalars(by_name.order_by(MessageTemplate.id)))
    allowed = [t for t in found if signed.cover(t.sender_id)]
    if found and not allowed:
        skipped(where, "is about a template of a sender whose app secret did not sign it")
        return None
    return allowed


def _update(
    field: str, value: Mapping[str, Any], stops: list[Stop], where: str, skipped: Skipper
) -> Callable[[MessageTemplate], None] | None:
    """What the change does to each template it is about (the time check aside); None if
    there is nothing to do (skipped, or an event Disparo does not record)."""
    if field == STATUS_FIELD:
        event = identifier(value.get("event"), MAX_REASON)
        if event is None:
            skipped(f"{where}.value.event", "is not a template status")
            return None
        # Meta's events Disparo records are the statuses the import reads, mapped alike
        # (providers/base.py); others (FLAGGED, REINSTATED, LOCKED…) are logged.
        status = META_TEMPLATE_STATUS.get(event)
        if status is None:
            logger.info(
                "template webhook %s: event %s is not a status Disparo records", where, event
            )
            return None
        if event == DELETED_REASON:  # gone from the WABA: as the import's DELETED
            return lambda template: set_status(
                template, status, DELETED_REASON, stops, reasons.TEMPLATE_DELETED
            )
        raw_reason = identifier(value.get("reason"), MAX_REASON)
        reason = raw_reason if raw_reason and raw_reason.upper() != "NONE" else None
        return lambda template: set_status(template, status, reason, stops)
    if field == QUALITY_FIELD:
        quality = identifier(value.get("new_quality_score"), MAX_REASON)
        if quality is None or quality not in TemplateQuality.__members__:
            skipped(f"{where}.value.new_quality_score", "is not GREEN, YELLOW, RED or UNKNOWN")
            return None
        return lambda template: set_quality(template, quality)
    category = identifier(value.get("new_category"), MAX_REASON)
    if category is None or category not in TemplateCategory.__members__:
        skipped(f"{where}.value.new_category", "is not a template category Disparo knows")
        return None
    return lambda template: set_category(template, TemplateCategory(category))


def _apply_change(item: _Found, templates: list[MessageTemplate]) -> str:
    """One change applied to its (locked) templates, each unless it knows a newer one."""
    field, where, at = item.field, item.where, item.at
    if not templates:
        logger.warning(
            "template webhook %s (%s) about template id %r, %r/%r: no such template, ignored",
            where,
            field,
            identifier(item.value.get("message_template_id"), MAX_ID, number=True),
            identifier(item.value.get("message_template_name"), MAX_NAME),
            identifier(item.value.get("message_template_language"), MAX_LANGUAGE),
        )
        return "templates_unknown"
    column = EVENT_TIMES[field]
    fresh = [t for t in templates if _newer(at, getattr(t, column))]
    for template in templates:
        if template not in fresh:
            logger.info(
                "template webhook %s (%s) of %s about template %s: older than the one"
                " applied (%s), ignored",
                where,
                field,
                at.isoformat(),
                template.id,
                getattr(template, column).isoformat(),
            )
            continue
        item.update(template)
        setattr(template, column, at)
    return "templates_applied" if fresh else "templates_stale"


# Meta's times are whole seconds: an event of second S happened during [S, S + 1 s).
# The template import's times are the database clock's, to the microsecond.
META_TIME_STEP = timedelta(seconds=1)


def may_be_after(event_at: datetime, moment: datetime) -> bool:
    """Whether an event recorded at ``event_at`` may have happened after ``moment``: a
    whole second (Meta's time) spans that second; an import's time is exact."""
    step = META_TIME_STEP if event_at.microsecond == 0 else timedelta(0)
    return event_at + step > moment


def _newer(at: datetime, applied: datetime | None) -> bool:
    """As new as what was applied: the same second as another webhook's, the later arrival
    wins (Meta gives no finer order); the same second as an import's listing, the webhook
    wins (it may be the later)."""
    return applied is None or may_be_after(at, applied)


def set_quality(template: MessageTemplate, quality: str) -> None:
    before = template.quality_rating
    template.quality_rating = quality
    notifications.record_template_quality(db.session, template, before)
    if before != quality:
        logger.info("template %s quality: %s → %s", template.id, before, quality)


def set_category(template: MessageTemplate, category: TemplateCategory) -> None:
    before = template.category
    template.category = category
    if before is not category:
        logger.info("template %s category: %s → %s (by WhatsApp)", template.id, before, category)


def set_status(
    template: MessageTemplate,
    status: TemplateStatus,
    reason: str | None,
    stops: list[Stop],
    stop_reason: str | None = None,
) -> None:
    """Record WhatsApp's status for a template (a webhook's, or a listing's: the import),
    telling its creator and queueing the stop of its campaigns (the caller commits, then
    calls :func:`stop_campaigns`)."""
    before = template.status
    if before is TemplateStatus.DRAFT:
        # Edited since it was submitted (an edit forgets the provider's id, so only a
        # name match gets here): WhatsApp's word is about the version before the edit.
        logger.info("template %s is a draft again: WhatsApp's %s not applied", template.id, status)
        return
    template.status = status
    template.status_reason = reason if status is TemplateStatus.REJECTED or stop_reason else None
    notifications.record_template_review(db.session, template, before)
    if status is not before:
        logger.info("template %s: %s → %s (webhook)", template.id, before, status)
    if status in (TemplateStatus.PAUSED, TemplateStatus.DISABLED):
        stops.append(Stop(template.id, status, stop_reason))
    elif status is TemplateStatus.APPROVED and before is TemplateStatus.PAUSED:
        logger.info(
            "template %s approved again: its paused campaigns wait for the operator", template.id
        )


def stop_campaigns(stops: list[Stop]) -> None:
    """Pause (PAUSED) or fail (DISABLED) the campaigns that would send with these templates;
    each campaign under its own lock and commit, as the engine's own stops."""
    for stop in stops:
        paused = stop.status is TemplateStatus.PAUSED
        campaign_ids = list(
            db.session.scalars(
                sa.select(Campaign.id)
                .where(
                    Campaign.template_id == stop.template_id,
                    Campaign.status.in_(PAUSED_REACHES if paused else DISABLED_REACHES),
                )
                .order_by(Campaign.id)
            )
        )
        db.session.commit()
        for campaign_id in campaign_ids:
            if paused:
                campaign_states.pause_for_template(
                    campaign_id, reasons.Reason(reasons.TEMPLATE_PAUSED)
                )
            else:
                code = stop.reason or reasons.TEMPLATE_DISABLED
                campaign_states.fail(campaign_id, reasons.Reason(code))


def lingering_stops(sender_id: int) -> list[Stop]:
    """The stops a sender's templates still owe: a PAUSED or DISABLED template with a
    campaign scheduled or sending on it (its status committed, then the process died
    before :func:`stop_campaigns` ran). Nothing else leaves one there (a campaign is
    scheduled, resumed or started only with an approved template), so stopping them again
    is the stop that was meant, and a second run finds none."""
    rows = db.session.execute(
        sa.select(MessageTemplate.id, MessageTemplate.status, MessageTemplate.status_reason)
        .where(
            MessageTemplate.sender_id == sender_id,
            MessageTemplate.status.in_((TemplateStatus.PAUSED, TemplateStatus.DISABLED)),
            sa.exists().where(
                Campaign.template_id == MessageTemplate.id,
                Campaign.status.in_((CampaignStatus.SCHEDULED, CampaignStatus.SENDING)),
            ),
        )
        .order_by(MessageTemplate.id)
    ).all()
    return [
        Stop(
            template_id,
            status,
            reasons.TEMPLATE_DELETED if reason == DELETED_REASON else None,
        )
        for template_id, status, reason in rows
    ]
