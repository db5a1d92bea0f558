"""The Postgres rate limiter, judged from the grant times the database returns.

No assertion here is about how long something took: the limiter's own clock (the
database's) stamps every decision, and the checks compare those stamps.
"""

from __future__ import annotations

import itertools
import multiprocessing
import random
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import Session

from app import db
from campaigns import ratelimit
from campaigns.config import sqlalchemy_url
from campaigns.models import RateLimitBucket, RateLimitKey
from campaigns.ratelimit import Decision, Limit

# The hammer: a small limit and a short window, so a few seconds cover windows.
HAMMER_SECONDS = 3.5
HAMMER_A = Limit("hammer:a", limit=5, window_seconds=2.0)
# A gap-bound key: 0.15 s apart allows 13 per 2 s, fewer than its limit of 20.
HAMMER_B = Limit("hammer:b", limit=20, window_seconds=2.0, min_gap_seconds=0.15)
HAMMER_CALLS: tuple[tuple[Limit, ...], ...] = (
    (HAMMER_A,),
    (HAMMER_B,),
    (HAMMER_A, HAMMER_B),
    (HAMMER_B, HAMMER_A),  # the other order: locks are still taken in one order
)
THREADS_IN_TEST = 4
PROCESSES = 2
THREADS_PER_PROCESS = 2

Record = tuple[tuple[str, ...], bool, datetime | None, str]  # keys, allowed, granted_at, who

# The multi-unit hammer: partial grants of 1 to 7 units at a time.
UNITS_SECONDS = 3.0
UNITS_MOST = 7
UNITS_W = Limit("units:w", limit=20, window_seconds=1.5)
# The gap (at most 15 grants per 1.5 s) binds before the limit of 30 does.
UNITS_G = Limit("units:g", limit=30, window_seconds=1.5, min_gap_seconds=0.1)
UNITS_CALLS: tuple[tuple[Limit, ...], ...] = (
    (UNITS_W,),
    (UNITS_G,),
    (UNITS_W, UNITS_G),
    (UNITS_G, UNITS_W),
)
# keys, units asked, units granted, granted_at, who
UnitsRecord = tuple[tuple[str, ...], int, int, datetime | None, str]

Body = Callable[[sa.Engine, str, list[Any]], None]  # one hammering thread


def _hammer_thread(engine: sa.Engine, who: str, out: list[Record]) -> None:
    """Call consume() back to back for HAMMER_SECONDS, recording every decision."""
    records: list[Record] = []
    with Session(engine) as session:
        end = time.monotonic() + HAMMER_SECONDS
        i = 0
        while time.monotonic() < end:
            limits = HAMMER_CALLS[i % len(HAMMER_CALLS)]
            i += 1
            decision = ratelimit.consume(session, limits)
            keys = tuple(limit.key for limit in limits)
            records.append((keys, decision.allowed, decision.granted_at, who))
    out.extend(records)  # list.extend is atomic under the GIL


def _units_thread(engine: sa.Engine, who: str, out: list[UnitsRecord]) -> None:
    """Ask for 1 to UNITS_MOST units, partial, back to back for UNITS_SECONDS."""
    records: list[UnitsRecord] = []
    rng = random.Random(who)  # seeded by name: the same asks on every run
    with Session(engine) as session:
        end = time.monotonic() + UNITS_SECONDS
        i = 0
        while time.monotonic() < end:
            limits = UNITS_CALLS[i % len(UNITS_CALLS)]
            i += 1
            asked = rng.randint(1, UNITS_MOST)
            decision = ratelimit.consume(session, limits, units=asked, partial=True)
            keys = tuple(limit.key for limit in limits)
            records.append((keys, asked, decision.granted, decision.granted_at, who))
    out.extend(records)


def _engine(url: str, pool_size: int) -> sa.Engine:
    engine = sa.create_engine(sqlalchemy_url(url), pool_size=pool_size, max_overflow=0)
    with engine.connect():  # connected before the start, so every worker starts at once
        pass
    return engine


def _hammer_threads(engine: sa.Engine, count: int, who: str, body: Body) -> list[Any]:
    out: list[Any] = []
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            body(engine, f"{who}/t{n}", out)
        except BaseException as error:  # reported to the test, which fails on it
            errors.append(error)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return out


