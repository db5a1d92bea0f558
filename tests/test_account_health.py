"""Know the account: quality rating, messaging limit and throughput of each sender, read
from the (mock) Graph API on connect and periodically, updated at once by the
phone_number_quality_update and account_update webhooks, and an admin's override of
the portfolio's messaging limit that holds until Meta reports something new."""

from __future__ import annotations

import html
import logging
from datetime import timedelta
from typing import Any, cast

import pytest
import requests
import sqlalchemy as sa
from flask import Flask
from procrastinate import JobContext

from app import db
from campaigns import account_health
from campaigns.clock import database_now
from campaigns.models import AuditEvent, Notification, Provider, Role, Sender
from campaigns.providers import ProviderError
from campaigns.services.senders import refresh_account
from jobs import tasks
from mocks.provider import MockProvider
from tests.helpers import post_webhook

PHONE_NUMBER_ID = "100000000000901"
APP_SECRET = "account-health-app-secret"


@pytest.fixture
def mock_app(app: Flask, live_server: str) -> Flask:
    """The test app on a socket: the mock WhatsApp answers reads and posts webhooks to it."""
    app.config.update(APP_BASE_URL=live_server, MOCK_WHATSAPP_URL="")
    return app


def _sender(name: str, phone_number_id: str, business_id: str | None = None, **more) -> Sender:
    sender = Sender(
        name=name,
        provider=Provider.MOCK,
        phone_number_id=phone_number_id,
        display_phone_number=f"+55 11 9{phone_number_id[-8:]}",
        waba_id="200000000000901",
        business_id=business_id,
        app_secret=APP_SECRET,
        **more,
    )
    db.session.add(sender)
    db.session.commit()
    return sender


def _fresh(sender_id: int) -> Sender:
    db.session.expire_all()
    sender = db.session.get(Sender, sender_id)
    assert sender is not None
    return sender


def _mock(base: str, phone_number_id: str, kind: str, **body: Any) -> dict[str, Any]:
    """Tell the mock WhatsApp the number changed; it posts Meta's webhook about it."""
    response = requests.post(
        f"{base}/mock/whatsapp/{phone_number_id}/{kind}", json=body, timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()


def _quality_webhook(display: str, **value: Any) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "200000000000901",
                "changes": [
                    {
                        "field": "phone_number_quality_update",
                        "value": {"display_phone_number": display, **value},
                    }
                ],
            }
        ],
    }


# -- parsing Meta's values


@pytest.mark.parametrize(
    ("raw", "limit"),
    [
        ("TIER_250", 250),
        ("TIER_2K", 2000),
        ("tier_10k", 10_000),
        ("TIER_100K", 100_000),
        ("TIER_UNLIMITED", None),
        ("UNLIMITED", None),
    ],
)
def test_meta_tiers_are_read_as_users_a_day(raw, limit):
    tier = account_health.tier(raw)
    assert tier is not None
    assert account_health.tier_limit(tier) == limit


@pytest.mark.parametrize("raw", [None, 5, "TIER_", "TIER_2M", "2000", "TIER_-1", ["TIER_2K"]])
def test_anything_else_is_no_tier(raw):
    assert account_health.tier(raw) is None


def test_the_portfolio_limit_wins_over_the_deprecated_tier():
    report = account_health.from_graph(
        {
            "quality_rating": "YELLOW",
            "whatsapp_business_manager_messaging_limit": "TIER_10K",
            "messaging_limit_tier": "TIER_1K",
            "throughput": {"level": "STANDARD"},
        }
    )
    assert report.quality_rating == "YELLOW"
    assert report.messaging_limit_tier == "TIER_10K"
    assert report.throughput_per_second == 80


def test_a_throughput_upgrade_event_means_1000_a_second():
    report = account_health.from_webhook({"event": "THROUGHPUT_UPGRADE"})
    assert (report.throughput_per_second, report.quality_rating) == (1000, None)


# -- reads from the Graph API (the mock)


def test_connecting_a_sender_queues_a_read_that_fills_in_the_mock_defaults(
    mock_app, client, token_for
):
    headers = token_for(Role.ADMIN)
    answer = client.post(
        "/api/v1/senders",
        json={"name": "Health", "provider": "mock", "phone_number_id": PHONE_NUMBER_ID},
        headers=headers,
    )
    assert answer.status_code == 201
    created = answer.json
    assert created["quality_rating"] is None and created["business_id"] is None
    jobs = db.session.execute(
        sa.text(
            "SELECT args FROM procrastinate_jobs WHERE task_name = 'senders.read_account'"
            " AND status = 'todo'"
        )
    ).scalars()
    assert list(jobs) == [{"sender_id": created["id"]}]
    db.session.rollback()

    assert refresh_account(created["id"]) is True  # what the job does

    read = client.get(f"/api/v1/senders/{created['id']}", headers=headers).json
    assert read["quality_rating"] == "GREEN"
    assert read["messaging_limit"] is None  # unlimited
    assert read["throughput_per_second"] == 1000
    sender = _fresh(created["id"])
    assert sender.messaging_limit_reported == "TIER_UNLIMITED"
    assert sender.account_read_at is not None
    # No display number was given: the read fills it in from Meta's answer.
    assert sender.display_phone_number == "15550000901"


