"""Template webhooks through the real endpoint, signed as Meta signs them: a template's
status, quality and category change at once, and its campaigns stop with the reason."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from app import db
from campaigns import fanout, pump, queues, reasons
from campaigns.clock import database_now
from campaigns.models import (
    Campaign,
    CampaignActivity,
    CampaignStatus,
    Message,
    MessageStatus,
    MessageTemplate,
    Notification,
    Provider,
    Role,
    Sender,
    TemplateCategory,
    TemplateStatus,
)
from campaigns.services import template_import
from campaigns.services import templates as template_services
from campaigns.services.campaigns import (
    pause_campaign,
    resume_campaign,
    schedule_campaign,
    send_campaign_now,
)
from campaigns.services.templates import default_sender, submit_template, sync_template_status
from tests.helpers import demo_campaign, jobs, post_webhook

WABA_ID = "200000000000001"  # the demo sender's (services/demo.py)
OTHER_SECRET = "the-other-senders-app-secret"


def template_body(field: str, value: dict, waba_id: str = WABA_ID) -> dict:
    """A template webhook as Meta posts it: on the WABA object, no phone number metadata."""
    change = {"field": field, "value": value}
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": waba_id, "time": 1_800_000_000, "changes": [change]}],
    }


def about(template: MessageTemplate, **value) -> dict:
    return {
        "message_template_id": template.provider_template_id,
        "message_template_name": template.name,
        "message_template_language": template.language,
        **value,
    }


def status_body(template: MessageTemplate, event: str, reason: str = "NONE") -> dict:
    return template_body(
        "message_template_status_update", about(template, event=event, reason=reason)
    )


@pytest.fixture
def template(campaign) -> MessageTemplate:
    """The demo campaign's template (approved, ``mock-promo_weekend``)."""
    found = db.session.get(MessageTemplate, campaign.template_id)
    assert found is not None and found.status is TemplateStatus.APPROVED
    return found


@pytest.fixture
def sending(app, campaign) -> Campaign:
    """The demo campaign sending, its first messages queued."""
    send_campaign_now(campaign.id, campaign.owner_id)
    fanout.load_audience(campaign.id, app.config)
    pump.pump(campaign.id)
    assert _queued(campaign.id) > 0
    return campaign


def _queued(campaign_id: int) -> int:
    return (
        db.session.scalar(
            sa.select(sa.func.count())
            .select_from(Message)
            .where(Message.campaign_id == campaign_id, Message.status == MessageStatus.QUEUED)
        )
        or 0
    )


def _fresh(model, key):
    db.session.expire_all()
    return db.session.get(model, key)


def _notifications(code: str) -> list[Notification]:
    db.session.expire_all()
    return list(db.session.scalars(sa.select(Notification).where(Notification.code == code)))


def _notify_jobs(campaign_id: int) -> list[str]:
    return [
        job["args"]["kind"]
        for job in jobs(queues.NOTIFY_TASK)
        if job["args"]["campaign_id"] == campaign_id
    ]


def _scheduled(owner_id: int) -> Campaign:
    other = demo_campaign(owner_id, name="Later")
    schedule_campaign(other.id, database_now(db.session) + timedelta(days=1), owner_id)
    return other


def test_paused_pauses_sending_and_scheduled_campaigns_at_once_with_the_reason(
    client, template, sending, owner
):
    later = _scheduled(owner.id)
    response = post_webhook(client, status_body(template, "PAUSED"))
    assert response.status_code == 200 and response.json["templates_applied"] == 1

    assert _fresh(MessageTemplate, template.id).status is TemplateStatus.PAUSED
    for campaign in (sending, later):
        campaign = _fresh(Campaign, campaign.id)
        assert campaign.status is CampaignStatus.PAUSED
        assert campaign.status_reason_code == reasons.TEMPLATE_PAUSED
        assert "auto_paused" in _notify_jobs(campaign.id)
        activity = db.session.scalars(
            sa.select(CampaignActivity).where(
                CampaignActivity.campaign_id == campaign.id, CampaignActivity.action == "paused"
            )
        ).one()
        assert activity.user_id is None and activity.detail_code == reasons.TEMPLATE_PAUSED
    assert _queued(sending.id) == 0  # nothing left queued to send with a paused template


