"""What recipients answered: replies, reactions, media and button taps attributed to the
campaign message they answer (its ``context``), counted once however often Meta delivers
them, shown in the progress, the API, the recipients table and CSV, and erased with the
person's data."""

from __future__ import annotations

import csv
import io
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from app import db
from campaigns import answers, counters, csvfiles, recipients
from campaigns.clock import database_now
from campaigns.models import (
    CampaignStatus,
    Message,
    MessageStatus,
    Provider,
    Role,
    Sender,
    Suppression,
)
from campaigns.services import personal_data
from tests.helpers import (
    assert_counters_match_rows,
    post_webhook,
    status_webhook,
    webhook_body,
)

# A minute ago: WhatsApp's time of the answers (an answer's time is never taken ahead of
# the database's clock, so a fixed time in the future would not read back as sent).
AT = int(time.time()) - 60


def inbound(
    kind: str,
    part: Any = None,
    context: str | None = None,
    *,
    ts: int = AT,
    phone_number_id: str | None = None,
    **extra: Any,
) -> dict:
    """A customer's message as Meta sends it: of ``kind``, its ``part``, replying to
    the message ``context`` names (None: to none)."""
    message: dict[str, Any] = {
        "from": "5511987650000",
        "id": f"wamid.in-{time.monotonic_ns()}",
        "timestamp": str(ts),
        "type": kind,
        **extra,
    }
    if part is not None:
        message[kind] = part
    if context is not None:
        message["context"] = {"from": "15550001111", "id": context}
    return webhook_body("messages", {"messages": [message]}, phone_number_id)


def _now(message: Message) -> Message:
    db.session.expire_all()
    found = db.session.get(Message, message.id)
    assert found is not None
    return found


def _answered(campaign_id: int) -> tuple[int, int]:
    totals = counters.totals(db.session, campaign_id)
    return totals["replied"], totals["clicked"]


def _counts(response) -> tuple[int, int, int]:
    assert response.status_code == 200
    return response.json["replies"], response.json["clicks"], response.json["unattributed"]


# Attribution


def test_a_text_reply_is_attributed_and_counted_once_however_often_it_comes(client, sent):
    wamid = sent.provider_message_id
    body = inbound("text", {"body": "Quero!"}, wamid)
    assert _counts(post_webhook(client, body)) == (1, 0, 0)
    assert _counts(post_webhook(client, body)) == (0, 0, 0)  # Meta delivers it again
    message = _now(sent)
    assert message.reply_text == "Quero!"
    assert message.replied_at == datetime.fromtimestamp(AT, UTC)
    assert (message.clicked_at, message.clicked_button) == (None, None)
    assert message.status is MessageStatus.SENT  # an answer moves no status
    # A second reply keeps its words (the latest answer), not its count or time.
    later = inbound("text", {"body": "Qual o endereço?"}, wamid, ts=AT + 30)
    assert _counts(post_webhook(client, later)) == (0, 0, 0)
    message = _now(sent)
    assert (message.reply_text, message.replied_at) == (
        "Qual o endereço?",
        datetime.fromtimestamp(AT, UTC),
    )
    # The first, delivered late, is older: it gives its time and leaves the words.
    early = inbound("text", {"body": "Oi"}, wamid, ts=AT - 30)
    assert _counts(post_webhook(client, early)) == (0, 0, 0)
    message = _now(sent)
    assert (message.reply_text, message.replied_at) == (
        "Qual o endereço?",
        datetime.fromtimestamp(AT - 30, UTC),
    )
    assert _answered(sent.campaign_id) == (1, 0)
    assert_counters_match_rows(sent.campaign_id)


def test_a_quick_reply_button_is_a_reply_and_a_click(client, sent):
    tap = inbound(
        "button", {"text": "Quero o cupom", "payload": "coupon"}, sent.provider_message_id
    )
    assert _counts(post_webhook(client, tap)) == (1, 1, 0)
    assert _counts(post_webhook(client, tap)) == (0, 0, 0)
    message = _now(sent)
    assert (message.reply_text, message.clicked_button) == ("Quero o cupom", "Quero o cupom")
    assert message.clicked_at == message.replied_at == datetime.fromtimestamp(AT, UTC)
    assert _answered(sent.campaign_id) == (1, 1)
    # Another button later: its text is kept, nothing counted twice.
    other = inbound("button", {"text": "Parar", "payload": "stop"}, sent.provider_message_id)
    assert _counts(post_webhook(client, other)) == (0, 0, 0)
    assert _now(sent).clicked_button == "Parar"
    assert _answered(sent.campaign_id) == (1, 1)


