"""CSV in the reader's conventions: the recipients export (";", a decimal comma and
dd/mm/yyyy local times for a Brazilian reader; "," and ISO for others; ``?format=``
chooses), and the opt-out import, which reads either."""

from __future__ import annotations

import csv
import io
import unicodedata
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
from campaigns.views import campaigns as campaign_views
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
    assert all(len(row) == len(rows[0]) == len(recipients.RECIPIENT_CSV_COLUMNS) for row in rows)
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
    assert row["name"] == "João Conceição" and row["phone"] == "\u2060+5511987654321"


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


@pytest.mark.parametrize("fmt", [csvfiles.EXCEL_BR, csvfiles.STANDARD])
def test_phones_and_refs_stay_text_in_a_spreadsheet(fmt):
    """A number-like value (digits, maybe after +) in a column of identifiers follows an
    invisible word joiner, which no spreadsheet reads as a number; anything else meets
    the formula check, so a ref like +HYPERLINK(…) is still made inert."""
    zone = ZoneInfo("America/Sao_Paulo")
    ident = csvfiles.Identifier
    cells = [
        ident("+5511987654321"),  # Excel: 5,51199E+12, the + gone
        ident("5511987654321"),
        ident("000123"),  # a ref: its zeros gone
        ident("+55 (11) x"),  # a raw phone, not only digits: made inert like any text
        ident('+HYPERLINK("http://x","y")'),  # an ERP's ref may be anything
        ident("C0000042"),  # text already
        ident("-12"),  # like a formula: made inert as any text is
        ident("erased"),
        "+5511987654321",  # not an identifier: written as it is
    ]
    assert [csvfiles.cell(v, fmt, zone) for v in cells] == [
        "\u2060+5511987654321",
        "\u20605511987654321",
        "\u2060000123",
        "'+55 (11) x",
        '\'+HYPERLINK("http://x","y")',
        "C0000042",
        "'-12",
        "erased",
        "+5511987654321",
    ]
    assert unicodedata.category(csvfiles.KEEP_AS_TEXT) == "Cf"  # a format char: not shown
    assert not csvfiles.KEEP_AS_TEXT.isspace()  # nothing trims it away


def test_an_exported_phone_imports_back_as_an_opt_out(client, campaign, login_as):
    (row,) = read(export(client, campaign, PT_BR), ";", list(recipients.RECIPIENT_CSV_COLUMNS))
    login_as(Role.SUPERVISOR)
    response = upload(client, f"telefone;motivo\n{row['phone']};pediu\n".encode())
    assert "1 added, 0 already on the list, 0 invalid" in response.get_data(as_text=True)
    assert reasons() == {"+5511987654321": "pediu"}


@pytest.mark.parametrize(
    ("name", "filename", "utf8"),
    [
        ("Promoção de Natal", "promocao-de-natal", "promocao-de-natal"),
        ("  BLACK   Friday!! 50% off ", "black-friday-50-off", "black-friday-50-off"),
        ("Ação_São-João / 2026", "acao-sao-joao-2026", "acao-sao-joao-2026"),
        # Another script: the ASCII name falls back to the campaign's id, the UTF-8 one
        # keeps its letters.
        ("Акция Зима", "campaign-{id}", "%D0%B0%D0%BA%D1%86%D0%B8%D1%8F-%D0%B7%D0%B8%D0%BC%D0%B0"),
        ("🎄🎁", "campaign-{id}", "campaign-{id}"),
    ],
)
def test_the_file_is_named_after_the_campaign_and_the_day(client, campaign, name, filename, utf8):
    campaign.name = name
    db.session.commit()
    response = client.get(f"/campaigns/{campaign.id}/recipients.csv", headers=PT_BR)
    assert response.status_code == 200
    response.close()
    today = datetime.now(ZoneInfo("America/Sao_Paulo")).date().isoformat()
    filename, utf8 = (part.format(id=campaign.id) for part in (filename, utf8))
    assert response.headers["Content-Disposition"] == (
        f"attachment; filename=\"{filename}-{today}.csv\"; filename*=UTF-8''{utf8}-{today}.csv"
    )


def test_the_day_in_the_name_is_the_readers(client, campaign, monkeypatch):
    class At2UtcOnTheFifth(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 12, 5, 2, 0, tzinfo=UTC).astimezone(tz)

    monkeypatch.setattr(campaign_views, "datetime", At2UtcOnTheFifth)
    response = client.get(f"/campaigns/{campaign.id}/recipients.csv")
    response.close()
    # Still 4 December in São Paulo (23:00), where the reader is.
    assert 'filename="natal-2026-12-04.csv"' in response.headers["Content-Disposition"]


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
