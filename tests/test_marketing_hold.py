"""Messages held by WhatsApp's per-user marketing limit (131049), issue 17.

The hold is an explicit mark (``messages.held_until``, migration 0020), set at the send
or by a failed status webhook: held once, a message is tried again when it falls due
and fails if held again, whatever errors came in between. Cancelling or failing the
campaign cancels held messages; pausing keeps them held. The pump comes back when the
first hold falls due rather than every 2 s, and the page, the API and the CSV say what
is held, until when, and what the code means. Waits are never waited: times are moved
back in the database.
"""

from __future__ import annotations

import csv
import io
import logging
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from flask_babel import force_locale
from sqlalchemy.orm import Session

from app import db
from campaigns import (
    campaign_states,
    fanout,
    message_states,
    pump,
    queues,
    reasons,
    recipients,
    sending,
    webhooks,
)
from campaigns.i18n import format_datetime
from campaigns.models import Campaign, CampaignStatus, Message, MessageStatus
from campaigns.progress import get_progress
from campaigns.providers import errors
from campaigns.services.campaigns import (
    cancel_campaign,
    pause_campaign,
    resume_campaign,
    send_campaign_now,
)
from campaigns.services.users import create_api_token
from tests.helpers import (
    assert_counters_match_rows,
    demo_campaign,
    jobs,
    lift_limits,
    post_webhook,
    status_webhook,
)

PT_BR = {"Accept-Language": "pt-BR,pt;q=0.9"}
HX = {"HX-Request": "true"}


@pytest.fixture
def small(app, owner, live_server, monkeypatch) -> Campaign:
    """A campaign of a few customers on the demo (mock) sender, its limits lifted."""
    monkeypatch.setitem(app.config, "APP_BASE_URL", live_server)
    lift_limits(owner)
    return demo_campaign(owner.id, size=4, name="Held")


def _queue_all(app, campaign: Campaign) -> list[int]:
    send_campaign_now(campaign.id, campaign.owner_id)
    fanout.load_audience(campaign.id, app.config)
    pump.pump(campaign.id)
    return sorted(i for j in jobs(queues.SEND_TASK) for i in j["args"]["message_ids"])


def _message(message_id: int) -> Message:
    return db.session.get(Message, message_id, populate_existing=True)


def _hold(app, campaign: Campaign, ids: list[int], monkeypatch) -> None:
    """Send ``ids`` into WhatsApp's marketing limit: held, due a day later."""
    monkeypatch.setitem(app.config, "MOCK_WHATSAPP_MARKETING_LIMIT_RATE", 1.0)
    report = sending.send_batch(campaign.id, ids, app.config, retry_queue=False)
    monkeypatch.setitem(app.config, "MOCK_WHATSAPP_MARKETING_LIMIT_RATE", 0.0)
    assert sorted(report.marketing_held) == sorted(ids)


def _retry_jobs(status: str = "todo") -> list[dict]:
    return [j for j in jobs(queues.RETRY_TASK) if j["status"] == status]


def _fall_due(message_ids: list[int]) -> None:
    """As if the hold's day had passed: the held times and the retry jobs moved back."""
    db.session.execute(
        sa.update(Message)
        .where(Message.id.in_(message_ids))
        .values(held_until=sa.func.now() - timedelta(seconds=1))
    )
    db.session.execute(
        sa.text(
            "UPDATE procrastinate_jobs SET scheduled_at = now() - interval '1 second'"
            " WHERE task_name = :task AND status = 'todo'"
        ),
        {"task": queues.RETRY_TASK},
    )
    db.session.commit()


def _pump_job() -> dict:
    (job,) = [j for j in jobs(queues.PUMP_TASK) if j["status"] == "todo"]
    return job


# -- the mark


