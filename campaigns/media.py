"""Media files for headers: stored, served, and uploaded to WhatsApp once per sender.

A template's image, video or document header may be a file uploaded to Disparo. It is
kept in Postgres (``media_files``, its bytes in ``media_file_chunks`` of at most
:data:`CHUNK_BYTES`): the one store the web process and the workers share on any
deploy (a Heroku-style platform has no shared disk), and one that backups already
cover. A file is written once (:func:`store`) and never changed: its id stands for
its bytes, so a media id WhatsApp gave for it stays right.

What is accepted is Meta's, per kind (:data:`KINDS`): the content types WhatsApp's
Media API takes and its size limits. The type is read from the file's own first bytes
(its magic number; the extension only tells apart formats that share one: the Office
files, and plain text, which has none), never from the browser's Content-Type.

Sending names the file by the media id WhatsApp's Media API gave for it
(:func:`media_id_for`): uploaded the first time a sender needs it, kept in
``media_uploads`` and reused for :data:`MEDIA_REUSE_DAYS` (Meta keeps an upload 30
days), uploaded once however many batches ask at the same time.

Files no template names are deleted a day after they were uploaded
(:func:`delete_unused`, from the periodic maintenance): what an operator uploaded
while editing a template and then did not save.
"""

from __future__ import annotations

import codecs
import hashlib
import logging
import re
import unicodedata
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import IO, Any

import requests
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from app import AnySession, db, rows_changed
from campaigns import providers, template_parts
from campaigns.i18n import _
from campaigns.models import HeaderFormat, MediaFile, MediaFileChunk, MessageTemplate, Sender
from campaigns.providers.base import MediaSample
from campaigns.services import ServiceError

logger = logging.getLogger(__name__)

MB = 1_000_000  # Meta's "MB": decimal, so a file within ours is within theirs either way
CHUNK_BYTES = 1024 * 1024  # a media_file_chunks row (migration 0026 says at most 1 MiB)
# The form field a refusal is reported at: the template form's header file.
FIELD = "header_media_file"
# Meta keeps an uploaded file 30 days; a day less leaves room for a campaign's last batch.
MEDIA_REUSE_DAYS = 29
# A file no template names is kept this long (the operator may still be editing one).
UNUSED_AFTER = timedelta(days=1)

PDF = "application/pdf"
TEXT = "text/plain"
# The Office formats by extension, for files whose bytes say only "OLE" or "ZIP".
OLE_TYPES = {
    ".doc": "application/msword",
    ".xls": "application/vnd.ms-excel",
    ".ppt": "application/vnd.ms-powerpoint",
}
OOXML_TYPES = {
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ".pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
}


@dataclass(frozen=True)
class Kind:
    """What WhatsApp's Media API takes for one kind of header."""

    max_bytes: int
    content_types: tuple[str, ...]
    extensions: str  # for the file input's accept and the refusal's words


# Meta's supported media (Cloud API reference, "Supported media types"): images JPEG
# and PNG up to 5 MB; videos MP4 and 3GPP (H.264 and AAC) up to 16 MB; documents PDF,
# plain text and Microsoft Office up to 100 MB.
KINDS: dict[str, Kind] = {
    HeaderFormat.IMAGE: Kind(5 * MB, ("image/jpeg", "image/png"), ".jpg .jpeg .png"),
    HeaderFormat.VIDEO: Kind(16 * MB, ("video/mp4", "video/3gpp"), ".mp4 .3gp"),
    HeaderFormat.DOCUMENT: Kind(
        100 * MB,
        (PDF, TEXT, *OLE_TYPES.values(), *OOXML_TYPES.values()),
        ".pdf .txt .doc .docx .xls .xlsx .ppt .pptx",
    ),
}
# The largest file of any kind, and a request carrying it: the form's other fields and
# the multipart framing take well under this much more.
LARGEST_BYTES = max(kind.max_bytes for kind in KINDS.values())
FORM_OVERHEAD_BYTES = 1024 * 1024
REQUEST_LIMIT_BYTES = LARGEST_BYTES + FORM_OVERHEAD_BYTES

# An MP4 file's brands that are not a video Meta takes: QuickTime, HEIF/AVIF images, audio.
NOT_VIDEO_BRANDS = frozenset(
    {b"qt  ", b"heic", b"heix", b"mif1", b"msf1", b"avif", b"M4A ", b"M4B ", b"M4P "}
)


