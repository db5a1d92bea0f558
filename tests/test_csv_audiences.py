"""CSV audiences (campaigns/audiences.py): the upload streamed into Postgres, its errors,
encodings and delimiters, the campaign's mapping and preview, the fan-out from the file
end to end, the API, and the rows' retention and erasure."""

from __future__ import annotations

import codecs
import io
import re
import time
import tracemalloc
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from flask import current_app
from werkzeug.datastructures import MultiDict

from app import db
from campaigns import audiences, contact_history, exclusions, fanout, preflight
from campaigns.clock import database_now
from campaigns.models import (
    AudienceFile,
    AudienceRow,
    Campaign,
    CampaignStatus,
    Message,
    MessageStatus,
    MessageTemplate,
    Role,
)
from campaigns.services import ServiceError, personal_data
from campaigns.services.campaigns import (
    create_campaign,
    dry_run,
    duplicate_campaign,
    send_campaign_now,
    send_test_message,
    template_variables_for,
    update_campaign,
)
from campaigns.services.demo import seed_demo
from campaigns.services.suppressions import suppress_quietly
from campaigns.services.templates import default_sender
from campaigns.validation import Invalid, campaign_data_from_form, parse_campaign
from jobs import tasks
from tests.helpers import assert_counters_match_rows, lift_limits, wait_for

HEADER = "telefone;nome;cidade;cupom\n"
# Five customers: two good, one not a number, one repeat, one opted out (added by tests).
PEOPLE = (
    HEADER
    + "11 98765-4301;João;São Paulo;A1\n"
    + "(21) 99876-5402;Maria;Rio de Janeiro;B2\n"
    + "12345;Zé;Campinas;C3\n"
    + "+55 11 98765-4301;João de novo;São Paulo;D4\n"
    + "11987654305;Bia;Santos;E5\n"
)
OPTED_OUT = "+5511987654305"


def _import(data: bytes | str, name: str = "clientes.csv") -> AudienceFile:
    raw = data.encode() if isinstance(data, str) else data
    return audiences.import_csv(io.BytesIO(raw), name, None, current_app.config)


def _refused(data: bytes | str) -> str:
    with pytest.raises(ServiceError) as refused:
        _import(data)
    assert refused.value.field == audiences.FIELD
    assert db.session.scalar(sa.select(sa.func.count()).select_from(AudienceFile)) == 0
    return refused.value.message


def _rows(file_id: int) -> list[list[str]]:
    return [cells for _n, cells in audiences.page(db.session, file_id, 0, 100)]


# -- the import


def test_a_file_is_kept_row_by_row_with_its_header(app):
    data = (HEADER + "11987654321;João;São Paulo;A1\n(21) 99876-5432;Maria;Rio;B2\n").encode()
    audience = _import(data)
    assert audience.columns == ["telefone", "nome", "cidade", "cupom"]
    assert (audience.row_count, audience.delimiter, audience.encoding) == (2, ";", "utf-8")
    assert audience.name == "clientes.csv" and audience.size_bytes == len(data)
    assert _rows(audience.id) == [
        ["11987654321", "João", "São Paulo", "A1"],
        ["(21) 99876-5432", "Maria", "Rio", "B2"],
    ]
    assert audiences.page(db.session, audience.id, 1, 10)[0][0] == 2  # keyed by row number


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        ("\ufeffphone,name\n11987654321,Conceição\n".encode(), "utf-8"),
        ("phone,name\n11987654321,Conceição\n".encode("cp1252"), "cp1252"),
        # 0x81 is not a Windows-1252 character: read as Latin-1
        (b"phone,name\n11987654321,Concei\xe7\xe3o\x81\n", "latin-1"),
    ],
)
def test_utf8_with_or_without_bom_else_excels_code_page(app, data, encoding):
    audience = _import(data)
    assert audience.encoding == encoding
    assert audience.columns == ["phone", "name"]  # no BOM in the first name
    assert _rows(audience.id)[0][1].startswith("Conceição")


