"""A sender slowed by WhatsApp's throughput error (130429), and its recovery.

Meta's guidance for 130429 is to back off and lower the number's send rate. Each
throughput error steps the sender's effective rate down to STEP (0.8) of what it was,
never below FLOOR (half its configured rate); each whole RECOVERY_SECONDS (a minute)
without another gives one step back, so a sender slowed to the floor is at full speed
again four minutes after its last error. Throttled calls of one moment are one event:
an error within EVENT_SECONDS of the last step does not step again (the slower rate
needs those seconds to show at Meta: calls already granted at the old rate are still
returning), but it does restart the recovery.

The state is three columns on ``senders`` (migration 0022): the factor as of the last
error, the last step and the last error. The current factor is computed by Postgres
when a sender is read (``Sender.throughput_factor``, :func:`factor_now`), with the
database's clock, so no job has to wake up to speed a sender up again and every
worker agrees on it. ``ratelimit`` applies it to Meta's throughput a second
(``throughput_limit``) and, unless that throughput is what binds the sender, to its
configured rate and gap (``whatsapp_limit``, ``minute_factor``), and ``pace`` follows:
the limiter grants at the slower rate at once, and the pump paces its next run by it.
A 131056 (pair rate limit) does not come here: that limit is one recipient's.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

if TYPE_CHECKING:
    from app import AnySession

STEP = 0.8
FLOOR = 0.5
RECOVERY_SECONDS = 60.0
EVENT_SECONDS = 5.0
# Enough steps back to reach 1 from the floor (0.5 * 1.25**4 > 1); the exponent is
# capped by it, or a sender slowed a year ago would overflow a double.
RECOVERY_STEPS = math.ceil(math.log(1 / FLOOR) / math.log(1 / STEP))
# The longest a slowed sender takes to get back to full speed (the page says so).
RECOVERY_MINUTES = math.ceil(RECOVERY_STEPS * RECOVERY_SECONDS / 60)


# The columns this module reads and writes (models.py imports this module, so it does
# not import the model back).
SENDERS = sa.table(
    "senders",
    sa.column("id", sa.Integer),
    sa.column("slowdown_factor", sa.Float),
    sa.column("slowed_at", sa.DateTime(timezone=True)),
    sa.column("last_throttled_at", sa.DateTime(timezone=True)),
)


def factor_now(factor: Any, last_throttled_at: Any) -> sa.ColumnElement[float]:
    """The share of its rate a sender sends at now: ``factor`` as of its last throughput
    error, a step back for each whole RECOVERY_SECONDS since, FLOOR to 1 (SQL).

    ``now()`` is the reading transaction's start, which can be a little before another
    transaction's committed error: the time since is then taken as 0, never negative
    (a negative step would slow the sender below the floor for good).
    """
    elapsed = sa.func.greatest(0, sa.extract("epoch", sa.func.now() - last_throttled_at))
    steps = sa.func.least(sa.func.floor(elapsed / RECOVERY_SECONDS), RECOVERY_STEPS)
    recovered = sa.cast(factor * sa.func.power(1 / STEP, steps), sa.Float)
    return sa.case(
        (last_throttled_at.is_(None), sa.literal(1.0, sa.Float)),
        else_=sa.func.greatest(FLOOR, sa.func.least(1.0, recovered)),
    )


def _slow_down_statement() -> sa.Update:
    # Every SET expression reads the row as it was: the factor now (recovery included)
    # is stepped down, or only carried (within EVENT_SECONDS of the last step), and the
    # recovery starts again from this error. RETURNING reads the row as written.
    current = factor_now(SENDERS.c.slowdown_factor, SENDERS.c.last_throttled_at)
    steps = sa.or_(
        SENDERS.c.slowed_at.is_(None),
        SENDERS.c.slowed_at <= sa.func.now() - timedelta(seconds=EVENT_SECONDS),
    )
    return (
        sa.update(SENDERS)
        .where(SENDERS.c.id == sa.bindparam("sender_id"))
        .values(
            slowdown_factor=sa.case(
                (steps, sa.func.greatest(FLOOR, current * STEP)), else_=current
            ),
            slowed_at=sa.case((steps, sa.func.now()), else_=SENDERS.c.slowed_at),
            # Never moved back by a transaction that started before the last error's.
            last_throttled_at=sa.func.greatest(SENDERS.c.last_throttled_at, sa.func.now()),
        )
        .returning(
            SENDERS.c.slowdown_factor, (SENDERS.c.slowed_at == sa.func.now()).label("stepped")
        )
    )


SLOW_DOWN = _slow_down_statement()


def slow_down(session: AnySession, sender_id: int) -> tuple[float, bool] | None:
    """Record a throughput error of the sender (the caller commits): (its factor now,
    whether this error stepped it down); None if the sender is gone.

    One statement, so two workers' errors at once serialise on the sender's row: the
    second sees the first's step and, within EVENT_SECONDS of it, does not step again.
    """
    row = session.execute(SLOW_DOWN, {"sender_id": sender_id}).one_or_none()
    return None if row is None else (float(row.slowdown_factor), bool(row.stepped))


def slowed_rate(rate_per_minute: int, factor: float) -> int:
    """A rate per minute at ``factor`` of itself: at least 1 (a sender always sends)."""
    return max(1, math.floor(rate_per_minute * factor + 1e-9))


def slowed_gap_ms(gap_ms: int, factor: float, longest_ms: int) -> int:
    """A minimum gap stretched by 1/``factor`` (the same slowdown for a sender paced by its
    gap), at most ``longest_ms``."""
    return min(longest_ms, math.ceil(gap_ms / factor - 1e-9)) if gap_ms else 0