def test_a_change_that_does_not_touch_the_connection_reads_nothing_new(mock_app, client, token_for):
    sender = _sender("Quiet", PHONE_NUMBER_ID)
    headers = token_for(Role.ADMIN)
    answer = client.patch(
        f"/api/v1/senders/{sender.id}", json={"rate_limit_per_minute": 30}, headers=headers
    )
    assert answer.status_code == 200
    waiting = db.session.execute(
        sa.text("SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'senders.read_account'")
    ).scalar()
    assert waiting == 0


def test_the_periodic_read_refreshes_every_sender_and_logs_a_failure_with_the_job_id(
    mock_app, live_server, caplog
):
    first = _sender("First", PHONE_NUMBER_ID)
    second = _sender("Second", "100000000000902")
    broken = _sender("Broken", "100000000000903")
    # The mock's numbers change; the periodic read sees it without any webhook.
    _mock(live_server, "100000000000902", "quality", quality="YELLOW", throughput="STANDARD")
    db.session.execute(sa.update(Sender).values(quality_rating=None, throughput_per_second=None))
    db.session.commit()
    mock_app.config["APP_BASE_URL"] = "http://127.0.0.1:9"  # nobody listens: reads fail

    class Context:
        class job:  # JobContext's shape
            id = 4242

    context = cast(JobContext, Context())

    with caplog.at_level(logging.WARNING, logger="jobs.tasks"):
        tasks.read_accounts(context, 0)
    assert "job 4242: sender" in caplog.text
    assert _fresh(first.id).quality_rating is None  # failed, logged, not raised

    mock_app.config["APP_BASE_URL"] = live_server
    tasks.read_accounts(context, 0)
    assert _fresh(first.id).quality_rating == "GREEN"
    assert (_fresh(second.id).quality_rating, _fresh(second.id).throughput_per_second) == (
        "YELLOW",
        80,
    )
    assert _fresh(broken.id).throughput_per_second == 1000


def test_a_sender_without_a_phone_number_id_is_not_read(mock_app):
    sender = Sender(name="No number", provider=Provider.MOCK)
    db.session.add(sender)
    db.session.commit()
    assert refresh_account(sender.id) is False


def test_a_refusal_is_a_provider_error(mock_app):
    sender = _sender("Refused", "100000000000904")
    mock_app.config["APP_BASE_URL"] = "http://127.0.0.1:9"
    with pytest.raises(ProviderError):
        refresh_account(sender.id)


# -- webhooks, through the real endpoint, posted and signed by the mock


def test_the_mock_quality_webhook_updates_the_sender_and_warns_its_owners(
    mock_app, live_server, user_factory
):
    sender = _sender("Flagged", PHONE_NUMBER_ID, quality_rating="GREEN")
    admin = user_factory(Role.ADMIN)
    answer = _mock(live_server, PHONE_NUMBER_ID, "quality", quality="RED")
    assert answer["posted"] is True and answer["status"] == 200
    assert answer["state"]["quality_rating"] == "RED"
    assert _fresh(sender.id).quality_rating == "RED"
    # No campaign uses it: the admins hear of it.
    notices = db.session.scalars(sa.select(Notification).where(Notification.user_id == admin.id))
    [notice] = list(notices)
    assert notice.code == "account_quality_dropped"
    assert notice.params["quality"] == "RED" and notice.params["before"] == "GREEN"
    assert "Flagged" in notice.text and "RED" in notice.text

    # Back to GREEN: updated, and nobody is told of good news.
    _mock(live_server, PHONE_NUMBER_ID, "quality", quality="GREEN")
    assert _fresh(sender.id).quality_rating == "GREEN"
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Notification)) == 1


def test_the_mock_account_webhook_changes_the_portfolios_limit(mock_app, live_server):
    one = _sender("One", PHONE_NUMBER_ID, business_id="300")
    two = _sender("Two", "100000000000905", business_id="300")
    other = _sender("Other", "100000000000906", business_id="400")
    answer = _mock(live_server, PHONE_NUMBER_ID, "account", messaging_limit="TIER_2K")
    assert answer["posted"] is True
    assert _fresh(one.id).messaging_limit == 2000
    assert _fresh(two.id).messaging_limit == 2000  # the same portfolio
    assert _fresh(other.id).messaging_limit is None
    # The mock's read agrees with its webhook.
    refresh_account(two.id)
    assert _fresh(two.id).messaging_limit == 2000


def test_a_quality_webhook_names_its_number_by_display_digits(client, app):
    sender = _sender("Digits", PHONE_NUMBER_ID)
    body = _quality_webhook(
        "5511900000901", event="DOWNGRADE", max_daily_conversations_per_business="TIER_250"
    )
    response = post_webhook(client, body, APP_SECRET)
    assert response.status_code == 200
    assert (_fresh(sender.id).messaging_limit, _fresh(sender.id).quality_rating) == (250, None)
    flagged = post_webhook(client, _quality_webhook("5511900000901", event="FLAGGED"), APP_SECRET)
    assert flagged.status_code == 200
    assert _fresh(sender.id).quality_rating == "RED"


