"""A request id on every request: taken from the router or made here, echoed, logged.

The platform's router sets ``X-Request-ID`` (Heroku: 20 to 200 of ``A-Z a-z 0-9 + / =
-``); one that is well formed is kept, so the router's log and ours name the request
alike, and anything else (too long, odd characters that would forge log fields or
split a header) is replaced by a new id. The id goes back in the ``X-Request-ID``
header of every response — pages, the API, errors, 404s and 413s alike, since this
wraps the whole WSGI app — onto every log line written while the request is handled
(campaigns/logs.py), on gunicorn's access log line (read from that header), and on an
error report's tags (campaigns/error_reporting.py).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from flask import Flask
from werkzeug.wsgi import ClosingIterator

from campaigns import error_reporting, logs

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

HEADER = "X-Request-ID"
ENVIRON_KEY = "disparo.request_id"
# Letters, digits and - _ . : + / =, 8 to 200 of them (a UUID, Heroku's ids).
WELL_FORMED = re.compile(r"[A-Za-z0-9_.:+/=-]{8,200}")


def accepted(value: str | None) -> str | None:
    """The incoming id if it is well formed, else None."""
    if value is not None and WELL_FORMED.fullmatch(value):
        return value
    return None


def new_id() -> str:
    return str(uuid.uuid4())


class RequestIdMiddleware:
    """Outermost WSGI layer: the id is chosen before Flask sees the request and added to
    whatever response comes back, even one an error handler or werkzeug itself made."""

    def __init__(self, app: WSGIApplication) -> None:
        self.app = app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request_id = accepted(environ.get("HTTP_X_REQUEST_ID")) or new_id()
        environ[ENVIRON_KEY] = request_id  # for a view that wants to show it
        token = logs.bind(request_id=request_id)
        error_reporting.tag_request(request_id)

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            headers = [(name, value) for name, value in headers if name.lower() != "x-request-id"]
            headers.append((HEADER, request_id))
            return start_response(status, headers, exc_info)

        def forget() -> None:
            try:
                logs.unbind(token)
            except ValueError:  # closed in another context than it was opened in
                pass

        try:
            response = self.app(environ, start)
        except BaseException:
            forget()
            raise
        file_wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(file_wrapper, type) and isinstance(response, file_wrapper):
            forget()  # a static file: left as it is, so the server can sendfile() it
            return response
        # The id stays bound while the body is sent and until the server closes it, so
        # what is logged meanwhile (a streamed body, gunicorn's access line) carries it.
        return ClosingIterator(response, [forget])


def init_app(app: Flask) -> None:
    # Flask's wsgi_app, not the app object: the test client and gunicorn both call it.
    app.wsgi_app = RequestIdMiddleware(app.wsgi_app)  # type: ignore[method-assign]
