"""Procrastinate: the queue and task names, and every SQL statement against its tables and
functions, in one place.

The queues and their worker concurrency come from the source documents; the
Procfile says which process consumes which queue. Statements go through
Procrastinate's own SQL functions where it has one (defer, retry, cancel), so the
engine can insert jobs in the same transaction as the state change they carry
(``procrastinate_defer_jobs_v1``, frozen in migration 0001): no crash can leave a
message queued without its job, or a job without its message. The rest are reads
(the queue monitor's, the health check's, maintenance's and ``flask queue status``'s)
and the operator's bulk statements behind ``flask queue``: the failed jobs to retry, a
campaign's waiting jobs to cancel, and the finished jobs to purge.

Procrastinate 3.10 keeps no error text for a failed job: ``procrastinate_jobs``
has no such column and ``procrastinate_events`` holds only a type and a time.
The worker logs the traceback to stdout instead (``Job <task>[<id>](…) ended
with status: Error``), so the monitor shows a job's times and attempts from
these tables and points to that log line for the error itself.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.exc import IntegrityError

from app import AnySession, db, rows_changed

logger = logging.getLogger(__name__)

MESSAGES_QUEUE = "campaign-messages"  # concurrency 5, 3 attempts, exponential backoff
NOTIFICATIONS_QUEUE = "campaign-notifications"  # concurrency 3, 2 attempts
RETRY_QUEUE = "message-retry"  # concurrency 3, 5 attempts, exponential
SCHEDULER_QUEUE = "campaign-scheduler"  # concurrency 2, 3 attempts, every minute
SENDER_QUEUE = "campaign-sender"  # fan-out and pump
MAINTENANCE_QUEUE = "maintenance"

FAN_OUT_TASK = "campaigns.fan_out"
PUMP_TASK = "campaigns.pump"
SEND_TASK = "messages.send"
RETRY_TASK = "messages.retry"
NOTIFY_TASK = "campaigns.notify"
TEMPLATE_SYNC_TASK = "templates.sync"
ACCOUNT_READ_TASK = "senders.read_account"

# The most messages one message job carries (about what Meta's default 80 msg/s allows
# a number in a second, with room).
BATCH_MAX = 100

# A worker whose heartbeat is older than this counts as gone (/healthz, the dashboard).
WORKER_HEARTBEAT_SECONDS = 30

DEFER_JOBS = sa.text(
    "-- insert jobs in the caller's transaction (NOTIFY fires at its commit)\n"
    "SELECT procrastinate_defer_jobs_v1(ARRAY("
    " SELECT ROW(:queue, :task, 0, NULL, :queueing_lock, args, at)::procrastinate_job_to_defer_v1"
    " FROM unnest(CAST(:args AS jsonb[]), CAST(:ats AS timestamptz[])) AS t(args, at)))"
)
HAS_JOB = sa.text(
    "-- is a job of this task already waiting or running for this campaign?\n"
    "SELECT EXISTS (SELECT 1 FROM procrastinate_jobs WHERE task_name = :task"
    " AND status IN ('todo', 'doing') AND args->>'campaign_id' = CAST(:campaign_id AS text))"
)


BRING_FORWARD = sa.text(
    "-- the job waiting under a queueing lock, due no later than :at (now if NULL)\n"
    "UPDATE procrastinate_jobs SET scheduled_at = coalesce(CAST(:at AS timestamptz), now())"
    " WHERE queueing_lock = :queueing_lock AND status = 'todo'"
    " AND scheduled_at > coalesce(CAST(:at AS timestamptz), now())"
)


def defer(
    session: AnySession,
    task: str,
    queue: str,
    args_list: Sequence[Mapping[str, Any]],
    at: Sequence[datetime | None] | None = None,
    queueing_lock: str | None = None,
) -> bool:
    """Insert jobs in the session's transaction (all or none); False when a job with the
    same queueing lock is already waiting (nothing inserted)."""
    if not args_list:
        return True
    params = {
        "queue": queue,
        "task": task,
        "queueing_lock": queueing_lock,
        "args": [json.dumps(args) for args in args_list],
        "ats": list(at) if at is not None else [None] * len(args_list),
    }
    if queueing_lock is None:
        session.execute(DEFER_JOBS, params)
        return True
    # One waiting job per queueing lock: a second one is "already enqueued", and
    # the savepoint keeps that refusal from aborting the caller's transaction.
    try:
        with session.begin_nested():
            session.execute(DEFER_JOBS, params)
    except IntegrityError:
        logger.debug("%s: a job with queueing lock %s is already waiting", task, queueing_lock)
        return False
    return True


def defer_fan_out(session: AnySession, campaign_id: int) -> None:
    """Load the campaign's audience from the ERP."""
    defer(session, FAN_OUT_TASK, SENDER_QUEUE, [{"campaign_id": campaign_id}])


