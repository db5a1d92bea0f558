"""Meta's error policies, each code answered by the mock WhatsApp and handled by the engine.

131049 (per-user marketing limit) holds a message for message-retry a day later, once;
131056 (pair rate limit) puts it back without spending a try and leaves the sender's
rate alone; 131026 (undeliverable) remembers the number, as a hash, for later
campaigns to skip. Waits are never waited: the held time is moved back in the database.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from app import db
from campaigns import counters, fanout, message_states, pump, queues, sending
from campaigns.models import (
    Campaign,
    CampaignStatus,
    Message,
    MessageStatus,
    Role,
    Sender,
    Suppression,
    UndeliverableNumber,
)
from campaigns.providers import errors
from campaigns.providers.base import SendError
from campaigns.services import undeliverable
from campaigns.services.campaigns import send_campaign_now
from campaigns.services.personal_data import erase_person, preview_erasure
from campaigns.services.suppressions import phone_hash
from jobs import tasks
from mocks.provider import MockProvider
from tests.helpers import (
    assert_counters_match_rows,
    demo_campaign,
    jobs,
    lift_limits,
    post_webhook,
    status_webhook,
)


def _queue_all(app, campaign: Campaign) -> list[int]:
    send_campaign_now(campaign.id, campaign.owner_id)
    fanout.load_audience(campaign.id, app.config)
    pump.pump(campaign.id)
    return [i for j in jobs(queues.SEND_TASK) for i in j["args"]["message_ids"]]


def _message(message_id: int) -> Message:
    return db.session.get(Message, message_id, populate_existing=True)


def _due(task: str) -> list[list[int]]:
    """The message ids of this task's jobs a worker would fetch now (due, not started)."""
    return [
        list(row.args["message_ids"])
        for row in db.session.execute(
            sa.text(
                "SELECT args FROM procrastinate_jobs WHERE task_name = :task AND status = 'todo'"
                " AND (scheduled_at IS NULL OR scheduled_at <= now()) ORDER BY id"
            ),
            {"task": task},
        )
    ]


def _backdate_jobs(task: str, hours: float) -> None:
    """Move this task's waiting jobs back in time, as if ``hours`` had passed."""
    db.session.execute(
        sa.text(
            "UPDATE procrastinate_jobs SET scheduled_at = scheduled_at - make_interval(secs => :s)"
            " WHERE task_name = :task AND status = 'todo'"
        ),
        {"task": task, "s": hours * 3600},
    )
    db.session.commit()


@pytest.fixture
def small(app, owner, live_server, monkeypatch) -> Campaign:
    """A campaign of a few customers on the demo (mock) sender, its limits lifted; the
    sends go to the live server's mock WhatsApp."""
    monkeypatch.setitem(app.config, "APP_BASE_URL", live_server)
    lift_limits(owner)
    return demo_campaign(owner.id, size=4, name="Policies")


def test_the_mock_answers_the_new_codes_and_they_map_to_their_policies(app, small, monkeypatch):
    ids = _queue_all(app, small)
    for setting, code, kind in (
        ("MOCK_WHATSAPP_MARKETING_LIMIT_RATE", "131049", errors.ErrorKind.SLOW_RETRY),
        ("MOCK_WHATSAPP_PAIR_LIMIT_RATE", "131056", errors.ErrorKind.PAIR_LIMITED),
    ):
        monkeypatch.setitem(app.config, setting, 1.0)
        sending.send_batch(small.id, ids[:1], app.config, retry_queue=False)
        assert _message(ids[0]).error_code == code
        assert errors.stored_kind(code) is kind and errors.is_retryable(code)
        monkeypatch.setitem(app.config, setting, 0.0)
        db.session.execute(  # back to queued for the next code, as a fresh message
            sa.update(Message)
            .where(Message.id == ids[0])
            .values(status=MessageStatus.QUEUED, error_code=None, throttled_at=None, tries=0)
        )
        db.session.commit()


