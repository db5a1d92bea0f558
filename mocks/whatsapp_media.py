"""The mock WhatsApp's Media API: a file uploaded for a media header gets a media id.

``POST /mock/whatsapp/<version>/<phone_number_id>/media`` takes Meta's multipart form
(``messaging_product=whatsapp``, ``type`` the file's content type, ``file``) and
answers ``{"id": "<media id>"}``, keeping the id with the type and size in
``mock_whatsapp_media`` (the bytes are read and dropped). It refuses as Meta does,
with Meta's error JSON (``mocks/whatsapp.py``'s :func:`~mocks.whatsapp.error_body`):
no ``file`` or an empty one, ``messaging_product`` other than ``whatsapp``, a ``type``
WhatsApp does not take for a header, or a file over that type's maximum (code 100,
HTTP 400; the types and limits are Disparo's own, ``campaigns/media.py``). A bearer
token, when one is sent, must be the access token of a sender with that phone number
id (Meta's 401, code 190); the mock provider sends none for a token-less sender.

The send's check (``mocks/template_check.py``, :func:`~mocks.template_check.media_exists`)
refuses a header naming an id this never gave with Meta's 131053.
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from flask import jsonify, request
from werkzeug.wrappers import Response

from app import db
from campaigns.edge import takes_upload
from campaigns.media import CHUNK_BYTES, KINDS, REQUEST_LIMIT_BYTES
from campaigns.models import Sender
from mocks.models import MockWhatsAppMedia
from mocks.whatsapp import MetaError, _invalid, bp

# Every content type a header may carry, with its kind's maximum.
MAX_BYTES = {
    content_type: kind.max_bytes for kind in KINDS.values() for content_type in kind.content_types
}


def _check_token(phone_number_id: str) -> None:
    """A token given must be one of the number's senders' (Meta's 401, code 190)."""
    given = request.headers.get("Authorization")
    if given is None:
        return
    scheme, _sep, token = given.partition(" ")
    tokens = db.session.scalars(
        sa.select(Sender.access_token).where(Sender.phone_number_id == phone_number_id)
    )
    if scheme != "Bearer" or token not in set(tokens):
        raise MetaError(
            (190, 401, "Invalid OAuth access token"),
            "The access token is not one of this phone number's.",
        )


@bp.post("/<version>/<phone_number_id>/media")
@takes_upload(limit_bytes=REQUEST_LIMIT_BYTES)  # as Disparo's own upload: up to 100 MB
def media_upload(version: str, phone_number_id: str) -> tuple[Response, int]:
    """Keep an uploaded file's id, type and size as Meta's Media API would; its id."""
    if not phone_number_id.isdigit():
        raise _invalid("phone number id must be digits")
    _check_token(phone_number_id)
    if request.form.get("messaging_product") != "whatsapp":
        raise _invalid("messaging_product must be whatsapp")
    mime_type = request.form.get("type", "")
    if mime_type not in MAX_BYTES:
        raise _invalid(
            "Param file must be a file with one of the following types: "
            + ", ".join(sorted(MAX_BYTES))
        )
    upload = request.files.get("file")
    if upload is None:
        raise _invalid("The parameter file is required.")
    size = 0
    while chunk := upload.stream.read(CHUNK_BYTES):
        size += len(chunk)
    if not size:
        raise _invalid("Param file must be a file with one of the following types: non-empty")
    if size > MAX_BYTES[mime_type]:
        raise _invalid(f"Param file must be at most {MAX_BYTES[mime_type]} bytes for {mime_type}")
    media = MockWhatsAppMedia(
        id=str(secrets.randbelow(10**16 - 10**15) + 10**15),  # Meta's: 16 digits
        phone_number_id=phone_number_id,
        mime_type=mime_type,
        size=size,
    )
    db.session.add(media)
    db.session.commit()
    return jsonify(id=media.id), 200
