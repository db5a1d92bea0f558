"""The sending engine's steps, run in-process against the real database and mock ERP."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from app import db
from campaigns import (
    calls,
    campaign_states,
    counters,
    fanout,
    maintenance,
    message_states,
    pump,
    queues,
    sending,
)
from campaigns.models import (
    Campaign,
    CampaignStatus,
    Message,
    MessageStatus,
    Notification,
    Suppression,
)
from campaigns.providers import errors
from campaigns.providers.base import SendError, SendResult
from campaigns.providers.errors import ErrorKind
from campaigns.services import Conflict
from campaigns.services.campaigns import (
    cancel_campaign,
    pause_campaign,
    resume_campaign,
    retry_failed,
    schedule_campaign,
    send_campaign_now,
)
from campaigns.services.suppressions import add_suppression
from campaigns.services.templates import default_sender
from tests.helpers import (
    assert_counters_match_rows,
    audience_numbers,
    counted_statements,
    demo_campaign,
    jobs,
    message_counts,
    post_webhook,
    reply_webhook,
    status_webhook,
    webhook_body,
    webhook_signature,
)


def load_audience(app, campaign) -> None:
    send_campaign_now(campaign.id, campaign.owner_id)
    fanout.load_audience(campaign.id, app.config)


def test_send_now_starts_and_defers_the_fan_out_in_one_transaction(campaign):
    send_campaign_now(campaign.id, campaign.owner_id)
    db.session.refresh(campaign)
    assert campaign.status is CampaignStatus.SENDING and campaign.started_at
    assert [j["args"] for j in jobs(queues.FAN_OUT_TASK)] == [{"campaign_id": campaign.id}]
    assert [j["args"] for j in jobs(queues.NOTIFY_TASK)] == [
        {"campaign_id": campaign.id, "kind": "started"}
    ]
    with pytest.raises(Conflict, match="cannot be sent now"):
        send_campaign_now(campaign.id, campaign.owner_id)


def test_scheduler_claims_due_campaigns_once(campaign):
    schedule_campaign(campaign.id, datetime.now(UTC) + timedelta(minutes=5), campaign.owner_id)
    assert campaign_states.start_due(datetime.now(UTC)) == []  # not due yet
    later = datetime.now(UTC) + timedelta(minutes=6)
    assert campaign_states.start_due(later) == [campaign.id]
    assert campaign_states.start_due(later) == []  # a second tick (or worker) finds nothing
    assert len(jobs(queues.FAN_OUT_TASK)) == 1


def test_fan_out_loads_the_audience_once_with_reasons(app, campaign):
    load_audience(app, campaign)
    db.session.refresh(campaign)
    assert campaign.audience_loaded_at is not None
    rows = message_counts(campaign.id)
    assert sum(rows.values()) == 120
    skipped = db.session.scalars(
        sa.select(Message).where(
            Message.campaign_id == campaign.id, Message.status == MessageStatus.SKIPPED
        )
    ).all()
    numbers = audience_numbers(app, campaign)
    assert len(skipped) == len(numbers) - len({number for number in numbers if number}) > 0
    # Each skip keeps its code and no sentence: the code is worded when shown.
    assert all(
        m.error_code in ("invalid_phone", "duplicate", "suppressed") and m.error_text is None
        for m in skipped
    )
    pending = db.session.scalars(
        sa.select(Message).where(
            Message.campaign_id == campaign.id, Message.status == MessageStatus.PENDING
        )
    ).all()
    assert len({m.phone for m in pending}) == len(pending)
    assert pending[0].params["discount"] == "10%" and pending[0].params["first_name"]
    assert_counters_match_rows(campaign.id)
    # A re-run (a crash after the last page) adds nothing.
    campaign.audience_loaded_at, campaign.erp_cursor = None, None
    db.session.commit()
    fanout.load_audience(campaign.id, app.config)
    assert sum(message_counts(campaign.id).values()) == 120
    assert_counters_match_rows(campaign.id)
    assert [j["args"] for j in jobs(queues.PUMP_TASK)] == [{"campaign_id": campaign.id}]  # one pump


def test_suppressed_numbers_are_skipped(app, campaign):
    first = db.session.get(Campaign, campaign.id)
    from campaigns import erp

    with erp.client_from_config(app.config) as client:
        customers = client.page(first.segment, None, 5).customers
    from campaigns.phones import normalise

    phone = next(p for c in customers if (p := normalise(c["phone"])))
    db.session.add(Suppression(phone=phone, reason="asked", source="manual"))
    db.session.commit()
    load_audience(app, campaign)
    row = db.session.scalar(
        sa.select(Message).where(Message.campaign_id == campaign.id, Message.phone == phone)
    )
    assert row.status is MessageStatus.SKIPPED and row.error_code == "suppressed"


def test_pump_keeps_a_paced_bounded_window(app, campaign):
    sender = campaign.sender
    sender.rate_limit_per_minute, sender.min_interval_ms = 60, 0  # one a second
    db.session.commit()
    load_audience(app, campaign)
    assert pump.pump(campaign.id) is True
    sends = jobs(queues.SEND_TASK)
    # The 60 s horizon at one a second, not the whole audience: batches of what the
    # limits allow in a second (one), 61/60 s apart (the limiter counts a minute's
    # grants over 61 s: ratelimit.counted_seconds).
    assert len(sends) == 60
    assert {len(j["args"]["message_ids"]) for j in sends} == {1}
    gaps = [
        (b["scheduled_at"] - a["scheduled_at"]).total_seconds()
        for a, b in itertools.pairwise(sends)
    ]
    assert gaps == pytest.approx([61 / 60] * len(gaps), abs=1e-6)
    assert all(j["queue_name"] == "campaign-messages" for j in sends)
    pump.pump(campaign.id)
    assert len(jobs(queues.SEND_TASK)) == 60  # the window is full: nothing more
    assert_counters_match_rows(campaign.id)


def test_pump_batches_what_the_limits_allow_in_a_second(app, campaign):
    campaign.sender.rate_limit_per_minute = 4800  # Meta's default 80 a second
    db.session.commit()
    load_audience(app, campaign)
    pump.pump(campaign.id)
    sends = jobs(queues.SEND_TASK)
    pending = message_counts(campaign.id)["queued"]  # the audience less the skipped
    # At 4,800 per 61 s (the span the limiter counts) a second holds 78.
    assert [len(j["args"]["message_ids"]) for j in sends] == [78, pending - 78]
    assert {j["args"]["campaign_id"] for j in sends} == {campaign.id}
    first, second = sends
    gap = (second["scheduled_at"] - first["scheduled_at"]).total_seconds()
    assert gap == pytest.approx(78 * 61 / 4800, abs=1e-6)
    queued = [i for j in sends for i in j["args"]["message_ids"]]
    assert queued == sorted(queued) and len(set(queued)) == pending


def test_a_sender_with_a_minimum_gap_gets_batches_of_one(app, campaign):
    campaign.sender.min_interval_ms = 10
    db.session.commit()
    load_audience(app, campaign)
    pump.pump(campaign.id)
    assert {len(j["args"]["message_ids"]) for j in jobs(queues.SEND_TASK)} == {1}


def test_the_pump_defers_its_next_run_with_its_work(app, campaign):
    load_audience(app, campaign)  # the fan-out's last page deferred the first run
    (first,) = jobs(queues.PUMP_TASK)
    assert first["scheduled_at"] is None and first["status"] == "todo"
    _run_waiting_pump()
    assert pump.pump(campaign.id) is True
    (waiting,) = [j for j in jobs(queues.PUMP_TASK) if j["status"] == "todo"]
    now = db.session.scalar(sa.select(sa.func.now()))
    due_in = (waiting["scheduled_at"] - now).total_seconds()
    assert 0 < due_in <= pump.INTERVAL_SECONDS
    # Its queueing lock keeps one waiting: a second run in the meantime adds none.
    assert pump.pump(campaign.id) is True
    assert len([j for j in jobs(queues.PUMP_TASK) if j["status"] == "todo"]) == 1


def _run_waiting_pump() -> None:
    """Mark the waiting pump job as taken by a worker (what the worker does before running it)."""
    db.session.execute(
        sa.text("UPDATE procrastinate_jobs SET status = 'doing' WHERE task_name = :t"),
        {"t": queues.PUMP_TASK},
    )
    db.session.commit()


def _queue_all(app, campaign) -> list[int]:
    load_audience(app, campaign)
    pump.pump(campaign.id)
    return [i for j in jobs(queues.SEND_TASK) for i in j["args"]["message_ids"]]


def send(app, campaign, ids, *, retry_queue=False) -> sending.BatchReport:
    return sending.send_batch(campaign.id, ids, app.config, retry_queue=retry_queue)


def _message(message_id: int) -> Message:
    return db.session.get(Message, message_id, populate_existing=True)


def test_a_batch_records_sent_and_counts_it(app, campaign, fake):
    ids = _queue_all(app, campaign)[:100]
    report = send(app, campaign, ids)
    assert sorted(report.sent) == ids and len(fake.calls) == 100
    first = _message(ids[0])
    assert first.status is MessageStatus.SENT and first.provider_message_id == f"wamid.{ids[0]}"
    assert first.attempts == first.tries == 1 and first.sent_at
    assert fake.calls[0][0] in {_message(i).phone for i in ids}
    # The same job again (a duplicate after a crash) sends nothing.
    assert send(app, campaign, ids).skipped == 100
    assert len(fake.calls) == 100
    assert_counters_match_rows(campaign.id)


def test_a_batch_costs_the_same_statements_whatever_its_size(app, campaign, fake, monkeypatch):
    """Load, read, take the limits, claim, count, record, count: the job's SQL, per batch."""
    ids = _queue_all(app, campaign)
    monkeypatch.setattr(calls, "GATHER_SECONDS", 30.0)  # the 100 calls recorded together
    counts = []
    for batch in (ids[:1], ids[1:101]):
        with counted_statements() as statements:
            assert len(send(app, campaign, batch).sent) == len(batch)
        counts.append(len(statements))
    assert counts[0] == counts[1], counts