def test_an_unsigned_or_foreign_account_webhook_changes_nothing(client, app):
    sender = _sender("Guarded", PHONE_NUMBER_ID)
    body = _quality_webhook("5511900000901", quality_rating="RED", current_limit="TIER_250")
    assert post_webhook(client, body, "someone-elses-secret").status_code in (200, 401, 403)
    assert _fresh(sender.id).quality_rating is None
    assert _fresh(sender.id).messaging_limit_reported is None


@pytest.mark.parametrize(
    "value",
    [
        {"display_phone_number": 5511900000901, "event": "FLAGGED"},
        {"display_phone_number": "5511900000901", "current_limit": "TIER_LOTS"},
        {"display_phone_number": "5511900000901", "quality_rating": ["RED"]},
        {"display_phone_number": "", "event": "FLAGGED"},
        {"display_phone_number": "9" * 40, "event": "FLAGGED"},
        {"display_phone_number": "5511900000999", "event": "FLAGGED"},
        {"phone_number": None},
    ],
)
def test_junk_in_an_account_webhook_is_skipped_and_logged(client, app, caplog, value):
    sender = _sender("Junk", PHONE_NUMBER_ID)
    body = _quality_webhook("x")
    body["entry"][0]["changes"][0]["value"] = value
    with caplog.at_level(logging.WARNING, logger="campaigns.webhooks"):
        response = post_webhook(client, body, APP_SECRET)
    assert response.status_code == 200
    assert response.json["skipped"] >= 1
    assert "webhook parts skipped" in caplog.text
    assert _fresh(sender.id).quality_rating is None
    assert _fresh(sender.id).messaging_limit is None


def test_an_account_event_about_something_else_changes_nothing(client, app):
    sender = _sender("Verified", PHONE_NUMBER_ID)
    body = _quality_webhook("x")
    body["entry"][0]["changes"][0] = {
        "field": "account_update",
        "value": {"phone_number": "5511900000901", "event": "VERIFIED_ACCOUNT"},
    }
    response = post_webhook(client, body, APP_SECRET)
    assert response.status_code == 200 and response.json["skipped"] == 0
    assert _fresh(sender.id).account_read_at is None


# -- the admin's override


def test_the_override_applies_to_the_portfolio_and_holds_until_meta_changes_its_report(
    mock_app, live_server, client, token_for
):
    one = _sender("P1", PHONE_NUMBER_ID, business_id="500")
    two = _sender("P2", "100000000000907", business_id="500")
    alone = _sender("Alone", "100000000000908")
    refresh_account(one.id)  # Meta: unlimited
    headers = token_for(Role.ADMIN)

    answer = client.patch(
        f"/api/v1/senders/{one.id}", json={"messaging_limit": 2000}, headers=headers
    )
    assert answer.status_code == 200
    assert answer.json["messaging_limit"] == 2000
    assert _fresh(two.id).messaging_limit == 2000  # the whole portfolio
    assert _fresh(alone.id).messaging_limit is None
    audited = db.session.scalars(
        sa.select(AuditEvent).where(AuditEvent.action == "settings.change")
    ).all()
    assert {(e.target_id, e.details["messaging_limit"]["after"]) for e in audited} == {
        (one.id, 2000),
        (two.id, 2000),
    }

    # Meta says the same again (the periodic read): the override holds.
    refresh_account(one.id)
    refresh_account(two.id)
    assert (_fresh(one.id).messaging_limit, _fresh(two.id).messaging_limit) == (2000, 2000)
    _mock(live_server, PHONE_NUMBER_ID, "quality", quality="GREEN")  # same limit in it
    assert _fresh(one.id).messaging_limit == 2000

    # Meta reports something new: it replaces the override across the portfolio.
    _mock(live_server, PHONE_NUMBER_ID, "account", messaging_limit="TIER_10K")
    assert (_fresh(one.id).messaging_limit, _fresh(two.id).messaging_limit) == (10_000, 10_000)
    assert not _fresh(two.id).messaging_limit_overridden

    # An override to unlimited, on a sender that is its own portfolio.
    answer = client.patch(
        f"/api/v1/senders/{alone.id}", json={"messaging_limit": None}, headers=headers
    )
    assert answer.status_code == 200 and answer.json["messaging_limit"] is None
    assert _fresh(alone.id).messaging_limit_overridden


def test_a_patch_that_sends_back_what_it_read_sets_no_override(
    mock_app, live_server, client, token_for
):
    sender = _sender("Echo", PHONE_NUMBER_ID, business_id="700")
    refresh_account(sender.id)  # Meta: unlimited
    headers = token_for(Role.ADMIN)
    read = client.get(f"/api/v1/senders/{sender.id}", headers=headers).json
    answer = client.patch(f"/api/v1/senders/{sender.id}", json=read, headers=headers)
    assert answer.status_code == 200
    assert _fresh(sender.id).messaging_limit_overridden is False
    assert not db.session.scalars(
        sa.select(AuditEvent).where(AuditEvent.action == "settings.change")
    ).all()


@pytest.mark.parametrize("bad", ["2000", 1.5, -1, True, {"n": 1}, 2**63])
def test_a_bad_override_is_a_422_at_the_field(client, token_for, bad):
    sender = _sender("Bad", PHONE_NUMBER_ID)
    answer = client.patch(
        f"/api/v1/senders/{sender.id}", json={"messaging_limit": bad}, headers=token_for(Role.ADMIN)
    )
    assert answer.status_code == 422
    assert "messaging_limit" in answer.json["error"]["fields"]
    assert _fresh(sender.id).messaging_limit_overridden is False


