"""JSON API v1: bearer tokens, the same roles as the UI, JSON errors with per-field messages."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from flask import Blueprint, abort, current_app, g, jsonify, request, url_for
from werkzeug.wrappers import Response

from app import db
from campaigns import (
    audiences,
    audit,
    campaign_defaults,
    cursors,
    edge,
    erp,
    exclusions,
    media,
    preflight,
    progress,
    queries,
    ratelimit,
    reasons,
    recipients,
)
from campaigns.auth import requires
from campaigns.config import ConfigError
from campaigns.cursors import encode_or_none, parse_page
from campaigns.errors import json_error
from campaigns.i18n import _, force_locale
from campaigns.idempotency import idempotent
from campaigns.labels import label
from campaigns.models import (
    AudienceFile,
    AuditEvent,
    Campaign,
    CampaignStatus,
    MediaFile,
    Message,
    MessageStatus,
    MessageTemplate,
    Role,
    Sender,
    Suppression,
    User,
)
from campaigns.providers import errors as provider_errors
from campaigns.services import (
    Blocked,
    ConfirmationRequired,
    Conflict,
    NotFound,
    ServiceError,
    template_import,
)
from campaigns.services.campaigns import (
    WINDOW_CHANGE_STATUSES,
    cancel_campaign,
    change_send_window,
    create_campaign,
    duplicate_campaign,
    pause_campaign,
    resume_campaign,
    schedule_campaign,
    send_campaign_now,
    template_variables_for,
    update_campaign,
)
from campaigns.services.senders import (
    clear_messaging_limit_override,
    override_messaging_limit,
    save_sender,
)
from campaigns.services.suppressions import remove_suppression, suppress
from campaigns.services.templates import (
    create_template,
    submit_template,
    sync_template_status,
    update_template,
)
from campaigns.services.users import update_user, user_for_token
from campaigns.validation import (
    CampaignFields,
    Checker,
    Invalid,
    bigint,
    parse_campaign,
    parse_limit_overridden,
    parse_messaging_limit,
    parse_send_window,
    parse_sender,
    parse_template,
    parse_user_changes,
    row_id,
)

bp = Blueprint("api", __name__, url_prefix="/api/v1")


@bp.before_request
def authenticate() -> Response | None:
    """Every API call carries ``Authorization: Bearer <token>`` of an active user."""
    scheme, _sep, raw = request.headers.get("Authorization", "").partition(" ")
    user = user_for_token(raw.strip()) if scheme.lower() == "bearer" and raw else None
    if user is None:
        response = json_error(
            401, "unauthenticated", _("Send a valid API token as: Authorization: Bearer <token>.")
        )
        response.headers["WWW-Authenticate"] = 'Bearer realm="disparo"'
        return response
    g.api_user = user
    # Every API call takes one from the user's per-minute budget; over it, 429.
    limit = ratelimit.api_limit(user)
    decision = ratelimit.consume(db.session, [limit])
    g.rate_limit = (limit, decision)
    if not decision.allowed:
        return json_error(
            429,
            "rate_limited",
            _("Too many requests: %(n)d a minute. Try again in %(s)d s.")
            % {"n": limit.limit, "s": math.ceil(decision.retry_after)},
        )
    view = current_app.view_functions.get(request.endpoint or "")
    role = getattr(view, "required_role", Role.VIEWER)
    if not user.can(role):
        return json_error(
            403, "forbidden", _("This needs the %(role)s role.") % {"role": label(role)}
        )
    # Only now is the body read: an unknown caller got its 401 above, unread.
    return edge.refuse_unstorable()


@bp.after_request
def rate_limit_headers(response: Response) -> Response:
    """X-RateLimit-* on every answer that counted against the budget; Retry-After on 429."""
    if "rate_limit" in g:
        limit, decision = g.rate_limit
        response.headers["X-RateLimit-Limit"] = str(limit.limit)
        response.headers["X-RateLimit-Remaining"] = str(max(decision.remaining, 0))
        response.headers["X-RateLimit-Reset"] = str(math.ceil(decision.reset_after))
        if not decision.allowed:
            response.headers["Retry-After"] = str(max(1, math.ceil(decision.retry_after)))
    return response


@bp.errorhandler(Invalid)
def invalid(exc: Invalid) -> Response:
    return json_error(422, "validation_failed", _("Some fields are not valid."), exc.errors)


@bp.errorhandler(NotFound)
def not_found(exc: NotFound) -> Response:
    return json_error(404, "not_found", exc.message)


@bp.errorhandler(Conflict)
def conflict(exc: Conflict) -> Response:
    return json_error(409, "conflict", exc.message)


@bp.errorhandler(Blocked)
def blocked(exc: Blocked) -> Response:
    """The pre-flight check's blocking problems: 409 with the first one's code."""
    return _preflight_refusal(exc.code, exc.message, "blocking", exc.preflight.blocking)


@bp.errorhandler(ConfirmationRequired)
def confirmation_required(exc: ConfirmationRequired) -> Response:
    """Warnings to confirm: 409 ``confirmation_required``; send again with
    ``{"confirm": true}``."""
    return _preflight_refusal(exc.code, exc.message, "warnings", exc.preflight.to_confirm)


def _preflight_refusal(code: str, message: str, key: str, findings: Any) -> Response:
    """The message was worded in the caller's language; the findings in English, as the
    API's texts are."""
    with force_locale("en"):
        listed = [finding.as_dict() for finding in findings]
    return json_error(409, code, message, None, **{key: listed})


