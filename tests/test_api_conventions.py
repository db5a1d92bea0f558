"""The API's conventions: a campaign's messages, cursor pages on every list, Location on
every 201, Idempotency-Key on every create, and named error codes."""

from __future__ import annotations

import base64
import json
import threading
from datetime import timedelta
from itertools import count

import pytest
import sqlalchemy as sa
from flask import Flask

from app import db
from campaigns import counters, cursors, idempotency, message_states
from campaigns.models import (
    AuditEvent,
    Campaign,
    IdempotencyKey,
    Message,
    MessageStatus,
    MessageTemplate,
    Role,
    Sender,
    Suppression,
)
from campaigns.services.demo import seed_demo
from campaigns.services.personal_data import erase_person
from campaigns.services.suppressions import suppress
from campaigns.services.templates import default_sender
from campaigns.services.users import create_api_token
from campaigns.views import api
from tests.helpers import demo_campaign

WAIT = 30  # seconds a test thread may take before the test gives up (never asserted on)
_refs = count(1)


@pytest.fixture
def admin(app, user_factory):
    seed_demo()
    user = user_factory(Role.ADMIN)
    user.api_rate_limit_per_minute = 1_000_000
    db.session.commit()
    return user


@pytest.fixture
def headers(admin) -> dict[str, str]:
    _token, raw = create_api_token(admin.id)
    return {"Authorization": f"Bearer {raw}"}


def raw_cursor(document: object) -> str:
    """A cursor made by hand: base64 of any JSON (what a tampering client could send)."""
    return base64.urlsafe_b64encode(json.dumps(document).encode()).rstrip(b"=").decode()


# ---- a campaign's messages -------------------------------------------------------


def add_messages(campaign_id: int, n: int, status=MessageStatus.PENDING, **columns) -> list[int]:
    """Message rows as the engine leaves them, counters included; their ids."""
    messages = []
    for _ in range(n):
        ref = next(_refs)
        message = Message(
            campaign_id=campaign_id,
            customer_ref=f"C{ref}",
            phone=f"+55119{ref:08d}",
            customer_data={"name": f"Customer {ref}"},
            status=status,
            **columns,
        )
        db.session.add(message)
        counters.apply(db.session, campaign_id, message_states.counter_deltas(None, status))
        messages.append(message)
    db.session.commit()
    return [m.id for m in messages]


@pytest.fixture
def campaign(admin) -> Campaign:
    campaign = demo_campaign(admin.id, name="Messages")
    counters.ensure_rows(db.session, campaign.id)
    db.session.commit()
    return campaign


def walk(client, headers, path: str, key: str, **query) -> list[dict]:
    """Every row of a list, page by page through next_cursor, asserting the page sizes."""
    rows: list[dict] = []
    cursor = None
    while True:
        params = dict(query) | ({"cursor": cursor} if cursor else {})
        answer = client.get(path, query_string=params, headers=headers)
        assert answer.status_code == 200, answer.json
        page = answer.json[key]
        assert len(page) <= int(query.get("limit", 1000))
        rows += page
        cursor = answer.json["next_cursor"]
        if cursor is None:
            return rows
        assert len(page) == int(query["limit"])  # a page with a next one is a full page


def test_a_campaigns_messages_in_id_order_with_every_field(client, headers, campaign):
    sent = add_messages(
        campaign.id,
        1,
        MessageStatus.FAILED,
        attempts=2,
        error_code="131026",
        error_text="Message undeliverable",
        provider_message_id="wamid.ABC",
    )
    skipped = add_messages(campaign.id, 1, MessageStatus.SKIPPED, error_code="invalid_phone")
    pending = add_messages(campaign.id, 1)
    # The API is English whatever the client's language (its codes worded in English).
    answer = client.get(
        f"/api/v1/campaigns/{campaign.id}/messages",
        headers=headers | {"Accept-Language": "pt-BR"},
    )
    assert answer.status_code == 200
    assert answer.json["next_cursor"] is None
    messages = answer.json["messages"]
    assert [m["id"] for m in messages] == sent + skipped + pending
    failed = messages[0]
    assert set(failed) == {
        "id",
        "phone",
        "customer_ref",
        "status",
        "attempts",
        "error_code",
        "error_message",
        "wamid",
        "created_at",
        "queued_at",
        "sent_at",
        "delivered_at",
        "read_at",
        "failed_at",
        "updated_at",
        # what the recipient answered (campaigns/answers.py)
        "replied_at",
        "reply_text",
        "clicked_at",
        "clicked_button",
    }
    assert failed["replied_at"] is None and failed["clicked_button"] is None
    assert failed["status"] == "failed" and failed["attempts"] == 2
    assert failed["error_code"] == "131026"
    assert failed["error_message"] == "Message undeliverable"  # WhatsApp's words as given
    assert failed["wamid"] == "wamid.ABC"
    assert failed["phone"].startswith("+5511") and failed["customer_ref"].startswith("C")
    assert failed["created_at"] and failed["sent_at"] is None
    assert messages[1]["error_message"] == (
        "The recipient's phone number (from the ERP or the CSV file) is not a valid number."
    )
    assert messages[2]["error_code"] is None and messages[2]["error_message"] is None


