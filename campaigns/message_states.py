"""The message state machine: every change of a message's status is made here, and only here.

::

    new ──> pending ──> queued ──> sending ──> sent ──> delivered ──> read
              │  ▲         │   ▲      │  ▲                 (and failed from any sent stage)
              │  └─────────┘   │      │  └── retrying <── (a transient error, a dead worker)
              ▼                ▼      ▼
           skipped         cancelled  failed ──> pending (retry failed)

(and pending -> skipped: the frequency cap's refusal at the pump's admission)

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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from app import AnySession, rows_changed
from campaigns import contact_history, counters, statelog
from campaigns.models import (
    IN_FLIGHT_MESSAGE_STATUSES,
    Campaign,
    Message,
    MessageStatus,
    Suppression,
)

S = MessageStatus
# Which states may follow each state (None: a row being created).
NEXT: dict[MessageStatus | None, frozenset[MessageStatus]] = {
    None: frozenset({S.PENDING, S.SKIPPED}),
    # skipped: refused at the pump's admission by the frequency cap (contact_history.py)
    S.PENDING: frozenset({S.QUEUED, S.CANCELLED, S.SKIPPED}),
    # Back to pending when the campaign pauses or a worker's shutdown aborted the job;
    # failed when the job failed on an unexpected error (maintenance settles it).
    S.QUEUED: frozenset({S.SENDING, S.PENDING, S.CANCELLED, S.FAILED}),
    S.RETRYING: frozenset({S.SENDING, S.PENDING, S.CANCELLED, S.FAILED}),
    S.SENDING: frozenset(
        # sent, or further along when a status webhook beats the send's own record;
        # back to waiting on a transient error or a lease run out; pending on a pause code;
        # cancelled when claimed again after its recipient's data was erased mid-call
        {S.SENT, S.DELIVERED, S.READ, S.FAILED, S.QUEUED, S.RETRYING, S.PENDING, S.CANCELLED}
    ),
    # retrying: a failed status webhook's 131049 holds it (hold_from_webhook)
    S.SENT: frozenset({S.DELIVERED, S.READ, S.FAILED, S.RETRYING}),
    S.DELIVERED: frozenset({S.READ, S.FAILED, S.RETRYING}),
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
# The code of a message cancelled because its recipient's personal data was erased.
ERASED_CODE = "erased"


def _check(sources: Iterable[MessageStatus | None], to: MessageStatus) -> None:
    wrong = [source for source in sources if to not in NEXT[source]]
    if wrong:
        raise ValueError(f"a message cannot go from {wrong} to {to}")


def counter_deltas(old: MessageStatus | None, new: MessageStatus, count: int = 1) -> Counter[str]:
    """How the counters change when ``count`` messages move from ``old`` to ``new``."""
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
    if count != 1:
        deltas = Counter({name: n * count for name, n in deltas.items()})
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
    """Cancel what has not started sending (a message mid-call finishes its call).

    Retrying messages too, held ones (131049) among them: their jobs, due later, find
    them no longer waiting and do nothing. The contacts of those never called are given
    back (``contact_history.release``): the queued ones (the pump's window; a pending
    message has none, a pause gave it back, and a retrying one was called).
    """
    queued = session.execute(
        sa.select(Message.id, Message.phone).where(
            Message.campaign_id == campaign_id,
            Message.status == S.QUEUED,
            Message.attempts == 0,
        )
    )
    never_called = {row.id: row.phone for row in queued}
    moved = transition_campaign(
        session, campaign_id, [S.PENDING, S.QUEUED, S.RETRYING], S.CANCELLED
    )
    contact_history.release(session, campaign_id, never_called)
    return moved


def unqueue(session: AnySession, campaign_id: int) -> int:
    """Paused: queued messages go back to pending, so nothing is sent until resume.

    With a window, their zones are added back to the campaign's zone counts (exact: the
    caller holds the campaign's lock, which the pump takes too), so the paused campaign's
    page still says who waits for their window; see :func:`forget_zone_counts`. The
    contacts of those never called are given back (``contact_history.release``): the pump
    admits them again on resume, under the cap as it stands then.
    """
    _check([S.QUEUED], S.PENDING)
    rows = session.execute(
        sa.update(Message)
        .where(Message.campaign_id == campaign_id, Message.status == S.QUEUED)
        .values(status=S.PENDING)
        .returning(Message.id, Message.phone, Message.attempts, Message.time_zone),
        execution_options={"synchronize_session": False},
    ).all()
    zones = Counter(row.time_zone or NO_ZONE for row in rows)
    moved = zones.total()
    counters.apply(session, campaign_id, {S.QUEUED.value: -moved, S.PENDING.value: moved})
    statelog.moved_many(campaign_id, S.QUEUED, S.PENDING, moved)
    campaign = session.get(Campaign, campaign_id)
    if moved and campaign is not None and campaign.window_zones is not None:
        campaign.window_zones = dict(Counter(campaign.window_zones) + zones)
    never_called = {row.id: row.phone for row in rows if row.attempts == 0}
    contact_history.release(session, campaign_id, never_called)
    return moved


def forget_zone_counts(session: AnySession, campaign_ids: Sequence[int]) -> None:
    """Messages go back to pending outside the pump: the campaigns' zone counts
    (``window_zones``) are dropped, and their pump counts again at its next run.

    Every move *to* pending does this, or counts what it moves exactly (the fan-out's
    inserts, a pause's :func:`unqueue`), or happens around a pause whose resume drops
    the counts (a batch's messages back to pending: ``services.campaigns.
    resume_campaign``), so the kept counts are never below a zone's real ones; the
    moves *out of* pending outside the pump (an erasure, a cancel) then leave their sum
    above the pending counter, which the pump notices. Were both allowed to go
    uncounted, one adding k in a zone and one removing k in another would keep the sum
    right and the split wrong: the pump would wait on a zone that has nothing and never
    queue the other's. Take the campaigns' locks before their messages' (the pump's
    order).
    """
    if campaign_ids:
        session.execute(
            sa.update(Campaign)
            .where(Campaign.id.in_(sorted(set(campaign_ids))), Campaign.window_zones.is_not(None))
            .values(window_zones=sa.null())
        )


# -- a page of new recipients in one statement with one parameter: a multi-row VALUES
# would bind (and SQLAlchemy compile) nine parameters per row, which costs more CPU
# than the insert itself; rows already there (a re-run) are left alone
INSERT_NEW = sa.text(
    "INSERT INTO messages (campaign_id, phone, customer_ref, customer_data, params, status,"
    " error_code, error_text, template_id, time_zone)"
    " SELECT r.campaign_id, r.phone, r.customer_ref, r.customer_data, r.params,"
    " CAST(r.status AS message_status), r.error_code, r.error_text, r.template_id, r.time_zone"
    " FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(campaign_id int, phone text,"
    " customer_ref text, customer_data jsonb, params jsonb, status text, error_code text,"
    " error_text text, template_id int, time_zone text)"
    " ON CONFLICT (campaign_id, customer_ref) DO NOTHING RETURNING status::text, time_zone"
)


def add_new(
    session: AnySession,
    campaign_id: int,
    rows: Sequence[Mapping[str, Any]],
    pending_zones: Counter[str] | None = None,
) -> list[MessageStatus]:
    """Insert a campaign's new messages (pending or skipped); the statuses of those inserted.

    A row whose customer the campaign already has is left alone, so a re-run adds nothing.
    ``pending_zones``, if given, counts the pending ones inserted by zone (:data:`NO_ZONE`:
    without one): the campaign's zone counts, exact even when a page is stored twice.
    """
    if not rows:
        return []
    _check([None], S.PENDING)
    _check([None], S.SKIPPED)
    result = session.execute(INSERT_NEW, {"rows": json.dumps(rows, default=str)}).all()
    inserted = [MessageStatus(row.status) for row in result]
    if pending_zones is not None:
        pending_zones.update(
            row.time_zone or NO_ZONE for row in result if row.status == S.PENDING.value
        )
    deltas: Counter[str] = Counter()  # one counter update for the page, not one per row
    for status in inserted:
        deltas.update(counter_deltas(None, status))
    counters.apply(session, campaign_id, deltas)
    for status in (S.PENDING, S.SKIPPED):
        statelog.moved_many(campaign_id, "new", status, inserted.count(status))
    return inserted


def queue_next(
    session: AnySession,
    campaign_id: int,
    limit: int,
    admit: Callable[[list[sa.Row]], set[int]] | None = None,
) -> list[int]:
    """Move the campaign's next ``limit`` pending messages (in id order) to queued; their ids.

    ``admit``, given those messages (``id``, ``phone``; locked), says which of them may go
    now (pump.py: the frequency cap, which skips those it refuses, and the 24-hour
    budget); the others stay pending, first in line next time.
    """
    next_pending = (
        sa.select(Message.id, Message.phone)
        .where(Message.campaign_id == campaign_id, Message.status == S.PENDING)
        .order_by(Message.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    if admit is None:
        # One statement. No condition of its own beside the sub-select's: with one (the
        # status again), Postgres planned the sub-select to run again as rows changed,
        # and SKIP LOCKED then gave it the next rows, past the limit (the whole audience).
        chosen: sa.ColumnElement[bool] = Message.id.in_(
            next_pending.with_only_columns(Message.id).scalar_subquery()
        )
    else:
        # Ids locked by the select above (this transaction's): still pending.
        admitted = admit(list(session.execute(next_pending)))
        chosen = sa.and_(Message.id.in_(sorted(admitted)), Message.status == S.PENDING)
    return _to_queued(session, campaign_id, chosen)


def _to_queued(session: AnySession, campaign_id: int, chosen: sa.ColumnElement[bool]) -> list[int]:
    """The chosen pending messages moved to queued, counters following; their ids."""
    ids = sorted(
        session.scalars(
            sa.update(Message)
            .where(chosen)
            .values(status=S.QUEUED, queued_at=sa.func.now())
            .returning(Message.id)
        )
    )
    counters.apply(session, campaign_id, {"pending": -len(ids), "queued": len(ids)})
    statelog.moved_many(campaign_id, S.PENDING, S.QUEUED, len(ids))
    return ids


# The key of messages without a zone in a campaign's zone counts (window_zones).
NO_ZONE = ""

# -- the next :limit pending messages of these zones (and, with :no_zone, of those without
# one), in id order, locked: each zone's first :limit rows from messages_pending_zone_idx,
# merged (never a zone's whole backlog, nor the closed zones' rows). ARRAY(...) is
# computed once, before the rows are locked.
NEXT_PENDING_IN_ZONES = sa.text(
    "SELECT id, phone, time_zone FROM messages WHERE id = ANY(ARRAY("
    " SELECT z.id FROM ("
    "  SELECT m.id FROM unnest(CAST(:zones AS text[])) AS z(zone) CROSS JOIN LATERAL"
    "   (SELECT id FROM messages WHERE campaign_id = :campaign_id AND status = 'pending'"
    "    AND time_zone = z.zone ORDER BY id LIMIT :limit) AS m"
    "  UNION ALL"
    "  (SELECT id FROM messages WHERE campaign_id = :campaign_id AND status = 'pending'"
    "   AND time_zone IS NULL AND :no_zone ORDER BY id LIMIT :limit)"
    " ) AS z ORDER BY z.id LIMIT :limit))"
    " AND status = 'pending' ORDER BY id FOR UPDATE SKIP LOCKED"
)


def queue_next_in_zones(
    session: AnySession,
    campaign_id: int,
    limit: int,
    zones: Sequence[str],
    admit: Callable[[list[sa.Row]], set[int]] | None = None,
) -> tuple[list[int], dict[int, str]]:
    """:func:`queue_next` for a campaign with a sending window: its next ``limit`` pending
    messages whose zone is one of ``zones`` (the open ones; :data:`NO_ZONE` for those
    without a zone), in id order across them; the ids queued, and the zone of each message
    taken (queued, or refused by ``admit``: still pending, or skipped by it)."""
    if not zones:
        return [], {}
    named = [zone for zone in zones if zone != NO_ZONE]
    params = {
        "campaign_id": campaign_id,
        "limit": limit,
        "zones": named,
        "no_zone": NO_ZONE in zones,
    }
    rows = list(session.execute(NEXT_PENDING_IN_ZONES, params))
    zone_of = {row.id: row.time_zone or NO_ZONE for row in rows}
    admitted = admit(rows) if admit is not None and rows else set(zone_of)
    if not admitted:
        return [], zone_of
    ids = _to_queued(
        session, campaign_id, sa.and_(Message.id.in_(sorted(admitted)), Message.status == S.PENDING)
    )
    return ids, zone_of


PENDING_BY_ZONE = sa.text(
    # -- a campaign's pending messages counted by zone, from messages_pending_zone_idx:
    # a scan of its pending rows, run only when the kept counts are found off
    "SELECT coalesce(time_zone, '') AS zone, count(*) AS n FROM messages"
    " WHERE campaign_id = :campaign_id AND status = 'pending' GROUP BY 1"
)


def pending_by_zone(session: AnySession, campaign_id: int) -> dict[str, int]:
    """The campaign's pending messages by zone (:data:`NO_ZONE`: without one), counted."""
    return {
        row.zone: int(row.n)
        for row in session.execute(PENDING_BY_ZONE, {"campaign_id": campaign_id})
    }


