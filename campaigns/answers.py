"""What recipients answered: replies and button clicks, attributed to the campaign message
they answer.

A recipient answers a campaign message by replying to it (WhatsApp's inbound message
names it in its ``context``: ``webhooks.py`` reads that), by reacting to it, or by
tapping one of its buttons (a quick reply is a reply and a click). Each message keeps:

- ``replied_at`` / ``clicked_at``: the first reply's and the first click's time, each set
  once, when the campaign's counter (``replied``, ``clicked``) goes up by one in the same
  transaction. Meta delivers webhooks at least once: the same reply again finds the time
  set and counts nothing.
- ``reply_text``: the latest reply (its words, an emoji, or the kind of media in
  brackets), at most MAX_REPLY_CHARS; ``clicked_button``: the latest button's text. Both
  are personal data: erased with the phone (``services/personal_data.py``), and a reply
  to a message whose data is already erased counts but stores no text.

Lock order, as every counter write (``message_states``): the message's row first (the
UPDATE), then the transaction's counter shard. The caller commits; the webhook applies
each answer in a transaction of its own, holding no shard before it.

``record_click`` takes only a message id, so a click tracker (a redirecting link) can
call it from a view as well.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from app import AnySession
from campaigns import counters
from campaigns.models import Campaign, Message

MAX_REPLY_CHARS = 1024  # a reply is kept to show and export, not as a transcript
MAX_BUTTON_CHARS = 64  # messages.clicked_button's width; Meta's buttons have up to 25

# The text kept for an answer that is no text (a photo, a location): its kind in brackets,
# the same in every language (it is stored, and shown to readers of any language).
MEDIA_KINDS = frozenset({"image", "video", "document", "audio", "sticker", "location", "contacts"})


def placeholder(kind: str) -> str:
    """The reply text kept for an answer of ``kind`` that carries no words: ``[image]``."""
    return f"[{kind}]"


# Each answer: its time column, its text column and width, and its counter.
_REPLY = ("replied_at", "reply_text", MAX_REPLY_CHARS, "replied")
_CLICK = ("clicked_at", "clicked_button", MAX_BUTTON_CHARS, "clicked")


def _erased() -> sa.ColumnElement[bool]:
    """The message's personal data is erased (the person's request, or its campaign's
    retention): an answer still counts, its words are not kept."""
    campaign_erased = (
        sa.select(Campaign.data_erased_at)
        .where(Campaign.id == Message.campaign_id)
        .scalar_subquery()
        .is_not(None)
    )
    return sa.or_(Message.phone.is_(None), campaign_erased)


def _record(
    session: AnySession,
    message_id: int,
    text: str | None,
    at: datetime | None,
    columns: tuple[str, str, int, str],
) -> bool:
    time_column, text_column, width, counter = columns
    stamp = getattr(Message, time_column)
    words = None if text is None else text[:width]
    # Never ahead of the database's clock (a sender's clock, a forged time).
    when = sa.func.now() if at is None else sa.func.least(sa.cast(at, stamp.type), sa.func.now())
    kept = sa.case((_erased(), None), else_=sa.cast(words, getattr(Message, text_column).type))
    first = session.execute(
        sa.update(Message)
        .where(Message.id == message_id, stamp.is_(None))
        .values({time_column: when, text_column: kept})
        .returning(Message.campaign_id)
    ).scalar_one_or_none()
    if first is not None:
        counters.apply(session, first, {counter: 1})
        return True
    # Answered before: the words of this answer replace the last one's, unless it is
    # older than the first (a late delivery; the first time is then its time) or has
    # none (a click tracker's click without its button's text).
    values: dict[str, object] = {time_column: sa.func.least(stamp, when)}
    # Nothing written when nothing changes: a tracked link tapped again, a redelivery.
    changes = stamp > when
    if words is not None:
        said = getattr(Message, text_column)
        values[text_column] = sa.case((when < stamp, said), else_=kept)
        changes = sa.or_(changes, said.is_distinct_from(kept))
    session.execute(sa.update(Message).where(Message.id == message_id, changes).values(values))
    return False


def record_reply(session: AnySession, message_id: int, text: str, at: datetime | None) -> bool:
    """The recipient of message ``message_id`` replied ``text`` at ``at`` (None: now).

    True when it is their first reply, counted in the campaign's ``replied``; a later
    one (or the same one delivered again) only keeps its text. The caller commits.
    """
    return _record(session, message_id, text, at, _REPLY)


def record_click(
    session: AnySession, message_id: int, button_text: str | None, at: datetime | None = None
) -> bool:
    """The recipient of message ``message_id`` clicked its button ``button_text`` at ``at``
    (None: now, as a click tracker's view records it).

    True when it is their first click, counted in the campaign's ``clicked``; a later one
    only keeps its button's text. The caller commits.
    """
    return _record(session, message_id, button_text, at, _CLICK)


def find_answered(session: AnySession, wamid: str) -> sa.Row[int, int] | None:
    """The message WhatsApp knows as ``wamid`` and its campaign's sender: (id, sender_id)."""
    return session.execute(
        sa.select(Message.id, Campaign.sender_id)
        .join(Campaign, Campaign.id == Message.campaign_id)
        .where(Message.provider_message_id == wamid)
        .limit(1)
    ).first()