def test_a_held_message_is_marked_and_fails_when_held_again_whatever_came_between(
    app, small, monkeypatch
):
    ids = _queue_all(app, small)
    _hold(app, small, ids[:1], monkeypatch)
    message = _message(ids[0])
    (job,) = _retry_jobs()
    # Marked until its one retry, which is due at that very time.
    assert message.status is MessageStatus.RETRYING and message.held_until is not None
    assert message.held_until == job["scheduled_at"]
    assert message.held_until > datetime.now(UTC) + timedelta(hours=23)
    # A transient error on its retry replaces the kept code: the mark still says "held".
    _fall_due(ids[:1])
    monkeypatch.setitem(app.config, "MOCK_WHATSAPP_TRANSIENT_RATE", 1.0)
    report = sending.send_batch(small.id, ids[:1], app.config, retry_queue=True)
    monkeypatch.setitem(app.config, "MOCK_WHATSAPP_TRANSIENT_RATE", 0.0)
    assert report.retrying == ids[:1]
    assert _message(ids[0]).error_code != "131049"
    db.session.execute(sa.text("DELETE FROM rate_limit_buckets"))  # its own retry limit
    db.session.commit()
    monkeypatch.setitem(app.config, "MOCK_WHATSAPP_MARKETING_LIMIT_RATE", 1.0)
    report = sending.send_batch(small.id, ids[:1], app.config, retry_queue=True)
    assert report.failed == ids[:1] and not report.marketing_held
    assert _message(ids[0]).status is MessageStatus.FAILED
    assert_counters_match_rows(small.id)


def test_an_old_131049_code_alone_does_not_count_as_held(app, small, monkeypatch):
    ids = _queue_all(app, small)
    # Its last error was 131049 (an earlier run, data from before the mark): no mark,
    # so it is held once, not failed at once.
    db.session.execute(sa.update(Message).where(Message.id == ids[0]).values(error_code="131049"))
    db.session.commit()
    _hold(app, small, ids[:1], monkeypatch)
    assert _message(ids[0]).status is MessageStatus.RETRYING


def test_retry_failed_clears_the_mark(app, small, monkeypatch):
    ids = _queue_all(app, small)
    _hold(app, small, ids[:1], monkeypatch)
    _fall_due(ids[:1])
    monkeypatch.setitem(app.config, "MOCK_WHATSAPP_MARKETING_LIMIT_RATE", 1.0)
    assert sending.send_batch(small.id, ids[:1], app.config, retry_queue=True).failed == ids[:1]
    assert message_states.reopen_failed(db.session, small.id, ["131049"]) == 1
    db.session.commit()
    message = _message(ids[0])
    assert (message.status, message.held_until) == (MessageStatus.PENDING, None)


def test_the_held_count_reads_the_partial_index(app, small, monkeypatch):
    ids = _queue_all(app, small)
    _hold(app, small, ids[:2], monkeypatch)
    assert message_states.held(db.session, small.id).count == 2
    # Tiny test tables let the planner pick any index: with the campaign's other indexes
    # out of the way (dropped in this transaction, rolled back), the statement must be
    # one the partial index serves (its WHERE implies the index's predicate).
    db.session.execute(sa.text("SET LOCAL enable_seqscan = off"))
    for other in (
        "messages_campaign_status_id_idx",
        "messages_campaign_id_idx",
        "messages_campaign_phone_key",
    ):
        db.session.execute(sa.text(f"DROP INDEX {other}"))
    db.session.execute(
        sa.text("ALTER TABLE messages DROP CONSTRAINT messages_campaign_customer_key")
    )
    plan = "\n".join(
        db.session.execute(
            sa.text(f"EXPLAIN {message_states.HELD.text}"), {"campaign_id": small.id}
        ).scalars()
    )
    db.session.rollback()
    assert "messages_held_idx" in plan, plan


# -- a 131049 in a failed status webhook


def _sent(app, campaign: Campaign, message_id: int) -> str:
    assert sending.send_batch(campaign.id, [message_id], app.config, retry_queue=False).sent
    return _message(message_id).provider_message_id


def _limited(wamid: str, message_id: int, ts: int | None = None) -> dict:
    extra = {} if ts is None else {"ts": ts}
    return status_webhook(
        wamid, "failed", message_id, errors=[{"code": 131049, "title": "limit"}], **extra
    )