def test_a_batch_mixing_outcomes_records_each_message(app, campaign, fake):
    ids = _queue_all(app, campaign)[:6]
    sent, transient, throttled, permanent, opted_out, slow = ids
    fake.plan = {
        transient: [SendError("busy", ErrorKind.RETRY, code=131000, http_status=500)],
        throttled: [SendError("Rate limit hit", ErrorKind.THROTTLED, 130429, 429)],
        permanent: [SendError("Message undeliverable", ErrorKind.PERMANENT, 131026, 400)],
        opted_out: [SendError("stopped marketing", ErrorKind.PERMANENT, 131050, 400)],
        slow: [SendError("marketing cap", ErrorKind.SLOW_RETRY, 131049, 400)],
    }
    report = send(app, campaign, ids)
    assert report.sent == [sent] and sorted(report.failed) == [permanent, opted_out]
    assert report.retrying == [transient] and report.throttled == [throttled]
    assert report.marketing_held == [slow]
    state = {i: _message(i) for i in ids}
    assert state[sent].status is MessageStatus.SENT
    # A transient error spends a try and waits 2 s on this queue.
    assert (state[transient].status, state[transient].tries) == (MessageStatus.QUEUED, 1)
    assert state[transient].error_code == "131000"
    # A throttle spends none and stamps the first throttle.
    assert (state[throttled].status, state[throttled].tries) == (MessageStatus.QUEUED, 0)
    assert state[throttled].throttled_at is not None and state[throttled].attempts == 1
    assert (state[permanent].status, state[permanent].error_code) == (
        MessageStatus.FAILED,
        "131026",
    )
    assert state[permanent].error_text == "Message undeliverable"
    phone = state[opted_out].phone
    assert db.session.query(Suppression).filter_by(phone=phone, source="provider").count() == 1
    # Held by the marketing limit: handed over to message-retry, due a day later
    # (MARKETING_LIMIT_RETRY_HOURS), with fresh tries (tests/test_error_policies.py).
    assert (state[slow].status, state[slow].tries) == (MessageStatus.RETRYING, 0)
    later = {tuple(j["args"]["message_ids"]): j for j in jobs(queues.SEND_TASK)}
    now = datetime.now(UTC)
    assert 1.5 < (later[(transient,)]["scheduled_at"] - now).total_seconds() < 3
    assert 1.5 < (later[(throttled,)]["scheduled_at"] - now).total_seconds() < 3
    (retry,) = jobs(queues.RETRY_TASK)
    assert retry["args"]["message_ids"] == [slow]
    assert (retry["scheduled_at"] - now).total_seconds() > 3500
    assert_counters_match_rows(campaign.id)


