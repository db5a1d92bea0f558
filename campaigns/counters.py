"""Campaign counters: O(1) progress, updated in the same transaction as each state change.

Each campaign has ``COUNTER_SHARDS`` rows; a change bumps one row picked at random
and a read sums them, so concurrent sends don't queue on one hot row. In-flight
columns (pending, queued, sending, retrying) count messages in that state now;
``sent`` ≥ ``delivered`` ≥ ``read`` count messages that reached at least that
stage (a read message is delivered and sent too) and did not fail afterwards;
failed, skipped and cancelled count terminal messages. How each change of a message's
state moves them is ``message_states.counter_deltas``. ``replied`` and ``clicked`` count
messages their recipient answered (a reply, a button click), once each (``answers.py``).
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from app import AnySession, rows_changed
from campaigns.models import COUNTER_SHARDS

IN_FLIGHT = ("pending", "queued", "sending", "retrying")
# What recipients answered (answers.py): messages replied to, and with a button clicked.
ANSWERS = ("replied", "clicked")
COLUMNS = (
    *IN_FLIGHT,
    "sent",
    "delivered",
    "read",
    "failed",
    "skipped",
    "cancelled",
    "total",
    *ANSWERS,
)

# -- create a campaign's shard rows (idempotent)
ENSURE_ROWS = sa.text(
    "INSERT INTO campaign_counters (campaign_id, shard)"
    " SELECT :campaign_id, s FROM generate_series(0, :last) AS s ON CONFLICT DO NOTHING"
)
_SUMS = ", ".join(f"coalesce(sum({c}), 0)::bigint AS {c}" for c in COLUMNS)
# -- a campaign's totals, summed over its shards
TOTALS = sa.text(f"SELECT {_SUMS} FROM campaign_counters WHERE campaign_id = :campaign_id")


def minute_upsert(rows_sql: str) -> str:
    """Add ``rows_sql``'s (campaign_id, minute, shard, sent, failed) to the per-minute stats."""
    return (
        "INSERT INTO campaign_minute_stats (campaign_id, minute, shard, sent, failed) "
        + rows_sql
        + " ON CONFLICT (campaign_id, minute, shard) DO UPDATE"
        " SET sent = campaign_minute_stats.sent + excluded.sent,"
        " failed = campaign_minute_stats.failed + excluded.failed"
    )


# -- messages sent (and failed) per minute, for throughput and the hourly chart
BUMP_MINUTE = sa.text(
    minute_upsert("VALUES (:campaign_id, date_trunc('minute', now()), :shard, :sent, :failed)")
)
# -- messages failed this minute by error code ('' for none), for /metrics
BUMP_FAILURE_MINUTE = sa.text(
    "INSERT INTO message_failure_minutes AS f (minute, campaign_id, error_code, shard, failed)"
    " VALUES (date_trunc('minute', now()), :campaign_id, :code, :shard, :failed)"
    " ON CONFLICT (minute, campaign_id, error_code, shard) DO UPDATE"
    " SET failed = f.failed + excluded.failed"
)
# -- sent over the sliding last 60 s: this minute's bucket in full, plus the previous
# bucket weighted by how much of it is still inside the window (sends assumed even)
_LAST_MINUTE_SUM = (
    "round(coalesce(sum(sent * CASE"
    "   WHEN minute = date_trunc('minute', now()) THEN 1"
    "   ELSE 1 - extract(epoch FROM now() - date_trunc('minute', now())) / 60 END), 0))::bigint"
)
_LAST_TWO_MINUTES = "minute >= date_trunc('minute', now()) - interval '1 minute'"
SENT_LAST_MINUTE = sa.text(
    f"SELECT campaign_id, {_LAST_MINUTE_SUM} FROM campaign_minute_stats"
    f" WHERE campaign_id = ANY(:campaign_ids) AND {_LAST_TWO_MINUTES} GROUP BY campaign_id"
)
# -- a campaign's sent and failed messages over the last RECENT_MINUTES minute buckets
RECENT_OUTCOMES = sa.text(
    "SELECT coalesce(sum(sent), 0)::bigint, coalesce(sum(failed), 0)::bigint"
    " FROM campaign_minute_stats WHERE campaign_id = :campaign_id"
    " AND minute > date_trunc('minute', now()) - :minutes * interval '1 minute'"
)
RECENT_MINUTES = 5
# -- one campaign's progress in one round trip: totals, the last minute, the database's now
SNAPSHOT = sa.text(
    f"SELECT {_SUMS}, (SELECT {_LAST_MINUTE_SUM} FROM campaign_minute_stats"
    f"     WHERE campaign_id = :campaign_id AND {_LAST_TWO_MINUTES}) AS sent_last_minute"
    ", now() AS read_at"
    " FROM campaign_counters WHERE campaign_id = :campaign_id"
)
# -- sent and failed per minute over the hour ending at :until, empty minutes included
MINUTES_OF_HOUR = sa.text(
    "WITH hour AS (SELECT date_trunc('minute', CAST(:until AS timestamptz)) AS last)"
    " SELECT m.minute, coalesce(sum(s.sent), 0)::bigint AS sent,"
    " coalesce(sum(s.failed), 0)::bigint AS failed"
    " FROM hour, generate_series(hour.last - interval '59 minutes', hour.last, '1 minute')"
    "   AS m(minute)"
    " LEFT JOIN campaign_minute_stats AS s"
    "   ON s.campaign_id = :campaign_id AND s.minute = m.minute"
    " GROUP BY m.minute ORDER BY m.minute"
)


