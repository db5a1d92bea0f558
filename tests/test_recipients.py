"""The campaign page's recipients: table fragments, keyset pages, CSV export, errors, retry."""

from __future__ import annotations

import csv
import io
import re
import time
from datetime import datetime
from itertools import count
from urllib.parse import quote
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from markupsafe import escape

from app import db
from campaigns import counters, csvfiles, message_states, pump, queues, recipients
from campaigns.models import (
    Campaign,
    CampaignActivity,
    CampaignStatus,
    Message,
    MessageStatus,
    Role,
    Suppression,
)
from campaigns.providers.errors import ErrorKind, explain, is_retryable, stored_kind
from campaigns.services import Conflict
from campaigns.services.campaigns import retry_failed
from tests.helpers import assert_counters_match_rows, demo_campaign, jobs

ROW_ID = re.compile(r'<tr id="message-(\d+)"')
_refs = count(1)


@pytest.fixture
def campaign(app, user_factory) -> Campaign:
    campaign = demo_campaign(user_factory(Role.SUPERVISOR).id, name="Recipients")
    counters.ensure_rows(db.session, campaign.id)
    db.session.commit()
    return campaign


def add(
    campaign: Campaign,
    status: MessageStatus = MessageStatus.PENDING,
    n: int = 1,
    *,
    name: str | None = None,
    phone: str | None = None,
    error_code: str | None = None,
    error_text: str | None = None,
    **columns,
) -> list[int]:
    """Message rows as the engine leaves them, counters included; returns their ids."""
    messages = []
    for _ in range(n):
        ref = next(_refs)
        message = Message(
            campaign_id=campaign.id,
            customer_ref=columns.pop("customer_ref", f"C{ref}"),
            phone=phone or f"+55119{ref:08d}",
            customer_data={"name": name or f"Customer {ref}", "city": "Santos"},
            status=status,
            error_code=error_code,
            error_text=error_text,
            **columns,
        )
        db.session.add(message)
        counters.apply(db.session, campaign.id, message_states.counter_deltas(None, status))
        messages.append(message)
    db.session.commit()
    return [m.id for m in messages]


def fragment(client, url: str) -> str:
    response = client.get(url, headers={"HX-Request": "true"})
    assert response.status_code == 200, response.status_code
    return response.get_data(as_text=True)


def shown_ids(html: str) -> list[int]:
    return [int(i) for i in ROW_ID.findall(html)]


def next_rows_url(html: str) -> str | None:
    match = re.search(r'hx-get="([^"]*/recipients/rows\?[^"]*)"', html)
    return match.group(1).replace("&amp;", "&") if match else None


@pytest.fixture
def viewer(login_as):
    return login_as(Role.VIEWER)


@pytest.fixture
def supervisor(login_as):
    return login_as(Role.SUPERVISOR)


def test_the_campaign_page_loads_the_recipients_and_errors_lazily(client, campaign, viewer):
    page = client.get(f"/campaigns/{campaign.id}").get_data(as_text=True)
    assert f'hx-get="/campaigns/{campaign.id}/recipients" hx-trigger="load"' in page
    assert f'hx-get="/campaigns/{campaign.id}/errors" hx-trigger="load"' in page