SKIP_PENDING = sa.text(
    # -- pending messages the pump's admission refused: skipped with the code
    "UPDATE messages SET status = 'skipped', error_code = :code, error_text = NULL,"
    " updated_at = now() WHERE id = ANY(CAST(:ids AS bigint[])) AND status = 'pending'"
    " RETURNING id"
)


def skip_pending(session: AnySession, campaign_id: int, ids: Sequence[int], code: str) -> list[int]:
    """Pending messages skipped with ``code`` (the frequency cap's, refused at the pump's
    admission); counters follow. The ids moved."""
    _check([S.PENDING], S.SKIPPED)
    if not ids:
        return []
    moved = list(session.execute(SKIP_PENDING, {"ids": list(ids), "code": code}).scalars())
    counters.apply(session, campaign_id, counter_deltas(S.PENDING, S.SKIPPED, len(moved)))
    statelog.moved_each(moved, campaign_id, S.PENDING, S.SKIPPED)
    return moved


# -- the waiting messages of a batch, and whether each was ever called (a retry)
WAITING = sa.text(
    "SELECT id, attempts FROM messages WHERE id = ANY(CAST(:ids AS bigint[]))"
    " AND campaign_id = :campaign_id AND status = CAST(:source AS message_status) ORDER BY id"
)
# -- claim a batch for its calls: `sending`, one more attempt and try, only while the
# campaign is sending. FOR SHARE on the campaign row waits for a pause or cancel that
# holds its lock and then sees its outcome, and holds either off until this commits:
# a batch never claims a message whose campaign stopped before the claim.
CLAIM = sa.text(
    "WITH c AS (SELECT id FROM campaigns WHERE id = :campaign_id AND status = 'sending'"
    " FOR SHARE)"
    " UPDATE messages SET status = 'sending', sending_at = now(), attempts = attempts + 1,"
    " tries = tries + 1, updated_at = now()"
    " WHERE id = ANY(CAST(:ids AS bigint[])) AND campaign_id = (SELECT id FROM c)"
    " AND status = CAST(:source AS message_status)"
    " RETURNING id, phone, params, tries, attempts, held_until IS NOT NULL AS held,"
    " extract(epoch FROM now() - throttled_at)::float8 AS throttled_for, template_id"
)
# -- the provider accepted these: `sent` unless a status webhook moved one on already
# (never backwards); the ids that moved
RECORD_SENT = sa.text(
    "WITH v AS (SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:wamids AS text[]))"
    "   AS v(id, wamid)),"
    " old AS (SELECT m.id, m.status FROM messages AS m JOIN v ON v.id = m.id"
    "   ORDER BY m.id FOR UPDATE OF m),"
    # a 131049 hold a webhook made first keeps no wamid or time of the refused call (its
    # retry's statuses must find it by callback data: HOLD_FROM_WEBHOOK)
    " moved AS (UPDATE messages AS m SET provider_message_id = CASE"
    "   WHEN old.status = 'retrying' THEN m.provider_message_id ELSE v.wamid END,"
    "   sent_at = CASE WHEN old.status = 'retrying' THEN m.sent_at ELSE now() END,"
    # a webhook that got there first with a failure or a 131049 hold keeps its error; a
    # message that went out (sending, or moved on by an early sent, delivered or read
    # webhook) loses an earlier try's error (a 130429, a transient error): it was sent
    # (and a message cancelled meanwhile, erased or not, keeps its code)
    "   error_code = CASE WHEN old.status IN ('sending', 'sent', 'delivered', 'read')"
    "     THEN NULL ELSE m.error_code END,"
    "   error_text = CASE WHEN old.status IN ('sending', 'sent', 'delivered', 'read')"
    "     THEN NULL ELSE m.error_text END,"
    "   throttled_at = NULL, updated_at = now(),"
    "   status = CASE WHEN old.status = 'sending' THEN 'sent' ELSE m.status END"
    "   FROM old JOIN v ON v.id = old.id WHERE m.id = old.id"
    "   RETURNING m.id, old.status = 'sending' AS moved)"
    " SELECT id FROM moved WHERE moved"
)
# How a message's try budget changes when a call's outcome sends it back to wait.
TRIES_AFTER = {
    "keep": "tries",  # a transient error: the try is spent
    "refund": "greatest(tries - 1, 0)",  # throttled, or stopped by a pausing code: not its fault
    "reset": "0",  # handed over to message-retry, which has tries of its own
}