def test_a_file_that_stops_being_utf8_past_the_guess_is_read_again(app):
    good = "".join(f"119876{n:05d},Ana\n" for n in range(audiences.HEAD_BYTES // 15))
    data = ("phone,name\n" + good).encode() + "11987654321,João\n".encode("cp1252")
    audience = _import(data)
    assert audience.encoding == "cp1252"
    assert audience.row_count == good.count("\n") + 1
    assert _rows(audience.id)[0] == ["11987600000", "Ana"]
    last = audiences.page(db.session, audience.id, audience.row_count - 1, 1)
    assert last[0][1] == ["11987654321", "João"]


def test_a_byte_windows_1252_lacks_past_the_guess_reads_as_latin_1(app):
    good = "".join(f"119876{n:05d},Conceição\n" for n in range(audiences.HEAD_BYTES // 20))
    data = ("phone,name\n" + good).encode("cp1252") + b"11987654321,Jo\x81o\n"
    audience = _import(data)
    assert audience.encoding == "latin-1"
    assert _rows(audience.id)[0] == ["11987600000", "Conceição"]


@pytest.mark.parametrize(
    ("text", "delimiter"),
    [
        ('phone,name,city\n11987654321,"Silva, Ana",Campinas\n', ","),
        ("phone;name;city\n11987654321;Silva, Ana;Campinas\n", ";"),
        ("phone\tname\tcity\n11987654321\tSilva, Ana\tCampinas\n", "\t"),
        ('phone;name;city\r\n11987654321;"Silva; Ana";Campinas\r\n', ";"),
    ],
)
def test_the_delimiter_is_guessed(app, text, delimiter):
    audience = _import(text)
    assert audience.delimiter == delimiter
    assert audience.columns == ["phone", "name", "city"]
    assert _rows(audience.id)[0][0] == "11987654321"
    assert _rows(audience.id)[0][2] == "Campinas"


def test_short_rows_are_padded_blank_lines_skipped_cells_trimmed(app):
    audience = _import("\n\nphone,name,city\n 11987654321 , Ana\n\n,,\n11987654322,Bia,Rio\n")
    assert audience.row_count == 2
    assert _rows(audience.id) == [["11987654321", "Ana", ""], ["11987654322", "Bia", "Rio"]]


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ("", "The file is empty."),
        ("\n \n", "The file is empty."),
        ("phone,,city\n1,2,3\n", "Column 2 of the header has no name"),
        ("phone,name,phone\n1,2,3\n", "The header names the column “phone” twice"),
        ("phone,name\n", "The file has a header but no rows."),
        ("phone,name\n\n\n", "The file has a header but no rows."),
        ("phone,name\n1,2\n3,4,5\n", "Line 3 has 3 cells, more than the header's 2 columns."),
        ("phone,name\n1,a\x00b\n", "a NUL byte"),
        ("phone," + "x" * 201 + "\n1,2\n", "Column 2's name is too long"),
        # An unclosed quote is refused, not read to the file's end as one cell.
        ('phone,name\n1,"unterminated\n2,b\n', "(line 3): a quoted cell is not closed"),
        ('phone,name\n1,"Ana" Silva\n', "(line 2): a quoted cell is not closed"),
        # UTF-16 without its byte order mark: every other byte a NUL.
        ("phone,name\n1,2\n".encode("utf-16-le"), "The header holds a NUL byte"),
        # "Unicode Text" cut short: an odd byte at its end
        (codecs.BOM_UTF16_LE + "phone,name\n1,2\n".encode("utf-16-le") + b"\x00", "CSV UTF-8"),
    ],
)
def test_each_bad_file_is_refused_with_its_reason_and_nothing_kept(app, data, says):
    message = _refused(data)
    assert says in message
    # In the UI's words (wrapped for translation), not the csv module's English.
    assert "unexpected end of data" not in message and "expected after" not in message


@pytest.mark.parametrize("line", [1, 2])
def test_a_long_line_is_refused_before_the_csv_module_builds_its_row(app, line):
    """A line of a million small cells ("ab,ab,…", 3 MB) in the header or a row: refused
    at ROW_MAX_CHARS, read no further, not built as a million strings first."""
    cells = "ab," * 1_000_000
    data = cells + "\n1,2\n" if line == 1 else "phone,name\n" + cells + "\n3,4\n"
    tracemalloc.start()
    try:
        message = _refused(data)
        _size, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert f"Line {line} is longer than a row may be (at most 131,072 characters)." in message
    assert peak < 20 * 1024 * 1024  # the file is 3 MB; its cells as strings were 100+ MB


def test_a_rows_lines_count_together_and_a_long_cell_under_the_bound_is_kept(app):
    # One quoted cell over many short lines: the row's lines are what is held.
    lines = "\n".join(["y" * 1000] * 140)
    assert "Line 132 is longer than a row may be" in _refused(f'phone,note\n1,"{lines}"\n')
    cell = "x" * 100_000
    audience = _import(f'phone,note\n11987654321,"{cell}"\n')
    assert _rows(audience.id) == [["11987654321", cell]]


@pytest.mark.parametrize("bom", [codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE])
def test_excels_unicode_text_is_read_as_utf16(app, bom):
    text = "telefone\tnome\n11987654321\tConceição\n"
    codec = "utf-16-le" if bom == codecs.BOM_UTF16_LE else "utf-16-be"
    audience = _import(bom + text.encode(codec))
    assert (audience.encoding, audience.delimiter) == ("utf-16", "\t")
    assert audience.columns == ["telefone", "nome"]
    assert _rows(audience.id) == [["11987654321", "Conceição"]]


def test_no_file_is_refused(app):
    with pytest.raises(ServiceError, match=r"Choose a CSV file\."):
        audiences.import_csv(None, None, None, current_app.config)


def test_a_file_over_the_audience_limit_is_refused(app):
    app.config["AUDIENCE_UPLOAD_MAX_MB"] = 1
    data = "phone,name\n" + "11987654321,Ana\n" * 70_000  # 1.1 MB
    assert "at most 1 MB" in _refused(data)


@pytest.mark.parametrize(
    ("columns", "phone"),
    [
        (["Nome", "Telefone", "Cidade"], "Telefone"),
        (["nome", "celular_whatsapp", "telefone_fixo"], "celular_whatsapp"),
        (["Name", "Mobile phone", "City"], "Mobile phone"),
        (["Número", "Nome"], "Número"),
        (["a", "b"], None),
    ],
)
def test_the_phone_column_is_guessed_from_its_name(columns, phone):
    assert audiences.guess_phone_column(columns) == phone


# -- the campaign: validation, mapping


@pytest.fixture
def owner(app, user_factory, live_server):
    seed_demo()
    user = user_factory(Role.SUPERVISOR)
    lift_limits(user)
    app.config["APP_BASE_URL"] = live_server  # where the mock WhatsApp answers
    return user


def _template() -> MessageTemplate:
    return db.session.query(MessageTemplate).filter_by(name="promo_weekend").one()


def _fields(audience: AudienceFile, **change: Any):
    template = _template()
    data = {
        "name": "CSV",
        "sender_id": default_sender().id,
        "template_id": template.id,
        "audience_file_id": audience.id,
        "audience_phone_column": "telefone",
        "variables": {
            "first_name": {"field": "nome"},
            "discount": {"text": "10%"},
            "city": {"field": "cidade"},
            "coupon": {"field": "cupom"},
        },
    } | change
    return parse_campaign(data, template_variables_for(template.id))


def _csv_campaign(owner_id: int, data: str = PEOPLE) -> Campaign:
    return create_campaign(_fields(_import(data)), owner_id)


def test_a_campaign_takes_a_file_its_phone_column_and_columns_as_variables(app, owner):
    campaign = _csv_campaign(owner.id)
    assert campaign.audience_file is not None and campaign.audience_phone_column == "telefone"
    assert campaign.variable_mapping["first_name"] == {"field": "nome"}
    copy = duplicate_campaign(campaign.id, owner.id)
    assert (copy.audience_file_id, copy.audience_phone_column) == (
        campaign.audience_file_id,
        "telefone",
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"audience_phone_column": "celular"}, "audience_phone_column"),
        ({"audience_phone_column": None}, "audience_phone_column"),
        ({"variables": {"first_name": {"field": "first_name"}}}, "variables.first_name"),
        ({"language_field": "idioma"}, "language_field"),
        ({"audience_file_id": 999_999}, "audience_file_id"),
    ],
)
def test_a_file_campaign_names_only_its_files_columns(app, owner, change, field):
    audience = _import(PEOPLE)
    variables = _fields(audience).variable_mapping | change.pop("variables", {})
    with pytest.raises((Invalid, ServiceError)) as refused:
        create_campaign(_fields(audience, variables=variables, **change), owner.id)
    assert field in refused.value.errors