def test_filter_by_status_counts_from_the_counters(client, campaign, viewer):
    failed = add(campaign, MessageStatus.FAILED, 2, error_code="131026", error_text="Undeliverable")
    sent = add(campaign, MessageStatus.SENT, 3)
    add(campaign, MessageStatus.DELIVERED, 4)
    add(campaign, MessageStatus.READ, 5)
    everyone = fragment(client, f"/campaigns/{campaign.id}/recipients")
    assert f'id="campaign-{campaign.id}-recipients"' in everyone
    assert "14 recipients" in everyone and len(shown_ids(everyone)) == 14

    only_failed = fragment(client, f"/campaigns/{campaign.id}/recipients?status=failed")
    assert shown_ids(only_failed) == failed
    assert "2 recipients" in only_failed
    assert '<option value="failed" selected>' in only_failed
    assert ">131026</code> Undeliverable" in only_failed

    # The counters keep sent ⊇ delivered ⊇ read; rows *in* "sent" are the difference.
    only_sent = fragment(client, f"/campaigns/{campaign.id}/recipients?status=sent")
    assert shown_ids(only_sent) == sent and "3 recipients" in only_sent
    assert "4 recipients" in fragment(
        client, f"/campaigns/{campaign.id}/recipients?status=delivered"
    )
    # An unknown status filters nothing rather than failing.
    assert len(shown_ids(fragment(client, f"/campaigns/{campaign.id}/recipients?status=x"))) == 14


def test_search_by_phone_digits_name_or_customer_ref(client, campaign, viewer):
    [ana] = add(campaign, name="Ana Souza", phone="+5511987654321")
    [ze] = add(campaign, MessageStatus.FAILED, name="Zé_Silva 100%", phone="+5521912345678")
    add(campaign, n=3)
    base = f"/campaigns/{campaign.id}/recipients"
    by_phone = fragment(client, f"{base}?q=(11) 98765")
    assert shown_ids(by_phone) == [ana]
    assert "1 of 5 recipients matches" in by_phone  # a search says what it found of how many
    assert shown_ids(fragment(client, f"{base}?q=souza")) == [ana]
    # % and _ are taken literally, not as ILIKE wildcards.
    assert shown_ids(fragment(client, f"{base}?q=%25")) == [ze]
    assert shown_ids(fragment(client, f"{base}?q=_")) == [ze]
    ref = db.session.get(Message, ana).customer_ref
    assert shown_ids(fragment(client, f"{base}?q={ref}")) == [ana]
    assert shown_ids(fragment(client, f"{base}?q={ref.lower()}")) == [ana]  # any case
    assert shown_ids(fragment(client, f"{base}?q=zé&status=pending")) == []
    assert "No recipient matches." in fragment(client, f"{base}?q=nobody")


def test_search_ignores_accents_and_case_both_ways(client, campaign, viewer):
    [vitoria] = add(campaign, name="Vitória Araújo")
    [joao] = add(campaign, MessageStatus.FAILED, name="JOAO CONCEICAO")  # typed without accents
    [jose] = add(campaign, name="Jose\u0301 Ma\u0301rio")  # stored decomposed (e + U+0301)
    [ref_case] = add(campaign, name="Nobody", customer_ref="erp-00042x")
    add(campaign, n=3)
    base = f"/campaigns/{campaign.id}/recipients"

    def found(q: str, status: str = "") -> list[int]:
        return shown_ids(fragment(client, f"{base}?q={quote(q)}&status={status}"))

    for q in ("Vitoria", "VITÓRIA", "vitória araujo", "ARAUJO", "  vitoria   araújo "):
        assert found(q) == [vitoria], q
    for q in ("João", "conceição", "joão conceição", "JOAO"):
        assert found(q) == [joao], q
    for q in ("josé", "jose mario", "JOSÉ MÁRIO"):
        assert found(q) == [jose], q
    assert found("ERP-00042X") == [ref_case]
    assert found("00042") == [ref_case]  # part of a ref, as the operator types it
    assert found("joão", "failed") == [joao]
    assert found("joão", "pending") == []
    # The search's own accents are ignored too; its letters are not.
    assert found("vítoriá araujõ") == [vitoria]
    assert found("vitorja") == [] and found("joaoo") == []


