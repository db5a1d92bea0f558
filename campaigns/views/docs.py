"""The API's own description, public: the OpenAPI document and a page that reads it."""

from __future__ import annotations

import secrets

from flask import Blueprint, jsonify, make_response, render_template
from werkzeug.wrappers import Response

from campaigns import openapi, security

# Its own blueprint, not the API's: these two need no token and count against no
# rate limit (the API's before_request hook does both for every route of its own).
bp = Blueprint("api_docs", __name__)


@bp.get(openapi.DOCUMENT_PATH)
def document() -> Response:
    """The OpenAPI 3.1 document of /api/v1 (campaigns/openapi.py)."""
    return jsonify(openapi.document())


@bp.get("/api/docs")
def page() -> Response:
    """The document drawn by the vendored Redoc (static/vendor/), under a policy of its own."""
    nonce = secrets.token_urlsafe(16)
    response = make_response(render_template("api/docs.html", nonce=nonce))
    response.headers["Content-Security-Policy"] = security.api_docs_policy(nonce)
    return response