@pytest.mark.parametrize("role", [Role.VIEWER, Role.SUPERVISOR])
def test_only_an_admin_overrides(client, token_for, role):
    sender = _sender("Guarded limit", PHONE_NUMBER_ID)
    answer = client.patch(
        f"/api/v1/senders/{sender.id}", json={"messaging_limit": 10}, headers=token_for(role)
    )
    assert answer.status_code == 403
    assert _fresh(sender.id).messaging_limit is None


def test_the_api_clears_the_override_and_meta_applies_again(
    mock_app, live_server, client, token_for
):
    one = _sender("C1", PHONE_NUMBER_ID, business_id="510")
    two = _sender("C2", "100000000000917", business_id="510")
    _mock(live_server, PHONE_NUMBER_ID, "account", messaging_limit="TIER_2K")
    refresh_account(one.id)
    headers = token_for(Role.ADMIN)
    url = f"/api/v1/senders/{one.id}"
    answer = client.patch(url, json={"messaging_limit": 300}, headers=headers)
    assert answer.json["messaging_limit"] == 300 and answer.json["messaging_limit_overridden"]

    # Sending back what it read keeps the override (true is "as it is").
    read = client.get(url, headers=headers).json
    assert client.patch(url, json=read, headers=headers).json["messaging_limit"] == 300

    cleared = client.patch(url, json={"messaging_limit_overridden": False}, headers=headers)
    assert cleared.status_code == 200
    assert (cleared.json["messaging_limit"], cleared.json["messaging_limit_overridden"]) == (
        2000,
        False,
    )
    for sender_id in (one.id, two.id):
        fresh = _fresh(sender_id)
        assert (fresh.messaging_limit, fresh.messaging_limit_overridden) == (2000, False)
    audited = db.session.scalars(
        sa.select(AuditEvent)
        .where(AuditEvent.action == "settings.change")
        .order_by(AuditEvent.id.desc())
        .limit(2)
    ).all()
    assert {e.target_id for e in audited} == {one.id, two.id}
    for event in audited:
        assert event.details["messaging_limit"] == {"before": 300, "after": 2000}
        assert event.details["messaging_limit_overridden"] == {"before": True, "after": False}
        assert event.actor_email

    # Nothing to clear: 200, the same sender, no audit row.
    count = db.session.scalar(sa.select(sa.func.count()).select_from(AuditEvent))
    again = client.patch(url, json={"messaging_limit_overridden": False}, headers=headers)
    assert again.status_code == 200 and again.json["messaging_limit"] == 2000
    assert db.session.scalar(sa.select(sa.func.count()).select_from(AuditEvent)) == count


@pytest.mark.parametrize(
    "bad",
    [
        {"messaging_limit_overridden": "false"},
        {"messaging_limit_overridden": 0},
        {"messaging_limit_overridden": None},
        {"messaging_limit_overridden": True},  # no override to keep, none set
        {"messaging_limit_overridden": False, "messaging_limit": 500},  # both
    ],
)
def test_a_bad_clear_is_a_422_at_the_field(mock_app, client, token_for, bad):
    sender = _sender("Bad clear", PHONE_NUMBER_ID, business_id="520")
    refresh_account(sender.id)  # Meta: unlimited
    answer = client.patch(f"/api/v1/senders/{sender.id}", json=bad, headers=token_for(Role.ADMIN))
    assert answer.status_code == 422
    assert "messaging_limit_overridden" in answer.json["error"]["fields"]
    fresh = _fresh(sender.id)
    assert (fresh.messaging_limit, fresh.messaging_limit_overridden) == (None, False)


def test_only_an_admin_clears_the_override(client, token_for):
    sender = _sender("Guarded clear", PHONE_NUMBER_ID)
    account_health.override_messaging_limit(db.session, sender, 10)
    db.session.commit()
    answer = client.patch(
        f"/api/v1/senders/{sender.id}",
        json={"messaging_limit_overridden": False},
        headers=token_for(Role.SUPERVISOR),
    )
    assert answer.status_code == 403
    assert _fresh(sender.id).messaging_limit_overridden


def test_business_id_is_a_sender_setting(client, token_for):
    headers = token_for(Role.ADMIN)
    answer = client.post(
        "/api/v1/senders",
        json={"name": "Biz", "provider": "mock", "business_id": "123456"},
        headers=headers,
    )
    assert answer.status_code == 201 and answer.json["business_id"] == "123456"
    bad = client.post(
        "/api/v1/senders",
        json={"name": "Biz2", "provider": "mock", "business_id": "12a"},
        headers=headers,
    )
    assert bad.status_code == 422 and "business_id" in bad.json["error"]["fields"]