def test_a_webhooks_131049_holds_once_and_a_replay_changes_nothing(app, client, small):
    ids = _queue_all(app, small)
    first = ids[0]
    wamid = _sent(app, small, first)
    sent_at = int(time.time()) - 25 * 3600  # the day before its retry, as it would be
    assert post_webhook(client, _limited(wamid, first, sent_at)).json["applied"] == 1
    message = _message(first)
    assert (message.status, message.error_code, message.tries) == (
        MessageStatus.RETRYING,
        "131049",
        0,
    )
    (job,) = _retry_jobs()
    assert job["args"]["message_ids"] == [first] and job["scheduled_at"] == message.held_until
    assert message.held_until > datetime.now(UTC) + timedelta(hours=23)
    assert_counters_match_rows(small.id)  # no longer counted as sent
    # The same webhook again: nothing held twice, no second job.
    assert post_webhook(client, _limited(wamid, first, sent_at)).json["ignored"] == 1
    assert len(_retry_jobs()) == 1 and _message(first).status is MessageStatus.RETRYING

    # Its one retry is in flight when the old failure is replayed: not about this call.
    _fall_due([first])
    claimed = message_states.claim(db.session, small.id, [first], MessageStatus.RETRYING)
    db.session.commit()
    assert [c.held for c in claimed] == [True]
    assert post_webhook(client, _limited(wamid, first, sent_at)).json["ignored"] == 1
    assert _message(first).status is MessageStatus.SENDING
    # The retry is accepted, then WhatsApp says 131049 again: held once already, it fails.
    message_states.record_sent(db.session, small.id, [(first, "wamid.again")])
    db.session.commit()
    assert post_webhook(client, _limited("wamid.again", first)).json["applied"] == 1
    message = _message(first)
    assert (message.status, message.error_code) == (MessageStatus.FAILED, "131049")
    assert len(_retry_jobs()) == 1
    assert_counters_match_rows(small.id)


@pytest.mark.parametrize(
    ("status", "errors_", "then"),
    [
        ("failed", [{"code": 131026, "title": "undeliverable"}], MessageStatus.FAILED),
        ("failed", [{"code": 131049, "title": "limit"}], MessageStatus.FAILED),
        # the webhook that keeps maintenance from sending it again if the worker dies
        ("sent", None, MessageStatus.SENT),
    ],
)
def test_the_retrys_own_statuses_apply_before_the_send_records_its_wamid(
    app, client, small, status, errors_, then
):
    ids = _queue_all(app, small)
    first = ids[0]
    wamid = _sent(app, small, first)
    day_before = int(time.time()) - 25 * 3600
    delivered = status_webhook(wamid, "delivered", first, ts=day_before)
    assert post_webhook(client, delivered).json["applied"] == 1
    assert post_webhook(client, _limited(wamid, first, day_before + 1)).json["applied"] == 1
    # The refused call's wamid and times are gone with the hold.
    message = _message(first)
    assert message.status is MessageStatus.RETRYING
    assert (message.provider_message_id, message.sent_at, message.delivered_at) == (
        None,
        None,
        None,
    )
    # Its retry is claimed; WhatsApp's word on the new call beats the send's record.
    _fall_due([first])
    message_states.claim(db.session, small.id, [first], MessageStatus.RETRYING)
    db.session.commit()
    # A late status of the refused call, found by its callback data now: not this call's.
    late = status_webhook(wamid, "read", first, ts=day_before + 2)
    assert post_webhook(client, late).json["ignored"] == 1
    extra = {} if errors_ is None else {"errors": errors_}
    body = status_webhook("wamid.retry", status, first, ts=int(time.time()), **extra)
    assert post_webhook(client, body).json["applied"] == 1
    message_states.record_sent(db.session, small.id, [(first, "wamid.retry")])
    db.session.commit()
    message = _message(first)
    assert (message.status, message.provider_message_id) == (then, "wamid.retry")
    if errors_ is not None:
        assert message.error_code == str(errors_[0]["code"])
    assert_counters_match_rows(small.id)


