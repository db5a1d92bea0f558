"""The contact history: which campaigns contacted a number lately, for the frequency cap.

One row per number and campaign, the number as its keyed hash (``suppressions.phone_hash``,
never the number), in ``contact_history`` (migration 0031): when that campaign last
admitted it to go, and which message. A campaign's cap asks whether *another* campaign
(not a run of its own recurring series) has a row for the number within the cap; its own
rows never hold it back (a message admitted, paused, resumed; a 131049 hold's retry).

**What counts as a contact**: a message the pump *admits* to go (pending -> queued), not
its send: the one moment a campaign commits to messaging someone, and the one place two
campaigns racing for a person can be told apart. Each pump run (``pump._Admission``)
first locks its messages' numbers (:func:`capped`: an upsert of their ``contact_locks``
rows, in hash order), then reads the history in a statement of its own, so it sees the
contacts of a run that held those locks and committed: of two pumps racing for one
number, the second waits for the first's commit and then sees its contact, and only one
message goes. The budget then admits what the cap left, and only the messages it admits
are recorded (:func:`record`), in the same transaction: a message the budget holds back
contacts no one. Admitted messages are called within the pump's window (a minute at
most), so the time is the send's to within that. Every campaign locks and records,
capped or not, so a capped one sees what the others sent. A 131049-held message's retry
a day later is decided and recorded the same way when it is called
(``sending._cap_held``).

A recurring series' runs (``recurrence_of_id``) are separate campaigns, but contacts by
runs of the same series do not count against a run's cap: the series' cadence is the
operator's explicit choice (a daily series with a 1-day cap would otherwise skip nearly
everyone every second run).

**Contacts given back**: a campaign cancelled (or failed) or paused before its admitted
messages were called (``attempts = 0``: never claimed for a call) deletes their rows
(:func:`release`, in the cancel's or pause's transaction); a resumed campaign's pump
admits them again under the cap as it stands then. Other campaigns' rows are never
touched, so nothing has to be restored. A message that fails before its call (a job
that failed on an unexpected error) keeps its contact: "retry failed" may still send
it, and the error errs towards messaging less.

Personal data: maintenance deletes rows (and lock rows) older than
``CONTACT_HISTORY_DAYS`` (the longest cap allowed; :func:`delete_expired`), and a
person's erasure deletes theirs (:func:`forget`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import sqlalchemy as sa

from app import DELETE_BATCH, AnySession, rows_changed
from campaigns.models import ContactHistory, ContactLock
from campaigns.services.suppressions import phone_hash

# -- lock these numbers' rows (made if new), in hash order, so two admissions taking
# overlapping numbers lock them in the same order; DO UPDATE locks an existing row too
LOCK = sa.text(
    "INSERT INTO contact_locks AS l (phone_hash, locked_at)"
    " SELECT h, now() FROM unnest(CAST(:hashes AS text[])) AS h ORDER BY h"
    " ON CONFLICT (phone_hash) DO UPDATE SET locked_at = excluded.locked_at"
)
# -- which of these hashes a campaign other than :campaign_id, and not of its series,
# contacted within the days (by the primary key's phone_hash prefix)
WITHIN = sa.text(
    "SELECT DISTINCT h.phone_hash FROM contact_history h"
    " LEFT JOIN campaigns k ON k.id = h.campaign_id"
    " WHERE h.phone_hash = ANY(CAST(:hashes AS text[]))"
    " AND h.contacted_at > now() - make_interval(days => CAST(:days AS integer))"
    " AND h.campaign_id IS DISTINCT FROM CAST(:campaign_id AS integer)"
    " AND coalesce(k.recurrence_of_id, h.campaign_id) IS DISTINCT FROM"
    "   (SELECT coalesce(s.recurrence_of_id, s.id) FROM campaigns s"
    "    WHERE s.id = CAST(:campaign_id AS integer))"
)
# -- the admitted messages' contacts, now
RECORD = sa.text(
    "INSERT INTO contact_history AS c (phone_hash, campaign_id, message_id, contacted_at)"
    " SELECT v.phone_hash, :campaign_id, v.message_id, now()"
    " FROM unnest(CAST(:hashes AS text[]), CAST(:message_ids AS bigint[]))"
    "   AS v(phone_hash, message_id) ORDER BY v.phone_hash"
    " ON CONFLICT (phone_hash, campaign_id) DO UPDATE SET contacted_at = now(),"
    "   message_id = excluded.message_id"
)
# -- the contacts these messages of the campaign recorded: given back (by the primary key,
# so a pause or cancel of a million-recipient campaign reads its window's rows, not its
# whole history)
RELEASE = sa.text(
    "DELETE FROM contact_history WHERE campaign_id = :campaign_id"
    " AND phone_hash = ANY(CAST(:hashes AS text[]))"
    " AND message_id = ANY(CAST(:message_ids AS bigint[]))"
)


def _by_hash(phones: Mapping[int, str]) -> dict[str, int]:
    by_hash: dict[str, int] = {}
    for message_id, phone in phones.items():
        by_hash.setdefault(phone_hash(phone), message_id)  # a campaign's numbers are unique
    return by_hash


def capped(
    session: AnySession, campaign_id: int, cap_days: int | None, phones: Mapping[int, str]
) -> set[int]:
    """Lock these messages' numbers (id -> E.164 number) until the caller's transaction
    ends, then the ids the cap refuses: another campaign, not of this one's series,
    contacted their number within ``cap_days`` days (None: no cap, none refused; the
    numbers are locked all the same, so this campaign's :func:`record` is seen by a capped
    campaign admitting them next). The caller records the ones it admits in the same
    transaction (:func:`record`)."""
    by_hash = _by_hash(phones)
    if not by_hash:
        return set()
    session.execute(LOCK, {"hashes": list(by_hash)})
    if not cap_days:
        return set()
    # A statement of its own, after the locks: it sees the commits of whoever held them.
    found = session.scalars(
        WITHIN, {"hashes": list(by_hash), "days": cap_days, "campaign_id": campaign_id}
    )
    return {by_hash[digest] for digest in found}


def record(session: AnySession, campaign_id: int, phones: Mapping[int, str]) -> None:
    """Record the contact of these admitted messages (id -> E.164 number) now, in the
    caller's transaction (which locked their numbers: :func:`capped`)."""
    by_hash = _by_hash(phones)
    if by_hash:
        session.execute(
            RECORD,
            {
                "campaign_id": campaign_id,
                "hashes": list(by_hash),
                "message_ids": list(by_hash.values()),
            },
        )


