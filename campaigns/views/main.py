"""The dashboard, its live fragments, and the health check."""

from __future__ import annotations

from dataclasses import asdict

from flask import Blueprint, jsonify, render_template
from flask_login import current_user
from werkzeug.wrappers import Response

from campaigns import progress, queries, queues
from campaigns.htmx import STOP_POLLING
from campaigns.models import Notification, Role

bp = Blueprint("main", __name__)


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


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    """JSON for load balancers and `make run`: 200 when healthy, 503 otherwise."""
    health = queries.health()
    body = asdict(health) | {"healthy": health.healthy}
    return jsonify(body), 200 if health.healthy else 503