def test_transient_errors_are_tried_3_times_then_5_on_message_retry(app, campaign, fake):
    message_id = _queue_all(app, campaign)[0]
    busy = SendError("busy", ErrorKind.RETRY, code=131000, http_status=500)
    fake.plan = {message_id: [busy] * 7}
    waits = []
    for run, retry_queue in enumerate([False] * 3 + [True] * 4):
        report = send(app, campaign, [message_id], retry_queue=retry_queue)
        assert report.retrying == [message_id]
        # The third failure on campaign-messages hands over to message-retry.
        task = queues.RETRY_TASK if retry_queue or run == 2 else queues.SEND_TASK
        due = max(j["scheduled_at"] or datetime.now(UTC) for j in jobs(task))
        waits.append(round((due - datetime.now(UTC)).total_seconds()))
        _lift_retry_limit(message_id)
    assert send(app, campaign, [message_id], retry_queue=True).sent == [message_id]
    message = _message(message_id)
    assert (message.status, message.attempts, message.error_code) == (
        MessageStatus.SENT,
        8,
        None,
    )
    assert len(fake.calls) == 8
    # Each call's callback data names its attempt, for its statuses to be told apart.
    assert fake.callbacks == [f"{message_id}.{attempt}" for attempt in range(1, 9)]
    # 2 s, 4 s, then message-retry at once, then 3, 9, 27, 81 s.
    assert waits == [2, 4, 0, 3, 9, 27, 81]


