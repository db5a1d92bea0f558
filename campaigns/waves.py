"""A campaign larger than its portfolio's 24-hour budget, carried over the following days.

The pump starts no new recipient beyond what the budget has left (pump.py); the room
opens again as the window leaves the recipients counted a day earlier, in the order they
were counted. So the first wave is what the budget has left now, and each later wave
starts about a day after the one before, the budget's full size each (the last smaller).
This plans those waves for the pre-flight check, the campaign page and the ETA. A plan,
not a promise: other campaigns of the portfolio spend the same budget meanwhile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from campaigns.ratelimit import BUDGET_WINDOW_SECONDS, BudgetUsage

DAY = timedelta(seconds=BUDGET_WINDOW_SECONDS)


@dataclass(frozen=True)
class Waves:
    """How ``recipients`` new recipients fit in the budget: ``today`` now, the ``rest``
    from ``rest_from`` on, over ``days`` days in all (0: never, a budget of none)."""

    recipients: int
    today: int
    rest: int
    days: int
    rest_from: datetime | None
    limit: int | None  # the budget a day; None: unlimited

    @property
    def carried_over(self) -> bool:
        return self.rest > 0

    def seconds(self, per_second: float, now: datetime) -> float | None:
        """How long sending them takes at ``per_second``, waits for the budget included;
        None when it never ends (no rate, or a budget of none)."""
        if per_second <= 0 or self.days == 0:
            return None
        if not self.carried_over or self.rest_from is None or not self.limit:
            return self.recipients / per_second
        later_days = self.days - 1
        last = self.rest - (later_days - 1) * self.limit
        until_rest = max(self.today / per_second, (self.rest_from - now).total_seconds())
        return until_rest + (later_days - 1) * DAY.total_seconds() + last / per_second


def plan(recipients: int, usage: BudgetUsage | None, now: datetime) -> Waves:
    """The waves for ``recipients`` new recipients, the budget as it stands ``now``
    (``usage`` None: an unlimited portfolio, one wave)."""
    recipients = max(recipients, 0)
    if usage is None:
        return Waves(recipients, recipients, 0, 1, None, None)
    today = min(recipients, usage.remaining)
    rest = recipients - today
    if not rest:
        return Waves(recipients, today, 0, 1, None, usage.limit)
    if usage.limit <= 0:
        return Waves(recipients, 0, rest, 0, None, usage.limit)
    # Room opens when the first recipient counted leaves the window; counting none yet,
    # the first of today's wave is counted about now.
    rest_from = usage.next_room_at if usage.used else now + DAY
    return Waves(recipients, today, rest, 1 + math.ceil(rest / usage.limit), rest_from, usage.limit)