def test_an_interactive_button_reply_is_a_reply_and_a_click(client, sent):
    part = {"type": "button_reply", "button_reply": {"id": "b1", "title": "Sim"}}
    assert _counts(
        post_webhook(client, inbound("interactive", part, sent.provider_message_id))
    ) == (
        1,
        1,
        0,
    )
    message = _now(sent)
    assert (message.reply_text, message.clicked_button) == ("Sim", "Sim")
    # A list's choice is a reply with its title, no button.
    listed = {"type": "list_reply", "list_reply": {"id": "r2", "title": "Terça"}}
    post_webhook(client, inbound("interactive", listed, sent.provider_message_id))
    assert (_now(sent).reply_text, _now(sent).clicked_button) == ("Terça", "Sim")


def test_a_reaction_is_a_reply_with_its_emoji(client, sent):
    reaction = {"message_id": sent.provider_message_id, "emoji": "👍"}
    assert _counts(post_webhook(client, inbound("reaction", reaction))) == (1, 0, 0)
    assert _now(sent).reply_text == "👍"
    # A reaction taken back (no emoji) is no answer.
    gone = {"message_id": sent.provider_message_id}
    assert _counts(post_webhook(client, inbound("reaction", gone))) == (0, 0, 0)
    assert _now(sent).reply_text == "👍"


@pytest.mark.parametrize(
    "kind", ["image", "video", "document", "audio", "sticker", "location", "contacts"]
)
def test_a_media_reply_keeps_its_kind_in_brackets(client, sent, kind):
    part: Any = [{"name": {"formatted_name": "Ana"}}] if kind == "contacts" else {"id": "m1"}
    assert _counts(post_webhook(client, inbound(kind, part, sent.provider_message_id))) == (1, 0, 0)
    assert _now(sent).reply_text == f"[{kind}]"


def test_an_answer_to_a_message_disparo_does_not_know_is_unattributed(client, sent):
    body = inbound("text", {"body": "Oi"}, "wamid.someone-elses")
    assert _counts(post_webhook(client, body)) == (0, 0, 1)
    assert _answered(sent.campaign_id) == (0, 0)


def test_a_message_without_context_answers_nothing(client, sent):
    # Not guessed from the number, however recent the campaign message to it.
    assert _counts(post_webhook(client, inbound("text", {"body": "Oi"}))) == (0, 0, 0)
    forwarded = inbound("text", {"body": "Oi"})
    forwarded["entry"][0]["changes"][0]["value"]["messages"][0]["context"] = {"forwarded": True}
    assert _counts(post_webhook(client, forwarded)) == (0, 0, 0)
    assert _now(sent).replied_at is None
    assert _answered(sent.campaign_id) == (0, 0)


def test_an_opt_out_reply_still_suppresses_and_counts_as_a_reply(client, sent):
    response = post_webhook(client, inbound("text", {"body": "SAIR"}, sent.provider_message_id))
    assert response.json["opt_outs"] == 1 and _counts(response) == (1, 0, 0)
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Suppression)) == 1
    # Without context, as before: suppressed, no answer.
    response = post_webhook(client, inbound("text", {"body": "PARAR"}))
    assert response.json["opt_outs"] == 1 and _counts(response) == (0, 0, 0)


def test_another_senders_number_cannot_answer_this_senders_message(client, sent):
    other = Sender(
        name="Other sender",
        provider=Provider.MOCK,
        phone_number_id="100000000000777",
        app_secret="the-other-senders-app-secret",
        webhook_verify_token="other-token",
    )
    db.session.add(other)
    db.session.commit()
    body = inbound(
        "text", {"body": "Oi"}, sent.provider_message_id, phone_number_id="100000000000777"
    )
    response = post_webhook(client, body, "the-other-senders-app-secret")
    assert _counts(response) == (0, 0, 0) and response.json["skipped"] == 1
    assert _now(sent).replied_at is None


