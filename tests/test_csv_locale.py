"""CSV in the reader's conventions: the recipients export (";", a decimal comma and
dd/mm/yyyy local times for a Brazilian reader; "," and ISO for others; ``?format=``
chooses), and the opt-out import, which reads either."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import flask_babel
import pytest
from flask_babel import force_locale

from app import db
from campaigns import csvfiles, recipients
from campaigns.models import Campaign, Message, MessageStatus, Role, Suppression, User
from campaigns.services.suppressions import import_suppressions
from tests.helpers import demo_campaign

PT_BR = {"Accept-Language": "pt-BR,pt;q=0.9"}
EN = {"Accept-Language": "en-US,en;q=0.9"}
# 17:30:05.123456 UTC is 14:30:05 in São Paulo (UTC-3, no summer time since 2019).
SENT = datetime(2026, 12, 4, 17, 30, 5, 123456, tzinfo=UTC)
DELIVERED = datetime(2026, 12, 4, 17, 31, 0, tzinfo=UTC)


@pytest.fixture
def campaign(app, login_as) -> Campaign:
    owner = login_as(Role.VIEWER)
    campaign = demo_campaign(owner.id, name="Natal")
    db.session.add(
        Message(
            campaign_id=campaign.id,
            customer_ref="C1",
            phone="+5511987654321",
            customer_data={"name": "João Conceição"},
            status=MessageStatus.DELIVERED,
            sent_at=SENT,
            delivered_at=DELIVERED,
            provider_message_id="wamid.1",
        )
    )
    db.session.commit()
    return campaign


def export(client, campaign: Campaign, headers: dict[str, str], query: str = "") -> str:
    response = client.get(f"/campaigns/{campaign.id}/recipients.csv{query}", headers=headers)
    assert response.status_code == 200
    body = response.get_data().decode("utf-8")
    assert body.startswith(csvfiles.BOM)  # Excel reads "João" as UTF-8 only with it
    return body.removeprefix(csvfiles.BOM)


def read(body: str, delimiter: str, header: list[str] | None = None) -> list[dict[str, str]]:
    """The rows by column name: the English header's, unless ``header`` names them."""
    rows = list(csv.reader(io.StringIO(body), delimiter=delimiter))
    assert all(len(row) == len(rows[0]) == 11 for row in rows)
    return [dict(zip(header or rows[0], row, strict=True)) for row in rows[1:]]


def test_a_brazilian_reader_gets_semicolons_and_local_times(app, client, campaign):
    body = export(client, campaign, PT_BR)
    header = next(csv.reader(io.StringIO(body), delimiter=";"))
    with app.test_request_context(), force_locale("pt_BR"):
        assert header == recipients.recipient_csv_header("America/Sao_Paulo")
    assert header[1] != "Name" and header[6].endswith(" (America/Sao_Paulo)")  # translated
    (row,) = read(body, ";", list(recipients.RECIPIENT_CSV_COLUMNS))
    # Local time, to the second, the zone named in the header: no offset a spreadsheet
    # would leave as text, no microseconds.
    assert row["sent_at"] == "04/12/2026 14:30:05"
    assert row["delivered_at"] == "04/12/2026 14:31:00"
    assert row["read_at"] == ""
    assert row["name"] == "João Conceição" and row["phone"] == "+5511987654321"


def test_an_english_reader_gets_commas_and_iso_times(client, campaign):
    (row,) = read(export(client, campaign, EN), ",")
    assert row["Sent at (America/Sao_Paulo)"] == "2026-12-04 14:30:05"
    assert row["Customer ref"] == "C1" and row["Status"] == "Delivered"


def test_times_are_in_the_readers_time_zone_and_format_in_their_language(client, campaign):
    reader = db.session.get(User, campaign.owner_id)
    reader.timezone, reader.locale = "America/Manaus", "pt_BR"  # UTC-4; their own settings
    db.session.commit()
    body = export(client, campaign, EN)  # their setting beats the browser's
    (row,) = read(body, ";", list(recipients.RECIPIENT_CSV_COLUMNS))
    assert row["sent_at"] == "04/12/2026 13:30:05"
    assert "(America/Manaus)" in body.splitlines()[0]


@pytest.mark.parametrize(
    ("headers", "query", "delimiter", "sent"),
    [
        (PT_BR, "?format=standard", ",", "2026-12-04 14:30:05"),
        (EN, "?format=excel-br", ";", "04/12/2026 14:30:05"),
        (PT_BR, "?format=excel-br", ";", "04/12/2026 14:30:05"),
        (EN, "?format=standard", ",", "2026-12-04 14:30:05"),
        # Not a format: the reader's own, not an error.
        (PT_BR, "?format=xlsx", ";", "04/12/2026 14:30:05"),
        (EN, "?format=", ",", "2026-12-04 14:30:05"),
    ],
)
def test_the_format_chosen_overrides_the_language(
    client, campaign, headers, query, delimiter, sent
):
    body = export(client, campaign, headers, query)
    (row,) = read(body, delimiter, list(recipients.RECIPIENT_CSV_COLUMNS))
    assert row["sent_at"] == sent


