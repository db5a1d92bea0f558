"""What /metrics tells Prometheus: read from PostgreSQL at scrape time.

Every web process answers with the same figures, because none is kept in a process:
a custom collector on a registry of its own (not prometheus_client's global one,
which would add this process's Python internals) reads the database when scraped.
A scrape costs the same on a campaign of a million messages as on an empty database:

- jobs: Procrastinate's table, which holds the pump's window and 72 h of finished
  jobs (workers delete succeeded ones), never a campaign's messages;
- messages: the campaigns' sharded counters (8 rows each), for sending campaigns only;
- per-minute figures: the last complete minute's rows (an index on the minute), by
  the database's clock, so every process and every scrape in a minute agree.

Per-minute figures are gauges of the last complete minute, not counters: a total
summed from the database would be a scan growing with history, and would drop
whenever old rows are pruned; a minute's count needs no ``rate()`` and survives
restarts. ``avg_over_time(x[1h]) * 60`` is an hour's count (docs/metrics.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import sqlalchemy as sa
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from app import db
from campaigns import counters, queues, ratelimit
from campaigns.models import Campaign, CampaignStatus, MessageStatus

# A scrape that reads longer than this is cut short (503), not left to pile up.
STATEMENT_TIMEOUT_MS = 5000
# A campaign without a status reason (running, or paused by an operator).
NO_REASON = "none"
# A failure WhatsApp (or Disparo) gave no code for.
NO_CODE = "none"

# -- the minute before the current one, by the database's clock
LAST_COMPLETE_MINUTE = sa.text("SELECT date_trunc('minute', now()) - interval '1 minute'")


def _gauge(name: str, documentation: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=labels)


def _jobs() -> Iterator[Metric]:
    jobs = _gauge(
        "disparo_jobs",
        "Procrastinate jobs by queue and status (workers delete succeeded jobs; other"
        " finished ones are kept 72 h).",
        ["queue", "status"],
    )
    for counts in queues.queue_counts():
        for status in queues.JOB_STATUSES:
            jobs.add_metric([counts.queue, status], counts.count(status))
    yield jobs
    due = _gauge(
        "disparo_jobs_due",
        "Waiting (todo) jobs whose time has come, that a worker could take now, by queue.",
        ["queue"],
    )
    oldest = _gauge(
        "disparo_queue_oldest_due_job_age_seconds",
        "Seconds the oldest due waiting job of a queue has waited since it fell due"
        " (0 when none is due): the queue's lag.",
        ["queue"],
    )
    for backlog in queues.backlogs():
        due.add_metric([backlog.queue], backlog.due)
        oldest.add_metric([backlog.queue], backlog.oldest_due_seconds)
    yield due
    yield oldest


def _workers() -> Iterator[Metric]:
    workers = queues.workers()
    alive = _gauge(
        "disparo_workers_alive",
        f"Procrastinate workers with a heartbeat in the last {queues.WORKER_HEARTBEAT_SECONDS} s"
        " (a worker beats every 10 s).",
    )
    alive.add_metric([], sum(1 for worker in workers if worker.is_live))
    yield alive
    age = _gauge(
        "disparo_worker_heartbeat_age_seconds",
        "Seconds since each registered worker's last heartbeat (a stopped worker's row"
        " stays until Procrastinate prunes it).",
        ["worker_id"],
    )
    running = _gauge(
        "disparo_worker_running_jobs", "Jobs each registered worker is running.", ["worker_id"]
    )
    for worker in workers:
        age.add_metric([str(worker.id)], max(worker.seconds_since_heartbeat, 0.0))
        running.add_metric([str(worker.id)], worker.running)
    yield age
    yield running


# -- open connections to this database by the process that holds them (config's
# application_name: disparo-web, disparo-worker, disparo-ops, ...). A process that
# is up holds at least one (a worker its LISTEN connection), whatever its heartbeats.
CONNECTIONS = sa.text(
    "SELECT application_name, count(*) AS n FROM pg_stat_activity"
    " WHERE datname = current_database() GROUP BY application_name"
)
SERVED_PROCESSES = ("disparo-web", "disparo-worker", "disparo-ops")


def _connections() -> Iterator[Metric]:
    found: dict[str, int] = dict.fromkeys(SERVED_PROCESSES, 0)
    for name, n in db.session.execute(CONNECTIONS):
        key = name if name and name.startswith("disparo-") else "other"
        found[key] = found.get(key, 0) + int(n)
    connections = _gauge(
        "disparo_database_connections",
        "Connections open to this database by process (application_name; other: anything"
        " not named disparo-*): a process kind at 0 is down; the sum is what counts"
        " against the plan's connection limit.",
        ["process"],
    )
    for name, n in sorted(found.items()):
        connections.add_metric([name], n)
    yield connections


# -- campaigns by status and the code of their status reason (few rows: one a campaign)
CAMPAIGNS_BY_STATUS = sa.select(
    Campaign.status, Campaign.status_reason_code, sa.func.count()
).group_by(Campaign.status, Campaign.status_reason_code)
SENDING_CAMPAIGNS = sa.select(Campaign.id).where(Campaign.status == CampaignStatus.SENDING)


def _campaigns() -> Iterator[Metric]:
    found = {
        (status.value, code or NO_REASON): count
        for status, code, count in db.session.execute(CAMPAIGNS_BY_STATUS)
    }
    for status in CampaignStatus:  # every status shows, 0 when none is in it
        found.setdefault((status.value, NO_REASON), 0)
    campaigns = _gauge(
        "disparo_campaigns",
        "Campaigns by status and status reason code (none: no reason recorded, e.g."
        " paused by an operator; any other reason on a paused campaign: Disparo paused it).",
        ["status", "reason"],
    )
    for (status_name, reason), count in sorted(found.items()):
        campaigns.add_metric([status_name, reason], count)
    yield campaigns

    ids = list(db.session.scalars(SENDING_CAMPAIGNS))
    messages = _gauge(
        "disparo_campaign_messages",
        "Messages of each sending campaign by status, from its counters (each message in"
        " exactly one status; they sum to the campaign's audience).",
        ["campaign_id", "status"],
    )
    for campaign_id, totals in sorted(counters.totals_of(db.session, ids).items()):
        for message_status, count in by_status(totals).items():
            messages.add_metric([str(campaign_id), message_status], count)
    yield messages


def by_status(totals: dict[str, int]) -> dict[str, int]:
    """A campaign's counters as messages per status: the counters' sent, delivered and
    read count every message that reached at least that stage; a status counts those in it."""
    return {
        MessageStatus.PENDING.value: totals["pending"],
        MessageStatus.QUEUED.value: totals["queued"],
        MessageStatus.SENDING.value: totals["sending"],
        MessageStatus.RETRYING.value: totals["retrying"],
        MessageStatus.SENT.value: totals["sent"] - totals["delivered"],
        MessageStatus.DELIVERED.value: totals["delivered"] - totals["read"],
        MessageStatus.READ.value: totals["read"],
        MessageStatus.FAILED.value: totals["failed"],
        MessageStatus.SKIPPED.value: totals["skipped"],
        MessageStatus.CANCELLED.value: totals["cancelled"],
    }


def _last_minute(minute: datetime) -> Iterator[Metric]:
    outcomes = _gauge(
        "disparo_messages_last_minute",
        "Messages WhatsApp accepted (sent) and messages failed in the last complete minute,"
        " every campaign.",
        ["outcome"],
    )
    sent, failed = counters.outcomes_in_minute(db.session, minute)
    outcomes.add_metric(["sent"], sent)
    outcomes.add_metric(["failed"], failed)
    yield outcomes
    by_code = _gauge(
        "disparo_message_failures_by_code_last_minute",
        "Messages failed in the last complete minute by error code (WhatsApp's, or"
        " Disparo's own such as job_failed; none: no code given). Only codes seen show.",
        ["error_code"],
    )
    for code, count in sorted(counters.failed_in_minute(db.session, minute).items()):
        by_code.add_metric([code or NO_CODE], count)
    yield by_code
    denied = _gauge(
        "disparo_rate_limit_denied_last_minute",
        "Units the rate limiter held back in the last complete minute, by the kind of key"
        " that held them (whatsapp: a sender's limit, campaign: an owner's, api: API"
        " requests refused with 429, retry: a message's retries).",
        ["kind"],
    )
    found = ratelimit.denials_in_minute(db.session, minute)
    for kind in sorted(ratelimit.KEY_KINDS | set(found)):
        denied.add_metric([kind], found.get(kind, 0))
    yield denied

    webhooks = counters.webhooks_in_minute(db.session, minute)
    statuses = _gauge(
        "disparo_webhook_statuses_last_minute",
        "WhatsApp message statuses (sent, delivered, read, failed) applied in the last"
        " complete minute.",
    )
    statuses.add_metric([], webhooks.statuses)
    yield statuses
    lag_mean = _gauge(
        "disparo_webhook_status_lag_mean_seconds",
        "Mean seconds between WhatsApp's timestamp of a status and Disparo applying it,"
        " over the last complete minute (0 when none was applied).",
    )
    lag_max = _gauge(
        "disparo_webhook_status_lag_max_seconds",
        "Largest seconds between WhatsApp's timestamp of a status and Disparo applying it,"
        " in the last complete minute (0 when none was applied).",
    )
    mean = webhooks.lag_seconds_sum / webhooks.statuses if webhooks.statuses else 0.0
    lag_mean.add_metric([], mean)
    lag_max.add_metric([], webhooks.lag_seconds_max)
    yield lag_mean
    yield lag_max
    age = counters.last_webhook_status_age(db.session)
    if age is not None:  # no status applied in the last day: no sample, not a made-up age
        last = _gauge(
            "disparo_webhook_last_status_age_seconds",
            "Seconds since Disparo last applied a WhatsApp status (absent when none in a day).",
        )
        last.add_metric([], age)
        yield last


class DatabaseCollector(Collector):
    """Reads every figure from PostgreSQL when Prometheus scrapes, in one read-only
    transaction with a statement timeout, rolled back at the end."""

    def collect(self) -> Iterator[Metric]:
        try:
            db.session.execute(sa.text("SET TRANSACTION READ ONLY"))
            db.session.execute(sa.text(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"))
            minute = db.session.execute(LAST_COMPLETE_MINUTE).scalar_one()
            # Listed first: a generator would leave its transaction open if the caller
            # stopped reading halfway.
            metrics = [
                *_jobs(),
                *_workers(),
                *_connections(),
                *_campaigns(),
                *_last_minute(minute),
            ]
        finally:
            db.session.rollback()
        yield from metrics


REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(DatabaseCollector())