def test_the_fifth_failure_on_message_retry_fails_the_message(app, campaign, fake):
    message_id = _queue_all(app, campaign)[0]
    busy = SendError("busy", ErrorKind.RETRY, code=131000, http_status=500)
    fake.plan = {message_id: [busy] * 20}
    for retry_queue in [False] * 3 + [True] * 5:
        send(app, campaign, [message_id], retry_queue=retry_queue)
        _lift_retry_limit(message_id)
    message = _message(message_id)
    assert (message.status, message.error_code, message.attempts) == (
        MessageStatus.FAILED,
        "131000",
        8,
    )
    assert_counters_match_rows(campaign.id)


def _lift_retry_limit(message_id: int) -> None:
    """Forget a message's retries (the test runs them faster than 10 per 5 minutes)."""
    db.session.execute(
        sa.text("DELETE FROM rate_limit_buckets WHERE key = :key"), {"key": f"retry:{message_id}"}
    )
    db.session.commit()


def test_the_eleventh_retry_within_5_minutes_waits(app, campaign, fake):
    message_id = _queue_all(app, campaign)[0]
    throttled = SendError("Rate limit hit", ErrorKind.THROTTLED, 130429, 429)
    fake.plan = {message_id: [throttled] * 20}
    send(app, campaign, [message_id])  # the first call is no retry
    for _ in range(10):
        assert send(app, campaign, [message_id]).throttled == [message_id]
    report = send(app, campaign, [message_id])
    assert report.held == [message_id] and len(fake.calls) == 11
    message = _message(message_id)
    assert message.status is MessageStatus.QUEUED
    waiting = [j for j in jobs(queues.SEND_TASK) if j["args"]["message_ids"] == [message_id]]
    assert (waiting[-1]["scheduled_at"] - datetime.now(UTC)).total_seconds() > 200


def test_a_retry_limited_message_does_not_hold_back_the_others_of_its_batch(app, campaign, fake):
    """A retry out of its 10 a 5 minutes waits minutes; a message the send limits held
    back in the same batch waits only for its limit, in a job of its own."""
    retried, fresh = _queue_all(app, campaign)[:2]
    throttled = SendError("Rate limit hit", ErrorKind.THROTTLED, 130429, 429)
    fake.plan = {retried: [throttled] * 20}
    send(app, campaign, [retried])  # its first call: not a retry
    for _ in range(10):  # its 10 retries of the window
        assert send(app, campaign, [retried]).throttled == [retried]
    sender = default_sender()
    sender.rate_limit_per_minute = 1  # one grant left this minute: the retried message's
    db.session.commit()
    db.session.execute(sa.text("DELETE FROM rate_limit_buckets WHERE key LIKE 'whatsapp:%'"))
    db.session.commit()
    report = send(app, campaign, [retried, fresh])
    assert sorted(report.held) == sorted([retried, fresh]) and len(fake.calls) == 11
    now = datetime.now(UTC)
    due = {
        tuple(j["args"]["message_ids"]): (j["scheduled_at"] - now).total_seconds()
        for j in jobs(queues.SEND_TASK)
        if j["args"]["message_ids"] in ([retried], [fresh])
    }
    assert due[(retried,)] > 200  # its own retry limit: minutes
    assert due[(fresh,)] < 65  # the sender's minute
    assert_counters_match_rows(campaign.id)


def test_retry_failed_counts_against_the_retry_limit(app, campaign, fake):
    ids = _queue_all(app, campaign)
    message_id = ids[0]
    # Given up on with a code "retry failed" takes back.
    gave_up = SendError("Something went wrong", ErrorKind.PERMANENT, 131000, 500)
    fake.plan = {message_id: [gave_up] * 20}
    app.config.update(AUTO_PAUSE_FAILURE_RATE=1.0)
    send(app, campaign, [message_id])
    for _ in range(10):  # ten manual retries within the window go out
        assert retry_failed(campaign.id, campaign.owner_id) == 1
        pump.pump(campaign.id)
        assert send(app, campaign, [message_id]).failed == [message_id]
    retry_failed(campaign.id, campaign.owner_id)
    pump.pump(campaign.id)
    assert send(app, campaign, [message_id]).held == [message_id]  # the eleventh waits
    assert len(fake.calls) == 11


