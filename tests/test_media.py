"""Media files for template headers (campaigns/media.py): stored in Postgres chunks,
their type read from their bytes, served back, and uploaded to WhatsApp's Media API
once per sender (the mock's, on the test app's own port)."""

from __future__ import annotations

import hashlib
import io
import threading
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa
from flask import Flask
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

from app import db
from campaigns import media
from campaigns.models import (
    MediaFile,
    MediaFileChunk,
    MediaUpload,
    MessageTemplate,
    Provider,
    Role,
    Sender,
    TemplateCategory,
    TemplateStatus,
)
from campaigns.providers import ProviderError
from campaigns.providers.cloud_api import CloudApiProvider
from campaigns.services import ServiceError
from jobs import tasks
from mocks import template_check
from mocks.models import MockWhatsAppMedia

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(40)
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(40)
PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n%%EOF\n"
MP4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + bytes(32)
THREE_GP = b"\x00\x00\x00\x14ftyp3gp5\x00\x00\x00\x00" + bytes(32)
MOV = b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00" + bytes(32)
ZIP = b"PK\x03\x04" + bytes(40)
OLE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(40)
TYPES_MESSAGE = "This file is not one WhatsApp takes for this header. Choose"

PHONE_NUMBER_ID = "100000000000777"


def _store(data: bytes, filename: str, kind: str, user_id: int | None = None) -> MediaFile:
    return media.store(io.BytesIO(data), filename, kind, user_id)


def media_exists(media_id: str) -> bool:
    return template_check.media_exists(db.session, media_id)


def _bytes_of(media_file_id: int) -> bytes:
    return b"".join(media.open_chunks(media_file_id))


