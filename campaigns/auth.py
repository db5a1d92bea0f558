"""Login sessions and cumulative roles, enforced in one place for every route.

Every endpoint needs a signed-in user with at least the role its view declares
(``@requires(Role.SUPERVISOR)``; undeclared means viewer), except the few public
ones below. Blueprints that authenticate otherwise (API tokens, signed provider
webhooks) are listed in ``SELF_AUTHENTICATED_BLUEPRINTS``; the development mocks
(every blueprint named ``mock_…``) stand in for outside systems and need no login.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, Response, abort, redirect, request, url_for
from flask_login import current_user, login_user
from werkzeug.wrappers import Response as BaseResponse

from app import db, htmx, login_manager
from campaigns.errors import json_error
from campaigns.i18n import _
from campaigns.models import Role, User

PUBLIC_ENDPOINTS = frozenset(
    {
        "static",
        "auth.login",
        "auth.login_submit",
        "main.healthz",
        "main.livez",
        "main.readyz",
        # The API's description: it holds no data, and a client reads it before it has a token.
        "api_docs.document",
        "api_docs.page",
        # A recipient's tap on a campaign's tracked link: its signed token admits it.
        "links.follow",
    }
)
SELF_AUTHENTICATED_BLUEPRINTS = frozenset({"api", "webhooks", "metrics"})
# Mock blueprints are registered only when MOCKS_ENABLED, never in production.
MOCK_BLUEPRINT_PREFIX = "mock_"

F = TypeVar("F", bound=Callable[..., Any])


def requires(role: Role) -> Callable[[F], F]:
    """Declare the least role a view needs; :func:`enforce_roles` checks it."""

    def decorate(view: F) -> F:
        view.required_role = role  # type: ignore[attr-defined]
        return view

    return decorate


def is_self_authenticated(blueprint: str) -> bool:
    """Whether a blueprint checks its callers itself (or, for the mocks, needs no check)."""
    return blueprint in SELF_AUTHENTICATED_BLUEPRINTS or blueprint.startswith(MOCK_BLUEPRINT_PREFIX)


def required_role(app: Flask, endpoint: str) -> Role | None:
    """The role an endpoint needs, or None when it is public or authenticates itself."""
    if endpoint in PUBLIC_ENDPOINTS:
        return None
    if is_self_authenticated(endpoint.partition(".")[0]):
        return None
    view = app.view_functions.get(endpoint)
    return getattr(view, "required_role", Role.VIEWER)


def enforce_roles() -> Any:
    """before_request: fail closed — unknown endpoints still need a signed-in user."""
    from flask import current_app

    if request.endpoint is None:  # 404 / 405: let the error handlers answer
        return None
    role = required_role(current_app, request.endpoint)
    if role is None:
        return None
    if not current_user.is_authenticated:
        return unauthorized()
    if not current_user.can(role):
        abort(403)
    return None


@login_manager.user_loader
def load_user(session_id: str) -> User | None:
    """The session's user, unless disabled or its session version moved on (User.get_id):
    sign-out, a new password, a new role or being disabled ends every other session."""
    user_id, _sep, version = session_id.partition(":")
    try:
        key, issued_under = int(user_id), int(version)
    except ValueError:  # a session from before versions: signed out
        return None
    user = db.session.get(User, key)
    if user is None or not user.is_active or user.session_version != issued_under:
        return None
    return user


def keep_session(user: User) -> None:
    """After a change that ended ``user``'s sessions: keep this request's, if it is theirs."""
    if current_user.is_authenticated and current_user.id == user.id:
        login_user(user)


@login_manager.unauthorized_handler
def unauthorized() -> BaseResponse:
    """Send the browser to the login page; htmx needs a full-page redirect, not a swap."""
    login_url = url_for("auth.login", next=request.full_path.rstrip("?"))
    if htmx:
        response = Response(status=401)
        response.headers["HX-Redirect"] = login_url
        return response
    if request.accept_mimetypes.best == "application/json":
        return json_error(401, "unauthenticated", _("Sign in first."))
    return redirect(login_url)


def init_app(app: Flask) -> None:
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    login_manager.session_protection = "basic"
    app.before_request(enforce_roles)