def test_a_throttled_message_fails_after_the_throttle_deadline(app, campaign, fake):
    message_id = _queue_all(app, campaign)[0]
    throttled = SendError("Rate limit hit", ErrorKind.THROTTLED, 130429, 429)
    fake.plan = {message_id: [throttled] * 3}
    assert send(app, campaign, [message_id]).throttled == [message_id]
    _lift_retry_limit(message_id)
    db.session.execute(
        sa.text("UPDATE messages SET throttled_at = now() - interval '31 minutes' WHERE id = :id"),
        {"id": message_id},
    )
    db.session.commit()
    assert send(app, campaign, [message_id]).failed == [message_id]
    message = _message(message_id)
    assert (message.status, message.error_code) == (MessageStatus.FAILED, "130429")
    assert_counters_match_rows(campaign.id)


def test_each_state_change_is_one_log_line_with_ids_and_no_phone(app, campaign, fake, caplog):
    from campaigns import statelog

    first, second = _queue_all(app, campaign)[:2]
    fake.script = [SendResult("wamid.a"), SendError("bad number", ErrorKind.PERMANENT, 131026)]
    caplog.set_level("INFO", logger="campaigns.messages")
    token = statelog.current_job.set((4242, 2))  # what the worker's task middleware sets
    try:
        send(app, campaign, [first])
        send(app, campaign, [second])
    finally:
        statelog.current_job.reset(token)
    lines = [r.getMessage() for r in caplog.records if r.name == "campaigns.messages"]
    ids = f"campaign_id={campaign.id}"
    assert lines == [
        f"message_state message_id={first} {ids} from=queued to=sending job_id=4242 attempt=2",
        f"message_state message_id={first} {ids} from=sending to=sent job_id=4242 attempt=2",
        f"message_state message_id={second} {ids} from=queued to=sending job_id=4242 attempt=2",
        f"message_state message_id={second} {ids} from=sending to=failed job_id=4242 attempt=2"
        " code=131026",
    ]
    phones = set(db.session.scalars(sa.select(Message.phone)))
    assert not any(phone in record.getMessage() for record in caplog.records for phone in phones)


def test_the_task_middleware_names_the_job_for_the_log(app):
    from types import SimpleNamespace

    from campaigns import statelog
    from jobs import context

    seen = []
    job = SimpleNamespace(job=SimpleNamespace(id=77, attempts=0))
    context.flask_context(lambda: seen.append(statelog.current_job.get()), job, None)
    assert seen == [(77, 1)] and statelog.current_job.get() is None


def test_what_a_limit_does_not_grant_waits_without_spending_a_try(app, campaign, fake):
    ids = _queue_all(app, campaign)[:5]
    campaign.sender.rate_limit_per_minute = 3
    db.session.commit()
    report = send(app, campaign, ids)
    assert sorted(report.sent) == ids[:3] and report.held == ids[3:]  # a partial grant
    for message_id in ids[3:]:
        message = _message(message_id)
        assert message.status is MessageStatus.QUEUED and message.attempts == 0
    (later,) = [j for j in jobs(queues.SEND_TASK) if j["args"]["message_ids"] == ids[3:]]
    # The window, plus at most one bucket (conservative).
    assert 30 < (later["scheduled_at"] - datetime.now(UTC)).total_seconds() <= 62.5
    assert_counters_match_rows(campaign.id)


def test_pause_resume_and_cancel(app, campaign, fake):
    ids = _queue_all(app, campaign)
    pause_campaign(campaign.id, campaign.owner_id)
    assert message_counts(campaign.id).get("queued", 0) == 0  # back to pending at once
    report = send(app, campaign, ids[:100])
    assert report.skipped == 100 and fake.calls == []
    assert _message(ids[0]).status is MessageStatus.PENDING
    assert pump.pump(campaign.id) is False  # a paused campaign is not pumped

    resume_campaign(campaign.id, campaign.owner_id)
    assert len([j for j in jobs(queues.PUMP_TASK) if j["status"] == "todo"]) == 1
    pump.pump(campaign.id)  # queues them again
    assert send(app, campaign, ids[1:2]).sent == ids[1:2]

    cancel_campaign(campaign.id, campaign.owner_id)
    assert send(app, campaign, ids[2:]).skipped == len(ids) - 2
    assert _message(ids[2]).status is MessageStatus.CANCELLED
    rows = message_counts(campaign.id)
    assert rows.get("pending", 0) == rows.get("queued", 0) == 0 and rows["cancelled"] > 0
    with pytest.raises(Conflict, match="status “Cancelled” cannot be resumed"):
        resume_campaign(campaign.id, campaign.owner_id)
    assert_counters_match_rows(campaign.id)