@bp.errorhandler(ServiceError)
def refused(exc: ServiceError) -> Response:
    fields = {exc.field: exc.message} if exc.field else None
    return json_error(422, "validation_failed", exc.message, fields)


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
        # What Meta says about the account (campaigns/account_health.py).
        "business_id": sender.business_id,
        "quality_rating": sender.quality_rating,
        "messaging_limit": sender.messaging_limit,
        "messaging_limit_overridden": sender.messaging_limit_overridden,
        "throughput_per_second": sender.throughput_per_second,
        "throughput_factor": ratelimit.throughput_factor(sender),
        "last_throttled_at": _iso(sender.last_throttled_at),
    }


def template_json(template: MessageTemplate) -> dict[str, Any]:
    from campaigns import template_parts

    return {
        "id": template.id,
        "sender_id": template.sender_id,
        "name": template.name,
        "language": template.language,
        "category": template.category.value,
        "parameter_format": template.parameter_format.value,
        "header": template.header_text,
        "header_format": template.header_format,
        "header_media_link": template.header_media_link,
        "header_media_file_id": template.header_media_file_id,
        "header_location": template.header_location,
        "body": template.body_text,
        "footer": template.footer_text,
        "buttons": template.buttons,
        "variables": template_parts.keys(template),
        "status": template.status.value,
        "status_reason": template.status_reason,
        "provider_template_id": template.provider_template_id,
        "quality_rating": template.quality_rating,
    }


def _found(thing):
    if thing is None:
        abort(404)
    return thing


def _created(document: dict[str, Any], endpoint: str, **values: Any) -> tuple[Response, int]:
    """201 with the new resource and its URL path in ``Location``."""
    response = jsonify(document)
    response.headers["Location"] = url_for(endpoint, **values)
    return response, 201


@bp.get("/me")
def me() -> Response:
    """Who this token belongs to, with its limits."""
    return jsonify(user_json(g.api_user))


@bp.patch("/users/<int:user_id>")
@requires(Role.ADMIN)
def user_update(user_id: int) -> Response:
    """Change a user's role or rate limits."""
    changes = parse_user_changes(body())
    return jsonify(user_json(update_user(user_id, changes, g.api_user.id)))


