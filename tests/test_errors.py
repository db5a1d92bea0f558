"""What a request gets when something fails that no view expected."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_login import current_user

from app import db
from campaigns import errors
from campaigns.models import Role
from campaigns.views import api


@pytest.fixture
def failing_routes(app: Flask) -> Flask:
    """Paths whose statement fails in the database after a commit, the error propagating.

    The commit expires the signed-in user, so drawing the page's nav afterwards needs
    the database again: on the failed transaction, that raised inside the 500 handler.
    """

    def fail() -> str:
        assert current_user.is_authenticated
        db.session.commit()
        db.session.execute(sa.text("SELECT 1/0"))
        return "unreachable"

    # Registered on the app, not the API blueprint: a cookie session signs them in.
    app.add_url_rule("/test-only/fails", "fails", fail)
    app.config["PROPAGATE_EXCEPTIONS"] = False  # as in production: the 500 handler answers
    return app


def test_a_database_error_gets_the_apps_own_error_page(failing_routes, client, login_as):
    user = login_as(Role.VIEWER)
    response = client.get("/test-only/fails")
    assert response.status_code == 500
    assert response.mimetype == "text/html"
    body = response.get_data(as_text=True)
    assert "Something went wrong on our side" in body
    assert "Back to the dashboard" in body  # the app's page, not werkzeug's bare one
    assert user.email in body  # with its nav, drawn on a rolled-back session


def test_a_database_error_on_the_api_gets_the_json_envelope(
    failing_routes, client, token_for, monkeypatch
):
    # A real API route fails (the suite checks every /api/v1 answer against the OpenAPI
    # document, which has no test-only path): its view's statement, after a commit.
    def fail(user):
        db.session.commit()
        db.session.execute(sa.text("SELECT 1/0"))

    monkeypatch.setattr(api, "user_json", fail)
    response = client.get("/api/v1/me", headers=token_for(Role.VIEWER))
    assert response.status_code == 500
    assert response.json == {
        "error": {
            "code": "internal_error",
            "message": "Something went wrong on our side. It has been logged.",
        }
    }


def test_an_error_page_that_cannot_be_drawn_falls_back_to_a_plain_one(
    failing_routes, client, login_as, monkeypatch
):
    login_as(Role.VIEWER)

    def broken(*args, **kwargs):
        raise RuntimeError("the template itself fails")

    monkeypatch.setattr(errors, "render_template", broken)
    response = client.get("/test-only/fails")
    assert response.status_code == 500
    assert response.mimetype == "text/html"
    assert "Something went wrong on our side" in response.get_data(as_text=True)