def _hammer_process(url: str, who: str, queue: Any, go: Any, body: Body) -> None:
    """A separate OS process: its own engine, connections and threads."""
    try:
        engine = _engine(url, THREADS_PER_PROCESS)
        queue.put(("ready", who))
        if not go.wait(timeout=60):
            raise TimeoutError("the test never said go")
        queue.put(("ok", _hammer_threads(engine, THREADS_PER_PROCESS, who, body)))
        engine.dispose()
    except Exception as error:  # sent back, so the test shows it instead of hanging
        queue.put(("error", repr(error)))


def _hammer(url: str, body: Body) -> list[Any]:
    """Run body in THREADS_IN_TEST threads here and in PROCESSES other processes at once."""
    context = multiprocessing.get_context("spawn")  # never fork a process with open pools
    queue, go = context.Queue(), context.Event()
    processes = [
        context.Process(target=_hammer_process, args=(url, f"p{n}", queue, go, body))
        for n in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    engine = _engine(url, THREADS_IN_TEST)
    try:
        for _ in processes:
            status, payload = queue.get(timeout=60)
            assert status == "ready", payload
        go.set()
        records = _hammer_threads(engine, THREADS_IN_TEST, "main", body)
        for _ in processes:
            status, payload = queue.get(timeout=60)
            assert status == "ok", payload
            records += payload
    finally:
        go.set()
        engine.dispose()
        for process in processes:
            process.join(timeout=30)
    assert all(process.exitcode == 0 for process in processes)

    workers = {record[-1] for record in records}
    assert len(workers) == THREADS_IN_TEST + PROCESSES * THREADS_PER_PROCESS
    assert {who.split("/")[0] for who in workers} == {"main", "p0", "p1"}
    return records


def _grants(records: Sequence[Record], key: str) -> list[datetime]:
    return sorted(at for keys, allowed, at, _ in records if allowed and key in keys and at)


def _assert_window_holds(grants: list[datetime], limit: Limit) -> None:
    # Grant i and grant i + limit may never share a half-open window of this length.
    window = timedelta(seconds=limit.window_seconds)
    for earlier, later in zip(grants, grants[limit.limit :], strict=False):
        assert later - earlier >= window, (limit.key, earlier, later)


def test_hammer_from_threads_and_processes_never_exceeds_any_window(database_url_for_test):
    records: list[Record] = _hammer(database_url_for_test, _hammer_thread)

    a, b = _grants(records, HAMMER_A.key), _grants(records, HAMMER_B.key)
    # Some were granted (the run spans two windows) and most were refused.
    assert len(a) >= HAMMER_A.limit and len(b) >= 2
    assert sum(1 for _, allowed, *_ in records if not allowed) > len(a) + len(b)
    _assert_window_holds(a, HAMMER_A)
    _assert_window_holds(b, HAMMER_B)
    gap = timedelta(seconds=HAMMER_B.min_gap_seconds)
    assert all(later - earlier >= gap for earlier, later in itertools.pairwise(b))
    # Grants were granted from more than one process.
    granted_by = {who.split("/")[0] for _, allowed, _, who in records if allowed}
    assert len(granted_by) >= 2


def _units(records: Sequence[UnitsRecord], key: str) -> list[datetime]:
    """Every unit granted on key, at its grant's time (k units at t count k at t), sorted."""
    return sorted(
        at for keys, _, granted, at, _ in records if at and key in keys for _ in range(granted)
    )


def test_partial_multi_unit_hammer_never_exceeds_any_window_or_gap(database_url_for_test):
    records: list[UnitsRecord] = _hammer(database_url_for_test, _units_thread)

    for keys, asked, granted, at, _ in records:
        assert 0 <= granted <= asked and (at is not None) == (granted > 0)
        if UNITS_G.key in keys:
            assert granted <= 1  # a gapped key gives one unit per grant
    w, g = _units(records, UNITS_W.key), _units(records, UNITS_G.key)
    # The run spans windows; some grants were of several units, some of fewer than asked.
    assert len(w) > UNITS_W.limit and len(g) >= 2
    assert any(granted > 1 for _, _, granted, _, _ in records)
    assert any(0 < granted < asked for _, asked, granted, _, _ in records)
    _assert_window_holds(w, UNITS_W)
    _assert_window_holds(g, UNITS_G)
    gap = timedelta(seconds=UNITS_G.min_gap_seconds)
    assert all(later - earlier >= gap for earlier, later in itertools.pairwise(g))
    granted_by = {who.split("/")[0] for _, _, granted, _, who in records if granted}
    assert len(granted_by) >= 2


def test_retry_after_is_when_the_key_allows_again(app: Flask):
    limit = Limit("retry-after", limit=2, window_seconds=2.0)
    first = ratelimit.consume(db.session, [limit])
    assert ratelimit.consume(db.session, [limit]).allowed
    refused = ratelimit.consume(db.session, [limit])
    assert first.allowed and first.granted_at and refused.decided_at
    assert not refused.allowed and refused.granted_at is None
    assert refused.remaining == 0

    # The first grant leaves the window W after it, rounded up to its bucket's end.
    ready = refused.decided_at + timedelta(seconds=refused.retry_after)
    bucket = timedelta(milliseconds=2000 // 60)
    window = timedelta(seconds=limit.window_seconds)
    assert first.granted_at + window <= ready <= first.granted_at + window + bucket

    time.sleep(refused.retry_after / 2)
    still = ratelimit.consume(db.session, [limit])
    assert still.decided_at
    assert not still.allowed
    assert still.decided_at + timedelta(seconds=still.retry_after) == ready

    time.sleep(still.retry_after)
    after = ratelimit.consume(db.session, [limit])
    assert after.allowed and after.granted_at and after.granted_at >= ready


def test_minimum_gap_holds_between_consecutive_grants(app: Flask):
    limit = Limit("gap", limit=100, window_seconds=60.0, min_gap_seconds=0.3)
    first = ratelimit.consume(db.session, [limit])
    refused = ratelimit.consume(db.session, [limit])
    assert first.allowed and first.granted_at and refused.decided_at
    assert not refused.allowed and refused.remaining == 99  # room in the window, not in time
    gap = timedelta(seconds=limit.min_gap_seconds)
    assert refused.decided_at + timedelta(seconds=refused.retry_after) == first.granted_at + gap

    time.sleep(refused.retry_after)
    # The strictly durable commit takes grants the same way.
    second = ratelimit.consume(db.session, [limit], synchronous_commit=True)
    assert second.allowed and second.granted_at
    assert second.granted_at - first.granted_at >= gap


def test_two_keys_are_consumed_together_or_not_at_all(app: Flask):
    roomy = Limit("both:roomy", limit=5, window_seconds=60.0)
    tight = Limit("both:tight", limit=1, window_seconds=60.0)
    gapped = Limit("both:gapped", limit=5, window_seconds=60.0, min_gap_seconds=60.0)

    assert ratelimit.consume(db.session, [roomy, tight]).allowed
    for limits in ([roomy, tight], [tight, roomy]):
        refused = ratelimit.consume(db.session, limits)
        assert not refused.allowed and refused.retry_after > 0
    assert ratelimit.usage(db.session, roomy).used == 1  # the refusals left it untouched

    assert ratelimit.consume(db.session, [roomy, gapped]).allowed
    assert not ratelimit.consume(db.session, [gapped, roomy]).allowed  # refused by the gap
    assert ratelimit.usage(db.session, roomy).used == 2

    assert ratelimit.consume(db.session, [roomy]).allowed
    assert ratelimit.usage(db.session, roomy).used == 3


def test_usage_reads_without_consuming(app: Flask):
    limit = Limit("usage", limit=3, window_seconds=60.0)
    fresh = ratelimit.usage(db.session, limit)
    assert (fresh.used, fresh.remaining, fresh.wait_seconds) == (0, 3, 0.0)

    for _ in range(2):
        assert ratelimit.consume(db.session, [limit]).allowed
    for _ in range(5):
        seen = ratelimit.usage(db.session, limit)
        assert (seen.used, seen.limit, seen.remaining) == (2, 3, 1)
        assert seen.next_slot_at == seen.checked_at  # a slot is open now

    assert ratelimit.consume(db.session, [limit]).allowed  # usage() took none of the three
    refused = ratelimit.consume(db.session, [limit])
    assert not refused.allowed and refused.decided_at
    full = ratelimit.usage(db.session, limit)
    assert (full.used, full.remaining) == (3, 0)
    assert full.next_slot_at == refused.decided_at + timedelta(seconds=refused.retry_after)
    assert full.reset_at >= full.next_slot_at
    db.session.rollback()


def test_delete_old_buckets_removes_only_old_ones(app: Flask):
    limit = Limit("cleanup:live", limit=10, window_seconds=ratelimit.LONGEST_WINDOW_SECONDS)
    assert ratelimit.consume(db.session, [limit]).allowed
    now = db.session.scalar(sa.select(sa.func.now()))
    longest = timedelta(seconds=ratelimit.LONGEST_WINDOW_SECONDS)
    db.session.add_all(
        [
            # Left every window: counted by no key any more.
            RateLimitBucket(key="cleanup:old", bucket_start=now - 2 * longest, count=7),
            RateLimitBucket(key="cleanup:live", bucket_start=now - 2 * longest, count=4),
            # Still inside the longest window: must stay.
            RateLimitBucket(key="cleanup:recent", bucket_start=now - longest / 2, count=2),
            RateLimitKey(key="cleanup:stale", last_grant_at=now - timedelta(hours=2)),
        ]
    )
    db.session.commit()

    assert ratelimit.delete_old_buckets(db.session) == 2

    left = db.session.execute(sa.select(RateLimitBucket.key, RateLimitBucket.count)).all()
    assert sorted(left) == [("cleanup:live", 1), ("cleanup:recent", 2)]
    keys = set(db.session.scalars(sa.select(RateLimitKey.key)))
    assert keys == {"cleanup:live"}  # the stale last grant went, the live one stayed
    assert ratelimit.usage(db.session, limit).used == 1
    assert ratelimit.delete_old_buckets(db.session) == 0


def test_consume_refuses_to_run_outside_read_committed(database_url_for_test):
    # Under REPEATABLE READ the checks would read a snapshot older than the locks.
    engine = sa.create_engine(
        sqlalchemy_url(database_url_for_test),
        connect_args={"options": "-c default_transaction_isolation=repeatable\\ read"},
    )
    try:
        with Session(engine) as session, pytest.raises(sa.exc.DBAPIError, match="READ COMMITTED"):
            ratelimit.consume(session, [Limit("isolation", limit=1, window_seconds=1.0)])
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"key": "", "limit": 1, "window_seconds": 1}, "key"),
        ({"key": "k" * 201, "limit": 1, "window_seconds": 1}, "key"),
        ({"key": "k", "limit": 0, "window_seconds": 1}, "limit"),
        ({"key": "k", "limit": 2**31, "window_seconds": 1}, "limit"),
        ({"key": "k", "limit": 1, "window_seconds": 0}, "window"),
        ({"key": "k", "limit": 1, "window_seconds": 301}, "window"),
        ({"key": "k", "limit": 1, "window_seconds": 1, "min_gap_seconds": -1}, "gap"),
        ({"key": "k", "limit": 1, "window_seconds": 1, "min_gap_seconds": 3601}, "gap"),
    ],
)
def test_limit_refuses_what_the_limiter_cannot_keep(kwargs: dict[str, Any], message: str):
    with pytest.raises(ValueError, match=message):
        Limit(**kwargs)


