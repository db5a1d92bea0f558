"""The send: one message job's work, from the limits to the provider's answer.

Called by the message jobs in ``jobs/tasks.py``; it never imports ``jobs``. A send
checks its campaign, takes the sender's and the owner's limits in one call to the
rate limiter, claims the message (``sending``, committed before the HTTP call, so a
crash from there on leaves a row maintenance sends again: at-least-once), calls
the provider, then records the outcome and its counters in one transaction. What
an error means is decided by its code (``providers/errors.py``): try again, try
much later, give up on this message, or pause the campaign.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, joinedload, load_only

from app import db
from campaigns import campaign_states, message_states, providers, queues, ratelimit
from campaigns.clock import database_now
from campaigns.models import (
    Campaign,
    CampaignStatus,
    Message,
    MessageStatus,
    MessageTemplate,
    Sender,
    User,
)
from campaigns.providers.errors import OPT_OUT_CODES, ErrorKind
from campaigns.services.suppressions import suppress_quietly

logger = logging.getLogger(__name__)

SLOW_RETRY_SECONDS = 3600.0


class Deferred(Exception):
    """The message could not go yet (rate limit): run it again after ``seconds``."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"retry in {seconds:.1f}s")
        self.seconds = seconds


class Transient(Exception):
    """A retryable provider error: let the job's retry strategy try again."""


def _commit_keeping_loaded(session: Session) -> None:
    """Commit without expiring what was loaded: the provider call needs the message,
    campaign, sender and template as claimed, and reloading them costs four queries."""
    session.expire_on_commit = False
    try:
        session.commit()
    finally:
        session.expire_on_commit = True


# A message job's reads in one statement: the message, its campaign, sender, template
# and owner, only the columns a send uses (a full row of each was 80 columns, and
# building them cost as much CPU as the rest of the job's SQL). Anything else the
# provider reads is lazy-loaded.
SEND_LOAD = (
    load_only(Message.campaign_id, Message.phone, Message.params, Message.status),
    joinedload(Message.campaign)
    .load_only(Campaign.status, Campaign.sender_id, Campaign.template_id, Campaign.owner_id)
    .options(
        joinedload(Campaign.sender).load_only(
            Sender.provider,
            Sender.phone_number_id,
            Sender.access_token,
            Sender.rate_limit_per_minute,
            Sender.min_interval_ms,
        ),
        joinedload(Campaign.template).load_only(
            MessageTemplate.name,
            MessageTemplate.language,
            MessageTemplate.body_text,
            MessageTemplate.parameter_format,
        ),
        joinedload(Campaign.owner).load_only(User.campaign_rate_limit_per_minute),
    ),
)


@dataclass(frozen=True)
class SendOutcome:
    status: str  # sent, failed, skipped (nothing to do), paused, cancelled
    detail: str = ""


def send(
    message_id: int, config: Mapping[str, Any], *, last_attempt: bool, retry_queue: bool
) -> SendOutcome:
    """Send one message: check the campaign, take the limits, claim, call, record.

    Raises :class:`Deferred` when a limiter says wait (no attempt spent) and
    :class:`Transient` for a retryable provider error that has attempts left.
    """
    message = db.session.get(Message, message_id, options=SEND_LOAD, populate_existing=True)
    expected = MessageStatus.RETRYING if retry_queue else MessageStatus.QUEUED
    if message is None or message.status is not expected:
        db.session.rollback()
        return SendOutcome("skipped", "not waiting to be sent")
    campaign = message.campaign
    if campaign.status is CampaignStatus.PAUSED:
        message_states.transition(db.session, message_id, [expected], MessageStatus.PENDING)
        db.session.commit()
        return SendOutcome("paused")
    if campaign.status is not CampaignStatus.SENDING:
        message_states.transition(db.session, message_id, [expected], MessageStatus.CANCELLED)
        db.session.commit()
        return SendOutcome("cancelled")
    # The id read now: after the last commit the campaign is expired, and reading its
    # id then would cost a SELECT of the whole row.
    campaign_id = campaign.id
    sender, template, owner = campaign.sender, campaign.template, campaign.owner
    limits = ratelimit.send_limits(sender, owner)
    if retry_queue:
        limits.append(ratelimit.retry_limit(message_id))
    decision = ratelimit.consume(db.session, limits)
    if not decision.allowed:
        db.session.rollback()
        raise Deferred(decision.retry_after)

    # Claim, and commit `sending` before the HTTP call: a crash from here on
    # leaves a row the maintenance task reconciles (at-least-once).
    if not message_states.claim(db.session, message_id, campaign_id, expected):
        db.session.rollback()
        return SendOutcome("skipped", "claimed by another job")
    _commit_keeping_loaded(db.session())  # the scoped session's current Session
    phone, params = message.phone, dict(message.params or {})

    provider = providers.for_sender(sender, config)
    try:
        result = provider.send_template(
            to=phone, template=template, params=params, callback_data=str(message_id)
        )
    except providers.SendError as error:
        return _record_error(
            message_id,
            campaign_id,
            error,
            config,
            last_attempt=last_attempt,
            retry_queue=retry_queue,
        )
    message_states.record_sent(db.session, message_id, campaign_id, result.provider_message_id)
    db.session.commit()
    return SendOutcome("sent", result.provider_message_id)


