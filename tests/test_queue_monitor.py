from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from app import db
from campaigns import counters, queues
from campaigns.models import (
    Campaign,
    CampaignStatus,
    Message,
    MessageStatus,
    MessageTemplate,
    Role,
)
from campaigns.queues import (
    MAINTENANCE_QUEUE,
    PUMP_TASK,
    SEND_TASK,
    SENDER_QUEUE,
)
from tests.helpers import (
    PASSWORD,
    csrf_token_from,
    defer_job,
    fail_job,
    make_app,
    register_worker,
    start_job,
)


def failed_job(**kwargs) -> int:
    job_id = defer_job(**kwargs)
    start_job(job_id, register_worker())
    fail_job(job_id)
    return job_id


def job_status(job_id: int) -> str:
    db.session.rollback()  # see what the request committed
    return db.session.execute(
        db.text("SELECT CAST(status AS text) FROM procrastinate_jobs WHERE id = :id"),
        {"id": job_id},
    ).scalar_one()


def flashes(client) -> str:
    return client.get("/admin/queue/").get_data(as_text=True).split('id="flashes"')[1][:600]


@pytest.fixture
def admin(login_as):
    return login_as(Role.ADMIN)


@pytest.mark.parametrize("role", [Role.VIEWER, Role.SUPERVISOR])
def test_only_admins_reach_the_monitor(client, login_as, role):
    login_as(role)
    job_id = failed_job()
    for url in ("/admin/queue/", "/admin/queue/counts", "/admin/queue/jobs"):
        assert client.get(url, headers={"HX-Request": "true"}).status_code == 403, url
    assert client.post(f"/admin/queue/jobs/{job_id}/retry").status_code == 403
    assert client.post(f"/admin/queue/jobs/{job_id}/cancel").status_code == 403
    assert job_status(job_id) == "failed"
    assert "/admin/queue/" not in client.get("/").get_data(as_text=True)


def test_signed_out_fragments_send_htmx_to_the_login_page(client):
    response = client.get("/admin/queue/counts", headers={"HX-Request": "true"})
    assert response.status_code == 401
    assert response.headers["HX-Redirect"].startswith("/login")


def test_admins_get_the_monitor_and_its_nav_link(client, admin):
    body = client.get("/").get_data(as_text=True)
    assert 'href="/admin/queue/"' in body
    response = client.get("/admin/queue/")
    assert response.status_code == 200
    assert 'id="queue-counts"' in response.get_data(as_text=True)


def test_failed_jobs_show_task_attempts_times_and_where_the_error_is(client, admin):
    failed = failed_job(args={"message_id": 41})
    waiting = defer_job(args={"message_id": 42})
    body = client.get("/admin/queue/").get_data(as_text=True)  # failed jobs by default
    row = re.search(rf'<tr id="job-{failed}">.*?</tr>', body, re.S).group(0)
    assert SEND_TASK in row and "message_id=41" in row
    cells = [re.sub(r"<[^>]+>|\s+", " ", c).strip() for c in re.findall(r"<td.*?</td>", row, re.S)]
    assert cells[5] == "1"  # attempts: one run, counted when it failed
    assert all(re.search(r"\d:\d\d:\d\d", cell) for cell in cells[6:9])  # deferred/started/ended
    assert f"{SEND_TASK}[{failed}]" in cells[9]  # the worker's log line to look for
    assert "does not store why a job failed" in body
    # The log line as code, outside the translated sentence.
    assert "<code>Job &lt;task&gt;[&lt;id&gt;](…) ended with status: Error</code>" in body
    assert f'id="job-{waiting}"' not in body

    everything = client.get("/admin/queue/jobs?status=").get_data(as_text=True)
    assert f'id="job-{failed}"' in everything and f'id="job-{waiting}"' in everything


def test_counts_by_queue_and_status_link_to_the_list(client, admin):
    failed_job()
    defer_job()
    defer_job(PUMP_TASK, SENDER_QUEUE, {"campaign_id": 1})
    body = client.get("/admin/queue/counts").get_data(as_text=True)
    row = re.search(r'<tr id="queue-campaign-messages-counts">.*?</tr>', body, re.S).group(0)
    assert 'href="/admin/queue/?queue=campaign-messages&amp;status=failed"' in row
    assert 'href="/admin/queue/?queue=campaign-messages&amp;status=todo"' in row
    for queue in queues.KNOWN_QUEUES:
        assert f'id="queue-{queue}-counts"' in body  # empty queues are listed too

    only_pumps = client.get("/admin/queue/jobs?queue=campaign-sender&status=todo")
    assert PUMP_TASK in only_pumps.get_data(as_text=True)
    assert SEND_TASK not in only_pumps.get_data(as_text=True)


def test_job_list_pages_by_id_newest_first(app):
    ids = [defer_job() for _ in range(5)]
    first = queues.list_jobs(queues.JobFilters(status="todo"), per_page=2)
    assert [j.id for j in first.jobs] == [ids[4], ids[3]]
    assert first.next_before_id == ids[3]
    rest = queues.list_jobs(queues.JobFilters(status="todo", before_id=ids[1] + 1), per_page=2)
    assert [j.id for j in rest.jobs] == [ids[1], ids[0]]
    assert rest.next_before_id is None


def test_retry_puts_a_failed_job_back_in_its_queue(client, admin):
    job_id = failed_job(args={"message_id": 7})
    response = client.post(f"/admin/queue/jobs/{job_id}/retry?status=failed")
    assert response.status_code == 303
    assert response.headers["Location"] == "/admin/queue/?status=failed"
    assert job_status(job_id) == "todo"
    events = db.session.execute(
        db.text("SELECT CAST(type AS text) FROM procrastinate_events WHERE job_id = :id"),
        {"id": job_id},
    ).scalars()
    assert "retried" in list(events)
    (listed,) = queues.list_jobs(queues.JobFilters(status="todo")).jobs
    assert listed.started_at is not None and listed.finished_at is None  # its end was undone
    assert f"Job #{job_id} is back in its queue." in flashes(client)


