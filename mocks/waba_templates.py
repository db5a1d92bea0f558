"""The mock WhatsApp's template listing: a WABA's templates as the Graph API pages them.

``GET /mock/whatsapp/<version>/<waba_id>/message_templates?fields=…&limit=…&after=…``
answers Meta's list shape: ``{"data": [...], "paging": {"cursors": {"before", "after"},
"next"}}``, ``next`` left out of the last page as Meta does, ``limit`` 1 to 1,000
(default 25, Meta's), each object holding only the ``fields`` asked for (and ``id``),
``rejected_reason`` among them (``NONE`` unless rejected). The bearer token is checked
as Graph checks it: once any sender of the WABA has an access token, a request without
one of those tokens gets Meta's 401 (code 190); a token given is always checked; a WABA
of token-less mock senders is listed without one (the mock provider sends none).

It lists two kinds of templates, in this order:

- those made "in WhatsApp Manager" (``mock_whatsapp_templates``), which tests and demos
  create with ``POST /mock/whatsapp/<waba_id>/templates`` (Meta's JSON: ``name``,
  ``language``, ``category``, ``components``, and optionally ``status`` (APPROVED),
  ``parameter_format`` (POSITIONAL, Meta's default) and ``quality_score`` (UNKNOWN);
  201 with its ``id``), change without a webhook (a change whose webhook was lost)
  with ``POST /mock/whatsapp/<waba_id>/templates/<id>`` (any of ``status``,
  ``category``, ``quality_score``, ``parameter_format``, ``components``) and delete
  with ``DELETE`` on the same path;
- those Disparo submitted to the mock (``mock-…`` ids) for a sender of that WABA, as
  Disparo has them: the mock keeps no copy of its own, its review and its template
  webhooks being what told Disparo their state, so listing them reports no change.

A template webhook posted for a template made here (``POST /mock/whatsapp/templates/
<id>/<kind>``) also changes it here (:func:`apply_event`), so the listing agrees with
what the webhook said.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from flask import jsonify, request, url_for
from werkzeug.wrappers import Response

from app import db
from campaigns import rendering
from campaigns.models import MessageTemplate, Sender, TemplateStatus
from campaigns.providers.base import template_components
from mocks.models import MockWhatsAppTemplate
from mocks.whatsapp import MetaError, _bad_query, _invalid, bp

PAGE_DEFAULT = 25
PAGE_MAX = 1000
META_STATUSES = (
    "APPROVED",
    "PENDING",
    "REJECTED",
    "PAUSED",
    "DISABLED",
    "IN_APPEAL",
    "PENDING_DELETION",
    "LIMIT_EXCEEDED",
    "ARCHIVED",
    "DELETED",
)
# Meta's rejected_reason for a rejected template made here (the mock keeps no reason of
# its own: its most common one); NONE for any other status, as Meta answers.
MOCK_REJECTED_REASON = "INVALID_FORMAT"
META_CATEGORIES = ("MARKETING", "UTILITY", "AUTHENTICATION")
QUALITY_SCORES = ("GREEN", "YELLOW", "RED", "UNKNOWN")
PARAMETER_FORMATS = ("POSITIONAL", "NAMED")

Key = tuple[int, str]  # (0: made here, 1: Disparo's), its id: the listing's order


def _made_here(row: MockWhatsAppTemplate) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "name": row.name,
        "language": row.language,
        "status": row.status,
        "category": row.category,
        "parameter_format": row.parameter_format,
        "components": row.components,
        "quality_score": {"score": row.quality_score, "date": int(time.time())},
        "rejected_reason": MOCK_REJECTED_REASON if row.status == "REJECTED" else "NONE",
    }


def _disparos(template: MessageTemplate) -> dict[str, Any]:
    fmt = template.parameter_format
    examples = rendering.sample_values(rendering.variables(template.body_text, fmt), fmt)
    return {
        "id": template.provider_template_id,
        "name": template.name,
        "language": template.language,
        "status": template.status.value.upper(),
        "category": template.category.value,
        "parameter_format": fmt.value.upper(),
        "components": template_components(template, examples),
        "quality_score": {"score": template.quality_rating or "UNKNOWN", "date": int(time.time())},
        "rejected_reason": (
            template.status_reason or "NONE"
            if template.status is TemplateStatus.REJECTED
            else "NONE"
        ),
    }


def waba_templates(waba_id: str) -> list[tuple[Key, dict[str, Any]]]:
    """Every template the mock lists for this WABA, in the listing's order."""
    out: list[tuple[Key, dict[str, Any]]] = [
        ((0, f"{row.id:020d}"), _made_here(row))
        for row in db.session.scalars(
            sa.select(MockWhatsAppTemplate)
            .where(MockWhatsAppTemplate.waba_id == waba_id)
            .order_by(MockWhatsAppTemplate.id)
        )
    ]
    submitted = db.session.scalars(
        sa.select(MessageTemplate)
        .join(Sender, Sender.id == MessageTemplate.sender_id)
        .where(
            Sender.waba_id == waba_id,
            MessageTemplate.provider_template_id.like("mock-%"),
            MessageTemplate.status != TemplateStatus.DRAFT,
        )
        .order_by(MessageTemplate.provider_template_id)
    )
    listed: set[str] = set()
    for template in submitted:
        provider_id = str(template.provider_template_id)
        if provider_id not in listed:  # senders sharing a WABA share its templates
            listed.add(provider_id)
            out.append(((1, provider_id), _disparos(template)))
    return out


