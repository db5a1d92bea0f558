from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from app import db
from campaigns import reasons
from campaigns.models import CampaignStatus, Provider, Role, Sender
from campaigns.services.templates import default_sender
from tests.helpers import demo_campaign

FORM = {
    "name": "Loja Centro",
    "provider": "cloud_api",
    "phone_number_id": "106540352242922",
    "display_phone_number": "+55 11 4000-0000",
    "waba_id": "102290129340398",
    "access_token": "EAAG-secret-token",
    "app_secret": "app-secret-value",
    "webhook_verify_token": "verify-me",
    "rate_limit_per_minute": "60",
    "min_interval_ms": "500",
}


@pytest.fixture
def admin(login_as):
    return login_as(Role.ADMIN)


def test_admin_creates_a_sender_and_secrets_are_never_shown_back(client, admin):
    response = client.post("/senders/", data=FORM)
    assert response.status_code == 303
    sender = db.session.query(Sender).one()
    assert sender.provider is Provider.CLOUD_API
    assert (sender.rate_limit_per_minute, sender.min_interval_ms) == (60, 500)
    assert sender.access_token == "EAAG-secret-token"
    for page in (f"/senders/{sender.id}/edit", "/senders/", f"/senders/{sender.id}"):
        body = client.get(page).get_data(as_text=True)
        assert "EAAG-secret-token" not in body and "app-secret-value" not in body
    assert "stored — leave blank to keep" in client.get(f"/senders/{sender.id}/edit").get_data(
        as_text=True
    )


def test_blank_secrets_keep_the_stored_ones(client, admin):
    client.post("/senders/", data=FORM)
    sender = db.session.query(Sender).one()
    response = client.post(
        f"/senders/{sender.id}",
        data=FORM | {"access_token": "", "app_secret": "", "name": "Loja 2"},
    )
    assert response.status_code == 303
    db.session.refresh(sender)
    assert sender.name == "Loja 2"
    assert sender.access_token == "EAAG-secret-token"
    assert sender.app_secret == "app-secret-value"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("name", "", "Give the sender a name"),
        ("provider", "twilio", "Choose one of"),
        ("phone_number_id", "", "needs the phone number id"),
        ("phone_number_id", "abc", "digits"),
        ("rate_limit_per_minute", "0", "from 1 to 1,000,000"),  # local numbers
        ("min_interval_ms", "3600001", "from 0 to 3,600,000"),
        ("min_interval_ms", "soon", "whole number"),
    ],
)
def test_sender_validation(client, admin, field, value, message):
    response = client.post("/senders/", data=FORM | {field: value})
    assert response.status_code == 422
    body = response.get_data(as_text=True)
    assert f'id="{field}-error"' in body
    assert message in body
    assert db.session.query(Sender).count() == 0


def test_mock_senders_get_a_webhook_secret(client, admin):
    client.post("/senders/", data=FORM | {"provider": "mock", "app_secret": ""})
    assert len(db.session.query(Sender).one().app_secret) == 64


def test_test_connection_reports_what_the_provider_said(client, admin):
    client.post("/senders/", data=FORM | {"provider": "mock"})
    sender = db.session.query(Sender).one()
    response = client.post(f"/senders/{sender.id}/test", headers={"HX-Request": "true"})
    body = response.get_data(as_text=True)
    assert response.status_code == 200
    assert f'id="sender-{sender.id}-connection"' in body
    assert "Mock WhatsApp ready" in body


def test_cloud_sender_without_a_reachable_api_says_why(app, client, admin):
    app.config["WHATSAPP_API_BASE_URL"] = "http://127.0.0.1:9"  # nothing listens there
    client.post("/senders/", data=FORM)
    sender = db.session.query(Sender).one()
    body = client.post(f"/senders/{sender.id}/test").get_data(as_text=True)
    assert "could not be reached" in body


@pytest.mark.parametrize("role", [Role.VIEWER, Role.SUPERVISOR])
def test_only_admins_manage_senders(client, login_as, role):
    login_as(role)
    assert client.get("/senders/").status_code == 403
    assert client.get("/senders/1").status_code == 403
    assert client.post("/senders/", data=FORM).status_code == 403


def _figures(client, sender_id: int) -> str:
    response = client.get(f"/senders/{sender_id}")
    assert response.status_code == 200
    return response.get_data(as_text=True)


def test_a_sender_page_shows_its_limits_health_connection_and_campaigns(client, admin):
    mine = demo_campaign(admin.id, name="Natal SP")
    other = demo_campaign(admin.id, name="Elsewhere")
    sender = default_sender()
    elsewhere = Sender(name="Filial", provider=Provider.MOCK, phone_number_id="999")
    db.session.add(elsewhere)
    db.session.flush()
    other.sender_id = elsewhere.id
    mine.status = CampaignStatus.PAUSED
    mine.set_status_reason(
        reasons.Reason(reasons.WHATSAPP_STOP, {"code": 131048, "message": "Spam"})
    )
    db.session.execute(
        sa.text(
            "INSERT INTO campaign_counters (campaign_id, shard, sent, failed, total)"
            " VALUES (:c, 0, 90, 10, 120)"
        ),
        {"c": mine.id},
    )
    db.session.execute(
        sa.text(
            "INSERT INTO campaign_minute_stats (campaign_id, minute, shard, sent, failed)"
            " VALUES (:c, date_trunc('minute', now()), 0, 30, 10),"
            " (:c, date_trunc('minute', now()) - interval '2 hours', 0, 500, 500)"
        ),
        {"c": mine.id},
    )
    db.session.commit()

    body = _figures(client, sender.id)
    assert f"<h1>{sender.name}</h1>" in body
    assert f"At most {sender.rate_limit_per_minute:,} messages a minute" in body
    assert "This minute: 0 of" in body
    # Health: the last hour's outcomes only, and the campaign WhatsApp stopped, with why.
    assert re.search(r"Last 60 minutes: 30 sent, 10 failed \(25\.0\s%\)\.", body)
    assert re.search(r'id="sender-health".*Natal SP.*Paused by WhatsApp', body, re.S)
    assert f'hx-post="/senders/{sender.id}/test"' in body
    # Its campaigns, with their figures; not another sender's.
    row = re.search(rf'<tr id="sender-campaign-{mine.id}">(.*?)</tr>', body, re.S).group(1)
    assert [cell.strip() for cell in re.findall(r"<td>([^<]*)</td>", row)][:3] == [
        "90",
        "10",
        "120",
    ]
    assert "Elsewhere" not in body
    assert f'href="/senders/{sender.id}"' in client.get("/senders/").get_data(as_text=True)


def test_a_quiet_sender_says_so_and_links_to_a_new_campaign(client, admin):
    db.session.add(Sender(name="Nova", provider=Provider.MOCK, phone_number_id="1"))
    db.session.commit()
    sender = db.session.query(Sender).filter_by(name="Nova").one()
    body = _figures(client, sender.id)
    assert "Nothing sent in the last 60 minutes." in body
    assert "No campaign of this sender is stopped." in body
    assert "No campaign uses this sender yet." in body and 'href="/campaigns/new"' in body
    assert "Access token</dt><dd>missing" in body
    assert client.get("/senders/99999").status_code == 404


def test_no_sender_yet_links_to_adding_one(client, admin):
    body = client.get("/senders/").get_data(as_text=True)
    assert "No sender yet." in body and 'href="/senders/new"' in body