@pytest.mark.parametrize(
    ("data", "filename", "kind", "content_type"),
    [
        (PNG, "logo.png", "IMAGE", "image/png"),
        (JPEG, "photo.JPG", "IMAGE", "image/jpeg"),
        (JPEG, "named-wrongly.png", "IMAGE", "image/jpeg"),  # the bytes decide
        (MP4, "clip.mp4", "VIDEO", "video/mp4"),
        (THREE_GP, "clip.3gp", "VIDEO", "video/3gpp"),
        (PDF, "menu.pdf", "DOCUMENT", "application/pdf"),
        (PDF, "no-extension", "DOCUMENT", "application/pdf"),
        (
            ZIP,
            "price list.xlsx",
            "DOCUMENT",
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        ),
        (OLE, "old.doc", "DOCUMENT", "application/msword"),
        ("Olá, preços!\n".encode(), "notes.txt", "DOCUMENT", "text/plain"),
    ],
)
def test_a_file_is_kept_with_the_type_its_bytes_say(
    app, user_factory, data, filename, kind, content_type
):
    user = user_factory(Role.SUPERVISOR)
    stored = _store(data, filename, kind, user.id)
    db.session.expire_all()
    kept = db.session.get(MediaFile, stored.id)
    assert kept is not None
    assert (kept.kind, kept.filename, kept.content_type) == (kind, filename, content_type)
    assert (kept.size, kept.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert kept.created_by_id == user.id
    assert _bytes_of(kept.id) == data


@pytest.mark.parametrize(
    ("data", "filename", "kind"),
    [
        (PDF, "menu.png", "IMAGE"),
        (PNG, "logo.mp4", "VIDEO"),
        (MOV, "clip.mp4", "VIDEO"),  # QuickTime, not MP4
        (PNG, "logo.pdf", "DOCUMENT"),
        (ZIP, "archive.zip", "DOCUMENT"),  # a ZIP that is no Office file
        (OLE, "thing.msi", "DOCUMENT"),
        (b"\xff\xfeh\x00i\x00", "utf16.txt", "DOCUMENT"),  # not UTF-8
        (b"text\x00with a NUL", "nul.txt", "DOCUMENT"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "x.svg", "IMAGE"),
    ],
)
def test_bytes_that_are_not_of_the_kind_are_refused_naming_the_types(app, data, filename, kind):
    with pytest.raises(ServiceError) as refused:
        _store(data, filename, kind)
    assert refused.value.field == media.FIELD
    assert refused.value.message.startswith(TYPES_MESSAGE)
    assert media.KINDS[kind].extensions.split()[0] in refused.value.message
    assert db.session.query(MediaFile).count() == 0
    assert db.session.query(MediaFileChunk).count() == 0


def test_text_that_stops_being_utf8_past_the_first_chunk_is_refused(app, monkeypatch):
    monkeypatch.setattr(media, "CHUNK_BYTES", 8)
    with pytest.raises(ServiceError, match=TYPES_MESSAGE):
        _store(b"plain ascii text, then \xff", "notes.txt", "DOCUMENT")
    assert db.session.query(MediaFileChunk).count() == 0


def test_an_empty_file_or_none_or_an_unknown_kind_is_refused(app):
    with pytest.raises(ServiceError, match="The file is empty"):
        _store(b"", "empty.png", "IMAGE")
    with pytest.raises(ServiceError, match="Choose a file"):
        media.store(None, None, "IMAGE", None)
    with pytest.raises(ServiceError) as refused:
        _store(PNG, "logo.png", "AUDIO")
    assert refused.value.field == "kind"


class CountingStream(io.BytesIO):
    """Counts what the reader took."""

    taken = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.taken += len(data)
        return data


def test_a_file_over_its_kinds_maximum_is_refused_reading_one_byte_past_it(app, monkeypatch):
    small = media.Kind(100, ("image/png", "image/jpeg"), ".png .jpg")
    monkeypatch.setitem(media.KINDS, "IMAGE", small)
    monkeypatch.setattr(media, "CHUNK_BYTES", 16)
    exactly = PNG + bytes(100 - len(PNG))
    assert _store(exactly, "ok.png", "IMAGE").size == 100
    stream = CountingStream(exactly + bytes(10_000))
    with pytest.raises(ServiceError) as refused:
        media.store(stream, "big.png", "IMAGE", None)
    assert refused.value.field == media.FIELD
    assert "at most 0.0001 MB" in refused.value.message
    assert stream.taken == 101
    assert db.session.query(MediaFile).count() == 1  # only the first


def test_a_file_is_kept_and_read_back_in_chunks(app, monkeypatch):
    monkeypatch.setattr(media, "CHUNK_BYTES", 10)
    data = PDF + b"x" * 57
    stored = _store(data, "long.pdf", "DOCUMENT")
    rows = db.session.execute(
        sa.select(MediaFileChunk.seq, sa.func.length(MediaFileChunk.data))
        .where(MediaFileChunk.media_file_id == stored.id)
        .order_by(MediaFileChunk.seq)
    ).all()
    assert [seq for seq, _length in rows] == list(range(len(rows)))
    assert all(length <= 10 for _seq, length in rows) and len(rows) == -(-len(data) // 10)
    assert list(media.open_chunks(stored.id)) == [data[i : i + 10] for i in range(0, len(data), 10)]
    assert list(media.open_chunks(stored.id + 1)) == []


def test_a_file_name_is_kept_without_path_or_control_characters(app):
    assert media.clean_filename("C:\\Users\\ana\\Fotos\\praia.png", "IMAGE") == "praia.png"
    assert media.clean_filename("../../etc/a\x00b\r\n.png", "IMAGE") == "ab.png"
    assert media.clean_filename("", "VIDEO") == "video"
    long = media.clean_filename("x" * 300 + ".pdf", "DOCUMENT")
    assert len(long) == 255 and long.endswith(".pdf")


# -- serving ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "filename", "kind", "disposition"),
    [
        (PNG, "logo.png", "IMAGE", "inline; filename=logo.png"),
        (MP4, "clip.mp4", "VIDEO", "inline; filename=clip.mp4"),
        (PDF, "menu do dia.pdf", "DOCUMENT", 'inline; filename="menu do dia.pdf"'),
        (
            ZIP,
            "preços.docx",
            "DOCUMENT",
            "attachment; filename=precos.docx; filename*=UTF-8''pre%C3%A7os.docx",
        ),
        (b"hello\n", "notes.txt", "DOCUMENT", "attachment; filename=notes.txt"),
    ],
)
def test_a_file_is_served_with_its_type_length_and_name(
    app, client, login_as, data, filename, kind, disposition
):
    login_as(Role.VIEWER)
    stored = _store(data, filename, kind)
    response = client.get(f"/media/{stored.id}")
    assert response.status_code == 200
    assert response.is_streamed
    assert response.get_data() == data
    assert response.mimetype == stored.content_type
    assert response.headers["Content-Length"] == str(len(data))
    assert response.headers["Content-Disposition"] == disposition
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "immutable" in response.headers["Cache-Control"]


def test_a_range_and_a_kept_copy_are_answered(app, client, login_as, monkeypatch):
    login_as(Role.VIEWER)
    monkeypatch.setattr(media, "CHUNK_BYTES", 16)  # the range starts and ends mid-chunk
    data = MP4 + bytes(range(100))
    stored = _store(data, "clip.mp4", "VIDEO")
    part = client.get(f"/media/{stored.id}", headers={"Range": "bytes=10-29"})
    assert part.status_code == 206
    assert part.get_data() == data[10:30]
    assert part.headers["Content-Range"] == f"bytes 10-29/{len(data)}"
    assert part.headers["Content-Length"] == "20"
    whole = client.get(f"/media/{stored.id}")
    assert whole.headers["Accept-Ranges"] == "bytes"
    again = client.get(f"/media/{stored.id}", headers={"If-None-Match": whole.headers["ETag"]})
    assert again.status_code == 304 and again.get_data() == b""


def test_serving_needs_a_signed_in_user_and_an_existing_file(app, client, login_as):
    stored = _store(PNG, "logo.png", "IMAGE")
    assert client.get(f"/media/{stored.id}").status_code in (302, 303)
    login_as(Role.VIEWER)
    assert client.get(f"/media/{stored.id + 1}").status_code == 404
    assert client.get("/media/99999999999999999999").status_code == 404


# -- the template form's upload (htmx) -------------------------------------------------

HTMX = {"HX-Request": "true", "HX-Target": "header-media-picked"}


def _multipart(data: bytes, filename: str, fields: dict[str, str]) -> dict:
    """A multipart body encoded in memory: the test client spools a large form to a
    temporary file it never closes when the app refuses the body unread."""
    boundary, body = encode_multipart({"file": FileStorage(io.BytesIO(data), filename), **fields})
    return {"data": body, "content_type": f"multipart/form-data; boundary={boundary}"}


def _pick(client, data: bytes, filename: str, kind: str | None = "IMAGE", **more):
    fields = {**more, **({"kind": kind} if kind is not None else {})}
    return client.post("/media", headers=HTMX, **_multipart(data, filename, fields))


def test_picking_a_file_answers_its_hidden_id_and_preview(app, client, login_as):
    user = login_as(Role.SUPERVISOR)
    response = _pick(client, PNG, "logo.png")
    assert response.status_code == 200, response.get_data(as_text=True)
    stored = db.session.scalars(sa.select(MediaFile)).one()
    assert stored.created_by_id == user.id
    body = response.get_data(as_text=True)
    assert f'<input type="hidden" name="header_media_file_id" value="{stored.id}">' in body
    assert f'<img src="/media/{stored.id}"' in body
    video = _pick(client, MP4, "clip.mp4", "VIDEO").get_data(as_text=True)
    assert "<video src=" in video
    document = _pick(client, PDF, "menu.pdf", "DOCUMENT").get_data(as_text=True)
    assert ">menu.pdf</a>" in document and "0 KB" in document


def test_the_kind_may_come_from_the_forms_header_format(app, client, login_as):
    login_as(Role.SUPERVISOR)
    response = _pick(client, PDF, "menu.pdf", None, header_format="DOCUMENT")
    assert response.status_code == 200
    assert db.session.scalars(sa.select(MediaFile.kind)).one() == "DOCUMENT"


def test_a_refused_pick_says_why_and_keeps_the_earlier_file(app, client, login_as):
    login_as(Role.SUPERVISOR)
    earlier = _store(PNG, "logo.png", "IMAGE")
    response = _pick(client, PDF, "menu.pdf", "IMAGE", header_media_file_id=str(earlier.id))
    assert response.status_code == 422
    body = response.get_data(as_text=True)
    assert TYPES_MESSAGE in body and ".jpg, .jpeg, .png" in body
    assert f'name="header_media_file_id" value="{earlier.id}"' in body
    assert db.session.query(MediaFile).count() == 1
    nothing = _pick(client, PDF, "menu.pdf", "AUDIO")
    assert nothing.status_code == 422
    assert "Choose an image, a video or a document." in nothing.get_data(as_text=True)


def test_picking_needs_the_role_that_edits_templates(app, client, login_as):
    login_as(Role.VIEWER)
    assert _pick(client, PNG, "logo.png").status_code == 403
    assert db.session.query(MediaFile).count() == 0


def test_a_body_over_the_media_limit_is_refused_unread_in_place(app, client, login_as, monkeypatch):
    login_as(Role.SUPERVISOR)
    # The limit is the view's own (not MAX_UPLOAD_BYTES): made small rather than 100 MB.
    monkeypatch.setattr(app.view_functions["media.media_create"], "upload_limit", 1000)
    response = _pick(client, PNG + bytes(2000), "big.png")
    assert response.status_code == 413
    assert "The file is larger than WhatsApp takes: at most 100 MB." in response.get_data(
        as_text=True
    )
    assert response.headers["HX-Retarget"] == "#header-media-picked"
    assert db.session.query(MediaFile).count() == 0


def test_the_media_request_limit_is_its_own_not_max_upload_bytes(app, client, login_as):
    login_as(Role.SUPERVISOR)
    app.config["MAX_UPLOAD_BYTES"] = app.config["MAX_REQUEST_BYTES"]
    # Over MAX_UPLOAD_BYTES, well within the media limit: read, and refused by its kind's.
    response = _pick(client, PNG + bytes(app.config["MAX_UPLOAD_BYTES"]), "big.png")
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    assert media.REQUEST_LIMIT_BYTES > 100 * media.MB


def test_the_field_include_renders_the_input_and_the_picked_file(app, login_as):
    from flask import render_template_string

    stored = _store(PNG, "logo.png", "IMAGE")
    with app.test_request_context():
        html = render_template_string(
            '{% with kind="IMAGE", media_file=file, errors={} %}'
            '{% include "media/_field.html" %}{% endwith %}',
            file=stored,
        )
    assert 'hx-post="/media"' in html and 'hx-encoding="multipart/form-data"' in html
    assert 'hx-target="#header-media-picked"' in html and 'id="header-media-picked"' in html
    assert 'accept=".jpg,.jpeg,.png,image/jpeg,image/png"' in html
    assert f'name="header_media_file_id" value="{stored.id}"' in html
    assert ".jpg, .jpeg, .png, at most 5 MB." in html


# -- the JSON API ----------------------------------------------------------------------


def _api_upload(client, headers, data: bytes, filename: str, kind: str = "IMAGE"):
    return client.post(
        "/api/v1/media", headers=headers, **_multipart(data, filename, {"kind": kind})
    )


def test_the_api_keeps_a_file_and_answers_it(app, client, token_for):
    headers = token_for(Role.SUPERVISOR)
    response = _api_upload(client, headers, JPEG, "photo.jpg")
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["kind"] == "IMAGE" and body["content_type"] == "image/jpeg"
    assert (body["filename"], body["size"]) == ("photo.jpg", len(JPEG))
    assert body["sha256"] == hashlib.sha256(JPEG).hexdigest()
    assert response.headers["Location"] == f"/api/v1/media/{body['id']}"
    again = client.get(f"/api/v1/media/{body['id']}", headers=token_for(Role.VIEWER))
    assert again.status_code == 200 and again.get_json() == body
    assert client.get(f"/api/v1/media/{body['id'] + 1}", headers=headers).status_code == 404


def test_the_api_refuses_at_the_field(app, client, token_for):
    headers = token_for(Role.SUPERVISOR)
    wrong = _api_upload(client, headers, PDF, "menu.pdf", "VIDEO")
    assert wrong.status_code == 422
    assert wrong.get_json()["error"]["fields"]["file"].startswith(TYPES_MESSAGE)
    kind = _api_upload(client, headers, PDF, "menu.pdf", "STICKER")
    assert kind.status_code == 422 and "kind" in kind.get_json()["error"]["fields"]
    missing = client.post("/api/v1/media", data={"kind": "IMAGE"}, headers=headers)
    assert missing.status_code == 422 and "file" in missing.get_json()["error"]["fields"]
    as_json = client.post("/api/v1/media", json={"kind": "IMAGE"}, headers=headers)
    assert as_json.status_code == 422
    viewer = _api_upload(client, token_for(Role.VIEWER), PNG, "logo.png")
    assert viewer.status_code == 403
    assert db.session.query(MediaFile).count() == 0


def test_the_api_refuses_a_body_over_the_media_limit_unread(app, client, token_for, monkeypatch):
    headers = token_for(Role.SUPERVISOR)
    monkeypatch.setattr(app.view_functions["api.media_create"], "upload_limit", 1000)
    response = _api_upload(client, headers, PNG + bytes(2000), "big.png")
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "too_large"
    assert db.session.query(MediaFile).count() == 0


# -- WhatsApp's Media API (the mock's) and media_id_for --------------------------------


@pytest.fixture
def mock_app(app: Flask, live_server: str) -> Flask:
    """The mock provider's Graph calls go to the test app's own socket."""
    app.config.update(APP_BASE_URL=live_server, MOCK_WHATSAPP_URL="")
    return app


def _sender(phone_number_id: str = PHONE_NUMBER_ID, **more) -> Sender:
    sender = Sender(
        name=f"Media {phone_number_id[-4:]}",
        provider=more.pop("provider", Provider.MOCK),
        phone_number_id=phone_number_id,
        **more,
    )
    db.session.add(sender)
    db.session.commit()
    return sender


def _uploads() -> list[MockWhatsAppMedia]:
    db.session.expire_all()
    return list(db.session.scalars(sa.select(MockWhatsAppMedia).order_by("created_at")))


def test_a_file_is_uploaded_once_per_sender_and_reused(mock_app, monkeypatch):
    monkeypatch.setattr(media, "CHUNK_BYTES", 16)  # the upload streams several chunks
    stored = _store(PDF + b"x" * 100, "menu.pdf", "DOCUMENT")
    sender, other = _sender(), _sender("100000000000778")
    first = media.media_id_for(sender, stored.id, mock_app.config)
    assert media.media_id_for(sender, stored.id, mock_app.config) == first
    [upload] = _uploads()
    assert (upload.id, upload.phone_number_id) == (first, PHONE_NUMBER_ID)
    assert (upload.mime_type, upload.size) == ("application/pdf", stored.size)
    assert media_exists(first) and not media_exists("1234")
    # Another sender's number gets its own.
    assert media.media_id_for(other, stored.id, mock_app.config) != first
    assert len(_uploads()) == 2
    kept = db.session.get(MediaUpload, (stored.id, sender.id))
    assert kept is not None and kept.provider_media_id == first


def test_a_file_over_the_general_request_limit_is_uploaded_whole(mock_app):
    data = PDF + bytes(2 * 1024 * 1024)  # over MAX_REQUEST_BYTES, and several chunks
    assert len(data) > mock_app.config["MAX_REQUEST_BYTES"] and len(data) > media.CHUNK_BYTES
    stored = _store(data, "big.pdf", "DOCUMENT")
    media_id = media.media_id_for(_sender(), stored.id, mock_app.config)
    [upload] = _uploads()
    assert (upload.id, upload.size) == (media_id, len(data))


def test_an_upload_older_than_the_reuse_days_is_uploaded_again(mock_app):
    stored = _store(PNG, "logo.png", "IMAGE")
    sender = _sender()
    first = media.media_id_for(sender, stored.id, mock_app.config)
    db.session.execute(
        sa.update(MediaUpload).values(
            uploaded_at=sa.func.now() - timedelta(days=media.MEDIA_REUSE_DAYS, seconds=1)
        )
    )
    db.session.commit()
    second = media.media_id_for(sender, stored.id, mock_app.config)
    assert second != first and len(_uploads()) == 2
    db.session.expire_all()
    assert db.session.get(MediaUpload, (stored.id, sender.id)).provider_media_id == second
    assert media.media_id_for(sender, stored.id, mock_app.config) == second


class CountingUploads:
    """A provider whose first upload waits until every other caller waits on the lock."""

    def __init__(self, app: Flask, waiting: int) -> None:
        self.app, self.waiting, self.calls = app, waiting, 0
        self.lock = threading.Lock()

    def upload_media(self, chunks, *, filename, content_type, size) -> str:
        with self.lock:
            self.calls += 1
        with self.app.app_context():
            deadline = time.monotonic() + 30  # a bound on the wait, not what is tested
            while time.monotonic() < deadline and self._waiters() < self.waiting:
                time.sleep(0.01)
            db.session.remove()
        assert b"".join(chunks)
        return f"media-{self.calls}"

    @staticmethod
    def _waiters() -> int:
        return db.session.scalar(
            sa.text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
        )


def test_callers_at_the_same_time_upload_once(mock_app, monkeypatch):
    stored = _store(PNG, "logo.png", "IMAGE")
    sender_id = _sender().id
    provider = CountingUploads(mock_app, waiting=3)
    monkeypatch.setattr(media.providers, "for_sender", lambda sender, config: provider)
    answers: list[str] = []

    def call() -> None:
        with mock_app.app_context():
            sender = db.session.get(Sender, sender_id)
            answers.append(media.media_id_for(sender, stored.id, mock_app.config))
            db.session.remove()

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert provider.calls == 1
    assert answers == ["media-1"] * 4


def test_a_refused_upload_raises_and_keeps_nothing(mock_app, monkeypatch):
    stored = _store(PNG, "logo.png", "IMAGE")
    sender = _sender()
    # What the mock refuses as Meta would: a type it does not take.
    monkeypatch.setattr(media, "open_chunks", lambda file_id, connection=None: iter([PNG]))
    db.session.execute(sa.update(MediaFile).values(content_type="image/gif"))
    db.session.commit()
    with pytest.raises(ProviderError) as refused:
        media.media_id_for(sender, stored.id, mock_app.config)
    assert (refused.value.code, refused.value.http_status) == (100, 400)
    assert db.session.query(MediaUpload).count() == 0
    with pytest.raises(media.MediaFileMissing):
        media.media_id_for(sender, stored.id + 1, mock_app.config)


def test_the_cloud_api_client_uploads_with_its_token(mock_app, live_server):
    stored = _store(MP4, "clip.mp4", "VIDEO")
    sender = _sender(provider=Provider.CLOUD_API, access_token="EAAG-media-token")
    config = {"WHATSAPP_API_BASE_URL": f"{live_server}/mock/whatsapp/v23.0"}
    media_id = CloudApiProvider(sender, config).upload_media(
        media.open_chunks(stored.id),
        filename="clip.mp4",
        content_type="video/mp4",
        size=stored.size,
    )
    assert media_exists(media_id)
    # Not the number's token: Meta's 401, its code kept.
    stranger = Sender(name="x", phone_number_id=PHONE_NUMBER_ID, access_token="EAAG-wrong")
    with pytest.raises(ProviderError) as refused:
        CloudApiProvider(stranger, config).upload_media(
            iter([MP4]), filename="clip.mp4", content_type="video/mp4", size=len(MP4)
        )
    assert (refused.value.code, refused.value.http_status) == (190, 401)
    assert len(_uploads()) == 1


def _mock_upload(client, data: dict, headers: dict | None = None):
    return client.post(
        f"/mock/whatsapp/v23.0/{PHONE_NUMBER_ID}/media",
        data=data,
        content_type="multipart/form-data",
        headers=headers or {},
    )


def test_the_mock_media_api_refuses_what_meta_refuses(app, client):
    good = {"messaging_product": "whatsapp", "type": "image/png"}
    accepted = _mock_upload(client, {**good, "file": (io.BytesIO(PNG), "logo.png")})
    assert accepted.status_code == 200 and media_exists(accepted.get_json()["id"])
    refusals = [
        {**good},  # no file
        {**good, "file": (io.BytesIO(b""), "empty.png")},
        {**good, "type": "image/gif", "file": (io.BytesIO(PNG), "a.gif")},
        {"type": "image/png", "file": (io.BytesIO(PNG), "logo.png")},  # no messaging_product
    ]
    for form in refusals:
        response = _mock_upload(client, form)
        assert response.status_code == 400, form
        error = response.get_json()["error"]
        assert error["code"] == 100 and error["type"] == "OAuthException"
    _sender(access_token="EAAG-right")
    wrong = _mock_upload(
        client,
        {**good, "file": (io.BytesIO(PNG), "logo.png")},
        {"Authorization": "Bearer EAAG-wrong"},
    )
    assert wrong.status_code == 401 and wrong.get_json()["error"]["code"] == 190
    assert len(_uploads()) == 1


# -- maintenance -----------------------------------------------------------------------


def test_maintenance_deletes_old_files_no_template_names(app, user_factory):
    old_unused = _store(PNG, "old.png", "IMAGE")
    old_used = _store(JPEG, "used.jpg", "IMAGE")
    new_unused = _store(PDF, "new.pdf", "DOCUMENT")
    sender = _sender()
    db.session.add(
        MediaUpload(media_file_id=old_unused.id, sender_id=sender.id, provider_media_id="1")
    )
    db.session.add(
        MessageTemplate(
            sender_id=sender.id,
            name="with_image",
            language="pt_BR",
            category=TemplateCategory.MARKETING,
            body_text="Oi!",
            status=TemplateStatus.DRAFT,
            header_format="IMAGE",
            header_media_file_id=old_used.id,
        )
    )
    db.session.execute(
        sa.update(MediaFile)
        .where(MediaFile.id.in_([old_unused.id, old_used.id]))
        .values(created_at=sa.func.now() - timedelta(days=1, minutes=1))
    )
    db.session.commit()
    ids = old_unused.id, old_used.id, new_unused.id
    tasks.reconcile(timestamp=int(time.time()))  # the maintenance job, as its tick runs it
    db.session.expire_all()
    assert set(db.session.scalars(sa.select(MediaFile.id))) == set(ids[1:])
    assert db.session.query(MediaUpload).count() == 0
    assert _bytes_of(ids[0]) == b"" and _bytes_of(ids[1]) == JPEG


def test_only_a_signed_in_user_may_send_a_body_larger_than_any_other(app, client, login_as):
    """CSRF's check reads a page's form before the sign-in check runs: a stranger's body is
    held to MAX_REQUEST_BYTES, not the media limit, so it cannot fill the disk."""
    app.config["MAX_REQUEST_BYTES"] = app.config["MAX_CONTENT_LENGTH"] = 4096
    app.config["WTF_CSRF_ENABLED"] = True  # its check is what reads the form first
    large = PNG + bytes(8000)
    assert _pick(client, large, "big.png").status_code == 413  # not signed in: refused unread
    app.config["WTF_CSRF_ENABLED"] = False
    login_as(Role.SUPERVISOR)
    assert _pick(client, large, "big.png").status_code == 200