@bp.get("/senders")
def sender_list() -> Response:
    """Every sender by name; with ?limit=&cursor=, a page of them."""
    wanted = parse_page(request.args, "senders", ("text", "id"))
    page = queries.senders_page(wanted.after, wanted.limit)
    return jsonify(
        senders=[sender_json(s) for s in page.rows],
        next_cursor=encode_or_none("senders", page.next_key),
    )


@bp.get("/senders/<int:sender_id>")
def sender_get(sender_id: int) -> Response:
    """One sender."""
    return jsonify(sender_json(_found(queries.get_sender(sender_id))))


@bp.post("/senders")
@requires(Role.ADMIN)
@idempotent
def sender_create() -> tuple[Response, int]:
    """Create a sender."""
    sender = save_sender(parse_sender(body()))
    return _created(sender_json(sender), "api.sender_get", sender_id=sender.id)


@bp.patch("/senders/<int:sender_id>")
@requires(Role.ADMIN)
def sender_update(sender_id: int) -> Response:
    """Change a sender (send every field, as in the form; secrets only to change them).

    ``messaging_limit`` (users a day, null: unlimited) overrides Meta's for the sender's
    business portfolio until Meta reports a different one; ``messaging_limit_overridden``
    false ends the override (Meta's last report applies again)."""
    data = body()
    found = _found(queries.get_sender(sender_id))
    current = sender_json(found)
    fields = parse_sender(current | data)
    # A client that sends back what it read (every field, as the docstring asks) sets
    # no override: a messaging_limit is one when it differs from the sender's, or when
    # Meta has not been read yet (null then means "unknown", not "unlimited").
    limit = parse_messaging_limit(data) if "messaging_limit" in data else None
    changed = "messaging_limit" in data and limit != current["messaging_limit"]
    override = changed or ("messaging_limit" in data and found.account_read_at is None)
    overridden = parse_limit_overridden(data)
    # Checked before anything is saved: a refused body changes nothing.
    if overridden is False and changed:
        raise Invalid(
            {
                "messaging_limit_overridden": _(
                    "Either set a messaging limit or use Meta's again, not both."
                )
            }
        )
    if overridden is True and not (override or found.messaging_limit_overridden):
        raise Invalid(
            {
                "messaging_limit_overridden": _(
                    "There is no override to keep: send a messaging_limit to set one."
                )
            }
        )
    sender = save_sender(fields, sender_id)
    if overridden is False:
        sender = clear_messaging_limit_override(sender_id)
    elif override:
        sender = override_messaging_limit(sender_id, limit)
    return jsonify(sender_json(sender))


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
    """Templates, filtered by ?status=&language=&category=&q=, most recently changed first
    (500 at most; with ?limit=&cursor=, a page of them)."""
    filters = queries.TemplateFilters.from_args(request.args)
    wanted = parse_page(request.args, "templates", ("time", "id"))
    limit = wanted.limit or queries.TEMPLATES_SHOWN  # None: the older answer, every row
    page = queries.templates_page(filters, wanted.after, limit)
    return jsonify(
        templates=[template_json(t) for t in page.rows],
        next_cursor=encode_or_none("templates", page.next_key),
    )


@bp.get("/templates/<int:template_id>")
def template_get(template_id: int) -> Response:
    """One template with its review status."""
    return jsonify(template_json(_found(queries.get_template(template_id))))


@bp.post("/templates")
@requires(Role.SUPERVISOR)
@idempotent
def template_create() -> tuple[Response, int]:
    """Create a draft template (in the first sender's account unless sender_id says)."""
    data = body()
    fields = _template_fields(data)
    sender_id = data.get("sender_id")
    if sender_id is not None and (not isinstance(sender_id, int) or row_id(sender_id) is None):
        raise Invalid({"sender_id": _("Give the sender's id as a number.")})
    template = create_template(fields, g.api_user.id, sender_id)
    return _created(template_json(template), "api.template_get", template_id=template.id)