@pytest.mark.parametrize("field", ["language_field", "time_zone_field"])
def test_a_column_too_long_for_the_language_or_time_zone_says_so(app, owner, field):
    audience = _import("telefone,nome,cidade,cupom," + "z" * 100 + "\n11987654321,a,b,c,d\n")
    with pytest.raises(Invalid) as refused:
        _fields(audience, **{field: "z" * 100})
    assert "too long to be chosen here (at most 64 characters)" in refused.value.errors[field]


@pytest.mark.parametrize("bad", [[1], -1, True, 1.5, "x", 0])
def test_a_bad_file_id_is_the_only_problem_said(app, owner, bad):
    audience = _import(PEOPLE)
    assert audience.id == 1 or bad != 1.5  # 1.5 is not read as file 1 either way
    with pytest.raises(Invalid) as refused:
        _fields(audience, audience_file_id=bad, language_field="cidade")
    assert list(refused.value.errors) == ["audience_file_id"]


def test_an_erp_audience_keeps_the_erps_fields(app, owner):
    template = _template()
    with pytest.raises(Invalid) as refused:
        parse_campaign(
            {
                "name": "ERP",
                "sender_id": default_sender().id,
                "template_id": template.id,
                "variables": {"first_name": {"field": "nome"}},
            },
            template_variables_for(template.id),
        )
    assert "variables.first_name" in refused.value.errors


