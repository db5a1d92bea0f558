"""A campaign's progress from its counters (O(1), whatever its size), the throughput chart,
the dashboard's active campaigns, and every limit as it stands now. Reads only."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.orm import joinedload

from app import db
from campaigns import counters, message_states, ratelimit, reasons, send_windows, waves
from campaigns.clock import database_now
from campaigns.models import (
    Campaign,
    CampaignCounter,
    CampaignStatus,
    Sender,
    User,
)

# A scheduled campaign's page starts polling this long before it is due.
LIVE_BEFORE_START = timedelta(minutes=5)


# Until a campaign has sent for this long its rate is not measured yet: the ETA comes from
# the limits (the pace) alone. After it, the measured rate (none: no ETA, it stalled).
MEASURED_AFTER_SECONDS = 30


# Delivered/read webhooks keep arriving after completion; the page follows them this long.
RECEIPTS_FOLLOW = timedelta(hours=1)


@dataclass(frozen=True)
class Progress:
    """A campaign's progress from its counters: O(1), whatever its size."""

    campaign_id: int
    status: CampaignStatus
    status_reason_code: str | None  # a code of reasons.py, worded when shown
    status_reason_params: dict[str, Any] | None
    total: int
    pending: int
    queued: int
    sending: int
    retrying: int
    sent: int
    delivered: int
    read: int
    failed: int
    skipped: int
    cancelled: int
    sent_last_minute: int
    allowed_per_minute: float
    pace: ratelimit.Pace | None = None  # the limit that sets allowed_per_minute
    scheduled_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    read_at: datetime | None = None  # the database's now() when these figures were read
    # Of the retrying, those WhatsApp's per-user marketing limit (131049) holds, and when
    # the first and the last of them are tried again (read only while some are retrying).
    held: message_states.Held = field(default_factory=message_states.Held)
    # How the pending messages fit in the portfolio's 24-hour budget (read while some
    # are pending and the portfolio has a limit): carried over to later days or not.
    waves: waves.Waves | None = None
    # Messages their recipient answered (answers.py): replied to, a button clicked.
    replied: int = 0
    clicked: int = 0
    # With a sending window (send_windows.py): the pending messages whose zone's window is
    # closed now, when the first of those windows opens, and how long what is in flight
    # takes with the windows' waits (read while some are pending; None: no window then).
    windows: Windows | None = None

    @property
    def waiting_for_window(self) -> int:
        return self.windows.waiting if self.windows else 0

    @property
    def next_window_at(self) -> datetime | None:
        return self.windows.next_open_at if self.windows and self.windows.waiting else None

    @property
    def status_reason(self) -> str | None:
        """Why it is paused or failed, in the reader's language."""
        return reasons.render_or_none(self.status_reason_code, self.status_reason_params)

    @property
    def in_flight(self) -> int:
        return self.pending + self.queued + self.sending + self.retrying

    @property
    def held_count(self) -> int:
        return self.held.count

    @property
    def held_retry_from(self) -> datetime | None:
        """When the first held message is tried again; None when none is held."""
        return self.held.first_due if self.held.count else None

    @property
    def done(self) -> int:
        return self.sent + self.failed + self.skipped + self.cancelled

    @property
    def percent_done(self) -> float:
        return 100.0 * self.done / self.total if self.total else 0.0

    @property
    def success_rate(self) -> float | None:
        """Reached sent and did not fail ÷ (those + failed); None before any outcome."""
        outcomes = self.sent + self.failed
        return self.sent / outcomes if outcomes else None

    @property
    def reply_rate(self) -> float | None:
        """Replied ÷ delivered (a reply needs a delivered message); None before any delivery.

        A message read with no delivered status is counted delivered too (counters.py).
        """
        return min(1.0, self.replied / self.delivered) if self.delivered else None

    @property
    def counts(self) -> dict[str, int]:
        """The counters as read (counters.COLUMNS), for recipients.rows_in_status."""
        return {name: getattr(self, name) for name in counters.COLUMNS}

    @property
    def reached(self) -> int:
        """Messages that went their way (sent, failed or skipped): done, less the cancelled."""
        return self.sent + self.failed + self.skipped

    @property
    def percent_reached(self) -> float:
        return 100.0 * self.reached / self.total if self.total else 0.0

    @property
    def measured_per_minute(self) -> float | None:
        """Sends per minute over the last minute (or since the start, within its first
        minute); None in the first MEASURED_AFTER_SECONDS, when there is no rate to
        measure yet. After that it is what was measured, 0 for a campaign that stalled."""
        elapsed = self.elapsed_seconds
        if elapsed is None or elapsed < MEASURED_AFTER_SECONDS:
            return None
        return self.sent_last_minute * 60.0 / min(60.0, elapsed)

    @property
    def eta_from_limits(self) -> bool:
        """The ETA shown is the limits' alone (no rate measured yet); False with no ETA."""
        return self.eta_seconds is not None and self.measured_per_minute is None

    @property
    def carried_over(self) -> int:
        """Pending messages the 24-hour budget has no room for now (a later wave)."""
        return self.waves.rest if self.waves else 0

    @property
    def next_wave_at(self) -> datetime | None:
        """When the budget has room again for what it carries over; None: nothing is."""
        return self.waves.rest_from if self.waves and self.waves.carried_over else None

    @property
    def eta_seconds(self) -> float | None:
        """Remaining ÷ min(measured throughput, what the limits allow); from the limits
        alone until a rate is measured. None when not sending, nothing remains, or nothing
        went out in the last minute (stalled: no worker, WhatsApp holding it back), rather
        than an optimistic figure. Held messages (131049) are not sent at the rate: the
        campaign ends no sooner than the last of them is tried again. Pending messages the
        24-hour budget carries over go in waves (waves.py), at the limits' rate: while the
        campaign waits for the budget nothing goes out, and that is no stall."""
        if self.status is not CampaignStatus.SENDING or not self.in_flight:
            return None
        until_held = 0.0
        if self.held.count and self.held.last_due is not None and self.read_at is not None:
            until_held = max(0.0, (self.held.last_due - self.read_at).total_seconds())
        rest = self.in_flight - self.held.count
        if rest <= 0:
            return until_held if self.held.count else None
        measured = self.measured_per_minute
        if self.windows is not None:
            # Recipients wait for their windows: nothing going out meanwhile is no stall,
            # and the rate is the limits'; the budget's waits, if longer, still count.
            if self.windows.seconds is None:
                return None
            eta = self.windows.seconds
            if self.carried_over and self.waves is not None and self.waves.seconds is not None:
                on_their_way = rest - self.pending
                eta = max(eta, on_their_way / self.allowed_per_minute * 60.0 + self.waves.seconds)
            return max(eta, until_held)
        if self.carried_over and self.waves is not None:
            if self.waves.seconds is None:
                return None
            on_their_way = rest - self.pending
            return max(
                on_their_way / self.allowed_per_minute * 60.0 + self.waves.seconds, until_held
            )
        rate = (
            self.allowed_per_minute if measured is None else min(measured, self.allowed_per_minute)
        )
        if rate <= 0:
            return None
        return max(rest / rate * 60.0, until_held)

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    @property
    def is_live(self) -> bool:
        """Worth polling: sending, or scheduled to start within LIVE_BEFORE_START."""
        if self.status is CampaignStatus.SENDING:
            return True
        return (
            self.status is CampaignStatus.SCHEDULED
            and self.scheduled_at is not None
            and self.read_at is not None
            and self.scheduled_at - self.read_at <= LIVE_BEFORE_START
        )

    @property
    def elapsed_seconds(self) -> float | None:
        """From the start to completion (or to now while it goes on); None before it starts."""
        if self.started_at is None:
            return None
        end = self.completed_at or self.read_at
        return max(0.0, (end - self.started_at).total_seconds()) if end else None

    @property
    def follows_receipts(self) -> bool:
        """Finished lately: delivered/read webhooks may still arrive (a slower poll shows them)."""
        return (
            self.status is CampaignStatus.COMPLETED
            and self.completed_at is not None
            and self.read_at is not None
            and self.read_at - self.completed_at <= RECEIPTS_FOLLOW
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "campaign_id": self.campaign_id,
            "status": self.status.value,
            # The API's text is English; the code is what a client should compare.
            "status_reason": reasons.render_english(
                self.status_reason_code, self.status_reason_params
            ),
            "status_reason_code": self.status_reason_code,
            "total": self.total,
            "in_flight": self.in_flight,
            "pending": self.pending,
            "queued": self.queued,
            "sending": self.sending,
            "retrying": self.retrying,
            "held": self.held_count,
            "held_retry_from": (self.held_retry_from.isoformat() if self.held_retry_from else None),
            "sent": self.sent,
            "delivered": self.delivered,
            "read": self.read,
            "failed": self.failed,
            "skipped": self.skipped,
            "cancelled": self.cancelled,
            "replied": self.replied,
            "clicked": self.clicked,
            "reply_rate": self.reply_rate,
            "success_rate": self.success_rate,
            "sent_last_minute": self.sent_last_minute,
            "eta_seconds": self.eta_seconds,
            "carried_over": self.carried_over,
            "next_wave_at": self.next_wave_at.isoformat() if self.next_wave_at else None,
            "waiting_for_window": self.waiting_for_window,
            "next_window_at": self.next_window_at.isoformat() if self.next_window_at else None,
            "eta_from_limits": self.eta_from_limits,
            "pace_limited_by": self.pace.binding if self.pace else None,
            "is_finished": self.is_finished,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "completed_at": self.completed_at.isoformat() if self.completed_at else None,
            "elapsed_seconds": self.elapsed_seconds,
        }