def test_131049_is_held_a_day_retried_once_then_failed(app, small, monkeypatch):
    monkeypatch.setitem(app.config, "MOCK_WHATSAPP_MARKETING_LIMIT_RATE", 1.0)
    ids = _queue_all(app, small)
    # Throttled an hour ago: the hold starts a wait of its own, or its one retry would
    # be past the throttle's deadline and fail at its first 130429.
    db.session.execute(
        sa.update(Message)
        .where(Message.id.in_(ids))
        .values(throttled_at=sa.func.now() - timedelta(hours=1))
    )
    db.session.commit()
    report = sending.send_batch(small.id, ids, app.config, retry_queue=False)
    assert sorted(report.marketing_held) == sorted(ids) and not report.failed
    for message_id in ids:
        message = _message(message_id)
        assert (message.status, message.error_code, message.tries) == (
            MessageStatus.RETRYING,
            "131049",
            0,
        )
        assert message.throttled_at is None
    # Not retried at once: its message-retry job is due MARKETING_LIMIT_RETRY_HOURS on.
    (held,) = jobs(queues.RETRY_TASK)
    assert sorted(held["args"]["message_ids"]) == sorted(ids)
    assert held["scheduled_at"] > datetime.now(UTC) + timedelta(hours=23)
    assert _due(queues.RETRY_TASK) == []
    # Held messages keep the campaign sending (nothing pending, nothing queued).
    assert pump.pump(small.id) is True
    db.session.refresh(small)
    assert small.status is CampaignStatus.SENDING
    assert counters.totals(db.session, small.id)["retrying"] == len(ids)
    assert_counters_match_rows(small.id)

    # A day later the job is due: the first passes, the others are held again and fail.
    _backdate_jobs(queues.RETRY_TASK, 25)
    assert [sorted(due) for due in _due(queues.RETRY_TASK)] == [sorted(ids)]
    first, rest = ids[0], ids[1:]
    monkeypatch.setitem(app.config, "MOCK_WHATSAPP_MARKETING_LIMIT_RATE", 0.0)
    assert sending.send_batch(small.id, [first], app.config, retry_queue=True).sent == [first]
    monkeypatch.setitem(app.config, "MOCK_WHATSAPP_MARKETING_LIMIT_RATE", 1.0)
    report = sending.send_batch(small.id, rest, app.config, retry_queue=True)
    assert sorted(report.failed) == sorted(rest) and not report.marketing_held
    for message_id in rest:
        message = _message(message_id)
        assert (message.status, message.error_code) == (MessageStatus.FAILED, "131049")
        assert message.attempts == 2  # the first call and the one retry, no more
    assert len(jobs(queues.RETRY_TASK)) == 1  # no further hold was deferred
    assert_counters_match_rows(small.id)


def test_131056_waits_without_spending_a_try_and_the_sender_keeps_its_rate(app, small, monkeypatch):
    monkeypatch.setitem(app.config, "MOCK_WHATSAPP_PAIR_LIMIT_RATE", 1.0)
    rate = sa.select(
        Sender.rate_limit_per_minute,
        Sender.min_interval_ms,
        Sender.throughput_factor,
        Sender.last_throttled_at,
    ).where(Sender.id == small.sender_id)
    rate_before = db.session.execute(rate).one()
    ids = _queue_all(app, small)
    message_id = ids[0]
    for call in (1, 2, 3, 4):  # more calls than the queue's 3 tries: none is spent
        report = sending.send_batch(small.id, [message_id], app.config, retry_queue=False)
        assert report.pair_limited == [message_id] and not report.throttled
        message = _message(message_id)
        assert (message.status, message.tries, message.attempts) == (
            MessageStatus.QUEUED,
            0,
            call,
        )
        assert message.error_code == "131056" and message.throttled_at is not None
    # It waits PAIR_LIMIT_RETRY_SECONDS on its own queue, not on message-retry.
    later = [j for j in jobs(queues.SEND_TASK) if j["args"]["message_ids"] == [message_id]]
    wait = app.config["PAIR_LIMIT_RETRY_SECONDS"]
    assert later[-1]["scheduled_at"] > datetime.now(UTC) + timedelta(seconds=wait - 5)
    assert jobs(queues.RETRY_TASK) == []
    assert db.session.execute(rate).one() == rate_before  # the sender is not slowed (1.0)
    assert rate_before.throughput_factor == 1.0
    # Past the throttle deadline it fails with the code, rather than loop forever.
    deadline = app.config["THROTTLE_DEADLINE_MINUTES"]
    db.session.execute(
        sa.update(Message)
        .where(Message.id == message_id)
        .values(throttled_at=sa.func.now() - timedelta(minutes=deadline + 1))
    )
    db.session.commit()
    report = sending.send_batch(small.id, [message_id], app.config, retry_queue=False)
    assert report.failed == [message_id]
    assert (_message(message_id).status, _message(message_id).error_code) == (
        MessageStatus.FAILED,
        "131056",
    )
    # It passes once the pair limit lifts: the others go out.
    monkeypatch.setitem(app.config, "MOCK_WHATSAPP_PAIR_LIMIT_RATE", 0.0)
    report = sending.send_batch(small.id, ids[1:], app.config, retry_queue=False)
    assert sorted(report.sent) == sorted(ids[1:])
    assert_counters_match_rows(small.id)


