"""Media files for template headers: upload one from the template form, serve one back.

``POST /media`` is what the template form's file field (``templates/media/_field.html``)
posts with htmx when a file is picked: it answers ``templates/media/_picked.html``, the
new file's hidden ``header_media_file_id`` and preview, or the refusal there (422; 413
for a body over the media limit, read no further). ``GET /media/<id>`` serves a file's
bytes to signed-in users. The JSON API's are in ``views/api.py`` (``/api/v1/media``).
"""

from __future__ import annotations

import unicodedata
from urllib.parse import quote

from flask import Blueprint, abort, make_response, render_template, request
from flask import Response as FlaskResponse
from flask_login import current_user
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wrappers import Response

from campaigns import errors, media
from campaigns.auth import requires
from campaigns.edge import takes_upload
from campaigns.htmx import is_htmx
from campaigns.htmx import target as htmx_target
from campaigns.i18n import _
from campaigns.models import MediaFile, Role
from campaigns.services import ServiceError
from campaigns.validation import bigint

bp = Blueprint("media", __name__, url_prefix="/media")

# Served inline (shown in the page or the browser's viewer); other documents download.
INLINE_TYPES = frozenset(
    {*media.KINDS["IMAGE"].content_types, *media.KINDS["VIDEO"].content_types, media.PDF}
)
# The file cannot change (its id stands for its bytes): a browser may keep it.
CACHE_CONTROL = "private, max-age=604800, immutable"


@bp.app_template_global("media_accept")
def media_accept(kind: str) -> str:
    """The file input's ``accept`` for a media kind (templates/media/_field.html)."""
    return media.accept(kind) if media.kind_of(kind) else ""


@bp.app_template_global("media_limits")
def media_limits(kind: str) -> str:
    """What WhatsApp takes for a media kind, in words: its types and its maximum."""
    allowed = media.KINDS.get(media.kind_of(kind) or "")
    if allowed is None:
        return ""
    return _("%(types)s, at most %(n)s MB.") % {
        "types": allowed.extensions.replace(" ", ", "),
        "n": f"{media.size_mb(allowed.max_bytes):g}",
    }


MEDIA_PICKED = "media-picked"  # the event a kept file fires on its input


def _picked(
    media_file: MediaFile | None, problems: dict[str, str] | None = None, status: int = 200
) -> tuple[str, int]:
    return render_template(
        "media/_picked.html", media_file=media_file, errors=problems or {}
    ), status


def _previous() -> MediaFile | None:
    """The file the form had before this pick (kept when the new one is refused)."""
    previous = request.form.get("header_media_file_id", type=bigint)
    return media.get(previous) if previous is not None and previous > 0 else None


@bp.post("")
@takes_upload(limit_bytes=media.REQUEST_LIMIT_BYTES)
@requires(Role.SUPERVISOR)  # who edits templates
def media_create() -> FlaskResponse | tuple[str, int]:
    """Keep the picked file (``file``, of ``kind``, else the form's ``header_format``)
    and answer its hidden id and preview, or the refusal with the earlier file kept."""
    kind = media.kind_of(request.form.get("kind") or request.form.get("header_format"))
    upload = request.files.get("file")
    try:
        if kind is None:
            raise ServiceError(_("Choose an image, a video or a document."), media.FIELD)
        stored = media.store(
            upload.stream if upload and upload.filename else None,
            upload.filename if upload else None,
            kind,
            current_user.id,
        )
    except ServiceError as refused:
        return _picked(_previous(), {media.FIELD: refused.message}, 422)
    # The template's preview draws itself again with the file (templates/_preview.html),
    # once the hidden id is in the form: after the swap, not on arrival (HX-Trigger).
    response = make_response(_picked(stored))
    response.headers["HX-Trigger-After-Settle"] = MEDIA_PICKED
    return response


@bp.errorhandler(RequestEntityTooLarge)
def too_large(error: RequestEntityTooLarge):
    """A body over the media limit: the message where the preview goes, not an error page
    (the body was not read, so the earlier file is not known: the form keeps its own)."""
    if request.endpoint != "media.media_create":
        return errors.handle_http_error(error)
    limit = media.size_mb(media.LARGEST_BYTES)
    message = _("The file is larger than WhatsApp takes: at most %(n)s MB.") % {"n": f"{limit:g}"}
    body, status = _picked(None, {media.FIELD: message}, 413)
    response = Response(body, status, mimetype="text/html")
    if is_htmx() and (where := htmx_target()):
        # In place of the preview, not the flash area base.html sends a 4xx to.
        response.headers["HX-Retarget"] = f"#{where}"
        response.headers["HX-Reswap"] = "outerHTML"
    return response


def content_disposition(media_file: MediaFile) -> dict[str, str]:
    """``Content-Disposition``'s value and its filename parameters, as werkzeug's
    send_file writes them: an ASCII ``filename`` and, for any other name, ``filename*``."""
    value = "inline" if media_file.content_type in INLINE_TYPES else "attachment"
    name = media_file.filename
    try:
        name.encode("ascii")
    except UnicodeEncodeError:
        simple = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
        return {
            "_value": value,
            "filename": simple or "file",
            "filename*": f"UTF-8''{quote(name, safe='!#$&+-.^_`|~')}",
        }
    return {"_value": value, "filename": name}


@bp.get("/<bigint:media_file_id>", endpoint="media_file")
def media_show(media_file_id: int) -> Response:
    """The file's bytes, streamed a chunk at a time from Postgres (a Range of them too)."""
    media_file = media.get(media_file_id)
    if media_file is None:
        abort(404)
    response = Response(
        media.open_chunks(media_file.id),
        mimetype=media_file.content_type,
        direct_passthrough=True,
    )
    response.content_length = media_file.size
    disposition = content_disposition(media_file)
    response.headers.set("Content-Disposition", disposition.pop("_value"), **disposition)
    response.headers["Cache-Control"] = CACHE_CONTROL
    response.set_etag(media_file.sha256)
    # 304 for a copy the browser has; a Range (a video's player asks for them, Safari's
    # plays nothing without) is cut from the chunks as they stream, up to its end.
    return response.make_conditional(request, accept_ranges=True, complete_length=media_file.size)