@dataclass(frozen=True)
class Claimed:
    """A message claimed for its call: what the call needs, and its budget so far."""

    id: int
    phone: str
    params: dict[str, Any]
    tries: int  # calls on its current queue, this one included
    throttled_for: float | None  # seconds since WhatsApp first throttled it, if it did
    held: bool = False  # 131049 held it once already (held_until set): held again, it fails
    attempts: int = 1  # its calls ever, this one included: the call's callback data names it
    # Its language version of the campaign's template (languages.py); None: the campaign's.
    template_id: int | None = None


def waiting(
    session: AnySession, campaign_id: int, ids: Sequence[int], source: MessageStatus
) -> list[tuple[int, int]]:
    """(id, attempts) of the batch's messages still waiting in ``source``, in id order."""
    params = {"ids": list(ids), "campaign_id": campaign_id, "source": source.value}
    return [(row.id, row.attempts) for row in session.execute(WAITING, params)]


def claim(
    session: AnySession, campaign_id: int, ids: Sequence[int], source: MessageStatus
) -> list[Claimed]:
    """Claim waiting (queued or retrying) messages for their calls, while the campaign sends.

    The ones no longer waiting (another job claimed them, the campaign moved them)
    are left out; none at all if the campaign is not sending.
    """
    if not ids:
        return []
    rows = sorted(
        session.execute(
            CLAIM, {"ids": list(ids), "campaign_id": campaign_id, "source": source.value}
        ),
        key=lambda row: row.id,
    )
    counters.apply(session, campaign_id, counter_deltas(source, S.SENDING, len(rows)))
    statelog.moved_each([row.id for row in rows], campaign_id, source, S.SENDING)
    # A number erased while its call was in flight (services/personal_data.py) came
    # back to wait: it is never called again.
    cancel_erased(session, [row.id for row in rows if row.phone is None], [S.SENDING])
    return [
        Claimed(
            row.id,
            row.phone,
            dict(row.params or {}),
            row.tries,
            row.throttled_for,
            row.held,
            row.attempts,
            row.template_id,
        )
        for row in rows
        if row.phone is not None
    ]


