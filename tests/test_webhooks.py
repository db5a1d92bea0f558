"""The WhatsApp webhook endpoint against hostile input: the handshake, signatures,
bodies of any shape, and one sender's secret reaching for another sender's messages.

The ordinary flow (statuses, replies, preferences, pauses) is in test_sending.py.
"""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from app import db
from campaigns import callback_data, message_states, queues
from campaigns.callback_data import CallbackData
from campaigns.models import Message, MessageStatus, Provider, Sender, Suppression
from campaigns.services.templates import default_sender
from tests.helpers import (
    assert_counters_match_rows,
    jobs,
    post_webhook,
    reply_webhook,
    status_webhook,
    webhook_body,
)

URL = "/webhooks/whatsapp"
OTHER_NUMBER_ID = "100000000000777"
OTHER_SECRET = "the-other-senders-app-secret"


@pytest.fixture
def other_sender(app) -> Sender:
    """A second sender with its own number and app secret."""
    sender = Sender(
        name="Other sender",
        provider=Provider.MOCK,
        phone_number_id=OTHER_NUMBER_ID,
        app_secret=OTHER_SECRET,
        webhook_verify_token="other-token",
    )
    db.session.add(sender)
    db.session.commit()
    return sender


def _status_now(message: Message) -> MessageStatus:
    db.session.expire_all()
    return db.session.get(Message, message.id).status


def _suppressed() -> int:
    return db.session.scalar(sa.select(sa.func.count()).select_from(Suppression)) or 0


# The handshake


def _handshake(client, token: str, challenge: str | None = "1158201444", mode="subscribe"):
    query = {"hub.mode": mode, "hub.verify_token": token}
    if challenge is not None:
        query["hub.challenge"] = challenge
    return client.get(URL, query_string=query)


def test_the_handshake_echoes_a_digit_challenge_as_plain_text(app, client, campaign):
    app.config["WEBHOOK_VERIFY_TOKEN"] = "global-token"
    for token in (default_sender().webhook_verify_token, "global-token"):
        response = _handshake(client, token)
        assert (response.status_code, response.get_data(as_text=True)) == (200, "1158201444")
        assert response.mimetype == "text/plain"


@pytest.mark.parametrize(
    "challenge",
    [
        "<script>alert(1)</script>",
        "abc123",
        "",
        None,
        "١٢٣",  # digits to str.isdigit, not to Meta
        "12 34",
        "9" * 65,
    ],
)
def test_the_handshake_refuses_a_challenge_that_is_not_digits(client, campaign, challenge):
    response = _handshake(client, default_sender().webhook_verify_token, challenge)
    assert response.status_code == 400
    assert response.mimetype == "text/plain"
    assert "script" not in response.get_data(as_text=True)


@pytest.mark.parametrize(
    ("token", "mode"),
    [("nope", "subscribe"), ("tökèn-ñ", "subscribe"), ("日本", "subscribe"), (None, "unsubscribe")],
)
def test_the_handshake_refuses_a_wrong_token_or_mode(app, client, campaign, token, mode):
    app.config["WEBHOOK_VERIFY_TOKEN"] = "global-token"
    response = _handshake(client, token or default_sender().webhook_verify_token, mode=mode)
    assert response.status_code == 403 and response.mimetype == "text/plain"


# Signatures


@pytest.mark.parametrize(
    "header", ["sha256=" + "é" * 64, "sha256=ünïcödé", "é", "sha256=" + "0" * 64, "md5=abc", ""]
)
def test_a_bad_signature_of_any_characters_is_refused_and_changes_nothing(client, sent, header):
    raw = json.dumps(status_webhook(f"wamid.{sent.id}", "read", sent.id)).encode()
    response = client.post(
        URL, data=raw, headers={"X-Hub-Signature-256": header, "Content-Type": "application/json"}
    )
    assert response.status_code == 401
    assert response.json["error"]["code"] == "bad_signature"
    assert _status_now(sent) is MessageStatus.SENT


# Signed bodies Disparo cannot use: acknowledged, logged, nothing changed