def test_approved_again_resumes_nothing_but_is_recorded_and_the_operator_resumes(
    client, template, sending, owner
):
    later = _scheduled(owner.id)
    post_webhook(client, status_body(template, "PAUSED"))
    response = post_webhook(client, status_body(template, "APPROVED"))
    assert response.status_code == 200

    assert _fresh(MessageTemplate, template.id).status is TemplateStatus.APPROVED
    assert _fresh(Campaign, sending.id).status is CampaignStatus.PAUSED
    assert _fresh(Campaign, later.id).status is CampaignStatus.PAUSED
    [approved] = _notifications(reasons.TEMPLATE_APPROVED)
    assert approved.user_id == template.created_by_id and approved.template_id == template.id

    # The operator resumes: the one whose time is still to come is scheduled again for
    # it (not sent now); once its time has passed, resuming starts it.
    resumed = resume_campaign(later.id, owner.id)
    assert resumed.status is CampaignStatus.SCHEDULED and resumed.started_at is None
    assert later.id not in {job["args"]["campaign_id"] for job in jobs(queues.FAN_OUT_TASK)}
    post_webhook(client, status_body(template, "PAUSED"))
    post_webhook(client, status_body(template, "APPROVED"))
    assert _fresh(Campaign, later.id).status is CampaignStatus.PAUSED
    db.session.execute(
        sa.update(Campaign)
        .where(Campaign.id == later.id)
        .values(scheduled_at=database_now(db.session) - timedelta(minutes=1))
    )
    db.session.commit()
    resumed = resume_campaign(later.id, owner.id)
    assert resumed.status is CampaignStatus.SENDING and resumed.started_at is not None
    assert later.id in {job["args"]["campaign_id"] for job in jobs(queues.FAN_OUT_TASK)}
    assert resume_campaign(sending.id, owner.id).status is CampaignStatus.SENDING


def test_disabled_fails_its_sending_scheduled_and_paused_campaigns(
    client, template, sending, owner
):
    later = _scheduled(owner.id)
    held = demo_campaign(owner.id, name="Held")
    send_campaign_now(held.id, owner.id)
    pause_campaign(held.id, owner.id)

    response = post_webhook(client, status_body(template, "DISABLED"))
    assert response.status_code == 200

    assert _fresh(MessageTemplate, template.id).status is TemplateStatus.DISABLED
    for campaign in (sending, later, held):
        campaign = _fresh(Campaign, campaign.id)
        assert campaign.status is CampaignStatus.FAILED
        assert campaign.status_reason_code == reasons.TEMPLATE_DISABLED
        assert "failed" in _notify_jobs(campaign.id)
    assert _queued(sending.id) == 0


def test_rejected_records_whatsapps_reason_and_tells_the_creator(client, template):
    post_webhook(client, status_body(template, "REJECTED", reason="INVALID_FORMAT"))
    template = _fresh(MessageTemplate, template.id)
    assert (template.status, template.status_reason) == (TemplateStatus.REJECTED, "INVALID_FORMAT")
    [notice] = _notifications(reasons.TEMPLATE_REJECTED_WHY)
    assert notice.params["reason"] == "INVALID_FORMAT"


