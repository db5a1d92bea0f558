"""The opt-out list: its services first, then the pages and the JSON API over them."""

from __future__ import annotations

import io

import pytest

from app import db
from campaigns import queries
from campaigns.models import Role, Suppression
from campaigns.services import NotFound, ServiceError
from campaigns.services.suppressions import (
    MAX_REPORTED_INVALID,
    add_suppression,
    import_suppressions,
    is_suppressed,
    remove_suppression,
    suppress,
)

PHONE = "(11) 98765-4321"
E164 = "+5511987654321"


@pytest.fixture
def supervisor(login_as):
    return login_as(Role.SUPERVISOR)


def numbers(count: int, start: int = 0) -> list[str]:
    """Distinct valid São Paulo mobile numbers, as people type them."""
    return [f"(11) 9{n:04d}-{n % 10_000:04d}" for n in range(start, start + count)]


def upload(client, text: str | bytes, filename: str = "optouts.csv"):
    data = text.encode() if isinstance(text, str) else text
    return client.post(
        "/suppressions/import",
        data={"file": (io.BytesIO(data), filename)},
        content_type="multipart/form-data",
    )


def test_add_normalises_the_number(app, user_factory):
    user = user_factory(Role.SUPERVISOR)
    suppression = add_suppression(PHONE, "  asked by phone ", "manual", user.id)
    assert suppression.phone == E164
    assert suppression.reason == "asked by phone"
    assert (suppression.source, suppression.created_by_id) == ("manual", user.id)
    assert suppression.created_at is not None


def test_numbers_are_read_in_the_configured_region(app):
    app.config["PHONE_DEFAULT_REGION"] = "US"
    assert add_suppression("(650) 253-0000", "", "manual", None).phone == "+16502530000"
    report = import_suppressions("phone\n(650) 253-0001\n", None)
    assert report.added == 1 and is_suppressed(["+16502530001"]) == {"+16502530001"}


def test_adding_twice_returns_the_existing_row_unchanged(app):
    first, created = suppress(PHONE, "first", "manual", None)
    second, created_again = suppress("+55 11 98765 4321", "second", "import", None)
    assert (created, created_again) == (True, False)
    assert second.id == first.id
    assert (second.reason, second.source) == ("first", "manual")
    assert add_suppression(E164, "third", "manual", None).id == first.id
    assert db.session.query(Suppression).count() == 1


@pytest.mark.parametrize("raw", ["", "12345", "not a phone", "+0123", "11 9876"])
def test_invalid_numbers_are_refused_at_the_phone_field(app, raw):
    with pytest.raises(ServiceError) as refused:
        add_suppression(raw, "", "manual", None)
    assert refused.value.field == "phone"
    assert db.session.query(Suppression).count() == 0


def test_remove(app):
    suppression = add_suppression(PHONE, "", "manual", None)
    remove_suppression(suppression.id)
    assert db.session.query(Suppression).count() == 0
    with pytest.raises(NotFound):
        remove_suppression(suppression.id)


def test_is_suppressed_answers_for_a_whole_batch(app):
    add_suppression(PHONE, "", "manual", None)
    add_suppression("+14155550123", "", "manual", None)
    batch = [E164, "+5511912345678", "+14155550123"]
    assert is_suppressed(batch) == {E164, "+14155550123"}
    assert is_suppressed(set(batch)) == {E164, "+14155550123"}
    assert is_suppressed([]) == set()
    assert is_suppressed(["+5511900000000"]) == set()


def test_import_with_a_header_row(app, user_factory):
    user = user_factory(Role.SUPERVISOR)
    add_suppression("+5511912345678", "earlier", "manual", None)
    report = import_suppressions(
        "name,phone,reason\n"
        "Ana,(11) 98765-4321,asked in store\n"
        "Bia,not a phone,\n"
        "\n"
        "Caio,+55 11 91234-5678,spam\n"
        "Duda,,\n",
        user.id,
    )
    assert (report.added, report.already_present) == (1, 1)
    assert report.invalid == [(3, "not a phone"), (6, "")]
    assert report.invalid_count == 2
    added = db.session.query(Suppression).filter_by(phone=E164).one()
    assert (added.reason, added.source, added.created_by_id) == (
        "asked in store",
        "import",
        user.id,
    )
    kept = db.session.query(Suppression).filter_by(phone="+5511912345678").one()
    assert (kept.reason, kept.source) == ("earlier", "manual")


def test_import_of_a_single_column(app):
    report = import_suppressions(
        ["11987654321", "11 91234-5678", "", "12", "+55 (11) 98765-4321"], None
    )
    # A number repeated in the file counts as already there from its second line on.
    assert (report.added, report.already_present) == (2, 1)
    assert report.invalid == [(4, "12")]
    assert db.session.query(Suppression).filter_by(source="import", reason="").count() == 2


