"""Actions on Procrastinate jobs: the queue monitor's (retry a failed job, cancel a waiting
one) and the operator's bulk ones behind ``flask queue`` (retry every failed job of a
queue or campaign, cancel a campaign with its waiting jobs, purge finished jobs).

The bulk actions run the monitor's own steps on each job, so a job retried or cancelled
from the command line ends exactly as one retried or cancelled on the page. Neither
writes an audit row: the audit trail records administrative changes (users, senders,
limits, opt-outs, erasures), and a campaign's cancellation is recorded in its activity.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from app import db
from campaigns import audit, message_states, queues, reasons
from campaigns.i18n import _
from campaigns.labels import label_for
from campaigns.models import Campaign, CampaignStatus, MessageStatus, User
from campaigns.services import Conflict, NotFound
from campaigns.services.campaigns import cancel_campaign

logger = logging.getLogger(__name__)

RETRY_BATCH = 500  # failed jobs locked and retried per transaction
# What a message waits as for a job of each task: cancelled with its job, or it would
# wait for nothing and its campaign would never complete.
WAITING_AS = {queues.SEND_TASK: MessageStatus.QUEUED, queues.RETRY_TASK: MessageStatus.RETRYING}


def _who(user: User | None) -> str:
    """Who acts, for the log line: the user, else the CLI's OS user (``cli:ana``)."""
    if user is not None:
        return f"user {user.id}"
    actor = audit.current_actor()
    return actor if isinstance(actor, str) else f"user {actor.id}"


def _locked_job(job_id: int) -> sa.Row:
    job = queues.lock_job(db.session, job_id)
    if job is None:
        db.session.rollback()
        raise NotFound(_("There is no job #%(id)d.") % {"id": job_id})
    return job


def _queueing_lock_conflict(job_id: int, lock: str | None) -> Conflict:
    return Conflict(
        _("Job #%(id)d cannot be retried: another waiting job holds its queueing lock %(lock)s.")
        % {"id": job_id, "lock": lock}
    )


def retry_job(job_id: int, user: User | None) -> None:
    """Run a failed job once more, now (its attempts count on, so no automatic retries follow)."""
    job = _locked_job(job_id)
    # The SQL function would also take a running job back to todo, and a second
    # worker would then run it while the first still is: only failed jobs qualify.
    if job.status != "failed":
        db.session.rollback()
        raise Conflict(
            _("Only failed jobs can be retried; job #%(id)d is “%(status)s”.")
            % {"id": job_id, "status": label_for("job_status", job.status)}
        )
    try:
        queues.retry_job_now(db.session, job_id)
    except sa.exc.IntegrityError:
        db.session.rollback()
        raise _queueing_lock_conflict(job_id, job.queueing_lock) from None
    db.session.commit()
    logger.info("job %s (%s) retried by %s", job_id, job.task_name, _who(user))


def _cancel_waiting(job_id: int, task_name: str, args: dict[str, Any] | None) -> int:
    """Cancel a locked todo job; a message job takes its waiting messages with it (how
    many)."""
    queues.cancel_waiting_job(db.session, job_id)
    if task_name not in WAITING_AS:
        return 0
    waiting_as = [WAITING_AS[task_name]]
    return sum(
        message_states.transition(db.session, message_id, waiting_as, MessageStatus.CANCELLED)
        is not None
        for message_id in queues.job_message_ids(args or {})
    )


def cancel_job(job_id: int, user: User | None) -> None:
    """Cancel a waiting job; a message job takes its message with it.

    A message waits as queued (or retrying) for its job: left so without one, its
    campaign would never complete. A cancelled pump or fan-out job is replaced by
    the scheduler's re-kick within a minute while its campaign is sending.
    """

    job = _locked_job(job_id)
    if job.status != "todo":
        db.session.rollback()
        if job.status == "doing":
            message = _("Job #%(id)d is running; only waiting jobs can be cancelled.")
        else:
            message = _("Job #%(id)d has ended (%(status)s); there is nothing to cancel.")
        raise Conflict(message % {"id": job_id, "status": label_for("job_status", job.status)})
    _cancel_waiting(job_id, job.task_name, job.args)
    db.session.commit()
    logger.info("job %s (%s) cancelled by %s", job_id, job.task_name, _who(user))


