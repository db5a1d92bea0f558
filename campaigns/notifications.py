"""Campaign notifications: in-app for the owner, and an optional outgoing webhook."""

from __future__ import annotations

import logging
from typing import Any

import requests
from flask import current_app

from app import db
from campaigns import counters
from campaigns.i18n import _
from campaigns.models import Campaign, Notification

logger = logging.getLogger(__name__)

TEXTS = {
    "started": _("Campaign “%(name)s” started sending."),
    "completed": _("Campaign “%(name)s” completed: %(sent)d sent, %(failed)d failed."),
    "auto_paused": _("Campaign “%(name)s” was paused: %(reason)s"),
    "failed": _("Campaign “%(name)s” failed: %(reason)s"),
}
WEBHOOK_TIMEOUT = (3.05, 10)


def deliver(campaign_id: int, kind: str, *, first_attempt: bool) -> None:
    """Record the notification (first attempt only) and post the webhook; raise to retry it."""
    campaign = db.session.get(Campaign, campaign_id)
    if campaign is None or kind not in TEXTS:
        logger.warning("notification %s for campaign %s dropped: unknown", kind, campaign_id)
        return
    totals = counters.totals(db.session, campaign_id)
    text = TEXTS[kind] % {
        "name": campaign.name,
        "sent": totals["sent"],
        "failed": totals["failed"],
        "reason": campaign.status_reason or "",
    }
    if first_attempt:
        db.session.add(
            Notification(user_id=campaign.owner_id, campaign_id=campaign_id, kind=kind, text=text)
        )
        db.session.commit()
    url = current_app.config.get("NOTIFICATION_WEBHOOK_URL")
    if not url:
        return
    payload: dict[str, Any] = {
        "event": f"campaign.{kind}",
        "campaign": {"id": campaign.id, "name": campaign.name, "status": campaign.status.value},
        "counters": totals,
        "text": text,
    }
    response = requests.post(url, json=payload, timeout=WEBHOOK_TIMEOUT)
    response.raise_for_status()