def test_a_drop_to_red_is_stored_shown_in_the_api_and_warns_the_creator_once(
    client, template, login_as, token_for
):
    value = about(template, previous_quality_score="GREEN", new_quality_score="RED")
    body = template_body("message_template_quality_update", value)
    for _ in range(2):  # the same report twice warns once
        assert post_webhook(client, body).status_code == 200

    assert _fresh(MessageTemplate, template.id).quality_rating == "RED"
    [warning] = _notifications(reasons.TEMPLATE_QUALITY_RED)
    assert warning.user_id == template.created_by_id and warning.template_id == template.id
    assert "low quality" in warning.text

    answer = client.get(f"/api/v1/templates/{template.id}", headers=token_for(Role.VIEWER))
    assert answer.status_code == 200 and answer.json["quality_rating"] == "RED"

    login_as(Role.VIEWER)
    page = client.get(f"/templates/{template.id}").get_data(as_text=True)
    assert "Low (red)" in page and 'id="template-quality"' in page
    assert "Low (red)" in client.get("/templates/").get_data(as_text=True)


def test_quality_back_to_green_is_stored_without_a_warning(client, template):
    value = about(template, previous_quality_score="RED", new_quality_score="GREEN")
    post_webhook(client, template_body("message_template_quality_update", value))
    assert _fresh(MessageTemplate, template.id).quality_rating == "GREEN"
    assert _notifications(reasons.TEMPLATE_QUALITY_RED) == []


def test_a_template_without_a_rating_shows_null_in_the_api(client, template, token_for):
    answer = client.get(f"/api/v1/templates/{template.id}", headers=token_for(Role.VIEWER))
    assert answer.json["quality_rating"] is None


def test_a_category_update_changes_the_category(client, template, caplog):
    value = about(template, previous_category="MARKETING", new_category="UTILITY")
    caplog.set_level("INFO", logger="campaigns.template_webhooks")
    post_webhook(client, template_body("template_category_update", value))
    assert _fresh(MessageTemplate, template.id).category is TemplateCategory.UTILITY
    assert "category: MARKETING → UTILITY" in caplog.text


def test_an_unknown_id_falls_back_to_name_and_language_in_the_waba(client, template):
    value = about(template, event="PAUSED", reason="NONE", message_template_id="987654321")
    post_webhook(client, template_body("message_template_status_update", value))
    assert _fresh(MessageTemplate, template.id).status is TemplateStatus.PAUSED


def test_an_unknown_template_is_ignored_with_a_log_line(client, template, caplog):
    value = {
        "event": "PAUSED",
        "message_template_id": 123456789,
        "message_template_name": "nobody_has_this",
        "message_template_language": "en_US",
    }
    response = post_webhook(client, template_body("message_template_status_update", value))
    assert response.status_code == 200 and response.json["templates_unknown"] == 1
    assert "no such template, ignored" in caplog.text
    assert _fresh(MessageTemplate, template.id).status is TemplateStatus.APPROVED


def test_another_senders_secret_changes_nothing(app, client, template, caplog):
    db.session.add(
        Sender(
            name="Other",
            provider=Provider.MOCK,
            phone_number_id="100000000000777",
            app_secret=OTHER_SECRET,
        )
    )
    db.session.commit()
    response = post_webhook(client, status_body(template, "DISABLED"), secret=OTHER_SECRET)
    assert response.status_code == 200 and response.json["skipped"] == 1
    assert "whose app secret did not sign it" in caplog.text
    assert _fresh(MessageTemplate, template.id).status is TemplateStatus.APPROVED


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("message_template_status_update", "not an object"),
        ("message_template_status_update", {"event": 7}),
        ("message_template_status_update", {"event": "PAUSED"}),  # names no template
        ("message_template_status_update", {"event": "PAUSED", "message_template_id": [1]}),
        ("message_template_status_update", {"event": "PAUSED\x00", "message_template_id": "1"}),
        ("message_template_quality_update", {"new_quality_score": "PURPLE"}),
        ("message_template_quality_update", {"new_quality_score": None}),
        ("template_category_update", {"new_category": "ISSUE_RESOLUTION"}),
        ("template_category_update", {"new_category": {"x": 1}}),
    ],
)
def test_a_malformed_template_change_is_acknowledged_and_skipped(
    client, template, caplog, field, value
):
    if isinstance(value, dict) and "message_template_id" not in value:
        value = {**value, "message_template_name": template.name}  # no language: not enough
    response = post_webhook(client, template_body(field, value))
    assert response.status_code == 200 and response.json["skipped"] == 1
    assert "webhook parts skipped" in caplog.text
    template = _fresh(MessageTemplate, template.id)
    assert template.status is TemplateStatus.APPROVED and template.quality_rating is None
    assert template.category is TemplateCategory.MARKETING


