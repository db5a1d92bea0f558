"""The opt-out (suppression) list: search it, add a number, import a CSV, remove a number."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, flash, render_template, request, url_for
from flask_login import current_user
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wrappers import Response

from campaigns import errors, queries
from campaigns.auth import requires
from campaigns.config import MIB
from campaigns.edge import takes_upload
from campaigns.htmx import redirect_to
from campaigns.i18n import _
from campaigns.models import Role
from campaigns.services import NotFound, ServiceError
from campaigns.services.suppressions import (
    ImportReport,
    import_suppressions,
    remove_suppression,
    suppress,
)

bp = Blueprint("suppressions", __name__, url_prefix="/suppressions")


def _list_page() -> queries.SuppressionPage:
    return queries.list_suppressions(request.args.get("q"), request.args.get("page", 1, type=int))


def _index_page(
    form: Any = None,
    errors: dict[str, str] | None = None,
    report: ImportReport | None = None,
    status: int = 200,
) -> tuple[str, int]:
    """The whole page: the list, and for supervisors the add and import forms."""
    page = _list_page()
    body = render_template(
        "suppressions/index.html",
        page=page,
        q=request.args.get("q", ""),
        form=form or {},
        errors=errors or {},
        report=report,
    )
    return body, status


def _uploaded_text(upload: FileStorage | None) -> str:
    """The uploaded CSV as text, or ServiceError at the file field."""
    # No larger than MAX_UPLOAD_BYTES: the whole request is refused before that (413).
    data = upload.read() if upload and upload.filename else b""
    if not data:
        raise ServiceError(_("Choose a CSV file."), "file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Excel on Windows saves CSV in the local code page, not UTF-8.
        return data.decode("cp1252", errors="replace")


@bp.get("/")
def suppression_index() -> tuple[str, int]:
    """Numbers that opted out, with search and pagination."""
    return _index_page()


@bp.get("/rows")
def suppression_rows() -> str:
    """The list's rows alone, re-rendered by htmx as the search changes."""
    return render_template(
        "suppressions/_rows.html", page=_list_page(), q=request.args.get("q", "")
    )


@bp.post("/")
@requires(Role.SUPERVISOR)
def suppression_create():
    """Add one number, or 422 with the message at the field and what was typed."""
    try:
        suppression, created = suppress(
            request.form.get("phone", ""), request.form.get("reason", ""), "manual", current_user.id
        )
    except ServiceError as error:
        return _index_page(request.form, error.errors, status=422)
    message = (
        _("%(phone)s will receive no more campaigns.")
        if created
        else _("%(phone)s was already on the list; nothing changed.")
    )
    flash(message % {"phone": suppression.phone}, "success")
    return redirect_to(url_for("suppressions.suppression_index"))


@bp.errorhandler(RequestEntityTooLarge)
def too_large(error: RequestEntityTooLarge):
    """A file over MAX_UPLOAD_BYTES: the message at the file field, not an error page."""
    if request.endpoint != "suppressions.suppression_import":
        return errors.handle_http_error(error)
    limit = current_app.config["MAX_UPLOAD_BYTES"] / MIB
    message = _("The file is larger than %(n)s MB; split it.") % {"n": f"{limit:.3g}"}
    return _index_page(errors={"file": message}, status=413)


@bp.post("/import")
@takes_upload
@requires(Role.SUPERVISOR)
def suppression_import():
    """Add every number of an uploaded CSV and show what happened to each line."""
    try:
        report = import_suppressions(_uploaded_text(request.files.get("file")), current_user.id)
    except ServiceError as error:
        return _index_page(errors=error.errors, status=422)
    return _index_page(report=report)


@bp.post("/<int:suppression_id>/remove")
@requires(Role.SUPERVISOR)
def suppression_remove(suppression_id: int) -> Response:
    """Take a number off the list (the button asks for confirmation first)."""
    try:
        remove_suppression(suppression_id)
        flash(_("Removed from the opt-out list."), "success")
    except NotFound as error:
        flash(error.message, "error")
    return redirect_to(
        url_for(
            "suppressions.suppression_index",
            q=request.args.get("q") or None,
            page=request.args.get("page", type=int),
        )
    )
