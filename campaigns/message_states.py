"""The message state machine: every change of a message's status is made here, and only here.

::

    new ──> pending ──> queued ──> sending ──> sent ──> delivered ──> read
              │  ▲         │   ▲      │  ▲                 (and failed from any sent stage)
              │  └─────────┘   │      │  └── retrying <── (a transient error, a dead worker)
              ▼                ▼      ▼
           skipped         cancelled  failed ──> pending (retry failed)

:data:`NEXT` is the whole table of which states may follow which; a change the
table does not allow is a bug and raises. Every change moves the campaign's
counters in the same transaction (``counters`` stores them, the deltas are
:func:`counter_deltas`) and writes one log line (``statelog``). The engine
(fan-out, pump, send, maintenance), the webhooks and the services call these
functions; none of them writes a message's status itself.

Changes are guarded by the state a message is in (``WHERE status = …``), so two
writers racing for one message (a job and a status webhook, two jobs) cannot both
move it: the loser finds it moved and does nothing.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from app import AnySession, rows_changed
from campaigns import counters, statelog
from campaigns.models import IN_FLIGHT_MESSAGE_STATUSES, Message, MessageStatus, Suppression

S = MessageStatus
# Which states may follow each state (None: a row being created).
NEXT: dict[MessageStatus | None, frozenset[MessageStatus]] = {
    None: frozenset({S.PENDING, S.SKIPPED}),
    S.PENDING: frozenset({S.QUEUED, S.CANCELLED}),
    # Back to pending when the campaign pauses or a worker's shutdown aborted the job;
    # failed when the job failed on an unexpected error (maintenance settles it).
    S.QUEUED: frozenset({S.SENDING, S.PENDING, S.CANCELLED, S.FAILED}),
    S.RETRYING: frozenset({S.SENDING, S.PENDING, S.CANCELLED, S.FAILED}),
    S.SENDING: frozenset(
        # sent, or further along when a status webhook beats the send's own record;
        # back to waiting on a transient error or a lease run out; pending on a pause code
        {S.SENT, S.DELIVERED, S.READ, S.FAILED, S.QUEUED, S.RETRYING, S.PENDING}
    ),
    S.SENT: frozenset({S.DELIVERED, S.READ, S.FAILED}),
    S.DELIVERED: frozenset({S.READ, S.FAILED}),
    S.READ: frozenset(),
    S.FAILED: frozenset({S.PENDING}),  # "retry failed"
    S.SKIPPED: frozenset(),
    S.CANCELLED: frozenset(),
}
# What WhatsApp's status webhooks may move a message from: later stages only, never back.
WEBHOOK_SOURCES: dict[MessageStatus, tuple[MessageStatus, ...]] = {
    S.SENT: (S.SENDING,),
    S.DELIVERED: (S.SENDING, S.SENT),
    S.READ: (S.SENDING, S.SENT, S.DELIVERED),
    S.FAILED: (S.SENDING, S.SENT, S.DELIVERED),
}
WEBHOOK_STAMP = {S.SENT: "sent_at", S.DELIVERED: "delivered_at", S.READ: "read_at"}
# Counted cumulatively: a read message counts as delivered and sent too.
LEVELS = {"sent": 1, "delivered": 2, "read": 3}
MAX_ERROR_TEXT = 2000


def _check(sources: Iterable[MessageStatus | None], to: MessageStatus) -> None:
    wrong = [source for source in sources if to not in NEXT[source]]
    if wrong:
        raise ValueError(f"a message cannot go from {wrong} to {to}")


def counter_deltas(old: MessageStatus | None, new: MessageStatus) -> Counter[str]:
    """How the counters change when one message moves from ``old`` to ``new``."""
    deltas: Counter[str] = Counter()
    if old is None:
        deltas["total"] += 1
    elif old in IN_FLIGHT_MESSAGE_STATUSES or old in (S.FAILED, S.SKIPPED, S.CANCELLED):
        deltas[old.value] -= 1
    old_level = LEVELS.get(old.value, 0) if old else 0
    new_level = LEVELS.get(new.value, 0)
    if new.value in LEVELS:
        for name, level in LEVELS.items():
            if old_level < level <= new_level:
                deltas[name] += 1
    else:
        # Leaving the sent stages (a late "failed" webhook) takes the message out of them.
        for name, level in LEVELS.items():
            if level <= old_level:
                deltas[name] -= 1
        deltas[new.value] += 1
    return deltas


TRANSITION = sa.text(
    # -- move one message between states, returning where it was (None: not in `from`)
    "WITH old AS (SELECT id, status FROM messages WHERE id = :id"
    " AND status = ANY(CAST(:from_ AS message_status[])) FOR UPDATE)"
    " UPDATE messages m SET status = :to, updated_at = now() FROM old WHERE m.id = old.id"
    " RETURNING old.status::text AS old_status, m.campaign_id"
)


def transition(
    session: AnySession,
    message_id: int,
    sources: Sequence[MessageStatus],
    to: MessageStatus,
    **detail: object,
) -> MessageStatus | None:
    """Move a message if it is in one of ``sources``; counters follow. Returns the old status.

    ``detail`` goes on the state change's log line (``code=131026``, say).
    """
    _check(sources, to)
    row = session.execute(
        TRANSITION, {"id": message_id, "from_": [s.value for s in sources], "to": to.value}
    ).first()
    if row is None:
        return None
    old = MessageStatus(row.old_status)
    counters.apply(session, row.campaign_id, counter_deltas(old, to))
    statelog.moved(message_id, row.campaign_id, old, to, **detail)
    return old


def transition_campaign(
    session: AnySession, campaign_id: int, sources: Sequence[MessageStatus], to: MessageStatus
) -> int:
    """Move every message of a campaign in ``sources`` to ``to`` at once; counters follow.

    Jobs already scheduled for those messages find them moved and do nothing.
    """
    _check(sources, to)
    moved = 0
    for source in sources:
        count = rows_changed(
            session,
            sa.update(Message)
            .where(Message.campaign_id == campaign_id, Message.status == source)
            .values(status=to),
        )
        counters.apply(session, campaign_id, {source.value: -count, to.value: count})
        statelog.moved_many(campaign_id, source, to, count)
        moved += count
    return moved


def cancel_unsent(session: AnySession, campaign_id: int) -> int:
    """Cancel what has not started sending (a message mid-call finishes its call)."""
    return transition_campaign(session, campaign_id, [S.PENDING, S.QUEUED], S.CANCELLED)


def unqueue(session: AnySession, campaign_id: int) -> int:
    """Paused: queued messages go back to pending, so nothing is sent until resume."""
    return transition_campaign(session, campaign_id, [S.QUEUED], S.PENDING)


# -- a page of new recipients in one statement with one parameter: a multi-row VALUES
# would bind (and SQLAlchemy compile) nine parameters per row, which costs more CPU
# than the insert itself; rows already there (a re-run) are left alone
INSERT_NEW = sa.text(
    "INSERT INTO messages (campaign_id, phone, customer_ref, customer_data, params, status,"
    " error_code, error_text)"
    " SELECT r.campaign_id, r.phone, r.customer_ref, r.customer_data, r.params,"
    " CAST(r.status AS message_status), r.error_code, r.error_text"
    " FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(campaign_id int, phone text,"
    " customer_ref text, customer_data jsonb, params jsonb, status text, error_code text,"
    " error_text text)"
    " ON CONFLICT (campaign_id, customer_ref) DO NOTHING RETURNING status::text"
)


def add_new(
    session: AnySession, campaign_id: int, rows: Sequence[Mapping[str, Any]]
) -> list[MessageStatus]:
    """Insert a campaign's new messages (pending or skipped); the statuses of those inserted.

    A row whose customer the campaign already has is left alone, so a re-run adds nothing.
    """
    if not rows:
        return []
    _check([None], S.PENDING)
    _check([None], S.SKIPPED)
    inserted = [
        MessageStatus(status)
        for status in session.execute(INSERT_NEW, {"rows": json.dumps(rows, default=str)}).scalars()
    ]
    deltas: Counter[str] = Counter()  # one counter update for the page, not one per row
    for status in inserted:
        deltas.update(counter_deltas(None, status))
    counters.apply(session, campaign_id, deltas)
    for status in (S.PENDING, S.SKIPPED):
        statelog.moved_many(campaign_id, "new", status, inserted.count(status))
    return inserted


def queue_next(session: AnySession, campaign_id: int, limit: int) -> list[int]:
    """Move the campaign's next ``limit`` pending messages (in id order) to queued; their ids."""
    ids = sorted(
        session.scalars(
            sa.update(Message)
            .where(
                Message.id.in_(
                    sa.select(Message.id)
                    .where(Message.campaign_id == campaign_id, Message.status == S.PENDING)
                    .order_by(Message.id)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                    .scalar_subquery()
                )
            )
            .values(status=S.QUEUED, queued_at=sa.func.now())
            .returning(Message.id)
        )
    )
    counters.apply(session, campaign_id, {"pending": -len(ids), "queued": len(ids)})
    statelog.moved_many(campaign_id, S.PENDING, S.QUEUED, len(ids))
    return ids


