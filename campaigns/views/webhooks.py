"""The WhatsApp webhook endpoint: Meta's (or the mock's) status updates and replies."""

from __future__ import annotations

import logging

from flask import Blueprint, current_app, jsonify, request
from werkzeug.wrappers import Response

from campaigns import webhooks
from campaigns.errors import json_error
from campaigns.i18n import _
from campaigns.security import client_address

logger = logging.getLogger(__name__)

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")


def _plain(text: str, status: int) -> Response:
    return Response(text, status, mimetype="text/plain")


@bp.get("/whatsapp")
def whatsapp_verify() -> Response:
    """Meta's subscription handshake: echo the challenge (digits only) for a known token."""
    mode, token = request.args.get("hub.mode"), request.args.get("hub.verify_token")
    if mode != "subscribe" or not webhooks.verify_token_ok(
        token, current_app.config["WEBHOOK_VERIFY_TOKEN"]
    ):
        return _plain("forbidden", 403)
    challenge = request.args.get("hub.challenge")
    if not webhooks.challenge_ok(challenge):
        logger.warning("webhook handshake refused: hub.challenge is not digits")
        return _plain(_("hub.challenge must be digits."), 400)
    return _plain(challenge, 200)


@bp.post("/whatsapp")
def whatsapp_receive() -> Response:
    """Statuses and replies, accepted only with a valid X-Hub-Signature-256.

    A signed body Disparo cannot use (or parts of it) is still acknowledged with a
    200: Meta retries any other answer for days. What was skipped is logged.
    """
    raw = request.get_data(cache=True)
    signature = request.headers.get("X-Hub-Signature-256")
    signed = webhooks.signers(raw, signature, current_app.config["WHATSAPP_APP_SECRET"])
    if not signed:
        logger.warning("webhook refused: bad or missing signature from %s", client_address())
        return json_error(401, "bad_signature", "Signature does not match.")
    summary = webhooks.apply(webhooks.parse(raw), signed, current_app.config)
    logger.info("webhook applied: %s", summary)
    return jsonify(ok=True, **summary)