def test_a_batch_whose_campaign_paused_before_its_claim_sends_nothing(app, campaign, fake):
    ids = _queue_all(app, campaign)[:100]
    # The campaign paused between the job's start and its claim: the claim sees it.
    db.session.execute(
        sa.text("UPDATE campaigns SET status = 'paused' WHERE id = :id"), {"id": campaign.id}
    )
    db.session.commit()
    assert message_states.claim(db.session, campaign.id, ids, MessageStatus.QUEUED) == []
    db.session.rollback()
    assert fake.calls == []


def test_an_auth_error_pauses_the_campaign_with_the_reason(app, campaign, fake):
    first = _queue_all(app, campaign)[0]
    fake.script = [
        SendError("Invalid OAuth access token", ErrorKind.PAUSE_CAMPAIGN, code=190, http_status=401)
    ]
    assert send(app, campaign, [first]).stopped == [first]
    db.session.refresh(campaign)
    assert campaign.status is CampaignStatus.PAUSED and "190" in campaign.status_reason
    assert (
        db.session.get(Message, first).status is MessageStatus.PENDING
    )  # it goes out after resume


def test_a_sender_set_up_without_its_token_pauses_with_disparos_own_reason(app, campaign, fake):
    """Not WhatsApp's answer but Disparo's finding: a reason code, worded for the reader."""
    first = _queue_all(app, campaign)[0]
    fake.script = [
        SendError(
            "This sender has no access token.",
            ErrorKind.PAUSE_SENDER,
            reason="sender_without_access_token",
        )
    ]
    assert send(app, campaign, [first]).stopped == [first]
    db.session.refresh(campaign)
    assert campaign.status is CampaignStatus.PAUSED
    assert campaign.status_reason_code == "sender_without_access_token"
    assert "no access token" in campaign.status_reason and "WhatsApp's answer" not in (
        campaign.status_reason
    )
    # The message waits for resume with the same code and no English sentence.
    message = db.session.get(Message, first)
    assert (message.status, message.error_code, message.error_text) == (
        MessageStatus.PENDING,
        "sender_without_access_token",
        None,
    )
    assert "add it on the sender's page" in errors.describe(message.error_code, None)


def test_a_run_of_failures_pauses_the_campaign_and_tells_the_owner(app, campaign, fake):
    app.config.update(AUTO_PAUSE_FAILURE_RATE=0.5, AUTO_PAUSE_MIN_OUTCOMES=10)
    ids = _queue_all(app, campaign)
    undeliverable = SendError("undeliverable", ErrorKind.PERMANENT, code=131026, http_status=400)
    # Six sent, then failures: 4 of 10 is not over half, 6 of 12 is not, 7 of 13 is.
    fake.script = [SendResult(f"wamid.ok{i}") for i in range(6)] + [undeliverable] * 7
    for message_id in ids[:12]:
        send(app, campaign, [message_id])
        db.session.refresh(campaign)
        assert campaign.status is CampaignStatus.SENDING
    send(app, campaign, [ids[12]])
    db.session.refresh(campaign)
    assert campaign.status is CampaignStatus.PAUSED
    assert campaign.status_reason == (
        "Paused: 7 of the last 13 messages failed, more than 50 % allowed."
    )
    assert {"campaign_id": campaign.id, "kind": "auto_paused"} in [
        j["args"] for j in jobs(queues.NOTIFY_TASK)
    ]
    # The rest went back to pending: nothing more goes out until an operator resumes.
    assert message_counts(campaign.id).get("queued", 0) == 0
    assert send(app, campaign, [ids[13]]).skipped == 1
    assert_counters_match_rows(campaign.id)


def test_a_failure_rate_of_one_never_pauses(app, campaign, fake):
    app.config.update(AUTO_PAUSE_FAILURE_RATE=1.0, AUTO_PAUSE_MIN_OUTCOMES=1)
    ids = _queue_all(app, campaign)
    fake.script = [SendError("undeliverable", ErrorKind.PERMANENT, code=131026)] * 5
    for message_id in ids[:5]:
        assert send(app, campaign, [message_id]).failed == [message_id]
    db.session.refresh(campaign)
    assert campaign.status is CampaignStatus.SENDING


