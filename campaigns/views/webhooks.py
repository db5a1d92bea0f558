"""The WhatsApp webhook endpoint: Meta's (or the mock's) status updates and replies."""

from __future__ import annotations

import logging

from flask import Blueprint, current_app, jsonify, request
from werkzeug.wrappers import Response

from campaigns import webhooks

logger = logging.getLogger(__name__)

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")


@bp.get("/whatsapp")
def whatsapp_verify() -> tuple[str, int]:
    """Meta's subscription handshake: echo the challenge for a known verify token."""
    mode, token = request.args.get("hub.mode"), request.args.get("hub.verify_token")
    if mode == "subscribe" and webhooks.verify_token_ok(
        token, current_app.config["WEBHOOK_VERIFY_TOKEN"]
    ):
        return request.args.get("hub.challenge", ""), 200
    return "forbidden", 403


@bp.post("/whatsapp")
def whatsapp_receive() -> tuple[Response, int]:
    """Statuses and replies, accepted only with a valid X-Hub-Signature-256."""
    raw = request.get_data(cache=True)
    signature = request.headers.get("X-Hub-Signature-256")
    if not webhooks.signature_ok(raw, signature, current_app.config["WHATSAPP_APP_SECRET"]):
        logger.warning("webhook refused: bad or missing signature from %s", request.remote_addr)
        return jsonify(error={"code": "bad_signature", "message": "Signature does not match."}), 401
    payload = request.get_json(silent=True)
    if not isinstance(payload, dict):
        return jsonify(error={"code": "bad_payload", "message": "Expected a JSON object."}), 400
    summary = webhooks.apply(payload, current_app.config)
    logger.info("webhook applied: %s", summary)
    return jsonify(ok=True, **summary), 200