def _undeliverable_first(app, campaign: Campaign, monkeypatch) -> str:
    """Send the campaign's first message into a 131026; its number."""
    ids = _queue_all(app, campaign)
    monkeypatch.setitem(app.config, "MOCK_WHATSAPP_PERMANENT_RATE", 1.0)
    report = sending.send_batch(campaign.id, ids[:1], app.config, retry_queue=False)
    monkeypatch.setitem(app.config, "MOCK_WHATSAPP_PERMANENT_RATE", 0.0)
    assert report.failed == ids[:1]
    message = _message(ids[0])
    assert message.error_code == "131026"
    return message.phone


def _next_campaign_row(app, owner_id: int, phone: str) -> Message:
    later = demo_campaign(owner_id, size=4, name="Next")
    send_campaign_now(later.id, owner_id)
    fanout.load_audience(later.id, app.config)
    assert_counters_match_rows(later.id)
    return db.session.scalars(
        sa.select(Message).where(Message.campaign_id == later.id, Message.phone == phone)
    ).one()


def test_131026_is_remembered_as_a_hash_and_skipped_by_the_next_campaign(app, small, monkeypatch):
    phone = _undeliverable_first(app, small, monkeypatch)
    (row,) = db.session.scalars(sa.select(UndeliverableNumber)).all()
    assert row.phone_hash == phone_hash(phone) and phone not in row.phone_hash
    skipped = _next_campaign_row(app, small.owner_id, phone)
    assert (skipped.status, skipped.error_code) == (MessageStatus.SKIPPED, "undeliverable")
    assert skipped.error_text is None  # worded when shown, in the reader's language
    assert "30 days" in errors.explain("undeliverable")
    assert "131026" in errors.describe("undeliverable", None)


def test_131026_in_a_status_webhook_is_remembered_too(app, client, small):
    first = _queue_all(app, small)[0]
    assert sending.send_batch(small.id, [first], app.config, retry_queue=False).sent == [first]
    wamid = _message(first).provider_message_id
    body = status_webhook(wamid, "failed", first, errors=[{"code": 131026, "title": "no"}])
    assert post_webhook(client, body).status_code == 200
    message = _message(first)
    assert (message.status, message.error_code) == (MessageStatus.FAILED, "131026")
    assert undeliverable.recent(db.session, [message.phone], 30) == {message.phone}


def test_131026_is_forgotten_after_the_period(app, small, monkeypatch):
    phone = _undeliverable_first(app, small, monkeypatch)
    days = app.config["UNDELIVERABLE_DAYS"]
    assert undeliverable.delete_expired(db.session, days) == 0  # still within the period
    db.session.execute(
        sa.update(UndeliverableNumber).values(
            failed_at=sa.func.now() - timedelta(days=days, minutes=1)
        )
    )
    db.session.commit()
    # Past the period the fan-out no longer skips it, even before maintenance prunes...
    assert undeliverable.recent(db.session, [phone], days) == set()
    # ...and the maintenance job deletes the row, as its tick runs it.
    tasks.reconcile(timestamp=int(time.time()))
    assert db.session.scalars(sa.select(UndeliverableNumber)).all() == []
    row = _next_campaign_row(app, small.owner_id, phone)
    assert row.status is MessageStatus.PENDING


def test_131026_goes_with_the_persons_erasure(app, small, monkeypatch):
    phone = _undeliverable_first(app, small, monkeypatch)
    report = erase_person(phone, None)
    assert report.messages >= 1
    assert db.session.scalars(sa.select(UndeliverableNumber)).all() == []


def test_the_error_breakdown_says_what_disparo_did(app):
    assert "24 h" in errors.explain("131049") and "once" in errors.explain("131049")
    assert "without slowing the sender" in errors.explain("131056")
    assert "later campaigns" in errors.explain("131026")


def _erase_elsewhere(app, phone: str) -> None:
    """Erase the number from another session (a thread with its own app context), as an
    admin's request would while this one works."""
    failure: list[BaseException] = []

    def run() -> None:
        with app.app_context():
            try:
                erase_person(phone, None)
            except BaseException as error:  # pragma: no cover - reported below
                failure.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert not thread.is_alive() and not failure, failure


def _failed_webhook_while_erased(app, client, small, monkeypatch, code: int) -> tuple[int, str]:
    """Send one message, then WhatsApp's failed status with ``code`` for it, the person's
    erasure committing after the webhook read the message (with its number) and before it
    applies; (the message's id, its number)."""
    first = _queue_all(app, small)[0]
    assert sending.send_batch(small.id, [first], app.config, retry_queue=False).sent == [first]
    message = _message(first)
    phone, wamid = message.phone, message.provider_message_id
    db.session.commit()
    real = message_states.record_status

    def erased_meanwhile(session, message, *args, **kwargs):
        _erase_elsewhere(app, phone)
        return real(session, message, *args, **kwargs)

    monkeypatch.setattr(message_states, "record_status", erased_meanwhile)
    body = status_webhook(wamid, "failed", first, errors=[{"code": code, "title": "no"}])
    assert post_webhook(client, body).status_code == 200
    return first, phone


