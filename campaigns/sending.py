"""The sending engine's domain logic, called by the jobs in ``jobs/tasks.py``.

This module never imports ``jobs`` (``services`` does, to defer from the web). Jobs
that must start *with* a state change are inserted in the same transaction through
Procrastinate's own SQL function (``procrastinate_defer_jobs_v1``, frozen in
migration 0001), so no crash can leave a row queued without its job or a job
without its row: the ``messages`` table is the campaign's durable queue and
Procrastinate holds only a bounded window of it.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload, load_only

from app import db
from campaigns import counters, erp, phones, providers, ratelimit, rendering, statelog
from campaigns.i18n import _
from campaigns.models import (
    Campaign,
    CampaignStatus,
    Message,
    MessageStatus,
    MessageTemplate,
    Sender,
    Suppression,
    User,
)
from campaigns.providers.errors import JOB_FAILED_CODE, OPT_OUT_CODES, ErrorKind
from campaigns.queues import (
    FAN_OUT_TASK,
    MESSAGES_QUEUE,
    NOTIFICATIONS_QUEUE,
    NOTIFY_TASK,
    PUMP_TASK,
    RETRY_QUEUE,
    RETRY_TASK,
    SEND_TASK,
    SENDER_QUEUE,
)

logger = logging.getLogger(__name__)

FAN_OUT_QUEUE = PUMP_QUEUE = SENDER_QUEUE
SEND_QUEUE, NOTIFY_QUEUE = MESSAGES_QUEUE, NOTIFICATIONS_QUEUE

# The pump keeps at most this many message jobs in Procrastinate per campaign, and
# never schedules further ahead than the horizon (at 20/min that is ~20 jobs).
WINDOW_MAX = 1000
WINDOW_HORIZON_SECONDS = 60.0
# Come back every 2 s: a window of WINDOW_MAX per interval caps a campaign at 500/s
# (at 5 s, 200/s was below what the baseline queue reaches on two cores).
PUMP_INTERVAL_SECONDS = 2.0
SLOW_RETRY_SECONDS = 3600.0
FAN_OUT_PAGE_SIZE = 1000  # the mock ERP's largest page; fewer round trips and commits

DEFER_JOBS = sa.text(
    # -- insert jobs in the caller's transaction (NOTIFY fires at its commit)
    "SELECT procrastinate_defer_jobs_v1(ARRAY("
    " SELECT ROW(:queue, :task, 0, NULL, :queueing_lock, args, at)::procrastinate_job_to_defer_v1"
    " FROM unnest(CAST(:args AS jsonb[]), CAST(:ats AS timestamptz[])) AS t(args, at)))"
)
HAS_JOB = sa.text(
    # -- is a job of this task already waiting or running for this campaign?
    "SELECT EXISTS (SELECT 1 FROM procrastinate_jobs WHERE task_name = :task"
    " AND status IN ('todo', 'doing') AND args->>'campaign_id' = CAST(:campaign_id AS text))"
)


class Deferred(Exception):
    """The message could not go yet (rate limit): run it again after ``seconds``."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"retry in {seconds:.1f}s")
        self.seconds = seconds


class Transient(Exception):
    """A retryable provider error: let the job's retry strategy try again."""


def defer(
    session: Session,
    task: str,
    queue: str,
    args_list: Sequence[Mapping[str, Any]],
    at: Sequence[datetime | None] | None = None,
    queueing_lock: str | None = None,
) -> None:
    """Insert jobs in the session's transaction (all or none)."""
    if not args_list:
        return
    params = {
        "queue": queue,
        "task": task,
        "queueing_lock": queueing_lock,
        "args": [json.dumps(args) for args in args_list],
        "ats": list(at) if at is not None else [None] * len(args_list),
    }
    if queueing_lock is None:
        session.execute(DEFER_JOBS, params)
        return
    # One waiting job per queueing lock: a second one is "already enqueued", and
    # the savepoint keeps that refusal from aborting the caller's transaction.
    try:
        with session.begin_nested():
            session.execute(DEFER_JOBS, params)
    except IntegrityError:
        logger.debug("%s: a job with queueing lock %s is already waiting", task, queueing_lock)


