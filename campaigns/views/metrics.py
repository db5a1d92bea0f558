"""GET /metrics for Prometheus: an admin's API token or METRICS_TOKEN, as a bearer token."""

from __future__ import annotations

import hmac
import logging

from flask import Blueprint, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.wrappers import Response

from app import db
from campaigns import errors, metrics
from campaigns.errors import json_error
from campaigns.i18n import _
from campaigns.labels import label
from campaigns.models import Role
from campaigns.services.users import user_for_token

logger = logging.getLogger(__name__)

bp = Blueprint("metrics", __name__)


def _utf8(text: str) -> bytes:
    # compare_digest refuses str with non-ASCII characters; bytes of any header compare.
    return text.encode("utf-8", "surrogatepass")


def refusal() -> Response | None:
    """None when the bearer token is METRICS_TOKEN or an active admin's API token; else
    the API's 401 (no or unknown token) or 403 (a token of a user who is not an admin)."""
    scheme, _sep, raw = request.headers.get("Authorization", "").partition(" ")
    raw = raw.strip() if scheme.lower() == "bearer" else ""
    expected = current_app.config.get("METRICS_TOKEN")
    # Constant time: the token is compared whole, whatever the first wrong character.
    if raw and expected and hmac.compare_digest(_utf8(raw), _utf8(expected)):
        return None
    user = user_for_token(raw) if raw else None
    if user is None:
        response = json_error(
            401, "unauthenticated", _("Send a valid API token as: Authorization: Bearer <token>.")
        )
        response.headers["WWW-Authenticate"] = 'Bearer realm="disparo"'
        return response
    if not user.can(Role.ADMIN):
        return json_error(
            403, "forbidden", _("This needs the %(role)s role.") % {"role": label(Role.ADMIN)}
        )
    return None


@bp.get("/metrics")
def scrape() -> Response:
    """Prometheus' text format, read from the database now (campaigns/metrics.py)."""
    try:
        # An admin's token is looked up in the database too: inside the try, so a
        # database that is down answers 503 whichever credential the scraper sends.
        if (refused := refusal()) is not None:
            return refused
        body = generate_latest(metrics.REGISTRY)
    except SQLAlchemyError:
        # The database is down or the reads ran past their timeout: the scrape fails
        # (Prometheus records up == 0), and the reason is in this log line.
        db.session.rollback()
        logger.exception("metrics: reading the database failed")
        return json_error(503, "unavailable", errors.message_for(503))
    return Response(body, mimetype=CONTENT_TYPE_LATEST)