SHAPES = {
    "an array": [],
    "a string": "entry",
    "null": None,
    "no entry": {"object": "whatsapp_business_account"},
    "entry not a list": {"entry": {"changes": []}},
    "entry of strings": {"entry": ["x"]},
    "changes missing": {"entry": [{"id": "1"}]},
    "changes not a list": {"entry": [{"changes": "x"}]},
    "changes of numbers": {"entry": [{"changes": [1, 2]}]},
    "no field": {"entry": [{"changes": [{"value": {}}]}]},
    "field not text": {"entry": [{"changes": [{"field": ["messages"], "value": {}}]}]},
    "value missing": {"entry": [{"changes": [{"field": "messages"}]}]},
    "value a string": {"entry": [{"changes": [{"field": "messages", "value": "read"}]}]},
}

# A status entry for the sent message with these fields replaced (None: removed).
BROKEN_STATUSES = {
    "id missing": {"id": None},
    "id a number": {"id": 12345},
    "id with a NUL": {"id": "wamid.\u0000"},
    "id not ASCII": {"id": "wamid.ü"},
    "id a lone surrogate": {"id": "wamid.\ud800"},
    "id too long for the column": {"id": "wamid." + "x" * 200},
    "status a list": {"status": ["read"]},
    "timestamp words": {"timestamp": "soon"},
    "timestamp a float string": {"timestamp": "1.8e9"},
    "timestamp other digits": {"timestamp": "١٨٠٠٠٠٠٠٠٠"},
    "timestamp past the calendar": {"timestamp": 10**30},
    "timestamp negative": {"timestamp": -5},
    "timestamp missing": {"timestamp": None},
    "errors an object": {"status": "failed", "errors": {"code": 131049}},
    "errors of strings": {"status": "failed", "errors": ["131049"]},
    "error code a list": {"status": "failed", "errors": [{"code": [131050]}]},
    "error code an object": {"status": "failed", "errors": [{"code": {"x": 1}}]},
}


def _assert_skipped_and_nothing_changed(response, campaign, sent, caplog) -> None:
    assert response.status_code == 200
    assert response.json["ok"] is True and response.json["skipped"] >= 1
    assert response.json["applied"] == 0
    assert _status_now(sent) is MessageStatus.SENT
    assert _suppressed() == 0
    assert_counters_match_rows(campaign.id)
    assert any(
        r.name == "campaigns.webhooks" and r.levelname == "WARNING" and "skipped" in r.getMessage()
        for r in caplog.records
    )


@pytest.mark.parametrize("case", SHAPES)
def test_a_signed_body_of_the_wrong_shape_is_acknowledged_and_changes_nothing(
    client, campaign, sent, caplog, case
):
    response = post_webhook(client, SHAPES[case])
    _assert_skipped_and_nothing_changed(response, campaign, sent, caplog)


@pytest.mark.parametrize("case", BROKEN_STATUSES)
def test_a_status_of_the_wrong_shape_is_acknowledged_and_changes_nothing(
    client, campaign, sent, caplog, case
):
    body = status_webhook(f"wamid.{sent.id}", "read", sent.id)
    status = body["entry"][0]["changes"][0]["value"]["statuses"][0]
    for key, value in BROKEN_STATUSES[case].items():
        if value is None:
            del status[key]
        else:
            status[key] = value
    response = post_webhook(client, body)
    _assert_skipped_and_nothing_changed(response, campaign, sent, caplog)


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"\xff\xfe\x00", b'{"entry": [', b"[" * 20_000, b"", json.dumps("x").encode()],
)
def test_a_signed_body_that_is_not_a_json_object_is_acknowledged(client, sent, caplog, raw):
    response = post_webhook(client, raw)
    assert response.status_code == 200 and response.json["skipped"] == 1
    assert _status_now(sent) is MessageStatus.SENT
    assert "body is not a JSON object" in caplog.text