def test_an_event_disparo_does_not_record_changes_nothing(client, template):
    response = post_webhook(client, status_body(template, "FLAGGED"))
    assert response.status_code == 200 and response.json["skipped"] == 0
    assert _fresh(MessageTemplate, template.id).status is TemplateStatus.APPROVED


# The mock WhatsApp posts them on demand


def test_the_mock_posts_a_signed_status_webhook_that_pauses_the_campaign(
    app, client, template, sending, live_server
):
    app.config["APP_BASE_URL"] = live_server
    response = client.post(
        f"/mock/whatsapp/templates/{template.provider_template_id}/status",
        json={"event": "PAUSED"},
    )
    assert response.status_code == 200, response.json
    assert response.json["posted"] is True and response.json["status"] == 200
    [entry] = response.json["webhook"]["entry"]
    assert entry["id"] == default_sender().waba_id
    assert entry["changes"][0]["field"] == "message_template_status_update"
    assert _fresh(Campaign, sending.id).status is CampaignStatus.PAUSED


@pytest.mark.parametrize(
    ("event", "status", "reason", "campaign_status", "code"),
    [
        ("LIMIT_EXCEEDED", TemplateStatus.PAUSED, None, CampaignStatus.PAUSED, "template_paused"),
        ("ARCHIVED", TemplateStatus.DISABLED, None, CampaignStatus.FAILED, "template_disabled"),
        ("DELETED", TemplateStatus.DISABLED, "DELETED", CampaignStatus.FAILED, "template_deleted"),
    ],
)
def test_the_statuses_the_import_maps_stop_campaigns_from_the_webhook_too(
    app, client, template, sending, owner, live_server, event, status, reason, campaign_status, code
):
    later = _scheduled(owner.id)
    app.config["APP_BASE_URL"] = live_server
    response = client.post(
        f"/mock/whatsapp/templates/{template.provider_template_id}/status",
        json={"event": event},
    )
    assert response.status_code == 200 and response.json["posted"], response.json
    fresh = _fresh(MessageTemplate, template.id)
    assert (fresh.status, fresh.status_reason) == (status, reason)
    for campaign in (sending, later):
        campaign = _fresh(Campaign, campaign.id)
        assert campaign.status is campaign_status
        assert campaign.status_reason_code == code
    # The same mapping as the template import's (one table: providers/base.py).
    assert template_import.read_standing({"status": event}).status is status


def test_the_mock_posts_quality_and_category_webhooks(app, client, template, live_server):
    app.config["APP_BASE_URL"] = live_server
    path = f"/mock/whatsapp/templates/{template.provider_template_id}"
    assert client.post(f"{path}/quality", json={"new_quality_score": "RED"}).json["posted"]
    assert client.post(f"{path}/category", json={"new_category": "UTILITY"}).json["posted"]
    template = _fresh(MessageTemplate, template.id)
    assert (template.quality_rating, template.category) == ("RED", TemplateCategory.UTILITY)
    assert len(_notifications(reasons.TEMPLATE_QUALITY_RED)) == 1


def test_the_mock_refuses_an_unknown_template_or_a_bad_body(client, template):
    assert (
        client.post("/mock/whatsapp/templates/nope/status", json={"event": "X"}).status_code == 404
    )
    path = f"/mock/whatsapp/templates/{template.provider_template_id}"
    assert client.post(f"{path}/status", json={"state": "PAUSED"}).status_code == 400
    assert client.post(f"{path}/colour", json={"event": "PAUSED"}).status_code == 400


# Junk anywhere in a template change: acknowledged, never a 500


