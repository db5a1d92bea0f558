"""WhatsApp's throughput error (130429) slows the sender, and the sender recovers.

Each error steps the sender's rate down to 0.8 of what it was, never below half its
configured rate; errors within a few seconds of a step are the same event; each
minute without an error gives a step back. Time is never waited: the stamps are
moved back in the database, whose clock decides.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from app import db
from campaigns import fanout, pump, queues, ratelimit, sending, slowdown
from campaigns.models import Campaign, CampaignStatus, Message, MessageStatus, Sender
from campaigns.services.campaigns import send_campaign_now
from campaigns.services.templates import default_sender
from tests.helpers import assert_counters_match_rows, demo_campaign, jobs, lift_limits, login


def _sender(sender_id: int) -> Sender:
    return db.session.get(Sender, sender_id, populate_existing=True)


def _backdate(sender_id: int, seconds: float) -> None:
    """As if ``seconds`` had passed since the sender's last step and last error."""
    db.session.execute(
        sa.update(Sender)
        .where(Sender.id == sender_id)
        .values(
            slowed_at=Sender.slowed_at - timedelta(seconds=seconds),
            last_throttled_at=Sender.last_throttled_at - timedelta(seconds=seconds),
        )
    )
    db.session.commit()


def _error(sender_id: int) -> tuple[float, bool]:
    result = slowdown.slow_down(db.session, sender_id)
    db.session.commit()
    assert result is not None
    return result


@pytest.fixture
def sender(app) -> Sender:
    """The demo sender at 100 a minute, 600 ms apart, never slowed."""
    from campaigns.services.demo import seed_demo

    seed_demo()
    sender = default_sender()
    sender.rate_limit_per_minute, sender.min_interval_ms = 100, 600
    db.session.commit()
    return sender


def test_a_sender_never_slowed_sends_at_its_full_rate(app, sender):
    sender = _sender(sender.id)
    assert sender.throughput_factor == 1.0 and sender.last_throttled_at is None
    limit = ratelimit.whatsapp_limit(sender)
    assert (limit.limit, limit.min_gap_ms) == (100, 600)


def test_each_error_steps_the_rate_down_to_half_at_most(app, sender, owner):
    assert _error(sender.id) == (pytest.approx(0.8), True)
    # Errors of the same moment (calls granted at the old rate still returning) are one
    # event: the factor stays, only the recovery starts again.
    assert _error(sender.id) == (pytest.approx(0.8), False)
    assert _error(sender.id) == (pytest.approx(0.8), False)
    factors = []
    for _ in range(5):
        _backdate(sender.id, slowdown.EVENT_SECONDS + 1)
        factors.append(_error(sender.id)[0])
    assert factors == pytest.approx([0.64, 0.512, 0.5, 0.5, 0.5])  # never below the floor
    slowed = _sender(sender.id)
    assert slowed.throughput_factor == pytest.approx(0.5)
    # The limiter and the pace both apply it: half the rate, twice the gap.
    limit = ratelimit.whatsapp_limit(slowed)
    assert (limit.limit, limit.min_gap_ms) == (50, 1200)
    owner.campaign_rate_limit_per_minute = 10_000
    db.session.commit()
    pace = ratelimit.pace(slowed, owner)
    assert (pace.binding, pace.value, pace.sender_factor) == ("sender_rate", 50, 0.5)


def test_the_rate_recovers_a_step_a_minute_without_errors(app, sender):
    _error(sender.id)
    for _ in range(3):
        _backdate(sender.id, slowdown.EVENT_SECONDS + 1)
        _error(sender.id)
    assert _sender(sender.id).throughput_factor == pytest.approx(0.5)
    seen = []
    for _ in range(5):
        _backdate(sender.id, slowdown.RECOVERY_SECONDS)
        seen.append(_sender(sender.id).throughput_factor)
    assert seen == pytest.approx([0.625, 0.78125, 0.9765625, 1.0, 1.0])
    assert slowdown.RECOVERY_MINUTES == 4  # what the sender page promises
    # Long after, still exactly 1 (the exponent is capped: no overflow after a year).
    _backdate(sender.id, 365 * 24 * 3600)
    assert _sender(sender.id).throughput_factor == 1.0
    # A new error after the recovery steps down from full speed again.
    assert _error(sender.id) == (pytest.approx(0.8), True)


