"""Numbers WhatsApp could not deliver to (131026), remembered for UNDELIVERABLE_DAYS.

Meta's guidance for 131026 is not to retry, and to stop messaging the number: it is
not on WhatsApp, runs an old app, or has not accepted the terms. A send that fails
with it records the number here (:func:`remember`); later campaigns' fan-out skips it
with the code ``undeliverable`` (:func:`recent`) until the period runs out. Maintenance
deletes rows past the period (:func:`delete_expired`), so a number that has since
joined WhatsApp is tried again.

Personal data: only the number's keyed hash is kept (``suppressions.phone_hash``),
never the number, and a person's erasure deletes theirs (:func:`forget`).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert

from app import DELETE_BATCH, AnySession, rows_changed
from campaigns.models import Message, UndeliverableNumber
from campaigns.services.suppressions import phone_hash


def remember(session: AnySession, phone: str | None) -> None:
    """This number failed with 131026 now (caller commits); None: its data was erased."""
    if phone is None:
        return
    insert = pg_insert(UndeliverableNumber).values(phone_hash=phone_hash(phone))
    session.execute(
        insert.on_conflict_do_update(
            index_elements=[UndeliverableNumber.phone_hash],
            set_={"failed_at": sa.func.now()},
        )
    )


def remember_message(session: AnySession, message_id: int) -> None:
    """This message's number failed with 131026 (caller commits), unless its recipient's
    data was erased since the message was read: the number is read again here, from the
    row, held FOR SHARE. An erasure that committed before left no number on the row (it
    erases every message of the person), so nothing is written back; one running now
    waits for this transaction at its lock on the person's messages, then deletes the
    hash with the rest (``personal_data.erase_person``)."""
    phone = session.scalar(
        sa.select(Message.phone).where(Message.id == message_id).with_for_update(read=True)
    )
    remember(session, phone)


def recent(session: AnySession, phones: Collection[str], days: int) -> set[str]:
    """Which of these E.164 numbers failed with 131026 in the last ``days`` days."""
    if not phones:
        return set()
    hashes = {phone_hash(phone): phone for phone in phones}
    found = session.scalars(
        sa.select(UndeliverableNumber.phone_hash).where(
            UndeliverableNumber.phone_hash
            == sa.any_(sa.bindparam("hashes", list(hashes), type_=ARRAY(sa.String))),
            UndeliverableNumber.failed_at > sa.func.now() - timedelta(days=days),
        )
    )
    return {hashes[digest] for digest in found}


def is_remembered(session: AnySession, phone: str) -> bool:
    """Is this number in the store, however old its row (what an erasure would delete)?"""
    digest = phone_hash(phone)
    return bool(
        session.scalar(sa.select(sa.exists().where(UndeliverableNumber.phone_hash == digest)))
    )


def forget(session: AnySession, phone: str) -> int:
    """Erase this person's row, if any (caller commits); how many rows went."""
    return rows_changed(
        session,
        sa.delete(UndeliverableNumber).where(UndeliverableNumber.phone_hash == phone_hash(phone)),
    )


def delete_expired(session: AnySession, days: int, batch: int = DELETE_BATCH) -> int:
    """Delete up to ``batch`` rows older than ``days`` days (caller commits); how many."""
    old = (
        sa.select(UndeliverableNumber.phone_hash)
        .where(UndeliverableNumber.failed_at <= sa.func.now() - timedelta(days=days))
        .limit(batch)
        .scalar_subquery()
    )
    return rows_changed(
        session, sa.delete(UndeliverableNumber).where(UndeliverableNumber.phone_hash.in_(old))
    )
