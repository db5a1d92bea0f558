"""Sign-in protection: growing delays per account and per address (campaigns/login_throttle.py).

The delays are read from Retry-After with a base of 1,000 s, so a slow machine
cannot turn a wait into no wait; time passes by moving the recorded attempts back.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from app import db
from campaigns import login_throttle
from campaigns.models import LoginAttempt
from campaigns.services import users
from tests.helpers import PASSWORD

BASE = 1000  # seconds
ADDRESS_A, ADDRESS_B = "198.51.100.1", "198.51.100.2"


@pytest.fixture(autouse=True)
def long_delays(app, monkeypatch):
    monkeypatch.setattr(login_throttle, "BASE_DELAY_SECONDS", BASE)
    app.config["LOGIN_MAX_DELAY_SECONDS"] = 3600  # an address may then wait 10 h
    return app.config["LOGIN_FREE_FAILURES"]


def sign_in(client, user, password=PASSWORD, address=ADDRESS_A):
    return login_as(client, user.email, password, address)


def login_as(client, email, password, address):
    return client.post(
        "/login", data={"email": email, "password": password}, environ_base={"REMOTE_ADDR": address}
    )


def time_passes(seconds: float) -> None:
    db.session.execute(
        sa.update(LoginAttempt).values(
            attempted_at=LoginAttempt.attempted_at - timedelta(seconds=seconds)
        )
    )
    db.session.commit()


def attempts(**where) -> int:
    return db.session.query(LoginAttempt).filter_by(**where).count()


def test_the_delay_doubles_with_each_failure_up_to_its_cap(monkeypatch):
    monkeypatch.setattr(login_throttle, "BASE_DELAY_SECONDS", 1.0)
    assert [login_throttle.delay(n, free=5, cap=60) for n in range(4, 13)] == [
        0,
        1,
        2,
        4,
        8,
        16,
        32,
        60,
        60,
    ]
    assert login_throttle.delay(10**9, free=5, cap=60) == 60  # no overflow


def test_failures_past_the_free_ones_make_sign_ins_wait_longer_each_time(
    client, user_factory, long_delays
):
    user = user_factory()
    for _ in range(long_delays):
        assert sign_in(client, user, "guess guess guess").status_code == 422

    # The right password during the delay gets the same refusal as any other: no oracle.
    for password in (PASSWORD, "guess guess guess"):
        refused = sign_in(client, user, password)
        assert refused.status_code == 429
        assert "Too many failed sign-ins. Try again in 17 minutes." in refused.text
        assert BASE - 60 < int(refused.headers["Retry-After"]) <= BASE
    assert client.get("/").status_code == 302  # not signed in
    assert attempts(email=user.email) == long_delays  # refusals are not counted

    time_passes(BASE)
    assert sign_in(client, user, "guess guess guess").status_code == 422
    refused = sign_in(client, user)
    assert refused.status_code == 429
    assert 2 * BASE - 60 < int(refused.headers["Retry-After"]) <= 2 * BASE  # it doubled

    time_passes(2 * BASE)
    assert sign_in(client, user).status_code == 303  # after the delay, the password works


def test_a_success_restarts_the_accounts_count(client, user_factory, long_delays):
    user = user_factory()
    for _ in range(long_delays - 1):
        sign_in(client, user, "guess guess guess")
    assert sign_in(client, user).status_code == 303
    client.post("/logout")
    assert sign_in(client, user, "guess guess guess").status_code == 422
    assert sign_in(client, user).status_code == 303


def test_another_address_on_another_account_is_not_delayed(client, user_factory, long_delays):
    attacked, other = user_factory(), user_factory()
    for _ in range(long_delays):
        sign_in(client, attacked, "guess guess guess", address=ADDRESS_A)
    assert sign_in(client, attacked, address=ADDRESS_B).status_code == 429  # the account waits
    assert sign_in(client, other, address=ADDRESS_B).status_code == 303
    client.post("/logout")
    # The guessing address's own allowance is larger: its other accounts still sign in.
    assert sign_in(client, other, address=ADDRESS_A).status_code == 303


def test_an_address_that_signed_in_to_the_account_before_is_not_held_by_its_delay(
    client, user_factory, long_delays
):
    owner = user_factory()
    assert sign_in(client, owner, address=ADDRESS_A).status_code == 303
    client.post("/logout")
    for _ in range(long_delays):
        sign_in(client, owner, "guess guess guess", address=ADDRESS_B)
    assert sign_in(client, owner, address=ADDRESS_B).status_code == 429
    assert sign_in(client, owner, address=ADDRESS_A).status_code == 303  # the owner's machine


def test_one_address_guessing_many_accounts_waits(client, user_factory, long_delays):
    victim = user_factory()
    for n in range(long_delays * login_throttle.ADDRESS_FREE):
        response = login_as(client, f"guess{n}@example.com", "x" * 12, ADDRESS_A)
        assert response.status_code == 422
    refused = sign_in(client, victim, address=ADDRESS_A)
    assert refused.status_code == 429
    assert b"Too many failed sign-ins" in refused.data
    assert sign_in(client, victim, address=ADDRESS_B).status_code == 303


def test_concurrent_attempts_cannot_exceed_the_allowance(app, user_factory, monkeypatch):
    """Six attempts at once when one failure is left before the delay: one is checked."""
    user = user_factory()
    free = app.config["LOGIN_FREE_FAILURES"]
    client = app.test_client()
    for _ in range(free - 1):
        sign_in(client, user, "guess guess guess")

    check = users.check_password_hash

    def slow_check(hashed: str, password: str) -> bool:
        time.sleep(0.3)  # widens the window between the count and the record of an attempt
        return check(hashed, password)

    monkeypatch.setattr(users, "check_password_hash", slow_check)
    start = threading.Barrier(6)
    statuses: list[int] = []
    email = user.email  # the threads have no database session of the test's

    def attempt() -> None:
        start.wait()
        response = login_as(app.test_client(), email, "guess guess guess", ADDRESS_A)
        statuses.append(response.status_code)

    threads = [threading.Thread(target=attempt) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [422] + [429] * 5
    db.session.rollback()
    assert attempts(email=user.email) == free


def test_attempts_older_than_30_days_are_pruned_by_maintenance(app):
    import jobs.tasks as tasks

    now = db.session.scalar(sa.select(sa.func.now()))
    for days in (31, 29):
        db.session.add(
            LoginAttempt(
                email=f"{days}@example.com",
                ip_address=ADDRESS_A,
                succeeded=False,
                attempted_at=now - timedelta(days=days),
            )
        )
    db.session.commit()
    tasks.reconcile(timestamp=int(time.time()))  # the maintenance job, as its tick runs it
    db.session.rollback()
    assert [a.email for a in db.session.query(LoginAttempt)] == ["29@example.com"]


def test_a_backlog_of_old_attempts_is_pruned_in_batches(app):
    from campaigns import login_throttle

    now = db.session.scalar(sa.select(sa.func.now()))
    for n in range(5):
        db.session.add(
            LoginAttempt(
                email=f"{n}@example.com",
                ip_address=ADDRESS_A,
                succeeded=False,
                attempted_at=now - timedelta(days=40 - n),
            )
        )
    db.session.commit()
    assert login_throttle.delete_old_attempts(db.session, batch=2) == 2
    assert login_throttle.delete_old_attempts(db.session, batch=2) == 2
    assert login_throttle.delete_old_attempts(db.session, batch=2) == 1
    db.session.commit()
    assert db.session.query(LoginAttempt).count() == 0


def test_an_overlong_email_is_refused_not_an_error(client):
    response = login_as(client, "x" * 5000 + "@example.com", "x" * 12, ADDRESS_A)
    assert response.status_code == 422
    assert attempts() == 1
