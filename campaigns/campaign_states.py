"""A campaign's own state changes made by the engine, and what every change of one uses.

``draft → scheduled → sending ⇄ paused → completed``, or ``cancelled`` / ``failed``.
The operator's actions (schedule, send now, pause, resume, cancel) are in
``services/campaigns.py``, which checks them against its table of allowed
statuses and calls :func:`start` and the helpers here; the engine's own changes
are here: the scheduler's start at the due time, completion, failure, and the
automatic pause on WhatsApp's answer or on a run of failures.

Every change happens under the campaign's row lock (:func:`lock`), records an
activity entry and, where the owner should know, defers a notification in the
same transaction: all of it commits together or not at all. Reasons and details
are stored as codes of ``reasons.py`` with their parameters, never as sentences:
a job does not know the language of whoever reads them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from app import AnySession, db
from campaigns import counters, message_states, queues, reasons, recurrence, template_parts
from campaigns.clock import database_now
from campaigns.models import Campaign, CampaignActivity, CampaignStatus
from campaigns.providers.errors import ErrorKind

logger = logging.getLogger(__name__)


TEMPLATE_DISABLED_CODE = 132016


def lock(session: AnySession, campaign_id: int) -> Campaign | None:
    """The campaign, locked until the transaction ends (None if there is no such campaign).

    FOR NO KEY UPDATE: it serialises the campaign's own state changes without
    blocking the foreign-key checks of rows other jobs insert for it (minute stats,
    activity, notifications), which FOR UPDATE would, and deadlock. populate_existing:
    the row as locked, not what this session loaded before the lock.
    """
    return session.scalar(
        sa.select(Campaign)
        .where(Campaign.id == campaign_id)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    )


def record_activity(
    session: AnySession,
    campaign_id: int,
    user_id: int | None,
    action: str,
    detail: reasons.Reason | None = None,
) -> None:
    """Add to the campaign's activity (committed with the caller's transaction; no user: the
    system did it). ``action`` is a key of ``reasons.ACTIONS``."""
    session.add(
        CampaignActivity(
            campaign_id=campaign_id,
            user_id=user_id,
            action=action,
            detail_code=detail.code if detail else None,
            detail_params=dict(detail.params) if detail else None,
        )
    )


def start(session: AnySession, campaign: Campaign) -> None:
    """Mark a locked campaign as sending and defer its fan-out (caller commits)."""
    campaign.status = CampaignStatus.SENDING
    campaign.set_status_reason(None)
    campaign.started_at = campaign.started_at or database_now(session)
    counters.ensure_rows(session, campaign.id)
    queues.defer_fan_out(session, campaign.id)
    queues.defer_notification(session, campaign.id, "started")


def start_due(tick: datetime) -> list[int]:
    """Start every scheduled campaign due at the tick; two workers never start one twice.

    A recurring campaign (a series) is not sent itself: it makes a run (:func:`make_run`)
    and that is started, or skipped while the previous run still sends. Returns the ids
    of the campaigns started (runs among them)."""
    due = db.session.scalars(
        sa.select(Campaign)
        .where(Campaign.status == CampaignStatus.SCHEDULED, Campaign.scheduled_at <= tick)
        .order_by(Campaign.scheduled_at)
        .with_for_update(skip_locked=True, key_share=True)
    ).all()
    unready: dict[int, list[str]] = {}
    started: list[int] = []
    for campaign in due:
        if campaign.recurrence is not None:
            made = make_run(db.session, campaign, tick)
            if made is None:
                continue
            campaign = made
        # Its template may have changed since it was scheduled (an import, a webhook):
        # started, every message would fail with 132000. (A run fails; its series goes on.)
        if lacking := template_parts.unready(campaign.template, campaign.variable_mapping):
            unready[campaign.id] = lacking
            continue
        start(db.session, campaign)
        record_activity(
            db.session, campaign.id, None, "started", reasons.Reason(reasons.SCHEDULED_TIME_REACHED)
        )
        started.append(campaign.id)
    db.session.commit()
    for campaign_id, lacking in unready.items():
        fail(campaign_id, reasons.Reason(reasons.TEMPLATE_UNREADY, {"needs": ", ".join(lacking)}))
    return started


# A run still going: the series' next one is skipped rather than sent alongside it.
UNFINISHED_RUN = frozenset({CampaignStatus.SENDING, CampaignStatus.PAUSED})


def make_run(session: AnySession, series: Campaign, tick: datetime) -> Campaign | None:
    """The locked series is due at ``tick``: its next run, a copy made as a duplicate is
    (``Campaign.copy``), added as a draft for the caller to start; or None, with the
    skip noted on the series and told to its owner, while its latest run has not
    finished. Either way the series moves to its next occurrence after the tick (a tick
    that came late makes one run, for the latest occurrence it passed). Caller commits.
    """
    assert series.recurrence is not None and series.scheduled_at is not None
    rule = series.recurrence
    occurrence = recurrence.latest_due(rule, series.scheduled_at, tick)
    series.scheduled_at = recurrence.next_occurrence(rule, tick)
    latest = session.scalars(
        sa.select(Campaign)
        .where(Campaign.recurrence_of_id == series.id)
        .order_by(Campaign.run_number.desc())
        .limit(1)
    ).first()
    if latest is not None and latest.status in UNFINISHED_RUN:
        skipped = reasons.Reason(
            reasons.RUN_SKIPPED,
            {"at": occurrence.isoformat(), "id": latest.id, "number": latest.run_number},
        )
        record_activity(session, series.id, None, "run_skipped", skipped)
        queues.defer_notification(session, series.id, "run_skipped", {"at": occurrence.isoformat()})
        logger.warning(
            "series %s: run due %s skipped, run %s still %s",
            series.id,
            occurrence.isoformat(),
            latest.id,
            latest.status.value,
        )
        return None
    number = (latest.run_number or 0) + 1 if latest is not None else 1
    run = series.copy(
        name=recurrence.run_name(series.name, rule, occurrence), owner_id=series.owner_id
    )
    run.recurrence = None  # a run sends once; its series makes the next
    run.recurrence_of_id = series.id
    run.run_number = number
    run.scheduled_at = occurrence
    session.add(run)
    session.flush()
    record_activity(
        session, run.id, None, "created", reasons.Reason(reasons.RUN_OF, {"id": series.id})
    )
    record_activity(
        session,
        series.id,
        None,
        "run_made",
        reasons.Reason(reasons.RUN_MADE, {"id": run.id, "number": number}),
    )
    return run


def defer_next_step(session: AnySession, campaign_id: int, *, audience_loaded: bool) -> None:
    """Defer what a sending campaign needs next: its pump, or a fan-out if none waits."""
    if audience_loaded:
        queues.defer_pump(session, campaign_id)  # its queueing lock keeps it to one
    elif not queues.campaign_has_job(session, queues.FAN_OUT_TASK, campaign_id):
        queues.defer_fan_out(session, campaign_id)


def complete(session: AnySession, campaign: Campaign) -> None:
    """Nothing is left in flight: the locked campaign is completed (caller commits)."""
    campaign.status = CampaignStatus.COMPLETED
    campaign.completed_at = database_now(session)
    record_activity(session, campaign.id, None, "completed")
    queues.defer_notification(session, campaign.id, "completed")
    logger.info("campaign %s completed", campaign.id)


def fail(campaign_id: int, reason: reasons.Reason) -> None:
    """The campaign cannot be carried out at all: failed, with the reason shown; commits."""
    campaign = lock(db.session, campaign_id)
    if campaign is None or campaign.status.is_finished:
        db.session.rollback()
        return
    campaign.status = CampaignStatus.FAILED
    campaign.set_status_reason(reason)
    campaign.completed_at = database_now(db.session)
    message_states.cancel_unsent(db.session, campaign_id)
    record_activity(db.session, campaign_id, None, "failed", reason)
    queues.defer_notification(db.session, campaign_id, "failed")
    db.session.commit()
    logger.error("campaign %s failed: %s %s", campaign_id, reason.code, reason.params)


def stop_for_code(
    campaign_id: int,
    code: int | None,
    text: str,
    kind: ErrorKind,
    *,
    own_reason: str | None = None,
) -> None:
    """WhatsApp said stop (quality, template, account): pause, or fail, and commit.

    132016 (the template disabled) fails the campaign, which cannot go on at all;
    account-wide codes pause every sending campaign of the sender; the rest pause
    this campaign. Resuming is the operator's decision. ``own_reason``: the stop is
    Disparo's own finding (a reasons code), not WhatsApp's answer.
    """
    if code == TEMPLATE_DISABLED_CODE:
        db.session.commit()
        fail(campaign_id, reasons.Reason(reasons.TEMPLATE_DISABLED))
        return
    reason = (
        reasons.Reason(own_reason)
        if own_reason
        else reasons.Reason(reasons.WHATSAPP_STOP, {"code": code, "message": text})
    )
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
    reason = reasons.Reason(
        reasons.FAILURE_RATE, {"failed": failed, "n": outcomes, "pct": round(threshold * 100)}
    )
    _auto_pause(campaign_id, reason, every_campaign_of_sender=False)


def _auto_pause(
    campaign_id: int, reason: reasons.Reason, *, every_campaign_of_sender: bool
) -> None:
    campaign = lock(db.session, campaign_id)
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
            target.set_status_reason(reason)
            message_states.unqueue(db.session, target.id)
            record_activity(db.session, target.id, None, "paused", reason)
            queues.defer_notification(db.session, target.id, "auto_paused")
            logger.warning("campaign %s auto-paused: %s %s", target.id, reason.code, reason.params)


def pause_for_template(campaign_id: int, reason: reasons.Reason) -> None:
    """WhatsApp paused the campaign's template: a sending or scheduled campaign pauses at
    once, with the reason, and its owner is told; commits.

    A scheduled one pauses too, so it does not start with a template WhatsApp refuses;
    resuming it (the operator's decision, once the template is approved) starts it.
    """
    campaign = lock(db.session, campaign_id)
    if campaign is None or campaign.status not in (
        CampaignStatus.SENDING,
        CampaignStatus.SCHEDULED,
    ):
        db.session.rollback()
        return
    campaign.status = CampaignStatus.PAUSED
    campaign.set_status_reason(reason)
    message_states.unqueue(db.session, campaign.id)
    record_activity(db.session, campaign.id, None, "paused", reason)
    queues.defer_notification(db.session, campaign.id, "auto_paused")
    db.session.commit()
    logger.warning("campaign %s auto-paused: %s", campaign.id, reason.code)