def test_signed_template_webhooks_with_junk_leaves(client, template, owner, fuzz_cases):
    from hypothesis import given
    from hypothesis import strategies as st

    from tests.test_fuzz import JSON, TEXT, examples, mostly

    _scheduled(owner.id)

    def leaf(good: st.SearchStrategy) -> st.SearchStrategy:
        return mostly(good, JSON, odds=10)

    names = st.sampled_from([template.name, "nobody_has_this"])
    value = st.fixed_dictionaries(
        {
            "message_template_id": leaf(
                st.sampled_from([template.provider_template_id, 123456789, "mock-0"])
            ),
            "message_template_name": leaf(names),
            "message_template_language": leaf(st.sampled_from([template.language, "en_US"])),
        },
        optional={
            "event": leaf(st.sampled_from(["APPROVED", "PAUSED", "REJECTED", "IN_APPEAL"])),
            "reason": leaf(TEXT),
            "new_quality_score": leaf(st.sampled_from(["GREEN", "YELLOW", "RED", "UNKNOWN"])),
            "new_category": leaf(st.sampled_from(["MARKETING", "UTILITY", "AUTHENTICATION"])),
        },
    )
    fields = st.sampled_from(
        [
            "message_template_status_update",
            "message_template_quality_update",
            "template_category_update",
        ]
    )
    change = st.fixed_dictionaries({"field": leaf(fields), "value": leaf(value)})
    entry = st.fixed_dictionaries(
        {
            "id": leaf(st.sampled_from([WABA_ID, "1"])),
            "changes": leaf(st.lists(change, min_size=1, max_size=3)),
        }
    )
    payloads = st.fixed_dictionaries(
        {
            "object": st.just("whatsapp_business_account"),
            "entry": st.lists(entry, min_size=1, max_size=2),
        }
    )

    @examples(100)
    @given(payload=payloads)
    def run(payload) -> None:
        fuzz_cases["cases"] += 1
        response = post_webhook(client, payload)
        assert response.status_code == 200, response.get_data()[:500]
        if response.json["templates_applied"]:
            fuzz_cases["applied a change"] += 1

    run()
    assert fuzz_cases["applied a change"] >= fuzz_cases["cases"] // 20, fuzz_cases


def _at(body: dict, seconds: int) -> dict:
    body["entry"][0]["time"] = seconds
    return body


def _ago(seconds: int) -> int:
    """An entry time ``seconds`` before the database's now (one ahead of it is now)."""
    return int(database_now(db.session).timestamp()) - seconds


@pytest.mark.parametrize(
    ("field", "newer", "older", "read"),
    [
        (
            "message_template_status_update",
            {"event": "PAUSED", "reason": "NONE"},
            {"event": "APPROVED", "reason": "NONE"},
            lambda t: t.status,
        ),
        (
            "message_template_quality_update",
            {"new_quality_score": "RED"},
            {"new_quality_score": "GREEN"},
            lambda t: t.quality_rating,
        ),
        (
            "template_category_update",
            {"new_category": "UTILITY"},
            {"new_category": "MARKETING"},
            lambda t: t.category,
        ),
    ],
)
def test_a_late_or_replayed_template_webhook_does_not_undo_a_newer_one(
    client, template, field, newer, older, read
):
    base = _ago(600)
    first = post_webhook(client, _at(template_body(field, about(template, **newer)), base + 100))
    assert first.status_code == 200 and first.json["templates_applied"] == 1
    after_newer = read(_fresh(MessageTemplate, template.id))
    # Sent a minute before, delivered after (Meta retries and does not keep the order).
    late = post_webhook(client, _at(template_body(field, about(template, **older)), base + 40))
    assert late.status_code == 200
    assert (late.json["templates_applied"], late.json["templates_stale"]) == (0, 1)
    assert read(_fresh(MessageTemplate, template.id)) == after_newer
    # The same second as the newer one: the later arrival wins (Meta gives no finer order).
    again = post_webhook(client, _at(template_body(field, about(template, **older)), base + 100))
    assert again.json["templates_applied"] == 1
    assert read(_fresh(MessageTemplate, template.id)) != after_newer


