from __future__ import annotations

import json

import pytest

from app import db
from campaigns.models import MessageTemplate, Role, Sender, TemplateStatus
from campaigns.services.demo import seed_demo
from campaigns.services.templates import default_sender
from campaigns.services.users import create_api_token, set_user_disabled


@pytest.fixture
def seeded(app):
    seed_demo()


TEMPLATE = {
    "name": "api_promo",
    "language": "pt_BR",
    "category": "MARKETING",
    "parameter_format": "named",
    "body": "Oi {{first_name}}!",
}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer"},
    ],
)
def test_no_or_bad_token_is_401_json(client, headers):
    response = client.get("/api/v1/me", headers=headers)
    assert response.status_code == 401
    assert response.json["error"]["code"] == "unauthenticated"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_me(client, token_for):
    headers = token_for(Role.SUPERVISOR)
    body = client.get("/api/v1/me", headers=headers).json
    assert body["role"] == "supervisor"
    assert body["campaign_rate_limit_per_minute"] == 100
    assert body["api_rate_limit_per_minute"] == 1000


def test_a_cookie_session_is_not_an_api_credential(client, login_as):
    login_as(Role.ADMIN)
    assert client.get("/api/v1/me").status_code == 401


def test_senders_contract(client, token_for):
    headers = token_for(Role.ADMIN)
    response = client.post(
        "/api/v1/senders",
        json={
            "name": "Loja",
            "provider": "mock",
            "phone_number_id": "123",
            "rate_limit_per_minute": 30,
            "min_interval_ms": 250,
            "access_token": "secret-token",
        },
        headers=headers,
    )
    assert response.status_code == 201
    body = response.json
    assert body["id"] and body["rate_limit_per_minute"] == 30 and body["min_interval_ms"] == 250
    assert "secret-token" not in response.get_data(as_text=True)
    assert body["has_access_token"] is True
    patched = client.patch(
        f"/api/v1/senders/{body['id']}", json={"rate_limit_per_minute": 80}, headers=headers
    )
    assert patched.status_code == 200 and patched.json["rate_limit_per_minute"] == 80
    assert db.session.get(Sender, body["id"]).access_token == "secret-token"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"name": "x", "provider": "mock", "rate_limit_per_minute": 0}, "rate_limit_per_minute"),
        (
            {"name": "x", "provider": "mock", "rate_limit_per_minute": 1_000_001},
            "rate_limit_per_minute",
        ),
        ({"name": "x", "provider": "mock", "min_interval_ms": 3_600_001}, "min_interval_ms"),
        ({"name": "x", "provider": "carrier-pigeon"}, "provider"),
        ({"provider": "mock"}, "name"),
    ],
)
def test_sender_validation_is_422_with_fields(client, token_for, payload, field):
    response = client.post("/api/v1/senders", json=payload, headers=token_for(Role.ADMIN))
    assert response.status_code == 422
    assert field in response.json["error"]["fields"]


def test_non_json_body_is_422(client, token_for):
    response = client.post("/api/v1/senders", data="name=x", headers=token_for(Role.ADMIN))
    assert response.status_code == 422
    assert "body" in response.json["error"]["fields"]


def test_templates_contract(app, client, token_for, seeded, in_memory_queue):
    headers = token_for(Role.SUPERVISOR)
    response = client.post("/api/v1/templates", json=TEMPLATE, headers=headers)
    assert response.status_code == 201, response.json
    template = response.json
    assert template["status"] == "draft"
    assert template["variables"] == ["first_name"]
    assert template["sender_id"] == default_sender().id

    submitted = client.post(f"/api/v1/templates/{template['id']}/submit", headers=headers)
    assert submitted.status_code == 202
    assert submitted.json["status"] == "pending"
    again = client.post(f"/api/v1/templates/{template['id']}/submit", headers=headers)
    assert again.status_code == 409
    assert "draft or rejected" in again.json["error"]["message"]

    app.config["MOCK_TEMPLATE_APPROVAL_SECONDS"] = 0
    synced = client.post(f"/api/v1/templates/{template['id']}/sync", headers=headers)
    assert synced.json["status"] == "approved"
    assert (
        client.get(f"/api/v1/templates/{template['id']}", headers=headers).json["status"]
        == "approved"
    )
    listed = client.get("/api/v1/templates?status=approved&q=api", headers=headers).json[
        "templates"
    ]
    assert [t["name"] for t in listed] == ["api_promo"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"body": "Oi {{1}}", "parameter_format": "named"}, "body"),
        ({"body": ""}, "body"),
        ({"name": "Bad Name"}, "name"),
        ({"header": "x" * 61}, "header"),
        ({"category": "OTHER"}, "category"),
    ],
)
def test_template_validation_names_the_api_field(client, token_for, seeded, change, field):
    response = client.post(
        "/api/v1/templates", json=TEMPLATE | change, headers=token_for(Role.SUPERVISOR)
    )
    assert response.status_code == 422
    assert field in response.json["error"]["fields"]