def _upload(client, data: bytes | str, name: str = "clientes.csv", **headers: str):
    raw = data.encode() if isinstance(data, str) else data
    return client.post(
        "/audiences",
        data={"audience_file": (io.BytesIO(raw), name)},
        content_type="multipart/form-data",
        headers={"HX-Request": "true", **headers},
    )


def test_an_upload_answers_the_phone_column_guessed_and_a_preview(app, client, login_as):
    login_as(Role.SUPERVISOR)
    lines = PEOPLE + "".join(f"1198765{n:04d};P{n};X;Y\n" for n in range(10))
    response = _upload(client, lines)
    assert response.status_code == 200
    assert response.headers["HX-Trigger-After-Settle"] == "audience-changed"
    html = response.get_data(as_text=True)
    audience = db.session.scalars(sa.select(AudienceFile)).one()
    assert f'name="audience_file_id" value="{audience.id}"' in html
    assert '<option value="telefone" selected>' in html
    assert html.count("<tr>") == 1 + audiences.PREVIEW_ROWS  # the header and 5 rows
    assert "João" in html and "P9" not in html
    assert "15 rows" in html


def test_a_refused_upload_says_why_in_place(app, client, login_as):
    login_as(Role.SUPERVISOR)
    response = _upload(client, "phone,phone\n1,2\n")
    assert response.status_code == 422
    assert "twice" in response.get_data(as_text=True)


def test_an_upload_over_its_limit_is_413_in_place_unread(app, client, login_as, monkeypatch):
    login_as(Role.SUPERVISOR)
    view = app.view_functions["audiences.audience_create"]
    assert view.upload_limit(app.config) == 100 * 1_000_000 + 1024 * 1024
    # Made small rather than 100 MB (a body this size is spooled to disk by the client).
    monkeypatch.setattr(view, "upload_limit", lambda config: 1000)
    response = _upload(client, "phone\n" + "11987654321\n" * 200, **{"HX-Target": "audience-file"})
    assert response.status_code == 413
    assert "at most 100 MB" in response.get_data(as_text=True)
    assert response.headers["HX-Retarget"] == "#audience-file"


def test_a_stranger_cannot_send_a_body_the_size_of_an_audience(app, client):
    """CSRF's check reads a page's form before the sign-in check runs: a stranger's body is
    held to MAX_REQUEST_BYTES, not the audience limit, so it cannot fill the disk."""
    app.config["MAX_REQUEST_BYTES"] = app.config["MAX_CONTENT_LENGTH"] = 4096
    app.config["WTF_CSRF_ENABLED"] = True  # its check is what reads the form first
    assert _upload(client, "phone\n" + "11987654321\n" * 1000).status_code == 413


def test_the_audience_limit_is_its_own_and_only_for_who_builds_campaigns(app, client, login_as):
    app.config["MAX_UPLOAD_BYTES"] = 100_000
    app.config["MAX_REQUEST_BYTES"] = app.config["MAX_CONTENT_LENGTH"] = 100_000
    big = "phone,name\n" + "11987654321,Ana\n" * 20_000  # 320 KB: over both limits
    login_as(Role.VIEWER)
    app.config["WTF_CSRF_ENABLED"] = True  # its check reads the form before the role's
    # Held to MAX_REQUEST_BYTES as the form is read: not given the audience limit.
    assert _upload(client, big).status_code == 413
    app.config["WTF_CSRF_ENABLED"] = False
    client.post("/logout")
    login_as(Role.SUPERVISOR)
    assert _upload(client, big).status_code == 200


def test_the_mapping_offers_the_files_columns_and_maps_same_names(app, client, login_as):
    login_as(Role.SUPERVISOR)
    seed_demo()
    audience = _import("telefone,first_name,cidade\n11987654321,Ana,Rio\n")
    form = {
        "template_id": str(_template().id),
        "audience_source": "csv",
        "audience_file_id": str(audience.id),
    }
    html = client.post("/campaigns/mapping", data=form).get_data(as_text=True)
    assert "column: cidade" in html and "customer: " not in html
    assert '<option value="field:first_name" selected>column: first_name</option>' in html
    erp = client.post("/campaigns/mapping", data=form | {"audience_source": "erp"})
    assert "column: cidade" not in erp.get_data(as_text=True)