def test_messages_filtered_by_status_and_walked_to_the_end_while_rows_arrive(
    client, headers, campaign
):
    add_messages(campaign.id, 5, MessageStatus.SENT)
    add_messages(campaign.id, 4, MessageStatus.FAILED)
    path = f"/api/v1/campaigns/{campaign.id}/messages"
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        query = {"limit": 2, "status": "sent"} | ({"cursor": cursor} if cursor else {})
        answer = client.get(path, query_string=query, headers=headers)
        assert answer.status_code == 200
        assert {m["status"] for m in answer.json["messages"]} <= {"sent"}
        seen += [m["id"] for m in answer.json["messages"]]
        cursor = answer.json["next_cursor"]
        pages += 1
        if cursor is None:
            break
        add_messages(campaign.id, 1, MessageStatus.SENT)  # the fan-out goes on meanwhile
        add_messages(campaign.id, 1, MessageStatus.FAILED)
    every_sent = db.session.scalars(
        sa.select(Message.id)
        .where(Message.campaign_id == campaign.id, Message.status == MessageStatus.SENT)
        .order_by(Message.id)
    ).all()
    assert seen == list(every_sent)  # in id order, none twice, none missed
    assert pages > 3


def test_erased_recipients_are_listed_with_nulls(client, headers, campaign):
    (message_id,) = add_messages(campaign.id, 1)
    phone = db.session.get(Message, message_id).phone
    erase_person(phone, None)
    (listed,) = client.get(f"/api/v1/campaigns/{campaign.id}/messages", headers=headers).json[
        "messages"
    ]
    assert listed["id"] == message_id
    assert listed["phone"] is None and listed["customer_ref"] is None
    assert listed["status"] == "cancelled" and listed["error_code"] == "erased"
    assert listed["error_message"] == "Not sent: the person's data was erased on their request."


def test_messages_of_no_campaign_are_a_404(client, headers):
    answer = client.get("/api/v1/campaigns/999/messages", headers=headers)
    assert answer.status_code == 404 and answer.json["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"status": "lost"}, "status"),
        ({"status": ""}, "status"),
        ({"status": "SENT"}, "status"),
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "1.5"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": ""}, "limit"),
        ({"limit": "0100000"}, "limit"),
        ({"cursor": ""}, "cursor"),
        ({"cursor": "not a cursor"}, "cursor"),
        ({"cursor": "!!!!"}, "cursor"),
        ({"cursor": "A"}, "cursor"),  # base64 of no whole byte
        ({"cursor": "x" * 2000}, "cursor"),
    ],
)
def test_bad_message_queries_are_422_at_their_field(client, headers, campaign, query, field):
    answer = client.get(
        f"/api/v1/campaigns/{campaign.id}/messages", query_string=query, headers=headers
    )
    assert answer.status_code == 422
    assert answer.json["error"]["code"] == "validation_failed"
    assert list(answer.json["error"]["fields"]) == [field]


def test_another_campaigns_or_lists_cursor_is_refused(client, headers, campaign, admin):
    other = demo_campaign(admin.id, name="Other")
    add_messages(campaign.id, 3)
    mine = client.get(f"/api/v1/campaigns/{campaign.id}/messages?limit=1", headers=headers).json[
        "next_cursor"
    ]
    assert mine
    answer = client.get(
        f"/api/v1/campaigns/{other.id}/messages", query_string={"cursor": mine}, headers=headers
    )
    assert answer.status_code == 422 and "cursor" in answer.json["error"]["fields"]
    answer = client.get("/api/v1/audit", query_string={"cursor": mine}, headers=headers)
    assert answer.status_code == 422 and "cursor" in answer.json["error"]["fields"]


# ---- cursors ---------------------------------------------------------------------

MESSAGES = "campaigns/1/messages"