@pytest.mark.parametrize(
    "q",
    [
        "\\",
        "(",
        "[",
        "]",
        "*",
        "+",
        "?",
        "{1,2}",
        "a{",
        "\\d",
        "$",
        "^",
        "|",
        ".",
        "(?i)",
        "🎄",
        "ø",
        "x" * 500,
        "[[:alpha:]]",
        "\\m",
        "a\\",
    ],
)
def test_any_search_text_is_taken_literally(client, campaign, viewer, q):
    [odd] = add(campaign, name=f"Odd {q[:100]} name")
    add(campaign, name="Plain")
    html = fragment(client, f"/campaigns/{campaign.id}/recipients?q={quote(q)}")
    # What was typed is found as typed, and is no pattern matching anything else.
    assert shown_ids(html) == [odd]


def test_an_accent_alone_searches_nothing(client, campaign, viewer):
    everyone = add(campaign, n=2)
    html = fragment(client, f"/campaigns/{campaign.id}/recipients?q=%CC%81")  # U+0301
    assert shown_ids(html) == everyone and ">2 recipients</span>" in html


def test_the_search_says_how_many_it_found_of_how_many(client, campaign, viewer):
    add(campaign, MessageStatus.FAILED, 2, name="Márcia Lima")
    add(campaign, MessageStatus.SENT, 1, name="Marcia Souza")
    add(campaign, MessageStatus.SENT, 4, name="Pedro")
    base = f"/campaigns/{campaign.id}/recipients"
    html = fragment(client, f"{base}?q=marcia")
    assert len(shown_ids(html)) == 3
    assert "<strong>3 of 7 recipients match</strong>" in html
    assert "<strong>1 of 5 recipients matches</strong>" in fragment(
        client, f"{base}?q=souza&status=sent"
    )
    assert "0 of 7 recipients match" in fragment(client, f"{base}?q=nobody")
    # Without a search, the total alone, as before.
    plain = fragment(client, f"{base}?status=failed")
    assert ">2 recipients</span>" in plain and " of " not in plain.split("<table>")[0]
    # The box searches as the operator types, and at once on Enter or when cleared.
    assert (
        "input changed delay:300ms from:find input[name=q], search from:find input[name=q]" in html
    )


def test_a_search_over_a_100k_message_campaign(client, campaign, viewer):
    """A measurement: prints how long the first page of a search (rows and count) takes;
    the time is not asserted (a shared machine), the answer is."""
    n = 100_000
    names = ["Vitória Araújo", "João Silva", "Ana Souza", "José Lima", "Márcia Gonçalves"]
    db.session.execute(
        sa.text(
            "INSERT INTO messages (campaign_id, customer_ref, phone, customer_data, status)"
            " SELECT :c, 'C' || lpad(i::text, 7, '0'), '+55119' || lpad(i::text, 8, '0'),"
            " jsonb_build_object('name', (CAST(:names AS text[]))[1 + i % 5] || ' ' || i),"
            " 'pending' FROM generate_series(1, :n) AS i"
        ),
        {"c": campaign.id, "n": n, "names": names},
    )
    counters.apply(db.session, campaign.id, {"total": n, "pending": n})
    db.session.commit()
    db.session.execute(sa.text("ANALYZE messages"))
    db.session.commit()
    base = f"/campaigns/{campaign.id}/recipients"
    figures = {}
    fragment(client, base)
    started = time.perf_counter()
    fragment(client, base)
    figures["(no search)"] = (time.perf_counter() - started) * 1000
    for q, said in (
        # common: the page fills at once, the count stops at its cap
        ("vitoria araujo", f"More than 1,000 of {n:,} recipients match"),
        ("C0099999", f"1 of {n:,} recipients matches"),  # rare: both read every row
        ("zzz", f"0 of {n:,} recipients match"),
    ):
        fragment(client, f"{base}?q={quote(q)}")  # warm
        started = time.perf_counter()
        html = fragment(client, f"{base}?q={quote(q)}")
        figures[q] = (time.perf_counter() - started) * 1000
        assert said in html
    print(
        f"\nsearch over {n:,} messages, first page and count: "
        + ", ".join(f"{q!r} {ms:.0f} ms" for q, ms in figures.items())
    )