def pump_lock(campaign_id: int) -> str:
    return f"pump-{campaign_id}"


def defer_pump(session: Session, campaign_id: int, at: datetime | None = None) -> None:
    defer(
        session, PUMP_TASK, PUMP_QUEUE, [{"campaign_id": campaign_id}], [at], pump_lock(campaign_id)
    )


def has_job(session: Session, task: str, campaign_id: int) -> bool:
    return bool(session.execute(HAS_JOB, {"task": task, "campaign_id": campaign_id}).scalar())


def notify(session: Session, campaign_id: int, kind: str) -> None:
    """Tell the owner (in-app and the outgoing webhook), after this transaction commits."""
    defer(session, NOTIFY_TASK, NOTIFY_QUEUE, [{"campaign_id": campaign_id, "kind": kind}])


def _now(session: Session) -> datetime:
    return session.execute(sa.select(sa.func.now())).scalar_one()


def _lock_campaign(session: Session, campaign_id: int) -> Campaign | None:
    # FOR NO KEY UPDATE: it serialises the campaign's own state changes without
    # blocking the foreign-key checks of rows other jobs insert for it
    # (minute stats, activity, notifications), which FOR UPDATE would, and deadlock.
    # populate_existing: the row as locked, not what this session loaded before the lock.
    query = (
        sa.select(Campaign)
        .where(Campaign.id == campaign_id)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    )
    return session.scalar(query)


# --- starting ----------------------------------------------------------------------


def start(session: Session, campaign: Campaign) -> None:
    """Mark a locked campaign as sending and defer its fan-out (caller commits)."""
    campaign.status = CampaignStatus.SENDING
    campaign.status_reason = None
    campaign.started_at = campaign.started_at or _now(session)
    counters.ensure_rows(session, campaign.id)
    defer(session, FAN_OUT_TASK, FAN_OUT_QUEUE, [{"campaign_id": campaign.id}])
    notify(session, campaign.id, "started")


def claim_due(tick: datetime) -> list[int]:
    """Start every scheduled campaign due at the tick; two workers never start one twice."""
    campaigns = db.session.scalars(
        sa.select(Campaign)
        .where(Campaign.status == CampaignStatus.SCHEDULED, Campaign.scheduled_at <= tick)
        .order_by(Campaign.scheduled_at)
        .with_for_update(skip_locked=True, key_share=True)
    ).all()
    for campaign in campaigns:
        start(db.session, campaign)
        db.session.add(_activity(campaign.id, "started", _("scheduled time reached")))
    db.session.commit()
    return [c.id for c in campaigns]


def _activity(campaign_id: int, action: str, detail: str | None = None):
    from campaigns.models import CampaignActivity

    return CampaignActivity(campaign_id=campaign_id, user_id=None, action=action, detail=detail)


def defer_next_step(session: Session, campaign_id: int, *, audience_loaded: bool) -> None:
    """Defer what a sending campaign needs next: its pump, or a fan-out if none waits."""
    if audience_loaded:
        defer_pump(session, campaign_id)  # its queueing lock keeps it to one
    elif not has_job(session, FAN_OUT_TASK, campaign_id):
        defer(session, FAN_OUT_TASK, FAN_OUT_QUEUE, [{"campaign_id": campaign_id}])


def rekick() -> list[int]:
    """Give every sending campaign whose fan-out or pump job was lost a new one."""
    kicked = []
    # Locked until the commit, so a fan-out or pump cannot finish (or complete the
    # campaign) between this read and the job checks below; one busy now is alive.
    for campaign_id, loaded in db.session.execute(
        sa.select(Campaign.id, Campaign.audience_loaded_at.is_not(None))
        .where(Campaign.status == CampaignStatus.SENDING)
        .with_for_update(skip_locked=True, key_share=True)
    ).all():
        if has_job(db.session, FAN_OUT_TASK, campaign_id) or has_job(
            db.session, PUMP_TASK, campaign_id
        ):
            continue
        defer_next_step(db.session, campaign_id, audience_loaded=loaded)
        kicked.append(campaign_id)
        logger.warning(
            "campaign %s: its fan-out or pump job was lost; deferred a new one", campaign_id
        )
    db.session.commit()
    return kicked


