"""Rate limits that hold across every worker: Postgres advisory locks and counter tables.

The only module with rate-limit SQL. The logic is in SQL functions installed by
migrations 0003 and 0008 (``disparo_rate_limit_consume`` and friends): one call
locks the keys in a fixed order, reads the database's clock, checks every key's
buckets and minimum gap, and takes a grant from every key or from none.

A grant may be of several units (a batch of messages, one limiter call): all
or nothing, or partial (the most units every key can give now). Its units share
one grant time, so they count together in the window, and a key with a minimum
gap gives one unit per call. :func:`consume_each` takes one unit from each of
several keys, each decided on its own, in one call (a batch's retry limits).

Transactions: :func:`consume` (like :func:`consume_each`) runs that call on its
own pooled connection in autocommit mode, so the call *is* its transaction and
is committed before :func:`consume` returns. The advisory locks are then held
only while the server runs the function, never across a round trip to Python,
the caller's HTTP send or the rest of a web request; and the caller's session
and transaction are neither used nor committed. A grant therefore stands even if
the caller's work later rolls back (the limiter errs towards sending less, never
more). The cost: a caller that holds a session connection needs a second one
from the pool for the call, so pools must have room for one more per concurrent
caller.

Grants are committed with ``synchronous_commit = off`` (transaction-local, set by
the function only when it grants): on a single key the grant path is otherwise
bound by the WAL flush that every commit waits for while still holding the key's
lock, and bench/README.md measures 1.7 times the grants per second without
it. What it risks: if the *database server* crashes (an application crash loses
nothing), the grants of the last ~0.6 s (3 x wal_writer_delay) before the crash
may be lost on recovery, so after the restart a key can briefly overspend by that
many grants in its window, and one minimum gap can come out short. WAL is flushed
in order, so any later synchronous commit (a message marked sent, say) makes the
grants before it durable too: only grants whose send was never recorded are at
risk. ``consume(..., synchronous_commit=True)`` keeps the strict guarantee.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa

from app import rows_changed
from campaigns import slowdown

if TYPE_CHECKING:
    from app import AnySession
    from campaigns.models import Sender, User

logger = logging.getLogger(__name__)

# Each statement's first line says what it is for; it also shows in pg_stat_activity.
CONSUME = sa.text("""
-- consume units from every key (all or nothing, or partial), in one call (its own transaction)
SELECT allowed, granted, decided_at, retry_after, remaining, reset_after
  FROM disparo_rate_limit_consume(CAST(:keys AS text[]), CAST(:limits AS integer[]),
                                  CAST(:windows_ms AS integer[]), CAST(:gaps_ms AS integer[]),
                                  CAST(:async_commit AS boolean), CAST(:units AS integer),
                                  CAST(:partial AS boolean))
""")

CONSUME_EACH = sa.text("""
-- consume one unit from each key on its own, in one call (its own transaction)
SELECT key_index, allowed, decided_at, retry_after, remaining, reset_after
  FROM disparo_rate_limit_consume_each(CAST(:keys AS text[]), CAST(:limits AS integer[]),
                                       CAST(:windows_ms AS integer[]),
                                       CAST(:gaps_ms AS integer[]), CAST(:async_commit AS boolean))
 ORDER BY key_index
""")

USAGE = sa.text("""
-- usage of one key in its current window, without consuming or locking anything
SELECT used, next_slot_at, reset_at, checked_at
  FROM disparo_rate_limit_usage(CAST(:key AS text), CAST(:limit AS integer),
                                CAST(:window_ms AS integer), CAST(:gap_ms AS integer))
""")

DELETE_OLD = sa.text("""
-- delete buckets every window has left, and last grants older than any gap
WITH old_keys AS (
    DELETE FROM rate_limit_keys
     WHERE last_grant_at <= clock_timestamp()
                            - CAST(:longest_gap_ms AS integer) * interval '1 millisecond'
), old_buckets AS (
    DELETE FROM rate_limit_buckets
     WHERE bucket_start <= clock_timestamp()
                           - (CAST(:longest_window_ms AS integer)
                              + disparo_rate_limit_bucket_ms(CAST(:longest_window_ms AS integer)))
                             * interval '1 millisecond'
    RETURNING 1
)
SELECT count(*) FROM old_buckets
""")

BINDING_KEY = sa.text("""
-- of a refused call's keys, the one whose next slot opens last (it held the units back)
SELECT k.key
  FROM unnest(CAST(:keys AS text[]), CAST(:limits AS integer[]),
              CAST(:windows_ms AS integer[]), CAST(:gaps_ms AS integer[]))
       WITH ORDINALITY AS k(key, lim, window_ms, gap_ms, i)
 CROSS JOIN LATERAL disparo_rate_limit_usage(k.key, k.lim, k.window_ms, k.gap_ms) AS u
 ORDER BY u.next_slot_at DESC, k.i
 LIMIT 1
