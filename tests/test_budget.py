"""The 24-hour messaging budget: unique recipients per business portfolio.

Meta limits how many unique customers a business portfolio may start template
conversations with in a moving 24 hours. The pump starts no new recipient beyond what
the budget has left (less the safety margin); a campaign larger than the budget goes out
in waves over the following days. A day is never waited: what the budget counted is
moved back in the database, whose clock decides.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa

from app import db
from campaigns import fanout, pump, queues, ratelimit, sending
from campaigns.models import Campaign, CampaignStatus, Message, MessageStatus, Role, Sender
from campaigns.services.campaigns import send_campaign_now
from campaigns.services.personal_data import erase_person
from campaigns.services.suppressions import phone_hash
from campaigns.services.templates import default_sender
from tests.helpers import assert_counters_match_rows, demo_campaign, jobs, lift_limits

LIMIT = 20  # Meta's; less the 10 % margin, 18 new recipients a day
BUDGET = 18


def _budget(portfolio: str = "business:test", limit: int = 3) -> ratelimit.Budget:
    return ratelimit.Budget(portfolio, limit, limit)


def _backdate_budget(hours: float = 24) -> None:
    """As if the recipients counted so far had been counted ``hours`` earlier."""
    shift = {"shift": timedelta(hours=hours, minutes=1, seconds=1)}
    db.session.execute(
        sa.text("UPDATE budget_recipients SET counted_at = counted_at - :shift"), shift
    )
    db.session.execute(sa.text("UPDATE budget_minutes SET minute = minute - :shift"), shift)
    db.session.commit()


def _counted(portfolio: str) -> int:
    return db.session.execute(
        sa.text("SELECT count(*) FROM budget_recipients WHERE portfolio = :p"), {"p": portfolio}
    ).scalar_one()


def test_new_recipients_are_counted_all_or_nothing_or_as_many_as_fit(app):
    budget = _budget(limit=3)
    first = ratelimit.consume_budget(db.session, budget, ["a", "b"], partial=False)
    assert (first.refused, first.counted, first.used) == (frozenset(), 2, 2)
    # Two new ones do not fit in the one left: all or nothing counts neither...
    refused = ratelimit.consume_budget(db.session, budget, ["c", "d"], partial=False)
    assert (refused.refused, refused.counted, refused.used) == ({"c", "d"}, 0, 2)
    # ...partial counts the first, in the order asked.
    partial = ratelimit.consume_budget(db.session, budget, ["d", "c", "d"])
    assert (partial.refused, partial.counted, partial.used) == ({"c"}, 1, 3)
    # Recipients counted in the window are free, even with no room left.
    again = ratelimit.consume_budget(db.session, budget, ["a", "b", "d"], partial=False)
    assert (again.refused, again.counted, again.used) == (frozenset(), 0, 3)
    # Room opens once the minute of the first count has left the window.
    first_minute = first.decided_at.replace(second=0, microsecond=0)
    assert again.next_room_at == first_minute + timedelta(hours=24, minutes=1)
    usage = ratelimit.budget_usage(db.session, budget)
    assert (usage.used, usage.remaining, usage.next_room_at) == (3, 0, again.next_room_at)


def test_a_recipient_counted_a_day_ago_counts_anew_and_old_rows_are_pruned(app):
    budget = _budget(limit=2)
    ratelimit.consume_budget(db.session, budget, ["a", "b"])
    _backdate_budget()
    assert ratelimit.budget_usage(db.session, budget).used == 0
    decision = ratelimit.consume_budget(db.session, budget, ["a", "c", "b"])
    assert (decision.refused, decision.counted) == ({"b"}, 2)
    assert ratelimit.delete_old_budget(db.session, 1000) == 1  # "b", a day old
    db.session.commit()
    assert _counted(budget.portfolio) == 2


def test_a_recipient_messaged_again_counts_from_the_latest_time(app):
    """Meta counts a user in the window of their latest conversation: messaged again 20 h
    after the first time, they still count 25 h after it (5 h after the second)."""
    budget = _budget(limit=2)
    ratelimit.consume_budget(db.session, budget, ["a"])
    _backdate_budget(hours=20)
    again = ratelimit.consume_budget(db.session, budget, ["a"])
    assert (again.counted, again.used, again.refused) == (0, 1, frozenset())
    _backdate_budget(hours=5)
    assert ratelimit.budget_usage(db.session, budget).used == 1
    assert ratelimit.consume_budget(db.session, budget, ["b", "c"]).refused == {"c"}


def test_portfolios_have_budgets_of_their_own(app):
    ratelimit.consume_budget(db.session, _budget("business:1", 1), ["a"])
    decision = ratelimit.consume_budget(db.session, _budget("business:2", 1), ["a"])
    assert decision.counted == 1 and not decision.refused


def test_concurrent_callers_never_count_more_than_the_budget(app):
    """The limiter's guarantee, for the new kind of limit: however many callers at once,
    the window never holds more recipients than the limit."""
    budget = _budget("business:race", 50)
    granted: list[int] = []
    errors: list[BaseException] = []

    def caller(worker: int) -> None:
        try:
            with app.app_context():
                for batch in range(10):
                    hashes = [f"{worker}-{batch}-{i}" for i in range(3)]
                    decision = ratelimit.consume_budget(db.session, budget, hashes)
                    granted.append(len(hashes) - len(decision.refused))
                db.session.remove()
        except BaseException as error:  # surfaced below: a thread's error is not raised
            errors.append(error)

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sum(granted) == 50 == _counted(budget.portfolio)


def test_the_budget_is_the_portfolios_limit_less_the_margin(app):
    sender = Sender(id=7, name="x", provider="mock", messaging_limit=None)
    assert ratelimit.budget(sender, 10) is None  # unlimited, or not said yet
    sender.messaging_limit = 250
    assert ratelimit.budget(sender, 10) == ratelimit.Budget("sender:7", 225, 250)
    sender.business_id = "99"
    assert ratelimit.budget(sender, 0) == ratelimit.Budget("business:99", 250, 250)


@pytest.fixture
def limited(app, owner, live_server, monkeypatch) -> Sender:
    """The demo sender, limits lifted, in portfolio 77 with a messaging limit of 20."""
    monkeypatch.setitem(app.config, "APP_BASE_URL", live_server)
    lift_limits(owner)
    sender = default_sender()
    sender.business_id, sender.messaging_limit = "77", LIMIT
    db.session.commit()
    return sender


def _start(app, campaign: Campaign) -> None:
    send_campaign_now(campaign.id, campaign.owner_id, confirm=True)
    fanout.load_audience(campaign.id, app.config)


def _send_queued(app, campaign_id: int) -> None:
    """Run every waiting send job of the campaign (as a worker would), then drop them."""
    for job in jobs(queues.SEND_TASK):
        if job["args"]["campaign_id"] == campaign_id and job["status"] == "todo":
            sending.send_batch(
                campaign_id, job["args"]["message_ids"], app.config, retry_queue=False
            )
    db.session.execute(
        sa.text("DELETE FROM procrastinate_jobs WHERE task_name = :task"),
        {"task": queues.SEND_TASK},
    )
    db.session.commit()


def _statuses(campaign_id: int) -> dict[MessageStatus, int]:
    """Messages by status, less those the fan-out skipped (the demo's bad numbers)."""
    rows = db.session.execute(
        sa.select(Message.status, sa.func.count())
        .where(Message.campaign_id == campaign_id, Message.status != MessageStatus.SKIPPED)
        .group_by(Message.status)
    )
    return dict(rows.all())


def _audience(campaign_id: int) -> int:
    return sum(_statuses(campaign_id).values())


def _next_pump_in(campaign_id: int) -> float:
    (job,) = [j for j in jobs(queues.PUMP_TASK) if j["status"] == "todo"]
    now = db.session.scalar(sa.select(sa.func.now()))
    return (job["scheduled_at"] - now).total_seconds()


def test_a_campaign_larger_than_the_budget_goes_out_in_waves(app, limited, owner):
    campaign = demo_campaign(owner.id, size=30, name="Waves")
    _start(app, campaign)
    rest = _audience(campaign.id) - BUDGET
    assert rest > 5
    pump.pump(campaign.id)
    assert _statuses(campaign.id) == {MessageStatus.QUEUED: BUDGET, MessageStatus.PENDING: rest}
    _send_queued(app, campaign.id)
    assert _statuses(campaign.id) == {MessageStatus.SENT: BUDGET, MessageStatus.PENDING: rest}
    # The first day's budget is spent: nothing more goes, and the pump does not spin
    # every 2 s for a day (it comes back within HELD_INTERVAL_SECONDS).
    db.session.execute(
        sa.text("DELETE FROM procrastinate_jobs WHERE task_name = :task"),
        {"task": queues.PUMP_TASK},
    )
    db.session.commit()
    pump.pump(campaign.id)
    assert _statuses(campaign.id)[MessageStatus.PENDING] == rest
    assert _next_pump_in(campaign.id) > pump.HELD_INTERVAL_SECONDS - 10
    campaign = db.session.get(Campaign, campaign.id, populate_existing=True)
    assert campaign.status is CampaignStatus.SENDING
    # A day later the first wave's recipients leave the window: the rest go.
    _backdate_budget()
    pump.pump(campaign.id)
    assert _statuses(campaign.id) == {MessageStatus.SENT: BUDGET, MessageStatus.QUEUED: rest}
    _send_queued(app, campaign.id)
    pump.pump(campaign.id)
    campaign = db.session.get(Campaign, campaign.id, populate_existing=True)
    assert campaign.status is CampaignStatus.COMPLETED
    assert _statuses(campaign.id) == {MessageStatus.SENT: BUDGET + rest}
    sent_to = db.session.scalars(sa.text('SELECT "to" FROM mock_whatsapp_messages')).all()
    assert len(sent_to) == len(set(sent_to)) == BUDGET + rest  # nobody twice, nor left out
    assert_counters_match_rows(campaign.id)


def test_two_campaigns_of_one_portfolio_share_one_budget(app, limited, owner):
    other = Sender(
        name="Second number",
        provider="mock",
        phone_number_id="999000",
        waba_id=limited.waba_id,
        business_id=limited.business_id,
        messaging_limit=LIMIT,
        rate_limit_per_minute=600_000,
        min_interval_ms=0,
    )
    db.session.add(other)
    db.session.commit()
    first = demo_campaign(owner.id, size=12, name="First")
    second = demo_campaign(owner.id, size=30, name="Second")
    second.sender_id = other.id
    db.session.commit()
    _start(app, first)
    _start(app, second)
    pump.pump(first.id)
    reached = _audience(first.id)
    assert _statuses(first.id) == {MessageStatus.QUEUED: reached}
    pump.pump(second.id)
    # The same customers (the first 12 of the segment) count once: the second campaign
    # reaches them and as many more as the 18 of the portfolio's budget allow, no more.
    rest = _audience(second.id) - BUDGET
    assert _statuses(second.id) == {MessageStatus.QUEUED: BUDGET, MessageStatus.PENDING: rest}
    assert _counted("business:77") == BUDGET


def test_an_unlimited_portfolio_counts_nothing(app, limited, owner):
    limited.messaging_limit = None
    db.session.commit()
    campaign = demo_campaign(owner.id, size=30, name="Unlimited")
    _start(app, campaign)
    pump.pump(campaign.id)
    assert _statuses(campaign.id) == {MessageStatus.QUEUED: _audience(campaign.id)}
    assert _counted("business:77") == 0


def test_an_erasure_unlinks_the_person_but_they_still_count(app, limited, owner):
    campaign = demo_campaign(owner.id, size=3, name="Erase")
    _start(app, campaign)
    pump.pump(campaign.id)
    _send_queued(app, campaign.id)
    phone = db.session.scalars(
        sa.select(Message.phone).where(Message.campaign_id == campaign.id).order_by(Message.id)
    ).first()
    erase_person(phone, None)
    hashes = db.session.scalars(sa.text("SELECT phone_hash FROM budget_recipients")).all()
    reached = _audience(campaign.id)
    assert len(hashes) == reached and phone_hash(phone) not in hashes
    usage = ratelimit.budget_usage(db.session, ratelimit.budget(default_sender(), 10))
    assert usage.used == reached


def test_the_page_the_api_and_the_eta_say_what_waits_for_the_budget(
    app, client, limited, owner, token_for
):
    from campaigns.progress import get_progress
    from tests.helpers import login

    campaign = demo_campaign(owner.id, size=30, name="Waves")
    _start(app, campaign)
    rest = _audience(campaign.id) - BUDGET
    pump.pump(campaign.id)
    _send_queued(app, campaign.id)
    first_counted = db.session.scalar(sa.text("SELECT min(counted_at) FROM budget_recipients"))
    progress = get_progress(db.session.get(Campaign, campaign.id))
    assert (progress.carried_over, progress.waves.today) == (rest, 0)
    first_minute = first_counted.replace(second=0, microsecond=0)
    assert progress.next_wave_at == first_minute + timedelta(hours=24, minutes=1)
    # Nothing goes out while it waits, yet the ETA is no "stalled": the next wave's time.
    assert progress.eta_seconds > 23 * 3600
    login(client, owner)
    page = client.get(f"/campaigns/{campaign.id}").get_data(as_text=True)
    assert f"the remaining {rest} from" in page
    answer = client.get(
        f"/api/v1/campaigns/{campaign.id}/progress", headers=token_for(Role.VIEWER)
    ).get_json()
    assert answer["carried_over"] == rest and answer["next_wave_at"] is not None


def test_a_held_message_tried_again_a_day_later_is_counted_again(app, limited, owner, monkeypatch):
    """131049 holds a message for a day: its recipient's count has left the window when
    it is tried again, and the retry starts a conversation Meta counts. With the day's
    budget spent by then, the retry waits for room instead of overrunning it."""
    campaign = demo_campaign(owner.id, size=3, name="Held")
    _start(app, campaign)
    pump.pump(campaign.id)
    monkeypatch.setitem(app.config, "MOCK_WHATSAPP_MARKETING_LIMIT_RATE", 1.0)
    _send_queued(app, campaign.id)
    monkeypatch.setitem(app.config, "MOCK_WHATSAPP_MARKETING_LIMIT_RATE", 0.0)
    held = db.session.scalars(
        sa.select(Message.id).where(
            Message.campaign_id == campaign.id, Message.held_until.is_not(None)
        )
    ).all()
    assert held and _statuses(campaign.id) == {MessageStatus.RETRYING: len(held)}
    _backdate_budget()  # a day on
    budget = ratelimit.budget(default_sender(), 10)
    others = [f"other-{n}" for n in range(BUDGET)]
    assert not ratelimit.consume_budget(db.session, budget, others).refused
    called = db.session.scalar(sa.text("SELECT count(*) FROM mock_whatsapp_messages"))
    before = len(jobs(queues.RETRY_TASK))  # the holds' own, a day on
    report = sending.send_batch(campaign.id, held, app.config, retry_queue=True)
    assert sorted(report.held) == sorted(held) and not report.sent
    assert db.session.scalar(sa.text("SELECT count(*) FROM mock_whatsapp_messages")) == called
    assert _statuses(campaign.id) == {MessageStatus.RETRYING: len(held)}
    now = db.session.scalar(sa.select(sa.func.now()))
    retries = jobs(queues.RETRY_TASK)
    assert len(retries) == before + 1
    retry = max(retries, key=lambda job: job["scheduled_at"])
    assert retry["args"]["message_ids"] == sorted(held)
    assert retry["scheduled_at"] - now > timedelta(hours=24)  # once the others' count leaves


def _usage(limit: int, used: int, room_in_hours: float | None, now):
    room = None if room_in_hours is None else now + timedelta(hours=room_in_hours)
    return ratelimit.BudgetUsage(limit=limit, used=used, checked_at=now, next_room_at=room)


def test_waves_follow_the_budget_and_the_pace():
    from datetime import UTC, datetime

    from campaigns import waves

    now = datetime(2026, 12, 5, 12, tzinfo=UTC)
    day = 86_400
    # Unlimited: one wave, as long as the pace needs.
    plan = waves.plan(1000, None, now, 10.0)
    assert (plan.days, plan.rest, plan.seconds) == (1, 0, 100.0)
    # 1,300 against 300 left today and 900 a day, at 10 a second: 300 now, then 900 when
    # room opens in 5 hours, the last 100 a day after that.
    plan = waves.plan(1300, _usage(900, 600, 5, now), now, 10.0)
    assert (plan.today, plan.rest, plan.days) == (300, 1000, 3)
    assert plan.rest_from == now + timedelta(hours=5)
    assert plan.seconds == pytest.approx(5 * 3600 + day + 100 / 10.0)
    # At 20 a minute the pace never reaches a budget of 90,000 a day: not carried over,
    # a million takes what the pace needs (about 35 days).
    plan = waves.plan(1_000_000, _usage(90_000, 0, None, now), now, 20 / 60)
    assert not plan.carried_over
    assert plan.seconds == pytest.approx(3_000_000) and plan.days == 35
    # A budget of none: never.
    plan = waves.plan(10, _usage(0, 0, None, now), now, 10.0)
    assert (plan.days, plan.seconds) == (0, None)


def test_the_dashboards_eta_waits_for_the_next_wave_as_the_page_does(app, client, limited, owner):
    from campaigns import progress
    from tests.helpers import login

    campaign = demo_campaign(owner.id, size=30, name="Waves")
    _start(app, campaign)
    pump.pump(campaign.id)
    _send_queued(app, campaign.id)
    own = progress.get_progress(db.session.get(Campaign, campaign.id))
    (listed,) = [a.progress for a in progress.active_campaigns().campaigns]
    assert listed.carried_over == own.carried_over > 0
    assert listed.eta_seconds == pytest.approx(own.eta_seconds, abs=5)
    login(client, owner)
    assert client.get("/").status_code == 200