# --- fan-out -----------------------------------------------------------------------


@dataclass(frozen=True)
class FanOutPage:
    added: int
    skipped: int
    done: bool


# -- a page of recipients in one statement with one parameter: a multi-row VALUES
# would bind (and SQLAlchemy compile) nine parameters per row, which costs more CPU
# than the insert itself; rows already there (a re-run) are left alone
INSERT_PAGE = sa.text(
    "INSERT INTO messages (campaign_id, phone, customer_ref, customer_data, params, status,"
    " error_code, error_text)"
    " SELECT r.campaign_id, r.phone, r.customer_ref, r.customer_data, r.params,"
    " CAST(r.status AS message_status), r.error_code, r.error_text"
    " FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(campaign_id int, phone text,"
    " customer_ref text, customer_data jsonb, params jsonb, status text, error_code text,"
    " error_text text)"
    " ON CONFLICT (campaign_id, customer_ref) DO NOTHING RETURNING status::text"
)


def load_audience(campaign_id: int, config: Mapping[str, Any]) -> None:
    """The fan-out: every page left, until the audience is loaded or the campaign stops."""
    with erp.PageReader(erp.client_from_config(config), FAN_OUT_PAGE_SIZE) as pages:
        while (page := fan_out_page(campaign_id, pages)) is not None and not page.done:
            pass


# -- which of these phones the campaign already has (not skipped). One index probe per
# phone: as `phone IN (…)`, a campaign newer than the table's statistics was read
# whole on every page, so a fan-out grew quadratic (bench/README.md)
TAKEN_PHONES = sa.text(
    "SELECT p.phone FROM unnest(CAST(:phones AS text[])) AS p(phone) CROSS JOIN LATERAL"
    " (SELECT 1 FROM messages m WHERE m.campaign_id = :campaign_id AND m.phone = p.phone"
    " AND m.status <> 'skipped' LIMIT 1) AS hit"
)


def fan_out_page(campaign_id: int, pages: erp.PageReader) -> FanOutPage | None:
    """Load the next ERP page of the audience into ``messages``; None if not sending.

    Resumable and idempotent: the cursor advances in the same transaction as the
    rows, under the campaign's row lock, and rows are unique per ERP customer.
    """
    campaign = _lock_campaign(db.session, campaign_id)
    if (
        campaign is None
        or campaign.status is not CampaignStatus.SENDING
        or campaign.audience_loaded_at
    ):
        db.session.rollback()
        return None
    page = pages.page(campaign.segment, campaign.erp_cursor)
    rows = _message_rows(campaign, page.customers)
    inserted = (
        [
            MessageStatus(status)
            for status in db.session.execute(
                INSERT_PAGE, {"rows": json.dumps(rows, default=str)}
            ).scalars()
        ]
        if rows
        else []
    )
    # One counter update for the page, not one per row.
    deltas: Counter[str] = Counter()
    for status in inserted:
        deltas.update(counters.transition_deltas(None, status))
    counters.apply(db.session, campaign_id, deltas)
    for status in (MessageStatus.PENDING, MessageStatus.SKIPPED):
        statelog.moved_many(campaign_id, "new", status, inserted.count(status))
    campaign.erp_cursor = page.next_cursor
    done = page.next_cursor is None
    if done:
        campaign.audience_loaded_at = _now(db.session)
        defer_pump(db.session, campaign_id)
    db.session.commit()
    skipped = sum(1 for s in inserted if s is MessageStatus.SKIPPED)
    return FanOutPage(len(inserted) - skipped, skipped, done)