@pytest.mark.parametrize("code", [131049, 131026])
def test_an_earlier_calls_failure_replayed_within_the_minute_is_ignored(
    app, client, small, code, caplog
):
    # A call fails; within the minute its message is retried ("Retry failed", or the
    # hold fallen due) and claimed, and Meta delivers the old failure again. Its time is
    # no use (within STALE_FAILURE_SECONDS of the new call); its callback data names the
    # first call, so it changes nothing.
    ids = _queue_all(app, small)
    first = ids[0]
    wamid = _sent(app, small, first)
    assert _message(first).attempts == 1
    now = int(time.time())
    errors_ = [{"code": code, "title": "no"}]
    old = status_webhook(
        wamid, "failed", first, ts=now, errors=errors_, biz_opaque_callback_data=f"{first}.1"
    )
    assert post_webhook(client, old).json["applied"] == 1
    if code == 131049:  # held: its retry falls due
        _fall_due([first])
        source = MessageStatus.RETRYING
    else:  # failed: "Retry failed", and the pump's queueing
        assert message_states.reopen_failed(db.session, small.id, [str(code)]) == 1
        assert message_states.queue_next(db.session, small.id, 10) == [first]
        source = MessageStatus.QUEUED
    claimed = message_states.claim(db.session, small.id, [first], source)
    db.session.commit()
    assert [c.attempts for c in claimed] == [2]
    caplog.set_level(logging.INFO, "campaigns.webhooks")
    assert post_webhook(client, old).json["ignored"] == 1
    assert "about its call 1, not its current call 2" in caplog.text
    message = _message(first)
    assert (message.status, message.provider_message_id) == (MessageStatus.SENDING, None)
    assert len(_retry_jobs("todo")) == (1 if code == 131049 else 0)  # no second hold
    # The new call's own status, before the send records its wamid: applied.
    new = status_webhook(
        "wamid.second", "delivered", first, ts=now + 1, biz_opaque_callback_data=f"{first}.2"
    )
    assert post_webhook(client, new).json["applied"] == 1
    message_states.record_sent(db.session, small.id, [(first, "wamid.second")])
    db.session.commit()
    message = _message(first)
    assert (message.status, message.provider_message_id, message.error_code) == (
        MessageStatus.DELIVERED,
        "wamid.second",
        None,
    )
    assert_counters_match_rows(small.id)


def test_retry_failed_forgets_the_failed_calls_wamid(app, client, small):
    ids = _queue_all(app, small)
    first = ids[0]
    wamid = _sent(app, small, first)
    failed = status_webhook(wamid, "failed", first, errors=[{"code": 131026, "title": "x"}])
    assert post_webhook(client, failed).json["applied"] == 1
    assert message_states.reopen_failed(db.session, small.id, ["131026"]) == 1
    db.session.commit()
    message = _message(first)
    assert (message.status, message.provider_message_id, message.sent_at) == (
        MessageStatus.PENDING,
        None,
        None,
    )


def test_a_campaigns_webhook_holds_of_one_minute_share_a_retry_job(app, client, small, monkeypatch):
    ids = _queue_all(app, small)
    assert sorted(sending.send_batch(small.id, ids, app.config, retry_queue=False).sent) == ids
    # One minute for all of them, whatever the test's pace (a minute's edge would split them).
    now = datetime.now(UTC).replace(second=10, microsecond=0)
    monkeypatch.setattr(webhooks, "database_now", lambda session: now)
    monkeypatch.setattr(queues, "BATCH_MAX", 2)  # a group is full at two
    for message_id in ids[:3]:
        wamid = _message(message_id).provider_message_id
        assert post_webhook(client, _limited(wamid, message_id)).json["applied"] == 1
    due = (now + timedelta(hours=24)).replace(second=0) + timedelta(minutes=1)
    groups = _retry_jobs()
    # Not one job a message: the minute's holds in one job, a full one making way for more.
    assert [job["args"]["message_ids"] for job in groups] == [ids[:2], ids[2:3]]
    assert {job["scheduled_at"] for job in groups} == {due}
    assert {_message(i).held_until for i in ids[:3]} == {due}
    # A hold of another campaign's minute, or another minute, has a job of its own.
    wamid = _message(ids[3]).provider_message_id
    monkeypatch.setattr(webhooks, "database_now", lambda session: now + timedelta(minutes=1))
    assert post_webhook(client, _limited(wamid, ids[3])).json["applied"] == 1
    assert len(_retry_jobs()) == 3
    # Due, the group's job sends its messages together.
    _fall_due(ids)
    report = sending.send_batch(small.id, ids[:2], app.config, retry_queue=True)
    assert sorted(report.sent) == ids[:2]
    assert_counters_match_rows(small.id)