def test_columns_named_text_or_track_are_mapped_from_the_form(app, client, login_as):
    login_as(Role.SUPERVISOR)
    seed_demo()
    audience = _import("telefone,text,track\n11987654321,Ana,Rio\n")
    form = {
        "template_id": str(_template().id),
        "audience_source": "csv",
        "audience_file_id": str(audience.id),
        "var.first_name.source": "field:text",
        "var.city.source": "field:track",
        "var.discount.source": "text",
        "var.discount.text": "10%",
        "var.coupon.source": "telefone",  # a bare name still posts a field
    }
    data = campaign_data_from_form(MultiDict(form))
    assert data["variables"] == {
        "first_name": {"field": "text"},
        "city": {"field": "track"},
        "discount": {"text": "10%"},
        "coupon": {"field": "telefone"},
    }
    html = client.post("/campaigns/mapping", data=form).get_data(as_text=True)
    first_name = re.search(r'name="var.first_name.source".*?</select>', html, re.S)
    assert first_name is not None
    assert re.findall(r'value="([^"]*)" selected', first_name.group(0)) == ["field:text"]
    discount = re.search(r'name="var.discount.source".*?</select>', html, re.S)
    assert discount is not None
    assert re.findall(r'value="([^"]*)" selected', discount.group(0)) == ["text"]


def test_the_time_zone_choice_redraws_with_the_audience(app, client, login_as):
    login_as(Role.SUPERVISOR)
    seed_demo()
    audience = _import("telefone,fuso\n11987654321,America/Manaus\n")
    form = {
        "audience_source": "csv",
        "audience_file_id": str(audience.id),
        "time_zone_field": "fuso",
    }
    html = client.post("/campaigns/time-zone", data=form).get_data(as_text=True)
    assert '<option value="fuso" selected>column: fuso</option>' in html
    assert "customer: " not in html
    assert "audience-changed from:body" in html and "input[name=audience_source]" in html
    erp = client.post("/campaigns/time-zone", data=form | {"audience_source": "erp"})
    assert "column: fuso" not in erp.get_data(as_text=True)
    assert "customer: " in erp.get_data(as_text=True)
    page = client.get("/campaigns/new").get_data(as_text=True)
    assert 'id="campaign-time-zone"' in page


def test_the_form_saves_a_csv_audience_and_the_page_says_so(app, client, login_as):
    user = login_as(Role.SUPERVISOR)
    lift_limits(user)
    audience = _import(PEOPLE)
    form = {
        "name": "Planilha",
        "sender_id": str(default_sender().id),
        "template_id": str(_template().id),
        "audience_source": "csv",
        "audience_file_id": str(audience.id),
        "audience_phone_column": "telefone",
        "var.first_name.source": "nome",
        "var.discount.source": "text",
        "var.discount.text": "10%",
        "var.city.source": "cidade",
        "var.coupon.source": "cupom",
    }
    refused = client.post("/campaigns/", data=form | {"audience_file_id": ""})
    assert refused.status_code == 422
    assert "Upload a CSV file for the audience." in refused.get_data(as_text=True)
    response = client.post("/campaigns/", data=form)
    assert response.status_code == 303, response.get_data(as_text=True)
    campaign = db.session.scalars(sa.select(Campaign)).one()
    assert campaign.audience_file_id == audience.id
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "the CSV file clientes.csv" in page and "5 rows" in page
    assert "column: nome" in page
    edit = client.get(f"/campaigns/{campaign.id}/edit").get_data(as_text=True)
    assert 'id="audience-source-csv" checked' in edit and "João" in edit


# -- the fan-out from the file


def test_the_fan_out_reads_the_file_with_the_erps_skips(app, owner, monkeypatch):
    suppress_quietly(db.session, OPTED_OUT, "STOP", "opt_out_reply")
    db.session.commit()
    campaign = _csv_campaign(owner.id)
    send_campaign_now(campaign.id, owner.id)
    monkeypatch.setattr(fanout, "PAGE_SIZE", 2)
    first = fanout.fan_out_file_page(campaign.id, app.config)
    assert first is not None and not first.done
    db.session.refresh(campaign)
    assert campaign.erp_cursor == "2"
    fanout.load_audience(campaign.id, app.config)  # carries on from the cursor
    fanout.load_audience(campaign.id, app.config)  # loaded: adds nothing
    rows = db.session.scalars(sa.select(Message).order_by(Message.customer_ref)).all()
    assert [m.customer_ref for m in rows] == ["1", "2", "3", "4", "5"]
    assert [(m.status, m.error_code) for m in rows] == [
        (MessageStatus.PENDING, None),
        (MessageStatus.PENDING, None),
        (MessageStatus.SKIPPED, "invalid_phone"),
        (MessageStatus.SKIPPED, "duplicate"),
        (MessageStatus.SKIPPED, "suppressed"),
    ]
    assert rows[0].phone == "+5511987654301"
    assert rows[0].params == {
        "first_name": "João",
        "discount": "10%",
        "city": "São Paulo",
        "coupon": "A1",
    }
    assert rows[0].customer_data["name"] == "João"  # named from the "nome" column
    assert_counters_match_rows(campaign.id)