def test_a_sender_moved_to_another_portfolio_leaves_its_override_behind(client, token_for):
    at = database_now(db.session).replace(microsecond=0) - timedelta(hours=1)
    overridden = {
        "messaging_limit": 300,
        "messaging_limit_reported": "TIER_2K",
        "messaging_limit_at": at,
        "messaging_limit_overridden": True,
    }
    one = _sender("Mover", PHONE_NUMBER_ID, business_id="910", **overridden)
    stays = _sender("Stays", "100000000000931", business_id="910", **overridden)
    there = _sender(
        "There",
        "100000000000932",
        business_id="920",
        messaging_limit=10_000,
        messaging_limit_reported="TIER_10K",
        messaging_limit_at=at,
    )
    headers = token_for(Role.ADMIN)

    moved = client.patch(f"/api/v1/senders/{one.id}", json={"business_id": "920"}, headers=headers)
    assert moved.status_code == 200 and moved.json["messaging_limit"] == 10_000
    fresh = _fresh(one.id)
    assert (
        fresh.messaging_limit_overridden,
        fresh.messaging_limit_reported,
        fresh.messaging_limit_at,
    ) == (False, "TIER_10K", at)
    [update] = db.session.scalars(
        sa.select(AuditEvent).where(
            AuditEvent.action == "sender.update", AuditEvent.target_id == one.id
        )
    ).all()
    assert update.details == {
        "business_id": {"before": "910", "after": "920"},
        "messaging_limit": {"before": 300, "after": 10_000},
        "messaging_limit_overridden": {"before": True, "after": False},
    }
    # Meta reports the new portfolio's limit again, unchanged: no override there to keep.
    report = account_health.AccountReport(messaging_limit_tier="TIER_10K")
    account_health.apply_report(db.session, _fresh(there.id), report)
    db.session.commit()
    for sender_id in (one.id, there.id):
        fresh = _fresh(sender_id)
        assert (fresh.messaging_limit, fresh.messaging_limit_overridden) == (10_000, False)
    # The old portfolio keeps its own.
    fresh = _fresh(stays.id)
    assert (fresh.messaging_limit, fresh.messaging_limit_overridden) == (300, True)

    # Alone in its portfolio: nothing known of it until Meta is read.
    client.patch(f"/api/v1/senders/{one.id}", json={"business_id": "930"}, headers=headers)
    fresh = _fresh(one.id)
    assert (
        fresh.messaging_limit,
        fresh.messaging_limit_overridden,
        fresh.messaging_limit_reported,
        fresh.messaging_limit_at,
    ) == (None, False, None, None)
    # Back into a portfolio with an admin's override: it holds for the newcomer too.
    client.patch(f"/api/v1/senders/{one.id}", json={"business_id": "910"}, headers=headers)
    fresh = _fresh(one.id)
    assert (fresh.messaging_limit, fresh.messaging_limit_overridden) == (300, True)
    # Another change leaves the limit alone.
    client.patch(f"/api/v1/senders/{one.id}", json={"name": "Mover again"}, headers=headers)
    fresh = _fresh(one.id)
    assert (fresh.messaging_limit, fresh.messaging_limit_overridden) == (300, True)


# -- display


def test_the_sender_pages_show_the_account(client, login_as):
    sender = _sender(
        "Shown",
        PHONE_NUMBER_ID,
        business_id="777",
        quality_rating="YELLOW",
        messaging_limit=2000,
        messaging_limit_reported="TIER_2K",
        throughput_per_second=80,
    )
    login_as(Role.ADMIN)
    page = client.get(f"/senders/{sender.id}").get_data(as_text=True)
    assert 'badge-quality-yellow">Yellow' in page
    assert "2,000 a day" in page and "80 messages a second" in page and "777" in page
    listing = client.get("/senders/").get_data(as_text=True)
    assert "badge-quality-yellow" in listing and "2,000 a day" in listing


# -- the portfolio's previous report, event times, the capability webhook (issue 17)


def _ago(seconds: int) -> int:
    """A webhook's entry time, ``seconds`` before the database's now."""
    return int(database_now(db.session).timestamp()) - seconds


def _timed(body: dict[str, Any], at: int) -> dict[str, Any]:
    body["entry"][0]["time"] = at
    return body


def _capability(value: dict[str, Any], at: int | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": "200000000000901",
        "changes": [{"field": "business_capability_update", "value": value}],
    }
    if at is not None:
        entry["time"] = at
    return {"object": "whatsapp_business_account", "entry": [entry]}


def test_a_member_never_read_keeps_the_portfolios_override_on_its_first_read(
    mock_app, client, token_for
):
    read = _sender("Read", PHONE_NUMBER_ID, business_id="800")
    refresh_account(read.id)  # Meta: unlimited, for the portfolio
    new = _sender("Never read", "100000000000911", business_id="800")
    answer = client.patch(
        f"/api/v1/senders/{read.id}", json={"messaging_limit": 1500}, headers=token_for(Role.ADMIN)
    )
    assert answer.status_code == 200
    assert _fresh(new.id).messaging_limit == 1500 and _fresh(new.id).messaging_limit_overridden

    refresh_account(new.id)  # its first read: Meta still says unlimited
    for sender_id in (read.id, new.id):
        fresh = _fresh(sender_id)
        assert (fresh.messaging_limit, fresh.messaging_limit_overridden) == (1500, True)
        assert fresh.messaging_limit_reported == "TIER_UNLIMITED"