def test_two_holds_racing_for_a_new_minute_end_in_one_job(app, caplog):
    caplog.set_level(logging.DEBUG, "campaigns.queues")
    due = queues.held_group_due(datetime.now(UTC) + timedelta(hours=24))
    engine = db.engine
    with Session(engine) as first, Session(engine) as second:
        queues.defer_held(first, 7, 1, due)  # inserted, not committed yet
        worker = threading.Thread(
            target=lambda: (queues.defer_held(second, 7, 2, due), second.commit())
        )
        worker.start()
        time.sleep(0.3)  # the second's insert waits on the queueing lock's index
        first.commit()
        worker.join(10)
        assert not worker.is_alive()
    # The second's insert was refused by the first's lock, and it joined the first's job.
    assert "is already waiting" in caplog.text
    (job,) = _retry_jobs()
    assert job["args"] == {"campaign_id": 7, "message_ids": [1, 2]}
    assert job["scheduled_at"] == due


def test_a_webhooks_131049_beating_the_sends_record_keeps_the_hold(app, client, small):
    ids = _queue_all(app, small)
    first = ids[0]
    message_states.claim(db.session, small.id, [first], MessageStatus.QUEUED)
    db.session.commit()
    body = _limited("wamid.early", first)
    assert post_webhook(client, body).json["applied"] == 1  # found by its callback data
    message_states.record_sent(db.session, small.id, [(first, "wamid.early")])
    db.session.commit()
    message = _message(first)
    assert (message.status, message.error_code) == (MessageStatus.RETRYING, "131049")
    assert message.held_until is not None
    # Nor does the refused call's wamid come back with the record: the retry's statuses
    # must find the message by its callback data.
    assert (message.provider_message_id, message.sent_at) == (None, None)
    assert_counters_match_rows(small.id)


def test_a_webhooks_131049_holds_in_a_paused_campaign(app, client, small):
    ids = _queue_all(app, small)
    wamid = _sent(app, small, ids[0])
    pause_campaign(small.id, small.owner_id)
    assert post_webhook(client, _limited(wamid, ids[0])).json["applied"] == 1
    assert _message(ids[0]).status is MessageStatus.RETRYING
    assert_counters_match_rows(small.id)


def test_a_webhooks_131049_fails_the_message_of_a_finished_campaign(app, client, small):
    ids = _queue_all(app, small)
    assert sorted(sending.send_batch(small.id, ids, app.config, retry_queue=False).sent) == ids
    assert pump.pump(small.id) is False
    db.session.refresh(small)
    assert small.status is CampaignStatus.COMPLETED
    wamid = _message(ids[0]).provider_message_id
    assert post_webhook(client, _limited(wamid, ids[0])).json["applied"] == 1
    message = _message(ids[0])
    assert (message.status, message.error_code, message.held_until) == (
        MessageStatus.FAILED,
        "131049",
        None,
    )
    assert _retry_jobs() == []
    assert_counters_match_rows(small.id)


# -- cancel, fail, pause and resume