@dataclass(frozen=True)
class BulkRetry:
    retried: list[int]
    held: list[int]  # a waiting job holds the same queueing lock: that one will run


def retry_failed_jobs(
    queue: str | None, campaign_id: int | None, user: User | None, batch: int = RETRY_BATCH
) -> BulkRetry:
    """Retry every failed job of ``queue`` and/or ``campaign_id`` (None: any), as the
    monitor's retry does one; a batch of jobs per transaction."""
    retried: list[int] = []
    held: list[int] = []
    after = 0
    while jobs := queues.failed_jobs(db.session, queue, campaign_id, after, batch):
        free = [job.id for job in jobs if job.queueing_lock is None]
        queues.retry_jobs_now(db.session, free)  # no twin can refuse these: one statement
        retried += free
        for job in jobs:
            if job.queueing_lock is None:
                continue
            try:
                with db.session.begin_nested():
                    queues.retry_job_now(db.session, job.id)
            except sa.exc.IntegrityError:
                held.append(job.id)
            else:
                retried.append(job.id)
        db.session.commit()
        after = jobs[-1].id
    db.session.commit()
    logger.info(
        "%d failed jobs retried (%d held by a queueing lock) by %s; queue %s, campaign %s",
        len(retried),
        len(held),
        _who(user),
        queue or "any",
        campaign_id or "any",
    )
    return BulkRetry(retried, held)


@dataclass(frozen=True)
class CampaignCancel:
    already_cancelled: bool
    jobs: int  # waiting jobs cancelled
    messages: int  # waiting messages cancelled with their jobs (beyond the campaign's own)


def cancel_campaign_and_jobs(
    campaign_id: int, user: User | None, detail: reasons.Reason | None = None
) -> CampaignCancel:
    """Cancel a campaign as its page does, then cancel its waiting engine jobs.

    The campaign's cancel (services/campaigns) cancels its pending, queued and retrying
    messages and tells its owner; its waiting fan-out, pump and message jobs would then
    only find nothing to do, so they are cancelled here rather than left to run. A
    message job takes any message still waiting with it, as on the monitor. A job
    running now is left to finish: it cancels what it finds waiting, and its call in
    flight keeps its outcome. A campaign cancelled before gets only the job sweep; one
    that ended otherwise (completed, failed) is refused.
    """
    campaign = db.session.get(Campaign, campaign_id)
    if campaign is None:
        raise NotFound(_("There is no campaign #%(id)d.") % {"id": campaign_id})
    already = campaign.status is CampaignStatus.CANCELLED
    db.session.rollback()  # the cancel below reads the campaign under its lock
    if not already:
        cancel_campaign(campaign_id, user.id if user else None, detail)
    jobs = messages = 0
    for job in queues.campaign_waiting_jobs(db.session, campaign_id):
        messages += _cancel_waiting(job.id, job.task_name, job.args)
        jobs += 1
    db.session.commit()
    logger.info(
        "campaign %s cancelled by %s with %d waiting jobs (%d messages)",
        campaign_id,
        _who(user),
        jobs,
        messages,
    )
    return CampaignCancel(already, jobs, messages)


@dataclass(frozen=True)
class Purge:
    deleted: int
    kept: int  # failed message jobs still carrying waiting messages (maintenance's)


def purgeable_jobs(days: int, statuses: Sequence[str]) -> tuple[int, int]:
    """(finished jobs a purge would delete now, those it would keep for maintenance)."""
    counts = queues.count_finished_jobs(db.session, days, statuses)
    db.session.rollback()
    return counts


def purge_finished_jobs(
    days: int, statuses: Sequence[str], user: User | None, batch: int = queues.PURGE_BATCH
) -> Purge:
    """Delete the finished jobs (of ``statuses``) that ended over ``days`` days ago, a batch
    per transaction, so no lock is held for long; never a waiting or running job."""
    deleted = 0
    while count := queues.delete_finished_jobs(db.session, days, statuses, batch):
        db.session.commit()
        deleted += count
    _, kept = queues.count_finished_jobs(db.session, days, statuses)
    db.session.commit()
    logger.info(
        "%d finished jobs (%s) older than %d days deleted by %s; %d kept for maintenance",
        deleted,
        ",".join(statuses),
        days,
        _who(user),
        kept,
    )
    return Purge(deleted, kept)