def record_sent(session: AnySession, campaign_id: int, sent: Sequence[tuple[int, str]]) -> None:
    """The provider accepted these (id, wamid): `sent` unless a webhook got there first."""
    if not sent:
        return
    moved = list(
        session.execute(
            RECORD_SENT, {"ids": [i for i, _ in sent], "wamids": [w for _, w in sent]}
        ).scalars()
    )
    counters.apply(session, campaign_id, counter_deltas(S.SENDING, S.SENT, len(moved)))
    counters.bump_minute(session, campaign_id, sent=len(moved))
    # The others a status webhook moved on first, and logged its own move.
    statelog.moved_each(moved, campaign_id, S.SENDING, S.SENT)


UNCLAIM = sa.text(
    # -- claimed messages whose call never started (a limit held them back): waiting
    # again, the attempt and try given back
    "UPDATE messages SET status = CAST(:source AS message_status), attempts = attempts - 1,"
    " tries = greatest(tries - 1, 0), updated_at = now()"
    " WHERE id = ANY(CAST(:ids AS bigint[])) AND status = 'sending' RETURNING id"
)


def unclaim(
    session: AnySession, campaign_id: int, ids: Sequence[int], source: MessageStatus
) -> list[int]:
    """Claimed messages whose calls were never started back to waiting; the ids moved."""
    _check([S.SENDING], source)
    if not ids:
        return []
    moved = list(session.execute(UNCLAIM, {"ids": list(ids), "source": source.value}).scalars())
    counters.apply(session, campaign_id, counter_deltas(S.SENDING, source, len(moved)))
    statelog.moved_each(moved, campaign_id, S.SENDING, source)
    return moved