def test_limit_rounds_windows_and_gaps_up_to_whole_milliseconds():
    limit = Limit("k", limit=1, window_seconds=0.3, min_gap_seconds=0.0005)
    assert (limit.window_ms, limit.min_gap_ms) == (300, 1)  # never shorter than asked


def test_consume_refuses_no_limits_and_repeated_keys(app: Flask):
    limit = Limit("twice", limit=1, window_seconds=1.0)
    with pytest.raises(ValueError):
        ratelimit.consume(db.session, [])
    with pytest.raises(ValueError):
        ratelimit.consume(db.session, [limit, limit])


def test_default_limits_follow_the_sender_and_the_user(app: Flask, user_factory):
    from campaigns.models import Provider, Sender

    user = user_factory()
    sender = Sender(name="limits", provider=Provider.MOCK)
    db.session.add(sender)
    db.session.commit()

    assert ratelimit.whatsapp_limit(sender) == Limit(f"whatsapp:{sender.id}", 20, 60.0, 1.0)
    assert ratelimit.campaign_limit(user) == Limit(f"campaign:{user.id}", 100, 60.0)
    assert ratelimit.api_limit(user) == Limit(f"api:{user.id}", 1000, 60.0)
    assert ratelimit.retry_limit(42) == Limit("retry:42", 10, 300.0)
    sent = ratelimit.consume(db.session, ratelimit.send_limits(sender, user))
    assert isinstance(sent, Decision) and sent.allowed and sent.remaining == 19
    refused = ratelimit.consume(db.session, ratelimit.send_limits(sender, user))
    assert not refused.allowed and 0 < refused.retry_after <= 1.0  # the sender's 1 s gap