def contacted_within(
    session: AnySession, phones: Collection[str], days: int, campaign_id: int | None = None
) -> set[str]:
    """Which of these E.164 numbers a campaign other than ``campaign_id`` (and not of its
    recurring series) contacted in the last ``days`` days."""
    if not phones:
        return set()
    hashes = {phone_hash(phone): phone for phone in phones}
    found = session.scalars(
        WITHIN, {"hashes": list(hashes), "days": days, "campaign_id": campaign_id}
    )
    return {hashes[digest] for digest in found}


def release(session: AnySession, campaign_id: int, phones: Mapping[int, str | None]) -> int:
    """Give back the contacts these messages of the campaign recorded (id -> number): ones
    never called that the caller moved back to pending or cancelled (it commits); how
    many. One statement, by the primary key."""
    by_hash = _by_hash({message_id: phone for message_id, phone in phones.items() if phone})
    if not by_hash:
        return 0
    statement = RELEASE.bindparams(
        campaign_id=campaign_id, hashes=list(by_hash), message_ids=list(by_hash.values())
    )
    return rows_changed(session, statement)


def is_remembered(session: AnySession, phone: str) -> bool:
    """Is this number in the history, however old its rows (what an erasure deletes)?"""
    digest = phone_hash(phone)
    return bool(
        session.scalar(
            sa.select(
                sa.or_(
                    sa.exists().where(ContactHistory.phone_hash == digest),
                    sa.exists().where(ContactLock.phone_hash == digest),
                )
            )
        )
    )


def forget(session: AnySession, phone: str) -> int:
    """Erase this person's rows, if any (caller commits); how many contacts went."""
    digest = phone_hash(phone)
    rows_changed(session, sa.delete(ContactLock).where(ContactLock.phone_hash == digest))
    return rows_changed(
        session, sa.delete(ContactHistory).where(ContactHistory.phone_hash == digest)
    )


def delete_expired(session: AnySession, days: int, batch: int = DELETE_BATCH) -> int:
    """Delete up to ``batch`` contacts made over ``days`` days ago, and as many lock rows
    not taken since (caller commits); how many contacts went."""
    older = sa.func.now() - sa.func.make_interval(0, 0, 0, days)
    old_locks = (
        sa.select(ContactLock.phone_hash)
        .where(ContactLock.locked_at <= older)
        .order_by(ContactLock.phone_hash)
        .limit(batch)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    rows_changed(session, sa.delete(ContactLock).where(ContactLock.phone_hash.in_(old_locks)))
    old = (
        sa.select(ContactHistory.phone_hash, ContactHistory.campaign_id)
        .where(ContactHistory.contacted_at <= older)
        .order_by(ContactHistory.phone_hash, ContactHistory.campaign_id)
        .limit(batch)
        .with_for_update(skip_locked=True)
        .subquery()
    )
    return rows_changed(
        session,
        sa.delete(ContactHistory).where(
            sa.tuple_(ContactHistory.phone_hash, ContactHistory.campaign_id).in_(
                sa.select(old.c.phone_hash, old.c.campaign_id)
            )
        ),
    )