def pump_lock(campaign_id: int) -> str:
    return f"pump-{campaign_id}"


def defer_pump(session: AnySession, campaign_id: int, at: datetime | None = None) -> None:
    """Run the campaign's pump at ``at`` (else now): one waiting pump per campaign, so
    if one is already waiting it is brought forward to ``at`` when due later (a pump
    that only held messages sent hours ahead must not keep a resume or a "retry
    failed" waiting as long). Workers poll for it (an update sends no notification)."""
    lock = pump_lock(campaign_id)
    if not defer(session, PUMP_TASK, SENDER_QUEUE, [{"campaign_id": campaign_id}], [at], lock):
        session.execute(BRING_FORWARD, {"at": at, "queueing_lock": lock})


def defer_sends(
    session: AnySession,
    campaign_id: int,
    batches: Sequence[Sequence[int]],
    at: Sequence[datetime | None],
    *,
    retry_queue: bool = False,
) -> None:
    """One message job per batch of a campaign's messages, each due at its time.

    On campaign-messages, or on message-retry (``retry_queue``) for messages whose
    tries there ran out.
    """
    task, queue = (RETRY_TASK, RETRY_QUEUE) if retry_queue else (SEND_TASK, MESSAGES_QUEUE)
    jobs = [(ids, when) for ids, when in zip(batches, at, strict=True) if ids]
    args = [{"campaign_id": campaign_id, "message_ids": list(ids)} for ids, _ in jobs]
    defer(session, task, queue, args, [when for _, when in jobs])


def batches(ids: Sequence[int], size: int = BATCH_MAX) -> list[Sequence[int]]:
    """``ids`` cut into message jobs' batches of ``size`` (the last may be shorter)."""
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def defer_retries(
    session: AnySession, campaign_id: int, message_ids: Sequence[int], at: datetime | None = None
) -> None:
    """Hand messages over to message-retry (at ``at``, else now), in batches."""
    jobs = batches(message_ids)
    defer_sends(session, campaign_id, jobs, [at] * len(jobs), retry_queue=True)


# Messages a webhook holds (131049) arrive one at a time, for hours, and all fall due a
# day later: one job each would drain at message-retry's 3 jobs a provider call, and
# while due they fill the pump's window (campaigns/pump.py counts them in flight). So
# they are grouped as the send groups its holds: one job per campaign and due minute,
# carrying up to BATCH_MAX of them. Grouping the jobs, rather than having the pump put
# due holds back on campaign-messages, keeps every held message in a message job of its
# own ids (maintenance's orphan check and `flask queue cancel-campaign` read them there),
# keeps a held retry's tries and pause handling as they are, and needs no way to tell a
# hold that fell due from a held message already retrying after a transient error (both
# are retrying with held_until set).
HELD_GROUP_SECONDS = 60
# -- a held message joins its campaign's message-retry job for its due minute: the one
# waiting under the minute's queueing lock (found by the lock's unique index)
JOIN_HELD_GROUP = sa.text(
    "UPDATE procrastinate_jobs SET args = jsonb_set(args, '{message_ids}',"
    " (args->'message_ids') || CAST(:ids AS jsonb))"
    " WHERE queueing_lock = :queueing_lock AND status = 'todo'"
    " RETURNING id, jsonb_array_length(args->'message_ids') AS size"
)
# -- a full group lets go of its minute's lock (it stays due as it is): the next hold of
# that minute starts a new group
CLOSE_HELD_GROUP = sa.text("UPDATE procrastinate_jobs SET queueing_lock = NULL WHERE id = :id")