# WhatsApp's per-user marketing limit: a message failed with it is held for a day once.
MARKETING_LIMIT_CODE = "131049"


@dataclass(frozen=True)
class Held:
    """A campaign's messages 131049 holds now: retrying, their one retry still to come."""

    count: int = 0
    first_due: datetime | None = None  # when the earliest is tried again
    last_due: datetime | None = None  # when the last one is


HELD = sa.text(
    # -- messages held by WhatsApp's per-user marketing limit, their retry to come: read
    # from the partial index messages_held_idx (migration 0020), never the campaign
    "SELECT count(*) AS n, min(held_until) AS first_due, max(held_until) AS last_due"
    " FROM messages WHERE campaign_id = :campaign_id AND status = 'retrying'"
    " AND held_until IS NOT NULL AND held_until > now()"
)


def held(session: AnySession, campaign_id: int) -> Held:
    """The campaign's held messages (retrying, ``held_until`` to come) and their times.

    A held message whose time has come is no longer held: its job takes it (in flight).
    """
    row = session.execute(HELD, {"campaign_id": campaign_id}).one()
    return Held(int(row.n), row.first_due, row.last_due)


HELD_OF = sa.text(
    # -- HELD for several campaigns at once (the dashboard's list), from the same index
    "SELECT campaign_id, count(*) AS n, min(held_until) AS first_due,"
    " max(held_until) AS last_due FROM messages"
    " WHERE campaign_id = ANY(CAST(:campaign_ids AS bigint[])) AND status = 'retrying'"
    " AND held_until IS NOT NULL AND held_until > now() GROUP BY campaign_id"
)


