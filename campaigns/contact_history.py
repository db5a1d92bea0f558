"""The contact history: when any campaign last contacted a number, for the frequency cap.

One row per number, as its keyed hash (``suppressions.phone_hash``, never the number),
in ``contact_history`` (migration 0031): when it was last contacted, by which campaign
and message, and the contact before that one.

**What counts as a contact**: a message the pump *admits* to go (pending -> queued),
not its send. Admission is the one moment a campaign commits to messaging someone, and
the one place two campaigns racing for a person can be told apart atomically: each pump
run asks, in one statement (:func:`admit`), for its messages' numbers, and a conditional
upsert (``INSERT … ON CONFLICT DO UPDATE … WHERE`` the last contact is older than the
campaign's cap, or was this campaign's own) takes those it may have. Postgres decides
the conflicts row by row under the row's lock: of two pumps racing for one number, the
second waits for the first's commit and then sees its contact, so only one message
goes. Admitted messages are called within the pump's window (a minute at most), so the
time is the send's to within that. Every campaign writes its contacts, capped or not, so
a capped one sees what the others sent. A campaign's own earlier contact never holds it
back: a message admitted, then held back by the 24-hour budget or a pause, is admitted
again by its own campaign (the time moving on).

**Contacts given back**: a campaign cancelled (or failed) before its admitted messages
were called (``attempts = 0``: never claimed for a call) gives their contacts back
(:func:`release`, in the cancel's transaction): the row returns to the contact before
it, or goes when there was none. A message that fails before its call (a job that
failed on an unexpected error) keeps its contact: "retry failed" may still send it, and
the error errs towards messaging less.

Personal data: maintenance deletes rows older than ``CONTACT_HISTORY_DAYS`` (the
longest cap allowed; :func:`delete_expired`), and a person's erasure deletes theirs
(:func:`forget`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import sqlalchemy as sa

from app import DELETE_BATCH, AnySession, rows_changed
from campaigns.models import ContactHistory
from campaigns.services.suppressions import phone_hash

# -- admit a pump run's messages by their numbers' last contact: the winners' hashes. In
# hash order, so two runs taking overlapping numbers lock them in the same order.
ADMIT = sa.text(
    "INSERT INTO contact_history AS c"
    " (phone_hash, contacted_at, campaign_id, message_id, previous_contacted_at)"
    " SELECT v.phone_hash, now(), :campaign_id, v.message_id, NULL"
    " FROM unnest(CAST(:hashes AS text[]), CAST(:message_ids AS bigint[]))"
    "   AS v(phone_hash, message_id) ORDER BY v.phone_hash"
    " ON CONFLICT (phone_hash) DO UPDATE SET contacted_at = now(),"
    "   campaign_id = excluded.campaign_id, message_id = excluded.message_id,"
    "   previous_contacted_at = CASE WHEN c.campaign_id = excluded.campaign_id"
    "     THEN c.previous_contacted_at ELSE c.contacted_at END"
    " WHERE c.campaign_id = excluded.campaign_id OR CAST(:cap_days AS integer) IS NULL"
    "   OR c.contacted_at <= now() - make_interval(days => CAST(:cap_days AS integer))"
    " RETURNING c.phone_hash"
)
# -- which of these hashes another campaign contacted within the days
WITHIN = sa.text(
    "SELECT phone_hash FROM contact_history"
    " WHERE phone_hash = ANY(CAST(:hashes AS text[]))"
    " AND contacted_at > now() - make_interval(days => CAST(:days AS integer))"
    " AND campaign_id IS DISTINCT FROM CAST(:campaign_id AS integer)"
)
# -- a cancelled campaign's contacts whose message was never called, given back: the
# contact before it restored, or the row gone when there was none
RELEASE = sa.text(
    "WITH gone AS (SELECT c.phone_hash FROM contact_history c"
    "   JOIN messages m ON m.id = c.message_id"
    "   WHERE c.campaign_id = :campaign_id AND m.campaign_id = :campaign_id"
    "   AND m.attempts = 0 AND m.status = 'cancelled'"
    "   ORDER BY c.phone_hash FOR UPDATE OF c),"
    " deleted AS (DELETE FROM contact_history c USING gone"
    "   WHERE c.phone_hash = gone.phone_hash AND c.previous_contacted_at IS NULL RETURNING 1),"
    " restored AS (UPDATE contact_history c SET contacted_at = c.previous_contacted_at,"
    "   previous_contacted_at = NULL, campaign_id = NULL, message_id = NULL FROM gone"
    "   WHERE c.phone_hash = gone.phone_hash AND c.previous_contacted_at IS NOT NULL"
    "   RETURNING 1)"
    " SELECT (SELECT count(*) FROM deleted) + (SELECT count(*) FROM restored)"
)


def admit(
    session: AnySession, campaign_id: int, cap_days: int | None, phones: Mapping[int, str]
) -> set[int]:
    """Record the contact of these messages (id -> E.164 number) now, those the cap allows;
    the ids it refused: another campaign contacted their number within ``cap_days`` days
    (None: no cap, none refused). One statement, in the caller's transaction (the pump's:
    a run that rolls back contacts no one)."""
    by_hash: dict[str, int] = {}
    for message_id, phone in phones.items():
        by_hash.setdefault(phone_hash(phone), message_id)  # a campaign's numbers are unique
    if not by_hash:
        return set()
    won = set(
        session.scalars(
            ADMIT,
            {
                "campaign_id": campaign_id,
                "cap_days": cap_days,
                "hashes": list(by_hash),
                "message_ids": list(by_hash.values()),
            },
        )
    )
    admitted = {message_id for digest, message_id in by_hash.items() if digest in won}
    return set(phones) - admitted


def contacted_within(
    session: AnySession, phones: Collection[str], days: int, campaign_id: int | None = None
) -> set[str]:
    """Which of these E.164 numbers a campaign other than ``campaign_id`` contacted in the
    last ``days`` days."""
    if not phones:
        return set()
    hashes = {phone_hash(phone): phone for phone in phones}
    found = session.scalars(
        WITHIN, {"hashes": list(hashes), "days": days, "campaign_id": campaign_id}
    )
    return {hashes[digest] for digest in found}


def release(session: AnySession, campaign_id: int) -> int:
    """Give back the contacts of the campaign's messages cancelled before their call
    (the caller moved them, and commits); how many. One statement, by the index on
    ``campaign_id``: only the campaign's latest contacts are read."""
    return int(session.scalar(RELEASE, {"campaign_id": campaign_id}) or 0)


def is_remembered(session: AnySession, phone: str) -> bool:
    """Is this number in the history, however old its row (what an erasure deletes)?"""
    digest = phone_hash(phone)
    return bool(session.scalar(sa.select(sa.exists().where(ContactHistory.phone_hash == digest))))


def forget(session: AnySession, phone: str) -> int:
    """Erase this person's row, if any (caller commits); how many rows went."""
    return rows_changed(
        session, sa.delete(ContactHistory).where(ContactHistory.phone_hash == phone_hash(phone))
    )


def delete_expired(session: AnySession, days: int, batch: int = DELETE_BATCH) -> int:
    """Delete up to ``batch`` rows last contacted over ``days`` days ago (caller commits)."""
    old = (
        sa.select(ContactHistory.phone_hash)
        .where(ContactHistory.contacted_at <= sa.func.now() - sa.func.make_interval(0, 0, 0, days))
        .order_by(ContactHistory.phone_hash)
        .limit(batch)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    return rows_changed(
        session, sa.delete(ContactHistory).where(ContactHistory.phone_hash.in_(old))
    )