def _record_error(
    message_id: int,
    campaign_id: int,
    error: providers.SendError,
    config: Mapping[str, Any],
    *,
    last_attempt: bool,
    retry_queue: bool,
) -> SendOutcome:
    code = (
        str(error.code)
        if error.code is not None
        else (str(error.http_status) if error.http_status else None)
    )
    sending = [MessageStatus.SENDING]
    kind = error.kind
    if kind is ErrorKind.RETRY and not last_attempt:
        message_states.note_error(db.session, message_id, code, error.message)
        back = MessageStatus.RETRYING if retry_queue else MessageStatus.QUEUED
        message_states.transition(db.session, message_id, sending, back, code=code)
        db.session.commit()
        raise Transient(error.message)
    if kind in (ErrorKind.PAUSE_CAMPAIGN, ErrorKind.PAUSE_SENDER):
        message_states.note_error(db.session, message_id, code, error.message)
        message_states.transition(db.session, message_id, sending, MessageStatus.PENDING, code=code)
        campaign_states.stop_for_code(campaign_id, error.code, error.message, kind)
        return SendOutcome("paused", error.message)
    if kind in (ErrorKind.RETRY, ErrorKind.SLOW_RETRY) and not retry_queue:
        # Attempts on campaign-messages exhausted, or WhatsApp said "much later":
        # hand over to message-retry.
        message_states.note_error(db.session, message_id, code, error.message)
        message_states.transition(
            db.session, message_id, sending, MessageStatus.RETRYING, code=code
        )
        later = None
        if kind is ErrorKind.SLOW_RETRY:
            later = database_now(db.session) + timedelta(seconds=SLOW_RETRY_SECONDS)
        queues.defer_retry(db.session, message_id, later)
        db.session.commit()
        return SendOutcome("retrying", error.message)
    # Permanent, or the retries on message-retry exhausted too.
    message_states.fail(db.session, message_id, sending, code, error.message)
    if error.code in OPT_OUT_CODES:
        phone = db.session.scalar(sa.select(Message.phone).where(Message.id == message_id))
        assert phone is not None  # the message being sent has its row; every row has a phone
        suppress_quietly(db.session, phone, error.message, "provider")
    campaign_states.pause_if_failing(campaign_id, config)
    db.session.commit()
    return SendOutcome("failed", error.message)


def defer_rate_limited(message_id: int, seconds: float, *, retry_queue: bool) -> None:
    """Run the message's job again later, without spending an attempt (rate-limited)."""
    # A little jitter, so jobs denied together don't all come back in the same instant.
    at = database_now(db.session) + timedelta(seconds=seconds + random.uniform(0.05, 0.25))
    if retry_queue:
        queues.defer_retry(db.session, message_id, at)
    else:
        queues.defer_sends(db.session, [message_id], [at])
    db.session.commit()