def _cursor(key: Key) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def _after(raw: str) -> Key:
    try:
        kind, value = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        return int(kind), str(value)
    except (binascii.Error, ValueError, TypeError) as error:
        raise _invalid("after is not a cursor of this listing") from error


@bp.get("/<version>/<waba_id>/message_templates")
def template_list(version: str, waba_id: str) -> tuple[Response, int]:
    """The Graph API's list of a WABA's templates, a page at a time."""
    if not waba_id.isdigit():
        raise _invalid("WABA id must be digits")
    _check_token(waba_id)
    try:
        limit = int(request.args.get("limit", PAGE_DEFAULT))
    except ValueError:
        raise _invalid("limit must be a whole number") from None
    if not 1 <= limit <= PAGE_MAX:
        raise _invalid(f"limit must be from 1 to {PAGE_MAX}")
    rows = waba_templates(waba_id)
    if after := request.args.get("after"):
        start = _after(after)
        rows = [row for row in rows if row[0] > start]
    page, more = rows[:limit], len(rows) > limit
    fields = {f.strip() for f in request.args.get("fields", "").split(",") if f.strip()}
    data = [
        {k: v for k, v in item.items() if not fields or k in fields or k == "id"}
        for _key, item in page
    ]
    paging: dict[str, Any] = {}
    if page:
        paging["cursors"] = {"before": _cursor(page[0][0]), "after": _cursor(page[-1][0])}
    if more:
        args = request.args.to_dict() | {"after": paging["cursors"]["after"]}
        paging["next"] = url_for(
            "mock_whatsapp.template_list",
            version=version,
            waba_id=waba_id,
            _external=True,
            **args,
        )
    db.session.commit()
    return jsonify(data=data, paging=paging), 200


def _check_token(waba_id: str) -> None:
    """The bearer token, checked as Graph checks it: one of the access tokens of the
    WABA's senders. A WABA whose senders have none (mock senders: the mock asks for no
    token) is listed without one; a token given is always checked. Meta's 401 (code
    190) otherwise."""
    tokens = {
        token
        for token in db.session.scalars(
            sa.select(Sender.access_token).where(Sender.waba_id == waba_id)
        )
        if token
    }
    given = request.headers.get("Authorization")
    if given is None and not tokens:
        return
    scheme, _sep, token = (given or "").partition(" ")
    if scheme != "Bearer" or token not in tokens:
        raise MetaError(
            (190, 401, "Invalid OAuth access token"),
            "The access token is missing or is not one of this WhatsApp Business Account's.",
        )