@pytest.mark.parametrize(
    "part",
    [
        {"statuses": "read"},
        {"statuses": {"id": "x"}},
        {"statuses": ["read"]},
        {"messages": "SAIR"},
        {"messages": [{"from": "5511987650000", "text": "SAIR"}]},
        {"messages": [{"from": "5511987650000", "text": {"body": 5}}]},
        {"messages": [{"from": 5511987650000, "text": {"body": "SAIR"}}]},
        {"messages": [{"from": "5511987650000", "button": ["SAIR"]}]},
        {"user_preferences": {"wa_id": "5511987650000"}},
        {"user_preferences": ["stop"]},
        {"user_preferences": [{"category": "marketing_messages", "value": "stop", "wa_id": 1}]},
    ],
)
def test_statuses_replies_and_preferences_of_the_wrong_type_are_skipped(client, sent, part):
    response = post_webhook(client, webhook_body("messages", part))
    assert response.status_code == 200 and response.json["skipped"] >= 1
    assert response.json["opt_outs"] == 0
    assert _status_now(sent) is MessageStatus.SENT
    assert _suppressed() == 0


@pytest.mark.parametrize(
    "callback",
    ["²", "9" * 30, "-1", "12.0", ["1"], {"id": 1}],
)
def test_an_unknown_wamid_with_a_strange_callback_is_an_unknown_message(client, sent, callback):
    body = status_webhook("wamid.nobody", "read", sent.id, biz_opaque_callback_data=callback)
    response = post_webhook(client, body)
    assert response.status_code == 200 and response.json["unknown"] == 1
    assert _status_now(sent) is MessageStatus.SENT


def test_an_unknown_phone_number_id_is_skipped(client, sent, caplog):
    body = status_webhook(f"wamid.{sent.id}", "read", sent.id, phone_number_id="999999")
    response = post_webhook(client, body)
    assert response.status_code == 200 and response.json["skipped"] == 1
    assert _status_now(sent) is MessageStatus.SENT
    assert "phone number id 999999, which no sender has" in caplog.text


@pytest.mark.parametrize(
    "number_id",
    [None, 100000000000001, "", "abc", "1\u00002", "\u0661"],  # Arabic-Indic 1
)
def test_a_change_without_a_usable_phone_number_id_is_skipped(client, sent, number_id):
    body = status_webhook(f"wamid.{sent.id}", "read", sent.id)
    value = body["entry"][0]["changes"][0]["value"]
    value["metadata"] = {"phone_number_id": number_id} if number_id is not None else "x"
    response = post_webhook(client, body)
    assert response.status_code == 200 and response.json["skipped"] == 1
    assert _status_now(sent) is MessageStatus.SENT


def test_texts_postgresql_refuses_are_cleaned_not_refused(client, campaign, sent):
    # NUL bytes dropped; a lone surrogate (JSON escapes it, UTF-8 cannot hold it) replaced.
    error = {"code": 131026, "message": "no\u0000pe\ud800"}
    body = status_webhook(f"wamid.{sent.id}", "failed", sent.id, errors=[error])
    assert post_webhook(client, body).json["applied"] == 1
    db.session.expire_all()
    message = db.session.get(Message, sent.id)
    assert (message.status, message.error_code, message.error_text) == (
        MessageStatus.FAILED,
        "131026",
        "nope?",
    )
    response = post_webhook(client, reply_webhook("SAIR\u0000"))
    assert response.status_code == 200
    preference = {"wa_id": "5511987650001", "category": "marketing_messages", "value": "stop"}
    preference["detail"] = "stop\u0000 it\udc00"
    body = webhook_body("user_preferences", {"user_preferences": [preference]})
    assert post_webhook(client, body).json["opt_outs"] == 1
    reason = db.session.scalar(
        sa.select(Suppression.reason).where(Suppression.phone == "+5511987650001")
    )
    assert reason == "stop it?"


def test_the_usable_parts_of_a_body_are_applied_and_the_rest_skipped(client, campaign, sent):
    body = status_webhook(f"wamid.{sent.id}", "read", sent.id)
    statuses = body["entry"][0]["changes"][0]["value"]["statuses"]
    statuses.insert(0, {"id": ["broken"], "status": "failed"})
    body["entry"].insert(0, "not an entry")
    response = post_webhook(client, body)
    assert response.status_code == 200
    assert (response.json["applied"], response.json["skipped"]) == (1, 2)
    assert _status_now(sent) is MessageStatus.READ
    assert_counters_match_rows(campaign.id)


