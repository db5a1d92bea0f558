"""The database's clock: the one time every process agrees on.

Workers on several machines, the web process and the rate limiter's SQL all compare
times; reading them from PostgreSQL (``now()``, the transaction's start) rather than
from a process's own clock keeps those comparisons consistent.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from app import AnySession


def database_now(session: AnySession) -> datetime:
    """PostgreSQL's ``now()`` in the session's transaction (timezone-aware)."""
    return session.execute(sa.select(sa.func.now())).scalar_one()


def clock_now(session: AnySession) -> datetime:
    """PostgreSQL's ``clock_timestamp()``: the time now, not the transaction's start (a
    transaction that waited on a lock started before what it waited for)."""
    return session.execute(sa.select(sa.func.clock_timestamp())).scalar_one()


MAX_UNIX_DIGITS = 12  # seconds: past year 9999 either way


def from_unix(raw: Any) -> datetime | None:
    """A Unix time in seconds as Meta sends one (a number, or a string of ASCII digits),
    timezone-aware; None if it is not one."""
    if isinstance(raw, str) and 0 < len(raw) <= MAX_UNIX_DIGITS and raw.isascii() and raw.isdigit():
        raw = int(raw)
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw < 10**MAX_UNIX_DIGITS:
        return None
    try:
        return datetime.fromtimestamp(raw, UTC)
    except (ValueError, OverflowError, OSError):
        return None


def entry_time(entry: Mapping[str, Any]) -> tuple[datetime | None, bool]:
    """A webhook entry's ``time`` and whether it is usable: absent is (None, True), the
    time of arrival then; present but not a Unix time is (None, False)."""
    raw = entry.get("time")
    if raw is None:
        return None, True
    at = from_unix(raw)
    return at, at is not None