""")

RECORD_DENIALS = sa.text("""
-- units the limiter held back this minute, by kind of key (for /metrics)
INSERT INTO rate_limit_denial_minutes AS d (minute, kind, shard, units)
SELECT date_trunc('minute', now()), t.kind, CAST(:shard AS smallint), t.units
  FROM unnest(CAST(:kinds AS text[]), CAST(:units AS bigint[])) AS t(kind, units)
    ON CONFLICT (minute, kind, shard) DO UPDATE SET units = d.units + excluded.units
""")

DENIALS_IN_MINUTE = sa.text("""
-- units held back by kind of key in the minute starting at :minute (for /metrics)
SELECT kind, sum(units)::bigint AS units FROM rate_limit_denial_minutes
 WHERE minute = :minute GROUP BY kind
""")

DELETE_OLD_DENIALS = sa.text("""
-- denial counts older than a day: /metrics reads only the last complete minute
DELETE FROM rate_limit_denial_minutes WHERE minute < now() - interval '1 day'
""")

DENIAL_SHARDS = 8
MINUTE = 60.0
RETRY_LIMIT = 10
RETRY_WINDOW_SECONDS = 300.0
# Cleanup keeps buckets for the longest window any limiter may use (the retry
# limiter's), and last grants for the longest gap a sender may have (its check
# constraint allows up to an hour); Limit refuses anything longer.
LONGEST_WINDOW_SECONDS = RETRY_WINDOW_SECONDS
LONGEST_GAP_SECONDS = 3600.0
KEY_MAX_LENGTH = 200  # rate_limit_buckets.key and rate_limit_keys.key
INT_MAX = 2**31 - 1  # the SQL functions take integer limits


def _whole_ms(seconds: float) -> int:
    # Rounded up, so a window or gap is never shortened: 0.0005 s -> 1 ms. The
    # inner round() drops float noise first (0.3 * 1000 = 300.00000000000006).
    return math.ceil(round(seconds * 1000, 6))


@dataclass(frozen=True)
class Limit:
    """At most ``limit`` units per ``window_seconds`` for ``key``; grants ``min_gap_seconds`` apart.

    A grant is of one unit unless :func:`consume` is asked for more.
    """

    key: str
    limit: int
    window_seconds: float
    min_gap_seconds: float = 0

    def __post_init__(self) -> None:
        if not self.key or len(self.key) > KEY_MAX_LENGTH:
            raise ValueError(f"a limiter key has 1 to {KEY_MAX_LENGTH} characters: {self.key!r}")
        if not 1 <= self.limit <= INT_MAX:
            raise ValueError(f"{self.key}: the limit must be 1 to {INT_MAX}, not {self.limit}")
        if not 0.001 <= self.window_seconds <= LONGEST_WINDOW_SECONDS:
            raise ValueError(
                f"{self.key}: the window must be 1 ms to {LONGEST_WINDOW_SECONDS:g} s,"
                f" not {self.window_seconds}"
            )
        if not 0 <= self.min_gap_seconds <= LONGEST_GAP_SECONDS:
            raise ValueError(
                f"{self.key}: the minimum gap must be 0 to {LONGEST_GAP_SECONDS:g} s,"
                f" not {self.min_gap_seconds}"
            )

    @property
    def window_ms(self) -> int:
        return _whole_ms(self.window_seconds)

    @property
    def min_gap_ms(self) -> int:
        return _whole_ms(self.min_gap_seconds)


@dataclass(frozen=True)
class Decision:
    """The answer to one :func:`consume` call (or one key of :func:`consume_each`),
    timed by the database's clock.

    ``granted`` is the units granted (``allowed``: more than none), all at
    ``granted_at``. ``retry_after`` is 0 when every unit asked for was granted,
    else the seconds until the keys would allow what is still wanted (if nobody
    else takes the room first): all the units of an all-or-nothing call, one
    more unit after a partial one. ``remaining`` and ``reset_after`` describe
    the tightest key after this decision, for the ``X-RateLimit-Remaining`` /
    ``-Reset`` headers.
    """

    allowed: bool
    granted_at: datetime | None
    retry_after: float
    remaining: int = 0
    reset_after: float = 0.0
    decided_at: datetime | None = None
    granted: int = 0


@dataclass(frozen=True)
class Usage:
    """One key's window now: used / limit, and when the next slot opens."""

    key: str
    limit: int
    used: int
    next_slot_at: datetime
    reset_at: datetime
    checked_at: datetime

    @property
    def remaining(self) -> int:
        return max(self.limit - self.used, 0)

    @property
    def wait_seconds(self) -> float:
        """Seconds until the next slot opens (0 if one is open now)."""
        return max((self.next_slot_at - self.checked_at).total_seconds(), 0.0)


