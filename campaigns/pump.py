"""The pump: a sending campaign's next messages, queued as batch jobs at the pace its limits allow.

The ``messages`` table is the campaign's durable queue; Procrastinate holds only a
bounded window of it (at most WINDOW_JOBS batch jobs, never further ahead than
WINDOW_HORIZON_SECONDS), which keeps a million-recipient campaign from putting a
million future-dated rows in ``procrastinate_jobs``, makes pause and cancel
instant, and stops rate-limited jobs from stampeding. Each run moves the next
pending rows to queued and defers their jobs, staggered at the pace, in one
transaction with its own next run; the run that finds nothing left in flight
completes the campaign. While only messages 131049 holds remain (nothing pending,
nothing else in flight), it comes back when the earliest is due, or after
HELD_INTERVAL_SECONDS if sooner, rather than every INTERVAL_SECONDS for a day.

A portfolio's 24-hour messaging budget (``ratelimit.consume_budget``) admits the new
recipients: the pump never queues one beyond what the budget has left, so a campaign
larger than the budget goes out in waves over the following days (room opens as the
window leaves the recipients counted a day earlier). While it waits with nothing else on
its way, it comes back when room opens, or after HELD_INTERVAL_SECONDS if sooner.

A campaign with a sending window (``send_windows.py``) queues only the pending messages
whose recipient's zone has its window open now, taking them in id order across the open
zones (``message_states.queue_next_in_zones``: each open zone's first rows from a partial
index), so the campaign keeps the sender busy while the other zones wait; a closed zone's
messages stay pending and go once it opens. The zones and their pending counts are kept
on the campaign (``window_zones``), so no run reads the waiting rows. With nothing to
queue because every zone with messages left is closed, it comes back when the next one
opens, or after HELD_INTERVAL_SECONDS if sooner. A message queued before its window
closes still goes: the pump schedules at most WINDOW_HORIZON_SECONDS ahead, so that is
within about a minute of the close (a transient error's retries, a few minutes; a 131049
hold's, a day later, at the same local hour). A campaign without a window runs the
statements it ran before windows existed.

Every run locks its recipients' numbers and reads their contacts
(``contact_history.capped``), and a campaign with a frequency cap is admitted only the
recipients no other campaign contacted within it: the others are skipped with
``frequency_cap``; the contacts of those the budget then admits are recorded
(``contact_history.record``). The cap is decided here, where two campaigns racing for
one person are told apart under the number's lock row, not at the fan-out (both may have
loaded the person before either sent).

A job carries as many messages as the limits allow in about a second
(:func:`batch_size`, at most ``queues.BATCH_MAX``), so one limiter call and one claim
serve them all; a sender with a minimum gap gets batches of one, spaced by the pump,
because messages of one batch go out together.
"""

from __future__ import annotations

import math
from collections import Counter
from datetime import datetime, timedelta

import sqlalchemy as sa
from flask import current_app

from app import db
from campaigns import (
    campaign_states,
    contact_history,
    counters,
    message_states,
    queues,
    ratelimit,
    send_windows,
)
from campaigns.clock import database_now
from campaigns.models import Campaign, CampaignStatus, Sender
from campaigns.providers.errors import FREQUENCY_CAP_CODE
from campaigns.services.suppressions import phone_hash

# The pump keeps at most this many message jobs in Procrastinate per campaign, and
# never schedules further ahead than the horizon (at 20/min that is ~20 jobs of one).
WINDOW_JOBS = 100
WINDOW_HORIZON_SECONDS = 60.0
# Come back every 2 s: a window of WINDOW_JOBS full batches per interval caps a campaign
# at 5,000 msg/s, above Meta's 1,000 for an upgraded number.
INTERVAL_SECONDS = 2.0
# With only held messages left, come back when the first is due, but at least this
# often: a held message can leave otherwise (maintenance settles one whose job was
# lost), and a resume or "retry failed" brings the waiting pump forward anyway.
HELD_INTERVAL_SECONDS = 300.0
# A batch holds what the limits allow in this long.
BATCH_SECONDS = 1.0


def batch_size(interval: float, min_gap_ms: int) -> int:
    """Messages per job: what the pace allows in BATCH_SECONDS, 1 to BATCH_MAX; 1 with a gap."""
    if min_gap_ms > 0:
        return 1
    return max(1, min(queues.BATCH_MAX, math.floor(BATCH_SECONDS / interval + 1e-9)))