def test_an_override_before_any_report_holds_over_the_first_one(mock_app, client, token_for):
    sender = _sender("Early", PHONE_NUMBER_ID, business_id="810")
    answer = client.patch(
        f"/api/v1/senders/{sender.id}", json={"messaging_limit": 900}, headers=token_for(Role.ADMIN)
    )
    assert answer.status_code == 200
    refresh_account(sender.id)  # nothing to compare with: no change from Meta
    assert (_fresh(sender.id).messaging_limit, _fresh(sender.id).messaging_limit_overridden) == (
        900,
        True,
    )


def test_a_late_quality_or_account_webhook_does_not_undo_a_newer_one(client, app):
    one = _sender("Late", PHONE_NUMBER_ID, business_id="820")
    two = _sender("Late too", "100000000000912", business_id="820")
    flagged = _quality_webhook(
        "5511900000901", event="FLAGGED", max_daily_conversations_per_business="TIER_10K"
    )
    assert post_webhook(client, _timed(flagged, _ago(60)), APP_SECRET).json["applied"] == 1
    # Sent two minutes ago, delivered now: older than what was applied.
    unflagged = _quality_webhook(
        "5511900000901", event="UNFLAGGED", max_daily_conversations_per_business="TIER_250"
    )
    late = post_webhook(client, _timed(unflagged, _ago(120)), APP_SECRET)
    assert (late.json["applied"], late.json["stale"]) == (0, 1)
    assert (_fresh(one.id).quality_rating, _fresh(one.id).messaging_limit) == ("RED", 10_000)
    # The portfolio's limit is as new as the portfolio's last report, whichever number.
    account = _quality_webhook("x")
    account["entry"][0]["changes"][0] = {
        "field": "account_update",
        "value": {
            "phone_number": "5511900000912",
            "max_daily_conversations_per_business": "TIER_2K",
        },
    }
    assert post_webhook(client, _timed(account, _ago(90)), APP_SECRET).json["stale"] == 1
    assert _fresh(two.id).messaging_limit == 10_000
    # A newer one applies, and a replay of it changes nothing more.
    newer = _timed(_quality_webhook("5511900000901", event="UNFLAGGED"), _ago(10))
    assert post_webhook(client, newer, APP_SECRET).json["applied"] == 1
    assert _fresh(one.id).quality_rating == "GREEN"
    # Replayed: its quality is older than the one applied since (its limit, as old as
    # the limit applied, says the same again).
    assert post_webhook(client, flagged, APP_SECRET).status_code == 200
    assert (_fresh(one.id).quality_rating, _fresh(one.id).messaging_limit) == ("GREEN", 10_000)


def test_a_graph_read_is_a_now_read_a_webhook_older_than_it_is_ignored(mock_app, client):
    sender = _sender("Read now", PHONE_NUMBER_ID)
    refresh_account(sender.id)  # GREEN, unlimited, at the database's now
    read_at = _fresh(sender.id).quality_rating_at
    assert read_at is not None and read_at.microsecond == 0
    older = _quality_webhook("5511900000901", event="FLAGGED", current_limit="TIER_250")
    assert post_webhook(client, _timed(older, _ago(30)), APP_SECRET).json["stale"] == 1
    assert (_fresh(sender.id).quality_rating, _fresh(sender.id).messaging_limit) == ("GREEN", None)
    # One stamped ahead of our clock is taken as now: it cannot hold the reads off.
    ahead = _quality_webhook("5511900000901", event="FLAGGED")
    assert post_webhook(client, _timed(ahead, _ago(-3600)), APP_SECRET).json["applied"] == 1
    assert _fresh(sender.id).quality_rating_at <= database_now(db.session)
    db.session.rollback()


def test_an_account_webhook_whose_time_is_not_one_is_skipped(client, app):
    sender = _sender("Bad time", PHONE_NUMBER_ID)
    body = _timed(_quality_webhook("5511900000901", event="FLAGGED"), "soon")  # type: ignore[arg-type]
    answer = post_webhook(client, body, APP_SECRET)
    assert answer.status_code == 200 and answer.json["skipped"] == 1
    assert _fresh(sender.id).quality_rating is None


def test_an_account_read_holds_no_transaction_during_the_call(mock_app, monkeypatch):
    sender = _sender("No snapshot", PHONE_NUMBER_ID)
    real = MockProvider.account_status
    seen: list[bool] = []

    def watched(self):
        seen.append(db.session().in_transaction())
        return real(self)

    monkeypatch.setattr(MockProvider, "account_status", watched)
    assert refresh_account(sender.id) is True
    assert seen == [False]
    assert _fresh(sender.id).quality_rating == "GREEN"


@pytest.mark.parametrize("change", ["delete", "reconnect"])
def test_an_account_read_of_a_sender_changed_during_the_call_applies_nothing(
    mock_app, monkeypatch, change
):
    sender = _sender("Moving", PHONE_NUMBER_ID)
    real = MockProvider.account_status

    def changed_meanwhile(self):
        report = real(self)
        with mock_app.app_context():  # another request, its own session
            if change == "delete":
                db.session.execute(sa.delete(Sender).where(Sender.id == sender.id))
            else:
                db.session.execute(
                    sa.update(Sender)
                    .where(Sender.id == sender.id)
                    .values(phone_number_id="100000000000999")
                )
            db.session.commit()
        return report

    monkeypatch.setattr(MockProvider, "account_status", changed_meanwhile)
    assert refresh_account(sender.id) is False
    db.session.expire_all()
    left = db.session.get(Sender, sender.id)
    assert left is None if change == "delete" else left.quality_rating is None