def test_keyset_pages_have_no_overlap_and_no_gap_even_with_inserts(client, campaign, viewer):
    first_batch = add(campaign, n=60)
    other = Campaign(
        name="Other",
        owner_id=campaign.owner_id,
        sender_id=campaign.sender_id,
        template_id=campaign.template_id,
    )
    db.session.add(other)
    db.session.commit()

    page_one = fragment(client, f"/campaigns/{campaign.id}/recipients")
    ids_one = shown_ids(page_one)
    assert ids_one == first_batch[: recipients.RECIPIENTS_PER_PAGE]
    more = next_rows_url(page_one)
    assert more and f"after={ids_one[-1]}" in more

    # While the operator reads page one, the fan-out adds rows (and another campaign too).
    later_batch = add(campaign, n=45)
    add(other, n=5)

    page_two = fragment(client, more)
    ids_two = shown_ids(page_two)
    assert ids_two[0] > ids_one[-1] and len(ids_two) == recipients.RECIPIENTS_PER_PAGE
    assert page_two.lstrip().startswith("<tr")  # only rows: they go after the ones shown
    page_three = fragment(client, next_rows_url(page_two))
    ids_three = shown_ids(page_three)
    assert next_rows_url(page_three) is None  # the last page offers no more
    assert ids_one + ids_two + ids_three == first_batch + later_batch


def test_keyset_pages_keep_the_filter_and_the_search(client, campaign, viewer):
    wanted = []
    for _ in range(60):
        wanted += add(campaign, MessageStatus.FAILED, name="Maria")
        add(campaign, MessageStatus.FAILED, name="Pedro")
        add(campaign, MessageStatus.SENT, name="Maria")
    page_one = fragment(client, f"/campaigns/{campaign.id}/recipients?status=failed&q=MARÍA")
    # Counted over every page, not the first one's 50 rows.
    assert "60 of 120 recipients match" in page_one
    more = next_rows_url(page_one)
    assert "status=failed" in more and "q=MAR%C3%8DA" in more
    page_two = fragment(client, more)
    assert " of " not in page_two  # "load more" brings rows only
    assert shown_ids(page_one) + shown_ids(page_two) == wanted
    assert next_rows_url(page_two) is None


def test_rows_show_the_error_code_and_text(client, campaign, viewer):
    # An English sentence an older version stored with its own code is not shown: the
    # code is worded for the reader; missing_value keeps the variables' names.
    add(campaign, MessageStatus.SKIPPED, error_code="invalid_phone", error_text="Not a number.")
    add(
        campaign, MessageStatus.SKIPPED, error_code="missing_value", error_text="No value for city."
    )
    add(campaign, MessageStatus.FAILED, error_code="131049", error_text="<b>held</b>")
    html = fragment(client, f"/campaigns/{campaign.id}/recipients")
    # Disparo's own code by its label, Meta's as the code; each explained in its title.
    invalid, held = escape(explain("invalid_phone")), escape(explain("131049"))
    assert f'<span title="{invalid}">Invalid number</span> </td>' in html
    assert "Not a number." not in html
    assert ">Missing variable</span> city</td>" in html
    assert f'<code title="{held}">131049</code> &lt;b&gt;held&lt;/b&gt;' in html
    assert "invalid_phone" not in html.split("<tbody>")[1]