def test_fields_disparo_does_not_handle_are_ignored_quietly(client, sent, caplog):
    change = {"field": "security", "value": {"event": "PASSWORD_CHANGED"}}
    body = {"entry": [{"id": "1", "changes": [change]}]}
    response = post_webhook(client, body)
    assert response.status_code == 200 and response.json["skipped"] == 0
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


# Each sender's secret covers its own changes only


def test_another_senders_secret_cannot_change_this_senders_messages(
    client, campaign, sent, other_sender, caplog
):
    # The demo sender's number, signed with the other sender's secret.
    response = post_webhook(
        client, status_webhook(f"wamid.{sent.id}", "read", sent.id), OTHER_SECRET
    )
    assert response.status_code == 200 and response.json["skipped"] == 1
    assert _status_now(sent) is MessageStatus.SENT
    assert "is not signed with its app secret" in caplog.text
    # Its own opt-out replies too: the suppression list is everyone's.
    assert post_webhook(client, reply_webhook("SAIR"), OTHER_SECRET).json["opt_outs"] == 0
    assert _suppressed() == 0
    assert_counters_match_rows(campaign.id)


def test_a_sender_cannot_reach_another_senders_message_by_its_wamid(client, sent, other_sender):
    # Its own number and secret, about the demo sender's message.
    body = status_webhook(f"wamid.{sent.id}", "read", sent.id, phone_number_id=OTHER_NUMBER_ID)
    response = post_webhook(client, body, OTHER_SECRET)
    assert response.status_code == 200
    assert (response.json["applied"], response.json["skipped"]) == (0, 1)
    assert _status_now(sent) is MessageStatus.SENT


@pytest.fixture
def sending_message(app, sent) -> Message:
    """A message of the same campaign mid-call: sending, its wamid not recorded yet."""
    queued = [i for job in jobs(queues.SEND_TASK) for i in job["args"]["message_ids"]][1]
    message_states.transition(db.session, queued, [MessageStatus.QUEUED], MessageStatus.SENDING)
    db.session.commit()
    message = db.session.get(Message, queued)
    assert message is not None and message.provider_message_id is None
    return message


def test_a_status_that_beats_the_sends_record_finds_its_message_by_callback(
    client, sending_message
):
    body = status_webhook("wamid.early", "delivered", sending_message.id)
    assert post_webhook(client, body).json["applied"] == 1
    db.session.expire_all()
    message = db.session.get(Message, sending_message.id)
    assert (message.status, message.provider_message_id) == (
        MessageStatus.DELIVERED,
        "wamid.early",
    )


@pytest.fixture
def claimed_message(app, campaign, sent) -> Message:
    """A message of the same campaign claimed for its first call (attempts 1), its wamid
    not recorded yet."""
    queued = [i for job in jobs(queues.SEND_TASK) for i in job["args"]["message_ids"]][1]
    (claimed,) = message_states.claim(db.session, campaign.id, [queued], MessageStatus.QUEUED)
    db.session.commit()
    assert claimed.attempts == 1
    message = db.session.get(Message, queued)
    assert message is not None and message.provider_message_id is None
    return message


def _applied_delivered(client, message: Message, callback: str) -> dict:
    body = status_webhook("wamid.early", "delivered", message.id, biz_opaque_callback_data=callback)
    response = post_webhook(client, body)
    assert response.status_code == 200
    return response.json


@pytest.mark.parametrize("form", ["{id}.1", "{id}"])  # its call's, and the plain old form
def test_a_status_of_the_current_call_finds_its_message_by_callback(
    client, campaign, claimed_message, form
):
    callback = form.format(id=claimed_message.id)
    assert _applied_delivered(client, claimed_message, callback)["applied"] == 1
    db.session.expire_all()
    message = db.session.get(Message, claimed_message.id)
    assert (message.status, message.provider_message_id) == (
        MessageStatus.DELIVERED,
        "wamid.early",
    )
    assert_counters_match_rows(campaign.id)