def ensure_rows(session: AnySession, campaign_id: int) -> None:
    session.execute(ENSURE_ROWS, {"campaign_id": campaign_id, "last": COUNTER_SHARDS - 1})


def random_shard() -> int:
    return random.randrange(COUNTER_SHARDS)


def shard_for(session: AnySession) -> int:
    """The shard this transaction moves: chosen at random, then the same until it ends.

    A transaction that moves counters several times (a batch's outcomes: sent, tried
    again, failed) then locks one counter row and one minute row, counters first, so
    two transactions never wait on each other's shards in opposite orders (a deadlock).
    """
    transaction = session.connection().get_transaction()  # begun now if it was not
    held = session.info.get("counter_shard")
    if held is not None and held[0] is transaction:
        return int(held[1])
    shard = random_shard()
    session.info["counter_shard"] = (transaction, shard)
    return shard


def _changes(deltas: Mapping[str, int]) -> dict[str, int]:
    changes = {name: int(n) for name, n in deltas.items() if n}
    unknown = set(changes) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown counters: {unknown}")
    return changes


def shard_update(deltas: Mapping[str, int], campaign_id_sql: str) -> str:
    """SQL adding constant ``deltas`` to shard ``:shard`` of a campaign, to embed in a statement."""
    # Names checked against COLUMNS, numbers are ints: nothing here comes from a user.
    assignments = ", ".join(f"{name} = {name} + {n}" for name, n in _changes(deltas).items())
    return (
        f"UPDATE campaign_counters SET {assignments}"
        f" WHERE campaign_id = {campaign_id_sql} AND shard = :shard"
    )


def apply(session: AnySession, campaign_id: int, deltas: Mapping[str, int]) -> None:
    """Add ``deltas`` to the campaign's counters, on this transaction's shard."""
    if _changes(deltas):
        session.execute(
            sa.text(shard_update(deltas, ":campaign_id")),
            {"campaign_id": campaign_id, "shard": shard_for(session)},
        )


def totals(session: AnySession, campaign_id: int) -> dict[str, int]:
    row = session.execute(TOTALS, {"campaign_id": campaign_id}).mappings().one()
    return {name: int(row[name]) for name in COLUMNS}


