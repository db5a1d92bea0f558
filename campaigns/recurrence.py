"""A recurring campaign's rule: when it runs next, which occurrence a run stands for, and
how the rule is said.

A rule is the JSON a campaign keeps in ``campaigns.recurrence`` (parsed by
``validation.parse_recurrence``)::

    {"every": "daily" | "weekly" | "monthly", "at": "HH:MM",
     "weekday": 0-6 (weekly only; 0 = Monday), "day": 1-31 (monthly only),
     "time_zone": "America/Sao_Paulo"}

Occurrences are wall-clock times in the rule's zone: dateutil's ``rrule`` lists the local
times and zoneinfo gives each its offset, so 09:00 stays 09:00 across a change to or
from daylight saving time (a time the change skips runs as late as the skipped hour; a
time it repeats, at its first pass). A monthly day the month lacks (31 in April) falls on
the month's last day: ``bymonthday`` lists the days from 28 up to it and ``bysetpos=-1``
keeps the last the month has.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from dateutil import rrule
from flask_babel import LazyString

from campaigns.i18n import _, _l, timezone_label

EVERY = ("daily", "weekly", "monthly")
FREQUENCIES: dict[str, Literal[0, 1, 2, 3, 4, 5, 6]] = {
    "daily": rrule.DAILY,
    "weekly": rrule.WEEKLY,
    "monthly": rrule.MONTHLY,
}
LAST_SURE_DAY = 28  # every month has it
NAME_MAX = 200  # campaigns.name's width

# One sentence per weekday: a translation cannot be assembled from "every" and a day's
# name (Portuguese says "toda segunda-feira" but "todo domingo").
WEEKLY: dict[int, LazyString] = {
    0: _l("Every Monday at %(at)s"),
    1: _l("Every Tuesday at %(at)s"),
    2: _l("Every Wednesday at %(at)s"),
    3: _l("Every Thursday at %(at)s"),
    4: _l("Every Friday at %(at)s"),
    5: _l("Every Saturday at %(at)s"),
    6: _l("Every Sunday at %(at)s"),
}


def _occurrences(rule: Mapping[str, Any], start: datetime) -> rrule.rrule:
    """The rule's local (naive) times from ``start``, a naive local time."""
    hour, minute = (int(part) for part in str(rule["at"]).split(":"))
    options: dict[str, Any] = {"byhour": hour, "byminute": minute, "bysecond": 0}
    if rule["every"] == "weekly":
        options["byweekday"] = int(rule["weekday"])
    elif rule["every"] == "monthly":
        day = int(rule["day"])
        options["bymonthday"] = tuple(range(min(day, LAST_SURE_DAY), day + 1))
        options["bysetpos"] = -1
    return rrule.rrule(
        FREQUENCIES[rule["every"]], dtstart=start.replace(second=0, microsecond=0), **options
    )


def next_occurrence(rule: Mapping[str, Any], after: datetime) -> datetime:
    """The rule's first occurrence strictly after ``after`` (aware), in UTC."""
    zone = ZoneInfo(rule["time_zone"])
    local = after.astimezone(zone).replace(tzinfo=None)
    occurrences = _occurrences(rule, local)
    candidate = local
    while True:
        found = occurrences.after(candidate, inc=False)
        if found is None:  # pragma: no cover - the rules have no end
            raise ValueError(f"no occurrence of {dict(rule)} after {after}")
        at = found.replace(tzinfo=zone).astimezone(UTC)
        # The local clock may run back (the hour a DST change repeats): the next local time
        # is not always later.
        if at > after:
            return at
        candidate = found


def latest_due(rule: Mapping[str, Any], due: datetime, tick: datetime) -> datetime:
    """The last occurrence at or before ``tick``, from ``due`` (an occurrence at or before
    it): what a run made at ``tick`` stands for. One tick a day late makes one run, for
    the latest occurrence, not one for each it missed."""
    at = due
    while (following := next_occurrence(rule, at)) <= tick:
        at = following
    return at


def run_name(series_name: str, rule: Mapping[str, Any], occurrence: datetime) -> str:
    """The run's name: the series' and the occurrence's local date ("Promo — 2026-12-07"),
    the series' shortened to fit the column."""
    day = occurrence.astimezone(ZoneInfo(rule["time_zone"])).date().isoformat()
    suffix = f" — {day}"
    return series_name[: NAME_MAX - len(suffix)] + suffix


def describe(rule: Mapping[str, Any]) -> str:
    """How the campaign repeats, in the reader's words: "Every Monday at 09:00 (Brasília
    Time)"."""
    at = str(rule["at"])
    if rule["every"] == "daily":
        when = _("Every day at %(at)s") % {"at": at}
    elif rule["every"] == "weekly":
        when = str(WEEKLY[int(rule["weekday"])]) % {"at": at}
    elif int(rule["day"]) > LAST_SURE_DAY:
        when = _("Every month on day %(day)s at %(at)s (the last day of a shorter month)") % {
            "day": rule["day"],
            "at": at,
        }
    else:
        when = _("Every month on day %(day)s at %(at)s") % {"day": rule["day"], "at": at}
    return _("%(when)s, %(zone)s") % {"when": when, "zone": timezone_label(rule["time_zone"])}