def test_import_reads_semicolons_and_any_column_order(app):
    report = import_suppressions(
        "Reason;Phone\nopted out;11987654321\nsaid stop;11912345678\n", None
    )
    assert (report.added, report.already_present, report.invalid_count) == (2, 0, 0)
    assert db.session.query(Suppression).filter_by(phone=E164).one().reason == "opted out"


def test_import_shows_the_first_50_invalid_lines_but_counts_all(app):
    report = import_suppressions(["phone"] + [f"bad{n}" for n in range(120)], None)
    assert report.invalid_count == 120
    assert len(report.invalid) == MAX_REPORTED_INVALID
    assert report.invalid[0] == (2, "bad0")
    assert report.invalid[-1] == (51, "bad49")


def test_a_file_the_csv_module_cannot_read_is_refused_at_the_file_field(app):
    with pytest.raises(ServiceError) as refused:
        import_suppressions("phone,reason\n11987654321," + "r" * 200_000 + "\n", None)
    assert refused.value.field == "file"
    assert refused.value.message == (
        "Line 2 of the file cannot be read as CSV (field larger than field limit (131072))."
    )


def test_a_line_with_a_nul_byte_is_an_invalid_line_and_the_rest_are_imported(app):
    report = import_suppressions(
        "phone,reason\n11987654321,ok\n11912345678,a\x00b\n119\x0087654322\n11987654323,\n",
        None,
    )
    assert (report.added, report.already_present, report.invalid_count) == (2, 0, 2)
    # Shown where the NUL was, as a character a page can show.
    assert report.invalid == [(3, "11912345678"), (4, "119\ufffd87654322")]
    assert {s.phone for s in db.session.query(Suppression)} == {E164, "+5511987654323"}


def test_import_takes_100000_numbers_in_one_go(app):
    lines = [f"+55 11 9{n:08d}" for n in range(100_000)]
    report = import_suppressions(lines, None)
    assert (report.added, report.already_present, report.invalid_count) == (100_000, 0, 0)
    assert import_suppressions(lines[:10], None).already_present == 10


def test_import_refuses_more_than_100000_lines_and_writes_nothing(app):
    with pytest.raises(ServiceError) as refused:
        import_suppressions(["11987654321"] * 100_001, None)
    assert refused.value.field == "file"
    assert db.session.query(Suppression).count() == 0


def test_import_of_an_empty_file_says_so(app):
    with pytest.raises(ServiceError, match="no phone numbers"):
        import_suppressions("phone\n\n", None)


def test_list_searches_digits_and_pages_newest_first(app):
    import_suppressions(numbers(120), None)
    add_suppression(PHONE, "asked in store", "manual", None)
    first = queries.list_suppressions(None, 1)
    assert (first.total, first.pages, first.page) == (121, 3, 1)
    assert len(first.suppressions) == 50
    assert first.suppressions[0].phone == E164  # the newest
    last = queries.list_suppressions(None, 3)
    assert len(last.suppressions) == 21
    assert queries.list_suppressions(None, 99).page == 3  # clamped
    assert queries.list_suppressions(None, -1).page == 1
    ids = {s.id for p in (1, 2, 3) for s in queries.list_suppressions(None, p).suppressions}
    assert len(ids) == 121
    found = queries.list_suppressions("(11) 98765-43", 1)
    assert [s.phone for s in found.suppressions] == [E164]
    assert [s.phone for s in queries.list_suppressions("9 0001-", 1).suppressions] == [
        "+5511900010001"
    ]
    assert queries.list_suppressions("STORE", 1).total == 1  # no digits: the reason
    assert queries.list_suppressions("5599", 1).total == 0


def test_supervisor_adds_a_number_from_the_page(client, supervisor):
    response = client.post("/suppressions/", data={"phone": PHONE, "reason": "asked"})
    assert response.status_code == 303
    suppression = db.session.query(Suppression).one()
    assert (suppression.phone, suppression.source) == (E164, "manual")
    assert suppression.created_by_id == supervisor.id
    page = client.get("/suppressions/").get_data(as_text=True)
    assert E164 in page and "will receive no more campaigns" in page
    again = client.post("/suppressions/", data={"phone": E164}, follow_redirects=True)
    assert "already on the list" in again.get_data(as_text=True)
    assert db.session.query(Suppression).count() == 1


def test_invalid_number_is_422_at_the_field_keeping_what_was_typed(client, supervisor):
    response = client.post("/suppressions/", data={"phone": "98765", "reason": "asked"})
    assert response.status_code == 422
    body = response.get_data(as_text=True)
    assert 'id="phone-error"' in body
    assert "area code" in body
    assert 'value="98765"' in body and 'value="asked"' in body
    assert db.session.query(Suppression).count() == 0


