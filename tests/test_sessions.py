"""Sessions end when they should: sign-out, a new password, a new role or being
disabled ends the user's sessions everywhere, remember-me cookies included."""

from __future__ import annotations

import pytest
from flask_login.utils import encode_cookie

from campaigns.models import Role, User
from campaigns.services.users import sign_out_everywhere
from tests.helpers import browser, login


def signed_in_elsewhere(app, user: User):
    """A browser of its own, signed in as ``user``."""
    other = browser(app)
    assert login(other, user).status_code == 303
    assert is_signed_in(other)
    return other


@pytest.fixture
def admin_browser(app, user_factory):
    admin = user_factory(Role.ADMIN)
    return admin, signed_in_elsewhere(app, admin)


def is_signed_in(client) -> bool:
    return client.get("/").status_code == 200


def test_signing_out_ends_the_users_other_sessions(app, user_factory):
    user = user_factory()
    client, other = signed_in_elsewhere(app, user), signed_in_elsewhere(app, user)
    client.post("/logout")
    assert not is_signed_in(client)
    assert not is_signed_in(other)


def test_a_password_reset_ends_the_users_sessions(app, admin_browser, user_factory):
    _admin, client = admin_browser
    user = user_factory()
    theirs = signed_in_elsewhere(app, user)
    assert client.post(f"/users/{user.id}/reset-password").status_code == 200
    assert not is_signed_in(theirs)
    assert is_signed_in(client)  # the admin's own session is another user's


def test_resetting_ones_own_password_keeps_this_session_only(app, admin_browser):
    admin, client = admin_browser
    elsewhere = signed_in_elsewhere(app, admin)
    assert client.post(f"/users/{admin.id}/reset-password").status_code == 200
    assert is_signed_in(client)
    assert not is_signed_in(elsewhere)


def test_a_role_change_ends_the_users_sessions_and_a_limit_change_does_not(
    app, admin_browser, user_factory
):
    _admin, client = admin_browser
    user = user_factory(Role.SUPERVISOR)
    theirs = signed_in_elsewhere(app, user)
    limits = {"role": "supervisor", "campaign_rate_limit_per_minute": "50"}
    assert client.post(f"/users/{user.id}", data=limits).status_code == 303
    assert is_signed_in(theirs)
    assert client.post(f"/users/{user.id}", data={"role": "viewer"}).status_code == 303
    assert not is_signed_in(theirs)


def test_a_role_change_through_the_api_ends_the_users_sessions(app, user_factory):
    from campaigns.services.users import create_api_token

    _token, raw = create_api_token(user_factory(Role.ADMIN).id)
    user = user_factory(Role.SUPERVISOR)
    theirs = signed_in_elsewhere(app, user)
    response = browser(app).patch(
        f"/api/v1/users/{user.id}",
        json={"role": "viewer"},
        headers={"Authorization": f"Bearer {raw}"},
    )
    assert response.status_code == 200
    assert not is_signed_in(theirs)


def test_a_disabled_users_sessions_stay_ended_when_re_enabled(app, admin_browser, user_factory):
    _admin, client = admin_browser
    user = user_factory()
    theirs = signed_in_elsewhere(app, user)
    assert client.post(f"/users/{user.id}/disable").status_code == 303
    assert not is_signed_in(theirs)
    assert client.post(f"/users/{user.id}/enable").status_code == 303
    assert not is_signed_in(theirs)  # enabling lets them sign in again, not back in
    assert login(theirs, user).status_code == 303


def test_a_remember_me_cookie_ends_with_the_sessions(app, user_factory):
    user = user_factory()
    cookie = encode_cookie(user.get_id())  # what login_user(remember=True) sets
    remembered = browser(app)
    remembered.set_cookie(app.config.get("REMEMBER_COOKIE_NAME", "remember_token"), cookie)
    assert is_signed_in(remembered)
    sign_out_everywhere(user.id)
    remembered.delete_cookie("session")  # the remember-me cookie alone
    assert not is_signed_in(remembered)


def test_a_session_from_before_session_versions_is_signed_out(app, user_factory):
    user = user_factory()
    client = browser(app)
    with client.session_transaction() as session:
        session["_user_id"] = str(user.id)
        session["_fresh"] = True
    assert not is_signed_in(client)