def test_completed_when_nothing_is_left_in_flight(app, campaign, fake):
    ids = _queue_all(app, campaign)
    while ids:
        send(app, campaign, ids)
        db.session.execute(
            sa.text("DELETE FROM procrastinate_jobs WHERE task_name = 'messages.send'")
        )
        db.session.commit()
        pump.pump(campaign.id)
        ids = [i for j in jobs(queues.SEND_TASK) for i in j["args"]["message_ids"]]
    _run_waiting_pump()
    assert pump.pump(campaign.id) is False
    assert [j for j in jobs(queues.PUMP_TASK) if j["status"] == "todo"] == []  # no next run
    db.session.refresh(campaign)
    assert campaign.status is CampaignStatus.COMPLETED and campaign.completed_at
    assert_counters_match_rows(campaign.id)
    assert {"campaign_id": campaign.id, "kind": "completed"} in [
        j["args"] for j in jobs(queues.NOTIFY_TASK)
    ]


def _end_job(message_id: int, status: str) -> None:
    """End a message's job as Procrastinate would, without running it."""
    db.session.execute(
        sa.text(
            "UPDATE procrastinate_jobs SET status = CAST(:status AS procrastinate_job_status)"
            " WHERE task_name = :task AND args->'message_ids' @> to_jsonb(CAST(:id AS bigint))"
        ),
        {"status": status, "task": queues.SEND_TASK, "id": message_id},
    )
    db.session.commit()


def test_a_message_whose_job_failed_fails_with_the_reason_and_can_be_retried(app, campaign):
    _queue_all(app, campaign)
    sends = jobs(queues.SEND_TASK)
    batch, other = sends[0]["args"]["message_ids"], sends[1]["args"]["message_ids"]
    # A job that ended on an unexpected error (the database gone mid-job, a bug):
    # Procrastinate marks it failed and nothing will move its messages on.
    _end_job(batch[0], "failed")
    assert maintenance.settle_orphaned_messages() == len(batch)
    assert maintenance.settle_orphaned_messages() == 0  # once
    message = _message(batch[0])
    assert (message.status, message.error_code) == (MessageStatus.FAILED, "job_failed")
    # The code is worded when shown (errors.describe); the job's id is in the log line.
    assert message.error_text is None and message.failed_at
    assert "failed on an unexpected error" in errors.describe(message.error_code, None)
    assert _message(other[0]).status is MessageStatus.QUEUED  # its job waits
    assert_counters_match_rows(campaign.id)
    # Disparo's own failure, not the messages': "retry failed" sends them again.
    assert retry_failed(campaign.id, campaign.owner_id) == len(batch)
    assert _message(batch[0]).status is MessageStatus.PENDING


def test_a_message_whose_job_a_shutdown_aborted_goes_back_to_pending(app, campaign):
    ids = _queue_all(app, campaign)
    _end_job(ids[0], "aborted")
    assert maintenance.settle_orphaned_messages() == 0  # none failed: it did nothing wrong
    message = db.session.get(Message, ids[0])
    db.session.refresh(message)
    assert (message.status, message.error_code) == (MessageStatus.PENDING, None)
    assert_counters_match_rows(campaign.id)
    pump.pump(campaign.id)  # queued again, with a job of its own
    db.session.refresh(message)
    assert message.status is MessageStatus.QUEUED


def test_webhooks_are_signed_idempotent_and_never_go_backwards(app, client, campaign, fake):
    first = _queue_all(app, campaign)[0]
    send(app, campaign, [first])
    wamid = f"wamid.{first}"
    read = status_webhook(wamid, "read", first)
    assert post_webhook(client, read).json["applied"] == 1
    assert post_webhook(client, read).json["ignored"] == 1  # duplicate
    assert post_webhook(client, status_webhook(wamid, "delivered", first)).json["ignored"] == 1
    message = db.session.get(Message, first)
    db.session.refresh(message)
    assert message.status is MessageStatus.READ and message.read_at
    assert_counters_match_rows(campaign.id)
    totals = counters.totals(db.session, campaign.id)
    assert totals["sent"] >= totals["delivered"] >= totals["read"] == 1


def test_bad_signatures_change_nothing(app, client, campaign, fake):
    first = _queue_all(app, campaign)[0]
    send(app, campaign, [first])
    raw = json.dumps(status_webhook(f"wamid.{first}", "delivered", first)).encode()
    good = webhook_signature(raw)
    one_digit_off = good[:-1] + ("1" if good[-1] == "0" else "0")
    for bad in (
        {},
        {"X-Hub-Signature-256": "sha256=" + "0" * 64},
        {"X-Hub-Signature-256": one_digit_off},
    ):
        response = client.post(
            "/webhooks/whatsapp", data=raw, headers={"Content-Type": "application/json", **bad}
        )
        assert response.status_code == 401
    assert db.session.get(Message, first).status is MessageStatus.SENT


