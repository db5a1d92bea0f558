"""The campaign page's live parts: the polled progress fragment, receipts, the hourly chart."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from app import db
from campaigns import counters, fanout, pump, queues, sending
from campaigns.htmx import STOP_POLLING
from campaigns.models import Campaign, CampaignStatus, Role
from campaigns.progress import RECEIPTS_FOLLOW, get_progress, throughput_chart
from campaigns.services.campaigns import pause_campaign, schedule_campaign, send_campaign_now
from campaigns.services.users import create_api_token
from tests.helpers import jobs

HX = {"HX-Request": "true"}


def _root(html: str) -> str:
    """The opening tag of the fragment's root element."""
    return re.search(r"<section id=\"campaign-\d+-progress\"[^>]*>", html).group(0)


def _oob_ids(html: str) -> set[str]:
    return set(re.findall(r'id="([^"]+)"[^>]*hx-swap-oob="true"', html))


def _send_everything(app, campaign) -> None:
    """Drive a campaign from start to completed in-process, as workers would."""
    send_campaign_now(campaign.id, campaign.owner_id)
    fanout.load_audience(campaign.id, app.config)
    while True:
        pump.pump(campaign.id)
        batches = [j["args"] for j in jobs(queues.SEND_TASK) if j["status"] == "todo"]
        if not batches:
            break
        for args in batches:
            sending.send_batch(
                args["campaign_id"], args["message_ids"], app.config, retry_queue=False
            )
        db.session.execute(
            sa.text("DELETE FROM procrastinate_jobs WHERE task_name = :t"), {"t": queues.SEND_TASK}
        )
        db.session.commit()
    db.session.refresh(campaign)
    assert campaign.status is CampaignStatus.COMPLETED


def test_the_fragment_polls_while_sending(client, login_as, app, campaign, fake):
    login_as(Role.VIEWER)
    send_campaign_now(campaign.id, campaign.owner_id)
    response = client.get(f"/campaigns/{campaign.id}/progress?shown=sending", headers=HX)
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    root = _root(html)
    assert 'hx-trigger="every 2s"' in root and "shown=sending" in root
    assert _oob_ids(html) == set()  # nothing changed since the page was drawn


def test_the_final_fragment_stops_polling_and_updates_badge_and_buttons(
    client, login_as, app, campaign, fake
):
    login_as(Role.SUPERVISOR)
    page = client.get(f"/campaigns/{campaign.id}").get_data(as_text=True)
    assert "Send now" in page and f'id="campaign-{campaign.id}-actions"' in page
    _send_everything(app, campaign)

    response = client.get(f"/campaigns/{campaign.id}/progress?shown=sending", headers=HX)
    html = response.get_data(as_text=True)
    assert response.status_code == STOP_POLLING
    root = _root(html)
    assert "hx-trigger" not in root and "hx-get" not in root
    assert "100\u00a0%" in html  # |percent: a no-break space before the sign
    assert _oob_ids(html) >= {f"campaign-{campaign.id}-status", f"campaign-{campaign.id}-actions"}
    status = re.search(rf'<span id="campaign-{campaign.id}-status"[^>]*>.*?</span>\s*</span>', html)
    assert "completed" in status.group(0)
    actions = html[html.index(f'id="campaign-{campaign.id}-actions"') :]
    assert "Pause" not in actions.split("</div>")[0] and "Duplicate" in actions
    # The receipts poller takes over, outside the fragment and slower.
    receipts = re.search(rf'<div id="campaign-{campaign.id}-receipts"[^>]*>', html).group(0)
    assert 'hx-swap-oob="true"' in receipts and 'hx-trigger="every 15s"' in receipts
    # The errors and recipients, drawn before the fan-out, are told to fetch themselves again.
    assert response.headers["HX-Trigger"] == "campaign-changed"
    for section, url in (("errors", "errors"), ("recipients", "recipients")):
        listener = re.search(
            rf'<div hidden hx-get="/campaigns/{campaign.id}/{url}" hx-trigger="campaign-changed'
            rf' from:body"\s+hx-target="#campaign-{campaign.id}-{section}"',
            page,
        )
        assert listener, section
    # The recipients come back with the filter the operator had typed.
    assert f'hx-include="#campaign-{campaign.id}-recipients form"' in page
    # A poll that finds the status as the page shows it triggers nothing.
    same = client.get(f"/campaigns/{campaign.id}/progress?shown=completed", headers=HX)
    assert same.status_code == STOP_POLLING and "HX-Trigger" not in same.headers


def test_a_viewer_gets_no_buttons_out_of_band(client, login_as, app, campaign, fake):
    login_as(Role.VIEWER)
    send_campaign_now(campaign.id, campaign.owner_id)
    pause_campaign(campaign.id, campaign.owner_id)
    response = client.get(f"/campaigns/{campaign.id}/progress?shown=sending", headers=HX)
    assert response.status_code == STOP_POLLING  # paused: nothing to watch until resumed
    html = response.get_data(as_text=True)
    assert _oob_ids(html) == {f"campaign-{campaign.id}-status", f"campaign-{campaign.id}-receipts"}
    assert "hx-trigger" not in _root(html)