def test_too_long_reason_is_422_at_its_field(client, supervisor):
    response = client.post("/suppressions/", data={"phone": PHONE, "reason": "x" * 201})
    assert response.status_code == 422
    assert 'id="reason-error"' in response.get_data(as_text=True)


def test_htmx_add_redirects_with_hx_redirect(client, supervisor):
    response = client.post("/suppressions/", data={"phone": PHONE}, headers={"HX-Request": "true"})
    assert response.status_code == 204
    assert response.headers["HX-Redirect"] == "/suppressions/"


def test_remove_from_the_page_is_confirmed_and_keeps_the_search(client, supervisor):
    suppression = add_suppression(PHONE, "", "manual", None)
    page = client.get("/suppressions/").get_data(as_text=True)
    assert f"/suppressions/{suppression.id}/remove" in page
    assert f'hx-post="/suppressions/{suppression.id}/remove" hx-confirm="Remove ' in page
    response = client.post(f"/suppressions/{suppression.id}/remove?q=987")
    assert response.status_code == 303
    assert response.headers["Location"] == "/suppressions/?q=987"
    assert db.session.query(Suppression).count() == 0
    gone = client.post(f"/suppressions/{suppression.id}/remove", follow_redirects=True)
    assert "There is no such opt-out" in gone.get_data(as_text=True)


def test_csv_import_from_the_page_shows_the_report(client, supervisor):
    add_suppression("+5511912345678", "", "manual", None)
    response = upload(
        client,
        "phone,reason\n11987654321,asked\n11912345678,again\nnope,\n123456,too short\n",
    )
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert "1 added, 1 already on the list, 2 invalid" in body
    assert "<td>4</td><td><code>nope</code></td>" in body
    assert "<td>5</td><td><code>123456</code></td>" in body
    assert E164 in body  # the list below shows the new number


def test_csv_import_of_10000_lines(client, supervisor):
    response = upload(client, "\n".join(numbers(10_000)) + "\n")
    assert response.status_code == 200
    assert "10,000 added, 0 already on the list, 0 invalid" in response.get_data(as_text=True)
    assert db.session.query(Suppression).count() == 10_000
    assert queries.list_suppressions(None, 1).pages == 200


def test_csv_import_reads_windows_encoded_files(client, supervisor):
    response = upload(client, "phone;reason\n11987654321;não quer\n".encode("cp1252"))
    assert response.status_code == 200
    assert db.session.query(Suppression).one().reason == "não quer"


def test_csv_import_reads_a_utf8_header_with_a_byte_order_mark(client, supervisor):
    response = upload(client, "\ufeffphone,reason\n11987654321,não quer\n".encode())
    assert response.status_code == 200
    assert db.session.query(Suppression).one().reason == "não quer"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "Choose a CSV file"),
        ({"file": (io.BytesIO(b""), "empty.csv")}, "Choose a CSV file"),
        ({"file": (io.BytesIO(b"phone\n"), "header.csv")}, "no phone numbers"),
    ],
)
def test_csv_import_without_numbers_is_422(client, supervisor, data, message):
    response = client.post("/suppressions/import", data=data, content_type="multipart/form-data")
    assert response.status_code == 422
    body = response.get_data(as_text=True)
    assert 'id="file-error"' in body and message in body


def test_the_list_page_searches_and_pages(client, supervisor):
    import_suppressions(numbers(60), None)
    page = client.get("/suppressions/").get_data(as_text=True)
    assert "60 numbers" in page and "Page 1 of 2" in page
    assert 'hx-get="/suppressions/rows"' in page and "delay:300ms" in page
    assert page.count('<tr id="suppression-') == 50
    second = client.get("/suppressions/?page=2").get_data(as_text=True)
    assert second.count('<tr id="suppression-') == 10
    searched = client.get("/suppressions/?q=90001").get_data(as_text=True)
    assert searched.count('<tr id="suppression-') == 1 and 'value="90001"' in searched


def test_the_rows_fragment(client, login_as):
    login_as(Role.VIEWER)
    import_suppressions(numbers(3), None)
    add_suppression(PHONE, "asked", "manual", None)
    response = client.get("/suppressions/rows?q=98765", headers={"HX-Request": "true"})
    assert response.status_code == 200
    body = response.get_data(as_text=True).strip()
    assert body.startswith('<div id="suppression-rows">') and body.endswith("</div>")
    assert "<html" not in body and "<nav" not in body
    assert body.count('<tr id="suppression-') == 1 and E164 in body
    empty = client.get("/suppressions/rows?q=5599").get_data(as_text=True)
    assert "No number matches" in empty


