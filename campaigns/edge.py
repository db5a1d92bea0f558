"""What a request must pass before a view reads it: a size, and text PostgreSQL can store.

Every body is limited before it is read: ``MAX_UPLOAD_BYTES`` for a view marked
:func:`takes_upload`, or the limit of its own it was marked with
(``@takes_upload(limit_bytes=…)``: a media header's file, up to Meta's largest media
plus the form, ``campaigns/media.py``; or a function of the settings: a CSV audience's
``AUDIENCE_UPLOAD_MAX_MB``, ``campaigns/audiences.py``), else ``MAX_REQUEST_BYTES`` (Flask's
``MAX_CONTENT_LENGTH``).
Werkzeug refuses a larger ``Content-Length`` with a 413 before reading a byte, and
caps a body without one (chunked: the server sets ``wsgi.input_terminated``) as it
is read. The limit is the request's own rather than set by a ``before_request``
hook, so it holds whichever hook reads the body first (CSRFProtect reads forms).

Text: a NUL byte (or, from JSON, a lone surrogate) in any query parameter, form
field or JSON string would reach PostgreSQL and fail there as a 500.
:func:`refuse_unstorable` answers it first, naming the field: 400 for a query
parameter, 422 for a field of the body (the API's envelope; a page or a flash
otherwise). It runs after the caller is known, so a caller who may not be there
gets the same answer whatever it sent (the login page, a 401): for pages it is a
``before_request`` hook registered after ``campaigns.auth``'s; the API calls it at
the end of its own ``authenticate``, after the token and the rate-limit count; the
WhatsApp webhooks read nothing before the signature and then parse totally.

Numbers: a JSON integer literal is read within bounds (:class:`JSONProvider`). Python
refuses to read one of more than 4,300 digits (a ValueError, so the body was "not
JSON"), and no column holds one of 20; one longer than :data:`MAX_JSON_INT_DIGITS` is
read as infinity, as JSON's ``1e999`` already is, so the field it is in refuses it
with that field's own message.

The :func:`validates_fields` flag is what ties a view to its parser: a view marked
with it parses its form with ``campaigns.validation``, which puts the same message
at the field of the re-rendered form, so the check leaves that view's form to it.
A view that reads its form any other way must not carry the flag.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, overload

import flask
from flask import Flask, current_app, request
from flask.json.provider import DefaultJSONProvider
from flask_login import current_user

from campaigns import errors
from campaigns.auth import is_self_authenticated, required_role
from campaigns.i18n import _
from campaigns.validation import unstorable_fields

F = TypeVar("F", bound=Callable[..., Any])


# Longer than any column's (bigint: 19 digits), far shorter than int()'s 4,300 limit.
MAX_JSON_INT_DIGITS = 100


def bounded_int(literal: str) -> int | float:
    """A JSON integer literal: its value, or ±infinity past MAX_JSON_INT_DIGITS digits."""
    if len(literal.lstrip("-")) > MAX_JSON_INT_DIGITS:
        return float("-inf") if literal.startswith("-") else float("inf")
    return int(literal)


class JSONProvider(DefaultJSONProvider):
    """Flask's JSON, its integers read by :func:`bounded_int` (see the docstring)."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        kwargs.setdefault("parse_int", bounded_int)
        return json.loads(s, **kwargs)


# A view's own limit: bytes, or a function of the app's settings that says how many.
UploadLimit = int | Callable[[Mapping[str, Any]], int]


@overload
def takes_upload(view: F, *, limit_bytes: UploadLimit | None = None) -> F: ...


@overload
def takes_upload(
    view: None = None, *, limit_bytes: UploadLimit | None = None
) -> Callable[[F], F]: ...


def takes_upload(view: F | None = None, *, limit_bytes: UploadLimit | None = None) -> Any:
    """Mark a view whose form carries a file: its body may be up to ``MAX_UPLOAD_BYTES``
    (``@takes_upload``), or up to ``limit_bytes`` (``@takes_upload(limit_bytes=…)``: a
    limit of the view's own, larger or smaller, whatever the settings say). Werkzeug
    spools the file to disk as it arrives, so the limit bounds the disk, not memory."""

    def mark(marked: F) -> F:
        marked.takes_upload = True  # type: ignore[attr-defined]
        marked.upload_limit = limit_bytes  # type: ignore[attr-defined]
        return marked

    return mark if view is None else mark(view)


def validates_fields(view: F) -> F:
    """Mark a view whose form goes through ``campaigns.validation`` (see the docstring)."""
    view.validates_fields = True  # type: ignore[attr-defined]
    return view


def _view_says(flag: str, endpoint: str | None) -> bool:
    view = current_app.view_functions.get(endpoint or "")
    return bool(getattr(view, flag, False))


class Request(flask.Request):
    """A request whose body limit is its view's (see the module's docstring)."""

    @property
    def max_content_length(self) -> int | None:
        # Outside an app context (no view to ask), Flask's own answer.
        upload = current_app and _view_says("takes_upload", self.endpoint)
        if upload and not is_self_authenticated(self.blueprint or ""):
            # A page's form may be read (CSRF's check) before its caller is known: only the
            # upload of a signed-in user who may use the view can be larger than any other.
            # The API reads no body before its token is checked (nor do the mocks).
            role = required_role(current_app, self.endpoint or "")
            upload = current_user.is_authenticated and (role is None or current_user.can(role))
        if self._max_content_length is None and upload:
            view = current_app.view_functions[self.endpoint or ""]
            own = getattr(view, "upload_limit", None)
            if callable(own):
                own = own(current_app.config)
            return int(own if own is not None else current_app.config["MAX_UPLOAD_BYTES"])
        return super().max_content_length

    @max_content_length.setter
    def max_content_length(self, value: int | None) -> None:
        self._max_content_length = value


# Blueprints that authenticate their callers themselves (campaigns.auth): the API
# calls refuse_unstorable once the caller is known; the webhooks need no check.
CHECKED_AFTER_AUTHENTICATION = frozenset({"api", "webhooks"})


def refuse_unstorable() -> Any:
    """Refuse text PostgreSQL cannot store, naming where it was; None when it can."""
    if fields := unstorable_fields(request.args):
        return errors.refuse_fields(400, _("Some query parameters are not valid."), fields)
    checks_itself = _view_says("validates_fields", request.endpoint)
    if not checks_itself and (fields := unstorable_fields(request.form)):
        return errors.refuse_fields(422, _("Some fields are not valid."), fields)
    if request.is_json:
        try:
            document = request.get_json(silent=True)
        except RecursionError:  # json.loads gives up on "[[[[…" a few hundred deep
            return errors.refuse_fields(
                400, _("The JSON is nested too deeply."), {"body": _("Nest it less deeply.")}
            )
        if fields := unstorable_fields(document):
            return errors.refuse_fields(422, _("Some fields are not valid."), fields)
    return None


def refuse_unstorable_on_pages() -> Any:
    """before_request (after campaigns.auth's): :func:`refuse_unstorable` for pages."""
    if request.blueprint in CHECKED_AFTER_AUTHENTICATION:
        return None
    return refuse_unstorable()


def init_app(app: Flask) -> None:
    """Call after ``auth.init_app``: hooks run in the order they were registered."""
    app.request_class = Request
    app.json = JSONProvider(app)
    app.before_request(refuse_unstorable_on_pages)