def get_progress(campaign: Campaign) -> Progress:
    """Counters summed over their shards, plus the last minute's sends, and the messages
    131049 holds when some are retrying (their partial index: never the campaign's rows)."""
    progress = _progress_of(campaign, *counters.snapshot(db.session, campaign.id))
    if progress.retrying and not progress.is_finished:
        progress = replace(progress, held=message_states.held(db.session, campaign.id))
    return _with_windows(_with_waves([progress], [campaign]), [campaign])[0]


@dataclass(frozen=True)
class Windows:
    """How a campaign's pending messages stand with its sending window now."""

    waiting: int  # pending in a zone whose window is closed
    next_open_at: datetime | None  # when the first of those zones opens
    seconds: float | None  # what is in flight takes this long with the waits (None: unknown)


def windows_of(progress: Progress, campaign: Campaign) -> Windows | None:
    """From the campaign's window and its zones' pending counts as the pump last kept them
    (``window_zones``): no read of the messages, O(zones). The counts are scaled to the
    pending counter (they trail it by a pump run)."""
    window = send_windows.Window.of(campaign.send_window)
    if window is None or not progress.pending or progress.read_at is None:
        return None
    at = progress.read_at
    fallback = current_app.config["DISPLAY_TIMEZONE"]
    counts = send_windows.zone_counts(campaign.window_zones, progress.pending, fallback)
    closed = {z: n for z, n in counts.items() if n and not send_windows.is_open(window, z, at)}
    waiting = min(progress.pending, round(sum(closed.values())))
    # The limits' pace, or the rate measured if lower while some zone is open (a stall
    # with every zone closed is the windows' wait, not the campaign's).
    per_minute = progress.allowed_per_minute
    measured = progress.measured_per_minute
    if measured and len(closed) < len(counts):
        per_minute = min(per_minute, measured)
    per_second = per_minute / 60.0
    if per_second <= 0:
        seconds = None
    else:
        ahead = max(0, progress.in_flight - progress.held.count - progress.pending) / per_second
        drain = send_windows.drain_seconds(
            window, counts, at + timedelta(seconds=ahead), per_second
        )
        seconds = None if drain is None else ahead + drain
    return Windows(waiting, send_windows.first_opening(window, list(closed), at), seconds)