def test_a_cursor_round_trips_and_is_opaque_url_safe_text():
    from datetime import UTC, datetime

    when = datetime(2026, 12, 4, 21, 0, 0, 123456, tzinfo=UTC)
    cursor = cursors.encode("campaigns", (when, 42))
    assert cursor.replace("-", "").replace("_", "").isalnum()
    assert cursors.decode(cursor, "campaigns", ("time", "id")) == (when, 42)
    assert cursors.decode(cursors.encode("senders", ("Loja ç", 3)), "senders", ("text", "id")) == (
        "Loja ç",
        3,
    )


@pytest.mark.parametrize(
    ("cursor", "kinds"),
    [
        (raw_cursor({"l": "campaigns", "k": [1]}), ("bigid",)),  # another list's
        (raw_cursor({"l": MESSAGES, "k": ["1"]}), ("bigid",)),  # an id as text
        (raw_cursor({"l": MESSAGES, "k": [True]}), ("bigid",)),
        (raw_cursor({"l": MESSAGES, "k": [1.0]}), ("bigid",)),
        (raw_cursor({"l": MESSAGES, "k": [0]}), ("bigid",)),
        (raw_cursor({"l": MESSAGES, "k": [2**63]}), ("bigid",)),  # past bigint
        (raw_cursor({"l": MESSAGES, "k": [2**31]}), ("id",)),  # past integer
        (raw_cursor({"l": MESSAGES, "k": [1, 2]}), ("bigid",)),
        (raw_cursor({"l": MESSAGES, "k": []}), ("bigid",)),
        (raw_cursor({"l": MESSAGES, "k": 1}), ("bigid",)),
        (raw_cursor({"l": MESSAGES}), ("bigid",)),
        (raw_cursor({"l": MESSAGES, "k": [1], "x": 1}), ("bigid",)),
        (raw_cursor([MESSAGES, [1]]), ("bigid",)),
        (raw_cursor(None), ("bigid",)),
        (raw_cursor({"l": MESSAGES, "k": ["2026-12-04T21:00:00", 1]}), ("time", "id")),  # naive
        (raw_cursor({"l": MESSAGES, "k": ["yesterday", 1]}), ("time", "id")),
        (raw_cursor({"l": MESSAGES, "k": [1, 1]}), ("time", "id")),
        (raw_cursor({"l": MESSAGES, "k": ["a\u0000b", 1]}), ("text", "id")),
        (raw_cursor({"l": MESSAGES, "k": ["\ud800", 1]}), ("text", "id")),
        (raw_cursor({"l": MESSAGES, "k": [None, 1]}), ("text", "id")),
        (base64.urlsafe_b64encode(b"\xff\xfe{").decode().rstrip("="), ("bigid",)),
        (base64.urlsafe_b64encode(b"[" * 5000).decode().rstrip("="), ("bigid",)),
    ],
)
def test_a_tampered_cursor_is_refused(cursor, kinds):
    with pytest.raises(cursors.BadCursor):
        cursors.decode(cursor, MESSAGES, kinds)


@pytest.mark.parametrize(
    "path", ["/api/v1/campaigns", "/api/v1/suppressions", "/api/v1/templates", "/api/v1/senders"]
)
def test_a_tampered_cursor_on_any_list_is_a_422_never_a_500(client, headers, path):
    for cursor in (
        raw_cursor({"l": path.rsplit("/", 1)[1], "k": ["2026-12-04T21:00:00+00:00", "x"]}),
        raw_cursor({"l": path.rsplit("/", 1)[1], "k": [{"a": 1}, 1]}),
        "garbage",
    ):
        answer = client.get(path, query_string={"cursor": cursor}, headers=headers)
        assert answer.status_code == 422, answer.json
        assert answer.json["error"]["fields"].keys() == {"cursor"}


# ---- cursor pages on the other lists ---------------------------------------------


def test_campaigns_walked_by_cursor_while_new_ones_are_created(client, headers, admin):
    before = {demo_campaign(admin.id, name=f"Old {n}").id for n in range(7)}
    seen: list[int] = []
    cursor = None
    while True:
        query = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        answer = client.get("/api/v1/campaigns", query_string=query, headers=headers)
        assert answer.status_code == 200
        assert set(answer.json) == {"campaigns", "next_cursor"}  # no page numbers
        seen += [c["id"] for c in answer.json["campaigns"]]
        cursor = answer.json["next_cursor"]
        if cursor is None:
            break
        demo_campaign(admin.id, name="Newer")  # lands before the cursor: not in this walk
    assert len(seen) == len(set(seen)) == len(before)
    assert set(seen) == before
    newest_first = db.session.scalars(
        sa.select(Campaign.id)
        .where(Campaign.id.in_(before))
        .order_by(Campaign.created_at.desc(), Campaign.id.desc())
    ).all()
    assert seen == list(newest_first)


