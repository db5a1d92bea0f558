"""How many times a job runs and how long it waits in between: the source documents' counts.

"N attempts" in the documents are N runs; Procrastinate's ``max_attempts`` counts
retries. The tests ask each task what the worker asks it when a run raises
(``Task.get_retry_exception``, procrastinate/worker.py), run after run, and drive the
message, notification and fan-out tasks' own code through that loop in-process.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import psycopg
import pytest
import requests
import sqlalchemy as sa
from procrastinate import JobContext, utils
from procrastinate.jobs import Job
from procrastinate.tasks import Task
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from werkzeug.wrappers import Request, Response

import jobs
from app import db
from campaigns import erp, fanout, pump, queues
from campaigns.models import CampaignStatus, Message, MessageStatus, Notification
from campaigns.providers.base import SendError
from campaigns.providers.errors import ErrorKind
from campaigns.services.campaigns import send_campaign_now
from jobs import tasks
from tests.helpers import jobs as queued_jobs
from tests.helpers import serving

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
GIVE_UP_BY = 20  # more runs than any task gets: a strategy without a limit is caught


@pytest.fixture
def frozen_clock(monkeypatch):
    """Procrastinate's clock at NOW, so a retry's time less NOW is its wait exactly."""
    monkeypatch.setattr(utils, "utcnow", lambda: NOW)


def job_of(task: Task, attempts: int) -> Job:
    return Job(
        id=1,
        queue=task.queue,
        lock=None,
        queueing_lock=None,
        task_name=task.name,
        attempts=attempts,
    )


def runs_and_waits(task: Task, error: Exception) -> tuple[int, list[float]]:
    """Runs of a job whose every run raises ``error``, and the waits before each retry."""
    waits = []
    for attempts in range(GIVE_UP_BY):
        retry = task.get_retry_exception(exception=error, job=job_of(task, attempts))
        if retry is None:
            return attempts + 1, waits
        decision = retry.retry_decision
        assert decision.queue is None  # retried on its own queue
        waits.append((decision.retry_at - NOW).total_seconds())
    raise AssertionError(f"{task.name} still retries after {GIVE_UP_BY} runs")


@pytest.mark.parametrize(
    ("task", "queue", "error", "runs", "waits"),
    [
        (
            tasks.notify,
            "campaign-notifications",
            requests.HTTPError("503 Server Error"),
            2,
            [30],
        ),
        (tasks.fan_out, "campaign-sender", erp.ErpError("ERP down", 503), 3, [10, 100]),
    ],
    ids=["notification", "fan-out"],
)
def test_runs_and_waits_of_a_job_that_keeps_failing(frozen_clock, task, queue, error, runs, waits):
    assert task.queue == queue
    assert runs_and_waits(task, error) == (runs, waits)


@pytest.mark.parametrize("task", [tasks.send_messages, tasks.retry_messages])
@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("a bug"),
        SendError("Message undeliverable", ErrorKind.PERMANENT, code=131026),
    ],
    ids=["bug", "send-error"],
)
def test_a_message_job_does_not_retry_as_a_job_on_its_own_errors(task, error):
    """Each message keeps its own tries (tests/test_sending.py); a job that fails on an
    unexpected error fails at once, and maintenance settles its messages."""
    assert task.get_retry_exception(exception=error, job=job_of(task, 0)) is None


@pytest.mark.parametrize("task", [tasks.send_messages, tasks.retry_messages])
@pytest.mark.parametrize(
    "error",
    [
        sa.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection")),
        psycopg.OperationalError("the connection is lost"),
    ],
    ids=["sqlalchemy", "psycopg"],
)
def test_a_message_job_whose_database_connection_was_lost_runs_again(frozen_clock, task, error):
    """Nothing is wrong with its messages (a restart, a failover): a second run claims
    those still waiting, 5 s later, up to 3 runs; then maintenance settles them."""
    assert runs_and_waits(task, error) == (3, [5, 5])


def test_a_fan_out_retries_only_an_erp_error():
    error = RuntimeError("a bug")
    assert tasks.fan_out.get_retry_exception(exception=error, job=job_of(tasks.fan_out, 0)) is None


@pytest.mark.parametrize(
    "error", [requests.ConnectionError("refused"), RuntimeError("a bug")], ids=["http", "bug"]
)
def test_a_notification_retries_whatever_failed(error):
    """Its second run only posts the webhook again (the in-app notice is written once)."""
    assert tasks.notify.get_retry_exception(exception=error, job=job_of(tasks.notify, 0))


def run_as_the_worker(task: Task, **kwargs) -> tuple[int, str]:
    """Run a job the way a worker does, retrying it at once while its strategy says so.

    Returns how many runs it took and how the job ended (``succeeded`` or ``failed``).
    """
    for attempts in range(GIVE_UP_BY):
        job = job_of(task, attempts)
        context = JobContext(
            app=jobs.app, job=job, start_timestamp=time.time(), abort_reason=lambda: None
        )
        try:
            task(context, **kwargs)
        except Exception as error:
            if task.get_retry_exception(exception=error, job=job) is None:
                return attempts + 1, "failed"
        else:
            return attempts + 1, "succeeded"
    raise AssertionError(f"{task.name} still retries after {GIVE_UP_BY} runs")


def test_a_message_that_always_fails_transiently_is_tried_3_then_5_times(app, campaign, fake):
    """Through the tasks as the worker runs them: each run is one job, each job one try."""
    send_campaign_now(campaign.id, campaign.owner_id)
    fanout.load_audience(campaign.id, app.config)
    pump.pump(campaign.id)
    message_id = queued_jobs(queues.SEND_TASK)[0]["args"]["message_ids"][0]
    fake.plan = {message_id: [SendError("busy", ErrorKind.RETRY, 131000, 500)] * GIVE_UP_BY}
    batch = {"campaign_id": campaign.id, "message_ids": [message_id]}
    for task, runs in ((tasks.send_messages, 3), (tasks.retry_messages, 5)):
        for _ in range(runs):
            assert run_as_the_worker(task, **batch) == (1, "succeeded")
            db.session.execute(sa.text("DELETE FROM rate_limit_buckets"))  # no retry limit
            db.session.commit()
    message = db.session.get(Message, message_id, populate_existing=True)
    assert (message.status, message.attempts) == (MessageStatus.FAILED, 8)
    assert len(fake.calls) == 8
    # Three tries on campaign-messages, then message-retry's own job.
    assert [j["args"]["message_ids"] for j in queued_jobs(queues.RETRY_TASK)] == [[message_id]] * 5


class Refusing:
    """A server that answers every request 503, and keeps what it was sent."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.requests: list[tuple[dict[str, str], bytes]] = []

    def __call__(self, environ, start_response):
        request = Request(environ)
        self.paths.append(request.path)
        self.requests.append((dict(request.headers), request.get_data()))
        return Response("down", status=503)(environ, start_response)