def test_nav_links_to_the_opt_outs(client, login_as):
    login_as(Role.VIEWER)
    assert 'href="/suppressions/">Opt-outs</a>' in client.get("/").get_data(as_text=True)


def test_viewers_read_but_cannot_change_the_list(client, login_as):
    login_as(Role.VIEWER)
    suppression = add_suppression(PHONE, "asked", "manual", None)
    page = client.get("/suppressions/")
    assert page.status_code == 200
    body = page.get_data(as_text=True)
    assert E164 in body
    assert 'name="phone"' not in body and 'name="file"' not in body and "/remove" not in body
    assert client.post("/suppressions/", data={"phone": "11912345678"}).status_code == 403
    assert upload(client, "11912345678\n").status_code == 403
    assert client.post(f"/suppressions/{suppression.id}/remove").status_code == 403
    assert db.session.query(Suppression).count() == 1


def test_signed_out_users_go_to_the_login_page(client):
    response = client.get("/suppressions/")
    assert response.status_code == 302
    assert "/login" in response.headers["Location"]


def test_api_contract(client, token_for):
    headers = token_for(Role.SUPERVISOR)
    created = client.post(
        "/api/v1/suppressions", json={"phone": PHONE, "reason": "asked"}, headers=headers
    )
    assert created.status_code == 201
    body = created.json
    assert set(body) == {"id", "phone", "reason", "source", "created_at"}
    assert (body["phone"], body["reason"], body["source"]) == (E164, "asked", "manual")
    again = client.post("/api/v1/suppressions", json={"phone": E164}, headers=headers)
    assert again.status_code == 200
    assert again.json == body

    listed = client.get("/api/v1/suppressions", headers=headers).json
    assert listed == {
        "suppressions": [body],
        "page": 1,
        "pages": 1,
        "total": 1,
        "next_cursor": None,  # every list answer carries it (the API's cursor pages)
    }
    assert client.get("/api/v1/suppressions?q=5599", headers=headers).json["total"] == 0

    deleted = client.delete(f"/api/v1/suppressions/{body['id']}", headers=headers)
    assert deleted.status_code == 204 and deleted.data == b""
    missing = client.delete(f"/api/v1/suppressions/{body['id']}", headers=headers)
    assert missing.status_code == 404
    assert missing.json["error"]["code"] == "not_found"


def test_api_lists_by_page(client, token_for):
    import_suppressions(numbers(75), None)
    headers = token_for(Role.VIEWER)
    second = client.get("/api/v1/suppressions?page=2", headers=headers).json
    assert (second["page"], second["pages"], second["total"]) == (2, 2, 75)
    assert len(second["suppressions"]) == 25
    searched = client.get("/api/v1/suppressions?q=90074", headers=headers).json
    assert [s["phone"] for s in searched["suppressions"]] == ["+5511900740074"]
    assert client.get("/api/v1/suppressions?page=x", headers=headers).json["page"] == 1


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"phone": "12345"}, "phone"),
        ({}, "phone"),
        ({"phone": 5511987654321}, "phone"),
        ({"phone": PHONE, "reason": 7}, "reason"),
        ({"phone": PHONE, "reason": "x" * 201}, "reason"),
    ],
)
def test_api_validation_is_422_with_the_field(client, token_for, payload, field):
    response = client.post("/api/v1/suppressions", json=payload, headers=token_for(Role.SUPERVISOR))
    assert response.status_code == 422
    assert field in response.json["error"]["fields"]
    assert db.session.query(Suppression).count() == 0


@pytest.mark.parametrize(
    ("role", "method", "path", "expected"),
    [
        (Role.VIEWER, "get", "/api/v1/suppressions", 200),
        (Role.VIEWER, "post", "/api/v1/suppressions", 403),
        (Role.VIEWER, "delete", "/api/v1/suppressions/1", 403),
        (Role.SUPERVISOR, "post", "/api/v1/suppressions", 200),  # already suppressed
        (Role.ADMIN, "delete", "/api/v1/suppressions/1", 204),
    ],
)
def test_api_roles(client, token_for, role, method, path, expected):
    add_suppression(PHONE, "", "manual", None)
    response = getattr(client, method)(path, json={"phone": PHONE}, headers=token_for(role))
    assert response.status_code == expected
    if expected == 403:
        assert response.json["error"]["code"] == "forbidden"


@pytest.mark.parametrize("method", ["get", "post", "delete"])
def test_api_needs_a_token(client, method):
    path = "/api/v1/suppressions" + ("/1" if method == "delete" else "")
    response = getattr(client, method)(path, json={"phone": PHONE})
    assert response.status_code == 401
    assert response.json["error"]["code"] == "unauthenticated"