def _message_rows(campaign: Campaign, customers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per customer: pending, or skipped with the reason (invalid, duplicate, opted out)."""
    normalised = [phones.normalise(c.get("phone")) for c in customers]
    wanted = [p for p in normalised if p]
    suppressed = set(
        db.session.scalars(sa.select(Suppression.phone).where(Suppression.phone.in_(wanted)))
    )
    taken = set(db.session.scalars(TAKEN_PHONES, {"phones": wanted, "campaign_id": campaign.id}))
    # The variables' fields, and always the name: the recipients table shows and searches it.
    fields = sorted(
        {m["field"] for m in campaign.variable_mapping.values() if "field" in m} | {"name"}
    )
    rows = []
    for customer, phone in zip(customers, normalised, strict=True):
        params = rendering.params_for(campaign.variable_mapping, customer)
        reason = code = None
        if phone is None:
            code, reason = "invalid_phone", _("The phone number is not valid.")
        elif phone in suppressed:
            code, reason = "suppressed", _("The number opted out (suppression list).")
        elif phone in taken:
            code, reason = "duplicate", _("Another customer of this campaign has this number.")
        elif empty := rendering.missing_params(params):
            code, reason = "missing_value", _("No value for %(v)s.") % {"v": ", ".join(empty)}
        if code is None:
            taken.add(phone)
        rows.append(
            {
                "campaign_id": campaign.id,
                "customer_ref": str(customer.get("id"))[:64],
                "phone": (phone or str(customer.get("phone") or ""))[:32],
                "customer_data": {f: customer.get(f) for f in fields},
                "params": params,
                "status": (MessageStatus.SKIPPED if code else MessageStatus.PENDING).value,
                "error_code": code,
                "error_text": reason,
            }
        )
    return rows


def fail_campaign(campaign_id: int, reason: str) -> None:
    """The campaign cannot be carried out at all: failed, with the reason shown."""
    campaign = _lock_campaign(db.session, campaign_id)
    if campaign is None or campaign.status.is_finished:
        db.session.rollback()
        return
    campaign.status = CampaignStatus.FAILED
    campaign.status_reason = reason
    campaign.completed_at = _now(db.session)
    cancel_pending(db.session, campaign_id)
    db.session.add(_activity(campaign_id, "failed", reason))
    notify(db.session, campaign_id, "failed")
    db.session.commit()
    logger.error("campaign %s failed: %s", campaign_id, reason)


def move_all(
    session: Session, campaign_id: int, sources: Sequence[MessageStatus], to: MessageStatus
) -> int:
    """Move every message of a campaign in ``sources`` to ``to`` at once; counters follow.

    Jobs already scheduled for those messages find them moved and do nothing.
    """
    moved = 0
    for source in sources:
        count = session.execute(
            sa.update(Message)
            .where(Message.campaign_id == campaign_id, Message.status == source)
            .values(status=to)
        ).rowcount
        counters.apply(session, campaign_id, {source.value: -count, to.value: count})
        statelog.moved_many(campaign_id, source, to, count)
        moved += count
    return moved


def cancel_pending(session: Session, campaign_id: int) -> int:
    """Cancel what has not started sending (a message mid-call finishes its call)."""
    return move_all(
        session, campaign_id, [MessageStatus.PENDING, MessageStatus.QUEUED], MessageStatus.CANCELLED
    )


def unqueue(session: Session, campaign_id: int) -> int:
    """Paused: queued messages go back to pending, so nothing is sent until resume."""
    return move_all(session, campaign_id, [MessageStatus.QUEUED], MessageStatus.PENDING)


# --- the pump ----------------------------------------------------------------------


def pace_seconds(sender: Sender, owner_rate_per_minute: int) -> float:
    """Seconds between two messages: the slowest of sender rate, sender gap and owner rate."""
    return max(
        60.0 / sender.rate_limit_per_minute,
        sender.min_interval_ms / 1000.0,
        60.0 / owner_rate_per_minute,
    )


def pump(campaign_id: int) -> float | None:
    """Queue the next pending messages at the pace; seconds until the next pump, or None."""
    campaign = _lock_campaign(db.session, campaign_id)
    if campaign is None or campaign.status is not CampaignStatus.SENDING:
        db.session.rollback()
        return None
    totals = counters.totals(db.session, campaign_id)
    in_flight = totals["queued"] + totals["sending"] + totals["retrying"]
    if totals["pending"] == 0 and in_flight == 0:
        _complete(campaign)
        db.session.commit()
        return None
    interval = pace_seconds(campaign.sender, campaign.owner.campaign_rate_limit_per_minute)
    room = min(WINDOW_MAX, math.ceil(WINDOW_HORIZON_SECONDS / interval)) - in_flight
    if room > 0 and totals["pending"] > 0:
        ids = sorted(
            db.session.scalars(
                sa.update(Message)
                .where(
                    Message.id.in_(
                        sa.select(Message.id)
                        .where(
                            Message.campaign_id == campaign_id,
                            Message.status == MessageStatus.PENDING,
                        )
                        .order_by(Message.id)
                        .limit(room)
                        .with_for_update(skip_locked=True)
                        .scalar_subquery()
                    )
                )
                .values(status=MessageStatus.QUEUED, queued_at=sa.func.now())
                .returning(Message.id)
            )
        )
        now = _now(db.session)
        start_at = max(now, campaign.pace_cursor_at or now)
        slots = [start_at + timedelta(seconds=i * interval) for i in range(len(ids))]
        campaign.pace_cursor_at = start_at + timedelta(seconds=len(ids) * interval)
        defer(db.session, SEND_TASK, SEND_QUEUE, [{"message_id": i} for i in ids], slots)
        counters.apply(db.session, campaign_id, {"pending": -len(ids), "queued": len(ids)})
        statelog.moved_many(campaign_id, MessageStatus.PENDING, MessageStatus.QUEUED, len(ids))
    db.session.commit()
    return PUMP_INTERVAL_SECONDS


def _complete(campaign: Campaign) -> None:
    campaign.status = CampaignStatus.COMPLETED
    campaign.completed_at = _now(db.session)
    db.session.add(_activity(campaign.id, "completed"))
    notify(db.session, campaign.id, "completed")
    logger.info("campaign %s completed", campaign.id)


# --- one message -------------------------------------------------------------------

MOVE = sa.text(
    # -- move one message between states, returning where it was (None: not in `from`)
    "WITH old AS (SELECT id, status FROM messages WHERE id = :id"
    " AND status = ANY(CAST(:from_ AS message_status[])) FOR UPDATE)"
    " UPDATE messages m SET status = :to, updated_at = now() FROM old WHERE m.id = old.id"
    " RETURNING old.status::text AS old_status, m.campaign_id"
)


def move(
    session: Session,
    message_id: int,
    sources: Sequence[MessageStatus],
    to: MessageStatus,
    **detail: object,
) -> MessageStatus | None:
    """Move a message if it is in one of ``sources``; counters follow. Returns the old status.

    ``detail`` goes on the state change's log line (``code=131026``, say).
    """
    row = session.execute(
        MOVE, {"id": message_id, "from_": [s.value for s in sources], "to": to.value}
    ).first()
    if row is None:
        return None
    old = MessageStatus(row.old_status)
    counters.apply(session, row.campaign_id, counters.transition_deltas(old, to))
    statelog.moved(message_id, row.campaign_id, old, to, **detail)
    return old


def _claim_statement(source: MessageStatus) -> sa.TextClause:
    shard = counters.shard_update(
        counters.transition_deltas(source, MessageStatus.SENDING), "(SELECT campaign_id FROM m)"
    )
    return sa.text(
        # -- claim a message for its call: `sending` with the attempt's time; counters follow
        "WITH m AS (UPDATE messages SET status = 'sending', sending_at = now(),"
        " attempts = attempts + 1, updated_at = now()"
        f" WHERE id = :id AND status = '{source.value}' RETURNING campaign_id),"
        f" c AS ({shard})"
        " SELECT campaign_id FROM m"
    )


# One round trip and one new row version each, where moving, stamping and counting
# separately cost four statements and two row versions (bench/README.md).
CLAIM = {
    source: _claim_statement(source) for source in (MessageStatus.QUEUED, MessageStatus.RETRYING)
}
_SENT_COUNTERS = counters.shard_update(
    counters.transition_deltas(MessageStatus.SENDING, MessageStatus.SENT),
    "(SELECT campaign_id FROM m WHERE moved)",
)
RECORD_SENT = sa.text(
    # -- the provider accepted it: `sent` unless a status webhook moved it on already
    # (never backwards); counters and this minute's stats follow only if it moved
    "WITH old AS (SELECT id, status FROM messages WHERE id = :id FOR UPDATE),"
    " m AS (UPDATE messages m SET provider_message_id = :wamid, sent_at = now(),"
    " error_code = NULL, error_text = NULL, updated_at = now(),"
    " status = CASE WHEN old.status = 'sending' THEN 'sent' ELSE m.status END"
    " FROM old WHERE m.id = old.id RETURNING m.campaign_id, old.status = 'sending' AS moved),"
    f" c AS ({_SENT_COUNTERS}),"
    " s AS ("
    + counters.minute_upsert(
        "SELECT campaign_id, date_trunc('minute', now()), :shard, 1, 0 FROM m WHERE moved"
    )
    + ") SELECT moved FROM m"
)


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
        move(db.session, message_id, [expected], MessageStatus.PENDING)
        db.session.commit()
        return SendOutcome("paused")
    if campaign.status is not CampaignStatus.SENDING:
        move(db.session, message_id, [expected], MessageStatus.CANCELLED)
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
    claimed = db.session.execute(
        CLAIM[expected], {"id": message_id, "shard": counters.random_shard()}
    ).first()
    if claimed is None:
        db.session.rollback()
        return SendOutcome("skipped", "claimed by another job")
    statelog.moved(message_id, campaign_id, expected, MessageStatus.SENDING)
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
    moved = db.session.execute(
        RECORD_SENT,
        {"id": message_id, "wamid": result.provider_message_id, "shard": counters.random_shard()},
    ).scalar()
    db.session.commit()
    if moved:  # else a status webhook got there first, and logged its own move
        statelog.moved(message_id, campaign_id, MessageStatus.SENDING, MessageStatus.SENT)
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
    db.session.execute(
        sa.update(Message)
        .where(Message.id == message_id)
        .values(error_code=code, error_text=error.message[:2000])
    )
    kind = error.kind
    if kind is ErrorKind.RETRY and not last_attempt:
        back = MessageStatus.RETRYING if retry_queue else MessageStatus.QUEUED
        move(db.session, message_id, [MessageStatus.SENDING], back, code=code)
        db.session.commit()
        raise Transient(error.message)
    if kind is ErrorKind.SLOW_RETRY and not retry_queue:
        move(db.session, message_id, [MessageStatus.SENDING], MessageStatus.RETRYING, code=code)
        now = _now(db.session)
        defer(
            db.session,
            RETRY_TASK,
            RETRY_QUEUE,
            [{"message_id": message_id}],
            [now + timedelta(seconds=SLOW_RETRY_SECONDS)],
        )
        db.session.commit()
        return SendOutcome("retrying", error.message)
    if kind is ErrorKind.RETRY and not retry_queue:
        # Attempts on campaign-messages exhausted: hand over to message-retry.
        move(db.session, message_id, [MessageStatus.SENDING], MessageStatus.RETRYING, code=code)
        defer(db.session, RETRY_TASK, RETRY_QUEUE, [{"message_id": message_id}])
        db.session.commit()
        return SendOutcome("retrying", error.message)
    if kind in (ErrorKind.PAUSE_CAMPAIGN, ErrorKind.PAUSE_SENDER):
        move(db.session, message_id, [MessageStatus.SENDING], MessageStatus.PENDING, code=code)
        stop_for_code(campaign_id, error.code, error.message, kind)
        return SendOutcome("paused", error.message)
    # Permanent, or retries exhausted.
    move(db.session, message_id, [MessageStatus.SENDING], MessageStatus.FAILED, code=code)
    db.session.execute(
        sa.update(Message).where(Message.id == message_id).values(failed_at=sa.func.now())
    )
    counters.bump_minute(db.session, campaign_id, failed=1)
    if error.code in OPT_OUT_CODES:
        phone = db.session.scalar(sa.select(Message.phone).where(Message.id == message_id))
        db.session.execute(
            pg_insert(Suppression)
            .values(phone=phone, reason=error.message[:200], source="provider")
            .on_conflict_do_nothing(index_elements=["phone"])
        )
    pause_if_failing(campaign_id, config)
    db.session.commit()
    return SendOutcome("failed", error.message)


def stop_for_code(campaign_id: int, code: int | None, text: str, kind: ErrorKind) -> None:
    """WhatsApp said stop (quality, template, account): pause, or fail, and commit.

    132016 (the template disabled) fails the campaign, which cannot go on at all;
    account-wide codes pause every sending campaign of the sender; the rest pause
    this campaign. Resuming is the operator's decision.
    """
    if code == 132016:
        db.session.commit()
        fail_campaign(campaign_id, _("WhatsApp disabled the template (132016)."))
        return
    reason = _("Paused by WhatsApp's answer %(code)s: %(m)s") % {"code": code, "m": text}
    _auto_pause(campaign_id, reason, every_campaign_of_sender=kind is ErrorKind.PAUSE_SENDER)
    db.session.commit()


def pause_if_failing(campaign_id: int, config: Mapping[str, Any]) -> None:
    """Pause a campaign whose recent failure rate is over AUTO_PAUSE_FAILURE_RATE (caller commits).

    Recent: the outcomes of the last few minutes (counters.recent_outcomes), and at
    least AUTO_PAUSE_MIN_OUTCOMES of them, so three early failures pause nothing.
    """
    threshold = float(config["AUTO_PAUSE_FAILURE_RATE"])
    sent, failed = counters.recent_outcomes(db.session, campaign_id)
    outcomes = sent + failed
    if outcomes < int(config["AUTO_PAUSE_MIN_OUTCOMES"]) or failed <= threshold * outcomes:
        return
    reason = _(
        "Paused: %(failed)d of the last %(n)d messages failed, more than %(pct)d %% allowed."
    ) % {"failed": failed, "n": outcomes, "pct": round(threshold * 100)}
    _auto_pause(campaign_id, reason, every_campaign_of_sender=False)


def _auto_pause(campaign_id: int, reason: str, *, every_campaign_of_sender: bool) -> None:
    campaign = _lock_campaign(db.session, campaign_id)
    assert campaign is not None
    targets = [campaign]
    if every_campaign_of_sender:
        targets = list(
            db.session.scalars(
                sa.select(Campaign)
                .where(
                    Campaign.sender_id == campaign.sender_id,
                    Campaign.status == CampaignStatus.SENDING,
                )
                .with_for_update(key_share=True)
            )
        )
    for target in targets:
        if target.status is CampaignStatus.SENDING:
            target.status = CampaignStatus.PAUSED
            target.status_reason = reason
            unqueue(db.session, target.id)
            db.session.add(_activity(target.id, "paused", reason))
            notify(db.session, target.id, "auto_paused")
            logger.warning("campaign %s auto-paused: %s", target.id, reason)


def redefer(message_id: int, seconds: float, *, retry_queue: bool) -> None:
    """Run the message's job again later, without spending an attempt (rate-limited)."""
    task, queue = (RETRY_TASK, RETRY_QUEUE) if retry_queue else (SEND_TASK, SEND_QUEUE)
    # A little jitter, so jobs denied together don't all come back in the same instant.
    delay = seconds + random.uniform(0.05, 0.25)
    defer(
        db.session,
        task,
        queue,
        [{"message_id": message_id}],
        [_now(db.session) + timedelta(seconds=delay)],
    )
    db.session.commit()


# --- maintenance -------------------------------------------------------------------


def reconcile_stuck_sending(lease_seconds: float) -> int:
    """Retry rows left in `sending` past their lease (SENDING_LEASE_SECONDS) by a dead worker.

    A status webhook would already have moved such a row on, so none came: we
    cannot know whether the call went out, and send again (at-least-once).
    """
    stuck = db.session.scalars(
        sa.select(Message.id)
        .where(
            Message.status == MessageStatus.SENDING,
            Message.sending_at < sa.func.now() - timedelta(seconds=lease_seconds),
        )
        .with_for_update(skip_locked=True)
        .limit(1000)
    ).all()
    for message_id in stuck:
        move(db.session, message_id, [MessageStatus.SENDING], MessageStatus.RETRYING)
        defer(db.session, RETRY_TASK, RETRY_QUEUE, [{"message_id": message_id}])
    db.session.commit()
    if stuck:
        logger.warning("reconciled %d messages stuck in sending", len(stuck))
    return len(stuck)


# -- messages waiting (queued, retrying) whose job ended without sending them: the job
# failed on an unexpected error (a bug, the database gone mid-job), so no job is left
# to move them on, and their campaign would wait for them forever. Driven from the
# failed jobs (few), never a scan of every message.
ORPHANED_MESSAGES = sa.text(
    "SELECT DISTINCT m.id, m.status::text AS status, j.id AS job_id, j.status::text AS job_status"
    " FROM procrastinate_jobs AS j"
    " JOIN messages AS m ON m.id = (j.args->>'message_id')::bigint"
    " WHERE j.task_name IN (:send_task, :retry_task) AND j.status IN ('failed', 'aborted')"
    " AND m.status IN ('queued', 'retrying')"
    " AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs AS alive"
    "   WHERE alive.task_name IN (:send_task, :retry_task) AND alive.status IN ('todo', 'doing')"
    "   AND alive.args->>'message_id' = j.args->>'message_id')"
    " LIMIT 1000"
)


def settle_orphaned_messages() -> int:
    """Settle the waiting messages whose job ended without them (see ORPHANED_MESSAGES).

    A job aborted by a worker's shutdown did nothing wrong: its message goes back to
    pending, and the pump queues it again. A job that failed is failed with a reason,
    not sent again: a job that fails on a bug would fail again, forever; "retry
    failed" on the campaign page sends it again (the code is retryable).
    Returns how many messages were failed.
    """
    params = {"send_task": SEND_TASK, "retry_task": RETRY_TASK}
    failed = 0
    for row in db.session.execute(ORPHANED_MESSAGES, params).all():
        waiting = [MessageStatus(row.status)]
        if row.job_status == "aborted":
            move(db.session, row.id, waiting, MessageStatus.PENDING, aborted_job_id=row.job_id)
            continue
        old = move(
            db.session,
            row.id,
            waiting,
            MessageStatus.FAILED,
            code=JOB_FAILED_CODE,
            failed_job_id=row.job_id,
        )
        if old is None:
            continue  # moved on meanwhile
        text = _("Its sending job #%(job)d failed unexpectedly (the worker log says why).") % {
            "job": row.job_id
        }
        campaign_id = db.session.execute(
            sa.update(Message)
            .where(Message.id == row.id)
            .values(error_code=JOB_FAILED_CODE, error_text=text, failed_at=sa.func.now())
            .returning(Message.campaign_id)
        ).scalar_one()
        counters.bump_minute(db.session, campaign_id, failed=1)
        logger.error("message %s failed: its job %s failed", row.id, row.job_id)
        failed += 1
    db.session.commit()
    return failed
