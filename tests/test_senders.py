from __future__ import annotations

import pytest

from app import db
from campaigns.models import Provider, Role, Sender

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
    for page in (f"/senders/{sender.id}/edit", "/senders/"):
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
    assert client.post("/senders/", data=FORM).status_code == 403