def test_preflight_dry_run_and_test_send_read_the_file(app, owner):
    campaign = _csv_campaign(owner.id)
    check = preflight.check(campaign, app.config)
    assert (check.audience, check.audience_known) == (5, True)
    rows = dry_run(campaign, app.config)
    assert [row.customer_ref for row in rows] == ["1", "2", "3", "4", "5"]
    assert rows[0].text.startswith("Olá João!") and rows[0].skip_reason is None
    assert rows[2].skip_reason == "invalid phone number"
    assert rows[3].skip_reason == "duplicate phone number"
    # The mock WhatsApp refuses a send missing a variable (132000): the file's first row
    # filled them.
    assert send_test_message(campaign.id, "+5511999990001", owner.id)


def test_the_exclusions_of_a_csv_audience_are_counted_from_its_rows_not_the_erp(
    app, owner, monkeypatch, client, login_as
):
    """The live count and the pre-flight check read the file (exact for a file this
    size); the ERP is never asked."""
    suppress_quietly(db.session, OPTED_OUT, "asked", "manual")
    db.session.commit()
    campaign = create_campaign(_fields(_import(PEOPLE), frequency_cap_days=7), owner.id)
    # Another campaign contacted Maria two days ago: within the cap.
    other = create_campaign(_fields(_import(PEOPLE), name="Earlier"), owner.id)
    contact_history.record(db.session, other.id, {1: "+5521998765402"})
    db.session.execute(
        sa.text(
            "UPDATE contact_history SET contacted_at = now() - interval '2 days'"
            " WHERE campaign_id = :id"
        ),
        {"id": other.id},
    )
    db.session.commit()

    def no_erp(*_args, **_kwargs):
        raise AssertionError("the ERP was asked about a CSV audience")

    monkeypatch.setattr(exclusions, "estimate", no_erp)
    counts = exclusions.of_campaign(campaign, app.config)
    assert counts is not None and not counts.estimated
    assert (counts.total, counts.invalid, counts.duplicate) == (5, 1, 1)
    assert (counts.suppressed, counts.frequency_cap, counts.remaining) == (1, 1, 1)
    check = preflight.check(db.session.get(Campaign, campaign.id), app.config)
    (note,) = [w for w in check.warnings if w.code == "exclusions"]
    assert note.params["capped"] == 1 and note.params["remaining"] == 1
    gone = exclusions.of_file(campaign.audience_file_id, "no such column", 7, False, None, {})
    assert gone is None
    # A CSV campaign whose file retention deleted: nothing to count, and still no ERP.
    erased = db.session.get(Campaign, campaign.id)
    erased.audience_file_id = None
    assert exclusions.of_campaign(erased, app.config) is None
    assert not [w for w in preflight.check(erased, app.config).warnings if "exclusions" in w.code]
    db.session.rollback()
    # The form's live count, for the file chosen in it.
    login_as(Role.SUPERVISOR)
    answer = client.post(
        "/campaigns/exclusions",
        data={
            "audience_source": "csv",
            "audience_file_id": str(campaign.audience_file_id),
            "audience_phone_column": "telefone",
            "frequency_cap_days": "7",
        },
    )
    html = answer.get_data(as_text=True)
    assert answer.status_code == 200 and 'id="exclusion-remaining"' in html
    assert "form-error" not in html and "estimate" not in html.lower()


def test_a_csv_audience_goes_out_end_to_end_with_a_real_worker(
    app, owner, live_server, start_worker
):
    suppress_quietly(db.session, OPTED_OUT, "STOP", "opt_out_reply")
    db.session.commit()
    many = "".join(f"11 9{n:04d}-{n:04d};Cliente {n};Campinas;Z{n}\n" for n in range(1001, 1031))
    campaign = _csv_campaign(owner.id, PEOPLE + many)
    start_worker()
    send_campaign_now(campaign.id, owner.id)

    def status() -> CampaignStatus:
        db.session.expire_all()
        return db.session.get(Campaign, campaign.id).status

    wait_for(lambda: status() is CampaignStatus.COMPLETED, what="completed")
    rows = Counter(
        (m.status if m.status is MessageStatus.SKIPPED else "out", m.error_code)
        for m in db.session.scalars(sa.select(Message).where(Message.campaign_id == campaign.id))
    )
    assert rows == Counter(
        {
            ("out", None): 32,
            (MessageStatus.SKIPPED, "invalid_phone"): 1,
            (MessageStatus.SKIPPED, "duplicate"): 1,
            (MessageStatus.SKIPPED, "suppressed"): 1,
        }
    )
    log = requests.get(f"{live_server}/mock/whatsapp/log?limit=1000", timeout=10).json()
    assert len(log) == 32 and "5511910011001" in {entry["to"].lstrip("+") for entry in log}
    sent = db.session.scalar(
        sa.select(Message).where(Message.campaign_id == campaign.id, Message.customer_ref == "6")
    )
    assert sent.params["first_name"] == "Cliente 1001" and sent.params["coupon"] == "Z1001"
    assert_counters_match_rows(campaign.id)


