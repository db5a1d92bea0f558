"""The pump: a sending campaign's next messages, queued as jobs at the pace its limits allow.

The ``messages`` table is the campaign's durable queue; Procrastinate holds only a
bounded window of it (at most WINDOW_MAX jobs, never further ahead than
WINDOW_HORIZON_SECONDS), which keeps a million-recipient campaign from putting a
million future-dated rows in ``procrastinate_jobs``, makes pause and cancel
instant, and stops rate-limited jobs from stampeding. Each run moves the next
pending rows to queued and defers their jobs, staggered at the pace, in one
transaction with its own next run; the run that finds nothing left in flight
completes the campaign.
"""

from __future__ import annotations

import math
from datetime import timedelta

from app import db
from campaigns import campaign_states, counters, message_states, queues, ratelimit
from campaigns.clock import database_now
from campaigns.models import CampaignStatus

# The pump keeps at most this many message jobs in Procrastinate per campaign, and
# never schedules further ahead than the horizon (at 20/min that is ~20 jobs).
WINDOW_MAX = 1000
WINDOW_HORIZON_SECONDS = 60.0
# Come back every 2 s: a window of WINDOW_MAX per interval caps a campaign at 500/s
# (at 5 s, 200/s was below what the baseline queue reaches on two cores).
INTERVAL_SECONDS = 2.0


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
    room = min(WINDOW_MAX, math.ceil(WINDOW_HORIZON_SECONDS / interval)) - in_flight
    now = database_now(db.session)
    if room > 0 and totals["pending"] > 0:
        ids = message_states.queue_next(db.session, campaign_id, room)
        start_at = max(now, campaign.pace_cursor_at or now)
        slots = [start_at + timedelta(seconds=i * interval) for i in range(len(ids))]
        campaign.pace_cursor_at = start_at + timedelta(seconds=len(ids) * interval)
        queues.defer_sends(db.session, ids, slots)
    queues.defer_pump(db.session, campaign_id, now + timedelta(seconds=INTERVAL_SECONDS))
    db.session.commit()
    return True
