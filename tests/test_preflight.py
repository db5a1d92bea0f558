"""The pre-flight check, and the confirmation Schedule and Send now ask for."""

from __future__ import annotations

from decimal import Decimal

import pytest
import sqlalchemy as sa

from app import db
from campaigns import fanout, preflight
from campaigns.models import (
    Campaign,
    CampaignStatus,
    Message,
    MessageStatus,
    MessageTemplate,
    Role,
    TemplateStatus,
)
from campaigns.services import Blocked, ConfirmationRequired
from campaigns.services.campaigns import schedule_campaign, send_campaign_now
from campaigns.services.templates import default_sender
from tests.helpers import demo_campaign, lift_limits


@pytest.fixture
def draft(app, owner, live_server, monkeypatch) -> Campaign:
    """A draft for 30 SP customers; the demo sender in portfolio 77, Meta's limit 20."""
    monkeypatch.setitem(app.config, "APP_BASE_URL", live_server)
    lift_limits(owner)
    sender = default_sender()
    sender.business_id, sender.messaging_limit = "77", 20
    db.session.commit()
    return demo_campaign(owner.id, size=30, name="Preflight")


def _check(app, campaign_id: int) -> preflight.Preflight:
    return preflight.check(db.session.get(Campaign, campaign_id), app.config)


def test_a_campaign_larger_than_the_budget_needs_confirmation(app, draft):
    result = _check(app, draft.id)
    assert (result.audience, result.audience_exact) == (30, False)
    assert (result.budget_limit, result.budget_remaining) == (18, 18)
    assert result.waves.days == 2 and (result.waves.today, result.waves.rest) == (18, 12)
    assert [w.code for w in result.to_confirm] == ["budget_overrun"]
    assert not result.ok and not result.blocking
    assert result.duration_seconds > 86_000  # the rest waits a day for the budget
    body = result.as_dict()
    assert body["budget"] == {"limit": 18, "remaining": 18, "days": 2}
    assert "12" in body["warnings"][0]["message"]
    with pytest.raises(ConfirmationRequired):
        send_campaign_now(draft.id, draft.owner_id)
    assert db.session.get(Campaign, draft.id).status is CampaignStatus.DRAFT
    send_campaign_now(draft.id, draft.owner_id, confirm=True)
    assert db.session.get(Campaign, draft.id).status is CampaignStatus.SENDING


def test_red_quality_needs_confirmation_and_an_unapproved_template_blocks(app, draft):
    sender = default_sender()
    sender.messaging_limit = None
    sender.quality_rating = "RED"
    template = db.session.get(MessageTemplate, draft.template_id)
    template.quality_rating = "RED"
    db.session.commit()
    result = _check(app, draft.id)
    assert [w.code for w in result.to_confirm] == ["number_quality_red", "template_quality_red"]
    assert result.waves.days == 1 and result.budget_limit is None
    template.status = TemplateStatus.PAUSED
    db.session.commit()
    result = _check(app, draft.id)
    assert [b.code for b in result.blocking] == ["template_not_approved"]
    assert result.as_dict()["ok"] is False


def test_a_budget_of_none_blocks_whatever_is_confirmed(app, draft):
    sender = default_sender()
    sender.messaging_limit = 1  # 10 % margin: no recipient at all
    db.session.commit()
    with pytest.raises(Blocked) as refused:
        send_campaign_now(draft.id, draft.owner_id, confirm=True)
    assert refused.value.code == "no_budget"
    when = db.session.scalar(sa.select(sa.func.now() + sa.text("interval '1 day'")))
    with pytest.raises(Blocked):
        schedule_campaign(draft.id, when, draft.owner_id, confirm=True)


def test_the_cost_is_metas_rate_for_the_category_and_country(app, draft):
    result = _check(app, draft.id)
    # promo_weekend is MARKETING; the seeded Brazil rate is USD 0.0625 a message.
    assert result.cost.currency == "USD"
    assert result.cost.amount == Decimal("1.88")  # 30 x 0.0625 = 1.875, half up
    assert result.as_dict()["estimated_cost"] == {"currency": "USD", "amount": 1.88}


