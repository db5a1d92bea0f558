"""The queue monitor's actions on Procrastinate jobs: retry a failed one, cancel a waiting one."""

from __future__ import annotations

import logging

import sqlalchemy as sa

from app import db
from campaigns import message_states, queues
from campaigns.i18n import _
from campaigns.labels import label_for
from campaigns.models import MessageStatus, User
from campaigns.services import Conflict, NotFound

logger = logging.getLogger(__name__)


def _locked_job(job_id: int) -> sa.Row:
    job = queues.lock_job(db.session, job_id)
    if job is None:
        db.session.rollback()
        raise NotFound(_("There is no job #%(id)d.") % {"id": job_id})
    return job


def retry_job(job_id: int, user: User) -> None:
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
        raise Conflict(
            _(
                "Job #%(id)d cannot be retried: another waiting job"
                " holds its queueing lock %(lock)s."
            )
            % {"id": job_id, "lock": job.queueing_lock}
        ) from None
    db.session.commit()
    logger.info("job %s (%s) retried by user %s", job_id, job.task_name, user.id)


def cancel_job(job_id: int, user: User) -> None:
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
    queues.cancel_waiting_job(db.session, job_id)
    waiting_as = {queues.SEND_TASK: MessageStatus.QUEUED, queues.RETRY_TASK: MessageStatus.RETRYING}
    if job.task_name in waiting_as:
        for message_id in queues.job_message_ids(job.args or {}):
            message_states.transition(
                db.session, message_id, [waiting_as[job.task_name]], MessageStatus.CANCELLED
            )
    db.session.commit()
    logger.info("job %s (%s) cancelled by user %s", job_id, job.task_name, user.id)