def _claim_statement(source: MessageStatus) -> sa.TextClause:
    shard = counters.shard_update(counter_deltas(source, S.SENDING), "(SELECT campaign_id FROM m)")
    return sa.text(
        # -- claim a message for its call: `sending` with the attempt's time; counters follow
        "WITH m AS (UPDATE messages SET status = 'sending', sending_at = now(),"
        " attempts = attempts + 1, updated_at = now()"
        f" WHERE id = :id AND status = '{source.value}' RETURNING campaign_id),"
        f" c AS ({shard})"
        " SELECT campaign_id FROM m"
    )


# One round trip and one new row version each, where moving, stamping and counting
# separately cost four statements and two row versions (bench/README.md).
CLAIM = {source: _claim_statement(source) for source in (S.QUEUED, S.RETRYING)}
_SENT_COUNTERS = counters.shard_update(
    counter_deltas(S.SENDING, S.SENT), "(SELECT campaign_id FROM m WHERE moved)"
)
RECORD_SENT = sa.text(
    # -- the provider accepted it: `sent` unless a status webhook moved it on already
    # (never backwards); counters and this minute's stats follow only if it moved
    "WITH old AS (SELECT id, status FROM messages WHERE id = :id FOR UPDATE),"
    " m AS (UPDATE messages m SET provider_message_id = :wamid, sent_at = now(),"
    " error_code = NULL, error_text = NULL, updated_at = now(),"
    " status = CASE WHEN old.status = 'sending' THEN 'sent' ELSE m.status END"
    " FROM old WHERE m.id = old.id RETURNING m.campaign_id, old.status = 'sending' AS moved),"
    f" c AS ({_SENT_COUNTERS}),"
    " s AS ("
    + counters.minute_upsert(
        "SELECT campaign_id, date_trunc('minute', now()), :shard, 1, 0 FROM m WHERE moved"
    )
    + ") SELECT moved FROM m"
)