def _with_windows(shown: list[Progress], campaigns: list[Campaign]) -> list[Progress]:
    """Each progress with its sending window's figures (sending or paused campaigns)."""
    out = []
    for progress, campaign in zip(shown, campaigns, strict=True):
        live = progress.status in (CampaignStatus.SENDING, CampaignStatus.PAUSED)
        windows = windows_of(progress, campaign) if live else None
        out.append(replace(progress, windows=windows) if windows else progress)
    return out


def _with_waves(shown: list[Progress], campaigns: list[Campaign]) -> list[Progress]:
    """Each progress with how its pending messages fit in its portfolio's 24-hour budget
    (one read per portfolio, only for campaigns sending or paused with some pending)."""
    margin = current_app.config["MESSAGING_LIMIT_MARGIN_PERCENT"]
    usage: dict[str, ratelimit.BudgetUsage] = {}
    out = []
    for progress, campaign in zip(shown, campaigns, strict=True):
        budget = ratelimit.budget(campaign.sender, margin)
        waiting = progress.status in (CampaignStatus.SENDING, CampaignStatus.PAUSED)
        if budget is None or not waiting or not progress.pending or progress.read_at is None:
            out.append(progress)
            continue
        if budget.portfolio not in usage:
            usage[budget.portfolio] = ratelimit.budget_usage(db.session, budget)
        plan = waves.plan(
            progress.pending,
            usage[budget.portfolio],
            progress.read_at,
            progress.allowed_per_minute / 60.0,
        )
        out.append(replace(progress, waves=plan))
    return out


