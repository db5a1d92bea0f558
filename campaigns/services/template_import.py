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

A template Disparo could not send as WhatsApp has it is not imported: one whose header
is media or a location or has a variable, whose buttons need a value at send time or
are of a kind Disparo's form does not make, with another component (a carousel, a
limited-time offer), a status or category Disparo does not know, or texts the
template form would refuse (``validation.parse_template``, the form's own checks).
Each is reported as skipped with the reason, in the reader's words; none is dropped
silently. So an imported template is one Disparo could have made itself: it sends,
edits and resubmits like any other.

When the listing was complete, a template Disparo knows by Meta's id and that is
neither listed by its id nor by its name and language was deleted in WhatsApp
Manager: it becomes DISABLED with the reason ``DELETED`` and its campaigns fail with
``template_deleted`` (sending with it would fail every message with 132001).

Inline, not a job: a WABA holds at most 6,000 templates, 60 pages of 100, so the
caller (the page's button, the API) gets the summary in the same request, and the
periodic sync (``jobs/tasks.py``, hourly) runs it for every connected sender. The
listing is read before any row is locked; the writes then run under the sender's
``FOR NO KEY UPDATE`` lock, so two imports of one sender take turns (the second
finds the first's rows) and templates of other senders are not held.

Templates are not in the audit trail (creating one by hand is not either).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from flask import current_app
from flask_babel import LazyString

from app import db
from campaigns import providers, reasons, template_webhooks
from campaigns.i18n import _, _l
from campaigns.models import (
    MessageTemplate,
    Provider,
    Sender,
    TemplateCategory,
    TemplateQuality,
    TemplateStatus,
)
from campaigns.providers.base import META_TEMPLATE_STATUS
from campaigns.services import Conflict, NotFound, ServiceError
from campaigns.validation import Invalid, TemplateFields, parse_template

logger = logging.getLogger(__name__)

DELETED = "DELETED"  # the status reason of a template gone from its WABA
MAX_ID = 64  # provider_template_id's width

# Why a template was not imported: a code (logs) and its words (the reader's language).
SKIP_REASONS: dict[str, LazyString] = {
    "malformed": _l("WhatsApp's description of this template is incomplete."),
    "unknown_status": _l("WhatsApp reports it as %(status)s, a status Disparo does not know."),
    "unknown_category": _l(
        "Its category %(category)s is not one Disparo knows (marketing, utility, authentication)."
    ),
    "unknown_format": _l("Its parameter format %(format)s is not one Disparo knows."),
    "header_media": _l(
        "Its header is %(format)s: Disparo cannot send media or location headers yet."
    ),
    "header_variable": _l("Its header has a variable: Disparo cannot fill header variables yet."),
    "button_variable": _l(
        "Its URL button has a variable: Disparo cannot fill button variables yet."
    ),
    "button_kind": _l("It has a button of a kind Disparo cannot send yet: %(kind)s."),
    "component_kind": _l("It has a part Disparo cannot send yet: %(kind)s."),
    "invalid": _l("It does not pass Disparo's template checks: %(problems)s"),
    "draft": _l(
        "Disparo has a draft of this name and language being edited; it was left as it is."
    ),
    "repeated": _l("WhatsApp listed this name and language twice; the first was used."),
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
class Incoming:
    """One of WhatsApp's templates, read and checked as Disparo would store it."""

    provider_id: str | None
    status: TemplateStatus
    reason: str | None  # a rejection's reason as WhatsApp gave it
    quality: str | None
    fields: TemplateFields


def _word(value: Any, limit: int = 64) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        return None
    return value.strip()


def read(raw: Mapping[str, Any]) -> Incoming | Skipped:
    """One template of the Graph listing as Disparo would store it, or why it cannot."""
    name = _word(raw.get("name"), 512) or "?"
    language = _word(raw.get("language"), 16) or "?"

    def skip(code: str, **params: str) -> Skipped:
        return Skipped(name, language, code, params)

    if "?" in (name, language):
        return skip("malformed")
    meta_status = (_word(raw.get("status")) or "?").upper()
    status = META_TEMPLATE_STATUS.get(meta_status)
    if status is None:
        return skip("unknown_status", status=meta_status)
    category = (_word(raw.get("category")) or "?").upper()
    if category not in TemplateCategory.__members__:
        return skip("unknown_category", category=category)
    fmt = (_word(raw.get("parameter_format")) or "POSITIONAL").lower()  # Meta's default
    if fmt not in ("named", "positional"):
        return skip("unknown_format", format=fmt.upper())
    texts: dict[str, Any] = {"header_text": None, "body_text": None, "footer_text": None}
    buttons: list[dict[str, str]] = []
    components = raw.get("components")
    for component in components if isinstance(components, list) else []:
        if not isinstance(component, dict):
            return skip("malformed")
        kind = str(component.get("type", "")).upper()
        text = component.get("text")
        if kind == "HEADER":
            header_format = str(component.get("format", "TEXT")).upper()
            if header_format != "TEXT":
                return skip("header_media", format=header_format)
            if isinstance(text, str) and "{{" in text:
                return skip("header_variable")
            texts["header_text"] = text
        elif kind in ("BODY", "FOOTER"):
            texts[f"{kind.lower()}_text"] = text
        elif kind == "BUTTONS":
            for button in component.get("buttons") or []:
                if not isinstance(button, dict):
                    return skip("malformed")
                button_kind = str(button.get("type", "")).upper()
                if button_kind == "URL" and "{{" in str(button.get("url", "")):
                    return skip("button_variable")
                if button_kind not in ("QUICK_REPLY", "URL"):
                    return skip("button_kind", kind=button_kind or "?")
                buttons.append({k: v for k, v in button.items() if k in ("type", "text", "url")})
        else:
            return skip("component_kind", kind=kind or "?")
    try:
        fields = parse_template(
            {"name": name, "language": language, "category": category, "parameter_format": fmt}
            | texts
            | {"buttons": buttons}
        )
    except Invalid as invalid:
        return skip("invalid", problems=" ".join(invalid.errors.values()))
    quality = raw.get("quality_score")
    score = quality.get("score") if isinstance(quality, dict) else None
    rejected = _word(raw.get("rejected_reason"), 200)
    return Incoming(
        provider_id=_word(raw.get("id"), MAX_ID),
        status=status,
        reason=rejected if rejected and rejected.upper() != "NONE" else None,
        # UNKNOWN is "not rated yet": no news for a template, whatever it had.
        quality=score if score in TemplateQuality.__members__ and score != "UNKNOWN" else None,
        fields=fields,
    )


def _usable_sender(sender_id: int) -> Sender:
    sender = db.session.get(Sender, sender_id)
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
    sender = _usable_sender(sender_id)
    try:
        listing = providers.for_sender(sender, current_app.config).list_templates()
    except providers.ProviderError as error:
        db.session.rollback()
        raise ServiceError(error.message) from error
    # FOR NO KEY UPDATE: imports of one sender take turns; inserts referencing it go on.
    db.session.scalar(
        sa.select(Sender.id).where(Sender.id == sender_id).with_for_update(key_share=True)
    )
    result = ImportResult()
    stops: list[template_webhooks.Stop] = []
    existing = list(
        db.session.scalars(
            sa.select(MessageTemplate)
            .where(MessageTemplate.sender_id == sender_id)
            .order_by(MessageTemplate.id)
            .with_for_update()
        )
    )
    by_id = {t.provider_template_id: t for t in existing if t.provider_template_id}
    by_key = {(t.name, t.language): t for t in existing}
    seen_ids: set[str] = set()
    seen_keys: set[tuple[str, str]] = set()
    for raw in listing.templates:
        provider_id = _word(raw.get("id"), MAX_ID)
        key = (_word(raw.get("name"), 512) or "?", _word(raw.get("language"), 16) or "?")
        if provider_id:
            seen_ids.add(provider_id)
        incoming = read(raw)
        if isinstance(incoming, Skipped):
            seen_keys.add(key)
            result.skipped.append(incoming)
            continue
        if key in seen_keys:
            result.skipped.append(Skipped(*key, "repeated"))
            continue
        seen_keys.add(key)
        found = by_id.get(provider_id) if provider_id else None
        found = found or by_key.get(key)
        if found is None:
            template = _new(sender_id, user_id, incoming)
            by_key[key] = template
            result.imported += 1
        elif found.status is TemplateStatus.DRAFT:
            result.skipped.append(Skipped(*key, "draft"))
        elif _update(found, incoming, stops):
            result.updated += 1
        else:
            result.unchanged += 1
    if listing.complete:
        for template in existing:
            gone = (
                template.provider_template_id
                and template.provider_template_id not in seen_ids
                and (template.name, template.language) not in seen_keys
                and template.status not in (TemplateStatus.DRAFT, TemplateStatus.DISABLED)
            )
            if gone:
                template_webhooks.set_status(
                    template, TemplateStatus.DISABLED, DELETED, stops, reasons.TEMPLATE_DELETED
                )
                logger.info("template %s: gone from WABA %s", template.id, sender.waba_id)
                result.updated += 1
    db.session.commit()
    template_webhooks.stop_campaigns(stops)
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


def _new(sender_id: int, user_id: int | None, incoming: Incoming) -> MessageTemplate:
    template = MessageTemplate(
        sender_id=sender_id,
        created_by_id=user_id,
        status=incoming.status,
        status_reason=incoming.reason if incoming.status is TemplateStatus.REJECTED else None,
        provider_template_id=incoming.provider_id,
        quality_rating=incoming.quality,
        **incoming.fields.__dict__,
    )
    db.session.add(template)
    db.session.flush()
    return template


def _update(
    template: MessageTemplate, incoming: Incoming, stops: list[template_webhooks.Stop]
) -> bool:
    """Bring a template in step with WhatsApp's; whether anything changed."""
    changed = False
    if incoming.provider_id and template.provider_template_id != incoming.provider_id:
        template.provider_template_id = incoming.provider_id
        changed = True
    for name, value in incoming.fields.__dict__.items():
        if name in ("name", "language", "category"):
            continue
        if getattr(template, name) != value:
            setattr(template, name, value)
            changed = True
    if template.category is not incoming.fields.category:
        template_webhooks.set_category(template, incoming.fields.category)
        changed = True
    if incoming.quality is not None and template.quality_rating != incoming.quality:
        template_webhooks.set_quality(template, incoming.quality)
        changed = True
    reason = incoming.reason if incoming.status is TemplateStatus.REJECTED else None
    if template.status is not incoming.status or template.status_reason != reason:
        template_webhooks.set_status(template, incoming.status, incoming.reason, stops)
        changed = True
    return changed


def connected_sender_ids() -> list[int]:
    """The senders whose WABA the periodic sync reads: active, with a WABA id, and a token
    (the mock asks for none)."""
    return list(
        db.session.scalars(
            sa.select(Sender.id)
            .where(
                Sender.is_active,
                Sender.waba_id.is_not(None),
                sa.or_(Sender.provider == Provider.MOCK, Sender.access_token.is_not(None)),
            )
            .order_by(Sender.id)
        )
    )