@pytest.mark.parametrize(
    ("value", "limit"),
    [
        ({"max_daily_conversations_per_business": "TIER_10K"}, 10_000),
        ({"max_daily_conversations_per_business": 2000}, 2000),
        (
            {"max_daily_conversation_per_phone": 100000, "max_phone_numbers_per_business": 2},
            100_000,
        ),
        ({"max_daily_conversation_per_phone": "250"}, 250),
        ({"max_daily_conversation_per_phone": -1}, None),
        (
            {
                "max_daily_conversations_per_business": "TIER_2K",
                "max_daily_conversation_per_phone": 1,
            },
            2000,
        ),
    ],
)
def test_the_capability_webhook_sets_the_portfolios_limit(client, app, value, limit):
    one = _sender("Cap", PHONE_NUMBER_ID, business_id="830", messaging_limit=5)
    two = Sender(name="Cap other WABA", provider=Provider.MOCK, business_id="830", app_secret="x")
    db.session.add(two)
    db.session.commit()
    answer = post_webhook(client, _capability(value, _ago(5)), APP_SECRET)
    assert answer.status_code == 200 and answer.json["applied"] == 1
    assert _fresh(one.id).messaging_limit == limit
    assert _fresh(two.id).messaging_limit == limit  # the same portfolio, another WABA


def test_the_capability_webhook_ends_an_override_only_when_the_limit_changes(
    mock_app, live_server, client, token_for
):
    one = _sender("Cap one", PHONE_NUMBER_ID, business_id="840")
    two = _sender("Cap two", "100000000000913", business_id="840")
    refresh_account(one.id)  # unlimited
    headers = token_for(Role.ADMIN)
    client.patch(f"/api/v1/senders/{one.id}", json={"messaging_limit": 300}, headers=headers)
    same = _mock(live_server, PHONE_NUMBER_ID, "capability", messaging_limit="TIER_UNLIMITED")
    assert same["posted"] is True
    assert (_fresh(one.id).messaging_limit, _fresh(two.id).messaging_limit) == (300, 300)
    answer = _mock(
        live_server, "100000000000913", "capability", messaging_limit="TIER_2K", legacy=True
    )
    assert answer["posted"] is True
    for sender_id in (one.id, two.id):
        fresh = _fresh(sender_id)
        assert (fresh.messaging_limit, fresh.messaging_limit_overridden) == (2000, False)
    # The mock's read agrees with its webhook.
    refresh_account(one.id)
    assert _fresh(one.id).messaging_limit == 2000


def test_junk_or_foreign_capability_webhooks_change_nothing(client, app, caplog):
    sender = _sender("Cap junk", PHONE_NUMBER_ID, messaging_limit=7)
    for body, secret in (
        (_capability({"max_daily_conversations_per_business": "LOTS"}), APP_SECRET),
        (_capability({"max_daily_conversation_per_phone": [1]}), APP_SECRET),
        (_capability({"max_daily_conversations_per_business": "TIER_2K"}), "not-its-secret"),
    ):
        body_unknown = post_webhook(client, body, secret)
        assert body_unknown.status_code in (200, 401)
    unknown = _capability({"max_daily_conversations_per_business": "TIER_2K"})
    unknown["entry"][0]["id"] = "999"
    with caplog.at_level(logging.WARNING, logger="campaigns.webhooks"):
        assert post_webhook(client, unknown, APP_SECRET).json["skipped"] == 1
    assert "WABA id 999, which no sender has" in caplog.text
    assert _fresh(sender.id).messaging_limit == 7


@pytest.mark.parametrize(
    "junk", ["--5", "-", "²", "٣٠٠٠", "9" * 5000, "-" + "9" * 5000, "1e3", " ", "TIER_٣K", 1.5]
)
def test_a_limit_that_is_no_number_meta_gives_is_no_limit(junk):
    """Strict: str.isdigit() takes "²" and "٣", and int() refuses 5,000 digits."""
    assert account_health.limit(junk) is None


@pytest.mark.parametrize("junk", ["--5", "²", "9" * 5000])
def test_a_capability_webhook_with_a_malformed_limit_is_acknowledged_and_skipped(
    client, app, caplog, junk
):
    sender = _sender("Cap malformed", PHONE_NUMBER_ID, business_id="850", messaging_limit=7)
    body = _capability({"max_daily_conversations_per_business": junk}, _ago(5))
    with caplog.at_level(logging.WARNING, logger="campaigns.webhooks"):
        answer = post_webhook(client, body, APP_SECRET)
    assert answer.status_code == 200 and answer.json["skipped"] == 1
    assert "value.max_daily_conversations_per_business is not a value Meta gives" in caplog.text
    assert _fresh(sender.id).messaging_limit == 7
    # The older name still gives the limit when the newer one is junk.
    body = _capability(
        {"max_daily_conversations_per_business": junk, "max_daily_conversation_per_phone": "250"},
        _ago(4),
    )
    assert post_webhook(client, body, APP_SECRET).json["applied"] == 1
    assert _fresh(sender.id).messaging_limit == 250


# -- the override on the sender page

HTMX = {"HX-Request": "true"}