def held_group_due(at: datetime) -> datetime:
    """``at`` rounded up to the group's whole minute: the hold's ``held_until`` and its
    job's time."""
    due = math.ceil(at.timestamp() / HELD_GROUP_SECONDS) * HELD_GROUP_SECONDS
    return datetime.fromtimestamp(due, at.tzinfo or UTC)


def defer_held(session: AnySession, campaign_id: int, message_id: int, due: datetime) -> None:
    """Hand a message a webhook held over to message-retry at ``due`` (a whole minute,
    :func:`held_group_due`), in its campaign's job for that minute.

    The join locks the job's row until the caller commits, so holds of one minute join in
    turn; two that find no job both insert, and the second, refused by the queueing lock
    once the first commits, joins it. A job that is running (a due minute reached) no
    longer takes joiners: the hold starts a new one.
    """
    lock = f"held-{campaign_id}-{int(due.timestamp())}"
    args = {"campaign_id": campaign_id, "message_ids": [message_id]}
    for _ in range(3):
        joined = session.execute(
            JOIN_HELD_GROUP, {"ids": json.dumps([message_id]), "queueing_lock": lock}
        ).first()
        if joined is not None:
            if joined.size >= BATCH_MAX:
                session.execute(CLOSE_HELD_GROUP, {"id": joined.id})
            return
        if defer(session, RETRY_TASK, RETRY_QUEUE, [args], [due], lock):
            return
    # Groups filling as fast as they open: a job of its own is as good, only smaller.
    defer(session, RETRY_TASK, RETRY_QUEUE, [args], [due])


def defer_notification(
    session: AnySession, campaign_id: int, kind: str, params: dict[str, Any] | None = None
) -> None:
    """Tell the campaign's owner (in-app and the outgoing webhook), after this transaction.
    ``params``: what the notice says beyond what the campaign holds at delivery (a skipped
    run's time)."""
    args: dict[str, Any] = {"campaign_id": campaign_id, "kind": kind}
    if params:
        args["params"] = params
    defer(session, NOTIFY_TASK, NOTIFICATIONS_QUEUE, [args])


def defer_template_sync(session: AnySession, template_id: int, at: datetime) -> None:
    """Ask the provider for a submitted template's review outcome at ``at``."""
    defer(session, TEMPLATE_SYNC_TASK, MAINTENANCE_QUEUE, [{"template_id": template_id}], [at])


def defer_account_read(session: AnySession, sender_id: int) -> None:
    """Read what Meta says about a sender's number (quality, limit, throughput) soon,
    unless a read is already waiting."""
    defer(
        session,
        ACCOUNT_READ_TASK,
        MAINTENANCE_QUEUE,
        [{"sender_id": sender_id}],
        queueing_lock=f"account-read-{sender_id}",
    )


def campaign_has_job(session: AnySession, task: str, campaign_id: int) -> bool:
    """Is a job of ``task`` waiting or running for this campaign?"""
    return bool(session.execute(HAS_JOB, {"task": task, "campaign_id": campaign_id}).scalar())


# -- messages waiting (queued, retrying) whose job ended without sending them: the job
# failed on an unexpected error (a bug, the database gone mid-job), or a worker's
# shutdown aborted it, so no job is left to move them on. Driven from the ended jobs
# (few), never a scan of every message. A job carries a batch (``message_ids``); jobs
# deferred before batches carry one ``message_id``.
ORPHANED_MESSAGES = sa.text(
    "SELECT DISTINCT m.id, m.campaign_id, m.status::text AS status, j.id AS job_id,"
    " j.status::text AS job_status"
    " FROM procrastinate_jobs AS j"
    " CROSS JOIN LATERAL jsonb_array_elements_text(coalesce(j.args->'message_ids',"
    "   jsonb_build_array(j.args->'message_id'))) AS x(id)"
    " JOIN messages AS m ON m.id = CAST(x.id AS bigint)"
    " WHERE j.task_name IN (:send_task, :retry_task) AND j.status IN ('failed', 'aborted')"
    " AND m.status IN ('queued', 'retrying')"
    " AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs AS alive"
    "   WHERE alive.task_name IN (:send_task, :retry_task) AND alive.status IN ('todo', 'doing')"
    "   AND (alive.args->'message_ids' @> to_jsonb(m.id)"
    "        OR alive.args->'message_id' = to_jsonb(m.id)))"
    " LIMIT 1000"
)


