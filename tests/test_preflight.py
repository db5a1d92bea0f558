"""The pre-flight check, and the confirmation Schedule and Send now ask for."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from app import db
from campaigns import preflight
from campaigns.models import Campaign, CampaignStatus, MessageTemplate, TemplateStatus
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
