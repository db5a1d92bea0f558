"""Campaign notifications: in-app for the owner, and an optional outgoing webhook.

The webhook is signed the Standard Webhooks way (https://www.standardwebhooks.com):
headers ``webhook-id`` (the same on every retry of one notification, so a receiver
can drop repeats), ``webhook-timestamp`` and ``webhook-signature``, under
``NOTIFICATION_WEBHOOK_SECRET``. A receiver verifies the raw body with
``Webhook(secret).verify(body, headers)`` from the ``standardwebhooks`` package.

Campaigns tell their owner when they start, complete, pause (on their own or by an
operator's hand), are cancelled or fail, and a recurring campaign when it skips a run
(the previous one still sending); a template tells its creator when WhatsApp
approves or rejects it (:func:`record_template_review`, in-app only, in the same
transaction as the status it reports), and when WhatsApp rates it RED
(:func:`record_template_quality`); a quality drop of a sender's number to YELLOW
or RED tells the owners of its unfinished campaigns, else the admins
(:func:`record_quality_drop`, in-app only).

A notice is stored as a code of ``reasons.py`` with its parameters (the campaign's
name and counts, and the reason it stopped as it stood then), worded when read, in
the reader's language; the webhook's ``text`` is worded in the owner's language
(``i18n.for_user``), next to the stable ``code``.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import requests
import sqlalchemy as sa
from flask import current_app
from standardwebhooks.webhooks import Webhook

from app import AnySession, db
from campaigns import counters, i18n, reasons
from campaigns.models import (
    FINISHED_CAMPAIGN_STATUSES,
    Campaign,
    MessageTemplate,
    Notification,
    Role,
    Sender,
    TemplateStatus,
    User,
)

logger = logging.getLogger(__name__)

# Each kind of notice, and the code of its words.
CODES = {
    "started": reasons.CAMPAIGN_STARTED,
    "completed": reasons.CAMPAIGN_COMPLETED,
    "auto_paused": reasons.CAMPAIGN_PAUSED,
    "failed": reasons.CAMPAIGN_FAILED,
    "paused": reasons.CAMPAIGN_PAUSED_BY_HAND,
    "cancelled": reasons.CAMPAIGN_CANCELLED,
    "run_skipped": reasons.RECURRING_RUN_SKIPPED,  # a series' run: the last has not finished
}
WEBHOOK_TIMEOUT = (3.05, 10)
QUALITY_NOTICE_KIND = "account_quality"


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


def _params(kind: str, campaign: Campaign, totals: dict[str, int]) -> dict[str, Any]:
    """What the notice's words need: the name, the counts once it completed, and why it
    paused or failed (the campaign's reason as it stands now, kept as it was)."""
    params: dict[str, Any] = {"name": campaign.name}
    if kind == "completed":
        params |= {"sent": totals["sent"], "failed": totals["failed"]}
    if kind == "cancelled":
        params |= {"sent": totals["sent"], "cancelled": totals["cancelled"]}
    if kind in ("auto_paused", "failed"):
        code = campaign.status_reason_code
        reason = (
            reasons.Reason(code, dict(campaign.status_reason_params or {}))
            if code
            else reasons.verbatim("")
        )
        params["reason"] = reason.as_json()
    return params


def _owners_text(campaign: Campaign, notice: reasons.Reason) -> str:
    """The notice in its owner's language (their own, else DEFAULT_LOCALE)."""
    with i18n.for_user(campaign.owner):
        return reasons.render(notice.code, notice.params)


def deliver(
    campaign_id: int,
    kind: str,
    *,
    first_attempt: bool,
    event_id: str | None = None,
    params: dict[str, Any] | None = None,
) -> None:
    """Record the notification (first attempt only) and post the webhook; raise to retry it.

    ``event_id`` names this notification for the webhook's receiver, the same on
    every attempt (the job passes its own id). ``params``: the notice's own, as the
    change that deferred it knew them (a skipped run's time).
    """
    campaign = db.session.get(Campaign, campaign_id)
    if campaign is None or kind not in CODES:
        logger.warning("notification %s for campaign %s dropped: unknown", kind, campaign_id)
        return
    totals = counters.totals(db.session, campaign_id)
    notice = reasons.Reason(CODES[kind], _params(kind, campaign, totals) | (params or {}))
    if first_attempt:
        db.session.add(
            Notification(
                user_id=campaign.owner_id,
                campaign_id=campaign_id,
                kind=kind,
                code=notice.code,
                params=notice.params,
            )
        )
        db.session.commit()
    url = current_app.config.get("NOTIFICATION_WEBHOOK_URL")
    if not url:
        return
    payload: dict[str, Any] = {
        "event": f"campaign.{kind}",
        "campaign": {"id": campaign.id, "name": campaign.name, "status": campaign.status.value},
        "counters": totals,
        "code": notice.code,
        "text": _owners_text(campaign, notice),
    }
    body, headers = signed_request(
        payload,
        current_app.config["NOTIFICATION_WEBHOOK_SECRET"],
        event_id or f"msg_{uuid.uuid4().hex}",
    )
    response = requests.post(url, data=body, headers=headers, timeout=WEBHOOK_TIMEOUT)
    response.raise_for_status()


# A template's review outcomes its creator hears of, and the notice's kind.
TEMPLATE_KINDS = {
    TemplateStatus.APPROVED: "template_approved",
    TemplateStatus.REJECTED: "template_rejected",
}


def record_template_review(
    session: AnySession, template: MessageTemplate, before: TemplateStatus | None
) -> None:
    """Tell the template's creator it was approved or rejected (caller commits).

    Only a change is told: a sync that finds the template as it was adds nothing. The
    parameters carry its id (the notice links to it), name and language, and WhatsApp's
    reason for a rejection as it gave it.
    """
    kind = TEMPLATE_KINDS.get(template.status)
    if kind is None or template.status == before or template.created_by_id is None:
        return
    params: dict[str, Any] = {
        "template_id": template.id,
        "name": template.name,
        "language": template.language,
    }
    code = reasons.TEMPLATE_APPROVED
    if template.status is TemplateStatus.REJECTED:
        code = reasons.TEMPLATE_REJECTED
        if template.status_reason and template.status_reason.strip().upper() != "NONE":
            code = reasons.TEMPLATE_REJECTED_WHY
            params["reason"] = template.status_reason
    session.add(Notification(user_id=template.created_by_id, kind=kind, code=code, params=params))


def record_quality_drop(session: AnySession, sender: Sender, before: str | None) -> None:
    """Tell whoever runs campaigns on this sender (the owners of its unfinished ones,
    else the active admins), in-app, that Meta lowered its quality rating to
    ``sender.quality_rating`` (the caller commits, with the rating)."""
    owners = set(
        session.scalars(
            sa.select(Campaign.owner_id)
            .join(User, User.id == Campaign.owner_id)
            .where(
                Campaign.sender_id == sender.id,
                Campaign.status.not_in(FINISHED_CAMPAIGN_STATUSES),
                User.is_disabled.is_(False),
            )
        )
    )
    if not owners:
        owners = set(
            session.scalars(
                sa.select(User.id).where(User.role == Role.ADMIN, User.is_disabled.is_(False))
            )
        )
    params = {
        "sender_id": sender.id,
        "name": sender.name,
        "quality": sender.quality_rating,
        "before": before or "UNKNOWN",
    }
    for user_id in sorted(owners):
        session.add(
            Notification(
                user_id=user_id,
                kind=QUALITY_NOTICE_KIND,
                code=reasons.ACCOUNT_QUALITY_DROPPED,
                params=params,
            )
        )
    logger.warning(
        "sender %s: quality dropped from %s to %s; %d users told",
        sender.id,
        before or "UNKNOWN",
        sender.quality_rating,
        len(owners),
    )


def record_template_quality(
    session: AnySession, template: MessageTemplate, before: str | None
) -> None:
    """Warn the template's creator that WhatsApp rated it RED (caller commits).

    Only the drop is told (a RED reported again adds nothing): a red template is the
    one WhatsApp pauses next, and the campaigns using it with it.
    """
    if template.quality_rating != "RED" or before == "RED" or template.created_by_id is None:
        return
    params = {"template_id": template.id, "name": template.name, "language": template.language}
    session.add(
        Notification(
            user_id=template.created_by_id,
            kind="template_quality_red",
            code=reasons.TEMPLATE_QUALITY_RED,
            params=params,
        )
    )