def _engine(session: AnySession) -> sa.Engine:
    # Connection.engine and Engine.engine both lead to the engine.
    return session.get_bind().engine


def _limit_params(limits: Sequence[Limit], synchronous_commit: bool) -> dict[str, object]:
    keys = [limit.key for limit in limits]
    if len(set(keys)) != len(keys):
        raise ValueError(f"a key appears twice: {keys}")
    return {
        "keys": keys,
        "limits": [limit.limit for limit in limits],
        "windows_ms": [limit.window_ms for limit in limits],
        "gaps_ms": [limit.min_gap_ms for limit in limits],
        "async_commit": not synchronous_commit,
    }


def consume(
    session: AnySession,
    limits: Sequence[Limit],
    *,
    units: int = 1,
    partial: bool = False,
    synchronous_commit: bool = False,
) -> Decision:
    """Take ``units`` from every limit, in one committed server-side call.

    All or nothing by default: every unit from every limit, or none. With
    ``partial``, the most units (up to ``units``) that every limit can give now,
    or none. The units of one call share one grant time, so a limit with a
    minimum gap gives one unit per call: asking it for more than one all or
    nothing, or for more than its limit, could never be granted (ValueError).
    """
    if not limits:
        raise ValueError("consume() needs at least one limit")
    if not 1 <= units <= INT_MAX:
        raise ValueError(f"units must be 1 to {INT_MAX}, not {units}")
    if not partial and units > 1:
        for limit in limits:
            if limit.min_gap_ms > 0:
                raise ValueError(
                    f"{limit.key} has a minimum gap: {units} units all or nothing can never"
                    " be granted (one unit per call; partial=True grants one)"
                )
            if units > limit.limit:
                raise ValueError(
                    f"{limit.key}: {units} units all or nothing can never be granted"
                    f" (its limit is {limit.limit})"
                )
    params = _limit_params(limits, synchronous_commit) | {"units": units, "partial": partial}
    with _autocommit(session) as connection:
        (row,) = connection.execute(CONSUME, params).all()
        if row.granted < units:
            kind = (
                key_kind(limits[0].key) if len(limits) == 1 else _binding_kind(connection, params)
            )
            _record_denials(connection, {kind: units - row.granted})
    return _decision(row, row.granted)


def consume_each(
    session: AnySession, limits: Sequence[Limit], *, synchronous_commit: bool = False
) -> list[Decision]:
    """Take one unit from each limit on its own, in one committed server-side call.

    One decision per limit, in order: a refusal on one key takes nothing from
    the others. Same locks, clock and commit as :func:`consume`. No limits, no call.
    """
    if not limits:
        return []
    with _autocommit(session) as connection:
        rows = connection.execute(CONSUME_EACH, _limit_params(limits, synchronous_commit)).all()
        denied: dict[str, int] = {}
        for limit, row in zip(limits, rows, strict=True):
            if not row.allowed:
                kind = key_kind(limit.key)
                denied[kind] = denied.get(kind, 0) + 1
        _record_denials(connection, denied)
    return [_decision(row, 1 if row.allowed else 0) for row in rows]


@contextmanager
def _autocommit(session: AnySession) -> Iterator[sa.Connection]:
    """A pooled connection of its own in autocommit: each limiter call is its transaction."""
    with _engine(session).connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT")
        yield connection