def test_a_notification_whose_webhook_keeps_failing_is_posted_twice(app, campaign):
    server = Refusing()
    with serving(server) as base:
        app.config["NOTIFICATION_WEBHOOK_URL"] = f"{base}/hook"
        ended = run_as_the_worker(tasks.notify, campaign_id=campaign.id, kind="started")
    assert ended == (2, "failed")
    assert server.paths == ["/hook", "/hook"]
    notices = db.session.scalars(
        sa.select(Notification).where(Notification.campaign_id == campaign.id)
    ).all()
    assert [notice.kind for notice in notices] == ["started"]  # the in-app one, once


def test_a_notifications_webhook_is_signed_with_one_id_for_its_retries(app, campaign):
    """Standard Webhooks: the receiver verifies the raw body with the shared secret."""
    server = Refusing()
    with serving(server) as base:
        app.config["NOTIFICATION_WEBHOOK_URL"] = f"{base}/hook"
        run_as_the_worker(tasks.notify, campaign_id=campaign.id, kind="started")
    secret = app.config["NOTIFICATION_WEBHOOK_SECRET"]
    assert secret.startswith("whsec_")
    (first_headers, _), (second_headers, _) = server.requests
    for headers, body in server.requests:
        payload = Webhook(secret).verify(body, headers)
        assert payload["event"] == "campaign.started"
        assert payload["campaign"]["id"] == campaign.id
        with pytest.raises(WebhookVerificationError):
            Webhook("whsec_" + "A" * 44).verify(body, headers)  # another secret
        with pytest.raises(WebhookVerificationError):
            Webhook(secret).verify(body.replace(b"started", b"stopped"), headers)
    # One notification, one id: a receiver drops the repeat.
    assert first_headers["Webhook-Id"] == second_headers["Webhook-Id"]


def test_a_fan_out_whose_erp_stays_down_runs_3_times_then_fails_the_campaign(app, campaign):
    server = Refusing()
    with serving(server) as base:
        app.config["ERP_BASE_URL"] = base
        send_campaign_now(campaign.id, campaign.owner_id)
        # The third run fails the campaign instead of raising.
        ended = run_as_the_worker(tasks.fan_out, campaign_id=campaign.id)
    assert ended == (3, "succeeded")
    # The pre-flight check asked for the count once (refused: the audience is "unknown"),
    # then the fan-out's three runs each asked for a page.
    assert server.paths == ["/customers/count"] + ["/customers"] * 3
    db.session.refresh(campaign)
    assert campaign.status is CampaignStatus.FAILED