def job_message_ids(args: Mapping[str, Any]) -> list[int]:
    """The messages a message job carries: its batch, or the one message of an older job."""
    ids = args.get("message_ids")
    if ids is None and isinstance(args.get("message_id"), int):
        ids = [args["message_id"]]
    return [i for i in ids or [] if isinstance(i, int)]


def orphaned_messages(session: AnySession) -> list[sa.Row]:
    """(id, status, job_id, job_status) of waiting messages whose job ended without them."""
    params = {"send_task": SEND_TASK, "retry_task": RETRY_TASK}
    return list(session.execute(ORPHANED_MESSAGES, params).all())


LOCK_JOB = sa.text(
    "-- lock one Procrastinate job, so its status cannot change between check and action\n"
    "SELECT CAST(status AS text) AS status, task_name, args, queueing_lock"
    " FROM procrastinate_jobs WHERE id = :job_id FOR UPDATE"
)
RETRY_JOB = sa.text(
    "-- Procrastinate's own retry (what its shell's `retry` runs): back to todo, due now\n"
    "SELECT procrastinate_retry_job_v2(:job_id, now(), NULL, NULL, NULL)"
)
CANCEL_JOB = sa.text(
    "-- Procrastinate's own cancel: todo -> cancelled, no abort, the row kept\n"
    "SELECT procrastinate_cancel_job_v1(:job_id, false, false)"
)


def lock_job(session: AnySession, job_id: int) -> sa.Row | None:
    """(status, task_name, args, queueing_lock) of a job, locked until the transaction ends."""
    return session.execute(LOCK_JOB, {"job_id": job_id}).first()


def retry_job_now(session: AnySession, job_id: int) -> None:
    """Back to todo, due now (raises IntegrityError if a waiting job holds its queueing lock)."""
    session.execute(RETRY_JOB, {"job_id": job_id})


def cancel_waiting_job(session: AnySession, job_id: int) -> None:
    """A todo job to cancelled."""
    session.execute(CANCEL_JOB, {"job_id": job_id})