def pump(campaign_id: int) -> bool:
    """Queue the next pending messages at the pace; whether the pump comes back.

    Its next run is deferred in the same transaction (the one way a pump is deferred
    after the first): a crash between the two cannot leave a campaign without one.
    """
    campaign = campaign_states.lock(db.session, campaign_id)
    if campaign is None or campaign.status is not CampaignStatus.SENDING:
        db.session.rollback()
        return False
    totals = counters.totals(db.session, campaign_id)
    in_flight = totals["queued"] + totals["sending"] + totals["retrying"]
    if totals["pending"] == 0 and in_flight == 0:
        campaign_states.complete(db.session, campaign)
        db.session.commit()
        return False
    interval = ratelimit.pace_seconds(campaign.sender, campaign.owner)
    size = batch_size(interval, campaign.sender.min_interval_ms)
    # The window bounds the messages on their way: queued, sending and retrying (a
    # transient outage must not move the whole audience into message-retry), but not
    # those 131049 holds for a day: they keep the campaign sending and take no room, or
    # a day's holds would stop the rest of the audience.
    held = (
        message_states.held(db.session, campaign_id)
        if totals["retrying"]
        else message_states.Held()
    )
    queued = in_flight - held.count
    room = min(WINDOW_JOBS * size, math.ceil(WINDOW_HORIZON_SECONDS / interval)) - queued
    now = database_now(db.session)
    budget = _Budget.of(campaign.sender)
    window = _Window.of(campaign, totals["pending"], now)
    admission = _Admission(campaign, budget)
    if room > 0 and totals["pending"] > 0:
        if window is None:
            ids = message_states.queue_next(db.session, campaign_id, room, admission.admit)
        else:
            ids = window.queue(room, admission)
        start_at = max(now, campaign.pace_cursor_at or now)
        jobs = queues.batches(ids, size)
        slots = [start_at + timedelta(seconds=i * size * interval) for i in range(len(jobs))]
        campaign.pace_cursor_at = start_at + timedelta(seconds=len(ids) * interval)
        queues.defer_sends(db.session, campaign_id, jobs, slots)
    else:
        ids = []
    waiting_for = budget.room_at if budget and not ids else None
    if window is not None and not ids and not admission.skipped:
        # The open zones' messages wait for the budget's room, if it refused them; the
        # closed zones', for their window.
        waiting_for = _earliest(waiting_for, window.next_opening(closed_only=bool(waiting_for)))
    next_run = _next_run(now, totals["pending"], queued, held, waiting_for)
    queues.defer_pump(db.session, campaign_id, next_run)
    db.session.commit()
    return True


class _Window:
    """A campaign's sending window as one pump run applies it: the messages of the zones
    open now, in id order across them; the zones' pending counts kept on the campaign
    (``window_zones``, recorded by the fan-out), counted again (one scan of the pending
    rows, under the campaign's lock: rare) only when they cannot be trusted:

    - none kept (NULL): something other than the pump moved messages back to pending
      ("retry failed", a job's abort, a resume: ``message_states.forget_zone_counts``;
      a pause counts those it moves);
    - their sum off the pending counter: something moved messages out of pending (an
      erasure, which keeps no count: as every move back to pending counts what it
      moves or drops the counts, a kept count is never below its zone's, so a sum that
      matches is every zone's);
    - a run that asked open zones for what their counts promised got fewer rows (a
      safety net: counts off by a cause this list missed would otherwise keep the
      campaign waiting on a zone that has nothing, forever).
    """

    def __init__(self, campaign: Campaign, window: send_windows.Window, now: datetime) -> None:
        self.campaign = campaign
        self.window = window
        self.now = now
        self.fallback = current_app.config["DISPLAY_TIMEZONE"]
        self.counts: dict[str, int] = dict(campaign.window_zones or {})

    @classmethod
    def of(cls, campaign: Campaign, pending: int, now: datetime) -> _Window | None:
        window = send_windows.Window.of(campaign.send_window)
        if window is None:
            return None
        self = cls(campaign, window, now)
        if sum(self.counts.values()) != pending:
            self.recount()
        return self

    def recount(self) -> None:
        self.counts = message_states.pending_by_zone(db.session, self.campaign.id)
        self.campaign.window_zones = self.counts

    def queue(self, room: int, admission: _Admission) -> list[int]:
        """Queue up to ``room`` pending messages of the open zones; the rest stay pending."""
        waiting = [zone for zone, n in self.counts.items() if n > 0]
        open_now = [
            zone
            for zone in waiting
            if send_windows.is_open(self.window, zone or self.fallback, self.now)
        ]
        ids, zone_of = message_states.queue_next_in_zones(
            db.session, self.campaign.id, room, open_now, admission.admit
        )
        found = Counter(zone_of.values())
        if len(zone_of) < room and any(found[zone] < self.counts[zone] for zone in open_now):
            # Every open zone gave all it has (the rows came short of the limit), and one
            # has fewer than its count says (or a row was locked by an erasure).
            self.recount()
            return ids
        # Pending no more: queued, or skipped by the frequency cap.
        gone = Counter(zone_of[message_id] for message_id in (*ids, *admission.skipped))
        if gone:
            self.counts = {
                zone: n - gone[zone] for zone, n in self.counts.items() if n - gone[zone] > 0
            }
            self.campaign.window_zones = self.counts
        return ids

    def next_opening(self, *, closed_only: bool = False) -> datetime | None:
        """When a zone with pending messages is next open (now, if one is, unless
        ``closed_only``: then the first closed one's opening)."""
        zones = [zone or self.fallback for zone, n in self.counts.items() if n > 0]
        if closed_only:
            zones = [z for z in zones if not send_windows.is_open(self.window, z, self.now)]
        return send_windows.first_opening(self.window, zones, self.now)