# The kinds of key Disparo makes (the prefix before the colon); /metrics counts denials
# by kind, and any other key (a test's, a future one's) as "other", so labels stay few.
KEY_KINDS = frozenset({"whatsapp", "campaign", "api", "retry", "budget"})


def key_kind(key: str) -> str:
    kind = key.partition(":")[0]
    return kind if kind in KEY_KINDS else "other"


def _binding_kind(connection: sa.Connection, params: dict[str, object]) -> str:
    """Of a refused call's keys, the kind of the one that frees up last: the key whose
    window or gap set the call's retry_after (read after the call, without locks)."""
    key = connection.execute(BINDING_KEY, params).scalar_one()
    return key_kind(key)


def _record_denials(connection: sa.Connection, units_by_kind: dict[str, int]) -> None:
    """Count units held back this minute by kind (one statement, only on a refusal).

    Its own tiny transaction after the limiter's, on a random shard of the minute's
    rows: the grant path is untouched, and refusals of many keys rarely share a row.
    """
    if units_by_kind:
        kinds = sorted(units_by_kind)  # one order for every writer: no deadlock
        connection.execute(
            RECORD_DENIALS,
            {
                "kinds": kinds,
                "units": [units_by_kind[kind] for kind in kinds],
                "shard": random.randrange(DENIAL_SHARDS),
            },
        )


def _decision(row: sa.Row, granted: int) -> Decision:
    return Decision(
        allowed=row.allowed,
        granted_at=row.decided_at if row.allowed else None,
        retry_after=row.retry_after,
        remaining=row.remaining,
        reset_after=row.reset_after,
        decided_at=row.decided_at,
        granted=granted,
    )


def usage(session: AnySession, limit: Limit) -> Usage:
    """Read a key's usage in its current window, in the caller's session, consuming nothing."""
    row = session.execute(
        USAGE,
        {
            "key": limit.key,
            "limit": limit.limit,
            "window_ms": limit.window_ms,
            "gap_ms": limit.min_gap_ms,
        },
    ).one()
    return Usage(
        key=limit.key,
        limit=limit.limit,
        used=row.used,
        next_slot_at=row.next_slot_at,
        reset_at=row.reset_at,
        checked_at=row.checked_at,
    )


def delete_old_buckets(session: AnySession) -> int:
    """Delete buckets older than the longest window (and stale last grants); return buckets."""
    with _engine(session).connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT")
        deleted = connection.execute(
            DELETE_OLD,
            {
                "longest_window_ms": round(LONGEST_WINDOW_SECONDS * 1000),
                "longest_gap_ms": round(LONGEST_GAP_SECONDS * 1000),
            },
        ).scalar_one()
    logger.info("deleted %d old rate-limit buckets", deleted)
    return deleted


def denials_in_minute(session: AnySession, minute: datetime) -> dict[str, int]:
    """Units held back per kind of key in the minute starting at ``minute`` (only kinds
    that held some back)."""
    rows = session.execute(DENIALS_IN_MINUTE, {"minute": minute})
    return {kind: int(units) for kind, units in rows}


def delete_old_denials(session: AnySession) -> int:
    """Delete denial counts older than a day (the caller commits); how many rows."""
    return rows_changed(session, DELETE_OLD_DENIALS)


def throughput_factor(sender: Sender) -> float:
    """The share of its rate the sender sends at now (``slowdown.py``); 1 for a sender
    not read from the database (nothing slowed it)."""
    factor = sender.throughput_factor
    return 1.0 if factor is None else min(1.0, max(slowdown.FLOOR, factor))


def minute_factor(sender: Sender) -> float:
    """The share of its configured rate (per minute, and gap) the sender sends at: slowed
    by 130429, unless Meta's throughput is what binds it (Meta has said the number's
    messages a second, and they are no more than the sender's own rate). Then the
    per-second limit is what slows (:func:`throughput_limit`): slowing a minute that no
    longer binds as well, which the refused calls have spent grants of too, ran it out
    and stalled the campaign for half a minute at a time (bench/README.md,
    "throughput"). A sender slower than its throughput (20 a minute against Meta's 80 a
    second) is slowed on its own rate, or a 130429 would change nothing."""
    per_second = sender.throughput_per_second
    own = sender.rate_limit_per_minute
    if sender.min_interval_ms:
        own = min(own, math.floor(60_000 / sender.min_interval_ms))
    if per_second and per_second * 60 <= own:
        return 1.0
    return throughput_factor(sender)