def totals_of(session: AnySession, campaign_ids: Collection[int]) -> dict[int, dict[str, int]]:
    """Each campaign's totals in one statement (a list page's); all zero for one without rows."""
    if not campaign_ids:
        return {}
    rows = session.execute(
        sa.text(
            f"SELECT campaign_id, {_SUMS} FROM campaign_counters"
            " WHERE campaign_id = ANY(:ids) GROUP BY campaign_id"
        ),
        {"ids": list(campaign_ids)},
    ).mappings()
    found = {row["campaign_id"]: {name: int(row[name]) for name in COLUMNS} for row in rows}
    zero = dict.fromkeys(COLUMNS, 0)
    return {campaign_id: found.get(campaign_id, dict(zero)) for campaign_id in campaign_ids}


def bump_minute(
    session: AnySession,
    campaign_id: int,
    sent: int = 0,
    failed: int = 0,
    error_code: str | None = None,
) -> None:
    """Count this minute's sends and failures; failures by ``error_code`` too (/metrics)."""
    if not (sent or failed):
        return
    params = {"campaign_id": campaign_id, "shard": shard_for(session)}
    session.execute(BUMP_MINUTE, params | {"sent": sent, "failed": failed})
    if failed:
        # After the campaign's counter and minute rows: their lock orders this row's writers.
        session.execute(BUMP_FAILURE_MINUTE, params | {"failed": failed, "code": error_code or ""})


# How long the per-minute figures of /metrics are kept (campaign_minute_stats, which the
# campaign page's hourly chart reads, is kept with its campaign).
OPS_MINUTES_KEPT = "1 day"
# -- statuses WhatsApp reported, applied now: how many, their lag and the newest's time
RECORD_WEBHOOK_LAGS = sa.text(
    "INSERT INTO webhook_status_minutes AS w"
    " (minute, shard, statuses, lag_seconds_sum, lag_seconds_max, last_applied_at)"
    " SELECT date_trunc('minute', now()), :shard, count(*), sum(lag), max(lag), now()"
    " FROM (SELECT greatest(extract(epoch FROM now() - at), 0) AS lag"
    "       FROM unnest(CAST(:ats AS timestamptz[])) AS t(at)) AS l"
    " ON CONFLICT (minute, shard) DO UPDATE"
    " SET statuses = w.statuses + excluded.statuses,"
    " lag_seconds_sum = w.lag_seconds_sum + excluded.lag_seconds_sum,"
    " lag_seconds_max = greatest(w.lag_seconds_max, excluded.lag_seconds_max),"
    " last_applied_at = greatest(w.last_applied_at, excluded.last_applied_at)"
)
DELETE_OLD_OPS_MINUTES = tuple(
    sa.text(
        f"DELETE FROM {table} WHERE minute < now() - interval '{OPS_MINUTES_KEPT}'"
        f" AND ctid = ANY(ARRAY(SELECT ctid FROM {table}"
        f"   WHERE minute < now() - interval '{OPS_MINUTES_KEPT}' LIMIT :batch))"
    )
    for table in ("message_failure_minutes", "webhook_status_minutes")
)


# -- the /metrics figures of one minute, every campaign (campaign_minute_stats_minute_idx)
OUTCOMES_IN_MINUTE = sa.text(
    "SELECT coalesce(sum(sent), 0)::bigint, coalesce(sum(failed), 0)::bigint"
    " FROM campaign_minute_stats WHERE minute = :minute"
)
FAILED_IN_MINUTE = sa.text(
    "SELECT error_code, sum(failed)::bigint FROM message_failure_minutes"
    " WHERE minute = :minute GROUP BY error_code"
)
WEBHOOKS_IN_MINUTE = sa.text(
    "SELECT coalesce(sum(statuses), 0)::bigint AS statuses,"
    " coalesce(sum(lag_seconds_sum), 0) AS lag_sum, coalesce(max(lag_seconds_max), 0) AS lag_max"
    " FROM webhook_status_minutes WHERE minute = :minute"
)
# -- how long ago the newest status was applied (NULL: none in the last OPS_MINUTES_KEPT)
LAST_WEBHOOK_STATUS_AGE = sa.text(
    "SELECT extract(epoch FROM now() - max(last_applied_at)) FROM webhook_status_minutes"
    " WHERE minute = (SELECT max(minute) FROM webhook_status_minutes)"
)