# -- the operator's bulk actions (`flask queue …`): the same functions as the monitor's,
# on every job a filter selects, a batch at a time (locked, and skipped while a worker
# holds one: it is being fetched, so it is no longer what the filter asked for)
FAILED_JOB_IDS = sa.text(
    "-- failed jobs of a queue and/or a campaign, in id order from :after_id, locked\n"
    "SELECT id, queueing_lock FROM procrastinate_jobs"
    " WHERE status = 'failed' AND id > :after_id"
    " AND (CAST(:queue AS varchar) IS NULL OR queue_name = :queue)"
    " AND (CAST(:campaign_id AS text) IS NULL"
    "      OR args->>'campaign_id' = CAST(:campaign_id AS text))"
    " ORDER BY id LIMIT :limit FOR UPDATE SKIP LOCKED"
)
CAMPAIGN_WAITING_JOBS = sa.text(
    "-- a campaign's waiting jobs of the given tasks, locked (skipping one being fetched)\n"
    "SELECT id, task_name, args FROM procrastinate_jobs"
    " WHERE status = 'todo' AND task_name = ANY(:tasks)"
    " AND args->>'campaign_id' = CAST(:campaign_id AS text)"
    " ORDER BY id FOR UPDATE SKIP LOCKED"
)
# The tasks that move a campaign's messages on: cancelled with it. Its notifications are
# not among them (the owner is told it was cancelled).
CAMPAIGN_ENGINE_TASKS = (FAN_OUT_TASK, PUMP_TASK, SEND_TASK, RETRY_TASK)
FINISHED_STATUSES = ("succeeded", "failed", "cancelled", "aborted")
# A finished job, in one of :statuses, whose last event (when it ended) is over :days old.
# A failed or aborted message job that still carries a waiting message is kept: it is
# how maintenance finds that message (ORPHANED_MESSAGES), which would otherwise wait
# forever; maintenance settles it within two minutes, and a later purge takes the job.
_FINISHED_JOBS = (
    " FROM procrastinate_jobs AS j"
    " WHERE j.status = ANY(CAST(:statuses AS procrastinate_job_status[]))"
    " AND (SELECT max(e.at) FROM procrastinate_events AS e WHERE e.job_id = j.id)"
    "     < now() - make_interval(days => :days)"
)
_HOLDS_WAITING_MESSAGE = (
    "j.task_name IN (:send_task, :retry_task) AND j.status IN ('failed', 'aborted')"
    " AND EXISTS (SELECT 1 FROM jsonb_array_elements_text(coalesce(j.args->'message_ids',"
    "   jsonb_build_array(j.args->'message_id'))) AS x(id)"
    "   JOIN messages AS m ON m.id = CAST(x.id AS bigint)"
    "   WHERE m.status IN ('queued', 'retrying'))"
)
COUNT_FINISHED_JOBS = sa.text(
    "-- finished jobs a purge would delete, and those it keeps for maintenance\n"
    f"SELECT count(*) FILTER (WHERE NOT ({_HOLDS_WAITING_MESSAGE})) AS deletable,"
    f" count(*) FILTER (WHERE {_HOLDS_WAITING_MESSAGE}) AS kept" + _FINISHED_JOBS
)
DELETE_FINISHED_JOBS = sa.text(
    "-- delete a batch of finished jobs (their events cascade)\n"
    "DELETE FROM procrastinate_jobs WHERE id IN (SELECT j.id"
    + _FINISHED_JOBS
    + f" AND NOT ({_HOLDS_WAITING_MESSAGE}) ORDER BY j.id LIMIT :limit FOR UPDATE SKIP LOCKED)"
)
PURGE_BATCH = 1000


RETRY_JOBS = sa.text(
    "-- Procrastinate's own retry of each job, in one statement (jobs without a queueing lock)\n"
    "SELECT procrastinate_retry_job_v2(id, now(), NULL, NULL, NULL)"
    " FROM unnest(CAST(:job_ids AS bigint[])) AS id"
)


def failed_jobs(
    session: AnySession, queue: str | None, campaign_id: int | None, after_id: int, limit: int
) -> list[sa.Row]:
    """(id, queueing_lock) of the next ``limit`` failed jobs (of ``queue``, of
    ``campaign_id``) after ``after_id``, locked until the caller's transaction ends."""
    params = {"queue": queue, "campaign_id": campaign_id, "after_id": after_id, "limit": limit}
    return list(session.execute(FAILED_JOB_IDS, params).all())


def retry_jobs_now(session: AnySession, job_ids: Sequence[int]) -> None:
    """Several failed jobs back to todo, due now: jobs without a queueing lock only (one
    with a lock may meet a waiting twin: :func:`retry_job_now`, in a savepoint)."""
    if job_ids:
        session.execute(RETRY_JOBS, {"job_ids": list(job_ids)})


def campaign_waiting_jobs(session: AnySession, campaign_id: int) -> list[sa.Row]:
    """(id, task_name, args) of the campaign's waiting fan-out, pump and message jobs,
    locked until the caller's transaction ends."""
    params = {"tasks": list(CAMPAIGN_ENGINE_TASKS), "campaign_id": campaign_id}
    return list(session.execute(CAMPAIGN_WAITING_JOBS, params).all())


def _finished_params(days: int, statuses: Sequence[str]) -> dict[str, Any]:
    unknown = set(statuses) - set(FINISHED_STATUSES)
    if unknown or not statuses:
        # Never a waiting or running job, whatever the caller passes.
        raise ValueError(f"not finished job statuses: {sorted(unknown) or 'none given'}")
    if days < 0:
        raise ValueError("days must not be negative")
    return {
        "statuses": list(statuses),
        "days": days,
        "send_task": SEND_TASK,
        "retry_task": RETRY_TASK,
    }