def test_csv_export_streams_every_row_escaped(client, campaign, viewer):
    add(
        campaign,
        MessageStatus.FAILED,
        name='Ana "Aninha", Souza',
        error_code="131026",
        error_text="Undeliverable,\nline two",
    )
    add(campaign, MessageStatus.READ, name='=HYPERLINK("http://x")', provider_message_id="wamid.1")
    add(campaign, MessageStatus.SKIPPED, name="João", phone="-12", error_code="invalid_phone")
    add(campaign, n=3)
    response = client.get(f"/campaigns/{campaign.id}/recipients.csv")
    assert response.status_code == 200 and response.is_streamed
    assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
    # Named after the campaign ("Recipients") and the day where the reader is.
    today = datetime.now(ZoneInfo("America/Sao_Paulo")).date().isoformat()
    assert response.headers["Content-Disposition"] == (
        f"attachment; filename=\"recipients-{today}.csv\"; filename*=UTF-8''recipients-{today}.csv"
    )
    body = response.get_data().decode("utf-8")
    assert body.startswith("\ufeff")
    rows = list(csv.reader(io.StringIO(body.removeprefix("\ufeff"))))
    assert rows[0] == [
        "Customer ref",
        "Name",
        "Phone",
        "Status",
        "Error code",
        "Error message",
        "Sent at (America/Sao_Paulo)",
        "Delivered at (America/Sao_Paulo)",
        "Read at (America/Sao_Paulo)",
        "Failed at (America/Sao_Paulo)",
        "WhatsApp message ID",
        "What the error means",  # added later: the columns before keep their places
        "Language",  # the template's language the recipient gets
        "Reply",  # then what the recipient answered (answers.py)
        "Replied at (America/Sao_Paulo)",
        "Button tapped",
        "Tapped at (America/Sao_Paulo)",
    ]
    assert len(rows) == 1 + 6
    expected = db.session.scalars(
        sa.select(Message).where(Message.campaign_id == campaign.id).order_by(Message.id)
    ).all()
    assert [r[0] for r in rows[1:]] == [m.customer_ref for m in expected]
    columns = recipients.RECIPIENT_CSV_COLUMNS
    failed, read, skipped = (dict(zip(columns, r, strict=True)) for r in rows[1:4])
    assert failed["name"] == 'Ana "Aninha", Souza'
    assert failed["error_message"] == "Undeliverable,\nline two"
    # WhatsApp's text as it came, and beside it what Disparo says the code means.
    assert failed["error_explanation"] == explain("131026")
    assert read["error_explanation"] == ""
    assert (failed["status"], failed["error_code"]) == ("Failed", "131026")  # its label
    # A phone is neither a formula nor a number: after a word joiner, a spreadsheet keeps it.
    assert failed["phone"].startswith(csvfiles.KEEP_AS_TEXT + "+55")
    assert read["name"] == '\'=HYPERLINK("http://x")'  # would run in a spreadsheet
    assert read["provider_message_id"] == "wamid.1" and read["sent_at"] == ""
    assert (skipped["name"], skipped["phone"]) == ("João", "'-12")
    assert {r["language"] for r in (failed, read, skipped)} == {"pt_BR"}  # the campaign's


def test_csv_explains_every_code_the_page_explains(client, campaign, viewer):
    # Codes without an entry of their own the page still words (explain): a permission
    # code, an HTTP status, an unknown code, a failure without a code.
    cases = [
        (MessageStatus.FAILED, "200"),
        (MessageStatus.FAILED, "503"),
        (MessageStatus.FAILED, "987654"),
        (MessageStatus.FAILED, None),
        (MessageStatus.FAILED, "131026"),
        (MessageStatus.RETRYING, "503"),  # its last error, while it waits
        (MessageStatus.SENT, None),  # nothing to explain
    ]
    for status, code in cases:
        add(campaign, status, error_code=code)
    body = client.get(f"/campaigns/{campaign.id}/recipients.csv").get_data().decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(body)))[1:]
    explained_at = recipients.RECIPIENT_CSV_COLUMNS.index("error_explanation")
    shown = [row[explained_at] for row in rows]
    assert shown == [explain(code) for _, code in cases[:-1]] + [""]
    assert all(shown[:-1])