@bp.patch("/templates/<int:template_id>")
@requires(Role.SUPERVISOR)
def template_update(template_id: int) -> Response:
    """Change a template; it returns to draft."""
    current = template_json(_found(queries.get_template(template_id)))
    fields = _template_fields(current | body())
    return jsonify(template_json(update_template(template_id, fields)))


@bp.post("/templates/<int:template_id>/submit")
@requires(Role.SUPERVISOR)
def template_submit(template_id: int) -> tuple[Response, int]:
    """Send the template for review (202: the outcome arrives later)."""
    _found(queries.get_template(template_id))
    return jsonify(template_json(submit_template(template_id))), 202


@bp.post("/templates/<int:template_id>/sync")
@requires(Role.SUPERVISOR)
def template_sync(template_id: int) -> Response:
    """Ask the provider for the review status now."""
    _found(queries.get_template(template_id))
    return jsonify(template_json(sync_template_status(template_id)))


@bp.post("/senders/<int:sender_id>/templates/import")
@requires(Role.SUPERVISOR)
def template_import_run(sender_id: int) -> Response:
    """Import the sender's WABA templates from WhatsApp now and say what happened."""
    result = template_import.import_templates(sender_id, g.api_user.id)
    return jsonify(
        imported=result.imported,
        updated=result.updated,
        unchanged=result.unchanged,
        skipped=[
            {"name": s.name, "language": s.language, "code": s.code, "reason": s.reason}
            for s in result.skipped
        ],
    )


def suppression_json(suppression: Suppression) -> dict[str, Any]:
    return {
        "id": suppression.id,
        "phone": suppression.phone,
        "reason": suppression.reason,
        "source": suppression.source,
        "created_at": suppression.created_at.isoformat(),
    }


@bp.get("/suppressions")
def suppression_list() -> Response:
    """Opted-out numbers, newest first, 50 a page (?page=, or ?limit=&cursor=); ?q= matches
    the phone's digits."""
    wanted = parse_page(request.args, "suppressions", ("time", "id"), older_paging=("page",))
    q = request.args.get("q")
    if wanted.by_cursor:
        rows = queries.suppressions_page(q, wanted.after, wanted.limit or cursors.DEFAULT_LIMIT)
        return jsonify(
            suppressions=[suppression_json(s) for s in rows.rows],
            next_cursor=encode_or_none("suppressions", rows.next_key),
        )
    page = queries.list_suppressions(q, request.args.get("page", 1, type=int))
    more = page.page < page.pages and bool(page.suppressions)
    return jsonify(
        suppressions=[suppression_json(s) for s in page.suppressions],
        page=page.page,
        pages=page.pages,
        total=page.total,
        next_cursor=encode_or_none(
            "suppressions",
            queries.key_of(page.suppressions[-1], queries.SUPPRESSION_KEY) if more else None,
        ),
    )


@bp.get("/suppressions/<int:suppression_id>")
def suppression_get(suppression_id: int) -> Response:
    """One opted-out number."""
    return jsonify(suppression_json(_found(queries.get_suppression(suppression_id))))


@bp.post("/suppressions")
@requires(Role.SUPERVISOR)
@idempotent
def suppression_create() -> tuple[Response, int]:
    """Suppress a number: 201 when added, 200 with the existing entry when already there."""
    data = body()
    phone, reason = data.get("phone"), data.get("reason") or ""
    if not isinstance(phone, str) or not isinstance(reason, str):
        field = "reason" if isinstance(phone, str) else "phone"
        raise Invalid({field: _("Send it as a string.")})
    suppression, created = suppress(phone, reason, "manual", g.api_user.id)
    if not created:
        return jsonify(suppression_json(suppression)), 200
    return _created(
        suppression_json(suppression), "api.suppression_get", suppression_id=suppression.id
    )


@bp.delete("/suppressions/<int:suppression_id>")
@requires(Role.SUPERVISOR)
def suppression_delete(suppression_id: int) -> tuple[str, int]:
    """Take a number off the list (404 if there is no such entry)."""
    remove_suppression(suppression_id)
    return "", 204