@dataclass(frozen=True)
class WebhookMinute:
    statuses: int
    lag_seconds_sum: float
    lag_seconds_max: float


def outcomes_in_minute(session: AnySession, minute: datetime) -> tuple[int, int]:
    """(sent, failed) in the minute starting at ``minute``, every campaign."""
    sent, failed = session.execute(OUTCOMES_IN_MINUTE, {"minute": minute}).one()
    return int(sent), int(failed)


def failed_in_minute(session: AnySession, minute: datetime) -> dict[str, int]:
    """Messages failed in the minute starting at ``minute`` by error code ('' for none)."""
    return {code: int(n) for code, n in session.execute(FAILED_IN_MINUTE, {"minute": minute})}


def webhooks_in_minute(session: AnySession, minute: datetime) -> WebhookMinute:
    """Statuses applied in the minute starting at ``minute`` and their lags."""
    row = session.execute(WEBHOOKS_IN_MINUTE, {"minute": minute}).one()
    return WebhookMinute(int(row.statuses), float(row.lag_sum), float(row.lag_max))


def last_webhook_status_age(session: AnySession) -> float | None:
    """Seconds since the newest status was applied; None if none in OPS_MINUTES_KEPT."""
    seconds = session.execute(LAST_WEBHOOK_STATUS_AGE).scalar_one()
    return None if seconds is None else max(float(seconds), 0.0)


def record_webhook_lags(session: AnySession, applied_at: Sequence[datetime]) -> None:
    """Statuses applied now, each with WhatsApp's own time for it: their lag, per minute.

    One row write per webhook (a random shard of the minute's), in the caller's
    transaction. A timestamp ahead of the database's clock counts as no lag.
    """
    if applied_at:
        session.execute(RECORD_WEBHOOK_LAGS, {"shard": random_shard(), "ats": list(applied_at)})


def delete_old_ops_minutes(session: AnySession, batch: int) -> int:
    """Delete up to ``batch`` rows of each /metrics minute table older than OPS_MINUTES_KEPT."""
    deleted = 0
    for statement in DELETE_OLD_OPS_MINUTES:
        deleted += rows_changed(session, statement.bindparams(batch=batch))
    return deleted


def recent_outcomes(session: AnySession, campaign_id: int) -> tuple[int, int]:
    """(sent, failed) in the last RECENT_MINUTES minutes, this one included.

    A message accepted and then failed by a status webhook counts in both, so the
    failure share this gives errs low.
    """
    row = session.execute(
        RECENT_OUTCOMES, {"campaign_id": campaign_id, "minutes": RECENT_MINUTES}
    ).one()
    return int(row[0]), int(row[1])


def sent_last_minute(session: AnySession, campaign_ids: Collection[int]) -> dict[int, int]:
    """Messages sent in the last 60 s per campaign (0 for a campaign that sent none)."""
    rows = session.execute(SENT_LAST_MINUTE, {"campaign_ids": list(campaign_ids)})
    return {campaign_id: 0 for campaign_id in campaign_ids} | {c: int(n) for c, n in rows}


def snapshot(session: AnySession, campaign_id: int) -> tuple[dict[str, int], int, datetime]:
    """(totals, sent in the last minute, the database's now()) in one statement."""
    row = session.execute(SNAPSHOT, {"campaign_id": campaign_id}).mappings().one()
    return {name: int(row[name]) for name in COLUMNS}, int(row["sent_last_minute"]), row["read_at"]


def minutes_of_hour(session: AnySession, campaign_id: int, until: datetime) -> list[sa.Row]:
    """(minute, sent, failed) for each of the 60 minutes up to ``until``, oldest first."""
    params = {"campaign_id": campaign_id, "until": until}
    return list(session.execute(MINUTES_OF_HOUR, params))