def test_a_numbered_page_says_the_cursor_of_what_follows(client, headers, admin):
    made = [demo_campaign(admin.id, name=f"C{n}").id for n in range(23)]
    first = client.get("/api/v1/campaigns", headers=headers).json
    assert (first["page"], first["pages"], first["total"]) == (1, 2, 23)
    assert len(first["campaigns"]) == 20
    rest = client.get(
        "/api/v1/campaigns", query_string={"cursor": first["next_cursor"]}, headers=headers
    ).json
    assert [c["id"] for c in first["campaigns"] + rest["campaigns"]] == made[::-1]
    assert rest["next_cursor"] is None
    last = client.get("/api/v1/campaigns?page=2", headers=headers).json
    assert len(last["campaigns"]) == 3 and last["next_cursor"] is None


@pytest.mark.parametrize(
    ("path", "query", "field"),
    [
        ("/api/v1/campaigns", {"page": "2", "cursor": "x"}, "cursor"),
        ("/api/v1/campaigns", {"page": "2", "limit": "5"}, "limit"),
        ("/api/v1/suppressions", {"page": "1", "cursor": "x"}, "cursor"),
        ("/api/v1/audit", {"before": "10", "limit": "5"}, "limit"),
        ("/api/v1/senders", {"limit": "0"}, "limit"),
        ("/api/v1/templates", {"limit": "501"}, "limit"),
    ],
)
def test_page_numbers_do_not_mix_with_cursors(client, headers, path, query, field):
    answer = client.get(path, query_string=query, headers=headers)
    assert answer.status_code == 422
    assert answer.json["error"]["fields"].keys() == {field}


def test_page_with_a_valid_cursor_is_422_at_the_cursor(client, headers, admin):
    for n in range(3):
        suppress(f"+5511988880{n:03d}", "", "manual", admin.id)
    cursor = client.get("/api/v1/suppressions?limit=1", headers=headers).json["next_cursor"]
    answer = client.get(
        "/api/v1/suppressions", query_string={"page": 1, "cursor": cursor}, headers=headers
    )
    assert answer.status_code == 422 and answer.json["error"]["fields"].keys() == {"cursor"}


def test_suppressions_walked_while_numbers_are_added(client, headers, admin):
    before = {suppress(f"+5511977770{n:03d}", "", "manual", admin.id)[0].id for n in range(5)}
    seen: list[int] = []
    cursor = None
    n = 0
    while True:
        query = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        answer = client.get("/api/v1/suppressions", query_string=query, headers=headers).json
        seen += [s["id"] for s in answer["suppressions"]]
        cursor = answer["next_cursor"]
        if cursor is None:
            break
        n += 1
        suppress(f"+5511966660{n:03d}", "", "manual", admin.id)
    assert sorted(seen) == sorted(before) and len(seen) == len(set(seen))


def test_senders_walked_by_name_while_one_is_added(client, headers):
    seed = ["Bravo", "Delta", "Foxtrot", "Hotel"]
    for name in seed:
        assert client.post("/api/v1/senders", json=sender(name), headers=headers).status_code == 201
    every = client.get("/api/v1/senders", headers=headers).json
    assert every["next_cursor"] is None  # no limit: every sender, as before
    names = [s["name"] for s in every["senders"]]
    assert names == sorted(names)
    seen: list[str] = []
    cursor = None
    added = False
    while True:
        query = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        answer = client.get("/api/v1/senders", query_string=query, headers=headers).json
        seen += [s["name"] for s in answer["senders"]]
        cursor = answer["next_cursor"]
        if cursor is None:
            break
        if not added:  # one before the cursor (not seen), one after it (seen)
            for name in ("Alpha", "Zulu"):
                client.post("/api/v1/senders", json=sender(name), headers=headers)
            added = True
    assert seen == sorted(set(names) | {"Zulu"})


def test_templates_walked_by_cursor(client, headers):
    every = client.get("/api/v1/templates", headers=headers).json
    assert every["next_cursor"] is None
    walked = walk(client, headers, "/api/v1/templates", "templates", limit=2)
    assert [t["id"] for t in walked] == [t["id"] for t in every["templates"]]
    assert len(walked) == db.session.query(MessageTemplate).count() > 2