@pytest.mark.parametrize("how", ["cancel", "fail"])
def test_cancelling_or_failing_the_campaign_cancels_held_messages(app, small, monkeypatch, how):
    ids = _queue_all(app, small)
    _hold(app, small, ids[:2], monkeypatch)
    if how == "cancel":
        cancel_campaign(small.id, small.owner_id)
    else:
        campaign_states.fail(small.id, reasons.Reason(reasons.TEMPLATE_DISABLED))
    for message_id in ids:
        assert _message(message_id).status is MessageStatus.CANCELLED
    assert get_progress(db.session.get(Campaign, small.id)).held_count == 0
    assert_counters_match_rows(small.id)
    # Their retry job, once due, finds nothing waiting and sends nothing.
    _fall_due(ids[:2])
    report = sending.send_batch(small.id, ids[:2], app.config, retry_queue=True)
    assert report.skipped == 2 and not report.sent and not report.stopped
    assert_counters_match_rows(small.id)


def test_pause_and_resume_keep_held_messages_held(app, small, monkeypatch):
    ids = _queue_all(app, small)
    _hold(app, small, ids[:2], monkeypatch)
    until = _message(ids[0]).held_until
    pause_campaign(small.id, small.owner_id)
    assert message_states.held(db.session, small.id).count == 2
    resume_campaign(small.id, small.owner_id)
    assert message_states.held(db.session, small.id).count == 2
    assert _message(ids[0]).held_until == until
    (job,) = _retry_jobs()
    assert job["scheduled_at"] == until
    assert_counters_match_rows(small.id)


# -- the pump


def test_the_pump_waits_for_the_first_hold_then_completes(app, small, monkeypatch):
    ids = _queue_all(app, small)
    _hold(app, small, ids[:1], monkeypatch)
    assert sorted(sending.send_batch(small.id, ids[1:], app.config, retry_queue=False).sent)
    db.session.execute(sa.text("DELETE FROM procrastinate_jobs WHERE task_name = 'campaigns.pump'"))
    db.session.commit()
    # Only the held message is left: the pump comes back in HELD_INTERVAL_SECONDS, not 2 s.
    assert pump.pump(small.id) is True
    wait = (_pump_job()["scheduled_at"] - datetime.now(UTC)).total_seconds()
    assert pump.HELD_INTERVAL_SECONDS - 10 < wait <= pump.HELD_INTERVAL_SECONDS
    # A hold due sooner brings the next run to it.
    db.session.execute(sa.text("DELETE FROM procrastinate_jobs WHERE task_name = 'campaigns.pump'"))
    db.session.execute(
        sa.update(Message)
        .where(Message.id == ids[0])
        .values(held_until=sa.func.now() + timedelta(seconds=40))
    )
    db.session.commit()
    assert pump.pump(small.id) is True
    wait = (_pump_job()["scheduled_at"] - datetime.now(UTC)).total_seconds()
    assert 30 < wait <= 40
    # A resume (or "retry failed") does not wait for it: the waiting pump comes forward.
    queues.defer_pump(db.session, small.id)
    db.session.commit()
    assert _pump_job()["scheduled_at"] <= datetime.now(UTC)
    # Once due, the held message is in flight again (2 s runs), and its outcome completes.
    _fall_due(ids[:1])
    db.session.execute(sa.text("DELETE FROM procrastinate_jobs WHERE task_name = 'campaigns.pump'"))
    db.session.commit()
    assert pump.pump(small.id) is True
    wait = (_pump_job()["scheduled_at"] - datetime.now(UTC)).total_seconds()
    assert wait <= pump.INTERVAL_SECONDS
    assert sending.send_batch(small.id, ids[:1], app.config, retry_queue=True).sent == ids[:1]
    assert pump.pump(small.id) is False
    db.session.refresh(small)
    assert small.status is CampaignStatus.COMPLETED
    assert_counters_match_rows(small.id)


# -- what operators see