def whatsapp_limit(sender: Sender) -> Limit:
    """The sender's WhatsApp limit: its messages per minute, and its minimum gap (slowed
    by WhatsApp's throughput errors while Meta has not said its throughput)."""
    factor = minute_factor(sender)
    return Limit(
        key=f"whatsapp:{sender.id}",
        limit=slowdown.slowed_rate(sender.rate_limit_per_minute, factor),
        window_seconds=MINUTE,
        min_gap_seconds=slowdown.slowed_gap_ms(
            sender.min_interval_ms, factor, round(LONGEST_GAP_SECONDS * 1000)
        )
        / 1000,
    )


def throughput_limit(sender: Sender) -> Limit | None:
    """The sender's throughput as Meta counts it: messages in any second, from what Meta
    says the number may send (``throughput_per_second``, account_health.py), slowed by
    WhatsApp's throughput errors (``slowdown.py``). None while Meta has not said.

    The per-minute limit alone lets a minute's messages come in bursts (two batches a
    worker fetched in the same poll, throttled ones coming back together), which Meta,
    counting per second, answers with 130429 (bench/README.md, "throughput").
    """
    if not sender.throughput_per_second:
        return None
    return Limit(
        key=f"whatsapp:{sender.id}:second",
        limit=slowdown.slowed_rate(sender.throughput_per_second, throughput_factor(sender)),
        window_seconds=1.0,
    )


def whatsapp_limits(sender: Sender) -> list[Limit]:
    """Every limit a message of this sender takes: per minute (and its gap), and per second
    once Meta has said the number's throughput."""
    per_second = throughput_limit(sender)
    return [whatsapp_limit(sender)] + ([per_second] if per_second else [])


def campaign_limit(owner: User) -> Limit:
    """The campaign owner's limit: messages per minute across all their campaigns."""
    return Limit(
        key=f"campaign:{owner.id}",
        limit=owner.campaign_rate_limit_per_minute,
        window_seconds=MINUTE,
    )


def api_limit(user: User) -> Limit:
    """The API user's limit: requests per minute."""
    return Limit(key=f"api:{user.id}", limit=user.api_rate_limit_per_minute, window_seconds=MINUTE)


def retry_limit(message_id: int) -> Limit:
    """A message's retry limit (sends and the manual "retry failed"): 10 per 5 minutes."""
    return Limit(key=f"retry:{message_id}", limit=RETRY_LIMIT, window_seconds=RETRY_WINDOW_SECONDS)


def send_limits(sender: Sender, owner: User) -> list[Limit]:
    """The limits one campaign message consumes together: its sender's (per minute, and per
    second once Meta has said its throughput) and its owner's."""
    return [*whatsapp_limits(sender), campaign_limit(owner)]