def held_of(session: AnySession, campaign_ids: Sequence[int]) -> dict[int, Held]:
    """:func:`held` for each of these campaigns, in one statement (none held: absent)."""
    if not campaign_ids:
        return {}
    rows = session.execute(HELD_OF, {"campaign_ids": list(campaign_ids)})
    return {row.campaign_id: Held(int(row.n), row.first_due, row.last_due) for row in rows}


def held_count(session: AnySession, campaign_id: int) -> int:
    """How many of the campaign's messages 131049 holds now (:func:`held`)."""
    return held(session, campaign_id).count


# -- a failed status webhook's 131049: the message back to retrying, held until :until,
# unless 131049 held it once already (then it fails) or its campaign is over. FOR SHARE
# on the campaign, as the claim: a cancel or fail committed first is seen (no hold), and
# one that comes after waits for this hold and then cancels it. The refused call's wamid
# and times go: its retry is a new call, and until the send records the new wamid a
# status about it is found by its callback data only while provider_message_id is NULL
# (webhooks._find_message); the old wamid's late statuses are told apart by the attempt
# their callback data names (callback_data.py), or by their time in the plain old form.
HOLD_FROM_WEBHOOK = sa.text(
    "WITH c AS (SELECT id FROM campaigns WHERE id = :campaign_id"
    "   AND status IN ('sending', 'paused') FOR SHARE),"
    " old AS (SELECT id, status FROM messages WHERE id = :id"
    "   AND campaign_id = (SELECT id FROM c) AND held_until IS NULL"
    "   AND status = ANY(CAST(:from_ AS message_status[])) FOR UPDATE)"
    " UPDATE messages AS m SET status = 'retrying', held_until = :until, tries = 0,"
    " throttled_at = NULL, error_code = :code, error_text = :text, updated_at = now(),"
    " provider_message_id = NULL, sent_at = NULL, delivered_at = NULL, read_at = NULL"
    " FROM old WHERE m.id = old.id RETURNING old.status::text AS old_status"
)


def hold_from_webhook(
    session: AnySession, message: Message, until: datetime, code: str, text: str | None
) -> bool:
    """Hold a message a failed status webhook reports with 131049 (sent, then refused
    by the per-user marketing limit): back to retrying until ``until``, its tries fresh,
    as the send holds one. False when it was held once already, is no longer where a
    failure can come from (a replay: nothing held twice), or its campaign is over; the
    caller then records the failure. The caller defers its retry job."""
    sources = WEBHOOK_SOURCES[S.FAILED]
    _check(sources, S.RETRYING)
    row = session.execute(
        HOLD_FROM_WEBHOOK,
        {
            "campaign_id": message.campaign_id,
            "id": message.id,
            "from_": [s.value for s in sources],
            "until": until,
            "code": code,
            "text": text[:MAX_ERROR_TEXT] if text else None,
        },
    ).first()
    if row is None:
        return False
    old = MessageStatus(row.old_status)
    counters.apply(session, message.campaign_id, counter_deltas(old, S.RETRYING))
    statelog.moved(message.id, message.campaign_id, old, S.RETRYING, code=code)
    return True