def test_csv_export_reads_through_a_server_side_cursor(app, client, campaign, viewer, monkeypatch):
    monkeypatch.setattr(csvfiles, "CHUNK_ROWS", 2)
    add(campaign, n=5)
    response = client.get(f"/campaigns/{campaign.id}/recipients.csv")
    chunks = iter(response.response)
    first = next(chunks)
    # Mid-download the export's query is an open cursor on the database, not a fetched list.
    open_cursors = db.session.execute(sa.text("SELECT count(*) FROM pg_cursors")).scalar_one()
    assert open_cursors == 1
    rest = list(chunks)
    response.close()
    assert len(rest) == 2  # rows 3-4, then row 5
    text = (first + b"".join(rest)).decode("utf-8-sig")
    assert len(text.strip().splitlines()) == 1 + 5


def test_error_breakdown_explains_each_code(client, campaign, supervisor):
    add(campaign, MessageStatus.FAILED, 3, error_code="131000", error_text="Something went wrong")
    add(campaign, MessageStatus.FAILED, 2, error_code="131026", error_text="Undeliverable")
    add(campaign, MessageStatus.FAILED, error_code=None, error_text="WhatsApp could not be reached")
    add(campaign, MessageStatus.SKIPPED, 4, error_code="invalid_phone")
    add(campaign, MessageStatus.SENT, 5)
    breakdown = recipients.error_breakdown(campaign.id)
    assert [(g.status.value, g.code, g.count, g.retryable) for g in breakdown.groups] == [
        ("failed", "131000", 3, True),
        ("failed", "131026", 2, False),
        ("failed", None, 1, True),
        ("skipped", "invalid_phone", 4, False),
    ]
    assert breakdown.retryable == 4
    campaign.status = CampaignStatus.COMPLETED
    db.session.commit()
    html = fragment(client, f"/campaigns/{campaign.id}/errors")
    assert f'<section id="campaign-{campaign.id}-errors">' in html
    assert explain("131026").split(":")[0] in html
    assert escape(explain("invalid_phone")) in html
    assert "Invalid number" in html  # the skip code by its label, the code beside it
    assert "Retry 4 failed messages" in html
    assert f'action="/campaigns/{campaign.id}/retry-failed"' in html


def test_the_retry_button_is_for_supervisors_and_retryable_errors_only(client, campaign, login_as):
    campaign.status = CampaignStatus.COMPLETED
    db.session.commit()
    add(campaign, MessageStatus.FAILED, error_code="131050", error_text="opted out")
    login_as(Role.SUPERVISOR)
    html = fragment(client, f"/campaigns/{campaign.id}/errors")
    assert "131050" in html and "retry-failed" not in html  # nothing worth retrying
    add(campaign, MessageStatus.FAILED, error_code="130429")
    assert "Retry 1 failed message" in fragment(client, f"/campaigns/{campaign.id}/errors")
    login_as(Role.VIEWER)
    assert "retry-failed" not in fragment(client, f"/campaigns/{campaign.id}/errors")


def _completed_with_failures(campaign: Campaign) -> dict[str, list[int]]:
    campaign.status = CampaignStatus.COMPLETED
    campaign.audience_loaded_at = sa.func.now()
    campaign.completed_at = sa.func.now()
    db.session.commit()
    ids = {
        "retryable": add(campaign, MessageStatus.FAILED, 2, error_code="131000")
        + add(campaign, MessageStatus.FAILED, error_code="130429")
        + add(campaign, MessageStatus.FAILED, error_code="503")
        + add(campaign, MessageStatus.FAILED, error_code=None, error_text="unreachable"),
        "permanent": add(campaign, MessageStatus.FAILED, error_code="131026")
        + add(campaign, MessageStatus.FAILED, error_code="131050")
        + add(campaign, MessageStatus.FAILED, error_code="400"),
        "done": add(campaign, MessageStatus.READ, 2) + add(campaign, MessageStatus.SKIPPED),
    }
    opted_out = add(campaign, MessageStatus.FAILED, error_code="131000", phone="+5511911112222")
    db.session.add(Suppression(phone="+5511911112222", reason="asked", source="manual"))
    db.session.commit()
    ids["permanent"] += opted_out
    return ids