def test_a_template_webhook_whose_time_is_not_one_is_skipped(client, template):
    body = _at(status_body(template, "PAUSED"), "yesterday")  # type: ignore[arg-type]
    answer = post_webhook(client, body)
    assert answer.status_code == 200 and answer.json["skipped"] == 1
    assert _fresh(MessageTemplate, template.id).status is TemplateStatus.APPROVED


def test_a_webhook_locks_its_templates_together_in_id_order(client, template, owner):
    """Changes about several templates lock them in one statement, in id order, FOR NO
    KEY UPDATE (as the template import does): no lock cycle with another webhook or an
    import, and a campaign being created with one is not held up."""
    other = db.session.scalars(
        sa.select(MessageTemplate)
        .where(MessageTemplate.sender_id == template.sender_id, MessageTemplate.id != template.id)
        .order_by(MessageTemplate.id)
    ).first()
    assert other is not None
    later, earlier = sorted((template, other), key=lambda t: t.id, reverse=True)
    body = template_body("message_template_status_update", about(later, event="PAUSED"))
    body["entry"][0]["changes"].append(
        {
            "field": "message_template_quality_update",
            "value": about(earlier, new_quality_score="RED"),
        }
    )
    statements: list[str] = []

    def record(conn, cursor, statement, *args):
        statements.append(statement)

    sa.event.listen(db.engine, "before_cursor_execute", record)
    try:
        answer = post_webhook(client, body)
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", record)
    assert answer.status_code == 200 and answer.json["templates_applied"] == 2
    locks = [s for s in statements if "FROM message_templates" in s and "FOR " in s]
    assert len(locks) == 1
    assert "ORDER BY message_templates.id" in locks[0] and "FOR NO KEY UPDATE" in locks[0]
    assert _fresh(MessageTemplate, later.id).status is TemplateStatus.PAUSED
    assert _fresh(MessageTemplate, earlier.id).quality_rating == "RED"


# -- Disparo's own changes are as of their time too; a time ahead of ours is now


def test_a_paused_replayed_after_the_review_sync_read_approved_changes_nothing(
    app, client, template, sending, owner
):
    """PAUSED(T) applied, then the sync reads APPROVED: PAUSED(T) again is older than
    that read, and stops nothing (it paused the campaigns once, not on every replay)."""
    app.config["MOCK_TEMPLATE_APPROVAL_SECONDS"] = 0
    paused = _at(status_body(template, "PAUSED"), _ago(120))
    assert post_webhook(client, paused).json["templates_applied"] == 1
    assert _fresh(Campaign, sending.id).status is CampaignStatus.PAUSED
    db.session.execute(
        sa.update(MessageTemplate)
        .where(MessageTemplate.id == template.id)
        .values(submitted_at=database_now(db.session) - timedelta(days=1))
    )
    db.session.commit()
    synced = sync_template_status(template.id)
    assert synced.status is TemplateStatus.APPROVED
    assert synced.status_event_at is not None
    assert synced.status_event_at > database_now(db.session) - timedelta(seconds=60)
    assert resume_campaign(sending.id, owner.id).status is CampaignStatus.SENDING

    replayed = post_webhook(client, _at(status_body(template, "PAUSED"), _ago(120)))
    assert (replayed.json["templates_applied"], replayed.json["templates_stale"]) == (0, 1)
    assert _fresh(MessageTemplate, template.id).status is TemplateStatus.APPROVED
    assert _fresh(Campaign, sending.id).status is CampaignStatus.SENDING
    # One after the read still applies.
    assert post_webhook(client, status_body(template, "PAUSED")).json["templates_applied"] == 1
    assert _fresh(MessageTemplate, template.id).status is TemplateStatus.PAUSED