def media_json(media_file: MediaFile) -> dict[str, Any]:
    return {
        "id": media_file.id,
        "kind": media_file.kind,
        "filename": media_file.filename,
        "content_type": media_file.content_type,
        "size": media_file.size,
        "sha256": media_file.sha256,
        "created_at": media_file.created_at.isoformat(),
    }


@bp.post("/media")
@edge.takes_upload(limit_bytes=media.REQUEST_LIMIT_BYTES)
@requires(Role.SUPERVISOR)
def media_create() -> tuple[Response, int]:
    """Keep a file for a media header (multipart: ``file``, ``kind``); 201 with it. Its
    type is read from its bytes; over its kind's maximum 422, over the largest 413."""
    kind = media.kind_of(request.form.get("kind"))
    if kind is None:
        raise Invalid({"kind": _("Send IMAGE, VIDEO or DOCUMENT.")})
    upload = request.files.get("file")
    if upload is None:
        raise Invalid({"file": _("Send the file as the multipart form field file.")})
    try:
        stored = media.store(upload.stream, upload.filename, kind, g.api_user.id)
    except ServiceError as refused:
        # The form's field is the template's; the API's is the upload's.
        field = "file" if refused.field == media.FIELD else refused.field or "file"
        raise Invalid({field: refused.message}) from None
    return _created(media_json(stored), "api.media_get", media_file_id=stored.id)


@bp.get("/media/<bigint:media_file_id>")
def media_get(media_file_id: int) -> Response:
    """One media file's facts (its bytes: GET /media/<id>, signed in)."""
    return jsonify(media_json(_found(media.get(media_file_id))))


def audience_json(audience: AudienceFile) -> dict[str, Any]:
    return {
        "id": audience.id,
        "name": audience.name,
        "columns": audience.columns,
        "row_count": audience.row_count,
        "size_bytes": audience.size_bytes,
        "delimiter": audience.delimiter,
        "encoding": audience.encoding,
        "phone_column": audiences.guess_phone_column(audience.columns),
        "preview": audiences.preview(audience),
        "created_at": audience.created_at.isoformat(),
    }


@bp.post("/audiences")
@edge.takes_upload(limit_bytes=audiences.upload_limit_bytes)
@requires(Role.SUPERVISOR)
def audience_create() -> tuple[Response, int]:
    """Keep a CSV audience (multipart: ``file``); 201 with its columns and first rows."""
    upload = request.files.get("file")
    if upload is None:
        raise Invalid({"file": _("Send the CSV as the multipart form field file.")})
    try:
        stored = audiences.import_csv(
            upload.stream, upload.filename, g.api_user.id, current_app.config
        )
    except ServiceError as refused:
        raise Invalid({"file": refused.message}) from None
    return _created(audience_json(stored), "api.audience_get", audience_file_id=stored.id)


@bp.get("/audiences/<bigint:audience_file_id>")
def audience_get(audience_file_id: int) -> Response:
    """One CSV audience's facts and first rows."""
    return jsonify(audience_json(_found(audiences.get(audience_file_id))))