def statuses(ids: list[int]) -> set[MessageStatus]:
    db.session.expire_all()
    return {db.session.get(Message, i).status for i in ids}


def test_retry_failed_requeues_only_retryable_errors_and_reopens_the_campaign(
    client, campaign, supervisor
):
    ids = _completed_with_failures(campaign)
    response = client.post(f"/campaigns/{campaign.id}/retry-failed")
    assert response.status_code == 303
    assert response.headers["Location"] == f"/campaigns/{campaign.id}"
    assert statuses(ids["retryable"]) == {MessageStatus.PENDING}
    assert statuses(ids["permanent"]) == {MessageStatus.FAILED}
    assert statuses(ids["done"]) == {MessageStatus.READ, MessageStatus.SKIPPED}
    retried = db.session.get(Message, ids["retryable"][0])
    assert (retried.error_code, retried.error_text, retried.failed_at) == (None, None, None)
    assert_counters_match_rows(campaign.id)

    db.session.refresh(campaign)
    assert campaign.status is CampaignStatus.SENDING and campaign.completed_at is None
    assert [j["args"] for j in jobs(queues.PUMP_TASK)] == [{"campaign_id": campaign.id}]
    activity = db.session.scalars(
        sa.select(CampaignActivity).where(CampaignActivity.action == "retried_failed")
    ).one()
    assert activity.user_id == supervisor.id
    assert (activity.detail_code, activity.detail_params) == (
        "retried_messages",
        {"n": 5, "codes": "130429, 131000, 503, —"},
    )
    assert activity.detail == "messages: 5; error codes: 130429, 131000, 503, —"
    page = client.get(f"/campaigns/{campaign.id}").get_data(as_text=True)
    assert "5 failed messages will be sent again." in page

    # The pump takes them like any pending message, and completes the campaign again.
    assert pump.pump(campaign.id) is True
    assert statuses(ids["retryable"]) == {MessageStatus.QUEUED}
    assert_counters_match_rows(campaign.id)

    # Nothing retryable is left: refused with the reason, nothing changes.
    client.post(f"/campaigns/{campaign.id}/retry-failed")
    page = client.get(f"/campaigns/{campaign.id}").get_data(as_text=True)
    assert "No failed message has an error worth retrying." in page
    assert statuses(ids["permanent"]) == {MessageStatus.FAILED}


def test_retry_failed_while_sending_keeps_one_pump(app, campaign, supervisor):
    ids = _completed_with_failures(campaign)
    campaign.status = CampaignStatus.SENDING
    db.session.commit()
    queues.defer_pump(db.session, campaign.id)
    db.session.commit()
    assert retry_failed(campaign.id, supervisor.id) == 5
    assert statuses(ids["retryable"]) == {MessageStatus.PENDING}
    assert len(jobs(queues.PUMP_TASK)) == 1  # its queueing lock keeps it to one
    assert_counters_match_rows(campaign.id)


def test_retry_failed_on_a_paused_campaign_waits_for_resume(app, campaign, supervisor):
    ids = _completed_with_failures(campaign)
    campaign.status = CampaignStatus.PAUSED
    db.session.commit()
    assert retry_failed(campaign.id, supervisor.id) == 5
    db.session.refresh(campaign)
    assert campaign.status is CampaignStatus.PAUSED
    assert statuses(ids["retryable"]) == {MessageStatus.PENDING}
    assert jobs(queues.PUMP_TASK) == []  # resuming defers the pump
    assert_counters_match_rows(campaign.id)


