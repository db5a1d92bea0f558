"""WhatsApp webhooks: verify the handshake and signature, apply statuses idempotently.

Statuses never move a message backwards (``read`` then a late ``delivered`` stays
``read``) and the same webhook delivered twice changes nothing. Opt-out replies,
the 131050 error and a marketing "stop" preference put the number on the
suppression list; a failure whose code means stop pauses its campaign, as the
same error on the send would.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Collection, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from app import db
from campaigns import campaign_states, message_states, phones
from campaigns.models import Message, MessageStatus, Sender
from campaigns.providers.errors import OPT_OUT_CODES, ErrorKind, classify
from campaigns.services.suppressions import lift_provider_suppression, suppress_quietly

logger = logging.getLogger(__name__)

WEBHOOK_STATUS = {
    "sent": MessageStatus.SENT,
    "delivered": MessageStatus.DELIVERED,
    "read": MessageStatus.READ,
    "failed": MessageStatus.FAILED,
}


def _app_secrets(global_secret: str | None) -> list[str]:
    secrets = [s for s in db.session.scalars(sa.select(Sender.app_secret)) if s]
    return ([global_secret] if global_secret else []) + secrets


def signature_ok(raw_body: bytes, header: str | None, global_secret: str | None) -> bool:
    """Is ``X-Hub-Signature-256`` the HMAC-SHA256 of the raw body under a known app secret?"""
    if not header or not header.startswith("sha256="):
        return False
    given = header.removeprefix("sha256=").strip()
    matches = [
        hmac.compare_digest(hmac.new(secret.encode(), raw_body, hashlib.sha256).hexdigest(), given)
        for secret in _app_secrets(global_secret)
    ]
    return any(matches)  # every secret compared, so timing says nothing about which


def verify_token_ok(token: str | None, global_token: str | None) -> bool:
    """The GET handshake's token: the global one or a sender's."""
    if not token:
        return False
    tokens = [t for t in db.session.scalars(sa.select(Sender.webhook_verify_token)) if t]
    if global_token:
        tokens.append(global_token)
    return any(hmac.compare_digest(token, t) for t in tokens)


def _values(payload: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    for entry in payload.get("entry") or []:
        for change in (entry or {}).get("changes") or []:
            value = (change or {}).get("value")
            if isinstance(value, Mapping):
                yield value


def apply(payload: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, int]:
    """Apply every status, opt-out reply and marketing preference in a webhook.

    Returns what happened, for the log.
    """
    summary = {"applied": 0, "ignored": 0, "unknown": 0, "opt_outs": 0, "opt_ins": 0}
    failed_campaigns: dict[int, tuple[Any, str]] = {}
    for value in _values(payload):
        for status in value.get("statuses") or []:
            summary[_apply_status(status, failed_campaigns)] += 1
        for message in value.get("messages") or []:
            summary["opt_outs"] += _apply_reply(message, config["OPT_OUT_KEYWORDS"])
        for preference in value.get("user_preferences") or []:
            change = _apply_preference(preference)
            if change:
                summary[change] += 1
    # What the failures say about their campaigns, once each, after the statuses are
    # committed: a pause takes the campaign's lock, which a batch's claim holds (shared)
    # while it waits for a counter shard; taken while holding the statuses' shard, the
    # two could deadlock.
    db.session.commit()
    for campaign_id, (code, text) in failed_campaigns.items():
        if kind := _stop_kind(code):
            campaign_states.stop_for_code(campaign_id, code, text, kind)
        else:
            campaign_states.pause_if_failing(campaign_id, config)
    db.session.commit()
    return summary


def _find_message(status: Mapping[str, Any]) -> Message | None:
    wamid = status.get("id")
    message = None
    if wamid:
        message = db.session.scalar(
            sa.select(Message).where(Message.provider_message_id == str(wamid))
        )
    callback = str(status.get("biz_opaque_callback_data") or "")
    if message is None and callback.isdigit():
        # The status may beat our own record of the wamid (the send's commit).
        candidate = db.session.get(Message, int(callback))
        if candidate is not None and candidate.provider_message_id in (None, wamid):
            message = candidate
    return message


def _apply_status(status: Mapping[str, Any], failed_campaigns: dict[int, tuple[Any, str]]) -> str:
    target = WEBHOOK_STATUS.get(str(status.get("status")))
    message = _find_message(status)
    if message is None or target is None:
        logger.info(
            "webhook status %s for unknown message %s", status.get("status"), status.get("id")
        )
        return "unknown"
    failed = target is MessageStatus.FAILED
    error = (status.get("errors") or [{}])[0] if failed else {}
    code = error.get("code")
    text = str(error.get("message") or error.get("title") or "")[:2000] or None
    moved = message_states.record_status(
        db.session,
        message,
        target,
        _timestamp(status.get("timestamp")),
        wamid=str(status["id"]) if status.get("id") else None,
        error_code=str(error.get("code", ""))[:32] or None,
        error_text=text,
    )
    if not moved:
        return "ignored"  # a duplicate, or a stage the message has already passed
    if failed and code in OPT_OUT_CODES:
        suppress_quietly(db.session, message.phone, text or "131050", "provider")
    if failed and (message.campaign_id not in failed_campaigns or _stop_kind(code)):
        failed_campaigns[message.campaign_id] = (code, text or "")
    return "applied"


def _stop_kind(code: Any) -> ErrorKind | None:
    """The pause a failure's code calls for (quality, template, account), if any."""
    kind = classify(code, None) if isinstance(code, int) else None
    return kind if kind in (ErrorKind.PAUSE_CAMPAIGN, ErrorKind.PAUSE_SENDER) else None


def _timestamp(raw: Any) -> datetime:
    try:
        return datetime.fromtimestamp(int(raw), UTC)
    except (TypeError, ValueError, OverflowError):
        return datetime.now(UTC)


def _wa_phone(wa_id: Any) -> str | None:
    return phones.normalise("+" + str(wa_id or "").lstrip("+"))


def _apply_reply(message: Mapping[str, Any], keywords: Collection[str]) -> int:
    text = str(
        ((message.get("text") or {}).get("body")) or (message.get("button") or {}).get("text") or ""
    )
    if text.strip().lower() not in keywords:
        return 0
    phone = _wa_phone(message.get("from"))
    if phone is None:
        return 0
    suppress_quietly(db.session, phone, f"Replied “{text.strip()[:50]}”", "opt_out_reply")
    logger.info("opt-out reply from a customer: number suppressed")
    return 1


def _apply_preference(preference: Mapping[str, Any]) -> str | None:
    """The customer stopped (or resumed) marketing messages in WhatsApp itself."""
    phone = _wa_phone(preference.get("wa_id"))
    if phone is None or preference.get("category") != "marketing_messages":
        return None
    if preference.get("value") == "stop":
        reason = str(preference.get("detail") or "Stopped marketing messages")
        suppress_quietly(db.session, phone, reason, "provider")
        logger.info("marketing opt-out preference from a customer: number suppressed")
        return "opt_outs"
    if preference.get("value") == "resume" and lift_provider_suppression(db.session, phone):
        logger.info("marketing opt-in preference from a customer: suppression lifted")
        return "opt_ins"
    return None