@dataclass(frozen=True)
class Chart:
    """Sent and failed per minute, oldest first, for the inline SVG chart."""

    minutes: list[sa.Row]

    @property
    def peak(self) -> int:
        return max([1, *(m.sent for m in self.minutes), *(m.failed for m in self.minutes)])


def throughput_chart(progress: Progress) -> Chart:
    """The last hour of the campaign: up to now, or up to its end once it is over."""
    until = progress.completed_at or progress.read_at or database_now(db.session)
    return Chart(counters.minutes_of_hour(db.session, progress.campaign_id, until))


def sender_usage(senders: list[Sender]) -> dict[int, ratelimit.Usage]:
    """Each sender's WhatsApp limit now: used / limit this minute, next slot (nothing consumed)."""
    return {s.id: ratelimit.usage(db.session, ratelimit.whatsapp_limit(s)) for s in senders}


# The dashboard's campaigns, in the order shown: sending, then paused, then scheduled.
DASHBOARD_STATUSES = (CampaignStatus.SENDING, CampaignStatus.PAUSED, CampaignStatus.SCHEDULED)


DASHBOARD_CAMPAIGNS = 50


def _progress_of(
    campaign: Campaign,
    totals: Mapping[str, int] | sa.RowMapping,
    sent_last_minute: int,
    read_at: datetime,
) -> Progress:
    """A campaign's Progress from figures already read (its sender and owner give the pace)."""
    pace = ratelimit.pace(campaign.sender, campaign.owner)
    return Progress(
        campaign_id=campaign.id,
        status=campaign.status,
        status_reason_code=campaign.status_reason_code,
        status_reason_params=campaign.status_reason_params,
        total=totals["total"],
        pending=totals["pending"],
        queued=totals["queued"],
        sending=totals["sending"],
        retrying=totals["retrying"],
        sent=totals["sent"],
        delivered=totals["delivered"],
        read=totals["read"],
        failed=totals["failed"],
        skipped=totals["skipped"],
        cancelled=totals["cancelled"],
        replied=totals["replied"],
        clicked=totals["clicked"],
        sent_last_minute=sent_last_minute,
        allowed_per_minute=pace.per_minute,
        pace=pace,
        scheduled_at=campaign.scheduled_at,
        started_at=campaign.started_at,
        completed_at=campaign.completed_at,
        read_at=read_at,
    )


