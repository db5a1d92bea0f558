"""Sign-in throttling: growing delays per account and per address, decided atomically.

The policy, and why:

- An account may fail ``LOGIN_FREE_FAILURES`` times in an hour without delay (an
  address four times as many: an office shares one). After that, each further
  attempt waits ``BASE_DELAY_SECONDS * 2 ** (failures - free)`` after the last
  failure, up to a cap: ``LOGIN_MAX_DELAY_SECONDS`` for an account, ten times that
  for an address.
- During a delay no password is checked: the right one gets the same "try again
  in …" as a wrong one, so the delay is no oracle. Refused attempts are not
  recorded, so hammering during a delay neither lengthens it nor fills the table.
- Anyone can fail on a known email, so an account's cap is short (a minute by
  default): once an attacker stops, the owner waits at most that long, and while
  they go on they guess once a minute at most. An address that signed in to the
  account in the last 30 days is not held by the account's delay at all, only by
  its own address's, so the owner's usual machine keeps working during an attack.
- An account's count restarts at its last successful sign-in (whoever failed
  before has been answered anyway). An address's does not, or a guesser could
  reset it by signing in to an account of their own.
- Count and record are one step: transaction-scoped advisory locks on the email
  and on the address (always in that order, in key spaces of their own) are held
  from the count to the commit of the attempt, so concurrent attempts are decided
  one after the other and together cannot exceed the allowance.
- Attempts older than 30 days are deleted by maintenance
  (:func:`delete_old_attempts`); nothing here reads further back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from app import DELETE_BATCH, AnySession, delete_oldest
from campaigns.models import LoginAttempt

BASE_DELAY_SECONDS = 1.0
WINDOW = timedelta(hours=1)  # failures older than this are not counted
KEEP = timedelta(days=30)  # attempts kept, and how far back an address counts as known
ADDRESS_FREE = 4  # times an account's free failures
ADDRESS_CAP = 10  # times an account's longest delay
# Key spaces of pg_advisory_xact_lock(int, int): apart from each other and from the
# rate limiter's one-bigint locks.
ACCOUNT_LOCK, ADDRESS_LOCK = 7301, 7302

_STATE = sa.text(
    """
    WITH clock AS (SELECT clock_timestamp() AS now),
    last_success AS (
        SELECT coalesce(max(attempted_at), '-infinity') AS at
        FROM login_attempts WHERE email = :email AND succeeded
    )
    SELECT clock.now,
        (SELECT count(*) FROM login_attempts, last_success
         WHERE email = :email AND NOT succeeded
           AND attempted_at > greatest(clock.now - :window, last_success.at)) AS account_failures,
        (SELECT max(attempted_at) FROM login_attempts
         WHERE email = :email AND NOT succeeded) AS account_last,
        (SELECT count(*) FROM login_attempts
         WHERE ip_address = :address AND NOT succeeded
           AND attempted_at > clock.now - :window) AS address_failures,
        (SELECT max(attempted_at) FROM login_attempts
         WHERE ip_address = :address AND NOT succeeded) AS address_last,
        EXISTS (SELECT FROM login_attempts
                WHERE email = :email AND ip_address = :address AND succeeded
                  AND attempted_at > clock.now - :keep) AS known_address
    FROM clock
    """
)


@dataclass(frozen=True)
class Verdict:
    wait_seconds: int  # 0: check the password now
    now: datetime  # the database's clock, read after the locks: the attempt's time


def delay(failures: int, free: int, cap: float) -> float:
    """Seconds to wait after the last of ``failures`` failures."""
    if failures < free:
        return 0.0
    # The exponent is bounded so a long run of failures cannot overflow the float.
    return min(cap, BASE_DELAY_SECONDS * 2 ** min(failures - free, 40))


def check(session: AnySession, email: str, address: str, free: int, cap: int) -> Verdict:
    """Lock the email and the address until the caller's commit, and say how long the
    attempt must wait. The caller records the attempt (:func:`record`) before its
    commit, or rolls back, which releases the locks either way."""
    for space, key in ((ACCOUNT_LOCK, email), (ADDRESS_LOCK, address)):
        session.execute(
            sa.text("SELECT pg_advisory_xact_lock(:space, hashtext(:key))"),
            {"space": space, "key": key},
        )
    state = session.execute(
        _STATE, {"email": email, "address": address, "window": WINDOW, "keep": KEEP}
    ).one()
    # (last failure, failures counted, free failures, longest delay) of each hold
    holds = [
        (state.address_last, state.address_failures, free * ADDRESS_FREE, cap * ADDRESS_CAP),
    ]
    if not state.known_address:
        holds.append((state.account_last, state.account_failures, free, cap))
    until = max(
        (last + timedelta(seconds=delay(n, f, c)) for last, n, f, c in holds if last),
        default=state.now,
    )
    wait = (until - state.now).total_seconds()
    return Verdict(wait_seconds=math.ceil(wait) if wait > 0 else 0, now=state.now)


def record(session: AnySession, email: str, address: str, succeeded: bool, at: datetime) -> None:
    session.add(LoginAttempt(email=email, ip_address=address, succeeded=succeeded, attempted_at=at))


def delete_old_attempts(session: AnySession, batch: int = DELETE_BATCH) -> int:
    """Delete up to ``batch`` of the attempts older than 30 days (maintenance); the caller
    commits."""
    return delete_oldest(session, LoginAttempt, LoginAttempt.attempted_at, KEEP, batch)