def requeue(
    session: AnySession,
    campaign_id: int,
    errors: Sequence[tuple[int, str | None, str | None]],
    to: MessageStatus,
    *,
    tries: str = "keep",
    throttled: bool = False,
    held_until: datetime | None = None,
) -> list[int]:
    """Messages whose call failed, (id, code, text), from `sending` back to waiting in ``to``.

    The error stays on the message (operators see the last one); ``tries`` says what
    happens to its try budget (:data:`TRIES_AFTER`); ``throttled`` stamps the first
    throttle; ``held_until`` marks them held by 131049 until then. Returns the ids moved
    (a webhook may have moved one on meanwhile).
    """
    _check([S.SENDING], to)
    if not errors:
        return []
    throttle = "throttled_at = coalesce(throttled_at, now())," if throttled else ""
    if held_until is not None:
        # A new wait of its own (131049's hold): an earlier throttle's deadline no longer
        # runs, or the held message's one retry would fail at its first throttle.
        throttle = "throttled_at = NULL, held_until = :held_until,"
    statement = sa.text(
        # -- calls that failed: back to waiting, the error kept, the try budget adjusted
        "UPDATE messages AS m SET status = CAST(:to AS message_status), error_code = v.code,"
        f" error_text = v.text, tries = {TRIES_AFTER[tries]}, {throttle} updated_at = now()"
        " FROM unnest(CAST(:ids AS bigint[]), CAST(:codes AS text[]), CAST(:texts AS text[]))"
        "   AS v(id, code, text)"
        " WHERE m.id = v.id AND m.status = 'sending' RETURNING m.id"
    )
    moved = list(
        session.execute(
            statement,
            {
                "to": to.value,
                "held_until": held_until,
                "ids": [i for i, _, _ in errors],
                "codes": [code for _, code, _ in errors],
                "texts": [text[:MAX_ERROR_TEXT] if text else None for _, _, text in errors],
            },
        ).scalars()
    )
    counters.apply(session, campaign_id, counter_deltas(S.SENDING, to, len(moved)))
    codes = {i: code for i, code, _ in errors}
    for message_id in moved:
        statelog.moved(message_id, campaign_id, S.SENDING, to, code=codes[message_id])
    return moved


def cancel_erased(
    session: AnySession, message_ids: Sequence[int], sources: Sequence[MessageStatus]
) -> int:
    """Cancel these messages, if in one of ``sources``, because their recipient's personal
    data is erased: code ``erased``, never called again. How many moved.

    One statement each: an erasure concerns one person's few rows.
    """
    moved = 0
    for message_id in message_ids:
        if transition(session, message_id, sources, S.CANCELLED, code=ERASED_CODE) is None:
            continue
        session.execute(
            sa.update(Message)
            .where(Message.id == message_id)
            .values(error_code=ERASED_CODE, error_text=None)
        )
        moved += 1
    return moved


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
    text: str | None,
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
        .values(
            error_code=code,
            error_text=text[:MAX_ERROR_TEXT] if text else None,
            failed_at=sa.func.now(),
        )
        .returning(Message.campaign_id)
    ).scalar_one()
    counters.bump_minute(session, campaign_id, failed=1, error_code=code)
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
        counters.bump_minute(session, message.campaign_id, failed=1, error_code=error_code)
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
    forget_zone_counts(session, [campaign_id])
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
            Message.phone.is_not(None),  # its recipient's data was erased
            ~sa.exists().where(Suppression.phone == Message.phone),
        )
        .values(
            status=S.PENDING,
            error_code=None,
            error_text=None,
            failed_at=None,
            tries=0,
            throttled_at=None,
            held_until=None,  # a reopened 131049 is held once more
            # A new call, a new wamid: the old one's statuses must not find it, and the
            # new one's, arriving before the send records it, find it by callback data.
            provider_message_id=None,
            sent_at=None,
            delivered_at=None,
            read_at=None,
        ),
    )
    counters.apply(session, campaign_id, {"failed": -count, "pending": count})
    statelog.moved_many(campaign_id, S.FAILED, S.PENDING, count)
    return count
