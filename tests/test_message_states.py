"""The message state machine's table and its enforcement (the moves themselves are tested
where the engine and the webhooks make them)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from app import db
from campaigns import counters, message_states
from campaigns.message_states import NEXT, WEBHOOK_SOURCES, counter_deltas
from campaigns.models import Message, MessageStatus
from tests.helpers import assert_counters_match_rows, demo_campaign, jobs

S = MessageStatus


def test_the_table_says_what_follows_every_state():
    assert set(NEXT) == {None, *MessageStatus}
    # Ends stay ends; only "retry failed" reopens a failed message.
    assert NEXT[S.READ] == NEXT[S.SKIPPED] == NEXT[S.CANCELLED] == frozenset()
    assert NEXT[S.FAILED] == {S.PENDING}


def test_webhooks_only_make_moves_the_table_allows():
    for to, sources in WEBHOOK_SOURCES.items():
        assert all(to in NEXT[source] for source in sources), to


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (None, S.PENDING, {"total": 1, "pending": 1}),
        (S.PENDING, S.QUEUED, {"pending": -1, "queued": 1}),
        (S.SENDING, S.READ, {"sending": -1, "sent": 1, "delivered": 1, "read": 1}),
        (S.DELIVERED, S.FAILED, {"sent": -1, "delivered": -1, "failed": 1}),
        (S.FAILED, S.PENDING, {"failed": -1, "pending": 1}),
    ],
)
def test_counter_deltas(old, new, expected):
    assert {k: v for k, v in counter_deltas(old, new).items() if v} == expected


def test_a_move_the_table_does_not_allow_raises_and_changes_nothing(app, owner):
    campaign = demo_campaign(owner.id)
    db.session.add(
        Message(campaign_id=campaign.id, phone="+5511987654321", customer_ref="C1", status=S.READ)
    )
    db.session.commit()
    message_id = db.session.scalar(sa.select(Message.id))
    with pytest.raises(ValueError, match="cannot go from"):
        message_states.transition(db.session, message_id, [S.READ], S.SENT)
    with pytest.raises(ValueError, match="cannot go from"):
        message_states.transition_campaign(db.session, campaign.id, [S.SKIPPED], S.PENDING)
    db.session.rollback()
    assert db.session.get(Message, message_id).status is S.READ


def test_a_guarded_move_of_a_message_elsewhere_changes_nothing(app, owner):
    campaign = demo_campaign(owner.id)
    counters.ensure_rows(db.session, campaign.id)  # as a campaign's start makes them
    message_states.add_new(
        db.session,
        campaign.id,
        [
            {
                "campaign_id": campaign.id,
                "customer_ref": "C1",
                "phone": "+5511987654321",
                "customer_data": {},
                "params": {},
                "status": "pending",
                "error_code": None,
                "error_text": None,
            }
        ],
    )
    db.session.commit()
    message_id = db.session.scalar(sa.select(Message.id))
    # Another writer got there first: the message is pending, not queued.
    old = message_states.transition(db.session, message_id, [S.QUEUED], S.CANCELLED)
    assert old is None
    assert db.session.get(Message, message_id).status is S.PENDING
    assert jobs("messages.send") == []
    assert_counters_match_rows(campaign.id)


def _sending_with_an_earlier_error(campaign_id: int) -> Message:
    """A message in its call whose earlier try left WhatsApp's throughput error on it."""
    counters.ensure_rows(db.session, campaign_id)
    row = {
        "campaign_id": campaign_id,
        "customer_ref": "C1",
        "phone": "+5511987654321",
        "customer_data": {},
        "params": {},
        "status": "pending",
        "error_code": None,
        "error_text": None,
    }
    message_states.add_new(db.session, campaign_id, [row])
    message_id = db.session.scalar(sa.select(Message.id))
    message_states.transition(db.session, message_id, [S.PENDING], S.QUEUED)
    message_states.transition(db.session, message_id, [S.QUEUED], S.SENDING)
    message_states.note_error(db.session, message_id, "130429", "too fast")
    db.session.commit()
    return db.session.get(Message, message_id)


@pytest.mark.parametrize(
    ("webhook", "code", "kept"),
    [
        (S.SENT, None, None),  # went out: an earlier try's error is no longer its story
        (S.DELIVERED, None, None),
        (S.READ, None, None),
        (S.FAILED, "131026", "131026"),  # the webhook's failure is its outcome: kept
    ],
)
def test_the_sends_record_keeps_only_an_error_a_webhook_made_the_outcome(
    app, owner, webhook, code, kept
):
    campaign = demo_campaign(owner.id)
    message = _sending_with_an_earlier_error(campaign.id)
    # WhatsApp's status comes before the send's own record of the call.
    assert message_states.record_status(
        db.session, message, webhook, message.created_at, error_code=code, error_text=code
    )
    message_states.record_sent(db.session, campaign.id, [(message.id, "wamid.1")])
    db.session.commit()
    db.session.refresh(message)
    assert message.status is webhook
    assert message.error_code == kept
    assert message.error_text == kept
    assert_counters_match_rows(campaign.id)
