"""A campaign larger than its portfolio's 24-hour budget, carried over the following days.

The pump starts no new recipient beyond what the budget has left (pump.py); room opens
again as the window leaves the recipients counted a day earlier, in the order they were
counted. So the first wave is what the budget has left now, and each later wave starts
about a day after the one before, the budget's full size each (the last smaller). This
plans those waves for the pre-flight check, the campaign page and the ETA, at the pace the
limits allow: a campaign whose pace never lets it reach the budget is not carried over,
and a wave takes as long as the pace needs. A plan, not a promise: other campaigns of the
portfolio spend the same budget meanwhile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from campaigns.ratelimit import BUDGET_WINDOW_SECONDS, BudgetUsage

DAY = timedelta(seconds=BUDGET_WINDOW_SECONDS)


@dataclass(frozen=True)
class Waves:
    """How ``recipients`` new recipients go out: ``today`` now, the ``rest`` from
    ``rest_from`` on, over ``days`` days in all (0: never, a budget of none), in
    ``seconds`` (None: never)."""

    recipients: int
    today: int
    rest: int
    days: int
    rest_from: datetime | None
    seconds: float | None

    @property
    def carried_over(self) -> bool:
        return self.rest > 0


def plan(recipients: int, usage: BudgetUsage | None, now: datetime, per_second: float) -> Waves:
    """The waves for ``recipients`` new recipients at ``per_second`` (the pace), the budget
    as it stands ``now`` (``usage`` None: an unlimited portfolio)."""
    recipients = max(recipients, 0)
    by_pace = recipients / per_second if per_second > 0 else None

    def one_wave() -> Waves:
        days = 1 if by_pace is None else max(1, math.ceil(by_pace / DAY.total_seconds()))
        return Waves(recipients, recipients, 0, days, None, by_pace)

    if usage is None or recipients <= usage.remaining or by_pace is None:
        return one_wave()
    if usage.limit <= 0:
        return Waves(recipients, 0, recipients, 0, None, None)
    # Room opens when the window's oldest count leaves it; counting none yet, the first of
    # today's wave is counted about now.
    rest_from = usage.next_room_at if usage.used and usage.next_room_at else now + DAY
    until_room = max(0.0, (rest_from - now).total_seconds())
    if per_second * until_room <= usage.remaining and per_second * DAY.total_seconds() <= (
        usage.limit
    ):
        return one_wave()  # the pace never lets it reach the budget
    today = min(recipients, usage.remaining)
    rest = recipients - today
    later = math.ceil(rest / usage.limit)
    last = rest - (later - 1) * usage.limit
    # Each later wave starts about a day after the one before, and lasts what the pace
    # needs for it; the pace alone bounds it from below.
    seconds = max(
        by_pace,
        max(today / per_second, until_room)
        + (later - 1) * max(DAY.total_seconds(), usage.limit / per_second)
        + last / per_second,
    )
    days = max(1 + later, math.ceil(seconds / DAY.total_seconds()))
    return Waves(recipients, today, rest, days, rest_from, seconds)
