"""Templates made in WhatsApp Manager, imported into Disparo and kept in step with it.

:func:`import_templates` reads a sender's WhatsApp Business Account's templates
(``GET /{waba-id}/message_templates``, every page: the providers'
``list_templates``) and, for each, finds Disparo's own by Meta's id, else by name and
language in that sender:

- none: it is created with WhatsApp's status, category, quality and texts (no
  creator when the periodic sync imports it);
- one: its status, category, quality and texts follow WhatsApp's, through the same
  steps as the template webhooks (``template_webhooks.set_status``: the creator told of
  an approval or rejection, the campaigns of a template now PAUSED or DISABLED paused
  or failed); a draft being edited in Disparo is left alone.

A template Disparo could not send as WhatsApp has it is not imported: one with a
header of a kind Disparo does not know, a button of a kind it cannot fill (one-time
password, flow, catalog…), another component (a carousel, a limited-time offer), a
status or category Disparo does not know, one WhatsApp reports as deleted, or texts the
template form would refuse (``validation.parse_template``, the form's own checks). Each
is reported as skipped with the reason, in the reader's words; none is dropped
silently. A media or location header comes in without what it shows (Meta keeps only
a sample of the media): the operator gives it (``template_parts.SHOWN_IN_HEADER``,
which an edit gives without losing the approval, and a listing leaves alone). A
template Disparo already has whose content is skipped still takes WhatsApp's status
(and quality and category): a template WhatsApp paused or disabled stops its
campaigns whatever its content.

The listing is a picture taken at ``listed_at`` (the database's clock, read before the
first page), and only what it can know is applied:

- each of status, quality and category is left alone on a template whose time for it
  (``status_event_at``…, a webhook's) may be after ``listed_at``, and set to
  ``listed_at`` when the import changes it, so a webhook older than the listing,
  replayed later, does not undo it either (``template_webhooks``);
- when the listing was complete, a template Disparo knows by Meta's id and that is
  neither listed by its id nor by its name and language was deleted in WhatsApp
  Manager: it becomes DISABLED with the reason ``DELETED`` and its campaigns fail with
  ``template_deleted`` (sending with it would fail every message with 132001). Only one
  updated before ``listed_at`` and submitted at least ``LISTING_LAG`` before it: one
  submitted meanwhile, or that Meta's listing does not show yet, is not gone.

No transaction is open while WhatsApp is read (up to 100 pages: a transaction left
open holds back vacuum and any lock it took): the sender is read and the transaction
ended, the listing read, then the changes applied in a new transaction that takes the
sender's ``FOR NO KEY UPDATE`` lock (two imports of one sender take turns; inserts
referencing it go on) and checks it is still the same WABA. Only the templates that
change are locked, ``FOR NO KEY UPDATE`` in id order (``template_webhooks.lock_in_order``,
as the webhooks lock): campaigns being created with them go on, and no lock cycle
with a webhook is possible. Their rows are read again once locked and the change
decided again on what they hold then.

Inline, not a job: a WABA holds at most 6,000 templates, 60 pages of 100, so the
caller (the page's button, the API) gets the summary in the same request, and the
periodic sync (``jobs/tasks.py``, hourly) runs it for every connected sender. Each run
also stops the campaigns still scheduled or sending with a PAUSED or DISABLED template
of the sender (``template_webhooks.lingering_stops``: a process that died between a
status's commit and its campaigns' stop).

Templates are not in the audit trail (creating one by hand is not either).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from flask import current_app
from flask_babel import LazyString

from app import db
from campaigns import providers, reasons, template_parts, template_webhooks
from campaigns.i18n import _, _l
from campaigns.models import (
    HeaderFormat,
    MessageTemplate,
    Provider,
    Sender,
    TemplateCategory,
    TemplateQuality,
    TemplateStatus,
)
from campaigns.providers.base import META_TEMPLATE_STATUS, WabaTemplates
from campaigns.services import Conflict, NotFound, ServiceError
from campaigns.validation import Invalid, TemplateFields, parse_template

logger = logging.getLogger(__name__)

DELETED = template_webhooks.DELETED_REASON  # the status reason of a template gone from its WABA
MAX_ID = 64  # provider_template_id's width
# How long after a submission Meta's listing may still not show the template: one
# submitted later than this before the listing is never taken for deleted (the next
# hourly sync decides).
LISTING_LAG = timedelta(minutes=10)

# Why a template was not imported: a code (logs) and its words (the reader's language).
SKIP_REASONS: dict[str, LazyString] = {
    "malformed": _l("WhatsApp's description of this template is incomplete."),
    "unknown_status": _l("WhatsApp reports it as %(status)s, a status Disparo does not know."),
    "unknown_category": _l(
        "Its category %(category)s is not one Disparo knows (marketing, utility, authentication)."
    ),
    "unknown_format": _l("Its parameter format %(format)s is not one Disparo knows."),
    "header_kind": _l("Its header is %(format)s, a kind Disparo cannot send yet."),
    "button_kind": _l("It has a button of a kind Disparo cannot send yet: %(kind)s."),
    "component_kind": _l("It has a part Disparo cannot send yet: %(kind)s."),
    "invalid": _l("It does not pass Disparo's template checks: %(problems)s"),
    "draft": _l(
        "Disparo has a draft of this name and language being edited; it was left as it is."
    ),
    "repeated": _l("WhatsApp listed this name and language twice; the first was used."),
    "deleted": _l("WhatsApp reports it as deleted."),
}


# The buttons Disparo sends and what it keeps of each (Meta's JSON has more).
BUTTON_FIELDS = {
    "QUICK_REPLY": ("text",),
    "URL": ("text", "url"),
    "PHONE_NUMBER": ("text", "phone_number"),
    "COPY_CODE": ("example",),
}


# Meta's words for a header format, a button or a component, worded for the reader; one
# not listed is shown as WhatsApp wrote it.
KIND_WORDS: dict[str, LazyString] = {
    "IMAGE": _l("an image"),
    "VIDEO": _l("a video"),
    "DOCUMENT": _l("a document"),
    "LOCATION": _l("a location"),
    "PHONE_NUMBER": _l("phone number"),
    "OTP": _l("one-time password"),
    "COPY_CODE": _l("copy code"),
    "FLOW": _l("flow"),
    "CATALOG": _l("catalog"),
    "MPM": _l("multi-product"),
    "VOICE_CALL": _l("voice call"),
    "CAROUSEL": _l("carousel"),
    "LIMITED_TIME_OFFER": _l("limited-time offer"),
}


@dataclass(frozen=True)
class Skipped:
    name: str
    language: str
    code: str
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        """The reason in the reader's language (the request's locale)."""
        words = {k: str(KIND_WORDS.get(v, v)) for k, v in self.params.items()}
        return str(SKIP_REASONS[self.code]) % words


@dataclass
class ImportResult:
    imported: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: list[Skipped] = field(default_factory=list)


@dataclass(frozen=True)
class Standing:
    """What WhatsApp's listing says of a template apart from its content: whom it is
    (Meta's id, name and language) and its status, quality and category, each None
    when the listing's value is not one Disparo knows. Read even when the content
    cannot be imported, so a template Disparo has still takes its status."""

    provider_id: str | None
    key: tuple[str, str]  # name and language; "?" for one that is not text
    meta_status: str
    status: TemplateStatus | None
    reason: str | None  # a rejection's reason as WhatsApp gave it
    quality: str | None
    category: TemplateCategory | None


@dataclass(frozen=True)
class Incoming:
    """One of WhatsApp's templates, read and checked as Disparo would store it."""

    standing: Standing
    fields: TemplateFields


def _word(value: Any, limit: int = 64) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        return None
    return value.strip()


def read_standing(raw: Mapping[str, Any]) -> Standing:
    meta_status = (_word(raw.get("status")) or "?").upper()
    category = (_word(raw.get("category")) or "?").upper()
    quality = raw.get("quality_score")
    score = quality.get("score") if isinstance(quality, dict) else None
    rejected = _word(raw.get("rejected_reason"), 200)
    return Standing(
        provider_id=_word(raw.get("id"), MAX_ID),
        key=(_word(raw.get("name"), 512) or "?", _word(raw.get("language"), 16) or "?"),
        meta_status=meta_status,
        status=META_TEMPLATE_STATUS.get(meta_status),
        reason=rejected if rejected and rejected.upper() != "NONE" else None,
        # UNKNOWN is "not rated yet": no news for a template, whatever it had.
        quality=score
        if isinstance(score, str) and score in TemplateQuality.__members__ and score != "UNKNOWN"
        else None,
        category=TemplateCategory(category) if category in TemplateCategory.__members__ else None,
    )


def read(raw: Mapping[str, Any]) -> Incoming | Skipped:
    """One template of the Graph listing as Disparo would store it, or why it cannot.
    Total: any value of the wrong type (Graph's JSON is not ours) is a skip, never an
    exception."""
    standing = read_standing(raw)
    name, language = standing.key

    def skip(code: str, **params: str) -> Skipped:
        return Skipped(name, language, code, params)

    if "?" in (name, language):
        return skip("malformed")
    if standing.status is None:
        return skip("unknown_status", status=standing.meta_status)
    if standing.meta_status == DELETED:
        return skip("deleted")
    if standing.category is None:
        return skip("unknown_category", category=(_word(raw.get("category")) or "?").upper())
    fmt = (_word(raw.get("parameter_format")) or "POSITIONAL").lower()  # Meta's default
    if fmt not in ("named", "positional"):
        return skip("unknown_format", format=fmt.upper())
    texts: dict[str, Any] = {
        "header_format": None,
        "header_text": None,
        "body_text": None,
        "footer_text": None,
    }
    buttons: list[dict[str, str]] = []
    components = raw.get("components", [])
    if not isinstance(components, list):
        return skip("malformed")
    for component in components:
        if not isinstance(component, dict):
            return skip("malformed")
        kind = str(component.get("type", "")).upper()
        text = component.get("text")
        if text is not None and not isinstance(text, str):
            return skip("malformed")
        if kind == "HEADER":
            # Meta keeps a media header's sample, not the media a send shows: an operator
            # gives that (a link or a file) before a campaign can use the template.
            header_format = str(component.get("format", "TEXT")).upper()
            if header_format not in HeaderFormat.__members__:
                return skip("header_kind", format=header_format)
            texts["header_format"] = header_format
            texts["header_text"] = text if header_format == "TEXT" else None
        elif kind in ("BODY", "FOOTER"):
            texts[f"{kind.lower()}_text"] = text
        elif kind == "BUTTONS":
            listed = component.get("buttons", [])
            if not isinstance(listed, list):
                return skip("malformed")
            for button in listed:
                if not isinstance(button, dict):
                    return skip("malformed")
                button_kind = str(button.get("type", "")).upper()
                if button_kind not in BUTTON_FIELDS:
                    return skip("button_kind", kind=button_kind or "?")
                kept = {k: v for k, v in button.items() if k in BUTTON_FIELDS[button_kind]}
                if isinstance(kept.get("example"), list) and kept["example"]:
                    kept["example"] = kept["example"][0]  # Meta lists a copy code's one example
                if not all(isinstance(v, str) for v in kept.values()):
                    return skip("malformed")
                buttons.append({"type": button_kind, **kept})
        else:
            return skip("component_kind", kind=kind or "?")
    try:
        fields = parse_template(
            {
                "name": name,
                "language": language,
                "category": standing.category.value,
                "parameter_format": fmt,
            }
            | texts
            | {"buttons": buttons},
            require_media=False,
        )
    except Invalid as invalid:
        return skip("invalid", problems=" ".join(invalid.errors.values()))
    return Incoming(standing, fields)


def _connection(sender: Sender) -> tuple[Any, ...]:
    """What an import is about: the same values after the listing, the same WABA."""
    return sender.provider, sender.waba_id


def _check_usable(sender: Sender | None) -> Sender:
    if sender is None:
        raise NotFound(_("There is no such sender."))
    if not sender.waba_id:
        raise Conflict(
            _(
                "Set this sender's WhatsApp Business Account id (WABA id) first:"
                " its templates live there."
            )
        )
    if sender.provider is Provider.MOCK and not current_app.config.get("MOCKS_ENABLED"):
        raise Conflict(_("This sender uses the mock WhatsApp, which is off here."))
    return sender


def import_templates(sender_id: int, user_id: int | None = None) -> ImportResult:
    """Import and update the templates of a sender's WABA (the module says how)."""
    sender = _check_usable(db.session.get(Sender, sender_id))
    # Before the first page: what the listing shows is as of this time or later.
    listed_at: datetime = db.session.execute(sa.select(sa.func.clock_timestamp())).scalar_one()
    connection = _connection(sender)
    db.session.expunge(sender)  # a detached copy the provider reads, with no lazy load
    db.session.rollback()  # no transaction open during the Graph calls
    try:
        listing = providers.for_sender(sender, current_app.config).list_templates()
    except providers.ProviderError as error:
        db.session.rollback()
        raise ServiceError(error.message) from error
    # FOR NO KEY UPDATE: imports of one sender take turns; inserts referencing it go on.
    current = db.session.scalar(
        sa.select(Sender).where(Sender.id == sender_id).with_for_update(key_share=True)
    )
    try:
        current = _check_usable(current)
        if _connection(current) != connection:
            raise Conflict(
                _("This sender's WhatsApp account changed while its templates were read.")
            )
    except ServiceError:
        db.session.rollback()
        raise
    stops: list[template_webhooks.Stop] = []
    result = _apply(sender_id, user_id, listing, listed_at, stops)
    db.session.commit()
    # And what an earlier run (or webhook) committed but died before stopping.
    owed = template_webhooks.lingering_stops(sender_id)
    db.session.rollback()
    planned = {stop.template_id for stop in stops}
    template_webhooks.stop_campaigns(stops + [s for s in owed if s.template_id not in planned])
    logger.info(
        "sender %s: templates imported %s, updated %s, unchanged %s, skipped %s%s",
        sender_id,
        result.imported,
        result.updated,
        result.unchanged,
        len(result.skipped),
        "" if listing.complete else " (listing incomplete: none marked deleted)",
    )
    for skipped in result.skipped:
        logger.info(
            "sender %s: template %s/%s skipped: %s",
            sender_id,
            skipped.name,
            skipped.language,
            skipped.code,
        )
    return result


@dataclass
class _Planned:
    """A listed template Disparo has, and what the listing says of it (its content
    None when it cannot be imported: then only its standing applies)."""

    template: MessageTemplate
    standing: Standing
    fields: TemplateFields | None
    matched_by_id: bool


def _apply(
    sender_id: int,
    user_id: int | None,
    listing: WabaTemplates,
    listed_at: datetime,
    stops: list[template_webhooks.Stop],
) -> ImportResult:
    """The listing applied under the sender's lock (the caller commits)."""
    result = ImportResult()
    existing = list(
        db.session.scalars(
            sa.select(MessageTemplate)
            .where(MessageTemplate.sender_id == sender_id)
            .order_by(MessageTemplate.id)
        )
    )  # not locked: only those that change are, below
    by_id = {t.provider_template_id: t for t in existing if t.provider_template_id}
    by_key = {(t.name, t.language): t for t in existing}
    seen_ids: set[str] = set()
    seen_keys: set[tuple[str, str]] = set()
    planned: list[_Planned] = []
    new: list[Incoming] = []
    for raw in listing.templates:
        incoming = read(raw)
        standing = incoming.standing if isinstance(incoming, Incoming) else read_standing(raw)
        provider_id, key = standing.provider_id, standing.key
        if provider_id:
            seen_ids.add(provider_id)
        found = by_id.get(provider_id) if provider_id else None
        by_id_match = found is not None
        found = found or by_key.get(key)
        if isinstance(incoming, Skipped):
            seen_keys.add(key)
            result.skipped.append(incoming)
            if found is not None and found.status is not TemplateStatus.DRAFT:
                planned.append(_Planned(found, standing, None, by_id_match))
            continue
        if key in seen_keys:
            result.skipped.append(Skipped(*key, "repeated"))
            continue
        seen_keys.add(key)
        if found is None:
            new.append(incoming)  # a second listing of its key is "repeated" above
        elif found.status is TemplateStatus.DRAFT:
            result.skipped.append(Skipped(*key, "draft"))
        else:
            planned.append(_Planned(found, standing, incoming.fields, by_id_match))
    cutoff = listed_at - LISTING_LAG
    gone = [
        t for t in existing if listing.complete and _gone(t, seen_ids, seen_keys, listed_at, cutoff)
    ]
    # Lock only what changes, in id order, and decide again on the rows as locked.
    changing = {p.template.id for p in planned if _changes(p, listed_at)}
    locked = template_webhooks.lock_in_order(changing | {t.id for t in gone})
    for plan in planned:
        template = plan.template
        still = template.id in locked and _still_matches(plan)
        if still and _changes(plan, listed_at):
            _update(plan, listed_at, stops)
            result.updated += 1
        elif plan.fields is not None:
            result.unchanged += 1
    for template in gone:
        if template.id in locked and _gone(template, seen_ids, seen_keys, listed_at, cutoff):
            template_webhooks.set_status(
                template, TemplateStatus.DISABLED, DELETED, stops, reasons.TEMPLATE_DELETED
            )
            template.status_event_at = listed_at
            logger.info("template %s: gone from its WABA (sender %s)", template.id, sender_id)
            result.updated += 1
    for incoming in new:
        _new(sender_id, user_id, incoming, listed_at)
        result.imported += 1
    return result


def _still_matches(plan: _Planned) -> bool:
    """The locked row is still the template the listing's entry was matched with."""
    template, standing = plan.template, plan.standing
    if template.status is TemplateStatus.DRAFT:
        return False
    if plan.matched_by_id:
        return template.provider_template_id == standing.provider_id
    return (template.name, template.language) == standing.key


def _gone(
    template: MessageTemplate,
    seen_ids: set[str],
    seen_keys: set[tuple[str, str]],
    listed_at: datetime,
    cutoff: datetime,
) -> bool:
    """Deleted in WhatsApp Manager: Meta's id known, listed neither by it nor by name, and
    in Disparo since before the listing (a template submitted or changed meanwhile, or
    too recently for Meta's listing to show it, is not gone)."""
    return bool(
        template.provider_template_id
        and template.provider_template_id not in seen_ids
        and (template.name, template.language) not in seen_keys
        and template.status not in (TemplateStatus.DRAFT, TemplateStatus.DISABLED)
        and template.updated_at < listed_at
        and (template.submitted_at is None or template.submitted_at < cutoff)
        and not _told_since(template.status_event_at, listed_at)
    )


def _told_since(event_at: datetime | None, listed_at: datetime) -> bool:
    """A webhook may have told of this after the listing was taken: its word stands."""
    return event_at is not None and template_webhooks.may_be_after(event_at, listed_at)


def _new(
    sender_id: int, user_id: int | None, incoming: Incoming, listed_at: datetime
) -> MessageTemplate:
    standing = incoming.standing
    assert standing.status is not None
    template = MessageTemplate(
        sender_id=sender_id,
        created_by_id=user_id,
        status=standing.status,
        status_reason=standing.reason if standing.status is TemplateStatus.REJECTED else None,
        provider_template_id=standing.provider_id,
        quality_rating=standing.quality,
        status_event_at=listed_at,
        quality_event_at=listed_at,
        category_event_at=listed_at,
        **incoming.fields.__dict__,
    )
    db.session.add(template)
    db.session.flush()
    return template


def _status_change(
    template: MessageTemplate, standing: Standing
) -> tuple[TemplateStatus, str | None, str | None] | None:
    """The status, reason and campaigns' stop reason to set, or None if nothing changes.
    A reason is never lost for want of one in the listing: a REJECTED listed without
    its reason keeps the one Disparo has."""
    status = standing.status
    if status is None:
        return None
    if standing.meta_status == DELETED:
        if template.status is status and template.status_reason == DELETED:
            return None
        return status, DELETED, reasons.TEMPLATE_DELETED
    if status is TemplateStatus.REJECTED:
        known = template.status_reason if template.status is TemplateStatus.REJECTED else None
        reason = standing.reason or known
        if template.status is status and template.status_reason == reason:
            return None
        return status, reason, None
    if template.status is status:
        return None  # a reason Disparo keeps (DELETED…) stays
    return status, None, None


def _field_changes(plan: _Planned, listed_at: datetime) -> dict[str, Any]:
    """What the listing changes in the template: content, id, category, quality, status,
    each of the last three unless a webhook may have told of it after the listing."""
    template, standing = plan.template, plan.standing
    changes: dict[str, Any] = {}
    if plan.fields is not None:
        if standing.provider_id and template.provider_template_id != standing.provider_id:
            changes["provider_template_id"] = standing.provider_id
        same_header = plan.fields.header_format == template.header_format
        for name, value in plan.fields.__dict__.items():
            if name in ("name", "language", "category") or getattr(template, name) == value:
                continue
            if name in template_parts.SHOWN_IN_HEADER and same_header:
                continue  # what the operator gave the header to show: Meta has none of it
            changes[name] = value
    category = standing.category
    if (
        category is not None
        and template.category is not category
        and not _told_since(template.category_event_at, listed_at)
    ):
        changes["category"] = category
    quality = standing.quality
    if (
        quality is not None
        and template.quality_rating != quality
        and not _told_since(template.quality_event_at, listed_at)
    ):
        changes["quality_rating"] = quality
    status = _status_change(template, standing)
    if status is not None and not _told_since(template.status_event_at, listed_at):
        changes["status"] = status
    return changes


def _changes(plan: _Planned, listed_at: datetime) -> bool:
    return bool(_field_changes(plan, listed_at))


def _update(plan: _Planned, listed_at: datetime, stops: list[template_webhooks.Stop]) -> None:
    """Bring a (locked) template in step with WhatsApp's listing."""
    template = plan.template
    for name, value in _field_changes(plan, listed_at).items():
        if name == "category":
            template_webhooks.set_category(template, value)
            template.category_event_at = listed_at
        elif name == "quality_rating":
            template_webhooks.set_quality(template, value)
            template.quality_event_at = listed_at
        elif name == "status":
            status, reason, stop_reason = value
            template_webhooks.set_status(template, status, reason, stops, stop_reason)
            template.status_event_at = listed_at
        else:
            setattr(template, name, value)


def connected_sender_ids() -> list[int]:
    """The senders whose WABA the periodic sync reads: active, with a WABA id, and a token
    (the mock asks for none; mock senders only where mocks are on, as the import allows)."""
    has_access: sa.ColumnElement[bool] = Sender.access_token.is_not(None)
    if current_app.config.get("MOCKS_ENABLED"):
        has_access = sa.or_(Sender.provider == Provider.MOCK, has_access)
    else:
        has_access = sa.and_(Sender.provider != Provider.MOCK, has_access)
    return list(
        db.session.scalars(
            sa.select(Sender.id)
            .where(Sender.is_active, Sender.waba_id.is_not(None), has_access)
            .order_by(Sender.id)
        )
    )
