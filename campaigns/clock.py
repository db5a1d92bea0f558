"""The database's clock: the one time every process agrees on.

Workers on several machines, the web process and the rate limiter's SQL all compare
times; reading them from PostgreSQL (``now()``, the transaction's start) rather than
from a process's own clock keeps those comparisons consistent.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from app import AnySession


def database_now(session: AnySession) -> datetime:
    """PostgreSQL's ``now()`` in the session's transaction (timezone-aware)."""
    return session.execute(sa.select(sa.func.now())).scalar_one()
