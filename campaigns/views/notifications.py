"""The signed-in user's notifications: the page of them all, and marking them read.

Everyone reads and marks their own only, admins too (the dashboard shows admins
everyone's, but the unread badge is about the user's own inbox). A mark answers htmx
with the list it was made from, re-rendered with the nav's badge out of band, and a
plain form with 303 back to ``next``.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import parse_qsl, urlsplit

from flask import Blueprint, abort, flash, render_template, request
from flask_login import current_user
from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Response

from campaigns import queries
from campaigns.auth import requires
from campaigns.htmx import redirect_to, target
from campaigns.i18n import ngettext
from campaigns.models import Role
from campaigns.services import NotFound
from campaigns.services.notifications import mark_all_read, mark_read
from campaigns.validation import bigint
from campaigns.views import main
from campaigns.views.auth import safe_next

bp = Blueprint("notifications", __name__, url_prefix="/notifications")

# The ids of the two lists a mark can come from (main/_notifications.html and
# notifications/_list.html), which htmx names in HX-Target.
DASHBOARD_LIST = "dashboard-notifications"
PAGE_LIST = "notification-list"


def _page_context(args: Mapping[str, str]) -> dict:
    """What the page and its list draw, for the filter and page in ``args``."""
    unread_only = bool(args.get("unread"))
    try:
        page = int(args.get("page", 1))
    except ValueError:
        page = 1
    return {
        "page": queries.list_notifications(current_user.id, unread_only, page),
        "unread_only": unread_only,
        "unread": queries.unread_notifications(current_user.id),  # the list's and the nav's
    }


@bp.get("/")
def notification_index() -> str:
    """All of the user's own notifications, newest first, or only the unread ones."""
    return render_template("notifications/index.html", **_page_context(request.args))


def _fragment_for(next_url: str) -> str | None:
    """The list an htmx mark came from, re-rendered with the badge; None for a plain form."""
    swapped = target()
    if swapped == DASHBOARD_LIST:
        return main.notifications_fragment(oob=True)
    if swapped == PAGE_LIST:
        # next is the page the list is on: its filter and page number are the list's.
        args = MultiDict(parse_qsl(urlsplit(next_url).query))
        return render_template("notifications/_list.html", **_page_context(args), oob=True)
    return None


@bp.post("/<bigint:notification_id>/read")
@requires(Role.VIEWER)  # anyone signed in, on their own notifications
def notification_read(notification_id: int) -> str | Response:
    """Mark one of the user's own notifications read (again: nothing changes)."""
    next_url = safe_next(request.args.get("next"))
    try:
        mark_read(notification_id, current_user.id)
    except NotFound:
        abort(404)
    fragment = _fragment_for(next_url)
    return fragment if fragment is not None else redirect_to(next_url)


@bp.post("/read-all")
@requires(Role.VIEWER)
def notification_read_all() -> str | Response:
    """Mark the user's unread notifications read, up to the newest the page showed."""
    next_url = safe_next(request.args.get("next"))
    marked = mark_all_read(current_user.id, request.form.get("up_to", type=bigint))
    fragment = _fragment_for(next_url)
    if fragment is not None:
        return fragment
    if marked:
        message = ngettext(
            "%(num)d notification marked as read.", "%(num)d notifications marked as read.", marked
        )
        flash(message, "success")  # ngettext filled in num
    return redirect_to(next_url)