def test_the_page_offers_both_formats_the_readers_first(client, campaign):
    url = f"/campaigns/{campaign.id}/recipients.csv?format="
    for headers, first, second in ((PT_BR, "excel-br", "standard"), (EN, "standard", "excel-br")):
        response = client.get(f"/campaigns/{campaign.id}/recipients", headers=headers)
        html = response.get_data(as_text=True)
        assert html.index(url + first) < html.index(url + second)
    assert "Excel in Portuguese (;)" in html and "Standard (,)" in html


def test_decimals_take_the_formats_mark_and_text_is_kept_inert():
    zone = ZoneInfo("America/Sao_Paulo")
    row = [Decimal("1234.56"), 0.1, 1e20, 7, True, "=1+1", "+5511987654321", None]
    assert [csvfiles.cell(v, csvfiles.EXCEL_BR, zone) for v in row] == [
        "1234,56",
        "0,1",
        "100000000000000000000",
        "7",
        "true",
        "'=1+1",
        "+5511987654321",
        "",
    ]
    assert csvfiles.cell(Decimal("1234.56"), csvfiles.STANDARD, zone) == "1234.56"
    body = "".join(csvfiles.chunks(["a", "b"], [[Decimal("2.5"), SENT]], csvfiles.EXCEL_BR, zone))
    assert body == "\ufeffa;b\r\n2,5;04/12/2026 14:30:05\r\n"


def test_the_format_follows_the_language_outside_a_page(app):
    # A request context pushed in the app fixture's context shares its ``g``, where
    # Flask-Babel keeps the locale it chose: forget it (requests do, before_request).
    with app.test_request_context(headers=PT_BR):
        flask_babel.refresh()
        assert csvfiles.chosen_format(None) is csvfiles.EXCEL_BR
        assert csvfiles.chosen_format("standard") is csvfiles.STANDARD
    with app.test_request_context(headers=EN):
        flask_babel.refresh()
        assert csvfiles.chosen_format(None) is csvfiles.STANDARD
        assert csvfiles.chosen_format("excel-br") is csvfiles.EXCEL_BR


# -- the opt-out import reads either convention


def upload(client, data: bytes):
    return client.post(
        "/suppressions/import",
        data={"file": (io.BytesIO(data), "optouts.csv")},
        content_type="multipart/form-data",
    )


def reasons() -> dict[str, str]:
    return {s.phone: s.reason for s in db.session.query(Suppression)}


@pytest.mark.parametrize(
    "text",
    [
        # Excel in Portuguese: semicolons, and commas inside the reasons.
        "\ufeffphone;reason\n11987654321;não quer, obrigado\n11912345678;disse pare\n",
        # Excel in English: commas, and a semicolon inside a quoted reason.
        '\ufeffphone,reason\n11987654321,"não quer, obrigado"\n11912345678,disse pare\n',
        '\ufeffPhone,Reason\n11987654321,"não quer, obrigado"\n11912345678,disse pare\n',
        "\ufeffphone\treason\n11987654321\tnão quer, obrigado\n11912345678\tdisse pare\n",
        "\ufeffMotivo;Telefone\nnão quer, obrigado;11987654321\ndisse pare;11912345678\n",
        "\ufefftelefone;motivo\n11987654321;não quer, obrigado\n11912345678;disse pare\n",
    ],
)
def test_import_reads_either_separator_with_a_byte_order_mark(client, login_as, text):
    login_as(Role.SUPERVISOR)
    response = upload(client, text.encode())
    assert response.status_code == 200
    assert "2 added, 0 already on the list, 0 invalid" in response.get_data(as_text=True)
    assert reasons() == {"+5511987654321": "não quer, obrigado", "+5511912345678": "disse pare"}


def test_without_a_header_the_rows_decide_the_separator(app):
    # The first line has a comma too (in the reason): the semicolon is the one on every line.
    report = import_suppressions("11987654321;não quer, obrigado\n11912345678;disse pare\n", None)
    assert (report.added, report.invalid_count) == (2, 0)


def test_a_bare_column_after_a_byte_order_mark_is_all_numbers(app):
    # Text handed over as it was read (not decoded as utf-8-sig): the mark is no digit.
    report = import_suppressions("\ufeff11987654321\n11912345678\n", None)
    assert (report.added, report.invalid_count) == (2, 0)


@pytest.mark.parametrize(
    ("lines", "delimiter"),
    [
        (["phone;reason", "1;a, b", "2;c"], ";"),
        (["phone,reason", '1,"a; b"', "2,c"], ","),
        (["phone\treason", "1\ta; b, c", "2\td"], "\t"),
        (["\ufeffphone;reason"], ";"),  # one line: the most frequent
        (["", "11987654321", "11912345678"], ","),  # one column: any
        ([], ","),
        (['"' * 10_000, ',"' * 10_000], ","),  # junk: an answer, quickly
    ],
)
def test_sniff_delimiter(lines, delimiter):
    assert csvfiles.sniff_delimiter(lines) == delimiter
