"""The dashboard and the health check."""

from __future__ import annotations

from dataclasses import asdict

from flask import Blueprint, jsonify, render_template
from werkzeug.wrappers import Response

from campaigns import queries

bp = Blueprint("main", __name__)


@bp.get("/")
def dashboard() -> str:
    """What is going on: campaigns by status, templates, senders, workers."""
    return render_template("main/dashboard.html", summary=queries.dashboard_summary())


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    """JSON for load balancers and `make run`: 200 when healthy, 503 otherwise."""
    health = queries.health()
    body = asdict(health) | {"healthy": health.healthy}
    return jsonify(body), 200 if health.healthy else 503
