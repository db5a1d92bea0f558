from __future__ import annotations

import dataclasses
import re
from datetime import timedelta

import pytest
import sqlalchemy as sa

from app import db
from campaigns import counters, progress, queues, ratelimit
from campaigns.models import (
    Campaign,
    CampaignStatus,
    Message,
    MessageStatus,
    MessageTemplate,
    Notification,
    Provider,
    Role,
    Sender,
    User,
)
from campaigns.queues import MAINTENANCE_QUEUE, MESSAGES_QUEUE
from campaigns.services.demo import seed_demo
from campaigns.services.templates import default_sender
from tests.helpers import counted_statements, defer_job, fail_job, register_worker, start_job

HTMX = {"HX-Request": "true"}


@pytest.fixture
def demo(app):
    seed_demo()
    return default_sender(), db.session.scalar(sa.select(MessageTemplate).limit(1))


@pytest.fixture
def make_campaign(demo, user_factory):
    sender, template = demo
    names = iter(range(1, 1000))

    def make(
        status: CampaignStatus,
        *,
        owner: User | None = None,
        sender: Sender = sender,
        in_hours: float | None = None,
        **totals: int,
    ) -> Campaign:
        campaign = Campaign(
            name=f"Campaign {next(names)}",
            owner_id=(owner or user_factory(Role.SUPERVISOR)).id,
            sender_id=sender.id,
            template_id=template.id,
            status=status,
        )
        db.session.add(campaign)
        db.session.flush()
        if in_hours is not None:
            campaign.scheduled_at = db.session.scalar(sa.select(sa.func.now())) + timedelta(
                hours=in_hours
            )
        if totals:
            counters.ensure_rows(db.session, campaign.id)
            counters.apply(db.session, campaign.id, totals)
        db.session.commit()
        return campaign

    return make


def row_of(body: str, element_id: str) -> str:
    match = re.search(rf'<tr id="{element_id}">(.*?)</tr>', body, re.S)
    assert match, f"no row {element_id}"
    return match.group(1)


def cells(row: str) -> list[str]:
    return [re.sub(r"<[^>]+>|\s+", " ", c).strip() for c in re.findall(r"<td.*?</td>", row, re.S)]


def test_the_list_shows_only_sending_paused_and_scheduled_campaigns(
    client, login_as, make_campaign
):
    login_as(Role.VIEWER)
    shown = {
        make_campaign(CampaignStatus.SENDING, total=10, sent=4, failed=1, pending=5),
        make_campaign(CampaignStatus.PAUSED, total=3, pending=3),
        make_campaign(CampaignStatus.SCHEDULED, in_hours=24),
    }
    hidden = {
        make_campaign(status)
        for status in (
            CampaignStatus.DRAFT,
            CampaignStatus.COMPLETED,
            CampaignStatus.CANCELLED,
            CampaignStatus.FAILED,
        )
    }
    body = client.get("/dashboard/campaigns", headers=HTMX).get_data(as_text=True)
    for campaign in shown:
        assert f'id="dashboard-campaign-{campaign.id}"' in body
    for campaign in hidden:
        assert f'id="dashboard-campaign-{campaign.id}"' not in body

    sending = next(c for c in shown if c.status is CampaignStatus.SENDING)
    row = row_of(body, f"dashboard-campaign-{sending.id}")
    assert f'href="/campaigns/{sending.id}"' in row
    assert '<progress value="5" max="10"' in row  # done = sent + failed
    assert cells(row)[3:6] == ["4", "1", "10"]  # sent, failed, total
    assert 'id="dashboard-campaigns"' in client.get("/").get_data(as_text=True)