def test_the_audit_trail_by_cursor_and_by_before(client, headers):
    for name in ("A1", "A2", "A3", "A4", "A5"):
        client.post("/api/v1/senders", json=sender(name), headers=headers)
    ids = db.session.scalars(sa.select(AuditEvent.id).order_by(AuditEvent.id.desc())).all()
    walked = walk(client, headers, "/api/v1/audit", "events", limit=2)
    assert [e["id"] for e in walked] == list(ids)
    first = client.get("/api/v1/audit", headers=headers).json
    assert set(first) == {"events", "next_before", "next_cursor"}
    assert first["next_cursor"] is None and first["next_before"] is None
    paged = client.get("/api/v1/audit?limit=2", headers=headers).json
    assert paged["next_before"] == ids[1]
    older = client.get("/api/v1/audit", query_string={"before": ids[1]}, headers=headers).json
    by_cursor = client.get(
        "/api/v1/audit", query_string={"cursor": paged["next_cursor"]}, headers=headers
    ).json
    assert [e["id"] for e in older["events"]] == [e["id"] for e in by_cursor["events"]]


# ---- Location, and the opt-out by id ---------------------------------------------


def sender(name: str) -> dict:
    return {"name": name, "provider": "mock", "phone_number_id": "123"}


def test_every_201_says_where_the_new_resource_is(client, headers):
    template = {
        "name": "located",
        "language": "pt_BR",
        "category": "MARKETING",
        "body": "Oi {{first_name}}!",
    }
    campaign_body = {
        "name": "Located",
        "sender_id": default_sender().id,
        "template_id": db.session.query(MessageTemplate).filter_by(name="order_ready").one().id,
        "segment": {"city": "Campinas", "max_audience": 5},
        "variables": {"1": {"field": "first_name"}, "2": {"text": "A-1"}},
    }
    made = {}
    for kind, path, payload in (
        ("senders", "/api/v1/senders", sender("Located")),
        ("templates", "/api/v1/templates", template),
        ("campaigns", "/api/v1/campaigns", campaign_body),
        ("suppressions", "/api/v1/suppressions", {"phone": "+5511955550000"}),
    ):
        answer = client.post(path, json=payload, headers=headers)
        assert answer.status_code == 201, answer.json
        assert answer.headers["Location"] == f"/api/v1/{kind}/{answer.json['id']}"
        made[kind] = answer.json
        fetched = client.get(answer.headers["Location"], headers=headers)
        assert fetched.status_code == 200 and fetched.json == answer.json
    copy = client.post(f"/api/v1/campaigns/{made['campaigns']['id']}/duplicate", headers=headers)
    assert copy.status_code == 201
    assert copy.headers["Location"] == f"/api/v1/campaigns/{copy.json['id']}"
    # Already on the list: 200 with the entry, no Location (nothing was created).
    again = client.post("/api/v1/suppressions", json={"phone": "+5511955550000"}, headers=headers)
    assert again.status_code == 200 and "Location" not in again.headers


def test_one_suppression_by_id(client, headers, admin, user_factory):
    entry, _created = suppress("+5511944440000", "asked", "manual", admin.id)
    _token, raw = create_api_token(user_factory(Role.VIEWER).id)  # any role reads it
    answer = client.get(
        f"/api/v1/suppressions/{entry.id}", headers={"Authorization": f"Bearer {raw}"}
    )
    assert answer.status_code == 200
    assert answer.json == {
        "id": entry.id,
        "phone": "+5511944440000",
        "reason": "asked",
        "source": "manual",
        "created_at": entry.created_at.isoformat(),
    }
    missing = client.get("/api/v1/suppressions/999999", headers=headers)
    assert missing.status_code == 404 and missing.json["error"]["code"] == "not_found"
    erase_person("+5511944440000", None)  # kept as a hash only: still listed, no number
    assert client.get(f"/api/v1/suppressions/{entry.id}", headers=headers).json["phone"] is None


# ---- Idempotency-Key -------------------------------------------------------------


def senders_named(name: str) -> int:
    db.session.rollback()  # see what the requests committed
    return db.session.scalar(sa.select(sa.func.count()).where(Sender.name == name)) or 0