@pytest.mark.parametrize(
    "status", [CampaignStatus.CANCELLED, CampaignStatus.FAILED, CampaignStatus.DRAFT]
)
def test_retry_failed_is_refused_unless_sending_paused_or_completed(
    client, campaign, supervisor, status
):
    ids = _completed_with_failures(campaign)
    campaign.status = status
    db.session.commit()
    refusal = f"A campaign with status “{status.value.capitalize()}” cannot send"  # its label
    with pytest.raises(Conflict, match=refusal):
        retry_failed(campaign.id, supervisor.id)
    client.post(f"/campaigns/{campaign.id}/retry-failed")
    assert refusal in client.get(f"/campaigns/{campaign.id}").get_data(as_text=True)
    assert statuses(ids["retryable"]) == {MessageStatus.FAILED}
    assert jobs(queues.PUMP_TASK) == []
    assert_counters_match_rows(campaign.id)


def test_viewers_see_and_export_but_cannot_retry(client, campaign, viewer):
    ids = _completed_with_failures(campaign)
    base = f"/campaigns/{campaign.id}"
    for url in (
        f"{base}/recipients",
        f"{base}/recipients/rows?after=0",
        f"{base}/recipients.csv",
        f"{base}/errors",
    ):
        assert client.get(url).status_code == 200, url
    assert client.post(f"{base}/retry-failed").status_code == 403
    assert statuses(ids["retryable"]) == {MessageStatus.FAILED}


def test_signed_out_users_get_nothing(client, campaign):
    add(campaign)
    for url in ("recipients", "recipients.csv", "errors"):
        response = client.get(f"/campaigns/{campaign.id}/{url}")
        assert response.status_code == 302 and "/login" in response.headers["Location"]
    htmx = client.get(f"/campaigns/{campaign.id}/recipients", headers={"HX-Request": "true"})
    assert htmx.status_code == 401 and "/login" in htmx.headers["HX-Redirect"]
    assert client.post(f"/campaigns/{campaign.id}/retry-failed").status_code == 302
    assert client.get("/campaigns/999999/recipients.csv").status_code == 302


def test_unknown_campaign_is_404(client, viewer):
    for url in ("recipients", "recipients/rows", "recipients.csv", "errors"):
        assert client.get(f"/campaigns/999999/{url}").status_code == 404


@pytest.mark.parametrize(
    ("code", "kind", "retryable"),
    [
        ("131000", ErrorKind.RETRY, True),
        ("130429", ErrorKind.THROTTLED, True),
        ("131056", ErrorKind.PAIR_LIMITED, True),
        ("131049", ErrorKind.SLOW_RETRY, True),
        ("132015", ErrorKind.PAUSE_CAMPAIGN, True),
        ("368", ErrorKind.PAUSE_SENDER, True),
        ("250", ErrorKind.PAUSE_CAMPAIGN, True),
        (None, ErrorKind.RETRY, True),  # WhatsApp unreachable: no code at all
        ("503", ErrorKind.RETRY, True),  # an HTTP status kept when Meta gave no code
        ("429", ErrorKind.THROTTLED, True),
        ("400", ErrorKind.PERMANENT, False),
        ("131026", ErrorKind.PERMANENT, False),
        ("131050", ErrorKind.PERMANENT, False),
        ("132000", ErrorKind.PERMANENT, False),
        ("invalid_phone", ErrorKind.PERMANENT, False),
        ("suppressed", ErrorKind.PERMANENT, False),
        ("987654", None, False),  # a code we do not know: never resent blindly
    ],
)
def test_which_stored_errors_are_retryable(code, kind, retryable):
    assert stored_kind(code) is kind
    assert is_retryable(code) is retryable


def test_every_classified_code_is_explained():
    from campaigns.providers import errors

    for code in errors.KNOWN_CODES:
        assert str(code) in errors.EXPLANATIONS, code
    assert explain("131026") == errors.EXPLANATIONS["131026"]
    assert explain(None) == errors.NO_CODE_EXPLANATION
    assert explain("250") == errors.PERMISSION_EXPLANATION
    assert explain("502") == errors.HTTP_STATUS_EXPLANATION
    assert explain("987654") == errors.UNKNOWN_EXPLANATION
    assert not any("%" in text for text in errors.EXPLANATIONS.values())  # safe in _() as is
