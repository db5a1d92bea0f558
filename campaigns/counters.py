"""Campaign counters: O(1) progress, updated in the same transaction as each state change.

Each campaign has ``COUNTER_SHARDS`` rows; a change bumps one row picked at random
and a read sums them, so concurrent sends don't queue on one hot row. In-flight
columns (pending, queued, sending, retrying) count messages in that state now;
``sent`` ≥ ``delivered`` ≥ ``read`` count messages that reached at least that
stage (a read message is delivered and sent too) and did not fail afterwards;
failed, skipped and cancelled count terminal messages.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping

import sqlalchemy as sa
from sqlalchemy.orm import Session

from campaigns.models import COUNTER_SHARDS, MessageStatus

IN_FLIGHT = ("pending", "queued", "sending", "retrying")
LEVELS = {"sent": 1, "delivered": 2, "read": 3}
COLUMNS = (*IN_FLIGHT, "sent", "delivered", "read", "failed", "skipped", "cancelled", "total")

# -- create a campaign's shard rows (idempotent)
ENSURE_ROWS = sa.text(
    "INSERT INTO campaign_counters (campaign_id, shard)"
    " SELECT :campaign_id, s FROM generate_series(0, :last) AS s ON CONFLICT DO NOTHING"
)
# -- a campaign's totals, summed over its shards
TOTALS = sa.text(
    "SELECT "
    + ", ".join(f"coalesce(sum({c}), 0)::bigint AS {c}" for c in COLUMNS)
    + " FROM campaign_counters WHERE campaign_id = :campaign_id"
)
# -- messages sent (and failed) per minute, for throughput and the hourly chart
BUMP_MINUTE = sa.text(
    "INSERT INTO campaign_minute_stats (campaign_id, minute, sent, failed)"
    " VALUES (:campaign_id, date_trunc('minute', now()), :sent, :failed)"
    " ON CONFLICT (campaign_id, minute) DO UPDATE"
    " SET sent = campaign_minute_stats.sent + excluded.sent,"
    " failed = campaign_minute_stats.failed + excluded.failed"
)


def transition_deltas(old: MessageStatus | None, new: MessageStatus) -> Counter[str]:
    """How the counters change when one message moves from ``old`` to ``new``."""
    deltas: Counter[str] = Counter()
    if old is None:
        deltas["total"] += 1
    elif old.value in IN_FLIGHT or old.value in ("failed", "skipped", "cancelled"):
        deltas[old.value] -= 1
    old_level = LEVELS.get(old.value, 0) if old else 0
    new_level = LEVELS.get(new.value, 0)
    if new.value in LEVELS:
        for name, level in LEVELS.items():
            if old_level < level <= new_level:
                deltas[name] += 1
    else:
        # Leaving the sent stages (a late "failed" webhook) takes the message out of them.
        for name, level in LEVELS.items():
            if level <= old_level:
                deltas[name] -= 1
        deltas[new.value] += 1
    return deltas


def ensure_rows(session: Session, campaign_id: int) -> None:
    session.execute(ENSURE_ROWS, {"campaign_id": campaign_id, "last": COUNTER_SHARDS - 1})


def apply(session: Session, campaign_id: int, deltas: Mapping[str, int]) -> None:
    """Add ``deltas`` to one random shard of the campaign's counters."""
    changes = {name: n for name, n in deltas.items() if n}
    if not changes:
        return
    unknown = set(changes) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown counters: {unknown}")
    assignments = ", ".join(f"{name} = {name} + :{name}" for name in changes)
    session.execute(
        sa.text(
            f"UPDATE campaign_counters SET {assignments}"  # names checked against COLUMNS above
            " WHERE campaign_id = :campaign_id AND shard = :shard"
        ),
        {**changes, "campaign_id": campaign_id, "shard": random.randrange(COUNTER_SHARDS)},
    )


def totals(session: Session, campaign_id: int) -> dict[str, int]:
    row = session.execute(TOTALS, {"campaign_id": campaign_id}).mappings().one()
    return {name: int(row[name]) for name in COLUMNS}


def bump_minute(session: Session, campaign_id: int, sent: int = 0, failed: int = 0) -> None:
    if sent or failed:
        session.execute(BUMP_MINUTE, {"campaign_id": campaign_id, "sent": sent, "failed": failed})
