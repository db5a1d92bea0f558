"""``flask queue``: status, retry-failed, cancel-campaign and purge, on jobs in the real
queue tables (the statements Procrastinate's own workers read)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import flask_babel
import pytest
import sqlalchemy as sa

from app import db
from campaigns import counters, queues
from campaigns.models import (
    Campaign,
    CampaignActivity,
    CampaignStatus,
    Message,
    MessageStatus,
    MessageTemplate,
    Role,
)
from campaigns.queues import (
    FAN_OUT_TASK,
    MAINTENANCE_QUEUE,
    NOTIFICATIONS_QUEUE,
    NOTIFY_TASK,
    PUMP_TASK,
    RETRY_QUEUE,
    RETRY_TASK,
    SENDER_QUEUE,
)
from campaigns.services.demo import seed_demo
from campaigns.services.templates import default_sender
from tests.helpers import defer_job, fail_job, register_worker, start_job


def failed_job(**kwargs) -> int:
    job_id = defer_job(**kwargs)
    start_job(job_id, register_worker())
    fail_job(job_id)
    return job_id


def job_status(job_id: int) -> str | None:
    db.session.rollback()
    return db.session.execute(
        sa.text("SELECT CAST(status AS text) FROM procrastinate_jobs WHERE id = :id"),
        {"id": job_id},
    ).scalar()


def ended_days_ago(job_id: int, days: float) -> None:
    """Age a job's events (its defer, start, end), as if they had been ``days`` ago."""
    db.session.execute(
        sa.text(
            "UPDATE procrastinate_events SET at = now() - make_interval(secs => :s)"
            " WHERE job_id = :id"
        ),
        {"s": days * 86400, "id": job_id},
    )
    db.session.commit()


def make_campaign(owner_id: int, status: CampaignStatus, **messages: int) -> Campaign:
    """A campaign of the demo sender with ``messages`` rows per status, counted."""
    seed_demo()  # once: its sender and templates
    campaign = Campaign(
        name="Queue CLI",
        owner_id=owner_id,
        sender_id=default_sender().id,
        template_id=db.session.scalar(sa.select(MessageTemplate.id).limit(1)),
        status=status,
    )
    db.session.add(campaign)
    db.session.flush()
    counters.ensure_rows(db.session, campaign.id)
    n = 0
    for status_name, count in messages.items():
        for _ in range(count):
            n += 1
            db.session.add(
                Message(
                    campaign_id=campaign.id,
                    phone=f"+551198765{n:04d}",
                    customer_ref=f"c{n}",
                    status=MessageStatus(status_name),
                )
            )
        counters.apply(db.session, campaign.id, {"total": count, status_name: count})
    db.session.commit()
    return campaign


def message_ids(campaign_id: int, status: str) -> list[int]:
    return list(
        db.session.scalars(
            sa.select(Message.id)
            .where(Message.campaign_id == campaign_id, Message.status == MessageStatus(status))
            .order_by(Message.id)
        )
    )


def statuses_of(campaign_id: int) -> dict[str, int]:
    db.session.rollback()
    rows = db.session.execute(
        sa.select(Message.status, sa.func.count())
        .where(Message.campaign_id == campaign_id)
        .group_by(Message.status)
    ).all()
    return {status.value: n for status, n in rows}


@pytest.fixture
def owner(user_factory):
    return user_factory(Role.SUPERVISOR)


# -- status