def test_the_list_poll_runs_while_a_campaign_is_live_and_ends_with_286(
    client, login_as, make_campaign
):
    login_as(Role.VIEWER)
    response = client.get("/dashboard/campaigns", headers=HTMX)
    assert response.status_code == 286
    assert b"hx-trigger" not in response.data

    paused = make_campaign(CampaignStatus.PAUSED, total=2, pending=2)
    far_off = progress.LIVE_BEFORE_START.total_seconds() / 3600 + 24
    make_campaign(CampaignStatus.SCHEDULED, in_hours=far_off)
    response = client.get("/dashboard/campaigns", headers=HTMX)
    assert response.status_code == 286  # shown, but nothing about them changes by itself
    assert f'id="dashboard-campaign-{paused.id}"'.encode() in response.data
    assert b"hx-trigger" not in response.data

    make_campaign(CampaignStatus.SCHEDULED, in_hours=0.01)  # about to start
    response = client.get("/dashboard/campaigns", headers=HTMX)
    assert response.status_code == 200
    assert b'hx-trigger="every 2s"' in response.data

    db.session.execute(sa.delete(Campaign).where(Campaign.status == CampaignStatus.SCHEDULED))
    db.session.commit()
    make_campaign(CampaignStatus.SENDING, total=1, pending=1)
    response = client.get("/dashboard/campaigns", headers=HTMX)
    assert response.status_code == 200
    assert b'hx-get="/dashboard/campaigns"' in response.data


def test_one_poll_costs_the_same_statements_for_one_campaign_or_many(
    client, login_as, make_campaign, demo
):
    login_as(Role.VIEWER)

    def statements_for_the_list() -> int:
        with counted_statements() as statements:
            assert client.get("/dashboard/campaigns", headers=HTMX).status_code == 200
        return len(statements)

    make_campaign(CampaignStatus.SENDING, total=5, pending=5)
    one = statements_for_the_list()
    for n in range(5):
        # Each with its own owner and sender, so no lazy load can hide in a shared identity.
        sender = Sender(name=f"Sender {n}", provider=Provider.MOCK, phone_number_id=f"9{n}")
        db.session.add(sender)
        db.session.flush()
        make_campaign(CampaignStatus.SENDING, sender=sender, total=5, sent=n, pending=5 - n)
        counters.bump_minute(db.session, db.session.scalar(sa.select(sa.func.max(Campaign.id))), 1)
        db.session.commit()
    many = statements_for_the_list()
    assert many == one
    assert len(progress.active_campaigns().campaigns) == 6


def test_progress_for_many_matches_each_campaigns_own_progress(app, make_campaign):
    campaigns = [
        make_campaign(CampaignStatus.SENDING, total=9, sent=3, delivered=2, failed=1, pending=5),
        make_campaign(CampaignStatus.PAUSED, total=4, skipped=1, pending=3),
        make_campaign(CampaignStatus.SCHEDULED, in_hours=2),
    ]
    counters.bump_minute(db.session, campaigns[0].id, sent=3)
    db.session.commit()
    listed = {a.campaign.id: a.progress for a in progress.active_campaigns().campaigns}
    for campaign in campaigns:
        one = progress.get_progress(campaign)
        many = listed[campaign.id]
        # Read at two different instants; every other figure is the same.
        assert many.read_at is not None and one.read_at is not None
        assert dataclasses.replace(many, read_at=one.read_at) == one


def test_the_lists_eta_waits_for_held_messages_as_the_campaign_page_does(
    client, login_as, make_campaign
):
    campaign = make_campaign(CampaignStatus.SENDING, total=3, sent=1, retrying=2)
    # Two messages 131049 holds for most of a day (retrying, held_until to come).
    due = db.session.scalar(sa.select(sa.func.now())) + timedelta(hours=20)
    for ref in ("C1", "C2"):
        db.session.add(
            Message(
                campaign_id=campaign.id,
                customer_ref=ref,
                phone=f"+551198765432{ref[-1]}",
                status=MessageStatus.RETRYING,
                held_until=due,
            )
        )
    db.session.commit()
    one = progress.get_progress(campaign)
    (many,) = [a.progress for a in progress.active_campaigns().campaigns]
    assert dataclasses.replace(many, read_at=one.read_at) == one
    assert many.held_count == 2 and many.eta_seconds is not None
    assert many.eta_seconds > 19 * 3600
    login_as(Role.VIEWER)
    body = client.get("/dashboard/campaigns", headers=HTMX).get_data(as_text=True)
    # The list shows the page's ETA: the last hold's time, not "—" or the pace's minutes.
    eta = cells(row_of(body, f"dashboard-campaign-{campaign.id}"))[-1]
    assert eta in ("19 h 59 min", "20 h 00 min"), eta