def _earliest(*times: datetime | None) -> datetime | None:
    known = [t for t in times if t is not None]
    return min(known) if known else None


class _Admission:
    """Who of a pump run's next messages may go: the frequency cap first (those it refuses
    are skipped for good), then the 24-hour budget (those it refuses wait); the contact
    is recorded only for those both admit, in the run's transaction, so a message the
    budget holds back contacts no one. A pause gives back the contacts of the messages
    admitted but not yet called (``contact_history.release``)."""

    def __init__(self, campaign: Campaign, budget: _Budget | None) -> None:
        self.campaign = campaign
        self.budget = budget
        self.skipped: set[int] = set()  # the ids the cap skipped

    def admit(self, rows: list[sa.Row]) -> set[int]:
        phones = {row.id: row.phone for row in rows if row.phone}
        capped = contact_history.capped(
            db.session, self.campaign.id, self.campaign.frequency_cap_days, phones
        )
        self.skipped = set(
            message_states.skip_pending(
                db.session, self.campaign.id, sorted(capped), FREQUENCY_CAP_CODE
            )
        )
        rest = [row for row in rows if row.id not in capped]
        admitted = self.budget.admit(rest) if self.budget else {row.id for row in rest}
        contact_history.record(
            db.session,
            self.campaign.id,
            {message_id: phone for message_id, phone in phones.items() if message_id in admitted},
        )
        return admitted


class _Budget:
    """The sender's portfolio's 24-hour budget as one pump run admits recipients by it."""

    def __init__(self, budget: ratelimit.Budget) -> None:
        self.budget = budget
        self.room_at: datetime | None = None  # set when it refused some: room opens then

    @classmethod
    def of(cls, sender: Sender) -> _Budget | None:
        budget = ratelimit.budget(sender, current_app.config["MESSAGING_LIMIT_MARGIN_PERCENT"])
        return None if budget is None else cls(budget)

    def admit(self, rows: list[sa.Row]) -> set[int]:
        """The messages whose recipient the budget counts now (or counted in the last 24
        hours); one limiter call for the lot."""
        refused, room_at = budget_refusals(self.budget, {row.id: row.phone for row in rows})
        if refused:
            self.room_at = room_at
        return {row.id for row in rows} - refused


def budget_refusals(
    budget: ratelimit.Budget, phones: dict[int, str | None]
) -> tuple[set[int], datetime | None]:
    """Count the messages' recipients in the budget, as many as fit (one limiter call):
    (the ids it had no room for, when room opens). A message without a number (its
    person erased) needs none: its claim cancels it, nothing is sent."""
    hashes = {message_id: phone_hash(phone) for message_id, phone in phones.items() if phone}
    if not hashes:
        return set(), None
    decision = ratelimit.consume_budget(db.session, budget, list(hashes.values()))
    refused = {message_id for message_id, digest in hashes.items() if digest in decision.refused}
    if not refused:
        return set(), None
    # Nothing counted and still no room (a limit of 0): look again now and then.
    room_at = decision.next_room_at or decision.decided_at + timedelta(
        seconds=HELD_INTERVAL_SECONDS
    )
    return refused, room_at


def _next_run(
    now: datetime,
    pending: int,
    on_their_way: int,
    held: message_states.Held,
    budget_room_at: datetime | None = None,
) -> datetime:
    """When the pump comes back: INTERVAL_SECONDS on, unless only held messages remain;
    then when the first of them is due (its job takes it, and the runs after it see it
    in flight and complete the campaign once it settles), HELD_INTERVAL_SECONDS at most.
    Waiting for the 24-hour budget with nothing on its way: when room opens (or the first
    held message is due, if sooner), HELD_INTERVAL_SECONDS at most."""
    soon = now + timedelta(seconds=INTERVAL_SECONDS)
    if on_their_way > 0:
        return soon
    due = [held.first_due] if held.count and held.first_due is not None else []
    if pending:
        if budget_room_at is None:
            return soon
        due.append(budget_room_at)
    if not due:
        return soon
    return max(soon, min(*due, now + timedelta(seconds=HELD_INTERVAL_SECONDS)))