@pytest.mark.parametrize(
    ("due_in", "polls"), [(timedelta(minutes=2), True), (timedelta(hours=3), False)]
)
def test_a_scheduled_campaign_polls_only_when_due_soon(client, login_as, campaign, due_in, polls):
    login_as(Role.VIEWER)
    schedule_campaign(campaign.id, datetime.now(UTC) + due_in, campaign.owner_id)
    html = client.get(f"/campaigns/{campaign.id}").get_data(as_text=True)
    assert ('hx-trigger="every 2s"' in _root(html)) is polls
    response = client.get(f"/campaigns/{campaign.id}/progress?shown=scheduled", headers=HX)
    assert response.status_code == (200 if polls else STOP_POLLING)


def test_receipts_are_followed_for_a_limited_time_after_completion(
    client, login_as, app, campaign, fake
):
    login_as(Role.VIEWER)
    _send_everything(app, campaign)
    response = client.get(f"/campaigns/{campaign.id}/receipts", headers=HX)
    html = response.get_data(as_text=True)
    assert response.status_code == 200 and 'hx-trigger="every 15s"' in html
    assert _oob_ids(html) == {f"campaign-{campaign.id}-delivered", f"campaign-{campaign.id}-read"}

    db.session.execute(
        sa.update(Campaign)
        .where(Campaign.id == campaign.id)
        .values(completed_at=sa.func.now() - RECEIPTS_FOLLOW - timedelta(minutes=1))
    )
    db.session.commit()
    response = client.get(f"/campaigns/{campaign.id}/receipts", headers=HX)
    assert response.status_code == STOP_POLLING
    assert "hx-trigger" not in response.get_data(as_text=True)
    page = client.get(f"/campaigns/{campaign.id}").get_data(as_text=True)
    assert "every 15s" not in page


def test_sent_last_minute_is_a_sliding_minute(app, campaign):
    minute = sa.func.date_trunc("minute", sa.func.now())
    db.session.execute(
        sa.text(
            "INSERT INTO campaign_minute_stats (campaign_id, minute, shard, sent) VALUES"
            " (:c, date_trunc('minute', now()), 0, 10),"
            " (:c, date_trunc('minute', now()), 3, 5),"
            " (:c, date_trunc('minute', now()) - interval '1 minute', 1, 60),"
            " (:c, date_trunc('minute', now()) - interval '2 minutes', 0, 1000)"
        ),
        {"c": campaign.id},
    )
    # One transaction: now() is the same for the read and for the expectation.
    seconds_in = db.session.scalar(sa.select(sa.extract("epoch", sa.func.now() - minute)))
    expected = round(15 + 60 * (1 - float(seconds_in) / 60))
    assert counters.sent_last_minute(db.session, [campaign.id, 999_999]) == {
        campaign.id: expected,
        999_999: 0,
    }


def test_the_chart_shows_the_last_hour_per_minute(client, login_as, app, campaign, fake):
    login_as(Role.VIEWER)
    send_campaign_now(campaign.id, campaign.owner_id)
    counters.bump_minute(db.session, campaign.id, sent=3)
    counters.bump_minute(db.session, campaign.id, sent=4)  # another shard, most likely
    counters.bump_minute(db.session, campaign.id, failed=2)
    db.session.execute(
        sa.text(
            "INSERT INTO campaign_minute_stats (campaign_id, minute, shard, sent) VALUES"
            " (:c, date_trunc('minute', now()) - interval '10 minutes', 0, 9),"
            " (:c, date_trunc('minute', now()) - interval '2 hours', 0, 500)"
        ),
        {"c": campaign.id},
    )
    db.session.commit()
    chart = throughput_chart(get_progress(db.session.get(Campaign, campaign.id)))
    assert len(chart.minutes) == 60
    assert [(m.sent, m.failed) for m in chart.minutes][-1] == (7, 2)
    assert chart.minutes[-11].sent == 9 and chart.peak == 9
    assert sum(m.sent for m in chart.minutes) == 16  # two hours ago is off the chart

    html = client.get(f"/campaigns/{campaign.id}/progress?shown=sending", headers=HX).get_data(
        as_text=True
    )
    svg = html[html.index("<svg") : html.index("</svg>")]
    assert svg.count('class="bar-sent"') == 60 and svg.count('class="bar-failed"') == 1
    assert "7 sent, 2 failed" in svg and "peak 9/min" in html


def test_progress_json_matches_the_counters(client, app, campaign, fake):
    _send_everything(app, campaign)
    _token, raw = create_api_token(campaign.owner_id)
    body = client.get(
        f"/api/v1/campaigns/{campaign.id}/progress", headers={"Authorization": f"Bearer {raw}"}
    ).json
    progress = get_progress(db.session.get(Campaign, campaign.id))
    assert body["status"] == "completed" and body["total"] == progress.total == 120
    assert body["sent"] + body["failed"] + body["skipped"] + body["cancelled"] == body["total"]
    assert body["in_flight"] == 0 and body["eta_seconds"] is None
    # The fake provider accepted every send.
    assert body["sent"] == len(fake.calls) and body["failed"] == 0
    assert body["success_rate"] == 1.0
    started = datetime.fromisoformat(body["started_at"])
    completed = datetime.fromisoformat(body["completed_at"])
    assert body["elapsed_seconds"] == (completed - started).total_seconds()