def test_a_retry_with_the_same_key_gets_the_first_response_and_creates_nothing(client, headers):
    keyed = headers | {"Idempotency-Key": "create-loja-1"}
    first = client.post("/api/v1/senders", json=sender("Loja"), headers=keyed)
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    # The same JSON written another way is the same request.
    again = client.post(
        "/api/v1/senders",
        data='{ "provider": "mock",  "phone_number_id": "123", "name": "Loja" }',
        content_type="application/json",
        headers=keyed,
    )
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_data() == first.get_data()
    assert again.headers["Location"] == first.headers["Location"]
    assert int(again.headers["X-RateLimit-Limit"]) > 0  # counted like any call
    assert senders_named("Loja") == 1


def test_a_reused_key_for_another_request_is_422(client, headers):
    keyed = headers | {"Idempotency-Key": "k"}
    assert client.post("/api/v1/senders", json=sender("One"), headers=keyed).status_code == 201
    for path, payload in (
        ("/api/v1/senders", sender("Two")),  # another body
        ("/api/v1/suppressions", {"phone": "+5511933330000"}),  # another path
    ):
        answer = client.post(path, json=payload, headers=keyed)
        assert answer.status_code == 422
        assert answer.json["error"]["code"] == "idempotency_key_reused"
    assert senders_named("Two") == 0
    assert db.session.query(Suppression).count() == 0


def test_keys_are_each_users_own(client, headers, user_factory):
    other = user_factory(Role.ADMIN)
    _t, raw = create_api_token(other.id)
    theirs = {"Authorization": f"Bearer {raw}", "Idempotency-Key": "same"}
    assert (
        client.post(
            "/api/v1/senders", json=sender("Mine"), headers=headers | {"Idempotency-Key": "same"}
        ).status_code
        == 201
    )
    answer = client.post("/api/v1/senders", json=sender("Theirs"), headers=theirs)
    assert answer.status_code == 201 and "Idempotent-Replayed" not in answer.headers


@pytest.mark.parametrize("key", ["", " ", "a b", "tab\there", "x" * 256, "\x7f", "ção"])
def test_a_malformed_key_is_400(client, headers, key):
    answer = client.post(
        "/api/v1/senders",
        json=sender("Bad key"),
        headers=headers | {"Idempotency-Key": key.encode().decode("latin-1")},
    )
    assert answer.status_code == 400
    assert answer.json["error"]["code"] == "invalid_idempotency_key"
    assert senders_named("Bad key") == 0


def test_the_longest_key_and_every_visible_character_are_accepted(client, headers):
    for n, key in enumerate(("x" * 255, "".join(map(chr, range(0x21, 0x7F))))):
        answer = client.post(
            "/api/v1/senders", json=sender(f"Key {n}"), headers=headers | {"Idempotency-Key": key}
        )
        assert answer.status_code == 201


def test_a_refused_request_is_kept_and_replayed_too(client, headers):
    keyed = headers | {"Idempotency-Key": "bad-body"}
    first = client.post("/api/v1/senders", json={"provider": "mock"}, headers=keyed)
    assert first.status_code == 422
    again = client.post("/api/v1/senders", json={"provider": "mock"}, headers=keyed)
    assert again.status_code == 422 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json == first.json


def test_a_5xx_releases_the_key(app, client, headers, monkeypatch):
    app.config["PROPAGATE_EXCEPTIONS"] = False  # as in production: the 500 handler answers
    real = api.save_sender
    calls = []

    def fails_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "save_sender", fails_once)
    keyed = headers | {"Idempotency-Key": "retry-me"}
    failed = client.post("/api/v1/senders", json=sender("Later"), headers=keyed)
    assert failed.status_code == 500
    assert failed.json["error"]["code"] == "internal_error"
    db.session.rollback()
    assert db.session.query(IdempotencyKey).count() == 0
    retried = client.post("/api/v1/senders", json=sender("Later"), headers=keyed)
    assert retried.status_code == 201 and "Idempotent-Replayed" not in retried.headers
    assert senders_named("Later") == 1


def test_a_request_while_the_first_is_processed_is_409_then_replayed(
    app: Flask, client, headers, monkeypatch
):
    """Two requests on two connections: the first is held inside its view."""
    entered, release = threading.Event(), threading.Event()
    real = api.save_sender

    def held(*args, **kwargs):
        entered.set()
        assert release.wait(WAIT)
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "save_sender", held)
    keyed = headers | {"Idempotency-Key": "slow"}
    answers = {}

    def first() -> None:
        answers["first"] = app.test_client().post(
            "/api/v1/senders", json=sender("Slow"), headers=keyed
        )

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert entered.wait(WAIT)
        second = client.post("/api/v1/senders", json=sender("Slow"), headers=keyed)
        assert second.status_code == 409
        assert second.json["error"]["code"] == "idempotency_key_in_use"
        reused = client.post("/api/v1/senders", json=sender("Other"), headers=keyed)
        assert reused.status_code == 422
    finally:
        release.set()
        thread.join(WAIT)
    assert answers["first"].status_code == 201
    replay = client.post("/api/v1/senders", json=sender("Slow"), headers=keyed)
    assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json == answers["first"].json
    assert senders_named("Slow") == 1 and senders_named("Other") == 0