def _bucket_end(at: datetime, limit: Limit) -> datetime:
    """When the bucket holding a grant at ``at`` leaves the limit's window."""
    width = timedelta(milliseconds=max(1, limit.window_ms // 60))  # bucket_ms(W)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    start = epoch + (at - epoch) // width * width  # date_bin(), in exact timedelta arithmetic
    return start + width + timedelta(milliseconds=limit.window_ms)


def test_several_units_all_or_nothing(app: Flask):
    roomy = Limit("units:roomy", limit=10, window_seconds=60.0)
    tight = Limit("units:tight", limit=5, window_seconds=60.0)

    first = ratelimit.consume(db.session, [roomy, tight], units=4)
    assert first.allowed and first.granted == 4 and first.granted_at
    assert (first.retry_after, first.remaining) == (0, 1)  # the tighter key has 1 left

    refused = ratelimit.consume(db.session, [tight, roomy], units=2)
    assert not refused.allowed and refused.granted == 0 and refused.granted_at is None
    assert refused.decided_at and refused.remaining == 1
    # Both units fit once the first grant's bucket has left the tight key's window.
    ready = refused.decided_at + timedelta(seconds=refused.retry_after)
    assert ready == _bucket_end(first.granted_at, tight)
    assert ratelimit.usage(db.session, roomy).used == 4  # the refusal took nothing
    assert ratelimit.usage(db.session, tight).used == 4

    last = ratelimit.consume(db.session, [roomy, tight])  # one unit, as before
    assert last.allowed and last.granted == 1 and last.remaining == 0
    assert ratelimit.usage(db.session, roomy).used == 5
    db.session.rollback()

    with pytest.raises(ValueError, match="its limit is 5"):
        ratelimit.consume(db.session, [roomy, tight], units=6)  # could never be granted


def test_partial_grants_what_every_key_can_give_and_says_when_the_rest_may_go(app: Flask):
    short = Limit("partial:short", limit=3, window_seconds=1.0)
    roomy = Limit("partial:roomy", limit=100, window_seconds=60.0)

    first = ratelimit.consume(db.session, [short, roomy], units=5, partial=True)
    assert first.allowed and first.granted == 3 and first.granted_at and first.decided_at
    assert first.remaining == 0
    # Not all were granted: retry_after says when one more unit could go, this grant counted.
    ready = first.decided_at + timedelta(seconds=first.retry_after)
    assert first.retry_after > 0 and ready == _bucket_end(first.granted_at, short)

    refused = ratelimit.consume(db.session, [roomy, short], units=2, partial=True)
    assert not refused.allowed and refused.granted == 0 and refused.granted_at is None
    assert refused.decided_at
    assert refused.decided_at + timedelta(seconds=refused.retry_after) == ready
    assert ratelimit.usage(db.session, roomy).used == 3  # the refusal took nothing
    db.session.rollback()

    time.sleep(refused.retry_after)
    rest = ratelimit.consume(db.session, [short, roomy], units=2, partial=True)
    assert rest.granted == 2 and rest.granted_at and rest.granted_at >= ready
    assert rest.retry_after == 0  # every unit asked for was granted
    assert ratelimit.usage(db.session, roomy).used == 5
    db.session.rollback()


def test_a_minimum_gap_caps_a_grant_at_one_unit(app: Flask):
    roomy = Limit("cap:roomy", limit=10, window_seconds=60.0)
    gapped = Limit("cap:gapped", limit=100, window_seconds=60.0, min_gap_seconds=0.3)

    first = ratelimit.consume(db.session, [roomy, gapped], units=5, partial=True)
    assert first.granted == 1 and first.granted_at and first.decided_at
    gap = timedelta(seconds=gapped.min_gap_seconds)
    assert first.decided_at + timedelta(seconds=first.retry_after) == first.granted_at + gap
    assert ratelimit.usage(db.session, roomy).used == 1
    db.session.rollback()

    # All or nothing, more than one unit can never meet the gap: refused before the call,
    with pytest.raises(ValueError, match="minimum gap"):
        ratelimit.consume(db.session, [roomy, gapped], units=2)
    # and by the database function itself.
    with pytest.raises(sa.exc.DBAPIError, match="can never be granted"):
        db.session.execute(
            sa.text(
                "SELECT * FROM disparo_rate_limit_consume("
                "ARRAY['cap:gapped'], ARRAY[100], ARRAY[60000], ARRAY[300], false, 2, false)"
            )
        )
    db.session.rollback()
    assert ratelimit.usage(db.session, roomy).used == 1
    db.session.rollback()


@pytest.mark.parametrize("units", [0, -1, 2**31])
def test_consume_refuses_units_it_cannot_count(app: Flask, units: int):
    limit = Limit("units:bad", limit=10, window_seconds=1.0)
    with pytest.raises(ValueError, match="units"):
        ratelimit.consume(db.session, [limit], units=units, partial=True)


def test_consume_each_decides_every_key_on_its_own(app: Flask):
    spent, fresh = ratelimit.retry_limit(1), ratelimit.retry_limit(2)
    gapped = Limit("each:gapped", limit=5, window_seconds=60.0, min_gap_seconds=60.0)
    for _ in range(spent.limit):
        assert ratelimit.consume(db.session, [spent]).allowed
    assert ratelimit.consume(db.session, [gapped]).allowed

    decisions = ratelimit.consume_each(db.session, [spent, fresh, gapped])
    assert [d.allowed for d in decisions] == [False, True, False]
    assert [d.granted for d in decisions] == [0, 1, 0]
    assert len({d.decided_at for d in decisions}) == 1  # one clock reading for all
    refused_spent, granted, refused_gap = decisions
    assert refused_spent.granted_at is None and refused_spent.retry_after > 0
    assert refused_spent.remaining == 0
    assert granted.granted_at == granted.decided_at and granted.retry_after == 0
    assert granted.remaining == fresh.limit - 1
    assert 0 < refused_gap.retry_after <= gapped.min_gap_seconds
    used = [ratelimit.usage(db.session, limit).used for limit in (spent, fresh, gapped)]
    assert used == [spent.limit, 1, 1]  # the refusals took nothing, the grant one unit
    db.session.rollback()

    assert ratelimit.consume_each(db.session, []) == []
    with pytest.raises(ValueError):
        ratelimit.consume_each(db.session, [fresh, fresh])


def test_the_pace_is_what_the_limiter_grants_over_the_span_it_counts(app: Flask, user_factory):
    from campaigns.models import Provider, Sender

    user = user_factory()
    user.campaign_rate_limit_per_minute = 100_000
    sender = Sender(name="fast", provider=Provider.MOCK, rate_limit_per_minute=4800)
    sender.min_interval_ms = 0
    # A 60-s window is counted over 61 s (its 1-s buckets count whole): pacing at
    # 60 s / 4,800 would outrun the limiter by a sixtieth and pile messages up.
    assert ratelimit.counted_seconds(ratelimit.whatsapp_limit(sender)) == 61.0
    assert ratelimit.pace_seconds(sender, user) == pytest.approx(61.0 / 4800)
    sender.min_interval_ms = 1000  # a gap longer than that pace binds instead
    assert ratelimit.pace_seconds(sender, user) == 1.0