@pytest.mark.parametrize("attempt", [2, 9])
def test_a_status_of_another_call_of_the_message_is_ignored(
    client, claimed_message, attempt, caplog
):
    caplog.set_level("INFO", "campaigns.webhooks")
    callback = f"{claimed_message.id}.{attempt}"
    summary = _applied_delivered(client, claimed_message, callback)
    assert (summary["applied"], summary["ignored"]) == (0, 1)
    assert f"about its call {attempt}, not its current call 1" in caplog.text
    db.session.expire_all()
    message = db.session.get(Message, claimed_message.id)
    assert (message.status, message.provider_message_id) == (MessageStatus.SENDING, None)


def test_a_test_sends_status_names_no_message(client, campaign, claimed_message):
    # A test send's callback data is "test-<campaign id>": about no campaign message,
    # even one whose id is that number.
    callback = f"test-{claimed_message.id}"
    assert _applied_delivered(client, claimed_message, callback)["unknown"] == 1
    db.session.expire_all()
    assert db.session.get(Message, claimed_message.id).status is MessageStatus.SENDING


@pytest.mark.parametrize(
    ("raw", "read"),
    [
        ("17.3", CallbackData(17, 3)),
        ("17", CallbackData(17, None)),
        (17, CallbackData(17, None)),
        (str(2**63 - 1) + ".2147483647", CallbackData(2**63 - 1, 2147483647)),
        ("test-17", None),
        ("17.0", None),
        ("17.03", None),
        ("17.", None),
        (".3", None),
        ("17.3.1", None),
        ("17.-3", None),
        (str(2**63) + ".1", None),
        ("17.12345678901", None),
        ("\u0661\u0667.3", None),  # Arabic-Indic digits: str.isdigit, not ASCII
        (None, None),
        (True, None),
    ],
)
def test_callback_data_is_read_as_written(raw, read):
    assert callback_data.parse(raw) == read
    if read is not None and read.attempt is not None:
        assert callback_data.for_call(read.message_id, read.attempt) == raw


def test_a_sender_cannot_reach_another_senders_message_by_callback(
    client, sending_message, other_sender
):
    # A wamid nobody has, the callback data naming the demo sender's message.
    body = status_webhook(
        "wamid.new", "delivered", sending_message.id, phone_number_id=OTHER_NUMBER_ID
    )
    response = post_webhook(client, body, OTHER_SECRET)
    assert response.status_code == 200
    assert (response.json["applied"], response.json["skipped"]) == (0, 1)
    db.session.expire_all()
    message = db.session.get(Message, sending_message.id)
    assert (message.status, message.provider_message_id) == (MessageStatus.SENDING, None)


def test_a_senders_own_opt_out_replies_apply(client, sent, other_sender):
    reply = reply_webhook("SAIR", phone_number_id=OTHER_NUMBER_ID)
    assert post_webhook(client, reply, OTHER_SECRET).json["opt_outs"] == 1
    assert _suppressed() == 1


def test_the_global_secret_covers_every_sender(app, client, campaign, sent, other_sender):
    app.config["WHATSAPP_APP_SECRET"] = "global-secret"
    body = status_webhook(f"wamid.{sent.id}", "read", sent.id)
    assert post_webhook(client, body, "global-secret").json["applied"] == 1
    assert _status_now(sent) is MessageStatus.READ
    assert_counters_match_rows(campaign.id)


def test_each_change_is_checked_against_its_own_sender(client, campaign, sent, other_sender):
    # One body, two changes: the demo sender's (signed by its secret) and the other
    # sender's (not): the first applies, the second is skipped.
    body = status_webhook(f"wamid.{sent.id}", "read", sent.id)
    body["entry"].append(reply_webhook("SAIR", phone_number_id=OTHER_NUMBER_ID)["entry"][0])
    response = post_webhook(client, body)
    assert (response.status_code, response.json["applied"], response.json["skipped"]) == (
        200,
        1,
        1,
    )
    assert response.json["opt_outs"] == 0 and _suppressed() == 0
    assert _status_now(sent) is MessageStatus.READ
