"""Tracked links (campaigns/tracked_links.py): a recipient's tap on a campaign's link
button, counted, then sent on to the campaign's address. Public: the recipient is not
signed in; the signed token is what admits the request."""

from __future__ import annotations

from flask import Blueprint, abort, current_app, redirect, request
from werkzeug.wrappers import Response

from app import db
from campaigns import answers, tracked_links
from campaigns.models import Campaign, Message, MessageTemplate

bp = Blueprint("links", __name__)


@bp.get(tracked_links.PATH + "<token>")
def follow(token: str) -> Response:
    """302 to the campaign's address, the click counted once per recipient; 404 for a
    token that is not Disparo's or a campaign or button that no longer tracks."""
    read = tracked_links.read(current_app.config["SECRET_KEY"], token)
    if read is None:
        abort(404)
    campaign_id, message_id, index = read
    campaign = db.session.get(Campaign, campaign_id)
    address = tracked_links.tracked(campaign.variable_mapping).get(index) if campaign else None
    if address is None:
        abort(404)
    # Counted on GET only: HEAD is what link checkers and previews send.
    counted = message_id and request.method == "GET"
    message = db.session.get(Message, message_id) if counted else None
    if campaign is not None and message is not None and message.campaign_id == campaign_id:
        # The button of the template the recipient got (their language's version).
        sent = db.session.get(MessageTemplate, message.template_id or campaign.template_id)
        buttons = (sent.buttons if sent else None) or []
        text = buttons[index].get("text", "") if index < len(buttons) else ""
        answers.record_click(db.session, message_id, text)  # at the database's now
        db.session.commit()
    response = redirect(address, code=302)
    response.headers["Referrer-Policy"] = "no-referrer"  # the token stays with us
    return response