def test_unknown_things_are_404_json(client, token_for):
    headers = token_for(Role.ADMIN)
    assert client.get("/api/v1/templates/999", headers=headers).status_code == 404
    assert client.get("/api/v1/senders/999", headers=headers).json["error"]["code"] == "not_found"
    assert client.patch("/api/v1/users/999", json={}, headers=headers).status_code == 404


@pytest.mark.parametrize(
    ("role", "method", "path", "expected"),
    [
        (Role.VIEWER, "get", "/api/v1/templates", 200),
        (Role.VIEWER, "post", "/api/v1/templates", 403),
        (Role.VIEWER, "post", "/api/v1/senders", 403),
        (Role.SUPERVISOR, "post", "/api/v1/senders", 403),
        (Role.SUPERVISOR, "patch", "/api/v1/users/1", 403),
        (Role.VIEWER, "get", "/api/v1/senders", 200),
    ],
)
def test_roles_apply_to_the_api(client, token_for, seeded, role, method, path, expected):
    response = getattr(client, method)(path, json=TEMPLATE, headers=token_for(role))
    assert response.status_code == expected
    if expected == 403:
        assert response.json["error"]["code"] == "forbidden"


def test_admin_changes_a_users_limits(client, token_for, user_factory):
    headers = token_for(Role.ADMIN)
    user = user_factory()
    response = client.patch(
        f"/api/v1/users/{user.id}",
        json={"campaign_rate_limit_per_minute": 40, "api_rate_limit_per_minute": 500},
        headers=headers,
    )
    assert response.status_code == 200
    assert response.json["campaign_rate_limit_per_minute"] == 40
    assert response.json["api_rate_limit_per_minute"] == 500
    bad = client.patch(
        f"/api/v1/users/{user.id}", json={"api_rate_limit_per_minute": -1}, headers=headers
    )
    assert bad.status_code == 422


def test_a_disabled_users_token_stops_working(client, token_for):
    headers = token_for(Role.ADMIN)
    me = client.get("/api/v1/me", headers=headers).json
    set_user_disabled(me["id"], True, acting_user_id=0)
    assert client.get("/api/v1/me", headers=headers).status_code == 401


def test_the_demo_templates_are_listed(client, token_for, seeded):
    templates = client.get("/api/v1/templates", headers=token_for(Role.VIEWER)).json["templates"]
    assert {t["status"] for t in templates} == {TemplateStatus.APPROVED.value}
    assert db.session.query(MessageTemplate).count() == len(templates)


def test_api_rate_limit_is_a_429_with_headers(client, app, user_factory):
    user = user_factory(Role.VIEWER)
    user.api_rate_limit_per_minute = 3
    db.session.commit()
    _token, raw = create_api_token(user.id)
    headers = {"Authorization": f"Bearer {raw}"}
    answers = [client.get("/api/v1/me", headers=headers) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert [a.headers["X-RateLimit-Remaining"] for a in answers[:3]] == ["2", "1", "0"]
    assert all(a.headers["X-RateLimit-Limit"] == "3" for a in answers)
    refused = answers[3]
    assert refused.json["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 62
    assert 0 < int(refused.headers["X-RateLimit-Reset"]) <= 62
    # Another user's budget is their own.
    other = user_factory(Role.VIEWER)
    _t, other_raw = create_api_token(other.id)
    assert (
        client.get("/api/v1/me", headers={"Authorization": f"Bearer {other_raw}"}).status_code
        == 200
    )


@pytest.mark.parametrize(
    ("path", "raw", "field"),
    [
        (
            "/api/v1/senders",
            '{"name": "Loja", "rate_limit_per_minute": 1e999}',
            "rate_limit_per_minute",
        ),
        ("/api/v1/campaigns", '{"name": "C", "sender_id": 1, "template_id": 1e999}', "template_id"),
        (
            "/api/v1/campaigns",
            '{"name": "C", "sender_id": 1, "template_id": 2147483648}',
            "template_id",
        ),
        ("/api/v1/templates", json.dumps(TEMPLATE | {"sender_id": 2**31}), "sender_id"),
        ("/api/v1/templates", json.dumps(TEMPLATE | {"sender_id": True}), "sender_id"),
    ],
)
def test_numbers_beyond_every_range_are_a_422_at_the_field(
    client, token_for, seeded, path, raw, field
):
    """JSON's 1e999 is infinity, and ids past the column's range never reach the database."""
    response = client.post(
        path, data=raw, content_type="application/json", headers=token_for(Role.ADMIN)
    )
    assert response.status_code == 422
    assert field in response.json["error"]["fields"]


def test_ids_larger_than_their_column_are_json_404s(client, token_for, seeded):
    headers = token_for(Role.ADMIN)
    assert client.get("/api/v1/campaigns/2147483648", headers=headers).status_code == 404
    response = client.post("/api/v1/templates/99999999999999999999/submit", headers=headers)
    assert response.status_code == 404 and response.json["error"]["code"] == "not_found"
