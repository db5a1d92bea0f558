"""JSON API v1: bearer tokens, the same roles as the UI, JSON errors with per-field messages."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, current_app, g, jsonify, request
from werkzeug.wrappers import Response

from campaigns import queries, services
from campaigns.auth import requires
from campaigns.i18n import _
from campaigns.models import MessageTemplate, Role, Sender, User
from campaigns.validation import Invalid, parse_sender, parse_template, parse_user_changes

bp = Blueprint("api", __name__, url_prefix="/api/v1")


def error(status: int, code: str, message: str, fields: dict[str, str] | None = None) -> Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if fields:
        body["fields"] = fields
    response = jsonify(error=body)
    response.status_code = status
    return response


@bp.before_request
def authenticate() -> Response | None:
    """Every API call carries ``Authorization: Bearer <token>`` of an active user."""
    scheme, _sep, raw = request.headers.get("Authorization", "").partition(" ")
    user = services.user_for_token(raw.strip()) if scheme.lower() == "bearer" and raw else None
    if user is None:
        response = error(
            401, "unauthenticated", _("Send a valid API token as: Authorization: Bearer <token>.")
        )
        response.headers["WWW-Authenticate"] = 'Bearer realm="disparo"'
        return response
    g.api_user = user
    view = current_app.view_functions.get(request.endpoint or "")
    role = getattr(view, "required_role", Role.VIEWER)
    if not user.can(role):
        return error(403, "forbidden", _("This needs the %(role)s role.") % {"role": role.value})
    return None


@bp.errorhandler(Invalid)
def invalid(exc: Invalid) -> Response:
    return error(422, "validation_failed", _("Some fields are not valid."), exc.errors)


@bp.errorhandler(services.NotFound)
def not_found(exc: services.NotFound) -> Response:
    return error(404, "not_found", exc.message)


@bp.errorhandler(services.Conflict)
def conflict(exc: services.Conflict) -> Response:
    return error(409, "conflict", exc.message)


@bp.errorhandler(services.ServiceError)
def refused(exc: services.ServiceError) -> Response:
    fields = {exc.field: exc.message} if exc.field else None
    return error(422, "validation_failed", exc.message, fields)


def body() -> dict[str, Any]:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise Invalid({"body": _("Send a JSON object with Content-Type: application/json.")})
    return data


def user_json(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "email": user.email,
        "role": user.role.value,
        "disabled": user.is_disabled,
        "campaign_rate_limit_per_minute": user.campaign_rate_limit_per_minute,
        "api_rate_limit_per_minute": user.api_rate_limit_per_minute,
    }


def sender_json(sender: Sender) -> dict[str, Any]:
    # Secrets are write-only: only whether they are set is ever returned.
    return {
        "id": sender.id,
        "name": sender.name,
        "provider": sender.provider.value,
        "phone_number_id": sender.phone_number_id,
        "display_phone_number": sender.display_phone_number,
        "waba_id": sender.waba_id,
        "rate_limit_per_minute": sender.rate_limit_per_minute,
        "min_interval_ms": sender.min_interval_ms,
        "has_access_token": bool(sender.access_token),
        "has_app_secret": bool(sender.app_secret),
    }


def template_json(template: MessageTemplate) -> dict[str, Any]:
    from campaigns import rendering

    return {
        "id": template.id,
        "sender_id": template.sender_id,
        "name": template.name,
        "language": template.language,
        "category": template.category.value,
        "parameter_format": template.parameter_format.value,
        "header": template.header_text,
        "body": template.body_text,
        "footer": template.footer_text,
        "buttons": template.buttons,
        "variables": rendering.variables(template.body_text, template.parameter_format),
        "status": template.status.value,
        "status_reason": template.status_reason,
        "provider_template_id": template.provider_template_id,
    }


def _found(thing):
    if thing is None:
        abort(404)
    return thing


@bp.get("/me")
def me() -> Response:
    """Who this token belongs to, with its limits."""
    return jsonify(user_json(g.api_user))


@bp.patch("/users/<int:user_id>")
@requires(Role.ADMIN)
def user_update(user_id: int) -> Response:
    """Change a user's role or rate limits."""
    changes = parse_user_changes(body())
    return jsonify(user_json(services.update_user(user_id, changes, g.api_user.id)))


@bp.get("/senders")
def sender_list() -> Response:
    """Every sender."""
    return jsonify(senders=[sender_json(s) for s in queries.list_senders()])


@bp.get("/senders/<int:sender_id>")
def sender_get(sender_id: int) -> Response:
    """One sender."""
    return jsonify(sender_json(_found(queries.get_sender(sender_id))))


@bp.post("/senders")
@requires(Role.ADMIN)
def sender_create() -> tuple[Response, int]:
    """Create a sender."""
    return jsonify(sender_json(services.save_sender(parse_sender(body())))), 201


@bp.patch("/senders/<int:sender_id>")
@requires(Role.ADMIN)
def sender_update(sender_id: int) -> Response:
    """Change a sender (send every field, as in the form; secrets only to change them)."""
    current = sender_json(_found(queries.get_sender(sender_id)))
    fields = parse_sender(current | body())
    return jsonify(sender_json(services.save_sender(fields, sender_id)))


# The API names template texts "header"/"body"/"footer"; the form says *_text.
TEMPLATE_API_FIELDS = {"header": "header_text", "body": "body_text", "footer": "footer_text"}


def _template_fields(data: dict[str, Any]):
    renamed = {TEMPLATE_API_FIELDS.get(key, key): value for key, value in data.items()}
    try:
        return parse_template(renamed)
    except Invalid as exc:
        back = {v: k for k, v in TEMPLATE_API_FIELDS.items()}
        raise Invalid({back.get(k, k): v for k, v in exc.errors.items()}) from None


@bp.get("/templates")
def template_list() -> Response:
    """Templates, filtered by ?status=&language=&category=&q=."""
    filters = queries.TemplateFilters.from_args(request.args)
    return jsonify(templates=[template_json(t) for t in queries.list_templates(filters)])


@bp.get("/templates/<int:template_id>")
def template_get(template_id: int) -> Response:
    """One template with its review status."""
    return jsonify(template_json(_found(queries.get_template(template_id))))


@bp.post("/templates")
@requires(Role.SUPERVISOR)
def template_create() -> tuple[Response, int]:
    """Create a draft template (in the first sender's account unless sender_id says)."""
    data = body()
    fields = _template_fields(data)
    sender_id = data.get("sender_id")
    if sender_id is not None and not isinstance(sender_id, int):
        raise Invalid({"sender_id": _("Give the sender's id as a number.")})
    return jsonify(template_json(services.create_template(fields, g.api_user.id, sender_id))), 201


@bp.patch("/templates/<int:template_id>")
@requires(Role.SUPERVISOR)
def template_update(template_id: int) -> Response:
    """Change a template; it returns to draft."""
    current = template_json(_found(queries.get_template(template_id)))
    fields = _template_fields(current | body())
    return jsonify(template_json(services.update_template(template_id, fields)))


@bp.post("/templates/<int:template_id>/submit")
@requires(Role.SUPERVISOR)
def template_submit(template_id: int) -> tuple[Response, int]:
    """Send the template for review (202: the outcome arrives later)."""
    _found(queries.get_template(template_id))
    return jsonify(template_json(services.submit_template(template_id))), 202


@bp.post("/templates/<int:template_id>/sync")
@requires(Role.SUPERVISOR)
def template_sync(template_id: int) -> Response:
    """Ask the provider for the review status now."""
    _found(queries.get_template(template_id))
    return jsonify(template_json(services.sync_template_status(template_id)))