def campaign_json(campaign: Campaign) -> dict[str, Any]:
    return {
        "id": campaign.id,
        "name": campaign.name,
        "status": campaign.status.value,
        # English whatever the client's language; the code is what a client should compare.
        "status_reason": reasons.render_english(
            campaign.status_reason_code, campaign.status_reason_params
        ),
        "status_reason_code": campaign.status_reason_code,
        "owner_id": campaign.owner_id,
        "sender_id": campaign.sender_id,
        "template_id": campaign.template_id,
        "segment": campaign.segment,
        "variables": campaign.variable_mapping,
        "language_field": campaign.language_field,
        "audience_file_id": campaign.audience_file_id,
        "audience_phone_column": campaign.audience_phone_column,
        "send_window": campaign.send_window,
        "time_zone_field": campaign.time_zone_field,
        "frequency_cap_days": campaign.frequency_cap_days,
        "exclude_running": campaign.exclude_running,
        "scheduled_at": _iso(campaign.scheduled_at),
        "started_at": _iso(campaign.started_at),
        "completed_at": _iso(campaign.completed_at),
        "created_at": _iso(campaign.created_at),
        # A recurring campaign (campaigns/recurrence.py), or a run of one.
        "recurrence": campaign.recurrence,
        "next_run_at": _iso(queries.next_run_at(campaign)),
        "recurrence_of_id": campaign.recurrence_of_id,
        "run_number": campaign.run_number,
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _campaign_fields(data: dict[str, Any]) -> CampaignFields:
    return parse_campaign(data, template_variables_for(data.get("template_id")))


@bp.get("/campaigns")
def campaign_list() -> Response:
    """Campaigns, newest first: ?status=&q=&recurrence_of= (a series' runs), and ?page=
    (20 a page) or ?limit=&cursor=."""
    try:
        status = CampaignStatus(request.args["status"]) if request.args.get("status") else None
    except ValueError:
        raise Invalid({"status": _("Unknown status.")}) from None
    series = _series_filter()
    wanted = parse_page(request.args, "campaigns", ("time", "id"), older_paging=("page",))
    q = request.args.get("q")
    if wanted.by_cursor:
        rows = queries.campaigns_page(
            status, q, wanted.after, wanted.limit or cursors.DEFAULT_LIMIT, recurrence_of=series
        )
        return jsonify(
            campaigns=[campaign_json(c) for c in rows.rows],
            next_cursor=encode_or_none("campaigns", rows.next_key),
        )
    page = queries.list_campaigns(
        status, q, request.args.get("page", 1, type=int), recurrence_of=series
    )
    more = page.page < page.pages and bool(page.campaigns)
    return jsonify(
        campaigns=[campaign_json(c) for c in page.campaigns],
        page=page.page,
        pages=page.pages,
        total=page.total,
        next_cursor=encode_or_none(
            "campaigns",
            queries.key_of(page.campaigns[-1], queries.CAMPAIGN_KEY) if more else None,
        ),
    )


def _series_filter() -> int | None:
    """?recurrence_of=<id>: only that recurring campaign's runs (422 unless an id)."""
    raw = request.args.get("recurrence_of")
    if raw is None or raw == "":
        return None
    series = row_id(raw)
    if series is None:
        raise Invalid({"recurrence_of": _("Give a campaign's id.")})
    return series


@bp.post("/campaigns")
@requires(Role.SUPERVISOR)
@idempotent
def campaign_create() -> tuple[Response, int]:
    """Create a draft campaign (every template variable mapped); a field of the campaign
    defaults left out takes the admin's default."""
    data = campaign_defaults.fill(body(), db.session)
    campaign = create_campaign(_campaign_fields(data), g.api_user.id)
    return _created(campaign_json(campaign), "api.campaign_get", campaign_id=campaign.id)


@bp.get("/campaigns/<int:campaign_id>")
def campaign_get(campaign_id: int) -> Response:
    """One campaign."""
    return jsonify(campaign_json(_found(queries.get_campaign(campaign_id))))


@bp.patch("/campaigns/<int:campaign_id>")
@requires(Role.SUPERVISOR)
def campaign_update(campaign_id: int) -> Response:
    """Change a draft or scheduled campaign (fields not sent stay as they are); of a
    sending or paused one, the sending window alone."""
    campaign = _found(queries.get_campaign(campaign_id))
    changes = body()
    if campaign.status in WINDOW_CHANGE_STATUSES and set(changes) == {"send_window"}:
        # A sending or paused campaign's window alone may change (widened, narrowed).
        check = Checker()
        window = parse_send_window(changes["send_window"], check)
        check.done()
        return jsonify(campaign_json(change_send_window(campaign_id, window, g.api_user.id)))
    fields = _campaign_fields(campaign_json(campaign) | changes)
    return jsonify(campaign_json(update_campaign(campaign_id, fields, g.api_user.id)))


@bp.post("/campaigns/<int:campaign_id>/schedule")
@requires(Role.SUPERVISOR)
def campaign_schedule(campaign_id: int) -> tuple[Response, int]:
    """Schedule at an ISO 8601 time with its offset (422 unless in the future); a recurring
    campaign at its next occurrence, not before the time if one is given."""
    raw = body().get("scheduled_at")
    when: datetime | None = None
    if raw is not None or _found(queries.get_campaign(campaign_id)).recurrence is None:
        try:
            when = datetime.fromisoformat(str(raw))
        except ValueError:
            raise Invalid({"scheduled_at": _("Give an ISO 8601 time with its offset.")}) from None
        if when.tzinfo is None:
            raise Invalid({"scheduled_at": _("Give the time with its offset, e.g. -03:00.")})
    _found(queries.get_campaign(campaign_id))
    campaign = schedule_campaign(campaign_id, when, g.api_user.id, confirm=_confirmed())
    return jsonify(campaign_json(campaign)), 202


def _confirmed() -> bool:
    """``{"confirm": true}`` in the body, whatever its Content-Type says; no body, an
    empty one or one that is not JSON confirms nothing."""
    data = request.get_json(silent=True, force=True)
    return isinstance(data, dict) and data.get("confirm") is True


CAMPAIGN_ACTIONS = {
    "send-now": send_campaign_now,
    "pause": pause_campaign,
    "resume": resume_campaign,
    "cancel": cancel_campaign,
}


@bp.post("/campaigns/<int:campaign_id>/<any('send-now', pause, resume, cancel):action>")
@requires(Role.SUPERVISOR)
def campaign_action(campaign_id: int, action: str) -> tuple[Response, int]:
    """send-now, pause, resume or cancel: 202, or 409 with the reason."""
    _found(queries.get_campaign(campaign_id))
    if action == "send-now":
        campaign = send_campaign_now(campaign_id, g.api_user.id, confirm=_confirmed())
    else:
        campaign = CAMPAIGN_ACTIONS[action](campaign_id, g.api_user.id)
    return jsonify(campaign_json(campaign)), 202


@bp.get("/campaigns/<int:campaign_id>/preflight")
def campaign_preflight(campaign_id: int) -> Response:
    """The pre-flight check: audience, 24-hour budget, cost, duration, warnings, blocking."""
    campaign = _found(queries.get_campaign(campaign_id))
    return jsonify(preflight.check(campaign, current_app.config).as_dict())


@bp.get("/campaigns/<int:campaign_id>/exclusions")
def campaign_exclusions(campaign_id: int) -> Response:
    """How many of the audience each exclusion leaves out, and how many remain, as the
    fan-out would decide now (an ERP segment's estimated from a sample of its first
    pages); an ERP that cannot answer: no counts, its error."""
    campaign = _found(queries.get_campaign(campaign_id))
    try:
        counts = exclusions.of_campaign(campaign, current_app.config)
    except (erp.ErpError, ConfigError) as error:
        return jsonify(exclusions=None, erp_error=str(error))  # English, as the API's texts
    return jsonify(exclusions=counts and counts.as_dict(), erp_error=None)


@bp.post("/campaigns/<int:campaign_id>/duplicate")
@requires(Role.SUPERVISOR)
@idempotent
def campaign_duplicate(campaign_id: int) -> tuple[Response, int]:
    """A new draft like this campaign."""
    _found(queries.get_campaign(campaign_id))
    copy = duplicate_campaign(campaign_id, g.api_user.id)
    return _created(campaign_json(copy), "api.campaign_get", campaign_id=copy.id)


@bp.get("/campaigns/<int:campaign_id>/progress")
def campaign_progress(campaign_id: int) -> Response:
    """Counts, success rate, throughput and ETA, live."""
    return jsonify(progress.get_progress(_found(queries.get_campaign(campaign_id))).as_dict())


def message_json(message: Message) -> dict[str, Any]:
    """A recipient's message. Call it under ``force_locale("en")``: Disparo's own error
    codes are worded in English, as every text the API gives (WhatsApp's as it came)."""
    code, text = message.error_code, message.error_text
    return {
        "id": message.id,
        "phone": message.phone,  # None once the person's data was erased
        "customer_ref": message.customer_ref,
        "status": message.status.value,
        "attempts": message.attempts,
        "error_code": code,
        "error_message": provider_errors.describe(code, text) if code or text else None,
        "wamid": message.provider_message_id,
        "created_at": _iso(message.created_at),
        "queued_at": _iso(message.queued_at),
        "sent_at": _iso(message.sent_at),
        "delivered_at": _iso(message.delivered_at),
        "read_at": _iso(message.read_at),
        "failed_at": _iso(message.failed_at),
        "updated_at": _iso(message.updated_at),
        # What the recipient answered (campaigns/answers.py); the texts null once erased.
        "replied_at": _iso(message.replied_at),
        "reply_text": message.reply_text,
        "clicked_at": _iso(message.clicked_at),
        "clicked_button": message.clicked_button,
    }


MESSAGES_PER_PAGE = 100


@bp.get("/campaigns/<int:campaign_id>/messages")
def campaign_messages(campaign_id: int) -> Response:
    """The campaign's messages in id order, 100 a page: ?status=&limit=&cursor=."""
    problems: dict[str, str] = {}
    raw_status = request.args.get("status")
    status = None
    if raw_status is not None:
        try:
            status = MessageStatus(raw_status)
        except ValueError:
            problems["status"] = _("Unknown status.")
    # The cursor names its campaign: another campaign's is refused, not followed.
    list_name = f"campaigns/{campaign_id}/messages"
    try:
        wanted = parse_page(
            request.args, list_name, ("bigid",), default_limit=MESSAGES_PER_PAGE, always=True
        )
    except Invalid as exc:
        problems |= exc.errors
    if problems:
        raise Invalid(problems)
    _found(queries.get_campaign(campaign_id))
    after = wanted.after[0] if wanted.after else None
    messages, next_after = recipients.messages_after(
        campaign_id, status, after, wanted.limit or MESSAGES_PER_PAGE
    )
    with force_locale("en"):
        listed = [message_json(m) for m in messages]
    return jsonify(
        messages=listed,
        next_cursor=encode_or_none(list_name, None if next_after is None else (next_after,)),
    )


def audit_event_json(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "at": event.at.isoformat(),
        "actor_id": event.actor_id,
        "actor_email": event.actor_email,
        "action": event.action,
        "target_type": event.target_type,
        "target_id": event.target_id,
        "target_label": event.target_label,
        "details": event.details,
        "client_address": event.client_address,
    }


@bp.get("/audit")
@requires(Role.ADMIN)
def audit_list() -> Response:
    """Administrative actions, newest first, 50 a page: ?action=&actor=, and
    ?before=<next_before> or ?limit=&cursor=<next_cursor>."""
    if request.args.get("action") and request.args["action"] not in audit.ACTIONS:
        raise Invalid({"action": _("Unknown action.")})
    filters = audit.AuditFilters.from_args(request.args)
    wanted = parse_page(request.args, "audit", ("bigid",), older_paging=("before",))
    if wanted.by_cursor:
        before = wanted.after[0] if wanted.after else None
        page = audit.events_page(filters, before, wanted.limit or cursors.DEFAULT_LIMIT)
    else:
        page = audit.events_page(filters, request.args.get("before", type=bigint))
    next_key = None if page.next_before is None else (page.next_before,)
    return jsonify(
        events=[audit_event_json(e) for e in page.events],
        next_before=page.next_before,
        next_cursor=encode_or_none("audit", next_key),
    )