@dataclass(frozen=True)
class ActiveCampaign:
    campaign: Campaign
    progress: Progress


@dataclass(frozen=True)
class ActiveCampaigns:
    campaigns: list[ActiveCampaign]
    total: int  # every sending, paused and scheduled campaign, shown or not

    @property
    def any_live(self) -> bool:
        """Worth polling: a campaign is sending, or is about to start."""
        return any(active.progress.is_live for active in self.campaigns)


def active_campaigns(limit: int = DASHBOARD_CAMPAIGNS) -> ActiveCampaigns:
    """Sending, paused and scheduled campaigns with their progress, in two statements.

    However many campaigns there are: one statement reads them (with their sender
    and owner) and their counters summed over the shards, one their last minute.
    """
    totals = (
        sa.select(
            *(
                sa.func.coalesce(sa.func.sum(getattr(CampaignCounter, name)), 0).label(name)
                for name in counters.COLUMNS
            )
        )
        .where(CampaignCounter.campaign_id == Campaign.id)
        .lateral("totals")
    )
    shown_first = sa.case(
        {status: rank for rank, status in enumerate(DASHBOARD_STATUSES)}, value=Campaign.status
    )
    rows = db.session.execute(
        sa.select(
            Campaign,
            *totals.c,
            sa.func.count().over().label("matching"),
            sa.func.now().label("read_at"),
        )
        .outerjoin(totals, sa.true())
        .where(Campaign.status.in_(DASHBOARD_STATUSES))
        .options(joinedload(Campaign.sender), joinedload(Campaign.owner))
        .order_by(shown_first, Campaign.scheduled_at.asc().nulls_last(), Campaign.id)
        .limit(limit)
    ).all()
    if not rows:
        return ActiveCampaigns([], 0)
    last_minute = counters.sent_last_minute(db.session, [row.Campaign.id for row in rows])
    shown = [
        ActiveCampaign(
            row.Campaign,
            _progress_of(row.Campaign, row._mapping, last_minute[row.Campaign.id], row.read_at),
        )
        for row in rows
    ]
    # The messages 131049 holds, as get_progress reads them (its ETA waits for the last
    # one): one more statement for those with retrying messages, from the held index.
    retrying = [a.campaign.id for a in shown if a.progress.retrying and not a.progress.is_finished]
    held = message_states.held_of(db.session, retrying)
    shown = [
        replace(a, progress=replace(a.progress, held=held[a.campaign.id]))
        if a.campaign.id in held
        else a
        for a in shown
    ]
    planned = _with_windows(
        _with_waves([a.progress for a in shown], [a.campaign for a in shown]),
        [a.campaign for a in shown],
    )
    shown = [replace(a, progress=p) for a, p in zip(shown, planned, strict=True)]
    return ActiveCampaigns(shown, rows[0].matching)


@dataclass(frozen=True)
class LimitsNow:
    """Each active sender's WhatsApp limit, and each active campaign owner's, right now."""

    senders: list[tuple[Sender, ratelimit.Usage]]
    owners: list[tuple[User, ratelimit.Usage]]


def limits_now() -> LimitsNow:
    """Used / limit in the current window and the next slot, per sender and per owner."""
    senders = list(
        db.session.scalars(
            sa.select(Sender).where(Sender.is_active.is_(True)).order_by(Sender.name)
        )
    )
    by_sender = sender_usage(senders)
    owners = db.session.scalars(
        sa.select(User)
        .where(
            User.id.in_(sa.select(Campaign.owner_id).where(Campaign.status.in_(DASHBOARD_STATUSES)))
        )
        .order_by(User.email)
    )
    return LimitsNow(
        [(sender, by_sender[sender.id]) for sender in senders],
        [(owner, ratelimit.usage(db.session, ratelimit.campaign_limit(owner))) for owner in owners],
    )
