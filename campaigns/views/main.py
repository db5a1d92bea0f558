"""The dashboard, its live fragments, and the health checks (/livez, /readyz, /healthz)."""

from __future__ import annotations

from dataclasses import asdict

from flask import Blueprint, current_app, flash, jsonify, redirect, render_template, request
from flask_login import current_user
from werkzeug.wrappers import Response

from campaigns import progress, queries, queues
from campaigns.auth import requires
from campaigns.htmx import STOP_POLLING
from campaigns.i18n import _
from campaigns.models import Notification, Role
from campaigns.views.auth import safe_next

bp = Blueprint("main", __name__)

# The colour scheme a reader chose (base.html reads the cookie): absent, it follows the
# system's. A cookie, not the user row: it is this browser's screen, and no query reads it.
THEME_COOKIE = "theme"
THEMES = frozenset({"auto", "light", "dark"})
THEME_COOKIE_SECONDS = 400 * 24 * 3600  # the longest a browser keeps one


def _notifications() -> list[tuple[Notification, str]]:
    """Admins watch every owner's notifications; everyone else reads their own."""
    return queries.recent_notifications(None if current_user.can(Role.ADMIN) else current_user.id)


def notifications_fragment(oob: bool = False) -> str:
    """The dashboard's notifications; with ``oob``, the nav's unread badge comes along."""
    return render_template(
        "main/_notifications.html",
        notifications=_notifications(),
        unread=queries.unread_notifications(current_user.id),
        oob=oob,
    )


@bp.get("/")
def dashboard() -> str:
    """Live campaigns, rate limits, queue health and recent notifications."""
    return render_template(
        "main/dashboard.html",
        summary=queries.dashboard_summary(),
        active=progress.active_campaigns(),
        limits=progress.limits_now(),
        health=queues.queue_health(),
        notifications=_notifications(),
        unread=queries.unread_notifications(current_user.id),  # the fragment's and the nav's
    )


@bp.get("/dashboard/campaigns")
def dashboard_campaigns() -> tuple[str, int]:
    """Every active campaign's progress in one poll; 286 once none is live."""
    active = progress.active_campaigns()
    body = render_template("main/_campaigns.html", active=active)
    return body, 200 if active.any_live else STOP_POLLING


@bp.get("/dashboard/limits")
def dashboard_limits() -> str:
    """Rate limits now: used / limit and the next slot, per sender and per owner."""
    return render_template("main/_limits.html", limits=progress.limits_now())


@bp.get("/dashboard/queues")
def dashboard_queues() -> str:
    """Queue health: jobs per queue, workers and their heartbeats, stalled jobs."""
    return render_template("main/_queues.html", health=queues.queue_health())


@bp.get("/dashboard/notifications")
def dashboard_notifications() -> str:
    """The newest notifications, polled; the nav's badge follows them out of band."""
    return notifications_fragment(oob=True)


@bp.post("/theme")
@requires(Role.VIEWER)
def set_theme() -> Response:
    """Remember this browser's colour scheme (auto: the system's) and go back where it was."""
    theme = request.form.get("theme", "")
    response = redirect(safe_next(request.form.get("next")), code=303)
    if theme not in THEMES:
        flash(_("Choose automatic, light or dark colours."), "error")
    elif theme == "auto":
        response.delete_cookie(THEME_COOKIE)
    else:
        response.set_cookie(
            THEME_COOKIE,
            theme,
            max_age=THEME_COOKIE_SECONDS,
            secure=current_app.config["SESSION_COOKIE_SECURE"],
            httponly=True,
            samesite="Lax",
        )
    return response


@bp.get("/livez")
def livez() -> tuple[Response, int]:
    """The process answers (no database): a platform restarts it when this fails."""
    return jsonify(live=True), 200


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Can this process serve? 200 when the database answers at the code's migration head,
    503 otherwise; what a router's health check should use (workers are /healthz's and
    /metrics' concern, not a reason to stop serving pages)."""
    readiness = queries.readiness()
    body = asdict(readiness) | {"ready": readiness.ready}
    return jsonify(body), 200 if readiness.ready else 503


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    """JSON for load balancers and `make run`: 200 when healthy, 503 otherwise."""
    health = queries.health()
    body = asdict(health) | {"healthy": health.healthy}
    return jsonify(body), 200 if health.healthy else 503