def _choice(given: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> str | None:
    value = given.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or value.upper() not in allowed:
        raise ValueError(f"{key} must be one of {', '.join(allowed)}.")
    return value.upper()


def _changes(given: Mapping[str, Any]) -> dict[str, Any]:
    """The columns a create or change sets, checked; ValueError with the reason."""
    changes: dict[str, Any] = {}
    for key, allowed in (
        ("status", META_STATUSES),
        ("category", META_CATEGORIES),
        ("quality_score", QUALITY_SCORES),
        ("parameter_format", PARAMETER_FORMATS),
    ):
        if (value := _choice(given, key, allowed)) is not None:
            changes[key] = value
    if "components" in given:
        components = given["components"]
        if not isinstance(components, list) or not all(isinstance(c, dict) for c in components):
            raise ValueError("components must be a list of objects.")
        changes["components"] = components
    return changes


@bp.post("/<waba_id>/templates")
def template_make(waba_id: str) -> tuple[Response, int]:
    """Make a template in the WABA as if in WhatsApp Manager (no webhook)."""
    given = request.get_json(silent=True)
    if not waba_id.isdigit() or not isinstance(given, dict):
        return _bad_query("POST a JSON object to a WABA id (digits).")
    name, language = given.get("name"), given.get("language")
    if not isinstance(name, str) or not name or len(name) > 512:
        return _bad_query("name must be text of 1 to 512 characters.")
    if not isinstance(language, str) or not language or len(language) > 16:
        return _bad_query("language must be text of 1 to 16 characters.")
    try:
        changes = _changes(given)
    except ValueError as error:
        return _bad_query(str(error))
    if "category" not in changes or "components" not in changes:
        return _bad_query("category and components are required.")
    taken = db.session.scalar(
        sa.select(MockWhatsAppTemplate.id).where(
            MockWhatsAppTemplate.waba_id == waba_id,
            MockWhatsAppTemplate.name == name,
            MockWhatsAppTemplate.language == language,
        )
    )
    if taken is not None:
        return jsonify(error={"code": "conflict", "message": "Name and language taken."}), 409
    row = MockWhatsAppTemplate(
        waba_id=waba_id,
        name=name,
        language=language,
        **({"status": "APPROVED", "parameter_format": "POSITIONAL", "quality_score": "UNKNOWN"})
        | changes,
    )
    db.session.add(row)
    db.session.commit()
    return jsonify(_made_here(row)), 201


def _found(waba_id: str, template_id: str) -> MockWhatsAppTemplate | None:
    if not template_id.isdigit() or len(template_id) > 19:
        return None
    return db.session.scalar(
        sa.select(MockWhatsAppTemplate)
        .where(MockWhatsAppTemplate.waba_id == waba_id, MockWhatsAppTemplate.id == int(template_id))
        .with_for_update()
    )


def _no_such() -> tuple[Response, int]:
    return jsonify(error={"code": "not_found", "message": "No such template."}), 404


@bp.post("/<waba_id>/templates/<template_id>")
def template_change(waba_id: str, template_id: str) -> tuple[Response, int]:
    """Change a template made here, posting no webhook (as if its webhook were lost)."""
    given = request.get_json(silent=True)
    if not isinstance(given, dict):
        return _bad_query("POST a JSON object.")
    row = _found(waba_id, template_id)
    if row is None:
        return _no_such()
    try:
        for key, value in _changes(given).items():
            setattr(row, key, value)
    except ValueError as error:
        db.session.rollback()
        return _bad_query(str(error))
    db.session.commit()
    return jsonify(_made_here(row)), 200


@bp.delete("/<waba_id>/templates/<template_id>")
def template_delete(waba_id: str, template_id: str) -> tuple[Response, int]:
    """Delete a template made here, as in WhatsApp Manager (no webhook)."""
    row = _found(waba_id, template_id)
    if row is None:
        return _no_such()
    db.session.delete(row)
    db.session.commit()
    return jsonify(deleted=True), 200


# A template webhook's key in the body → the column it changes here.
EVENT_COLUMNS = {
    "event": "status",
    "new_quality_score": "quality_score",
    "new_category": "category",
}


def apply_event(provider_template_id: str, given: Mapping[str, Any]) -> None:
    """What a template webhook says, applied to the template made here of that id, if any
    (the caller commits)."""
    if not provider_template_id.isdigit() or len(provider_template_id) > 19:
        return
    row = db.session.get(MockWhatsAppTemplate, int(provider_template_id), with_for_update=True)
    if row is None:
        return
    for key, column in EVENT_COLUMNS.items():
        if isinstance(given.get(key), str):
            setattr(row, column, given[key].upper())
