from __future__ import annotations

from app import db
from campaigns.models import Role
from campaigns.services.demo import seed_demo


def test_dashboard_shows_what_is_in_the_database(client, login_as):
    login_as(Role.VIEWER)
    seed_demo()
    response = client.get("/")
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert "Approved templates" in body
    assert ">3<" in body  # the three approved demo templates
    assert "No worker is running" in body


def test_base_layout_vendors_htmx_and_pico_and_swaps_422(client, login_as):
    login_as(Role.VIEWER)
    body = client.get("/").get_data(as_text=True)
    assert "/static/vendor/htmx-2.0.11.min.js" in body
    assert "/static/vendor/pico-2.1.1.min.css" in body
    assert '{"code":"422","swap":true}' in body
    assert "https://" not in body  # nothing from a CDN
    static = client.get("/static/vendor/htmx-2.0.11.min.js")
    assert static.status_code == 200
    static.close()


def test_not_found_is_a_friendly_page(client, login_as):
    login_as(Role.VIEWER)
    response = client.get("/no/such/page")
    assert response.status_code == 404
    assert b"There is nothing here" in response.data


def test_api_errors_are_json(client):
    response = client.get("/api/v1/nothing")
    assert response.status_code == 404
    assert response.json["error"]["code"] == "not_found"


def test_seed_demo_runs_once(app):
    first = seed_demo()
    second = seed_demo()
    assert first.created and first.admin_password
    assert not second.created and second.admin_password is None
    from campaigns.models import MessageTemplate, Sender, TemplateStatus, User

    assert db.session.query(User).filter_by(role=Role.ADMIN).count() == 1
    assert db.session.query(Sender).count() == 1
    assert db.session.query(MessageTemplate).filter_by(status=TemplateStatus.APPROVED).count() == 3
