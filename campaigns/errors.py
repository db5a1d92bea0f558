"""Friendly error pages for people, JSON errors for the API and htmx-aware 4xx."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, make_response, render_template, request
from flask_wtf.csrf import CSRFError
from markupsafe import escape
from werkzeug.exceptions import HTTPException, InternalServerError, MethodNotAllowed

from app import db
from campaigns.htmx import is_htmx
from campaigns.i18n import _, _l

logger = logging.getLogger(__name__)

# Lazy: each is translated when an error is shown, for that reader (not at import).
MESSAGES = {
    400: _l("The request could not be understood."),
    401: _l("Sign in first."),
    403: _l("You do not have permission to do that."),
    404: _l("There is nothing here."),
    405: _l("That action is not allowed here."),
    406: _l("There is no answer in a form the client accepts."),
    409: _l("That conflicts with the current state; reload and try again."),
    410: _l("This is gone for good."),
    413: _l("The request is too large."),
    414: _l("The address is too long."),
    415: _l("The request's content type is not supported here."),
    429: _l("Too many requests. Slow down and try again shortly."),
    431: _l("The request's headers are too large."),
    500: _l("Something went wrong on our side. It has been logged."),
    501: _l("That is not supported."),
    502: _l("A service Disparo depends on answered badly. Try again shortly."),
    503: _l("Disparo is unavailable for a moment. Try again shortly."),
    504: _l("A service Disparo depends on did not answer in time. Try again shortly."),
}


def message_for(code: int) -> str:
    """The page's words for an HTTP status; a status without its own, those of its class."""
    text = MESSAGES.get(code) or MESSAGES[500 if code >= 500 else 400]
    return str(text)


def _wants_json() -> bool:
    # The webhook endpoint answers WhatsApp (or the mock) in JSON, as the API does.
    return (
        request.path.startswith(("/api/", "/webhooks/"))
        or request.accept_mimetypes.best == "application/json"
    )


# The API's names for its error codes: a client compares the name, never the words. A
# status without a name of its own gets its class's (bad_request, internal_error).
CODE_NAMES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    410: "gone",
    413: "too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    422: "validation_failed",
    429: "rate_limited",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
    502: "bad_gateway",
    503: "unavailable",
    504: "gateway_timeout",
}


def code_name(status: int) -> str:
    """The error code's name for an HTTP status (its class's when it has none)."""
    return CODE_NAMES.get(status) or CODE_NAMES[500 if status >= 500 else 400]


def json_error(
    status: int,
    code: str,
    message: str,
    fields: dict[str, str] | None = None,
    **more: object,
) -> Response:
    """The one JSON error envelope: ``{"error": {"code", "message", "fields"}}``
    (``fields`` only when there are some), for the API, the webhooks and any JSON caller;
    ``more`` adds what an error of its own kind carries (the pre-flight's findings)."""
    body: dict[str, object] = {"code": code, "message": message}
    if fields:
        body["fields"] = fields
    body.update(more)
    response = jsonify(error=body)
    response.status_code = status
    return response


def _render(code: int, message: str, fields: dict[str, str] | None = None):
    if _wants_json():
        return json_error(code, code_name(code), message, fields)
    if is_htmx():  # shown in the page's flash area (base.html's responseHandling)
        return render_template("errors/_flash.html", message=message), code
    return render_template("errors/error.html", code=code, message=message), code


def refuse_fields(code: int, message: str, fields: dict[str, str]):
    """Input refused before a view read it: the API names every field, a page the first."""
    if _wants_json():
        return _render(code, message, fields)
    name, problem = next(iter(fields.items()))
    # A page gets 400 whatever the code: htmx shows it in the flash area, where a 422
    # would take the place of the form that was sent.
    return _render(400, _("%(field)s: %(problem)s") % {"field": name, "problem": problem})


def handle_http_error(error: HTTPException):
    code = error.code or 500
    answer = _render(code, message_for(code))
    if isinstance(error, MethodNotAllowed) and error.valid_methods:
        # A 405 says which methods the address takes (RFC 9110), as werkzeug's own does.
        response = make_response(answer)
        response.headers["Allow"] = ", ".join(error.valid_methods)
        return response
    return answer


def handle_csrf_error(error: CSRFError):
    logger.warning(
        "CSRF check failed on %s %s: %s", request.method, request.path, error.description
    )
    return _render(400, _("Your session form expired. Reload the page and try again."))


def handle_unexpected(error: InternalServerError):
    # Flask has already logged the traceback; the user gets a page, not a stack.
    # The request's transaction may be the thing that failed, and the page's nav
    # reads the database (the signed-in user, expired by an earlier commit): roll
    # back first, or drawing the page fails too and werkzeug's bare page answers.
    try:
        db.session.rollback()
    except Exception:
        logger.exception("rollback after an unexpected error failed")
    try:
        return _render(500, message_for(500))
    except Exception:
        logger.exception("the error page could not be drawn")
        return _plain_500()


def _plain_500():
    """What answers when not even the error page can be drawn: nothing that can fail."""
    try:
        message = str(MESSAGES[500])
    except Exception:  # the translation itself failing: the source text
        message = "Something went wrong on our side. It has been logged."
    if _wants_json():
        return json_error(500, code_name(500), message)
    page = f"<!doctype html><title>500</title><h1>500</h1><p>{escape(message)}</p>"
    return page, 500, {"Content-Type": "text/html; charset=utf-8"}


def init_app(app: Flask) -> None:
    app.register_error_handler(CSRFError, handle_csrf_error)
    app.register_error_handler(HTTPException, handle_http_error)
    app.register_error_handler(InternalServerError, handle_unexpected)