# -- the API


@pytest.fixture
def headers(owner, token_for):
    return token_for(Role.SUPERVISOR)


def _api_upload(client, headers, data: str, name: str = "lista.csv"):
    return client.post(
        "/api/v1/audiences",
        data={"file": (io.BytesIO(data.encode()), name)},
        content_type="multipart/form-data",
        headers=headers,
    )


def test_the_api_uploads_and_reads_an_audience(app, client, headers):
    response = _api_upload(client, headers, PEOPLE)
    assert response.status_code == 201, response.json
    body = response.json
    assert body["name"] == "lista.csv" and body["row_count"] == 5
    assert body["columns"] == ["telefone", "nome", "cidade", "cupom"]
    assert body["phone_column"] == "telefone"
    assert body["preview"][0] == ["11 98765-4301", "João", "São Paulo", "A1"]
    assert len(body["preview"]) == 5
    assert response.headers["Location"].endswith(f"/api/v1/audiences/{body['id']}")
    got = client.get(f"/api/v1/audiences/{body['id']}", headers=headers)
    assert got.status_code == 200 and got.json == body
    assert client.get("/api/v1/audiences/999999", headers=headers).status_code == 404


def test_the_api_refuses_a_bad_file_at_its_field(app, client, headers, token_for):
    refused = _api_upload(client, headers, "phone,\n1,2\n")
    assert refused.status_code == 422 and "file" in refused.json["error"]["fields"]
    missing = client.post(
        "/api/v1/audiences", data={}, content_type="multipart/form-data", headers=headers
    )
    assert missing.status_code == 422 and "file" in missing.json["error"]["fields"]
    viewer = _api_upload(client, token_for(Role.VIEWER), PEOPLE)
    assert viewer.status_code == 403


def test_the_api_refuses_a_body_over_the_audience_limit_unread(app, client, headers, monkeypatch):
    view = app.view_functions["api.audience_create"]
    assert view.upload_limit(app.config) == audiences.upload_limit_bytes(app.config)
    monkeypatch.setattr(view, "upload_limit", lambda config: 1000)
    response = _api_upload(client, headers, "phone\n" + "11987654321\n" * 200)
    assert response.status_code == 413 and response.json["error"]["code"] == "too_large"
    assert _file_count() == 0


def test_the_api_creates_updates_and_duplicates_a_csv_campaign(app, client, headers):
    file_id = _api_upload(client, headers, PEOPLE).json["id"]
    template = _template()
    payload = {
        "name": "CSV API",
        "sender_id": default_sender().id,
        "template_id": template.id,
        "audience_file_id": file_id,
        "audience_phone_column": "telefone",
        "variables": {
            "first_name": {"field": "nome"},
            "discount": {"text": "5%"},
            "city": {"field": "cidade"},
            "coupon": {"field": "cupom"},
        },
    }
    bad = client.post(
        "/api/v1/campaigns", json=payload | {"audience_phone_column": "fone"}, headers=headers
    )
    assert bad.status_code == 422 and "audience_phone_column" in bad.json["error"]["fields"]
    created = client.post("/api/v1/campaigns", json=payload, headers=headers)
    assert created.status_code == 201, created.json
    campaign = created.json
    assert (campaign["audience_file_id"], campaign["audience_phone_column"]) == (
        file_id,
        "telefone",
    )
    changed = client.patch(
        f"/api/v1/campaigns/{campaign['id']}", json={"name": "Renamed"}, headers=headers
    )
    assert changed.status_code == 200 and changed.json["audience_file_id"] == file_id
    to_erp = client.patch(
        f"/api/v1/campaigns/{campaign['id']}",
        json={"audience_file_id": None, "variables": {"first_name": {"field": "nome"}}},
        headers=headers,
    )
    assert to_erp.status_code == 422 and "variables.first_name" in to_erp.json["error"]["fields"]
    copy = client.post(f"/api/v1/campaigns/{campaign['id']}/duplicate", headers=headers)
    assert copy.status_code == 201 and copy.json["audience_file_id"] == file_id
    check = client.get(f"/api/v1/campaigns/{campaign['id']}/preflight", headers=headers)
    assert check.status_code == 200 and check.json["audience"] == 5


# -- personal data


def _file_count() -> int:
    return db.session.scalar(sa.select(sa.func.count()).select_from(AudienceFile)) or 0