def kind_of(value: Any) -> str | None:
    """The media kind named (IMAGE, VIDEO, DOCUMENT, any case), or None."""
    name = str(value or "").strip().upper()
    return name if name in KINDS else None


def accept(kind: str) -> str:
    """A file input's ``accept`` for the kind: its extensions and content types."""
    allowed = KINDS[kind]
    return ",".join([*allowed.extensions.split(), *allowed.content_types])


def size_mb(size: int) -> float:
    """A size in Meta's MB, for the words that show it."""
    return size / MB


def _extension(filename: str) -> str:
    dot = filename.rfind(".")
    return filename[dot:].lower() if dot > 0 else ""


def sniff(head: bytes, filename: str) -> str | None:
    """The content type the file's first bytes say (the extension only where formats
    share their magic number); None when they say nothing WhatsApp takes. Plain text
    is only a guess from the extension here: :func:`store` checks the whole file."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"%PDF-"):
        return PDF
    if head[4:8] == b"ftyp" and len(head) >= 12:
        brand = head[8:12]
        if brand.startswith(b"3g"):
            return "video/3gpp"
        return None if brand in NOT_VIDEO_BRANDS else "video/mp4"
    extension = _extension(filename)
    if head.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):  # OLE: the old Office files
        return OLE_TYPES.get(extension)
    if head.startswith(b"PK\x03\x04"):  # ZIP: the Office Open XML files
        return OOXML_TYPES.get(extension)
    if extension == ".txt":
        return TEXT
    return None


def clean_filename(raw: str | None, kind: str) -> str:
    """The name a file is kept and served under: its last path part, without control
    characters (a NUL would not store), at most 255 characters keeping the extension."""
    name = re.split(r"[\\/]", raw or "")[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C").strip(" .")
    name = name.encode("utf-8", "replace").decode("utf-8")  # no lone surrogates
    if not name:
        name = kind.lower()
    if len(name) > 255:
        extension = _extension(name)[:16]
        name = name[: 255 - len(extension)] + extension
    return name


def _refuse_type(kind: str) -> ServiceError:
    return ServiceError(
        _("This file is not one WhatsApp takes for this header. Choose %(types)s.")
        % {"types": KINDS[kind].extensions.replace(" ", ", ")},
        FIELD,
    )


def _refuse_size(kind: str) -> ServiceError:
    return ServiceError(
        _("The file is larger than WhatsApp takes for this header: at most %(n)s MB.")
        % {"n": f"{size_mb(KINDS[kind].max_bytes):g}"},
        FIELD,
    )


INSERT_CHUNK = sa.insert(MediaFileChunk)


def store(
    stream: IO[bytes] | None, filename: str | None, kind: str, user_id: int | None
) -> MediaFile:
    """Keep an uploaded file: read a chunk at a time (werkzeug spooled it to disk), each
    written as a ``media_file_chunks`` row as it comes, so memory stays one chunk;
    committed. ServiceError at :data:`FIELD` for no file or an empty one, bytes that are
    not one of the kind's types, or more than the kind's maximum (reading stops one byte
    past it)."""
    allowed = KINDS.get(kind)
    if allowed is None:
        raise ServiceError(_("Choose an image, a video or a document."), "kind")
    if stream is None:
        raise ServiceError(_("Choose a file."), FIELD)
    name = clean_filename(filename, kind)
    first = stream.read(CHUNK_BYTES)
    if not first:
        raise ServiceError(_("The file is empty."), FIELD)
    content_type = sniff(first, name)
    if content_type not in allowed.content_types:
        raise _refuse_type(kind)
    text = codecs.getincrementaldecoder("utf-8")() if content_type == TEXT else None
    media = MediaFile(
        kind=kind,
        filename=name,
        content_type=content_type,
        size=0,
        sha256="",
        created_by_id=user_id,
    )
    try:
        db.session.add(media)
        db.session.flush()  # its id, for the chunks
        digest, size, seq, chunk = hashlib.sha256(), 0, 0, first
        while chunk:
            size += len(chunk)
            if size > allowed.max_bytes:
                raise _refuse_size(kind)
            if text is not None and not _is_text(text, chunk):
                raise _refuse_type(kind)
            digest.update(chunk)
            # Core, not ORM objects: the session keeps no chunk once it is written.
            db.session.execute(INSERT_CHUNK, {"media_file_id": media.id, "seq": seq, "data": chunk})
            seq += 1
            # Never more than one byte past the maximum.
            chunk = stream.read(min(CHUNK_BYTES, allowed.max_bytes + 1 - size))
        if text is not None and not _is_text(text, b"", final=True):
            raise _refuse_type(kind)
        media.size, media.sha256 = size, digest.hexdigest()
        db.session.commit()
    except BaseException:
        db.session.rollback()
        raise
    return media


def _is_text(decoder: codecs.IncrementalDecoder, chunk: bytes, final: bool = False) -> bool:
    """Whether the file read so far is UTF-8 text (a NUL byte says it is not)."""
    try:
        decoder.decode(chunk, final)
    except UnicodeDecodeError:
        return False
    return b"\x00" not in chunk


def get(media_file_id: int) -> MediaFile | None:
    return db.session.get(MediaFile, media_file_id)


NEXT_CHUNK = sa.text(
    """
    SELECT seq, data FROM media_file_chunks
     WHERE media_file_id = :id AND seq > :after
     ORDER BY seq
     LIMIT 1
    """
)


def open_chunks(media_file_id: int, connection: sa.Connection | None = None) -> Iterator[bytes]:
    """The file's bytes, a chunk at a time, each read when it is wanted: on
    ``connection`` if given, else on a pooled connection taken for each chunk only, so
    a slow download (a streamed response, read after its request's context ended)
    holds neither a connection nor a transaction between chunks."""
    engine = db.engine  # now, while there is an app context
    return _chunks(media_file_id, connection, engine)


def _chunks(
    media_file_id: int, connection: sa.Connection | None, engine: sa.Engine
) -> Iterator[bytes]:
    after = -1
    while True:
        params = {"id": media_file_id, "after": after}
        if connection is not None:
            row = connection.execute(NEXT_CHUNK, params).first()
        else:
            with engine.connect() as own:
                row = own.execute(NEXT_CHUNK, params).first()
        if row is None:
            return
        after = row.seq
        yield bytes(row.data)


DELETE_UNUSED = sa.text(
    """
    -- files no template names, past their grace (a batch; maintenance comes back)
    DELETE FROM media_files
     WHERE id = ANY(ARRAY(
           SELECT f.id FROM media_files f
            WHERE f.created_at < now() - make_interval(secs => :older_than)
              AND NOT EXISTS (SELECT 1 FROM message_templates t
                               WHERE t.header_media_file_id = f.id)
            ORDER BY f.id
            LIMIT :batch
              FOR UPDATE SKIP LOCKED))
    """
)


def delete_unused(
    session: AnySession, older_than: timedelta = UNUSED_AFTER, batch: int = 20
) -> int:
    """Delete up to ``batch`` files no template names, uploaded more than ``older_than``
    ago, with their chunks and media ids (the caller commits); how many. A template
    saved naming one at that very moment keeps it: its row lock skips the file, or,
    committed just before, the foreign key refuses the delete, and this run deletes
    nothing (a savepoint keeps the caller's other work)."""
    try:
        with session.begin_nested():
            return rows_changed(
                session,
                DELETE_UNUSED.bindparams(older_than=older_than.total_seconds(), batch=batch),
            )
    except IntegrityError:
        logger.info("media: a file became used while unused ones were deleted; next run")
        return 0


class MediaFileMissing(LookupError):
    """The media file asked for does not exist (a template names only existing ones)."""


# One upload per (file, sender) at a time: a session-level lock on its own connection,
# so it is held across the HTTP call while no transaction is open.
LOCK = sa.text("SELECT pg_advisory_lock(hashtextextended(:key, 0))")
UNLOCK = sa.text("SELECT pg_advisory_unlock(hashtextextended(:key, 0))")
FRESH_UPLOAD = sa.text(
    """
    SELECT provider_media_id FROM media_uploads
     WHERE media_file_id = :file AND sender_id = :sender
       AND uploaded_at > now() - make_interval(days => :days)
    """
)
UPSERT_UPLOAD = sa.text(
    """
    INSERT INTO media_uploads (media_file_id, sender_id, provider_media_id, uploaded_at)
    VALUES (:file, :sender, :media_id, now())
    ON CONFLICT (media_file_id, sender_id)
    DO UPDATE SET provider_media_id = EXCLUDED.provider_media_id, uploaded_at = now()
    """
)


# -- an upload WhatsApp no longer takes (131052/131053 on a send naming it): forgotten
FORGET_UPLOADS = sa.text(
    "DELETE FROM media_uploads WHERE sender_id = :sender AND media_file_id = ANY(:files)"
)


def forget_uploads(session: AnySession, sender_id: int, media_file_ids: Collection[int]) -> None:
    """Upload these files again at their next send from this sender (caller commits)."""
    session.execute(FORGET_UPLOADS, {"sender": sender_id, "files": list(media_file_ids)})


def media_id_for(sender: Sender, media_file_id: int, config: Mapping[str, Any]) -> str:
    """The media id to send the file as from this sender: the one its upload got, if
    younger than MEDIA_REUSE_DAYS, else uploaded now through the sender's provider
    (``upload_media``) and kept. ProviderError propagates (the caller's batch treats it
    as a transient failure); MediaFileMissing if there is no such file.

    Runs on a connection of its own in autocommit: every statement is its own
    transaction, so none is open during the upload; the caller should hold none either
    (it may take a while). Concurrent callers for the same file and sender wait on an
    advisory lock and find the id the first one stored: one upload."""
    params = {"file": media_file_id, "sender": sender.id, "days": MEDIA_REUSE_DAYS}
    key = {"key": f"media:{media_file_id}:{sender.id}"}
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if known := conn.execute(FRESH_UPLOAD, params).scalar():
            return str(known)
        conn.execute(LOCK, key)
        try:
            # Again under the lock: the caller it waited for may have uploaded it.
            if known := conn.execute(FRESH_UPLOAD, params).scalar():
                return str(known)
            media = conn.execute(
                sa.select(MediaFile.filename, MediaFile.content_type, MediaFile.size).where(
                    MediaFile.id == media_file_id
                )
            ).first()
            if media is None:
                raise MediaFileMissing(media_file_id)
            media_id = providers.for_sender(sender, config).upload_media(
                open_chunks(media_file_id, conn),
                filename=media.filename,
                content_type=media.content_type,
                size=media.size,
            )
            conn.execute(UPSERT_UPLOAD, params | {"media_id": media_id})
            logger.info("media: file %s uploaded for sender %s", media_file_id, sender.id)
            return media_id
        finally:
            conn.execute(UNLOCK, key)


# The types Meta's resumable upload takes for a template's review sample.
REVIEW_TYPES = frozenset({"image/jpeg", "image/png", "video/mp4", PDF})
LINK_TIMEOUT = (5, 30)  # (connect, read) seconds, fetching a linked header's sample


def review_sample(template: MessageTemplate) -> MediaSample | None:
    """The sample of a media header Meta reviews the template from: its uploaded file,
    or what its link serves (fetched now, at most its kind's maximum); None for a
    template without a media header. ServiceError, for the submitter, if there is none
    to send or Meta would not take it."""
    fmt = template_parts.header_format(template)
    if fmt is None or not fmt.is_media:
        return None
    kind = KINDS[fmt]
    if template.header_media_file_id is not None:
        file = get(template.header_media_file_id)
        if file is None:
            raise ServiceError(_("There is no such file."), FIELD)
        content, filename = b"".join(open_chunks(file.id)), file.filename
    elif template.header_media_link:
        content = _fetched(template.header_media_link, kind.max_bytes)
        filename = template_parts.link_filename(template.header_media_link)
        if len(content) > kind.max_bytes:
            raise _refuse_size(fmt)
    else:
        raise ServiceError(_("Give the header's media before submitting the template."))
    content_type = sniff(content[:64], filename)
    if content_type not in REVIEW_TYPES:
        raise ServiceError(
            _("WhatsApp reviews a header's sample in JPEG, PNG, MP4 or PDF; this is not one.")
        )
    return MediaSample(content, filename, content_type)


def _fetched(link: str, limit: int) -> bytes:
    """What a header's link serves, read no further than past ``limit`` bytes;
    ServiceError if it cannot be fetched."""
    content = bytearray()
    try:
        with requests.get(link, stream=True, timeout=LINK_TIMEOUT) as response:
            response.raise_for_status()
            for chunk in response.iter_content(CHUNK_BYTES):
                content += chunk
                if len(content) > limit:
                    break
    except requests.RequestException as error:
        raise ServiceError(
            _("The header's link could not be fetched: %(error)s") % {"error": type(error).__name__}
        ) from error
    return bytes(content)
