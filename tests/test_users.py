from __future__ import annotations

import re

import pytest

from app import db
from campaigns.models import ApiToken, Role, User
from campaigns.services.users import create_api_token, user_for_token
from tests.helpers import login


@pytest.fixture
def admin(login_as):
    return login_as(Role.ADMIN)


def test_admin_creates_a_user_and_sees_the_password_once(client, admin):
    response = client.post("/users/", data={"email": "new@example.com", "role": "supervisor"})
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    match = re.search(r"Created new@example.com. Their password, shown once: (\S+)<", page)
    assert match
    assert_not_in_the_session(client, match.group(1))
    assert response.headers["Cache-Control"] == "no-store"
    again = client.get("/users/")
    assert again.status_code == 200
    assert match.group(1) not in again.get_data(as_text=True)
    user = db.session.query(User).filter_by(email="new@example.com").one()
    assert user.role is Role.SUPERVISOR
    other = client.application.test_client()
    assert login(other, user, password=match.group(1)).status_code == 303


def assert_not_in_the_session(client, secret: str) -> None:
    """The session cookie is signed, not encrypted: a secret in it could be read."""
    with client.session_transaction() as session:
        assert secret not in repr(dict(session))


def test_changing_role_and_limits(client, admin, user_factory):
    user = user_factory(Role.VIEWER)
    response = client.post(
        f"/users/{user.id}",
        data={
            "role": "supervisor",
            "campaign_rate_limit_per_minute": "50",
            "api_rate_limit_per_minute": "10",
        },
    )
    assert response.status_code == 303
    db.session.refresh(user)
    assert (user.role, user.campaign_rate_limit_per_minute, user.api_rate_limit_per_minute) == (
        Role.SUPERVISOR,
        50,
        10,
    )
    bad = client.post(
        f"/users/{user.id}", data={"role": "supervisor", "api_rate_limit_per_minute": "0"}
    )
    assert bad.status_code == 422
    assert 'id="api_rate_limit_per_minute-error"' in bad.get_data(as_text=True)


def test_admins_cannot_lock_themselves_out(client, admin):
    assert client.post(f"/users/{admin.id}", data={"role": "viewer"}).status_code == 422
    client.post(f"/users/{admin.id}/disable")
    db.session.refresh(admin)
    assert admin.is_disabled is False


def test_disabling_a_user_stops_their_tokens(client, admin, user_factory):
    user = user_factory(Role.SUPERVISOR)
    _token, raw = create_api_token(user.id)
    assert user_for_token(raw).id == user.id
    assert client.post(f"/users/{user.id}/disable").status_code == 303
    assert user_for_token(raw) is None
    client.post(f"/users/{user.id}/enable")
    assert user_for_token(raw).id == user.id


def test_reset_password(client, admin, user_factory):
    user = user_factory()
    response = client.post(f"/users/{user.id}/reset-password")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    password = re.search(r"New password for \S+, shown once: (\S+)<", page).group(1)
    assert_not_in_the_session(client, password)
    again = client.get("/users/")
    assert again.status_code == 200
    assert password not in again.get_data(as_text=True)
    other = client.application.test_client()
    assert login(other, user).status_code == 422  # the old one is gone
    assert login(other, user, password=password).status_code == 303


def test_reset_password_from_the_confirm_button_replaces_the_page(client, admin, user_factory):
    """The button asks first through htmx; the answer takes the page's place (no redirect
    could carry the password without the session)."""
    user = user_factory()
    response = client.post(f"/users/{user.id}/reset-password", headers={"HX-Request": "true"})
    assert response.status_code == 200
    assert (response.headers["HX-Retarget"], response.headers["HX-Reswap"]) == (
        "body",
        "innerHTML",
    )
    assert "shown once" in response.get_data(as_text=True)


def test_everyone_manages_their_own_tokens(client, login_as):
    viewer = login_as(Role.VIEWER)
    response = client.post("/me/tokens", data={"name": "erp sync"})
    body = response.get_data(as_text=True)
    raw = re.search(r"<code>(dsp_[^<]+)</code>", body).group(1)
    assert user_for_token(raw).id == viewer.id
    assert raw not in client.get("/me/tokens").get_data(as_text=True)  # shown once
    token = db.session.query(ApiToken).one()
    assert client.post(f"/me/tokens/{token.id}/revoke").status_code == 303
    assert user_for_token(raw) is None


def test_nobody_revokes_another_users_token(client, login_as, user_factory):
    other = user_factory()
    create_api_token(other.id)
    token = db.session.query(ApiToken).one()
    login_as(Role.ADMIN)
    assert client.post(f"/me/tokens/{token.id}/revoke").status_code == 404


@pytest.mark.parametrize("role", [Role.VIEWER, Role.SUPERVISOR])
def test_only_admins_manage_users(client, login_as, role):
    user = login_as(role)
    assert client.get("/users/").status_code == 403
    assert client.post(f"/users/{user.id}", data={"role": "admin"}).status_code == 403