def _send_one_then_fail(app, client, campaign, code: int):
    """Send the campaign's first message, then post a signed "failed" status with ``code``."""
    first = _queue_all(app, campaign)[0]
    send(app, campaign, [first])
    body = status_webhook(f"wamid.{first}", "failed", first, errors=[{"code": code, "title": "no"}])
    return first, post_webhook(client, body)


def test_a_failed_status_with_its_error(app, client, campaign, fake):
    # (131049 is held rather than failed: tests/test_error_policies.py)
    first, _ = _send_one_then_fail(app, client, campaign, 131047)
    message = db.session.get(Message, first)
    db.session.refresh(message)
    assert (message.status, message.error_code) == (MessageStatus.FAILED, "131047")
    assert_counters_match_rows(campaign.id)


@pytest.mark.parametrize(
    ("code", "whole_sender"), [(131048, False), (132015, False), (368, True), (131031, True)]
)
def test_a_failed_status_that_means_stop_pauses(app, client, campaign, fake, code, whole_sender):
    other = demo_campaign(campaign.owner_id, 10, name="Same sender")
    send_campaign_now(other.id, other.owner_id)
    _, response = _send_one_then_fail(app, client, campaign, code)
    assert response.json["applied"] == 1
    db.session.expire_all()
    assert db.session.get(Campaign, campaign.id).status is CampaignStatus.PAUSED
    assert str(code) in db.session.get(Campaign, campaign.id).status_reason
    expected = CampaignStatus.PAUSED if whole_sender else CampaignStatus.SENDING
    assert db.session.get(Campaign, other.id).status is expected
    assert_counters_match_rows(campaign.id)


def test_a_failed_status_for_a_disabled_template_fails_the_campaign(app, client, campaign, fake):
    _send_one_then_fail(app, client, campaign, 132016)
    db.session.refresh(campaign)
    assert campaign.status is CampaignStatus.FAILED and "132016" in campaign.status_reason
    assert message_counts(campaign.id).get("pending", 0) == 0


def test_unknown_messages_are_acknowledged(client, campaign):
    response = post_webhook(client, status_webhook("wamid.nobody", "delivered", 999999))
    assert response.status_code == 200 and response.json["unknown"] == 1


def test_an_opt_out_reply_suppresses_the_number(client, campaign):
    assert post_webhook(client, reply_webhook("SAIR")).json["opt_outs"] == 1
    assert (
        db.session.query(Suppression)
        .filter_by(phone="+5511987650000", source="opt_out_reply")
        .count()
        == 1
    )


def test_the_opt_out_keywords_are_configurable(app, client, campaign):
    app.config["OPT_OUT_KEYWORDS"] = frozenset({"basta"})
    assert post_webhook(client, reply_webhook("SAIR")).json["opt_outs"] == 0
    assert post_webhook(client, reply_webhook("  Basta ")).json["opt_outs"] == 1
    assert db.session.query(Suppression).filter_by(phone="+5511987650000").count() == 1


def _preference(value: str, wa_id: str = "5511987650001") -> dict:
    preference = {
        "wa_id": wa_id,
        "detail": "User requested to stop marketing messages",
        "category": "marketing_messages",
        "value": value,
        "timestamp": 1_800_000_000,
    }
    return webhook_body("user_preferences", {"user_preferences": [preference]})


def test_a_marketing_opt_out_preference_suppresses_and_a_resume_lifts_it(client, campaign):
    assert post_webhook(client, _preference("stop")).json["opt_outs"] == 1
    suppressed = db.session.query(Suppression).filter_by(phone="+5511987650001").one()
    assert (suppressed.source, suppressed.reason) == (
        "provider",
        "User requested to stop marketing messages",
    )
    assert post_webhook(client, _preference("resume")).json["opt_ins"] == 1
    assert db.session.query(Suppression).filter_by(phone="+5511987650001").count() == 0
    # A number an operator put on the list stays there whatever WhatsApp says.
    add_suppression("+5511987650001", "asked by phone", "manual", campaign.owner_id)
    assert post_webhook(client, _preference("resume")).json["opt_ins"] == 0
    assert db.session.query(Suppression).filter_by(phone="+5511987650001").count() == 1


def test_notifications_reach_the_owner(app, campaign):
    from campaigns import notifications

    notifications.deliver(campaign.id, "started", first_attempt=True)
    notifications.deliver(
        campaign.id, "started", first_attempt=False
    )  # a retry of the webhook only
    assert (
        db.session.query(Notification).filter_by(user_id=campaign.owner_id, kind="started").count()
        == 1
    )