def count_finished_jobs(session: AnySession, days: int, statuses: Sequence[str]) -> tuple[int, int]:
    """(how many finished jobs a purge would delete, how many it keeps for maintenance)."""
    row = session.execute(COUNT_FINISHED_JOBS, _finished_params(days, statuses)).one()
    return int(row.deletable), int(row.kept)


def delete_finished_jobs(
    session: AnySession, days: int, statuses: Sequence[str], batch: int = PURGE_BATCH
) -> int:
    """Delete up to ``batch`` finished jobs ended over ``days`` days ago; how many. The
    caller commits."""
    params = _finished_params(days, statuses) | {"limit": batch}
    return rows_changed(session, DELETE_FINISHED_JOBS.bindparams(**params))


QUEUE_SCHEMA = sa.text(
    "-- has the database Procrastinate's schema?\n"
    "SELECT to_regclass('procrastinate_jobs') IS NOT NULL"
)
LIVE_WORKERS = sa.text(
    "-- workers with a heartbeat in the last :seconds seconds\n"
    "SELECT count(*) FROM procrastinate_workers"
    " WHERE last_heartbeat > now() - make_interval(secs => :seconds)"
)


def has_queue_schema(session: AnySession) -> bool:
    return bool(session.execute(QUEUE_SCHEMA).scalar_one())


def live_workers(session: AnySession) -> int:
    """Workers whose heartbeat is younger than WORKER_HEARTBEAT_SECONDS."""
    return int(session.execute(LIVE_WORKERS, {"seconds": WORKER_HEARTBEAT_SECONDS}).scalar_one())


# The monitor shows these even while empty, in the pipeline's order; others follow by name.
KNOWN_QUEUES = (
    SCHEDULER_QUEUE,
    SENDER_QUEUE,
    MESSAGES_QUEUE,
    RETRY_QUEUE,
    NOTIFICATIONS_QUEUE,
    MAINTENANCE_QUEUE,
)
# 'aborting' is left out: Procrastinate has not used it since 3.0.
JOB_STATUSES = ("todo", "doing", "succeeded", "failed", "cancelled", "aborted")
JOBS_PER_PAGE = 50

QUEUE_COUNTS = sa.text(
    "-- jobs per queue and status, and how many of the waiting ones are due now\n"
    "SELECT queue_name,"
    + ",".join(f" count(*) FILTER (WHERE status = '{s}') AS {s}" for s in JOB_STATUSES)
    + ", count(*) FILTER (WHERE status = 'todo'"
    " AND (scheduled_at IS NULL OR scheduled_at <= now())) AS due"
    " FROM procrastinate_jobs GROUP BY queue_name"
)

WORKERS = sa.text(
    "-- every registered worker, the age of its heartbeat, and the jobs it is running\n"
    "SELECT w.id, w.last_heartbeat,"
    " extract(epoch FROM now() - w.last_heartbeat) AS seconds_since_heartbeat,"
    " count(j.id) AS running"
    " FROM procrastinate_workers AS w"
    " LEFT JOIN procrastinate_jobs AS j ON j.worker_id = w.id AND j.status = 'doing'"
    " GROUP BY w.id ORDER BY w.id"
)

# A job's times live in its events: when it was deferred, last started, and ended
# (a retried job's earlier end is not its end).
_JOB_COLUMNS = (
    "SELECT j.id, j.queue_name, j.task_name, CAST(j.status AS text) AS status, j.attempts,"
    " j.args, j.lock, j.queueing_lock, j.scheduled_at, j.worker_id,"
    " e.deferred_at, e.started_at,"
    " CASE WHEN j.status NOT IN ('todo', 'doing') THEN e.finished_at END AS finished_at"
    " FROM procrastinate_jobs AS j"
    " LEFT JOIN LATERAL (SELECT"
    "   min(at) FILTER (WHERE type = 'deferred') AS deferred_at,"
    "   max(at) FILTER (WHERE type = 'started') AS started_at,"
    "   max(at) FILTER (WHERE type IN ('succeeded', 'failed', 'cancelled', 'aborted'))"
    "     AS finished_at"
    "   FROM procrastinate_events WHERE job_id = j.id) AS e ON true"
)

