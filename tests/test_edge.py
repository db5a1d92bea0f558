"""What every request must pass before a view reads it (campaigns/edge.py)."""

from __future__ import annotations

import io

import pytest
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

from app import db
from campaigns import edge
from campaigns.models import MessageTemplate, Role, Suppression
from campaigns.services.demo import seed_demo
from campaigns.validation import unstorable_fields

MIB = 1024 * 1024


class CountingStream(io.BytesIO):
    """A request body that counts the bytes the app reads from it."""

    def __init__(self, size: int) -> None:
        super().__init__(b"{" + b" " * (size - 2) + b"}")
        self.bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.bytes_read += len(data)
        return data

    def readline(self, size: int | None = -1) -> bytes:
        data = super().readline(size)
        self.bytes_read += len(data)
        return data


def test_an_oversize_webhook_is_refused_by_its_length_before_a_byte_is_read(client):
    body = CountingStream(20 * MIB)
    response = client.post(
        "/webhooks/whatsapp",
        input_stream=body,
        content_length=20 * MIB,
        content_type="application/json",
        headers={"X-Hub-Signature-256": "sha256=" + "0" * 64},
    )
    assert response.status_code == 413
    assert response.json["error"]["code"] == "too_large"
    assert body.bytes_read == 0


def test_a_webhook_without_a_length_is_cut_at_the_limit(client):
    """Chunked: no Content-Length, and the server says it ends the stream itself."""
    body = CountingStream(20 * MIB)
    response = client.post(
        "/webhooks/whatsapp",
        input_stream=body,
        content_type="application/json",
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.status_code == 413
    assert response.json["error"]["code"] == "too_large"
    assert body.bytes_read <= MIB + 64 * 1024  # the limit, and at most one read past it


def test_an_oversize_api_call_is_a_413_envelope(client, token_for):
    response = client.post(
        "/api/v1/templates",
        data=b'{"name": "' + b"x" * (2 * MIB) + b'"}',
        content_type="application/json",
        headers=token_for(Role.SUPERVISOR),
    )
    assert response.status_code == 413
    assert response.json == {"error": {"code": "too_large", "message": "The request is too large."}}


def test_an_oversize_form_is_a_413_page(client, login_as):
    login_as(Role.SUPERVISOR)
    response = client.post("/templates/", data={"name": "x", "body_text": "x" * (2 * MIB)})
    assert response.status_code == 413
    assert response.mimetype == "text/html"
    assert "The request is too large." in response.get_data(as_text=True)


def upload(client, size: int):
    """A CSV of numbers with 100 KB reasons, ``size`` bytes long."""
    rows, n = ["phone,reason"], 0
    while sum(map(len, rows)) + len(rows) < size - 100_020:
        rows.append(f"1198765{n:04d}," + "r" * 100_000)
        n += 1
    text = "\n".join(rows) + "\n"
    data = (text + " " * (size - len(text) - 1) + "\n").encode()
    assert len(data) == size
    # Encoded in memory: the test client spools a large form to a temporary file it
    # never closes when the app refuses the body unread.
    boundary, body = encode_multipart(
        {"file": FileStorage(io.BytesIO(data), "optouts.csv", content_type="text/csv")}
    )
    return client.post(
        "/suppressions/import",
        data=body,
        content_type=f"multipart/form-data; boundary={boundary}",
    )


def test_an_upload_between_the_two_limits_is_accepted(app, client, login_as):
    login_as(Role.SUPERVISOR)
    assert app.config["MAX_REQUEST_BYTES"] < 3 * MIB < app.config["MAX_UPLOAD_BYTES"]
    response = upload(client, 3 * MIB)
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    assert db.session.query(Suppression).count() == 31


@pytest.mark.parametrize("csrf", [False, True], ids=["view reads it", "CSRF check reads it"])
def test_an_upload_over_its_limit_is_refused_at_the_file_field(app, client, login_as, csrf):
    login_as(Role.SUPERVISOR)
    app.config["MAX_UPLOAD_BYTES"] = 2 * MIB
    # CSRFProtect's before_request reads the form before the view: the limit is the same.
    app.config["WTF_CSRF_ENABLED"] = csrf
    response = upload(client, 3 * MIB)
    assert response.status_code == 413
    body = response.get_data(as_text=True)
    assert 'id="file-error"' in body
    assert "The file is larger than 2 MB; split it." in body
    assert db.session.query(Suppression).count() == 0


NUL_MESSAGE = "This contains a character that cannot be saved (such as a NUL byte); remove it."


def test_fields_are_named_as_the_parsers_name_them():
    data = {
        "name": "ok",
        "segment": {"city": "São\x00Paulo", "tags": ["vip", "a\x00"]},
        "variables": {"first_name": {"text": "\ud800"}},
        "bad\x00key": 1,
        "buttons": [{"text": "x\x00"}],
    }
    assert unstorable_fields(data) == {
        "segment.city": NUL_MESSAGE,
        "segment.tags": NUL_MESSAGE,
        "variables.first_name": NUL_MESSAGE,
        "bad\x00key": NUL_MESSAGE,
        "buttons": NUL_MESSAGE,
    }
    assert unstorable_fields("\x00") == {"body": NUL_MESSAGE}
    assert unstorable_fields({"fine": ["é", "😀", {"ok": 1}]}) == {}
    deep: list = []
    for _n in range(100_000):  # walked without recursion
        deep = [deep]
    assert unstorable_fields([deep, "\x00"]) == {"body": NUL_MESSAGE}


def test_a_nul_in_a_validated_form_is_shown_at_its_field(client, login_as):
    login_as(Role.SUPERVISOR)
    seed_demo()
    data = {
        "name": "promo_x",
        "language": "pt_BR",
        "category": "MARKETING",
        "body_text": "Oi\x00 {{first_name}}",
        "footer_text": "kept as typed",
    }
    response = client.post("/templates/", data=data)
    assert response.status_code == 422
    body = response.get_data(as_text=True)
    assert 'id="body_text-error"' in body
    assert NUL_MESSAGE in body
    assert "kept as typed" in body
    assert db.session.query(MessageTemplate).count() == 3  # the demo ones only


def test_a_nul_in_the_campaign_form_is_shown_at_its_field(client, login_as):
    login_as(Role.SUPERVISOR)
    seed_demo()
    response = client.post(
        "/campaigns/",
        data={"name": "Black\x00Friday", "segment.city": "x\x00", "template_id": "1\x00"},
    )
    assert response.status_code == 422
    body = response.get_data(as_text=True)
    assert 'id="name-error"' in body
    assert NUL_MESSAGE in body


@pytest.mark.parametrize(
    ("path", "data", "field"),
    [
        ("/suppressions/", {"phone": "11987654321", "reason": "spam\x00"}, "reason"),
        ("/login", {"email": "a\x00@example.com", "password": "x"}, "email"),
        ("/me/tokens", {"name": "ci\x00"}, "name"),
    ],
)
def test_a_nul_in_any_other_form_is_refused_naming_the_field(client, login_as, path, data, field):
    login_as(Role.SUPERVISOR)
    response = client.post(path, data=data)
    assert response.status_code == 400
    assert f"{field}: {NUL_MESSAGE}" in response.get_data(as_text=True)
    assert db.session.query(Suppression).count() == 0


def test_an_htmx_form_with_a_nul_gets_a_flash(client, login_as):
    login_as(Role.SUPERVISOR)
    response = client.post(
        "/suppressions/", data={"phone": "x", "reason": "\x00"}, headers={"HX-Request": "true"}
    )
    assert response.status_code == 400  # htmx puts it in the flash area, the form stays
    assert 'class="flash flash-error"' in response.get_data(as_text=True)


@pytest.mark.parametrize(
    ("path", "document", "fields"),
    [
        (
            "/api/v1/templates",
            '{"name": "promo_x", "language": "pt_BR", "body_text": "Oi\\u0000"}',
            {"body_text": NUL_MESSAGE},
        ),
        (
            "/api/v1/suppressions",
            '{"phone": "11987654321", "reason": "\\ud800"}',
            {"reason": NUL_MESSAGE},
        ),
        (
            "/api/v1/campaigns",
            '{"name": "x", "segment": {"city": "S\\u0000o Paulo"}}',
            {"segment.city": NUL_MESSAGE},
        ),
    ],
)
def test_the_api_refuses_unstorable_json_naming_the_field(
    client, token_for, path, document, fields
):
    response = client.post(
        path, data=document, content_type="application/json", headers=token_for(Role.SUPERVISOR)
    )
    assert response.status_code == 422
    assert response.json == {
        "error": {
            "code": "validation_failed",
            "message": "Some fields are not valid.",
            "fields": fields,
        }
    }
    assert_counted(response)


def assert_counted(response) -> None:
    """The answer counted against the caller's API budget, as every API answer does."""
    assert int(response.headers["X-RateLimit-Limit"]) > 0
    assert int(response.headers["X-RateLimit-Remaining"]) >= 0
    assert "X-RateLimit-Reset" in response.headers


def test_deeply_nested_json_is_a_400_not_a_500(client, token_for):
    response = client.post(
        "/api/v1/templates",
        data="[" * 100_000,
        content_type="application/json",
        headers=token_for(Role.SUPERVISOR),
    )
    assert response.status_code == 400
    assert response.json["error"]["fields"] == {"body": "Nest it less deeply."}


@pytest.mark.parametrize("digits", ["9" * 5000, "-" + "9" * 5000, "1" + "0" * 101])
def test_an_integer_too_long_to_read_is_refused_at_its_field(client, token_for, digits):
    """Python refuses int() past 4,300 digits: read as infinity (as 1e999 is), the
    number's own field says what is wrong, rather than the body being "not JSON"."""
    response = client.post(
        "/api/v1/senders",
        data='{"name": "Huge", "provider": "mock", "rate_limit_per_minute": ' + digits + "}",
        content_type="application/json",
        headers=token_for(Role.ADMIN),
    )
    assert response.status_code == 422
    assert list(response.json["error"]["fields"]) == ["rate_limit_per_minute"]


def test_json_integers_of_any_column_size_are_read_as_they_are():
    assert edge.bounded_int("-" + "9" * 100) == -int("9" * 100)
    assert edge.bounded_int("0") == 0


@pytest.mark.parametrize(
    "path",
    [
        "/campaigns/",
        "/campaigns/rows",
        "/templates/",
        "/suppressions/rows",
        "/notifications/",
        "/queue/",
    ],
)
def test_a_nul_in_a_query_parameter_is_a_400_page(client, login_as, path):
    login_as(Role.ADMIN)
    response = client.get(path, query_string={"q": "a\x00b", "page": "1"})
    assert response.status_code == 400
    assert f"q: {NUL_MESSAGE}" in response.get_data(as_text=True)


@pytest.mark.parametrize("path", ["/api/v1/campaigns", "/api/v1/suppressions", "/api/v1/templates"])
def test_a_nul_in_an_api_query_parameter_is_a_400_envelope(client, token_for, path):
    response = client.get(path, query_string={"q": "\x00"}, headers=token_for(Role.SUPERVISOR))
    assert response.status_code == 400
    assert response.json["error"]["fields"] == {"q": NUL_MESSAGE}
    assert_counted(response)


class NulStream(CountingStream):
    """A JSON body with a NUL in a field, counting what the app reads of it."""

    def __init__(self) -> None:
        io.BytesIO.__init__(self, b'{"name": "promo_x", "body_text": "Oi\\u0000"}')
        self.bytes_read = 0


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer nope"}], ids=["no token", "bad token"]
)
def test_an_unknown_api_caller_gets_401_whatever_it_sent(client, headers):
    """Who asks is checked before what was asked is read: a 401, the body unread."""
    in_query = client.get("/api/v1/campaigns", query_string={"q": "\x00"}, headers=headers)
    body = NulStream()
    in_body = client.post(
        "/api/v1/templates",
        input_stream=body,
        content_length=len(body.getvalue()),
        content_type="application/json",
        headers=headers,
    )
    for response in (in_query, in_body):
        assert response.status_code == 401
        assert response.json["error"]["code"] == "unauthenticated"
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="disparo"'
    assert body.bytes_read == 0


@pytest.mark.parametrize(
    ("method", "path", "data"),
    [
        ("get", "/campaigns/", None),
        ("post", "/suppressions/", {"phone": "11987654321", "reason": "spam"}),
    ],
)
def test_an_anonymous_page_with_a_nul_is_answered_as_without_it(client, method, path, data):
    """The sign-in requirement comes first: a NUL changes nothing for who may not ask."""
    send = getattr(client, method)
    plain = send(path, data=data)
    with_nul = send(
        path,
        query_string={"q": "a\x00b"},
        data=data and {name: value + "\x00" for name, value in data.items()},
    )
    for response in (plain, with_nul):
        assert response.status_code == 302
        assert response.headers["Location"].startswith("/login?next=")
