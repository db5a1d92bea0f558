"""The campaign page's live parts: the polled progress fragment, receipts, the hourly chart."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from app import db
from campaigns import counters, fanout, pump, queues, ratelimit, sending
from campaigns.htmx import STOP_POLLING
from campaigns.models import Campaign, CampaignStatus, Message, Role, Sender, User
from campaigns.progress import RECEIPTS_FOLLOW, Progress, get_progress, throughput_chart
from campaigns.providers.base import ErrorKind, SendError
from campaigns.services.campaigns import (
    cancel_campaign,
    pause_campaign,
    schedule_campaign,
    send_campaign_now,
)
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
    # Delivered, read, and what recipients answered (replies, clicks).
    followed = ("delivered", "read", "replied", "clicked")
    assert _oob_ids(html) == {f"campaign-{campaign.id}-{figure}" for figure in followed}

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


def _send_batches(app, campaign, batches: int | None = None) -> None:
    """Queue at the pace and send ``batches`` batches (all of them when None), as workers would."""
    sent = 0
    while batches is None or sent < batches:
        pump.pump(campaign.id)
        todo = [j["args"] for j in jobs(queues.SEND_TASK) if j["status"] == "todo"]
        if not todo:
            break
        for args in todo[: None if batches is None else batches - sent]:
            sending.send_batch(
                args["campaign_id"], args["message_ids"], app.config, retry_queue=False
            )
            sent += 1
        db.session.execute(
            sa.text("DELETE FROM procrastinate_jobs WHERE task_name = :t"), {"t": queues.SEND_TASK}
        )
        db.session.commit()
    db.session.refresh(campaign)


def _oob_root(html: str, element_id: str) -> str | None:
    match = re.search(rf'<[a-z]+ id="{element_id}"[^>]*hx-swap-oob="true"[^>]*>', html)
    return match.group(0) if match else None


def test_the_poll_brings_the_errors_and_the_recipients_that_moved(
    client, login_as, app, campaign, fake
):
    """While it sends, the Errors section and the recipients' count (or their first page, once
    the audience is loaded) come with the 2 s poll: no reload, and no table reset."""
    login_as(Role.VIEWER)
    send_campaign_now(campaign.id, campaign.owner_id)
    page = client.get(f"/campaigns/{campaign.id}").get_data(as_text=True)
    root = _root(page)
    # The poll says what the page shows: the errors it counted, the table's own fields.
    assert "errors=0" in root and f'hx-include="#campaign-{campaign.id}-recipients"' in root
    table = client.get(f"/campaigns/{campaign.id}/recipients").get_data(as_text=True)
    assert "they are loaded when the campaign starts" in table
    assert '<input type="hidden" name="listed" value="0">' in table

    fanout.load_audience(campaign.id, app.config)
    skipped = get_progress(campaign).skipped  # the fan-out skips the opted-out
    assert skipped > 0
    # The page drawn before the fan-out showed no skips: the Errors section follows.
    html = client.get(
        f"/campaigns/{campaign.id}/progress?shown=sending&errors=0", headers=HX
    ).get_data(as_text=True)
    errors = html[html.index(f'<section id="campaign-{campaign.id}-errors"') :]
    assert _oob_root(html, f"campaign-{campaign.id}-errors")
    assert "No message has failed or been skipped" not in errors and "Skipped" in errors
    poll = f"/campaigns/{campaign.id}/progress?shown=sending&errors={skipped}"
    # The table still lists nothing: its first page comes out of band, with its count.
    html = client.get(f"{poll}&listed=0&status=&q=", headers=HX).get_data(as_text=True)
    assert _oob_root(html, f"campaign-{campaign.id}-recipient-table")
    assert "120 recipients" in html and html.count('<tr id="message-') == 50
    assert _oob_root(html, f"campaign-{campaign.id}-errors") is None  # as shown
    # A table showing rows (or filtered) is left as it is: only its count follows.
    html = client.get(f"{poll}&listed=50&status=pending&q=", headers=HX).get_data(as_text=True)
    assert _oob_root(html, f"campaign-{campaign.id}-recipient-table") is None
    assert _oob_root(html, f"campaign-{campaign.id}-recipient-count")
    assert "118 recipients" in html and '<tr id="message-' not in html  # pending: not skipped
    # A search is not counted (a scan): nothing for the table then.
    html = client.get(f"{poll}&listed=3&status=&q=Ana", headers=HX).get_data(as_text=True)
    assert "recipient-count" not in html and "recipient-table" not in html
    # Before the recipients were drawn, the poll does not add them.
    html = client.get(poll, headers=HX).get_data(as_text=True)
    assert "recipient" not in html.split("</section>")[-1]

    # Three messages fail for good while it sends.
    first = db.session.scalars(
        sa.select(Message.id).where(Message.campaign_id == campaign.id).order_by(Message.id)
    ).all()[:3]
    undeliverable = SendError("Message undeliverable", ErrorKind.PERMANENT, 131026, 400)
    fake.plan = {message_id: [undeliverable] for message_id in first}
    _send_batches(app, campaign, batches=1)
    assert get_progress(campaign).failed == 3
    html = client.get(f"{poll}&listed=50&status=failed&q=", headers=HX).get_data(as_text=True)
    errors = html[html.index(f'<section id="campaign-{campaign.id}-errors"') :]
    assert _oob_root(html, f"campaign-{campaign.id}-errors")
    assert "131026" in errors and "No message has failed" not in errors
    assert "3 recipients" in html  # the count of the table's filter: failed
    root = _root(html)
    # The next poll compares with what the page now shows.
    assert f"errors={skipped + 3}" in root
    again = client.get(
        f"/campaigns/{campaign.id}/progress?shown=sending&errors={skipped + 3}", headers=HX
    ).get_data(as_text=True)
    assert "-errors" not in again  # unchanged: the breakdown is not read again
    # Drawn a moment ago, a moved figure waits for the next refresh (10 s): a failing
    # campaign's poll does not read the breakdown every 2 s.
    assert "errors_at=" in root  # when the section was drawn
    fresh = int(datetime.now(UTC).timestamp())
    soon = client.get(
        f"/campaigns/{campaign.id}/progress?shown=sending&errors=0&errors_at={fresh}", headers=HX
    ).get_data(as_text=True)
    assert "-errors" not in soon and "errors=0" in _root(soon)  # still the figure shown
    later = client.get(
        f"/campaigns/{campaign.id}/progress?shown=sending&errors=0&errors_at={fresh - 11}",
        headers=HX,
    ).get_data(as_text=True)
    assert _oob_root(later, f"campaign-{campaign.id}-errors")


def test_the_eta_comes_from_the_limits_until_a_rate_is_measured():
    started = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
    sender = Sender(id=1, rate_limit_per_minute=1000, min_interval_ms=0)
    owner = User(id=1, campaign_rate_limit_per_minute=100)
    pace = ratelimit.pace(sender, owner)
    assert pace.binding == ratelimit.PACE_OWNER and pace.value == 100

    def progress(seconds: float, sent_last_minute: int, in_flight: int = 300) -> Progress:
        zero = dict.fromkeys(["queued", "sending", "retrying", "delivered", "read"], 0)
        return Progress(
            **zero,
            campaign_id=1,
            status=CampaignStatus.SENDING,
            status_reason_code=None,
            status_reason_params=None,
            total=300,
            pending=in_flight,
            sent=300 - in_flight,
            failed=0,
            skipped=0,
            cancelled=0,
            sent_last_minute=sent_last_minute,
            allowed_per_minute=pace.per_minute,
            pace=pace,
            started_at=started,
            read_at=started + timedelta(seconds=seconds),
        )

    # Two seconds in, two sent: the owner's 100/min (61 s counted), not 300 ÷ 2/min.
    early = progress(2, 2, in_flight=298)
    assert early.eta_from_limits and early.eta_seconds == pytest.approx(298 * 0.61)
    # Later, what was measured, however slow: 3 in 45 s is 4/min, not the limits' 100.
    slow = progress(45, 3)
    assert not slow.eta_from_limits and slow.eta_seconds == pytest.approx(300 / 4 * 60)
    # Nothing went out in the last minute (no worker, WhatsApp holding it): no ETA rather
    # than an optimistic one, and not said to come from the limits.
    stalled = progress(300, 0)
    assert stalled.eta_seconds is None and not stalled.eta_from_limits
    # Measured: 40 in the first 45 s is 53.3/min, slower than the limits allow.
    measured = progress(45, 40, in_flight=260)
    assert not measured.eta_from_limits
    assert measured.eta_seconds == pytest.approx(260 / (40 * 60 / 45) * 60)
    # Faster than the limits allow is not believed: the limits bound it.
    fast = progress(120, 500, in_flight=200)
    assert fast.eta_seconds == pytest.approx(200 * 0.61)
    # As the API says it.
    assert early.as_dict()["eta_from_limits"] is True
    assert early.as_dict()["pace_limited_by"] == "owner"


@pytest.mark.parametrize(
    ("rate", "gap_ms", "owner_rate", "binding", "value"),
    [
        (1000, 0, 100, "owner", 100),
        (20, 1000, 100, "sender_rate", 20),  # 3.05 s a message
        (1000, 2000, 1000, "sender_gap", 2000),
        (100, 0, 100, "owner", 100),  # a tie names the owner's
    ],
)
def test_the_pace_names_the_limit_that_binds(rate, gap_ms, owner_rate, binding, value):
    sender = Sender(id=1, rate_limit_per_minute=rate, min_interval_ms=gap_ms)
    owner = User(id=1, campaign_rate_limit_per_minute=owner_rate)
    pace = ratelimit.pace(sender, owner)
    assert (pace.binding, pace.value) == (binding, value)
    assert ratelimit.pace_seconds(sender, owner) == pace.seconds
    assert pace.seconds == max(61 / rate, gap_ms / 1000, 61 / owner_rate)


def test_the_page_shows_the_eta_from_the_start_and_the_limit_that_binds(
    client, login_as, app, campaign
):
    login_as(Role.VIEWER)
    campaign.owner.campaign_rate_limit_per_minute = 100
    campaign.sender.rate_limit_per_minute = 1000
    campaign.sender.min_interval_ms = 0
    db.session.commit()
    send_campaign_now(campaign.id, campaign.owner_id)
    fanout.load_audience(campaign.id, app.config)
    html = client.get(f"/campaigns/{campaign.id}/progress?shown=sending", headers=HX).get_data(
        as_text=True
    )
    eta = re.search(rf'id="campaign-{campaign.id}-eta">([^<]*)<', html).group(1)
    in_flight = get_progress(campaign).in_flight  # 120 less the skipped
    assert eta == "1 min 12 s" and in_flight == 118  # at the owner's 100/min (61 s counted)
    assert "Pace: limited by the owner's 100/min." in html
    assert "estimated from the limits" in html


def test_a_cancelled_campaign_shows_what_was_sent_and_what_was_cancelled(
    client, login_as, app, campaign, fake
):
    login_as(Role.VIEWER)
    send_campaign_now(campaign.id, campaign.owner_id)
    fanout.load_audience(campaign.id, app.config)
    _send_batches(app, campaign, batches=1)
    cancel_campaign(campaign.id, campaign.owner_id)
    progress = get_progress(db.session.get(Campaign, campaign.id))
    assert 0 < progress.sent < 120 and progress.cancelled > 0
    assert progress.sent + progress.skipped + progress.cancelled == 120
    response = client.get(f"/campaigns/{campaign.id}/progress?shown=sending", headers=HX)
    html = response.get_data(as_text=True)
    assert response.status_code == STOP_POLLING
    assert f"Cancelled: {progress.sent} sent, {progress.cancelled} cancelled" in html
    bar = re.search(rf'<progress id="campaign-{campaign.id}-bar"[^>]*>', html).group(0)
    reached = progress.sent + progress.skipped  # what went its way: not the cancelled
    assert f'value="{reached}"' in bar and 'max="120"' in bar
    percent = re.search(rf'id="campaign-{campaign.id}-percent">([^<]*)<', html).group(1)
    assert percent == f"{100 * reached // 120}\u00a0%" and percent != "100\u00a0%"


@pytest.mark.parametrize(
    ("act", "announced"),
    [("complete", "Campaign completed"), ("pause", "Campaign paused")],
)
def test_a_status_change_is_announced_in_the_live_region_outside_the_poll(
    client, login_as, app, campaign, fake, act, announced
):
    login_as(Role.VIEWER)
    page = client.get(f"/campaigns/{campaign.id}").get_data(as_text=True)
    region = re.search(rf'<div id="campaign-{campaign.id}-announce"[^>]*>', page).group(0)
    assert 'aria-live="polite"' in region and 'role="status"' in region
    # The region is not inside the polled section, which itself is no live region.
    assert page.index(region) < page.index(_root(page)) and "aria-live" not in _root(page)
    if act == "complete":
        _send_everything(app, campaign)
    else:
        send_campaign_now(campaign.id, campaign.owner_id)
        pause_campaign(campaign.id, campaign.owner_id)
    html = client.get(f"/campaigns/{campaign.id}/progress?shown=sending", headers=HX).get_data(
        as_text=True
    )
    words = re.search(
        rf'<div id="campaign-{campaign.id}-announce" hx-swap-oob="innerHTML">([^<]*)</div>', html
    )
    assert words and words.group(1).startswith(announced)
    # Nothing is announced while the status stays as shown.
    same = client.get(
        f"/campaigns/{campaign.id}/progress?shown={campaign.status.value}", headers=HX
    ).get_data(as_text=True)
    assert "-announce" not in same


def test_the_polled_section_carries_a_hidden_stale_note_for_app_js(client, login_as, campaign):
    login_as(Role.VIEWER)
    send_campaign_now(campaign.id, campaign.owner_id)
    page = client.get(f"/campaigns/{campaign.id}").get_data(as_text=True)
    assert "data-stale-note" in _root(page)
    assert '<p class="stale-note" role="status" hidden>Figures may be out of date' in page
    assert '<script src="/static/app.js" defer></script>' in page
    response = client.get("/static/app.js")
    script = response.get_data(as_text=True)
    response.close()
    for event in ("htmx:sendError", "htmx:responseError", "htmx:beforeSwap"):
        assert event in script