def test_the_sync_leaves_a_status_a_webhook_told_in_its_own_second(
    app, client, template, monkeypatch
):
    """A webhook of the read's second may be the later (the import's rule): it stands."""
    app.config["MOCK_TEMPLATE_APPROVAL_SECONDS"] = 0
    template.submitted_at = database_now(db.session) - timedelta(days=1)
    db.session.commit()
    assert post_webhook(client, status_body(template, "PAUSED")).json["templates_applied"] == 1
    told = _fresh(MessageTemplate, template.id).status_event_at
    assert told is not None and told.microsecond == 0
    read_at = told + timedelta(milliseconds=500)
    monkeypatch.setattr(template_services, "clock_now", lambda session: read_at)
    assert sync_template_status(template.id).status is TemplateStatus.PAUSED
    assert _fresh(MessageTemplate, template.id).status_event_at == told
    # A second later, the read is the newer.
    monkeypatch.setattr(template_services, "clock_now", lambda session: told + timedelta(seconds=1))
    assert sync_template_status(template.id).status is TemplateStatus.APPROVED


def test_a_rejection_replayed_after_a_resubmission_is_about_the_one_before(client, template):
    rejected = _at(status_body(template, "REJECTED", reason="INVALID_FORMAT"), _ago(120))
    assert post_webhook(client, rejected).json["templates_applied"] == 1
    resubmitted = submit_template(template.id)
    assert resubmitted.status is TemplateStatus.PENDING
    assert resubmitted.status_event_at > database_now(db.session) - timedelta(seconds=60)

    replayed = post_webhook(client, rejected)
    assert replayed.json["templates_stale"] == 1
    fresh = _fresh(MessageTemplate, template.id)
    assert (fresh.status, fresh.status_reason) == (TemplateStatus.PENDING, None)
    # WhatsApp's word on the new submission applies.
    assert post_webhook(client, status_body(template, "APPROVED")).json["templates_applied"] == 1
    assert _fresh(MessageTemplate, template.id).status is TemplateStatus.APPROVED


def test_an_edit_is_newer_than_webhooks_about_the_version_before(client, template, login_as):
    """A category WhatsApp set before the edit, replayed after it, does not undo the
    operator's; nor does a status (the draft is resubmitted as a new version)."""
    recategorised = _at(
        template_body("template_category_update", about(template, new_category="UTILITY")),
        _ago(120),
    )
    assert post_webhook(client, recategorised).json["templates_applied"] == 1
    login_as(Role.SUPERVISOR)
    fields = {
        "name": template.name,
        "language": template.language,
        "category": "MARKETING",
        "parameter_format": template.parameter_format.value,
        "body_text": template.body_text,
    }
    edited = client.post(f"/templates/{template.id}", data=fields)
    assert edited.status_code == 303, edited.get_data(as_text=True)
    fresh = _fresh(MessageTemplate, template.id)
    assert (fresh.status, fresh.category) == (TemplateStatus.DRAFT, TemplateCategory.MARKETING)
    submit_template(template.id)
    resubmitted = _fresh(MessageTemplate, template.id)
    # Found by name and language now (an edit forgets Meta's id).
    assert post_webhook(client, recategorised).json["templates_stale"] == 1
    old_pause = _at(status_body(resubmitted, "PAUSED"), _ago(120))
    assert post_webhook(client, old_pause).json["templates_stale"] == 1
    fresh = _fresh(MessageTemplate, template.id)
    assert (fresh.status, fresh.category) == (TemplateStatus.PENDING, TemplateCategory.MARKETING)


def test_a_time_ahead_of_the_databases_is_taken_as_now(client, template):
    """One bogus future entry.time would otherwise freeze the template's status."""
    future = _at(status_body(template, "PAUSED"), _ago(-86_400))
    assert post_webhook(client, future).json["templates_applied"] == 1
    fresh = _fresh(MessageTemplate, template.id)
    assert fresh.status_event_at <= database_now(db.session)
    now = _at(status_body(template, "APPROVED"), _ago(0))
    assert post_webhook(client, now).json["templates_applied"] == 1
    assert _fresh(MessageTemplate, template.id).status is TemplateStatus.APPROVED