def test_status_json_counts_every_queue_its_oldest_due_job_and_the_workers(runner):
    now = datetime.now(UTC)
    failed = failed_job()
    # Deferred ten minutes ago, due two minutes ago: it has waited two minutes.
    ended_days_ago(defer_job(at=now - timedelta(minutes=2)), 10 / 1440)
    # Deferred five minutes ago to run at once: it has waited five, the queue's oldest.
    ended_days_ago(defer_job(), 5 / 1440)
    defer_job(PUMP_TASK, SENDER_QUEUE, {"campaign_id": 1}, at=now + timedelta(hours=1))
    live = register_worker()
    silent = register_worker(queues.stalled_after_seconds() + 60)
    running = defer_job(task="maintenance.ping", queue=MAINTENANCE_QUEUE)
    start_job(running, silent)

    result = runner.invoke(args=["queue", "status", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    by_queue = {q["queue"]: q for q in data["queues"]}
    assert list(by_queue)[: len(queues.KNOWN_QUEUES)] == list(queues.KNOWN_QUEUES)
    messages = by_queue[queues.MESSAGES_QUEUE]
    assert (messages["todo"], messages["due"], messages["failed"]) == (2, 2, 1)
    assert 300 <= messages["oldest_due_seconds"] < 600
    sender = by_queue[SENDER_QUEUE]
    assert (sender["todo"], sender["due"], sender["oldest_due_seconds"]) == (1, 0, None)
    assert by_queue[RETRY_QUEUE]["oldest_due_seconds"] is None  # empty
    workers = {w["id"]: w for w in data["workers"]}
    assert workers[live]["live"] is True and workers[silent]["live"] is False
    assert workers[silent]["running"] == 1
    assert data["stalled_jobs"] == [running]
    assert failed not in data["stalled_jobs"]


def test_status_prints_a_table_in_the_shells_language(runner, monkeypatch):
    ended_days_ago(defer_job(), 5 / 1440)
    register_worker()
    monkeypatch.delenv("LC_ALL", raising=False)
    monkeypatch.delenv("LC_MESSAGES", raising=False)
    monkeypatch.setenv("LANG", "en_US.UTF-8")
    flask_babel.refresh()
    english = runner.invoke(args=["queue", "status"])
    assert english.exit_code == 0, english.output
    lines = english.output.splitlines()
    assert lines[0].split()[:2] == ["Queue", "To"]  # "To do"
    row = next(line for line in lines if line.startswith(queues.MESSAGES_QUEUE))
    assert row.split()[1:3] == ["1", "1"] and "min" in row
    assert "Live workers (a heartbeat within 30 s): 1." in english.output

    monkeypatch.setenv("LANG", "pt_BR.UTF-8")
    flask_babel.refresh()  # a new command is a new process: nothing cached
    portuguese = runner.invoke(args=["queue", "status"])
    assert portuguese.exit_code == 0, portuguese.output
    assert portuguese.output.splitlines()[0].startswith("Fila")
    assert "Workers ativos" in portuguese.output


def test_status_says_when_no_worker_runs(runner):
    result = runner.invoke(args=["queue", "status"])
    assert result.exit_code == 0
    assert "No worker is registered: nothing runs the jobs." in result.output


# -- retry-failed


def test_retry_failed_puts_every_failed_job_of_a_queue_back(runner):
    ours = [failed_job(args={"campaign_id": 5, "message_ids": [1]}) for _ in range(3)]
    ours.append(failed_job(queueing_lock="alone"))  # a lock no waiting job holds
    other = failed_job(task=NOTIFY_TASK, queue=NOTIFICATIONS_QUEUE)
    waiting = defer_job()
    result = runner.invoke(args=["queue", "retry-failed", "--queue", queues.MESSAGES_QUEUE])
    assert result.exit_code == 0, result.output
    assert "Retried 4 failed jobs." in result.output
    assert [job_status(j) for j in ours] == ["todo"] * 4
    assert job_status(other) == "failed" and job_status(waiting) == "todo"
    events = db.session.execute(
        sa.text("SELECT CAST(type AS text) FROM procrastinate_events WHERE job_id = :id"),
        {"id": ours[0]},
    ).scalars()
    assert "retried" in list(events)  # Procrastinate's own retry, as on the monitor


def test_retry_failed_of_a_campaign_and_a_queueing_lock_that_holds_one_back(runner, owner):
    campaign = make_campaign(owner.id, CampaignStatus.SENDING)
    mine = failed_job(args={"campaign_id": campaign.id, "message_ids": [1]})
    theirs = failed_job(args={"campaign_id": campaign.id + 1, "message_ids": [2]})
    lock = queues.pump_lock(campaign.id)
    args = {"campaign_id": campaign.id}
    pump = failed_job(task=PUMP_TASK, queue=SENDER_QUEUE, args=args, queueing_lock=lock)
    defer_job(PUMP_TASK, SENDER_QUEUE, args, queueing_lock=lock)  # the pump that replaced it

    result = runner.invoke(args=["queue", "retry-failed", "--campaign", str(campaign.id)])
    assert result.exit_code == 0, result.output
    assert "Retried 1 failed job." in result.output
    held = f"1 left failed: a waiting job holds its queueing lock and will run: #{pump}"
    assert held in result.output
    assert "“Retry … failed messages”" in result.output  # the campaign's own retry
    assert (job_status(mine), job_status(pump), job_status(theirs)) == ("todo", "failed", "failed")


@pytest.mark.parametrize(
    ("args", "refusal"),
    [
        (["--queue", "no-such-queue"], "There is no queue “no-such-queue”."),
        (["--campaign", "999999"], "There is no campaign #999999."),
        (["--campaign", "seven"], "'seven' is not a valid integer"),
    ],
)
def test_retry_failed_refuses_what_does_not_exist(runner, args, refusal):
    job_id = failed_job()
    result = runner.invoke(args=["queue", "retry-failed", *args])
    assert result.exit_code != 0
    assert refusal in result.output
    assert job_status(job_id) == "failed"


# -- cancel-campaign


def test_cancel_campaign_cancels_it_its_waiting_jobs_and_their_messages(runner, owner):
    campaign = make_campaign(owner.id, CampaignStatus.SENDING, pending=2, queued=2, retrying=1)
    queued = message_ids(campaign.id, "queued")
    retrying = message_ids(campaign.id, "retrying")
    send = defer_job(args={"campaign_id": campaign.id, "message_ids": queued})
    retry = defer_job(
        RETRY_TASK, RETRY_QUEUE, {"campaign_id": campaign.id, "message_ids": retrying}
    )
    pump = defer_job(PUMP_TASK, SENDER_QUEUE, {"campaign_id": campaign.id}, queueing_lock="p")
    fan_out = defer_job(FAN_OUT_TASK, SENDER_QUEUE, {"campaign_id": campaign.id})
    running = defer_job(args={"campaign_id": campaign.id, "message_ids": []})
    start_job(running, register_worker())
    another = defer_job(PUMP_TASK, SENDER_QUEUE, {"campaign_id": campaign.id + 1})

    result = runner.invoke(args=["queue", "cancel-campaign", str(campaign.id)])
    assert result.exit_code == 0, result.output
    assert f"Campaign #{campaign.id} is cancelled" in result.output
    # The cancel itself cancelled the retrying message: its job carried none still waiting.
    assert "Waiting jobs cancelled: 4 (with 0 messages still waiting in them)." in result.output

    assert db.session.get(Campaign, campaign.id).status is CampaignStatus.CANCELLED
    for job_id in (send, retry, pump, fan_out):
        assert job_status(job_id) == "cancelled"
    assert job_status(running) == "doing"  # left to finish: it cancels what it finds
    assert job_status(another) == "todo"
    # Nothing left waiting for a job that will never come, and the counters agree.
    assert statuses_of(campaign.id) == {"cancelled": 5}
    totals = counters.totals(db.session, campaign.id)
    assert (totals["pending"], totals["queued"], totals["retrying"]) == (0, 0, 0)
    assert totals["cancelled"] == 5
    # Its owner is told, as when the page cancels it: the notification job is not swept.
    notes = db.session.execute(
        sa.text(
            "SELECT CAST(status AS text) FROM procrastinate_jobs WHERE task_name = :t"
            " AND args->>'campaign_id' = CAST(:c AS text) AND args->>'kind' = 'cancelled'"
        ),
        {"t": NOTIFY_TASK, "c": campaign.id},
    ).scalars()
    assert list(notes) == ["todo"]
    # The activity says it came from the command line, and who ran it.
    activity = db.session.scalars(
        sa.select(CampaignActivity).where(CampaignActivity.campaign_id == campaign.id)
    ).one()
    assert activity.action == "cancelled" and activity.user_id is None
    assert activity.detail_code == "command_line"
    assert activity.detail_params["actor"].startswith("cli")


def test_cancel_campaign_again_sweeps_what_is_left_and_says_so(runner, owner):
    campaign = make_campaign(owner.id, CampaignStatus.CANCELLED)
    pump = defer_job(PUMP_TASK, SENDER_QUEUE, {"campaign_id": campaign.id})
    result = runner.invoke(args=["queue", "cancel-campaign", str(campaign.id)])
    assert result.exit_code == 0, result.output
    assert f"Campaign #{campaign.id} was already cancelled." in result.output
    assert job_status(pump) == "cancelled"


def test_cancel_campaign_refuses_an_ended_or_unknown_campaign(runner, owner):
    done = make_campaign(owner.id, CampaignStatus.COMPLETED, sent=1)
    job_id = defer_job(args={"campaign_id": done.id, "message_ids": []})
    refused = runner.invoke(args=["queue", "cancel-campaign", str(done.id)])
    assert refused.exit_code == 1
    assert "A campaign with status “Completed” cannot be cancelled." in refused.output
    assert job_status(job_id) == "todo"
    assert db.session.get(Campaign, done.id).status is CampaignStatus.COMPLETED

    unknown = runner.invoke(args=["queue", "cancel-campaign", "999999"])
    assert unknown.exit_code == 1
    assert "There is no campaign #999999." in unknown.output


# -- purge


def test_purge_deletes_finished_jobs_past_their_age_after_asking(runner):
    old_failed = failed_job(task=NOTIFY_TASK, queue=NOTIFICATIONS_QUEUE)
    old_cancelled = defer_job(PUMP_TASK, SENDER_QUEUE, {"campaign_id": 1})
    queues.cancel_waiting_job(db.session, old_cancelled)
    db.session.commit()
    recent_failed = failed_job(task=NOTIFY_TASK, queue=NOTIFICATIONS_QUEUE)
    old_waiting = defer_job()
    old_running = defer_job()
    start_job(old_running, register_worker())
    for job_id in (old_failed, old_cancelled, old_waiting, old_running):
        ended_days_ago(job_id, 10)

    declined = runner.invoke(args=["queue", "purge", "--older-than", "7"], input="n\n")
    assert declined.exit_code != 0  # aborted
    statuses = "Succeeded, Failed, Cancelled, Aborted"
    assert f"Finished jobs ({statuses}) that ended over 7 days ago: 2." in declined.output
    assert job_status(old_failed) == "failed"

    result = runner.invoke(args=["queue", "purge", "--older-than", "7"], input="y\n")
    assert result.exit_code == 0, result.output
    assert "Deleted 2 finished jobs." in result.output
    assert job_status(old_failed) is None and job_status(old_cancelled) is None
    assert job_status(recent_failed) == "failed"  # ended today
    assert (job_status(old_waiting), job_status(old_running)) == ("todo", "doing")  # never
    events = db.session.execute(
        sa.text("SELECT count(*) FROM procrastinate_events WHERE job_id = :id"),
        {"id": old_failed},
    ).scalar_one()
    assert events == 0


def test_purge_by_status_in_batches_with_yes(runner, app):
    failed = [failed_job(task=NOTIFY_TASK, queue=NOTIFICATIONS_QUEUE) for _ in range(5)]
    cancelled = defer_job(PUMP_TASK, SENDER_QUEUE, {"campaign_id": 1})
    queues.cancel_waiting_job(db.session, cancelled)
    db.session.commit()
    from campaigns.services import queue as queue_service

    done = queue_service.purge_finished_jobs(0, ["failed"], None, batch=2)  # three batches
    assert done.deleted == 5
    assert all(job_status(job_id) is None for job_id in failed)
    assert job_status(cancelled) == "cancelled"

    result = runner.invoke(
        args=["queue", "purge", "--older-than", "0", "--status", "cancelled", "--yes"]
    )
    assert result.exit_code == 0, result.output
    assert "Deleted 1 finished job." in result.output
    assert job_status(cancelled) is None


def test_purge_keeps_a_failed_message_job_whose_messages_still_wait(runner, owner):
    campaign = make_campaign(owner.id, CampaignStatus.SENDING, queued=1)
    (waiting,) = message_ids(campaign.id, "queued")
    holding = failed_job(args={"campaign_id": campaign.id, "message_ids": [waiting]})
    settled = failed_job(args={"campaign_id": campaign.id, "message_ids": [10**12]})
    result = runner.invoke(args=["queue", "purge", "--older-than", "0", "--yes"])
    assert result.exit_code == 0, result.output
    assert "1 failed message job is kept" in result.output
    assert "Deleted 1 finished job." in result.output
    assert job_status(holding) == "failed" and job_status(settled) is None

    # Maintenance then settles the message (failed, retryable), and the job may go.
    from campaigns import maintenance

    assert maintenance.settle_orphaned_messages() == 1
    again = runner.invoke(args=["queue", "purge", "--older-than", "0", "--yes"])
    assert "Deleted 1 finished job." in again.output
    assert job_status(holding) is None


@pytest.mark.parametrize(
    ("args", "refusal"),
    [
        (["--older-than", "-1"], "-1 is not in the range x>=0"),
        (["--status", "todo"], "'todo' is not one of"),
        (["--status", "doing"], "'doing' is not one of"),
    ],
)
def test_purge_refuses_bad_input(runner, args, refusal):
    job_id = defer_job()
    result = runner.invoke(args=["queue", "purge", *args, "--yes"])
    assert result.exit_code == 2
    assert refusal in result.output
    assert job_status(job_id) == "todo"


def test_purge_never_takes_a_waiting_or_running_status_whatever_the_caller():
    with pytest.raises(ValueError, match="not finished job statuses"):
        queues.count_finished_jobs(db.session, 0, ["todo"])
    with pytest.raises(ValueError, match="not finished job statuses"):
        queues.delete_finished_jobs(db.session, 0, [])
