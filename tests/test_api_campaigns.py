from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from app import db
from campaigns.models import MessageTemplate, Role
from campaigns.services.demo import seed_demo
from campaigns.services.templates import default_sender
from campaigns.services.users import create_api_token


@pytest.fixture
def headers(app, user_factory):
    seed_demo()
    user = user_factory(Role.SUPERVISOR)
    _token, raw = create_api_token(user.id)
    return {"Authorization": f"Bearer {raw}"}


@pytest.fixture
def payload(headers):
    sender = default_sender()
    template = db.session.query(MessageTemplate).filter_by(name="order_ready").one()
    return {
        "name": "Pedidos prontos",
        "sender_id": sender.id,
        "template_id": template.id,
        "segment": {"city": "Campinas", "opted_in_only": True, "max_audience": 50},
        "variables": {"1": {"field": "first_name"}, "2": {"text": "A-1042"}},
    }


def create(client, headers, payload) -> dict:
    response = client.post("/api/v1/campaigns", json=payload, headers=headers)
    assert response.status_code == 201, response.json
    return response.json


def test_create_get_list(client, headers, payload):
    campaign = create(client, headers, payload)
    assert campaign["status"] == "draft"
    assert campaign["variables"] == payload["variables"]
    assert (
        client.get(f"/api/v1/campaigns/{campaign['id']}", headers=headers).json["name"]
        == "Pedidos prontos"
    )
    listed = client.get("/api/v1/campaigns?status=draft", headers=headers).json
    assert [c["id"] for c in listed["campaigns"]] == [campaign["id"]] and listed["total"] == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"variables": {"1": {"field": "first_name"}}}, "variables.2"),
        ({"variables": {"1": {"field": "shoe_size"}, "2": {"text": "x"}}}, "variables.1"),
        (
            {"variables": {"1": {"field": "name"}, "2": {"text": "x"}, "3": {"text": "y"}}},
            "variables.3",
        ),
        ({"segment": {"colour": "blue"}}, "segment.colour"),
        ({"segment": {"last_purchase_within_days": 0}}, "segment.last_purchase_within_days"),
        ({"template_id": 99999}, "template_id"),
        ({"name": ""}, "name"),
    ],
)
def test_validation_is_422_per_field(client, headers, payload, change, field):
    response = client.post("/api/v1/campaigns", json=payload | change, headers=headers)
    assert response.status_code == 422
    assert field in response.json["error"]["fields"]


def test_schedule_needs_a_future_time_with_an_offset(client, headers, payload):
    campaign = create(client, headers, payload)
    url = f"/api/v1/campaigns/{campaign['id']}/schedule"
    past = client.post(url, json={"scheduled_at": "2020-01-01T10:00:00-03:00"}, headers=headers)
    assert past.status_code == 422 and "scheduled_at" in past.json["error"]["fields"]
    naive = client.post(url, json={"scheduled_at": "2030-01-01T10:00:00"}, headers=headers)
    assert naive.status_code == 422
    # Parsed, but past year 9999 in UTC: a 422, not a 500 from the overflow.
    past_9999 = client.post(
        url, json={"scheduled_at": "9999-12-31T12:00:00-12:00", "confirm": True}, headers=headers
    )
    assert past_9999.status_code == 422 and "scheduled_at" in past_9999.json["error"]["fields"]
    when = (datetime.now(UTC) + timedelta(hours=2)).astimezone().isoformat()
    ok = client.post(url, json={"scheduled_at": when}, headers=headers)
    assert ok.status_code == 202 and ok.json["status"] == "scheduled"


def test_transitions_202_or_409_with_the_reason(client, headers, payload):
    campaign = create(client, headers, payload)
    base = f"/api/v1/campaigns/{campaign['id']}"
    refused = client.post(f"{base}/pause", headers=headers)
    assert refused.status_code == 409
    assert "status “Draft” cannot be paused" in refused.json["error"]["message"]
    assert client.post(f"{base}/send-now", headers=headers).status_code == 202
    assert client.post(f"{base}/pause", headers=headers).json["status"] == "paused"
    assert client.post(f"{base}/resume", headers=headers).json["status"] == "sending"
    assert client.post(f"{base}/cancel", headers=headers).json["status"] == "cancelled"
    again = client.post(f"{base}/resume", headers=headers)
    assert (
        again.status_code == 409
        and "status “Cancelled” cannot be resumed" in again.json["error"]["message"]
    )
    jobs = db.session.execute(sa.text("SELECT task_name FROM procrastinate_jobs")).scalars().all()
    assert "campaigns.fan_out" in jobs


def test_progress_and_duplicate(client, headers, payload):
    campaign = create(client, headers, payload)
    progress = client.get(f"/api/v1/campaigns/{campaign['id']}/progress", headers=headers).json
    assert (
        progress["status"] == "draft"
        and progress["total"] == 0
        and progress["success_rate"] is None
    )
    copy = client.post(f"/api/v1/campaigns/{campaign['id']}/duplicate", headers=headers)
    assert copy.status_code == 201 and copy.json["id"] != campaign["id"]


def test_viewers_cannot_create_or_control(client, app, payload, user_factory):
    viewer = user_factory(Role.VIEWER)
    _token, raw = create_api_token(viewer.id)
    headers = {"Authorization": f"Bearer {raw}"}
    assert client.post("/api/v1/campaigns", json=payload, headers=headers).status_code == 403
    assert client.get("/api/v1/campaigns", headers=headers).status_code == 200
    assert client.post("/api/v1/campaigns/1/send-now", headers=headers).status_code == 403


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        (150, 150.0),
        (1234.56, 1234.56),
        ("1.234,56", 1234.56),
        ("1234,56", 1234.56),
        ("1,234.56", 1234.56),
        ("R$ 1.234,56", 1234.56),
        ("150.00", 150.0),
    ],
)
def test_min_total_spent_is_a_number_or_an_amount_in_either_convention(
    client, headers, payload, given, stored
):
    payload["segment"]["min_total_spent"] = given
    campaign = create(client, headers, payload)
    assert campaign["segment"]["min_total_spent"] == stored  # a JSON number, as before
    assert isinstance(campaign["segment"]["min_total_spent"], float)


@pytest.mark.parametrize("given", ["lots", "1e5", -1, True, 1e13, [100], {"v": 1}, "NaN"])
def test_min_total_spent_that_is_no_amount_is_422(client, headers, payload, given):
    payload["segment"]["min_total_spent"] = given
    response = client.post("/api/v1/campaigns", json=payload, headers=headers)
    assert response.status_code == 422
    assert "amount" in response.json["error"]["fields"]["segment.min_total_spent"]


def test_min_total_spent_of_nan_in_the_json_is_422(client, headers, payload):
    body = json.dumps(payload | {"segment": {"min_total_spent": float("nan")}})
    response = client.post(
        "/api/v1/campaigns", data=body, content_type="application/json", headers=headers
    )
    assert response.status_code == 422
    assert "segment.min_total_spent" in response.json["error"]["fields"]