STALLED_JOBS = sa.text(
    "-- running jobs whose worker is gone or silent: Procrastinate's own stalled-job rule\n"
    + _JOB_COLUMNS
    + " LEFT JOIN procrastinate_workers AS w ON w.id = j.worker_id"
    " WHERE j.status = 'doing'"
    " AND (j.worker_id IS NULL"
    "      OR w.last_heartbeat < now() - make_interval(secs => :seconds_since_heartbeat))"
    " ORDER BY j.id"
)

LIST_JOBS = sa.text(
    "-- one page of jobs, newest first, by queue and status; ids below :before_id\n"
    + _JOB_COLUMNS
    + " WHERE (CAST(:queue AS varchar) IS NULL OR j.queue_name = :queue)"
    " AND (CAST(:status AS procrastinate_job_status) IS NULL"
    "      OR j.status = CAST(:status AS procrastinate_job_status))"
    " AND (CAST(:before_id AS bigint) IS NULL OR j.id < :before_id)"
    " ORDER BY j.id DESC LIMIT :limit"
)


# Not in QUEUE_COUNTS: that one is a scan of every job; this reads only waiting ones.
OLDEST_DUE = sa.text(
    "-- per queue, how long its oldest due waiting job has waited since it fell due: its"
    " scheduled_at, or (none) when it was deferred, the 'deferred' event of the lowest id\n"
    "SELECT o.queue_name, o.due,"
    " coalesce(extract(epoch FROM now() - least(o.oldest_scheduled, e.at)), 0) AS seconds"
    " FROM (SELECT queue_name, count(*) AS due, min(scheduled_at) AS oldest_scheduled,"
    "   min(id) FILTER (WHERE scheduled_at IS NULL) AS oldest_unscheduled"
    "   FROM procrastinate_jobs"
    "   WHERE status = 'todo' AND (scheduled_at IS NULL OR scheduled_at <= now())"
    "   GROUP BY queue_name) AS o"
    " LEFT JOIN LATERAL (SELECT min(at) AS at FROM procrastinate_events"
    "   WHERE job_id = o.oldest_unscheduled AND type = 'deferred') AS e ON true"
)


@dataclass(frozen=True)
class Backlog:
    queue: str
    due: int  # waiting jobs a worker could take now
    oldest_due_seconds: float  # how long the oldest of them has waited since it fell due


def backlogs() -> list[Backlog]:
    """Every known queue (0 when nothing is due) and any other with due jobs."""
    found = {
        row.queue_name: Backlog(row.queue_name, int(row.due), max(float(row.seconds), 0.0))
        for row in db.session.execute(OLDEST_DUE)
    }
    names = [*KNOWN_QUEUES, *sorted(set(found) - set(KNOWN_QUEUES))]
    return [found.get(name, Backlog(name, 0, 0.0)) for name in names]


def stalled_after_seconds() -> int:
    """The maintenance task's threshold, so the monitor calls stalled what it will retry."""
    return int(current_app.config["STALLED_WORKER_SECONDS"])


@dataclass(frozen=True)
class QueueCounts:
    queue: str
    todo: int = 0
    due: int = 0  # of todo: scheduled_at passed (or none), so a worker could take it now
    doing: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    aborted: int = 0

    def count(self, status: str) -> int:
        return getattr(self, status)


@dataclass(frozen=True)
class Worker:
    id: int
    last_heartbeat: datetime
    seconds_since_heartbeat: float
    running: int

    @property
    def is_live(self) -> bool:
        """The same rule as /healthz's live worker count."""
        return self.seconds_since_heartbeat < WORKER_HEARTBEAT_SECONDS


@dataclass(frozen=True)
class JobRow:
    id: int
    queue: str
    task: str
    status: str
    attempts: int
    args: dict[str, Any]
    lock: str | None
    queueing_lock: str | None
    scheduled_at: datetime | None
    worker_id: int | None
    deferred_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def can_retry(self) -> bool:
        return self.status == "failed"

    @property
    def can_cancel(self) -> bool:
        return self.status == "todo"

    @property
    def campaign_id(self) -> int | None:
        value = self.args.get("campaign_id")
        return value if isinstance(value, int) else None


