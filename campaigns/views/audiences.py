"""CSV audiences on the campaign form: the upload, answered with its mapping's choices.

``POST /audiences`` is what the campaign form's file input (``_audience_source.html``)
posts with htmx when a CSV is picked: it answers ``campaigns/_audience_file.html`` (the
file's hidden id, its name and rows, the phone column to choose, guessed, and a preview
of its first rows) and fires ``audience-changed``, on which the variables' mapping and
the language choice redraw with the file's columns as their choices. A refusal is said
there (422; 413 for a body over ``AUDIENCE_UPLOAD_MAX_MB``, read no further). The JSON
API's are in ``views/api.py`` (``/api/v1/audiences``).
"""

from __future__ import annotations

from flask import Blueprint, current_app, make_response, render_template, request
from flask import Response as FlaskResponse
from flask_login import current_user
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wrappers import Response

from campaigns import audiences, errors
from campaigns.auth import requires
from campaigns.edge import takes_upload
from campaigns.htmx import is_htmx
from campaigns.htmx import target as htmx_target
from campaigns.i18n import _
from campaigns.models import AudienceFile, Role
from campaigns.services import ServiceError

bp = Blueprint("audiences", __name__, url_prefix="/audiences")

AUDIENCE_CHANGED = "audience-changed"  # the event the mapping and languages redraw on


def file_partial(
    audience: AudienceFile | None,
    problems: dict[str, str] | None = None,
    phone_column: str | None = None,
) -> str:
    """The chosen file's facts, phone column and preview (or the refusal)."""
    return render_template(
        "campaigns/_audience_file.html",
        audience_file=audience,
        preview=audiences.preview(audience) if audience else [],
        phone_column=phone_column
        or (audiences.guess_phone_column(audience.columns) if audience else None),
        errors=problems or {},
    )


@bp.post("")
@takes_upload(limit_bytes=audiences.upload_limit_bytes)
@requires(Role.SUPERVISOR)  # who builds campaigns
def audience_create() -> FlaskResponse | tuple[str, int]:
    """Keep the picked CSV (``audience_file``) and answer its mapping's choices."""
    upload = request.files.get(audiences.FIELD)
    try:
        stored = audiences.import_csv(
            upload.stream if upload and upload.filename else None,
            upload.filename if upload else None,
            current_user.id,
            current_app.config,
        )
    except ServiceError as refused:
        return file_partial(None, {audiences.FIELD: refused.message}), 422
    response = make_response(file_partial(stored))
    # The mapping redraws with the file's columns once the hidden id is in the form.
    response.headers["HX-Trigger-After-Settle"] = AUDIENCE_CHANGED
    return response


@bp.errorhandler(RequestEntityTooLarge)
def too_large(error: RequestEntityTooLarge):
    """A body over the audience limit: said where the file's facts go, not an error page."""
    if request.endpoint != "audiences.audience_create":
        return errors.handle_http_error(error)
    message = _("The file is larger than an audience may be: at most %(n)s MB.") % {
        "n": current_app.config["AUDIENCE_UPLOAD_MAX_MB"]
    }
    response = Response(file_partial(None, {audiences.FIELD: message}), 413, mimetype="text/html")
    if is_htmx() and (where := htmx_target()):
        response.headers["HX-Retarget"] = f"#{where}"
        response.headers["HX-Reswap"] = "outerHTML"
    return response