def test_an_admin_overrides_and_clears_the_limit_on_the_sender_page(mock_app, client, login_as):
    one = _sender("Page one", PHONE_NUMBER_ID, business_id="900")
    two = _sender("Page two", "100000000000921", business_id="900")
    refresh_account(one.id)  # Meta: unlimited
    login_as(Role.ADMIN)
    page = html.unescape(client.get(f"/senders/{one.id}").get_data(as_text=True))
    assert 'id="sender-limit-form"' in page and "Use Meta's limit again" not in page

    url = f"/senders/{one.id}/messaging-limit"
    answer = client.post(url, data={"messaging_limit": "2.500"}, headers=HTMX)
    assert answer.status_code == 200
    panel = html.unescape(answer.get_data(as_text=True))
    assert 'id="sender-account"' in panel
    assert "2,500 a day" in panel and "set by an admin" in panel
    assert "Use Meta's limit again" in panel
    assert (_fresh(two.id).messaging_limit, _fresh(two.id).messaging_limit_overridden) == (
        2500,
        True,
    )
    audited = db.session.scalars(
        sa.select(AuditEvent).where(AuditEvent.action == "settings.change")
    ).all()
    assert {(e.target_id, e.details["messaging_limit"]["after"]) for e in audited} == {
        (one.id, 2500),
        (two.id, 2500),
    }
    assert all(e.actor_email for e in audited)

    unlimited = client.post(url, data={"messaging_limit": "", "unlimited": "1"}, headers=HTMX)
    assert unlimited.status_code == 200 and "Unlimited" in unlimited.get_data(as_text=True)
    assert _fresh(one.id).messaging_limit is None and _fresh(one.id).messaging_limit_overridden

    cleared = client.post(url, data={"action": "clear"}, headers=HTMX)
    assert cleared.status_code == 200
    assert "The messaging limit is Meta's again." in html.unescape(cleared.get_data(as_text=True))
    for sender_id in (one.id, two.id):
        fresh = _fresh(sender_id)
        assert (fresh.messaging_limit, fresh.messaging_limit_overridden) == (None, False)
    db.session.expire_all()
    last = db.session.scalars(
        sa.select(AuditEvent)
        .where(AuditEvent.action == "settings.change", AuditEvent.target_id == two.id)
        .order_by(AuditEvent.id.desc())
        .limit(1)
    ).one()
    assert last.details["messaging_limit_overridden"] == {"before": True, "after": False}

    # A plain form (no htmx): back to the page, with a flash.
    plain = client.post(url, data={"messaging_limit": "300"})
    assert plain.status_code == 303 and plain.headers["Location"].endswith(f"/senders/{one.id}")
    assert _fresh(one.id).messaging_limit == 300


@pytest.mark.parametrize(
    "bad", ["", "abc", "-5", "1,5", "2.50", "9" * 20, "9" * 5000, "1" + ",000" * 1500, "٣٠٠"]
)
def test_a_bad_limit_on_the_sender_page_is_an_error_at_its_field(client, login_as, bad):
    sender = _sender("Page bad", PHONE_NUMBER_ID)
    login_as(Role.ADMIN)
    url = f"/senders/{sender.id}/messaging-limit"
    answer = client.post(url, data={"messaging_limit": bad}, headers=HTMX)
    assert answer.status_code == 422
    panel = answer.get_data(as_text=True)
    assert 'id="messaging_limit-error"' in panel and 'aria-invalid="true"' in panel
    assert "whole number from 0" in panel
    plain = client.post(url, data={"messaging_limit": bad})
    assert plain.status_code == 422 and "whole number from 0" in plain.get_data(as_text=True)
    assert _fresh(sender.id).messaging_limit_overridden is False


@pytest.mark.parametrize("role", [Role.VIEWER, Role.SUPERVISOR])
def test_only_an_admin_overrides_on_the_page(client, login_as, role):
    sender = _sender("Page guarded", PHONE_NUMBER_ID)
    login_as(role)
    answer = client.post(f"/senders/{sender.id}/messaging-limit", data={"messaging_limit": "5"})
    assert answer.status_code in (302, 403)
    assert _fresh(sender.id).messaging_limit_overridden is False


def test_the_override_form_speaks_portuguese(client, login_as):
    sender = _sender("Página", PHONE_NUMBER_ID)
    user = login_as(Role.ADMIN)
    user.locale = "pt_BR"
    db.session.commit()
    page = client.get(f"/senders/{sender.id}", headers={"Accept-Language": "pt-BR"})
    text = page.get_data(as_text=True)
    assert "Definir o limite" in text
    bad = client.post(
        f"/senders/{sender.id}/messaging-limit", data={"messaging_limit": "x"}, headers=HTMX
    )
    assert "número inteiro" in bad.get_data(as_text=True)


def test_an_override_of_5000_digits_is_a_422_at_the_field(client, token_for):
    sender = _sender("Huge", PHONE_NUMBER_ID)
    answer = client.patch(
        f"/api/v1/senders/{sender.id}",
        data='{"messaging_limit": ' + "9" * 5000 + "}",
        content_type="application/json",
        headers=token_for(Role.ADMIN),
    )
    assert answer.status_code == 422, answer.get_data()[:300]
    assert "messaging_limit" in answer.json["error"]["fields"]
    assert _fresh(sender.id).messaging_limit_overridden is False