@pytest.mark.parametrize(
    "shape",
    [
        lambda w: {"type": "text", "text": {"body": "Oi"}, "context": w},
        lambda w: {"type": "text", "text": {"body": "Oi"}, "context": {"id": 5}},
        lambda w: {"type": "text", "text": {"body": 5}, "context": {"id": w}},
        lambda w: {"type": "text", "text": "Oi", "context": {"id": w}},
        lambda w: {"type": "button", "button": {"text": ["Sim"]}, "context": {"id": w}},
        lambda w: {
            "type": "interactive",
            "interactive": {"type": "button_reply", "button_reply": {}},
            "context": {"id": w},
        },
        lambda w: {"type": "reaction", "reaction": "👍"},
        lambda w: {"type": "reaction", "reaction": {"message_id": [w], "emoji": "👍"}},
        lambda w: {
            "type": "text",
            "text": {"body": "Oi"},
            "context": {"id": w},
            "timestamp": "yesterday",
        },
    ],
)
def test_an_answer_of_the_wrong_shape_is_skipped(client, sent, shape):
    message = {"from": "5511987650000", "timestamp": str(AT), **shape(sent.provider_message_id)}
    response = post_webhook(client, webhook_body("messages", {"messages": [message]}))
    assert response.status_code == 200 and response.json["skipped"] >= 1
    assert _counts(response) == (0, 0, 0)
    assert _now(sent).replied_at is None


def test_texts_are_kept_within_their_widths(client, sent):
    long = "ã" * 2000
    post_webhook(
        client, inbound("button", {"text": long, "payload": "x"}, sent.provider_message_id)
    )
    message = _now(sent)
    assert message.reply_text == "ã" * answers.MAX_REPLY_CHARS
    assert message.clicked_button == "ã" * answers.MAX_BUTTON_CHARS


def test_a_click_recorded_without_a_webhook_counts_once(app, sent):
    """A click tracker's view has only the message id (and perhaps no button text)."""
    assert answers.record_click(db.session, sent.id, "Ver oferta") is True
    db.session.commit()
    assert answers.record_click(db.session, sent.id, None) is False
    db.session.commit()
    message = _now(sent)
    assert message.clicked_button == "Ver oferta" and message.clicked_at is not None
    assert message.replied_at is None
    assert _answered(sent.campaign_id) == (0, 1)
    assert answers.record_click(db.session, 10**12, "Ver oferta") is False  # no such message
    assert answers.record_reply(db.session, 10**12, "Oi", None) is False


# Shown


def _answer_it(client, sent) -> None:
    tap = inbound("button", {"text": "Quero", "payload": "yes"}, sent.provider_message_id)
    assert _counts(post_webhook(client, tap)) == (1, 1, 0)


def test_the_progress_shows_replies_and_clicks(client, sent, token_for, login_as):
    _answer_it(client, sent)
    campaign_id = sent.campaign_id
    delivered = status_webhook(sent.provider_message_id, "delivered", sent.id, ts=AT)
    assert post_webhook(client, delivered).json["applied"] == 1
    api = client.get(f"/api/v1/campaigns/{campaign_id}/progress", headers=token_for(Role.VIEWER))
    assert api.status_code == 200  # and as the OpenAPI document says (conftest)
    assert (api.json["replied"], api.json["clicked"], api.json["reply_rate"]) == (1, 1, 1.0)
    messages = client.get(
        f"/api/v1/campaigns/{campaign_id}/messages", headers=token_for(Role.VIEWER)
    ).json["messages"]
    (answered,) = [m for m in messages if m["id"] == sent.id]
    assert (answered["reply_text"], answered["clicked_button"]) == ("Quero", "Quero")
    assert answered["replied_at"] == answered["clicked_at"] is not None
    login_as(Role.VIEWER)
    html = client.get(f"/campaigns/{campaign_id}/progress").get_data(as_text=True)
    assert f'id="campaign-{campaign_id}-replied"' in html
    assert f'id="campaign-{campaign_id}-clicked">1<' in html
    assert "Replies" in html and "Clicks" in html
    # After completion the receipts poller brings them along with delivered and read.
    campaign = sent.campaign
    campaign.status, campaign.completed_at = CampaignStatus.COMPLETED, database_now(db.session)
    db.session.commit()
    receipts = client.get(f"/campaigns/{campaign_id}/receipts").get_data(as_text=True)
    assert f'id="campaign-{campaign_id}-replied" hx-swap-oob="true" title="100' in receipts
    assert f'id="campaign-{campaign_id}-clicked" hx-swap-oob="true">1<' in receipts


