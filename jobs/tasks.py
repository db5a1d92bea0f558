"""Procrastinate tasks: ids in, one domain call, nothing else.

"N attempts" in the source documents are N runs; Procrastinate's ``max_attempts``
counts retries, so 3 attempts is ``max_attempts=2``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import psycopg
from flask import current_app
from procrastinate import JobContext, RetryStrategy, builtin_tasks
from sqlalchemy import exc as sa_exc

from app import DELETE_BATCH, db
from campaigns import (
    audiences,
    audit,
    campaign_states,
    clock,
    contact_history,
    counters,
    erp,
    fanout,
    idempotency,
    login_throttle,
    maintenance,
    media,
    notifications,
    pump,
    ratelimit,
    reasons,
    sending,
)
from campaigns.providers import ProviderError
from campaigns.queues import (
    ACCOUNT_READ_TASK,
    FAN_OUT_TASK,
    MAINTENANCE_QUEUE,
    MESSAGES_QUEUE,
    NOTIFICATIONS_QUEUE,
    NOTIFY_TASK,
    PUMP_TASK,
    RETRY_QUEUE,
    RETRY_TASK,
    SCHEDULER_QUEUE,
    SEND_TASK,
    SENDER_QUEUE,
    TEMPLATE_SYNC_TASK,
    job_message_ids,
)
from campaigns.services import ServiceError, personal_data, template_import, undeliverable
from campaigns.services.senders import readable_sender_ids, refresh_account
from campaigns.services.templates import pending_template_ids, sync_template_status
from jobs import app
from jobs.context import flask_app

logger = logging.getLogger(__name__)

FAN_OUT_ATTEMPTS = 2  # the ERP may be down for a while: 3 runs, waits 10 s then 100 s


@app.task(name="maintenance.ping", queue=MAINTENANCE_QUEUE)
def ping(token: str) -> str:
    """Prove the round trip web → Postgres → worker → Flask app context → database."""
    clock.database_now(db.session)
    logger.info("ping %s", token)
    return token


@app.periodic(cron="* * * * *", periodic_id="scheduler")
@app.task(
    name="campaigns.scheduler_tick",
    queue=SCHEDULER_QUEUE,
    retry=RetryStrategy(max_attempts=2, exponential_wait=2),
)
def scheduler_tick(timestamp: int) -> None:
    """Every minute: start due campaigns (at the tick's time), re-kick stranded ones."""
    started = campaign_states.start_due(datetime.fromtimestamp(timestamp, UTC))
    if started:
        logger.info("started campaigns %s", started)
    maintenance.redefer_lost_campaign_jobs()


@app.task(
    name=FAN_OUT_TASK,
    queue=SENDER_QUEUE,
    pass_context=True,
    retry=RetryStrategy(
        max_attempts=FAN_OUT_ATTEMPTS, exponential_wait=10, retry_exceptions={erp.ErpError}
    ),
)
def fan_out(context: JobContext, campaign_id: int) -> None:
    """Load the campaign's audience from the ERP, page by page, resumably."""
    try:
        fanout.load_audience(campaign_id, current_app.config)
    except erp.ErpError as error:
        last = context.job.attempts >= FAN_OUT_ATTEMPTS or error.is_caller_error
        logger.warning("campaign %s: ERP error (job %s): %s", campaign_id, context.job.id, error)
        if not last:
            raise
        campaign_states.fail(
            campaign_id,
            reasons.Reason(reasons.ERP_AUDIENCE_FAILED, {"message": error.reason.as_json()}),
        )


@app.task(name=PUMP_TASK, queue=SENDER_QUEUE)
def pump_campaign(campaign_id: int) -> None:
    """Keep a bounded window of paced message jobs; the pump defers its own next run.

    No retries of its own (a queueing lock plus a retry trips Procrastinate #1446):
    the scheduler's re-kick replaces a pump that failed.
    """
    pump.pump(campaign_id)


def _send(
    context: JobContext,
    campaign_id: int | None,
    message_ids: list[int] | None,
    message_id: int | None,
    *,
    retry_queue: bool,
) -> None:
    ids = job_message_ids({"message_ids": message_ids, "message_id": message_id})
    if campaign_id is None:  # a job deferred before batches: one message_id
        campaign_id = sending.campaign_of(ids)
        if campaign_id is None:
            return
    report = sending.send_batch(campaign_id, ids, current_app.config, retry_queue=retry_queue)
    logger.info(
        "campaign %s batch (job %s): %d sent, %d to try again, %d throttled, %d failed,"
        " %d held by a limit, %d stopped, %d no longer waiting",
        campaign_id,
        context.job.id,
        len(report.sent),
        len(report.retrying),
        len(report.throttled),
        len(report.failed),
        len(report.held),
        len(report.stopped),
        report.skipped,
    )


# Message jobs retry as jobs only when their database connection was lost (a restart, a
# failover): nothing is wrong with their messages, and a second run claims only those
# still waiting (the claimed ones are the sending lease's). Otherwise each message keeps
# its own tries (campaigns/sending.py) and comes back in a new job; a job that fails on
# an unexpected error leaves its waiting messages to maintenance (failed, retryable).
DATABASE_LOST = RetryStrategy(
    max_attempts=2,  # retries: 3 runs in all
    wait=5,
    retry_exceptions={
        sa_exc.OperationalError,
        sa_exc.InterfaceError,
        psycopg.OperationalError,
    },
)


@app.task(name=SEND_TASK, queue=MESSAGES_QUEUE, pass_context=True, retry=DATABASE_LOST)
def send_messages(
    context: JobContext,
    campaign_id: int | None = None,
    message_ids: list[int] | None = None,
    message_id: int | None = None,
) -> None:
    """Send a batch of one campaign's messages (held by a limit → a later job, no try spent)."""
    _send(context, campaign_id, message_ids, message_id, retry_queue=False)


@app.task(name=RETRY_TASK, queue=RETRY_QUEUE, pass_context=True, retry=DATABASE_LOST)
def retry_messages(
    context: JobContext,
    campaign_id: int | None = None,
    message_ids: list[int] | None = None,
    message_id: int | None = None,
) -> None:
    """Messages whose 3 tries on campaign-messages ran out: five more, slower."""
    _send(context, campaign_id, message_ids, message_id, retry_queue=True)


@app.task(
    name=NOTIFY_TASK,
    queue=NOTIFICATIONS_QUEUE,
    pass_context=True,
    retry=RetryStrategy(max_attempts=1, wait=30),
)
def notify(
    context: JobContext, campaign_id: int, kind: str, params: dict[str, Any] | None = None
) -> None:
    """Tell the owner: an in-app notification (once) and the outgoing webhook, if set."""
    notifications.deliver(
        campaign_id,
        kind,
        first_attempt=context.job.attempts == 0,
        event_id=f"msg_notify_{context.job.id}",  # one id for all its attempts
        params=params,
    )


@app.task(
    name=TEMPLATE_SYNC_TASK,
    queue=MAINTENANCE_QUEUE,
    retry=RetryStrategy(max_attempts=2, exponential_wait=5),
)
def sync_template(template_id: int) -> None:
    """Record a submitted template's review outcome (later ones: the periodic sync)."""
    sync_template_status(template_id)


@app.periodic(cron="*/5 * * * *", periodic_id="sync-pending-templates")
@app.task(
    name="templates.sync_pending", queue=MAINTENANCE_QUEUE, queueing_lock="templates.sync_pending"
)
def sync_pending_templates(timestamp: int) -> None:
    """Every five minutes, refresh every template still under review."""
    for template_id in pending_template_ids():
        try:
            sync_template_status(template_id)
        except ServiceError as error:
            logger.warning("template %s: status sync failed: %s", template_id, error.message)


@app.periodic(cron="29 * * * *", periodic_id="sync-waba-templates")
@app.task(
    name="templates.sync_wabas",
    queue=MAINTENANCE_QUEUE,
    queueing_lock="templates.sync_wabas",
    pass_context=True,
)
def sync_waba_templates(context: JobContext, timestamp: int) -> None:
    """Every hour, read each connected sender's WABA templates: new ones imported, status,
    quality and category brought in step, deleted ones disabled (the webhooks bring
    changes at once; this catches what they missed, at about 60 Graph calls an hour for
    the largest WABA, of the 5,000 Meta allows)."""
    for sender_id in template_import.connected_sender_ids():
        try:
            template_import.import_templates(sender_id)
        except ServiceError as error:
            db.session.rollback()
            logger.warning(
                "job %s: sender %s: template sync failed: %s",
                context.job.id,
                sender_id,
                error.message,
            )
        except Exception:  # a bug or a lost connection with one sender: the next ones go on
            db.session.rollback()
            logger.exception(
                "job %s: sender %s: template sync failed unexpectedly", context.job.id, sender_id
            )


def _read_account(job_id: int | None, sender_id: int) -> None:
    """One sender's account read; Meta's refusal or silence is logged, never raised (the
    next periodic read tries again)."""
    try:
        refresh_account(sender_id)
    except (ProviderError, ServiceError) as error:
        db.session.rollback()
        logger.warning(
            "job %s: sender %s: account read failed: %s", job_id, sender_id, error.message
        )


@app.task(name=ACCOUNT_READ_TASK, queue=MAINTENANCE_QUEUE, pass_context=True)
def read_account(context: JobContext, sender_id: int) -> None:
    """Read a newly connected sender's quality rating, messaging limit and throughput."""
    _read_account(context.job.id, sender_id)


@app.periodic(cron="*/15 * * * *", periodic_id="read-accounts")
@app.task(
    name="senders.read_accounts",
    queue=MAINTENANCE_QUEUE,
    queueing_lock="senders.read_accounts",
    pass_context=True,
)
def read_accounts(context: JobContext, timestamp: int) -> None:
    """Every 15 minutes, read every active sender's account from Meta (the webhooks
    bring changes at once; this catches what they missed)."""
    for sender_id in readable_sender_ids():
        _read_account(context.job.id, sender_id)


@app.periodic(cron="*/2 * * * *", periodic_id="reconcile")
@app.task(
    name="maintenance.reconcile", queue=MAINTENANCE_QUEUE, queueing_lock="maintenance.reconcile"
)
def reconcile(timestamp: int) -> None:
    """Retry messages a dead worker left in `sending`, settle those whose job ended
    without them; drop expired rate-limit buckets, sign-in attempts past 30 days, audit
    events past AUDIT_RETENTION_DAYS, /metrics' per-minute figures past a day and API
    idempotency keys past 24 hours, undeliverable numbers past UNDELIVERABLE_DAYS, the
    contact history past CONTACT_HISTORY_DAYS,
    recipients the 24-hour messaging budget no longer counts and media files no template
    names a day after their upload, and CSV audiences no campaign uses a day after theirs."""
    maintenance.retry_stuck_sending(current_app.config["SENDING_LEASE_SECONDS"])
    maintenance.settle_orphaned_messages()
    removed = ratelimit.delete_old_buckets(db.session)
    attempts = login_throttle.delete_old_attempts(db.session)
    events = audit.delete_old_events(db.session, current_app.config["AUDIT_RETENTION_DAYS"])
    minutes = ratelimit.delete_old_denials(db.session)
    minutes += counters.delete_old_ops_minutes(db.session, DELETE_BATCH)
    keys = idempotency.delete_old_keys(db.session)
    forgotten = undeliverable.delete_expired(db.session, current_app.config["UNDELIVERABLE_DAYS"])
    contacts = contact_history.delete_expired(
        db.session, current_app.config["CONTACT_HISTORY_DAYS"]
    )
    uncounted = ratelimit.delete_old_budget(db.session, DELETE_BATCH)
    unused = media.delete_unused(db.session)
    audience_files = audiences.delete_unused(db.session)
    db.session.commit()
    logger.info(
        "maintenance: removed %s old rate-limit buckets, %s old sign-in attempts,"
        " %s old audit events, %s old metrics minutes, %s old idempotency keys,"
        " %s undeliverable numbers past UNDELIVERABLE_DAYS, %s contacts past"
        " CONTACT_HISTORY_DAYS, %s recipients out of the 24-hour budget, %s unused media"
        " files, %s unused audience files",
        removed,
        attempts,
        events,
        minutes,
        keys,
        forgotten,
        contacts,
        uncounted,
        unused,
        audience_files,
    )


@app.periodic(cron="43 * * * *", periodic_id="erase-expired-personal-data")
@app.task(
    name="maintenance.erase_expired_personal_data",
    queue=MAINTENANCE_QUEUE,
    queueing_lock="maintenance.erase_expired_personal_data",
)
def erase_expired_personal_data(timestamp: int) -> None:
    """Erase recipients' personal data DATA_RETENTION_DAYS after their campaign ended,
    in batches (a backlog is worked off over several hourly runs)."""
    personal_data.erase_expired(current_app.config["DATA_RETENTION_DAYS"])


@app.periodic(cron="*/2 * * * *", periodic_id="stalled")
@app.task(
    name="maintenance.retry_stalled", queue=MAINTENANCE_QUEUE, queueing_lock="maintenance.stalled"
)
async def retry_stalled_jobs(timestamp: int) -> None:
    """Put the jobs of dead workers back in the queue (async: the API is async-only)."""
    from procrastinate.exceptions import ConnectorException
    from procrastinate.jobs import Status

    # Keep STALLED_WORKER_SECONDS well above the graceful shutdown (20 s, when
    # heartbeats stop) plus a heartbeat interval, so a worker still finishing its
    # jobs is never taken for dead. No task middleware gives async tasks an app
    # context, hence the process's app.
    seconds = flask_app().config["STALLED_WORKER_SECONDS"]
    for job in await app.job_manager.get_stalled_jobs(seconds_since_heartbeat=seconds):
        logger.warning("retrying stalled job %s (%s)", job.id, job.task_name)
        try:
            await app.job_manager.retry_job(job)
        except ConnectorException:
            # A waiting sibling holds the same queueing lock (#1446): that one will run.
            assert job.id is not None  # a job read from the database has its id
            await app.job_manager.finish_job_by_id_async(job.id, Status.FAILED, delete_job=False)


@app.periodic(cron="17 * * * *", periodic_id="remove-old-jobs")
@app.task(
    name="maintenance.remove_old_jobs",
    queue=MAINTENANCE_QUEUE,
    queueing_lock="maintenance.remove_old_jobs",
    pass_context=True,
)
async def remove_old_jobs(context: JobContext, timestamp: int) -> None:
    """Keep procrastinate_jobs small: its fetch query and worker pruning slow down with size."""
    await builtin_tasks.remove_old_jobs(
        context, max_hours=72, remove_failed=True, remove_cancelled=True, remove_aborted=True
    )