def test_an_error_during_the_recovery_steps_down_from_where_it_had_got_to(app, sender):
    _error(sender.id)
    _backdate(sender.id, slowdown.EVENT_SECONDS + 1)
    _error(sender.id)  # 0.64
    _backdate(sender.id, 2 * slowdown.RECOVERY_SECONDS)  # two steps back: 1.0
    assert _sender(sender.id).throughput_factor == 1.0
    _backdate(sender.id, 1 - slowdown.RECOVERY_SECONDS)  # a minute and a second: 0.8
    assert _sender(sender.id).throughput_factor == pytest.approx(0.8)
    assert _error(sender.id)[0] == pytest.approx(0.64)  # 0.8 * 0.8, not 0.64 * 0.8


def test_an_error_read_by_a_transaction_that_started_earlier_never_goes_below_the_floor(
    app, sender
):
    for _ in range(4):  # at the floor, last stepped long enough ago to step again
        _error(sender.id)
        _backdate(sender.id, slowdown.EVENT_SECONDS + 1)
    assert _sender(sender.id).throughput_factor == pytest.approx(0.5)
    engine = db.engine
    with engine.connect() as early, engine.connect() as late:
        early.execute(sa.text("SELECT now()"))  # its transaction (and now()) starts here
        time.sleep(0.05)
        late.execute(slowdown.SLOW_DOWN, {"sender_id": sender.id})  # a later error, first
        late.commit()
        # The earlier transaction sees an error "after" its now(): no negative recovery.
        factor = early.execute(
            sa.select(Sender.throughput_factor).where(Sender.id == sender.id)
        ).scalar_one()
        assert factor == pytest.approx(0.5)
        row = early.execute(slowdown.SLOW_DOWN, {"sender_id": sender.id}).one()
        early.commit()
        assert row.slowdown_factor == pytest.approx(0.5)
    after = _sender(sender.id)
    assert after.slowdown_factor == pytest.approx(0.5)
    assert after.throughput_factor == pytest.approx(0.5)
    # The last error's time was not moved back by the earlier transaction's clock.
    _backdate(sender.id, slowdown.RECOVERY_MINUTES * 60)
    assert _sender(sender.id).throughput_factor == 1.0  # and it recovers all the way


def test_the_limiter_grants_at_the_slower_rate(app, sender, owner):
    sender.min_interval_ms = 0
    db.session.commit()
    _error(sender.id)
    slowed = _sender(sender.id)
    owner.campaign_rate_limit_per_minute = 10_000
    db.session.commit()
    decision = ratelimit.consume(
        db.session, ratelimit.send_limits(slowed, owner), units=100, partial=True
    )
    assert decision.granted == 80


def test_metas_throughput_is_a_per_second_limit_slowed_like_the_rest(app, sender, owner):
    sender.rate_limit_per_minute, sender.min_interval_ms = 600_000, 0
    owner.campaign_rate_limit_per_minute = 600_000
    db.session.commit()
    assert ratelimit.throughput_limit(_sender(sender.id)) is None  # Meta has not said yet
    sender.throughput_per_second = 80
    db.session.commit()
    limit = ratelimit.throughput_limit(_sender(sender.id))
    assert (limit.key, limit.limit, limit.window_seconds) == (f"whatsapp:{sender.id}:second", 80, 1)
    # The pace follows Meta's 80 a second (said as the sender's rate a minute), and a
    # second's worth of messages is all the limiter grants in any second.
    pace = ratelimit.pace(_sender(sender.id), owner)
    assert (pace.binding, pace.value) == ("sender_rate", 4800)
    limits = ratelimit.send_limits(_sender(sender.id), owner)
    assert ratelimit.consume(db.session, limits, units=200, partial=True).granted == 80
    assert ratelimit.consume(db.session, limits, units=10, partial=True).granted == 0
    _error(sender.id)  # 130429: 64 a second from now on
    limit = ratelimit.throughput_limit(_sender(sender.id))
    assert limit.limit == 64
    pace = ratelimit.pace(_sender(sender.id), owner)
    assert (pace.value, pace.sender_factor) == (64 * 60, pytest.approx(0.8))
    # Meta's per-second count binds, and is what slows; the per-minute rate stays the
    # admin's (the refused calls spent grants of it too: slowed as well, it ran out).
    assert ratelimit.whatsapp_limit(_sender(sender.id)).limit == 600_000


