"""End to end through real `procrastinate worker` processes, the mock ERP and mock WhatsApp.

The test app serves on a real socket (its mock ERP, mock WhatsApp and webhook
endpoint); worker processes reach it through APP_BASE_URL, exactly as under
`make run`, and share the test database.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from app import db
from campaigns import counters, services
from campaigns.models import (
    Campaign,
    CampaignStatus,
    Message,
    MessageTemplate,
    Role,
)
from campaigns.validation import parse_campaign
from tests.test_sending import assert_counters_match_rows

PROCRASTINATE = str(Path(sys.executable).with_name("procrastinate"))
TERMINAL = {"sent", "delivered", "read", "failed", "skipped", "cancelled"}


def wait_for(condition: Callable[[], object], seconds: float = 90.0, what: str = "") -> None:
    """Poll until condition() is truthy: a deadline, not a performance assertion."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        db.session.rollback()  # see the workers' commits
        if condition():
            return
        time.sleep(0.3)
    raise AssertionError(f"not within {seconds} s: {what}; {_state()}")


def _state() -> str:
    """What the campaigns and jobs look like, to explain a missed deadline."""
    campaigns = db.session.execute(
        sa.select(Campaign.id, Campaign.status, Campaign.status_reason)
    ).all()
    jobs = db.session.execute(
        sa.text(
            "SELECT task_name, status::text, count(*) FROM procrastinate_jobs"
            " GROUP BY 1, 2 ORDER BY 1, 2"
        )
    ).all()
    messages = {c.id: dict(statuses(c.id)) for c in campaigns}
    return f"campaigns={campaigns} messages={messages} jobs={jobs}"


