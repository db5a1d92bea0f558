"""Maintenance: nothing waits forever after a crash, a lost job or a dead worker.

Three repairs, each safe to run at any time and on any number of workers at once:

- a sending campaign whose fan-out or pump job was lost gets a new one
  (:func:`redefer_lost_campaign_jobs`, every scheduler tick);
- a message a dead worker left in ``sending`` past its lease is sent again
  (:func:`retry_stuck_sending`: at-least-once);
- a waiting message whose job ended without it is settled: back to pending if a
  worker's shutdown aborted the job, failed (retryable) if the job failed on an
  unexpected error (:func:`settle_orphaned_messages`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import timedelta

import sqlalchemy as sa

from app import db
from campaigns import campaign_states, message_states, queues
from campaigns.models import Campaign, CampaignStatus, Message, MessageStatus
from campaigns.providers.errors import JOB_FAILED_CODE, WORKER_STOPPED_CODE

logger = logging.getLogger(__name__)

STUCK_BATCH = 1000  # messages per run; the next run takes the rest


def redefer_lost_campaign_jobs() -> list[int]:
    """Give every sending campaign whose fan-out or pump job was lost a new one."""
    kicked = []
    # Locked until the commit, so a fan-out or pump cannot finish (or complete the
    # campaign) between this read and the job checks below; one busy now is alive.
    for campaign_id, loaded in db.session.execute(
        sa.select(Campaign.id, Campaign.audience_loaded_at.is_not(None))
        .where(Campaign.status == CampaignStatus.SENDING)
        .with_for_update(skip_locked=True, key_share=True)
    ).all():
        if queues.campaign_has_job(
            db.session, queues.FAN_OUT_TASK, campaign_id
        ) or queues.campaign_has_job(db.session, queues.PUMP_TASK, campaign_id):
            continue
        campaign_states.defer_next_step(db.session, campaign_id, audience_loaded=loaded)
        kicked.append(campaign_id)
        logger.warning(
            "campaign %s: its fan-out or pump job was lost; deferred a new one", campaign_id
        )
    db.session.commit()
    return kicked


def retry_stuck_sending(lease_seconds: float) -> int:
    """Retry rows left in `sending` past their lease (SENDING_LEASE_SECONDS) by a dead worker.

    A status webhook would already have moved such a row on, so none came: we
    cannot know whether the call went out, and send again (at-least-once).
    """
    stuck = db.session.execute(
        sa.select(Message.id, Message.campaign_id)
        .where(
            Message.status == MessageStatus.SENDING,
            Message.sending_at < sa.func.now() - timedelta(seconds=lease_seconds),
        )
        .order_by(Message.id)
        .with_for_update(skip_locked=True)
        .limit(STUCK_BATCH)
    ).all()
    by_campaign: dict[int, list[int]] = defaultdict(list)
    for message_id, campaign_id in stuck:
        by_campaign[campaign_id].append(message_id)
    for campaign_id, ids in by_campaign.items():
        moved = message_states.requeue(
            db.session,
            campaign_id,
            [(message_id, WORKER_STOPPED_CODE, None) for message_id in ids],
            MessageStatus.RETRYING,
            tries="reset",
        )
        queues.defer_retries(db.session, campaign_id, moved)
    db.session.commit()
    if stuck:
        logger.warning("reconciled %d messages stuck in sending", len(stuck))
    return len(stuck)


def settle_orphaned_messages() -> int:
    """Settle the waiting messages whose job ended without them (queues.ORPHANED_MESSAGES).

    A job aborted by a worker's shutdown did nothing wrong: its message goes back to
    pending, and the pump queues it again. A job that failed is failed with a reason,
    not sent again: a job that fails on a bug would fail again, forever; "retry
    failed" on the campaign page sends it again (the code is retryable).
    Returns how many messages were failed.
    """
    failed = 0
    orphaned = queues.orphaned_messages(db.session)
    # Back to pending outside the pump: their campaigns' zone counts are counted again;
    # the campaigns' locks first, the pump's order.
    message_states.forget_zone_counts(
        db.session, [row.campaign_id for row in orphaned if row.job_status == "aborted"]
    )
    for row in orphaned:
        waiting = [MessageStatus(row.status)]
        if row.job_status == "aborted":
            message_states.transition(
                db.session, row.id, waiting, MessageStatus.PENDING, aborted_job_id=row.job_id
            )
            continue
        # The code says it in the reader's language; the job's id is in the log line.
        if message_states.fail(
            db.session, row.id, waiting, JOB_FAILED_CODE, None, failed_job_id=row.job_id
        ):
            logger.error("message %s failed: its job %s failed", row.id, row.job_id)
            failed += 1
    db.session.commit()
    return failed
