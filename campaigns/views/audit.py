"""The audit trail (admin): administrative actions, newest first, filtered by action and actor."""

from __future__ import annotations

from flask import Blueprint, render_template, request

from campaigns import audit
from campaigns.auth import requires
from campaigns.models import Role
from campaigns.validation import bigint

bp = Blueprint("audit", __name__, url_prefix="/audit")


@bp.get("/")
@requires(Role.ADMIN)
def audit_index() -> str:
    """One keyset page of events (``?before=`` the last id of the previous one)."""
    filters = audit.AuditFilters.from_args(request.args)
    page = audit.events_page(filters, request.args.get("before", type=bigint))
    return render_template("audit/index.html", page=page, filters=filters, actions=audit.ACTIONS)
