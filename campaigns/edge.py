"""What a request must pass before a view reads it: a size limit.

Every body is limited before it is read: ``MAX_UPLOAD_BYTES`` for a view marked
:func:`takes_upload`, else ``MAX_REQUEST_BYTES`` (Flask's ``MAX_CONTENT_LENGTH``).
Werkzeug refuses a larger ``Content-Length`` with a 413 before reading a byte, and
caps a body without one (chunked: the server sets ``wsgi.input_terminated``) as it
is read. The limit is the request's own rather than set by a ``before_request``
hook, so it holds whichever hook reads the body first (CSRFProtect reads forms).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import flask
from flask import Flask, current_app

F = TypeVar("F", bound=Callable[..., Any])


def takes_upload(view: F) -> F:
    """Mark a view whose form carries a file: its body may be up to ``MAX_UPLOAD_BYTES``."""
    view.takes_upload = True  # type: ignore[attr-defined]
    return view


def _view_says(flag: str, endpoint: str | None) -> bool:
    view = current_app.view_functions.get(endpoint or "")
    return bool(getattr(view, flag, False))


class Request(flask.Request):
    """A request whose body limit is its view's (see the module's docstring)."""

    @property
    def max_content_length(self) -> int | None:
        if self._max_content_length is None and _view_says("takes_upload", self.endpoint):
            return int(current_app.config["MAX_UPLOAD_BYTES"])
        return super().max_content_length

    @max_content_length.setter
    def max_content_length(self, value: int | None) -> None:
        self._max_content_length = value


def init_app(app: Flask) -> None:
    app.request_class = Request