def test_a_sender_slower_than_its_throughput_is_slowed_on_its_own_rate(app, sender, owner):
    """20 a minute, 1 s apart, against Meta's 80 a second: the per-second limit never
    binds, so a 130429 slows the configured rate and gap, or it would change nothing."""
    sender.rate_limit_per_minute, sender.min_interval_ms = 20, 1000
    sender.throughput_per_second = 80
    owner.campaign_rate_limit_per_minute = 10_000
    db.session.commit()
    _error(sender.id)
    slowed = _sender(sender.id)
    limit = ratelimit.whatsapp_limit(slowed)
    assert (limit.limit, limit.min_gap_ms) == (16, 1250)
    pace = ratelimit.pace(slowed, owner)
    assert pace.binding in ("sender_rate", "sender_gap") and pace.sender_factor == 0.8
    assert pace.per_minute <= 16


@pytest.fixture
def small(app, owner, live_server, monkeypatch) -> Campaign:
    monkeypatch.setitem(app.config, "APP_BASE_URL", live_server)
    lift_limits(owner)
    return demo_campaign(owner.id, size=4, name="Throughput")


def test_130429_from_the_mock_slows_the_sender_and_the_message_waits(app, small, monkeypatch):
    send_campaign_now(small.id, small.owner_id)
    fanout.load_audience(small.id, app.config)
    pump.pump(small.id)
    ids = [i for j in jobs(queues.SEND_TASK) for i in j["args"]["message_ids"]]
    monkeypatch.setitem(app.config, "MOCK_WHATSAPP_THROTTLE_RATE", 1.0)
    report = sending.send_batch(small.id, ids, app.config, retry_queue=False)
    assert sorted(report.throttled) == sorted(ids) and not report.failed
    for message_id in ids:
        message = db.session.get(Message, message_id, populate_existing=True)
        assert (message.status, message.error_code, message.tries) == (
            MessageStatus.QUEUED,
            "130429",
            0,
        )
    sender = _sender(small.sender_id)
    assert sender.throughput_factor == pytest.approx(0.8)
    assert sender.last_throttled_at is not None
    # The pump paces the campaign by the slowed rate from its next run.
    campaign = db.session.get(Campaign, small.id, populate_existing=True)
    assert campaign.status is CampaignStatus.SENDING
    pace = ratelimit.pace(campaign.sender, campaign.owner)
    assert pace.sender_factor == pytest.approx(0.8)
    assert pace.per_minute <= 0.8 * 600_000
    # The throttle passes: the messages go out, and a few minutes on, full speed again.
    monkeypatch.setitem(app.config, "MOCK_WHATSAPP_THROTTLE_RATE", 0.0)
    report = sending.send_batch(small.id, ids, app.config, retry_queue=False)
    assert sorted(report.sent) == sorted(ids)
    _backdate(small.sender_id, slowdown.RECOVERY_MINUTES * 60)
    assert _sender(small.sender_id).throughput_factor == 1.0
    assert_counters_match_rows(small.id)


def test_the_sender_and_campaign_pages_and_the_api_say_it_is_slowed(
    app, client, small, user_factory, token_for
):
    from campaigns.models import Role

    _error(small.sender_id)
    admin = user_factory(Role.ADMIN)
    login(client, admin)
    page = client.get(f"/senders/{small.sender_id}").get_data(as_text=True)
    assert "Slowed to 80" in page and "130429" in page and "4 minutes" in page
    listing = client.get("/senders/").get_data(as_text=True)
    assert "slowed to 80" in listing
    send_campaign_now(small.id, small.owner_id)
    progress = client.get(f"/campaigns/{small.id}").get_data(as_text=True)
    assert "slowed to 80" in progress
    body = client.get(f"/api/v1/senders/{small.sender_id}", headers=token_for(Role.ADMIN)).json
    assert body["throughput_factor"] == pytest.approx(0.8)
    assert body["last_throttled_at"] is not None
    # Recovered: nothing said any more.
    _backdate(small.sender_id, slowdown.RECOVERY_MINUTES * 60)
    page = client.get(f"/senders/{small.sender_id}").get_data(as_text=True)
    assert "Slowed to" not in page
    body = client.get(f"/api/v1/senders/{small.sender_id}", headers=token_for(Role.ADMIN)).json
    assert body["throughput_factor"] == 1.0