def test_cancel_a_waiting_job(client, admin):
    job_id = defer_job(PUMP_TASK, SENDER_QUEUE, {"campaign_id": 3})
    response = client.post(f"/admin/queue/jobs/{job_id}/cancel")
    assert response.status_code == 303
    assert job_status(job_id) == "cancelled"
    assert f"Job #{job_id} is cancelled." in flashes(client)


def test_cancelling_a_message_job_cancels_its_message(client, admin):
    from campaigns.services.demo import seed_demo
    from campaigns.services.templates import default_sender

    seed_demo()
    sender = default_sender()
    campaign = Campaign(
        name="Window",
        owner_id=admin.id,
        sender_id=sender.id,
        template_id=db.session.scalar(sa.select(MessageTemplate.id).limit(1)),
        status=CampaignStatus.SENDING,
    )
    db.session.add(campaign)
    db.session.flush()
    message = Message(
        campaign_id=campaign.id,
        phone="+5511987654321",
        customer_ref="c1",
        status=MessageStatus.QUEUED,
    )
    db.session.add(message)
    db.session.flush()
    counters.ensure_rows(db.session, campaign.id)
    counters.apply(db.session, campaign.id, {"total": 1, "queued": 1})
    db.session.commit()
    job_id = defer_job(args={"message_id": message.id})

    assert client.post(f"/admin/queue/jobs/{job_id}/cancel").status_code == 303
    assert job_status(job_id) == "cancelled"
    assert db.session.get(Message, message.id).status is MessageStatus.CANCELLED
    totals = counters.totals(db.session, campaign.id)
    assert (totals["queued"], totals["cancelled"]) == (0, 1)  # nothing left to wait for


@pytest.mark.parametrize(
    ("action", "state", "refusal"),
    [
        # The job's status by its label (To do, Running, Failed), not its raw value.
        ("retry", "todo", "Only failed jobs can be retried; job #{id} is “To do”."),
        ("retry", "doing", "Only failed jobs can be retried; job #{id} is “Running”."),
        ("cancel", "doing", "Job #{id} is running; only waiting jobs can be cancelled."),
        ("cancel", "failed", "Job #{id} has ended (Failed); there is nothing to cancel."),
    ],
)
def test_a_job_in_the_wrong_state_is_refused(client, admin, action, state, refusal):
    job_id = defer_job()
    if state in ("doing", "failed"):
        start_job(job_id, register_worker())
    if state == "failed":
        fail_job(job_id)
    response = client.post(f"/admin/queue/jobs/{job_id}/{action}")
    assert response.status_code == 303
    assert job_status(job_id) == state
    assert refusal.format(id=job_id) in flashes(client)


def test_retry_refused_while_a_sibling_holds_the_queueing_lock(client, admin):
    job_id = failed_job(task=PUMP_TASK, queue=SENDER_QUEUE, queueing_lock="pump-9")
    defer_job(PUMP_TASK, SENDER_QUEUE, {"campaign_id": 9}, queueing_lock="pump-9")
    assert client.post(f"/admin/queue/jobs/{job_id}/retry").status_code == 303
    assert job_status(job_id) == "failed"
    assert "another waiting job holds its queueing lock pump-9" in flashes(client)


def test_an_unknown_job_is_404(client, admin):
    assert client.post("/admin/queue/jobs/999999/retry").status_code == 404
    assert client.post("/admin/queue/jobs/999999/cancel").status_code == 404


def test_actions_need_the_csrf_token_htmx_sends_in_its_header(database_url_for_test, user_factory):
    job_id = failed_job(queue=MAINTENANCE_QUEUE, task="maintenance.ping")
    admin = user_factory(Role.ADMIN)
    app = make_app(database_url_for_test, WTF_CSRF_ENABLED=True)
    client = app.test_client()
    try:
        token = csrf_token_from(client.get("/login").data)
        signed_in = client.post(
            "/login", data={"email": admin.email, "password": PASSWORD, "csrf_token": token}
        )
        assert signed_in.status_code == 303
        assert client.post(f"/admin/queue/jobs/{job_id}/retry").status_code == 400
        token = csrf_token_from(client.get("/admin/queue/").data)
        headers = {"X-CSRFToken": token}  # as base.html's hx-headers sends it
        response = client.post(f"/admin/queue/jobs/{job_id}/retry", headers=headers)
        assert response.status_code == 303
        assert job_status(job_id) == "todo"
    finally:
        with app.app_context():
            db.engine.dispose()


def test_stalled_jobs_match_procrastinates_own_rule(app, real_queue):
    import asyncio

    seconds = queues.stalled_after_seconds()
    live, silent = register_worker(), register_worker(seconds + 60)
    on_live, on_silent, orphan = defer_job(), defer_job(), defer_job()
    start_job(on_live, live)
    start_job(on_silent, silent)
    start_job(orphan, None)  # a pruned worker's job: Procrastinate set its worker_id to NULL
    defer_job()  # waiting, not stalled

    async def procrastinates_view() -> set[int]:
        async with real_queue.open_async():
            stalled = await real_queue.job_manager.get_stalled_jobs(seconds_since_heartbeat=seconds)
            return {job.id for job in stalled}

    ours = {job.id for job in queues.stalled_jobs()}
    assert ours == {on_silent, orphan}
    assert ours == asyncio.run(procrastinates_view())