def test_a_late_131026_webhook_for_an_erased_recipient_writes_no_hash(
    app, client, small, monkeypatch
):
    first, _phone = _failed_webhook_while_erased(app, client, small, monkeypatch, 131026)
    after = _message(first)
    assert (after.status, after.error_code, after.phone) == (MessageStatus.FAILED, "131026", None)
    assert db.session.scalars(sa.select(UndeliverableNumber)).all() == []


def test_a_131026_send_result_for_a_recipient_erased_during_the_call_writes_no_hash(
    app, small, monkeypatch
):
    ids = _queue_all(app, small)
    phone = _message(ids[0]).phone
    db.session.commit()
    real = MockProvider.send_template

    def erased_during_the_call(self, **kwargs):
        _erase_elsewhere(app, phone)  # the message is in `sending`: its number goes
        return real(self, **kwargs)

    monkeypatch.setattr(MockProvider, "send_template", erased_during_the_call)
    monkeypatch.setitem(app.config, "MOCK_WHATSAPP_PERMANENT_RATE", 1.0)
    report = sending.send_batch(small.id, ids[:1], app.config, retry_queue=False)
    assert report.failed == ids[:1]
    after = _message(ids[0])
    assert (after.error_code, after.phone) == ("131026", None)
    assert db.session.scalars(sa.select(UndeliverableNumber)).all() == []


def _listed(phone: str) -> list[tuple[str | None, str | None]]:
    """The suppression rows of this number: (phone in the clear, hash)."""
    return [
        (row.phone, row.phone_hash)
        for row in db.session.scalars(
            sa.select(Suppression).where(
                sa.or_(Suppression.phone == phone, Suppression.phone_hash == phone_hash(phone))
            )
        )
    ]


def test_a_late_opt_out_webhook_for_an_erased_recipient_keeps_it_only_as_a_hash(
    app, client, small, monkeypatch
):
    first, phone = _failed_webhook_while_erased(app, client, small, monkeypatch, 131050)
    assert _message(first).phone is None
    # The opt-out stands (the person asked not to be contacted), never in the clear.
    assert _listed(phone) == [(None, phone_hash(phone))]


def test_an_opt_out_send_result_for_a_recipient_erased_during_the_call_is_hashed(
    app, small, monkeypatch
):
    ids = _queue_all(app, small)
    phone = _message(ids[0]).phone
    db.session.commit()

    def opted_out_while_erased(self, **kwargs):
        _erase_elsewhere(app, phone)  # the message is in `sending`: its number goes
        raise SendError("opted out", errors.ErrorKind.PERMANENT, 131050, 400)

    monkeypatch.setattr(MockProvider, "send_template", opted_out_while_erased)
    assert sending.send_batch(small.id, ids[:1], app.config, retry_queue=False).failed == ids[:1]
    assert _message(ids[0]).phone is None
    assert _listed(phone) == [(None, phone_hash(phone))]


def test_an_opt_out_send_result_lists_the_number_in_the_clear_otherwise(app, small, monkeypatch):
    ids = _queue_all(app, small)
    phone = _message(ids[0]).phone
    db.session.commit()

    def opted_out(self, **kwargs):
        raise SendError("opted out", errors.ErrorKind.PERMANENT, 131050, 400)

    monkeypatch.setattr(MockProvider, "send_template", opted_out)
    assert sending.send_batch(small.id, ids[:1], app.config, retry_queue=False).failed == ids[:1]
    assert _listed(phone) == [(phone, None)]


def test_the_erasure_preview_lists_the_undeliverable_store(
    app, client, small, monkeypatch, login_as
):
    phone = _undeliverable_first(app, small, monkeypatch)
    # Its campaign's data erased already (retention): only the store's row is left.
    db.session.execute(sa.update(Message).values(phone=None, customer_data={}, params=None))
    db.session.commit()
    report = preview_erasure(phone)
    assert report.undeliverable and report.messages == 0 and not report.nothing_stored
    login_as(Role.ADMIN)
    page = client.post("/users/personal-data/preview", data={"phone": phone})
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert "Undeliverable numbers" in text and "could not deliver to it lately" in text
    done = erase_person(phone, None)
    assert done.undeliverable and done.details()["undeliverable_deleted"] is True
    assert db.session.scalars(sa.select(UndeliverableNumber)).all() == []
    assert preview_erasure(phone).nothing_stored