def test_a_file_no_campaign_uses_is_deleted_a_day_after_upload(app, owner):
    unused = _import(PEOPLE).id
    used = _csv_campaign(owner.id).audience_file_id
    assert audiences.delete_unused(db.session) == 0  # not a day old yet
    db.session.rollback()
    db.session.execute(
        sa.update(AudienceFile).values(
            created_at=database_now(db.session) - timedelta(days=1, minutes=1)
        )
    )
    db.session.commit()
    tasks.reconcile(timestamp=int(time.time()))  # the maintenance job, as its tick runs it
    db.session.expire_all()
    assert db.session.get(AudienceFile, unused) is None
    assert db.session.get(AudienceFile, used) is not None
    rows = db.session.scalar(
        sa.select(sa.func.count()).select_from(AudienceRow).where(AudienceRow.file_id == unused)
    )
    assert rows == 0


def _end_long_ago(campaign: Campaign) -> None:
    campaign.status = CampaignStatus.COMPLETED
    campaign.completed_at = database_now(db.session) - timedelta(days=400)
    db.session.commit()


def test_the_retention_deletes_a_file_with_the_last_campaign_using_it(app, owner):
    first = _csv_campaign(owner.id)
    file_id = first.audience_file_id
    second = duplicate_campaign(first.id, owner.id)
    _end_long_ago(first)
    personal_data.erase_expired(180)
    assert db.session.get(AudienceFile, file_id) is not None  # the copy still needs it
    db.session.refresh(second)
    _end_long_ago(second)
    personal_data.erase_expired(180)
    db.session.expire_all()
    assert db.session.get(AudienceFile, file_id) is None
    assert db.session.scalar(sa.select(sa.func.count()).select_from(AudienceRow)) == 0
    kept = db.session.get(Campaign, first.id)
    assert kept.audience_file_id is None and kept.audience_phone_column == "telefone"
    # its page and a copy still say what it was, and a copy cannot send without a file
    copy = duplicate_campaign(first.id, owner.id)
    with pytest.raises(ServiceError, match="deleted with its data"):
        update_campaign(copy.id, _fields_of(copy), owner.id)


def _fields_of(campaign: Campaign):
    from campaigns.services.campaigns import _fields_of as fields_of

    return fields_of(campaign)


def test_an_erasure_deletes_the_persons_rows_from_every_file(app, owner):
    one = _import(PEOPLE)
    two = _import("nome,whatsapp\nJoão,+55 (11) 98765-4301\nOutro,11987654399\n")
    preview = personal_data.preview_erasure("11987654301")
    assert preview.audience_rows == 3 and not preview.nothing_stored
    assert _file_count() == 2
    report = personal_data.erase_person("+5511987654301", None)
    assert report.audience_rows == 3
    remaining = [cells[0] for cells in _rows(one.id)]
    assert remaining == ["(21) 99876-5402", "12345", "11987654305"]
    assert [cells[1] for cells in _rows(two.id)] == ["11987654399"]
    db.session.refresh(one)
    assert one.row_count == 3
    assert personal_data.preview_erasure("11987654301").audience_rows == 0


def test_a_persons_rows_are_found_by_the_index_not_by_reading_every_row(app, owner):
    audience = _import("nome;whatsapp;pedido\nAna;(11) 98765-4301;123456789012\nBia;1234;5\n")
    tails = db.session.scalars(
        sa.select(AudienceRow.phone_tails).where(AudienceRow.file_id == audience.id)
    ).all()
    assert tails == [[87654301, 56789012], []]  # each cell with 8 digits or more: its last 8
    db.session.execute(sa.text("SET LOCAL enable_seqscan = off"))  # as on a million rows
    plan = db.session.execute(
        sa.text("EXPLAIN " + str(audiences.PERSON_CANDIDATES)), {"tail": 87654301}
    ).scalars()
    assert "audience_rows_phone_tails_idx" in "\n".join(plan)
    db.session.rollback()
    # A long number ending the same (the order's 12 digits) is no person's: confirmed.
    assert audiences.person_rows(db.session, "+5511987654301", "BR") == [(audience.id, 1)]
    assert audiences.person_rows(db.session, "+5511956789012", "BR") == []


def test_a_row_erased_twice_is_counted_off_its_file_once(app, owner):
    """Two erasures at once find the same rows; the second deletes none, and must not
    count them off again."""
    audience = _import(PEOPLE)
    rows = audiences.person_rows(db.session, "+5511987654301", "BR")
    assert len(rows) == 2
    assert audiences.erase_person_rows(db.session, rows) == 2
    assert audiences.erase_person_rows(db.session, rows) == 0
    db.session.commit()
    db.session.refresh(audience)
    assert audience.row_count == 3 == len(_rows(audience.id))
