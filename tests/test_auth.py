from __future__ import annotations

import pytest
from flask import Blueprint

from app import db
from campaigns.auth import PUBLIC_ENDPOINTS, is_self_authenticated, requires
from campaigns.config import load_settings
from campaigns.models import Role, User
from campaigns.views.auth import safe_next
from tests.helpers import PASSWORD, csrf_token_from, login, make_app


def test_pages_need_a_signed_in_user(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login?next=")


def test_htmx_requests_are_sent_to_login_with_a_full_page_redirect(client):
    response = client.get("/", headers={"HX-Request": "true"})
    assert response.status_code == 401
    assert response.headers["HX-Redirect"].startswith("/login")


def test_a_json_caller_without_a_session_gets_the_401_envelope(client):
    response = client.get("/", headers={"Accept": "application/json"})
    assert response.status_code == 401
    assert response.json == {"error": {"code": "unauthenticated", "message": "Sign in first."}}


def test_login_page_renders(client):
    response = client.get("/login")
    assert response.status_code == 200
    assert b'name="password"' in response.data


def test_login_with_the_right_password_signs_in(client, user_factory):
    user = user_factory()
    response = login(client, user)
    assert response.status_code == 303
    assert response.headers["Location"] == "/"
    assert client.get("/").status_code == 200
    assert db.session.get(User, user.id).last_login_at is not None


def test_email_is_case_insensitive(client, user_factory):
    user_factory(email="Ana@Example.com")
    response = client.post("/login", data={"email": "ana@example.COM", "password": PASSWORD})
    assert response.status_code == 303


def test_wrong_password_is_a_422_with_the_reason(client, user_factory):
    user = user_factory()
    response = login(client, user, password="nope nope nope")
    assert response.status_code == 422
    assert b"Wrong email or password" in response.data
    assert client.get("/").status_code == 302


def test_unknown_email_gets_the_same_answer(client):
    response = client.post("/login", data={"email": "ghost@example.com", "password": "x" * 12})
    assert response.status_code == 422
    assert b"Wrong email or password" in response.data


def test_disabled_users_cannot_sign_in_and_lose_their_session(client, user_factory):
    user = user_factory()
    assert login(client, user).status_code == 303
    user.is_disabled = True
    db.session.commit()
    assert client.get("/").status_code == 302  # the session no longer loads the user
    response = login(client, user)
    assert response.status_code == 422
    assert b"disabled" in response.data


def test_next_only_follows_local_paths(client, user_factory):
    user = user_factory()
    response = client.post(
        "/login?next=https://evil.example.com/",
        data={"email": user.email, "password": PASSWORD},
    )
    assert response.headers["Location"] == "/"
    client.post("/logout")
    response = client.post("/login?next=/healthz", data={"email": user.email, "password": PASSWORD})
    assert response.headers["Location"] == "/healthz"


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example.com/",
        "/\\evil.example.com/",
        "/\t/evil.example.com/",
        "/\n/evil.example",
        "x",
    ],
)
def test_next_refuses_what_a_browser_would_read_as_another_site(app, target):
    with app.test_request_context():
        assert safe_next(target) == "/"


def test_next_keeps_a_local_path_with_its_query(app):
    with app.test_request_context():
        assert safe_next("/notifications/?page=2&unread=1") == "/notifications/?page=2&unread=1"


def test_logout_ends_the_session(client, login_as):
    login_as(Role.VIEWER)
    response = client.post("/logout")
    assert response.status_code == 303
    assert client.get("/").status_code == 302


def test_passwords_are_stored_with_a_slow_modern_hash(app, user_factory):
    app.config["PASSWORD_HASH_METHOD"] = load_settings().flask_config()["PASSWORD_HASH_METHOD"]
    user = user_factory()
    assert user.password_hash.startswith("scrypt:")
    assert PASSWORD not in user.password_hash


@pytest.fixture
def guarded_app(database_url_for_test):
    """An app with two extra routes that declare supervisor and admin."""
    app = make_app(database_url_for_test)
    bp = Blueprint("guarded", __name__)

    @bp.post("/guarded/supervisor")
    @requires(Role.SUPERVISOR)
    def supervisor_only():
        return "ok"

    @bp.post("/guarded/admin")
    @requires(Role.ADMIN)
    def admin_only():
        return "ok"

    app.register_blueprint(bp)
    with app.app_context():
        yield app
        db.engine.dispose()


@pytest.mark.parametrize(
    ("role", "supervisor_status", "admin_status"),
    [
        (Role.VIEWER, 403, 403),
        (Role.SUPERVISOR, 200, 403),
        (Role.ADMIN, 200, 200),
    ],
)
def test_roles_are_cumulative_and_enforced_on_the_server(
    guarded_app, user_factory, role, supervisor_status, admin_status
):
    client = guarded_app.test_client()
    assert login(client, user_factory(role)).status_code == 303
    assert client.post("/guarded/supervisor").status_code == supervisor_status
    assert client.post("/guarded/admin").status_code == admin_status


def test_every_route_is_public_by_design_or_requires_a_role(app):
    for rule in app.url_map.iter_rules():
        blueprint = rule.endpoint.partition(".")[0]
        if rule.endpoint in PUBLIC_ENDPOINTS or is_self_authenticated(blueprint):
            continue
        view = app.view_functions[rule.endpoint]
        mutating = rule.methods - {"GET", "HEAD", "OPTIONS"}
        # Everything that writes declares who may do it (signing out aside).
        if mutating and rule.endpoint != "auth.logout":
            assert hasattr(view, "required_role"), f"{rule.endpoint} writes but declares no role"


def test_403_is_a_friendly_page(guarded_app, user_factory):
    client = guarded_app.test_client()
    assert login(client, user_factory(Role.VIEWER)).status_code == 303
    response = client.post("/guarded/admin")
    assert response.status_code == 403
    assert b"You do not have permission" in response.data
    assert b'<nav class="site-nav"' in response.data  # the site's navigation, to go on


def test_csrf_token_is_required_on_state_changing_requests(app, user_factory):
    app.config["WTF_CSRF_ENABLED"] = True
    client = app.test_client()
    user = user_factory()
    # The login form itself is protected.
    assert (
        client.post("/login", data={"email": user.email, "password": PASSWORD}).status_code == 400
    )
    token = csrf_token_from(client.get("/login").data)
    response = client.post(
        "/login", data={"email": user.email, "password": PASSWORD, "csrf_token": token}
    )
    assert response.status_code == 303
    # htmx sends the token in a header, taken from <body hx-headers>.
    page = client.get("/").data
    assert b'hx-headers=\'{"X-CSRFToken": "' in page
    assert client.post("/logout").status_code == 400
    token = csrf_token_from(page)
    assert client.post("/logout", headers={"X-CSRFToken": token}).status_code == 303