def test_limits_show_used_of_limit_and_when_the_next_slot_opens(
    client, login_as, make_campaign, demo, user_factory
):
    login_as(Role.VIEWER)
    sender, _template = demo
    sender.min_interval_ms = 3_600_000  # an hour between two messages: the next slot is far
    owner = user_factory(Role.SUPERVISOR)
    owner.campaign_rate_limit_per_minute = 2
    idle_owner = user_factory(Role.SUPERVISOR)
    db.session.commit()
    make_campaign(CampaignStatus.SENDING, owner=owner, total=3, pending=3)
    make_campaign(CampaignStatus.COMPLETED, owner=idle_owner)
    assert ratelimit.consume(db.session, ratelimit.send_limits(sender, owner)).allowed
    assert ratelimit.consume(db.session, [ratelimit.campaign_limit(owner)]).allowed

    body = client.get("/dashboard/limits", headers=HTMX).get_data(as_text=True)
    assert 'hx-trigger="every 5s"' in body
    used, next_slot = cells(row_of(body, f"limit-sender-{sender.id}"))[1:]
    assert used == "1 of 20"
    assert re.fullmatch(r"in 3,[56]\d\d\.\d s", next_slot)  # about an hour away, 3,600.0
    used, next_slot = cells(row_of(body, f"limit-owner-{owner.id}"))[1:]
    assert used == "2 of 2"
    assert re.fullmatch(r"in \d+\.\d s", next_slot)  # the window is full until a grant leaves it
    assert f'id="limit-owner-{idle_owner.id}"' not in body  # no active campaign

    make_campaign(CampaignStatus.SENDING, owner=idle_owner)
    body = client.get("/dashboard/limits", headers=HTMX).get_data(as_text=True)
    assert cells(row_of(body, f"limit-owner-{idle_owner.id}"))[1:] == ["0 of 100", "now"]


def test_queue_health_counts_todo_doing_and_failed(client, login_as, real_queue):
    from jobs import tasks

    login_as(Role.VIEWER)
    tasks.ping.defer(token="through the real queue")  # maintenance: one due todo
    worker = register_worker()
    in_an_hour = db.session.scalar(sa.select(sa.func.now())) + timedelta(hours=1)
    defer_job()  # waiting and due
    defer_job(at=in_an_hour)  # waiting, not due yet
    running, failed = defer_job(), defer_job()
    start_job(running, worker)
    start_job(failed, worker)
    fail_job(failed)

    body = client.get("/dashboard/queues", headers=HTMX).get_data(as_text=True)
    assert 'hx-trigger="every 5s"' in body
    # queue, todo, due now, doing, failed
    assert cells(row_of(body, f"queue-{MESSAGES_QUEUE}")) == [MESSAGES_QUEUE, "2", "1", "1", "1"]
    maintenance = cells(row_of(body, f"queue-{MAINTENANCE_QUEUE}"))
    assert maintenance == [MAINTENANCE_QUEUE, "1", "1", "0", "0"]


def test_workers_with_their_heartbeat_and_stalled_jobs(client, login_as):
    login_as(Role.VIEWER)
    live = register_worker(seconds_since_heartbeat=3)
    silent = register_worker(seconds_since_heartbeat=600)
    busy, stalled = defer_job(), defer_job()
    start_job(busy, live)
    start_job(stalled, silent)

    body = client.get("/dashboard/queues", headers=HTMX).get_data(as_text=True)
    assert "1 live" in body
    live_row = cells(row_of(body, f"worker-{live}"))
    assert live_row[1].endswith("s ago") and "silent" not in live_row[1]
    assert live_row[2] == "1"  # running one job
    assert "silent" in cells(row_of(body, f"worker-{silent}"))[1]
    assert f'id="stalled-job-{stalled}"' in body
    assert f'id="stalled-job-{busy}"' not in body
    assert f"silent for over {queues.stalled_after_seconds()} s" in body