def test_the_recipients_table_and_csv_show_each_answer(client, sent, login_as):
    _answer_it(client, sent)
    login_as(Role.VIEWER)
    html = client.get(f"/campaigns/{sent.campaign_id}/recipients").get_data(as_text=True)
    row = html.split(f'<tr id="message-{sent.id}">')[1].split("</tr>")[0]
    assert "<q>Quero</q>" in row and "Tapped “Quero”" in row
    export = client.get(f"/campaigns/{sent.campaign_id}/recipients.csv?format=standard")
    rows = list(csv.reader(io.StringIO(export.get_data(as_text=True).removeprefix("\ufeff"))))
    by_ref = {
        r[0].removeprefix(csvfiles.KEEP_AS_TEXT): dict(
            zip(recipients.RECIPIENT_CSV_COLUMNS, r, strict=True)
        )
        for r in rows
    }
    answered = by_ref[sent.customer_ref]
    assert (answered["reply_text"], answered["clicked_button"]) == ("Quero", "Quero")
    assert answered["replied_at"] and answered["replied_at"] == answered["clicked_at"]
    others = [r for ref, r in by_ref.items() if ref not in (sent.customer_ref, rows[0][0])]
    assert others and all(r["reply_text"] == r["replied_at"] == "" for r in others)


def test_the_recipients_can_be_filtered_to_those_who_replied(client, sent, login_as):
    login_as(Role.VIEWER)
    url = f"/campaigns/{sent.campaign_id}/recipients?status=replied"
    html = client.get(url).get_data(as_text=True)
    assert "No recipient matches." in html and ">0 recipients<" in html
    assert '<option value="replied" selected>Replied</option>' in html
    _answer_it(client, sent)
    html = client.get(url).get_data(as_text=True)
    assert re.findall(r'<tr id="message-(\d+)"', html) == [str(sent.id)]
    assert ">1 recipient<" in html  # from the counters
    # The progress poll's count for the same filter, from the same counter.
    poll = client.get(
        f"/campaigns/{sent.campaign_id}/progress",
        query_string={"shown": "sending", "listed": 1, "status": "replied"},
    ).get_data(as_text=True)
    assert ">1 recipient<" in poll
    # "Load more" keeps the filter.
    page = recipients.recipient_page(
        sent.campaign_id, recipients.RecipientFilters(replied=True), per_page=1
    )
    assert [m.id for m in page.messages] == [sent.id] and page.next_after is None


# Erased


def _texts(message: Message) -> tuple[Any, ...]:
    found = _now(message)
    return found.reply_text, found.clicked_button


def test_a_persons_erasure_clears_their_answers_and_keeps_the_counts(app, client, sent):
    _answer_it(client, sent)
    first = _now(sent).replied_at
    personal_data.erase_person(sent.phone, None)
    assert _texts(sent) == (None, None)
    assert (_now(sent).replied_at, _now(sent).clicked_at) == (first, first)
    assert _answered(sent.campaign_id) == (1, 1)
    # A later answer to the erased message counts nothing new and keeps no words.
    again = inbound("text", {"body": "Oi de novo"}, sent.provider_message_id)
    assert _counts(post_webhook(client, again)) == (0, 0, 0)
    assert _texts(sent) == (None, None)


def test_a_first_answer_after_the_erasure_counts_without_its_words(app, client, sent):
    personal_data.erase_person(sent.phone, None)
    tap = inbound("button", {"text": "Quero", "payload": "yes"}, sent.provider_message_id)
    assert _counts(post_webhook(client, tap)) == (1, 1, 0)
    assert _texts(sent) == (None, None) and _now(sent).replied_at is not None
    assert _answered(sent.campaign_id) == (1, 1)


def test_retention_clears_the_answers_and_keeps_the_counts(app, client, sent):
    _answer_it(client, sent)
    campaign = sent.campaign
    campaign.status = CampaignStatus.COMPLETED
    campaign.completed_at = database_now(db.session) - timedelta(days=400)
    db.session.commit()
    run = personal_data.erase_expired(180)
    assert run.campaigns_erased == [campaign.id]
    assert _texts(sent) == (None, None) and _now(sent).clicked_at is not None
    assert _answered(campaign.id) == (1, 1)
    # Erased rows with only an answer left are found too (NOT_ERASED), then none is left.
    assert personal_data.erase_expired(180).messages == 0
