"""Read models over Procrastinate's own tables: queue health, workers, stalled and listed jobs.

Procrastinate 3.10 keeps no error text for a failed job: ``procrastinate_jobs``
has no such column and ``procrastinate_events`` holds only a type and a time.
The worker logs the traceback to stdout instead (``Job <task>[<id>](…) ended
with status: Error``), so the monitor shows a job's times and attempts from
these tables and points to that log line for the error itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from flask import current_app

from app import db
from campaigns.queries import WORKER_HEARTBEAT_SECONDS
from campaigns.queues import (
    MAINTENANCE_QUEUE,
    MESSAGES_QUEUE,
    NOTIFICATIONS_QUEUE,
    RETRY_QUEUE,
    SCHEDULER_QUEUE,
    SENDER_QUEUE,
)

# Shown even while empty, in the pipeline's order; other queues follow by name.
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