def claim(session: AnySession, message_id: int, campaign_id: int, source: MessageStatus) -> bool:
    """Claim a waiting (queued or retrying) message for its call: `sending`, one more attempt.

    False when it is no longer waiting (another job claimed it, the campaign moved it).
    """
    claimed = session.execute(
        CLAIM[source], {"id": message_id, "shard": counters.random_shard()}
    ).first()
    if claimed is not None:
        statelog.moved(message_id, campaign_id, source, S.SENDING)
    return claimed is not None


def record_sent(session: AnySession, message_id: int, campaign_id: int, wamid: str) -> None:
    """The provider accepted the message: its wamid, and `sent` unless a webhook got there first."""
    moved = session.execute(
        RECORD_SENT, {"id": message_id, "wamid": wamid, "shard": counters.random_shard()}
    ).scalar()
    if moved:  # else a status webhook got there first, and logged its own move
        statelog.moved(message_id, campaign_id, S.SENDING, S.SENT)


def note_error(session: AnySession, message_id: int, code: str | None, text: str) -> None:
    """Keep the last error on the message, whatever happens to it next (shown to operators)."""
    session.execute(
        sa.update(Message)
        .where(Message.id == message_id)
        .values(error_code=code, error_text=text[:MAX_ERROR_TEXT])
    )


def fail(
    session: AnySession,
    message_id: int,
    sources: Sequence[MessageStatus],
    code: str | None,
    text: str,
    **detail: object,
) -> int | None:
    """Fail a message in one of ``sources`` with its error; its campaign's id, or None if not.

    The failure counts in this minute's stats (the campaign page's chart, auto-pause).
    """
    if transition(session, message_id, sources, S.FAILED, code=code, **detail) is None:
        return None
    campaign_id = session.execute(
        sa.update(Message)
        .where(Message.id == message_id)
        .values(error_code=code, error_text=text[:MAX_ERROR_TEXT], failed_at=sa.func.now())
        .returning(Message.campaign_id)
    ).scalar_one()
    counters.bump_minute(session, campaign_id, failed=1)
    return campaign_id


def record_status(
    session: AnySession,
    message: Message,
    to: MessageStatus,
    at: datetime,
    *,
    wamid: str | None = None,
    error_code: str | None = None,
    error_text: str | None = None,
) -> bool:
    """Apply a status WhatsApp reported (sent, delivered, read, failed) at time ``at``.

    Never backwards, and the same status twice changes nothing: False then.
    """
    old = transition(session, message.id, WEBHOOK_SOURCES[to], to)
    if old is None:
        return False
    values: dict[str, Any] = {}
    if to is S.FAILED:
        values |= {"failed_at": at, "error_code": error_code, "error_text": error_text}
        counters.bump_minute(session, message.campaign_id, failed=1)
    else:
        values[WEBHOOK_STAMP[to]] = at
        if old is S.SENDING:
            counters.bump_minute(session, message.campaign_id, sent=1)
    if message.provider_message_id is None and wamid:
        values["provider_message_id"] = wamid
    session.execute(sa.update(Message).where(Message.id == message.id).values(**values))
    return True


def reopen_failed(session: AnySession, campaign_id: int, codes: Sequence[str | None]) -> int:
    """Failed messages of the campaign with one of these error codes back to pending.

    A number suppressed since stays failed. Returns how many moved.
    """
    _check([S.FAILED], S.PENDING)
    which: sa.ColumnElement[bool] = Message.error_code.in_(
        [code for code in codes if code is not None]
    )
    if None in codes:
        which = sa.or_(which, Message.error_code.is_(None))
    count = rows_changed(
        session,
        sa.update(Message)
        .where(
            Message.campaign_id == campaign_id,
            Message.status == S.FAILED,
            which,
            ~sa.exists().where(Suppression.phone == Message.phone),
        )
        .values(status=S.PENDING, error_code=None, error_text=None, failed_at=None),
    )
    counters.apply(session, campaign_id, {"failed": -count, "pending": count})
    statelog.moved_many(campaign_id, S.FAILED, S.PENDING, count)
    return count
