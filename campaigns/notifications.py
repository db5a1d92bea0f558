"""Campaign notifications: in-app for the owner, and an optional outgoing webhook.

The webhook is signed the Standard Webhooks way (https://www.standardwebhooks.com):
headers ``webhook-id`` (the same on every retry of one notification, so a receiver
can drop repeats), ``webhook-timestamp`` and ``webhook-signature``, under
``NOTIFICATION_WEBHOOK_SECRET``. A receiver verifies the raw body with
``Webhook(secret).verify(body, headers)`` from the ``standardwebhooks`` package.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import requests
from flask import current_app
from standardwebhooks.webhooks import Webhook

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


def signed_request(
    payload: dict[str, Any], secret: str, event_id: str
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one webhook post, signed over the exact body bytes."""
    body = json.dumps(payload, allow_nan=False).encode()  # what requests' json= sent
    now = datetime.now(UTC)
    headers = {
        "Content-Type": "application/json",
        "webhook-id": event_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(event_id, now, body),
    }
    return body, headers


def deliver(
    campaign_id: int, kind: str, *, first_attempt: bool, event_id: str | None = None
) -> None:
    """Record the notification (first attempt only) and post the webhook; raise to retry it.

    ``event_id`` names this notification for the webhook's receiver, the same on
    every attempt (the job passes its own id).
    """
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
    body, headers = signed_request(
        payload,
        current_app.config["NOTIFICATION_WEBHOOK_SECRET"],
        event_id or f"msg_{uuid.uuid4().hex}",
    )
    response = requests.post(url, data=body, headers=headers, timeout=WEBHOOK_TIMEOUT)
    response.raise_for_status()