@pytest.fixture
def start_worker(
    database_url_for_test, live_server, real_queue
) -> Iterator[Callable[..., subprocess.Popen]]:
    processes: list[subprocess.Popen] = []

    def start(name: str = "w", concurrency: int = 8) -> subprocess.Popen:
        env = os.environ | {
            "DATABASE_URL": database_url_for_test,
            "DISPARO_ENV": "development",
            "APP_BASE_URL": live_server,
        }
        process = subprocess.Popen(
            [
                PROCRASTINATE,
                "--app=jobs.app",
                "--log-level=warning",
                "worker",
                f"--name={name}",
                f"--concurrency={concurrency}",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def make_campaign(app, user_factory, live_server) -> Callable[..., Campaign]:
    services.seed_demo()
    owner = user_factory(Role.SUPERVISOR)
    owner.campaign_rate_limit_per_minute = 600_000
    sender = services.default_sender()
    sender.rate_limit_per_minute, sender.min_interval_ms = 600_000, 0
    db.session.commit()
    template = db.session.query(MessageTemplate).filter_by(name="promo_weekend").one()

    def make(size: int) -> Campaign:
        fields = parse_campaign(
            {
                "name": f"E2E {size}",
                "sender_id": sender.id,
                "template_id": template.id,
                "segment": {"state": "SP", "max_audience": size, "opted_in_only": False},
                "variables": {
                    "first_name": {"field": "first_name"},
                    "discount": {"text": "10%"},
                    "city": {"field": "city"},
                    "coupon": {"text": "E2E"},
                },
            },
            services.template_variables_for(template.id),
        )
        return services.create_campaign(fields, owner.id)

    return make


def statuses(campaign_id: int) -> Counter[str]:
    rows = db.session.execute(
        sa.select(Message.status, sa.func.count())
        .where(Message.campaign_id == campaign_id)
        .group_by(Message.status)
    ).all()
    return Counter({status.value: n for status, n in rows})


def campaign_status(campaign_id: int) -> CampaignStatus:
    return db.session.scalar(sa.select(Campaign.status).where(Campaign.id == campaign_id))


def mock_log(live_server: str) -> list[dict]:
    return requests.get(f"{live_server}/mock/whatsapp/log?limit=100000", timeout=10).json()


def test_a_campaign_goes_out_completely_and_once(app, live_server, start_worker, make_campaign):
    campaign = make_campaign(300)
    start_worker()
    services.send_campaign_now(campaign.id, campaign.owner_id)
    wait_for(lambda: campaign_status(campaign.id) is CampaignStatus.COMPLETED, what="completed")

    rows = statuses(campaign.id)
    assert sum(rows.values()) == 300
    assert set(rows) <= TERMINAL, rows
    assert rows["skipped"] >= 0 and rows["sent"] + rows["delivered"] + rows["read"] > 250
    assert_counters_match_rows(campaign.id)

    log = mock_log(live_server)
    sent_ids = Counter(entry["message_id"] for entry in log)
    assert sent_ids and max(sent_ids.values()) == 1  # nothing sent twice
    # Every message WhatsApp accepted is a sent row (the mock logs only what it accepts).
    assert len(sent_ids) == rows["sent"] + rows["delivered"] + rows["read"]

    # The mock's signed status webhooks arrive and move messages on, never back.
    wait_for(lambda: statuses(campaign.id)["sent"] == 0, 60, "every message delivered or read")
    totals = counters.totals(db.session, campaign.id)
    assert totals["sent"] >= totals["delivered"] >= totals["read"] > 0
    assert_counters_match_rows(campaign.id)


def test_pause_stops_sending_and_resume_finishes(app, live_server, start_worker, make_campaign):
    campaign = make_campaign(400)
    sender = services.default_sender()
    sender.rate_limit_per_minute = 1200  # 20 a second: slow enough to pause mid-way
    db.session.commit()
    start_worker()
    services.send_campaign_now(campaign.id, campaign.owner_id)
    wait_for(lambda: len(mock_log(live_server)) >= 40, what="sending started")
    services.pause_campaign(campaign.id, campaign.owner_id)
    # Jobs already running finish; after that nothing more is sent while paused.
    time.sleep(2)
    during = len(mock_log(live_server))
    time.sleep(3)
    assert len(mock_log(live_server)) == during
    assert campaign_status(campaign.id) is CampaignStatus.PAUSED
    assert statuses(campaign.id)["pending"] > 0

    services.resume_campaign(campaign.id, campaign.owner_id)
    wait_for(lambda: campaign_status(campaign.id) is CampaignStatus.COMPLETED, 120, "completed")
    rows = statuses(campaign.id)
    assert set(rows) <= TERMINAL, rows
    sent_ids = Counter(entry["message_id"] for entry in mock_log(live_server))
    assert max(sent_ids.values()) == 1
    assert_counters_match_rows(campaign.id)


def test_cancel_mid_campaign(app, live_server, start_worker, make_campaign):
    campaign = make_campaign(400)
    services.default_sender().rate_limit_per_minute = 1200
    db.session.commit()
    start_worker()
    services.send_campaign_now(campaign.id, campaign.owner_id)
    wait_for(lambda: len(mock_log(live_server)) >= 20, what="sending started")
    services.cancel_campaign(campaign.id, campaign.owner_id)
    wait_for(lambda: not (set(statuses(campaign.id)) - TERMINAL), 60, "every message terminal")
    rows = statuses(campaign.id)
    assert rows["cancelled"] > 0
    assert campaign_status(campaign.id) is CampaignStatus.CANCELLED
    assert_counters_match_rows(campaign.id)


def test_transient_errors_are_retried_until_they_go(app, live_server, start_worker, make_campaign):
    app.config["MOCK_WHATSAPP_TRANSIENT_RATE"] = 0.3
    campaign = make_campaign(60)
    start_worker()
    services.send_campaign_now(campaign.id, campaign.owner_id)
    wait_for(lambda: campaign_status(campaign.id) is CampaignStatus.COMPLETED, 60, "completed")
    rows = statuses(campaign.id)
    assert set(rows) <= TERMINAL
    retried = db.session.scalar(
        sa.select(sa.func.count()).where(Message.campaign_id == campaign.id, Message.attempts > 1)
    )
    assert retried > 0
    assert_counters_match_rows(campaign.id)


def test_two_workers_start_a_scheduled_campaign_once(app, live_server, start_worker, make_campaign):
    from datetime import UTC, datetime

    from campaigns import sending

    campaign = make_campaign(50)
    campaign.status, campaign.scheduled_at = CampaignStatus.SCHEDULED, datetime.now(UTC)
    db.session.commit()
    # Two claims at the same tick, as two scheduler jobs would make them.
    tick = datetime.now(UTC)
    claimed = sending.claim_due(tick) + sending.claim_due(tick)
    assert claimed == [campaign.id]
    start_worker("a")
    start_worker("b")
    wait_for(lambda: campaign_status(campaign.id) is CampaignStatus.COMPLETED, what="completed")
    fan_outs = db.session.execute(
        sa.text("SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'campaigns.fan_out'")
    ).scalar()
    assert fan_outs <= 1
    assert sum(statuses(campaign.id).values()) == 50
    assert max(Counter(e["message_id"] for e in mock_log(live_server)).values()) == 1