def test_concurrent_identical_requests_create_once(app: Flask, headers):
    """Four threads send the same keyed create at once: one creates, the rest are told
    it is in use or get its response again; never a second sender."""
    threads = 4
    start = threading.Barrier(threads)
    keyed = headers | {"Idempotency-Key": "race"}
    answers: list = []

    def send() -> None:
        client = app.test_client()
        start.wait(WAIT)
        answers.append(client.post("/api/v1/senders", json=sender("Race"), headers=keyed))

    workers = [threading.Thread(target=send) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(WAIT)
    assert len(answers) == threads
    created = [
        a for a in answers if a.status_code == 201 and "Idempotent-Replayed" not in a.headers
    ]
    assert len(created) == 1
    for answer in answers:
        assert (answer.status_code, answer.headers.get("Idempotent-Replayed")) in {
            (201, None),
            (201, "true"),
            (409, None),
        }
    assert senders_named("Race") == 1


def test_every_create_endpoint_takes_a_key(client, headers):
    template = {"name": "keyed", "language": "pt_BR", "category": "MARKETING", "body": "Oi"}
    campaign = {
        "name": "Keyed",
        "sender_id": default_sender().id,
        "template_id": db.session.query(MessageTemplate).filter_by(name="order_ready").one().id,
        "segment": {"city": "Campinas", "max_audience": 5},
        "variables": {"1": {"field": "first_name"}, "2": {"text": "A-1"}},
    }
    made = client.post(
        "/api/v1/campaigns", json=campaign | {"name": "Source"}, headers=headers
    ).json
    for n, (path, payload) in enumerate(
        (
            ("/api/v1/templates", template),
            ("/api/v1/campaigns", campaign),
            (f"/api/v1/campaigns/{made['id']}/duplicate", None),
            ("/api/v1/suppressions", {"phone": "+5511922220000"}),
        )
    ):
        keyed = headers | {"Idempotency-Key": f"every-{n}"}
        first = client.post(path, json=payload, headers=keyed)
        again = client.post(path, json=payload, headers=keyed)
        assert first.status_code == again.status_code == 201, (path, first.json)
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.json["id"] == first.json["id"]
        assert again.headers["Location"] == first.headers["Location"]
    db.session.rollback()
    assert db.session.query(Campaign).filter_by(name="Keyed").count() == 1


def test_old_keys_are_gone_and_pruned_in_batches(client, headers):
    keyed = headers | {"Idempotency-Key": "yesterday"}
    assert client.post("/api/v1/senders", json=sender("Day 1"), headers=keyed).status_code == 201
    db.session.execute(
        sa.update(IdempotencyKey).values(created_at=sa.func.now() - timedelta(hours=25))
    )
    db.session.commit()
    # Past its 24 hours a key counts as gone even before maintenance deletes it.
    answer = client.post("/api/v1/senders", json=sender("Day 2"), headers=keyed)
    assert answer.status_code == 201 and "Idempotent-Replayed" not in answer.headers
    for n in range(4):
        client.post(
            "/api/v1/senders",
            json=sender(f"Old {n}"),
            headers=headers | {"Idempotency-Key": f"o{n}"},
        )
    db.session.execute(
        sa.update(IdempotencyKey)
        .where(IdempotencyKey.key != "yesterday")
        .values(created_at=sa.func.now() - timedelta(hours=30))
    )
    db.session.commit()
    assert idempotency.delete_old_keys(db.session, batch=3) == 3
    assert idempotency.delete_old_keys(db.session, batch=3) == 1
    assert idempotency.delete_old_keys(db.session, batch=3) == 0
    db.session.commit()
    assert db.session.scalars(sa.select(IdempotencyKey.key)).all() == ["yesterday"]


def test_the_maintenance_job_prunes_old_keys(client, headers):
    import time

    from jobs import tasks

    client.post(
        "/api/v1/senders", json=sender("Pruned"), headers=headers | {"Idempotency-Key": "p"}
    )
    client.post("/api/v1/senders", json=sender("Kept"), headers=headers | {"Idempotency-Key": "k"})
    db.session.execute(
        sa.update(IdempotencyKey)
        .where(IdempotencyKey.key == "p")
        .values(created_at=sa.func.now() - timedelta(hours=24, minutes=1))
    )
    db.session.commit()
    tasks.reconcile(timestamp=int(time.time()))
    db.session.rollback()
    assert db.session.scalars(sa.select(IdempotencyKey.key)).all() == ["k"]


def test_an_abandoned_claim_is_taken_over_after_its_lease(client, headers, admin):
    keyed = headers | {"Idempotency-Key": "abandoned"}
    # What a request killed inside its view leaves: a claim in progress, no response.
    db.session.add(
        IdempotencyKey(
            user_id=admin.id,
            key="abandoned",
            method="POST",
            path="/api/v1/senders",
            body_sha256="0" * 64,
            state=idempotency.IN_PROGRESS,
        )
    )
    db.session.commit()
    answer = client.post("/api/v1/senders", json=sender("Took over"), headers=keyed)
    assert answer.status_code == 422  # another body: refused while it is held
    db.session.execute(
        sa.update(IdempotencyKey).values(
            created_at=sa.func.now() - idempotency.LEASE - timedelta(seconds=1)
        )
    )
    db.session.commit()
    answer = client.post("/api/v1/senders", json=sender("Took over"), headers=keyed)
    assert answer.status_code == 201 and senders_named("Took over") == 1


def test_an_erasure_forgets_the_kept_responses_that_hold_the_number(client, headers):
    keyed = headers | {"Idempotency-Key": "opt-out"}
    first = client.post("/api/v1/suppressions", json={"phone": "+5511911110000"}, headers=keyed)
    assert first.status_code == 201
    other = headers | {"Idempotency-Key": "another"}
    client.post("/api/v1/suppressions", json={"phone": "+5511911119999"}, headers=other)
    erase_person("+5511911110000", None)
    kept = db.session.scalars(sa.select(IdempotencyKey.response_body)).all()
    assert len(kept) == 1 and "+5511911119999" in kept[0]
    assert not any("+5511911110000" in body for body in kept)


def test_a_key_on_a_request_that_creates_nothing_is_ignored(client, headers, admin):
    campaign = demo_campaign(admin.id, name="Paused")
    keyed = headers | {"Idempotency-Key": "not-a-create"}
    for _ in range(2):
        answer = client.post(f"/api/v1/campaigns/{campaign.id}/cancel", headers=keyed)
        assert "Idempotent-Replayed" not in answer.headers
    db.session.rollback()
    assert db.session.query(IdempotencyKey).count() == 0


# ---- error codes -----------------------------------------------------------------


def test_an_unexpected_error_is_a_json_500_that_leaks_nothing(app, client, headers):
    app.config["PROPAGATE_EXCEPTIONS"] = False  # as in production

    def broken():
        raise RuntimeError("secret internals: /srv/disparo/db.py line 42")

    app.view_functions["api.me"] = broken
    answer = client.get("/api/v1/me", headers=headers)
    assert answer.status_code == 500
    assert answer.mimetype == "application/json"
    assert answer.json == {
        "error": {
            "code": "internal_error",
            "message": "Something went wrong on our side. It has been logged.",
        }
    }
    assert b"secret" not in answer.get_data() and b"Traceback" not in answer.get_data()


def test_a_wrong_method_is_405_method_not_allowed(client, headers):
    answer = client.delete("/api/v1/senders", headers=headers)
    assert answer.status_code == 405
    assert answer.json["error"]["code"] == "method_not_allowed"
    assert "GET" in answer.headers["Allow"]


def test_400s_and_404s_are_named(client, headers):
    nul = client.get("/api/v1/campaigns", query_string={"q": "\x00"}, headers=headers)
    assert nul.status_code == 400 and nul.json["error"]["code"] == "bad_request"
    nested = client.post(
        "/api/v1/templates", data="[" * 100_000, content_type="application/json", headers=headers
    )
    assert nested.status_code == 400 and nested.json["error"]["code"] == "bad_request"
    nowhere = client.get("/api/v1/nowhere", headers=headers)
    assert nowhere.status_code == 404 and nowhere.json["error"]["code"] == "not_found"


def test_no_error_code_is_a_bare_number(app):
    from campaigns import errors

    for status in (400, 401, 402, 403, 404, 405, 409, 413, 418, 422, 429, 500, 502, 503, 599):
        assert not errors.code_name(status).isdigit()
    assert errors.code_name(418) == "bad_request" and errors.code_name(599) == "internal_error"