def _job(row: sa.Row) -> JobRow:
    return JobRow(
        id=row.id,
        queue=row.queue_name,
        task=row.task_name,
        status=row.status,
        attempts=row.attempts,
        args=row.args or {},
        lock=row.lock,
        queueing_lock=row.queueing_lock,
        scheduled_at=row.scheduled_at,
        worker_id=row.worker_id,
        deferred_at=row.deferred_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )


@dataclass(frozen=True)
class QueueHealth:
    queues: list[QueueCounts]
    workers: list[Worker]
    stalled: list[JobRow]
    stalled_after_seconds: int
    heartbeat_seconds: int = WORKER_HEARTBEAT_SECONDS

    @property
    def live_workers(self) -> int:
        return sum(1 for worker in self.workers if worker.is_live)

    @property
    def failed(self) -> int:
        return sum(queue.failed for queue in self.queues)


def queue_counts() -> list[QueueCounts]:
    """Every known queue (empty ones too) and any other queue that has jobs."""
    found = {
        row.queue_name: QueueCounts(
            queue=row.queue_name, due=row.due, **{s: getattr(row, s) for s in JOB_STATUSES}
        )
        for row in db.session.execute(QUEUE_COUNTS)
    }
    names = [*KNOWN_QUEUES, *sorted(set(found) - set(KNOWN_QUEUES))]
    return [found.get(name, QueueCounts(queue=name)) for name in names]


def workers() -> list[Worker]:
    return [
        Worker(row.id, row.last_heartbeat, float(row.seconds_since_heartbeat), row.running)
        for row in db.session.execute(WORKERS)
    ]


def oldest_due_seconds() -> dict[str, float]:
    """Per queue with due jobs, how many seconds its oldest due job has waited."""
    return {backlog.queue: backlog.oldest_due_seconds for backlog in backlogs() if backlog.due}


def stalled_jobs(seconds_since_heartbeat: int | None = None) -> list[JobRow]:
    """Running jobs of dead workers: the ones the maintenance task will put back in the queue."""
    seconds = seconds_since_heartbeat or stalled_after_seconds()
    rows = db.session.execute(STALLED_JOBS, {"seconds_since_heartbeat": seconds})
    return [_job(row) for row in rows]


def queue_health() -> QueueHealth:
    """Counts per queue, workers with their heartbeats, and stalled jobs (three statements)."""
    seconds = stalled_after_seconds()
    return QueueHealth(queue_counts(), workers(), stalled_jobs(seconds), seconds)


@dataclass(frozen=True)
class JobFilters:
    queue: str | None = None
    status: str | None = None
    before_id: int | None = None

    @classmethod
    def from_args(cls, args: Mapping[str, str], default_status: str | None = None) -> JobFilters:
        """Filters from a query string; ``default_status`` applies when none is given."""
        status = args.get("status", default_status) or None
        try:
            before_id = int(args["before_id"]) if args.get("before_id") else None
        except ValueError:
            before_id = None
        return cls(
            queue=(args.get("queue") or "").strip()[:128] or None,
            # An unknown status filters nothing, as on the other list pages.
            status=status if status in JOB_STATUSES else None,
            before_id=before_id,
        )

    def as_args(self) -> dict[str, str]:
        """The filters as query-string arguments (the status always, even when blank)."""
        args = {"status": self.status or ""}
        if self.queue:
            args["queue"] = self.queue
        return args


@dataclass(frozen=True)
class JobPage:
    jobs: list[JobRow]
    filters: JobFilters
    next_before_id: int | None = None  # set when older jobs match too


def list_jobs(filters: JobFilters, per_page: int = JOBS_PER_PAGE) -> JobPage:
    """Jobs matching the filters, newest first; keyset pages (ids below ``before_id``)."""
    rows = db.session.execute(
        LIST_JOBS,
        {
            "queue": filters.queue,
            "status": filters.status,
            "before_id": filters.before_id,
            "limit": per_page + 1,
        },
    ).all()
    jobs = [_job(row) for row in rows[:per_page]]
    more = len(rows) > per_page
    return JobPage(jobs, filters, jobs[-1].id if more and jobs else None)