def test_once_loaded_the_audience_is_exact_and_counted_by_country(app, draft):
    send_campaign_now(draft.id, draft.owner_id, confirm=True)
    fanout.load_audience(draft.id, app.config)
    result = _check(app, draft.id)
    waiting = db.session.scalar(
        sa.select(sa.func.count())
        .select_from(Message)
        .where(Message.campaign_id == draft.id, Message.status == MessageStatus.PENDING)
    )
    assert (result.audience, result.audience_exact) == (waiting, True)
    assert result.cost.amount == (Decimal("0.0625") * waiting).quantize(Decimal("0.01"))
    assert "audience_estimated" not in [w.code for w in result.warnings]


def _api(client, method: str, path: str, headers, **kwargs):
    return getattr(client, method)(f"/api/v1/campaigns/{path}", headers=headers, **kwargs)


def test_the_api_gives_the_check_and_asks_for_confirmation(app, client, draft, token_for):
    viewer, supervisor = token_for(Role.VIEWER), token_for(Role.SUPERVISOR)
    answer = _api(client, "get", f"{draft.id}/preflight", viewer)
    assert answer.status_code == 200
    body = answer.get_json()
    assert body["ok"] is False and body["audience"] == 30 and body["blocking"] == []
    assert body["budget"] == {"limit": 18, "remaining": 18, "days": 2}
    assert body["estimated_duration_seconds"] > 86_000
    codes = [w["code"] for w in body["warnings"]]
    assert codes[0] == "budget_overrun" and "audience_estimated" in codes
    # No body, an empty one, one not JSON, or confirm other than true: 409, nothing sent.
    for kwargs in (
        {},
        {"data": b"", "content_type": "application/json"},
        {"data": b"confirm=1", "content_type": "text/plain"},
        {"json": {"confirm": "yes"}},
    ):
        refused = _api(client, "post", f"{draft.id}/send-now", supervisor, **kwargs)
        assert refused.status_code == 409, kwargs
        error = refused.get_json()["error"]
        assert error["code"] == "confirmation_required"
        assert [w["code"] for w in error["warnings"]] == ["budget_overrun"]
    assert db.session.get(Campaign, draft.id, populate_existing=True).status.value == "draft"
    # A past time is refused by validation first, confirmed or not.
    past = _api(
        client,
        "post",
        f"{draft.id}/schedule",
        supervisor,
        json={"scheduled_at": "2020-01-01T09:00:00-03:00", "confirm": True},
    )
    assert past.status_code == 422
    future = {"scheduled_at": "2030-01-31T09:00:00-03:00"}
    unconfirmed = _api(client, "post", f"{draft.id}/schedule", supervisor, json=future)
    assert unconfirmed.status_code == 409
    assert unconfirmed.get_json()["error"]["code"] == "confirmation_required"
    confirmed = {**future, "confirm": True}
    scheduled = _api(client, "post", f"{draft.id}/schedule", supervisor, json=confirmed)
    assert scheduled.status_code == 202 and scheduled.get_json()["status"] == "scheduled"
    started = _api(client, "post", f"{draft.id}/send-now", supervisor, json={"confirm": True})
    assert started.status_code == 202 and started.get_json()["status"] == "sending"


def test_the_api_refuses_a_blocking_problem_with_its_own_code(app, client, draft, token_for):
    sender = default_sender()
    sender.messaging_limit = 1
    db.session.commit()
    supervisor = token_for(Role.SUPERVISOR)
    refused = _api(client, "post", f"{draft.id}/send-now", supervisor, json={"confirm": True})
    assert refused.status_code == 409
    error = refused.get_json()["error"]
    assert error["code"] == "no_budget" and [b["code"] for b in error["blocking"]] == ["no_budget"]
    check = _api(client, "get", f"{draft.id}/preflight", supervisor).get_json()
    assert check["ok"] is False and check["budget"]["days"] == 0
    assert _api(client, "get", "999999/preflight", supervisor).status_code == 404