def test_notifications_are_the_users_own_and_everyones_for_admins(
    client, login_as, make_campaign, user_factory
):
    viewer = login_as(Role.VIEWER)
    other = user_factory(Role.SUPERVISOR)
    campaign = make_campaign(CampaignStatus.SENDING, owner=other)
    mine = Notification(
        user_id=viewer.id, kind="completed", code="text", params={"text": "Mine finished."}
    )
    theirs = Notification(
        user_id=other.id,
        campaign_id=campaign.id,
        kind="auto_paused",
        code="text",
        params={"text": "Theirs paused."},
    )
    db.session.add_all([mine, theirs])
    db.session.commit()

    body = client.get("/dashboard/notifications", headers=HTMX).get_data(as_text=True)
    assert "Mine finished." in body and "Theirs paused." not in body

    client.post("/logout")
    login_as(Role.ADMIN)
    body = client.get("/dashboard/notifications", headers=HTMX).get_data(as_text=True)
    assert "Mine finished." in body and "Theirs paused." in body
    assert f"to {other.email}" in body
    assert f'href="/campaigns/{campaign.id}"' in body


def test_dashboard_fragments_need_a_signed_in_user(client):
    for url in ("/dashboard/campaigns", "/dashboard/limits", "/dashboard/queues"):
        response = client.get(url, headers=HTMX)
        assert response.status_code == 401, url
        assert response.headers["HX-Redirect"].startswith("/login")


def test_the_page_renders_every_section_for_a_viewer(client, login_as, make_campaign):
    login_as(Role.VIEWER)
    make_campaign(CampaignStatus.SENDING, total=1, pending=1)
    body = client.get("/").get_data(as_text=True)
    for section in ("dashboard-campaigns", "dashboard-limits", "dashboard-notifications"):
        assert f'id="{section}"' in body
    assert 'id="dashboard-queues"' in body
    assert "/admin/queue/" not in body  # the monitor link is for admins


# -- empty states: what is missing, said once, with what to do next


def test_no_campaigns_is_said_once_with_a_link_to_create_one(client, login_as, demo):
    login_as(Role.SUPERVISOR)
    body = client.get("/").get_data(as_text=True)
    assert body.count("No campaigns yet.") == 1
    assert "No campaign is sending, paused or scheduled." not in body
    assert 'id="empty-campaigns"' in body and 'href="/campaigns/new"' in body
    assert 'id="dashboard-campaigns"' not in body  # no empty "Active campaigns" section
    # The demo has an active sender and approved templates: nothing else is missing.
    assert 'id="empty-senders"' not in body and 'id="empty-templates"' not in body


def test_campaigns_that_are_all_finished_leave_only_the_active_lists_words(
    client, login_as, make_campaign
):
    login_as(Role.VIEWER)
    make_campaign(CampaignStatus.COMPLETED)
    body = client.get("/").get_data(as_text=True)
    assert "No campaigns yet." not in body
    assert body.count("No campaign is sending, paused or scheduled.") == 1


@pytest.mark.parametrize(
    ("role", "sender_step", "template_step"),
    [
        (Role.ADMIN, 'href="/senders/new"', 'href="/templates/new"'),
        (Role.SUPERVISOR, "Ask an administrator to add one.", 'href="/templates/new"'),
        (Role.VIEWER, "Ask an administrator to add one.", "Ask a supervisor to create one."),
    ],
)
def test_without_a_sender_or_an_approved_template_the_dashboard_says_what_to_do(
    client, login_as, role, sender_step, template_step
):
    login_as(role)
    body = client.get("/").get_data(as_text=True)
    senders = re.search(r'<p class="empty-state" id="empty-senders">(.*?)</p>', body, re.S)
    templates = re.search(r'<p class="empty-state" id="empty-templates">(.*?)</p>', body, re.S)
    assert senders and sender_step in senders.group(1)
    assert templates and template_step in templates.group(1)
    assert ('href="/campaigns/new"' in body) is (role is not Role.VIEWER)