def test_the_page_and_the_api_say_how_many_are_held_and_when_they_go(
    app, client, login_as, small, monkeypatch
):
    ids = _queue_all(app, small)
    _hold(app, small, ids[:3], monkeypatch)
    sending.send_batch(small.id, ids[3:], app.config, retry_queue=False)
    progress = get_progress(db.session.get(Campaign, small.id))
    assert (progress.retrying, progress.held_count) == (3, 3)
    first_due = progress.held_retry_from
    assert first_due == min(_message(i).held_until for i in ids[:3])
    # The ETA waits for the last hold, rather than a rate held messages do not follow.
    assert progress.eta_seconds is not None and progress.eta_seconds > 23 * 3600

    _token, raw = create_api_token(small.owner_id)
    body = client.get(
        f"/api/v1/campaigns/{small.id}/progress", headers={"Authorization": f"Bearer {raw}"}
    ).json
    assert body["retrying"] == 3 and body["held"] == 3
    assert datetime.fromisoformat(body["held_retry_from"]) == first_due

    login_as()
    html = client.get(f"/campaigns/{small.id}/progress?shown=sending", headers=HX).get_data(
        as_text=True
    )
    with app.test_request_context():
        when = format_datetime(first_due)
    assert (
        f"3 messages held by WhatsApp's per-user marketing limit — tried again from {when}." in html
    )
    html = client.get(
        f"/campaigns/{small.id}/progress?shown=sending", headers={**HX, **PT_BR}
    ).get_data(as_text=True)
    # The time in the reader's language and time zone (pt_BR: day first, 24 h).
    with app.test_request_context(headers=PT_BR):
        when = format_datetime(first_due)
    assert when[2] == "/" and when[5] == "/"
    assert (
        "3 mensagens retidas pelo limite de marketing por usuário do WhatsApp — tentadas"
        f" de novo a partir de {when}." in html
    )


def test_the_csv_explains_the_codes_disparo_knows_in_the_readers_language(
    app, client, login_as, small, monkeypatch
):
    ids = _queue_all(app, small)
    _hold(app, small, ids[:1], monkeypatch)
    login_as()
    body = client.get(f"/campaigns/{small.id}/recipients.csv?format=standard", headers=PT_BR)
    rows = list(csv.reader(io.StringIO(body.get_data(as_text=True).removeprefix("\ufeff"))))
    header, rows = rows[0], rows[1:]
    explained = recipients.RECIPIENT_CSV_COLUMNS.index("error_explanation")
    assert header[explained] == "O que o erro significa"
    by_code = {row[4]: row for row in rows}
    held = by_code["131049"]
    with app.test_request_context(headers=PT_BR):
        assert held[explained] == errors.explain("131049")
        with force_locale("en"):
            assert held[explained] != errors.explain("131049")  # the reader's language
    # WhatsApp's own text kept beside it, as it came.
    assert held[5].endswith("not delivered to maintain healthy ecosystem engagement.")
    assert by_code[""][explained] == ""  # no code, nothing to explain


def test_a_paused_campaigns_page_says_held_messages_wait_for_the_resume(
    app, client, login_as, small, monkeypatch
):
    ids = _queue_all(app, small)
    _hold(app, small, ids[:2], monkeypatch)
    pause_campaign(small.id, small.owner_id)
    first_due = get_progress(db.session.get(Campaign, small.id)).held_retry_from
    login_as()
    url = f"/campaigns/{small.id}/progress?shown=paused"
    html = client.get(url, headers=HX).get_data(as_text=True)
    with app.test_request_context():
        when = format_datetime(first_due)
    # Paused, a due hold goes back to pending: not tried at its time, but after the resume.
    assert "tried again from" not in html
    assert (
        "2 messages held by WhatsApp's per-user marketing limit — tried again once the"
        f" campaign is resumed, not before {when}." in html
    )
    html = client.get(url, headers={**HX, **PT_BR}).get_data(as_text=True)
    with app.test_request_context(headers=PT_BR):
        when = format_datetime(first_due)
    assert (
        "2 mensagens retidas pelo limite de marketing por usuário do WhatsApp — tentadas de"
        f" novo quando a campanha for retomada, não antes de {when}." in html
    )
