"""A campaign's sending window: the local hours and days its messages may go out, applied
in each recipient's time zone (``time_zones.py``).

``campaigns.send_window`` is ``{"start": "09:00", "end": "20:00", "days": [0, ..., 5]}``
(days: 0 = Monday ... 6 = Sunday) or NULL: no window, any time. The window is open from
``start`` (included) to ``end`` (excluded), local time, on each of ``days``. A window may
cross midnight (``"22:00"`` to ``"06:00"``): it then belongs to the day it opens on, so
Friday's 22:00-06:00 runs into Saturday morning even if Saturday is not one of the days.
``start`` equal to ``end`` is refused (no window is "any time"). ``end`` may be
``"24:00"``: the end of the day, so ``"00:00"`` to ``"24:00"`` is the whole of each day
chosen (a window that closes at midnight, as one ending at ``"00:00"`` after its start).

Local times are read in the zone's own rules (zoneinfo), so a zone with daylight saving
time keeps its local hours through the change; a start that falls in the hour skipped in
spring opens at the first instant after it, and one that repeats in autumn, at its first
occurrence.

Everything here is arithmetic on the clock: the pump asks which zones are open now
(:func:`is_open`) and when the next one opens (:func:`next_open`); the progress, how long
the waiting messages take (:func:`drain_seconds`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo

HHMM = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")
END_OF_DAY = "24:00"
DAYS = range(7)
# How far ahead a closed zone's next opening is looked for: a week covers every window.
LOOKAHEAD_DAYS = 8


@dataclass(frozen=True)
class Window:
    start: time
    end: time  # 00:00 with end_of_day: "24:00"
    days: frozenset[int]
    end_of_day: bool = False

    @classmethod
    def of(cls, raw: Mapping[str, Any] | None) -> Window | None:
        """The stored JSON's window (None: none). Stored values were validated."""
        if not raw:
            return None
        end_of_day = raw["end"] == END_OF_DAY
        end = time(0) if end_of_day else parse_hhmm(raw["end"])
        return cls(parse_hhmm(raw["start"]), end, frozenset(raw["days"]), end_of_day)

    @property
    def crosses_midnight(self) -> bool:
        # "24:00" is the next day's 00:00, whatever the start (00:00 too: the whole day).
        return self.end <= self.start

    def as_json(self) -> dict[str, Any]:
        return {
            "start": self.start.strftime("%H:%M"),
            "end": END_OF_DAY if self.end_of_day else self.end.strftime("%H:%M"),
            "days": sorted(self.days),
        }


def parse_hhmm(value: str) -> time:
    match = HHMM.fullmatch(value)
    if match is None:
        raise ValueError(value)
    return time(int(match[1]), int(match[2]))


@cache
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _local(day: date, at: time, zone: ZoneInfo) -> datetime:
    """``day`` at ``at`` in ``zone``, as a UTC instant. A time skipped by a spring change
    becomes the instant after the gap (zoneinfo reads it with the offset before the change,
    which lands past the gap); a repeated one, its first occurrence (fold 0)."""
    return datetime.combine(day, at, tzinfo=zone).astimezone(UTC)


def intervals(
    window: Window, zone_name: str, since: datetime
) -> Iterator[tuple[datetime, datetime]]:
    """The window's open intervals [open, close) in UTC in ``zone_name``, in order, the
    first one still open at ``since`` or after it, for LOOKAHEAD_DAYS days."""
    zone = _zone(zone_name)
    today = since.astimezone(zone).date()
    for offset in range(-1, LOOKAHEAD_DAYS):  # yesterday's may run past midnight
        day = today + timedelta(days=offset)
        if day.weekday() not in window.days:
            continue
        opens = _local(day, window.start, zone)
        end_day = day + timedelta(days=1) if window.crosses_midnight else day
        closes = _local(end_day, window.end, zone)
        if closes > since and closes > opens:
            yield opens, closes


def is_open(window: Window, zone_name: str, at: datetime) -> bool:
    """Whether the window is open in the zone at ``at``."""
    first = next(intervals(window, zone_name, at), None)
    return first is not None and first[0] <= at


def next_open(window: Window, zone_name: str, at: datetime) -> datetime | None:
    """When the window is next open in the zone: ``at`` itself if open then; None if never
    (no days: not a valid window)."""
    first = next(intervals(window, zone_name, at), None)
    return None if first is None else max(first[0], at)


def next_close(window: Window, zone_name: str, at: datetime) -> datetime | None:
    """When the window open at ``at`` closes (None: it is not open)."""
    first = next(intervals(window, zone_name, at), None)
    return first[1] if first is not None and first[0] <= at else None


def open_zones(window: Window, zones: list[str], at: datetime) -> list[str]:
    return [zone for zone in zones if is_open(window, zone, at)]


def first_opening(window: Window, zones: list[str], at: datetime) -> datetime | None:
    """The earliest time one of ``zones`` is open at or after ``at`` (None: no zone)."""
    times = [t for zone in zones if (t := next_open(window, zone, at)) is not None]
    return min(times) if times else None


def zone_counts(kept: Mapping[str, int] | None, total: float, fallback: str) -> dict[str, float]:
    """A campaign's ``total`` waiting messages spread over its zones as ``kept`` counted
    them (``campaigns.window_zones``; "" for messages without a zone: ``fallback``'s);
    all in ``fallback`` (the business's zone) when none are counted yet."""
    counts: dict[str, float] = {}
    for key, n in (kept or {}).items():
        zone = key or fallback
        counts[zone] = counts.get(zone, 0) + n
    counted = sum(counts.values())
    if not counted:
        return {fallback: float(total)} if total else {}
    return {zone: n * total / counted for zone, n in counts.items()}


# The drain's simulation stops after this many window changes (a year of a few zones'
# openings and closings) and says it cannot tell.
MAX_STEPS = 3000


def drain_seconds(
    window: Window, waiting: Mapping[str, float], at: datetime, per_second: float
) -> float | None:
    """How long the ``waiting`` messages (per zone) take from ``at`` at ``per_second``,
    sent only while their zone's window is open: the sender goes at the pace whenever some
    zone with messages is open, shared by the open zones in proportion to what each has
    left (the pump takes them in id order across the open zones). None: not within
    the simulation's reach (or a pace of nothing)."""
    left = {zone: float(n) for zone, n in waiting.items() if n > 0}
    if not left:
        return 0.0
    if per_second <= 0:
        return None
    now = at
    for _ in range(MAX_STEPS):
        if not left:
            return (now - at).total_seconds()
        opened = {zone: next(intervals(window, zone, now), None) for zone in left}
        if any(interval is None for interval in opened.values()):
            return None
        is_open_now = [zone for zone, iv in opened.items() if iv and iv[0] <= now]
        changes = [iv[1] if zone in is_open_now else iv[0] for zone, iv in opened.items() if iv]
        change = min(changes)
        if not is_open_now:
            now = change
            continue
        span = (change - now).total_seconds()
        total = sum(left[zone] for zone in is_open_now)
        if total <= span * per_second:
            now += timedelta(seconds=total / per_second)
            for zone in is_open_now:
                del left[zone]
            continue
        share = span * per_second / total
        for zone in is_open_now:
            left[zone] -= left[zone] * share
        now = change
    return None
