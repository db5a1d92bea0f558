"""Sign in and out."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_user, logout_user
from werkzeug.wrappers import Response

from campaigns.i18n import _
from campaigns.security import client_address
from campaigns.services.users import authenticate, sign_out_everywhere

bp = Blueprint("auth", __name__)


def safe_next(target: str | None) -> str:
    """Only follow a same-site relative ``next`` (no open redirects); else the dashboard.

    Browsers read a backslash as a slash and drop tabs and newlines, so ``/\\evil.example``
    and ``/<tab>/evil.example`` lead off-site too: a path with either is refused.
    """
    if target and target.startswith("/") and not target.startswith("//"):
        if not urlsplit(target).netloc and not re.search(r"[\\\x00-\x1f\x7f]", target):
            return target
    return url_for("main.dashboard")


@bp.get("/login")
def login() -> str | Response:
    """The sign-in form."""
    if current_user.is_authenticated:
        return redirect(safe_next(request.args.get("next")))
    return render_template("auth/login.html", email="", error=None)


@bp.post("/login")
def login_submit() -> tuple[str, int] | tuple[str, int, dict[str, str]] | Response:
    """Check the credentials; 422 re-renders the form with the reason, 429 while a
    run of failures makes sign-ins wait."""
    email = request.form.get("email", "")
    result = authenticate(email, request.form.get("password", ""), client_address())
    if result.retry_after:
        page = render_template("auth/login.html", email=email, error=result.error)
        return page, 429, {"Retry-After": str(result.retry_after)}
    if result.user is None:
        return render_template("auth/login.html", email=email, error=result.error), 422
    login_user(result.user)
    return redirect(safe_next(request.args.get("next")), code=303)


@bp.post("/logout")
def logout() -> Response:
    """End the session, and the user's sessions everywhere else."""
    sign_out_everywhere(current_user.id)
    logout_user()
    flash(_("You are signed out."), "info")
    return redirect(url_for("auth.login"), code=303)