def counted_seconds(limit: Limit) -> float:
    """The span over which the limiter counts a window's grants: the window plus one of its
    buckets (a sixtieth of it; ``disparo_rate_limit_bucket_ms``, migration 0003), since a
    bucket counts whole while any part of it overlaps the window. A steady rate of
    ``limit`` per this span is what the limiter grants without ever holding one back."""
    return (limit.window_ms + max(1, limit.window_ms // 60)) / 1000


# Which limit sets a campaign's pace (Pace.binding).
PACE_OWNER = "owner"  # the owner's messages per minute across their campaigns
PACE_SENDER_RATE = "sender_rate"  # the sender's WhatsApp messages per minute
PACE_SENDER_GAP = "sender_gap"  # the sender's minimum gap between two messages


@dataclass(frozen=True)
class Pace:
    """A campaign's pace: seconds between two messages, and the limit that sets it."""

    seconds: float
    binding: str  # PACE_OWNER, PACE_SENDER_RATE or PACE_SENDER_GAP
    value: int  # that limit's own figure: messages per minute, or the gap in ms
    # The share of this limit the sender sends at (below 1: WhatsApp's throughput errors
    # slowed it, and value is the slowed figure).
    sender_factor: float = 1.0

    @property
    def per_minute(self) -> float:
        return 60.0 / self.seconds if self.seconds > 0 else float("inf")


def pace(sender: Sender, owner: User) -> Pace:
    """The slowest of the sender's rate, its minimum gap, its throughput a second as Meta
    says it (once read) and the owner's rate.

    Paced at the bare limit (60 s / limit), the pump ran a sixtieth faster than the
    limiter grants; the messages it held back piled up and went out together when a
    bucket freed: bursts of several seconds' worth in one second (bench/README.md, the
    soak), which a provider counting per second would throttle. On a tie the owner's
    limit is named first, then the sender's rate.
    """
    sender_rate, owner_rate = whatsapp_limit(sender), campaign_limit(owner)
    factor, per_minute = throughput_factor(sender), minute_factor(sender)
    per_second = throughput_limit(sender)
    candidates = [
        Pace(counted_seconds(owner_rate) / owner_rate.limit, PACE_OWNER, owner_rate.limit),
        Pace(
            counted_seconds(sender_rate) / sender_rate.limit,
            PACE_SENDER_RATE,
            sender_rate.limit,
            per_minute,
        ),
        Pace(sender_rate.min_gap_seconds, PACE_SENDER_GAP, sender_rate.min_gap_ms, per_minute),
    ]
    if per_second is not None:
        # Meta's throughput, said as the sender's rate a minute (the same binding: it is
        # the sender's rate, set by Meta rather than by an admin).
        candidates.append(
            Pace(
                counted_seconds(per_second) / per_second.limit,
                PACE_SENDER_RATE,
                per_second.limit * 60,
                factor,
            )
        )
    return max(candidates, key=lambda candidate: candidate.seconds)  # the first of a tie


def pace_seconds(sender: Sender, owner: User) -> float:
    """Seconds between two messages of a campaign, so that :func:`send_limits` always grants
    (:func:`pace`)."""
    return pace(sender, owner).seconds


# -- The 24-hour messaging budget: a limit of another kind (migration 0024) -------------
#
# Meta's messaging limit is on *unique recipients* of business-initiated (template)
# messages per business portfolio in a moving 24 hours, across every number of the
# portfolio. A time bucket cannot tell a recipient already reached (free) from a new one,
# so this limit keeps each counted recipient's keyed hash (budget_recipients) and the
# counts per minute the window sums (budget_minutes: its cost does not grow with the
# limit; the minute straddling the window's start counts whole), and one call counts the
# asked-for recipients not counted in the window, all or nothing, or as many as fit: under
# the portfolio's advisory lock, on the database's clock, its own transaction (as consume).
# Every message template Disparo sends opens or continues a business-initiated
# conversation, so every recipient counts: a customer-service window the customer opened
# is not looked for (the budget errs towards less).

BUDGET_WINDOW_SECONDS = 86_400.0

CONSUME_BUDGET = sa.text("""
-- count a portfolio's new recipients in its 24-hour budget (all, none, or as many as fit)
SELECT refused, counted, used, decided_at, room_at
  FROM disparo_budget_consume(CAST(:portfolio AS text), CAST(:limit AS integer),
                              CAST(:window_ms AS integer), CAST(:hashes AS text[]),
                              CAST(:partial AS boolean))
""")

BUDGET_USAGE = sa.text("""
-- a portfolio's 24-hour budget as it stands: recipients counted in the window, the oldest
SELECT used, room_at, now() AS checked_at
  FROM disparo_budget_window(CAST(:portfolio AS text), CAST(:window_ms AS integer), now())
""")

DELETE_OLD_BUDGET = sa.text("""
-- recipients and minutes the 24-hour window has left (a batch; maintenance comes back)
WITH minutes AS (
    DELETE FROM budget_minutes
     WHERE minute < now() - CAST(:window_ms AS integer) * interval '1 millisecond'
                   - interval '1 minute'
)
DELETE FROM budget_recipients
 WHERE ctid = ANY(ARRAY(SELECT ctid FROM budget_recipients
                         WHERE counted_at <= now() - CAST(:window_ms AS integer)
                                                     * interval '1 millisecond'
                         LIMIT :batch))
""")


@dataclass(frozen=True)
class Budget:
    """A business portfolio's 24-hour budget: at most ``limit`` unique recipients.

    ``limit`` is Meta's messaging limit (or an admin's override) less the safety margin
    (MESSAGING_LIMIT_MARGIN_PERCENT); ``messaging_limit`` is the limit before it."""

    portfolio: str
    limit: int
    messaging_limit: int

    @property
    def window_ms(self) -> int:
        return _whole_ms(BUDGET_WINDOW_SECONDS)


@dataclass(frozen=True)
class BudgetDecision:
    """What one budget call counted: the asked-for recipients it refused (new ones that
    did not fit), how many it counted anew, the window's count after it, and when the
    window's oldest minute of counts leaves it (room opens again then; None: nothing
    counted)."""

    refused: frozenset[str]
    counted: int
    used: int
    decided_at: datetime
    next_room_at: datetime | None


@dataclass(frozen=True)
class BudgetUsage:
    """A portfolio's budget now: recipients counted in the window and when room next opens."""

    limit: int
    used: int
    checked_at: datetime
    next_room_at: datetime | None  # the oldest minute of counts leaves the window

    @property
    def remaining(self) -> int:
        return max(self.limit - self.used, 0)


def portfolio_key(sender: Sender) -> str:
    """The portfolio a sender's recipients count against: its business portfolio, or the
    sender alone while Meta has not named one (account_health.portfolio does the same)."""
    return f"business:{sender.business_id}" if sender.business_id else f"sender:{sender.id}"


def budget(sender: Sender, margin_percent: int) -> Budget | None:
    """The sender's portfolio's 24-hour budget; None when Meta sets no limit (unlimited, or
    not said yet: account_health.py)."""
    if sender.messaging_limit is None:
        return None
    allowed = math.floor(sender.messaging_limit * (100 - margin_percent) / 100)
    return Budget(portfolio_key(sender), max(allowed, 0), sender.messaging_limit)


def consume_budget(
    session: AnySession, budget: Budget, phone_hashes: Sequence[str], *, partial: bool = True
) -> BudgetDecision:
    """Count ``phone_hashes`` (suppressions.phone_hash) in the budget, in one committed call.

    A recipient counted in the last 24 hours is free and always granted; new ones are
    counted all or none, or with ``partial`` as many as fit, in the order given. Its own
    transaction, as :func:`consume`: a count stands even if the caller rolls back, and
    asking again for the same recipients then costs nothing."""
    with _autocommit(session) as connection:
        row = connection.execute(
            CONSUME_BUDGET,
            {
                "portfolio": budget.portfolio,
                "limit": min(budget.limit, INT_MAX),
                "window_ms": budget.window_ms,
                "hashes": list(phone_hashes),
                "partial": partial,
            },
        ).one()
        if row.refused:
            _record_denials(connection, {"budget": len(row.refused)})
    return BudgetDecision(
        refused=frozenset(row.refused),
        counted=row.counted,
        used=row.used,
        decided_at=row.decided_at,
        next_room_at=row.room_at,
    )


def budget_usage(session: AnySession, budget: Budget) -> BudgetUsage:
    """The budget as it stands, in the caller's session, counting nothing."""
    row = session.execute(
        BUDGET_USAGE, {"portfolio": budget.portfolio, "window_ms": budget.window_ms}
    ).one()
    return BudgetUsage(
        limit=budget.limit,
        used=row.used,
        checked_at=row.checked_at,
        next_room_at=row.room_at,
    )


def delete_old_budget(session: AnySession, batch: int) -> int:
    """Delete up to ``batch`` recipients the window has left (the caller commits)."""
    statement = DELETE_OLD_BUDGET.bindparams(
        window_ms=_whole_ms(BUDGET_WINDOW_SECONDS), batch=batch
    )
    return rows_changed(session, statement)


FORGET_BUDGET_RECIPIENT = sa.text("""
-- a person's erasure: their counted rows keep counting, no longer linked to their number
UPDATE budget_recipients SET phone_hash = 'erased:' || replace(gen_random_uuid()::text, '-', '')
 WHERE phone_hash = :phone_hash
""")


def forget_budget_recipient(session: AnySession, phone_hash: str) -> int:
    """Unlink a person from the budget (the caller commits): their rows stay counted until
    the window leaves them, since Meta still counts the conversation, but under a random
    token instead of their number's hash. How many rows."""
    return rows_changed(session, FORGET_BUDGET_RECIPIENT.bindparams(phone_hash=phone_hash))
