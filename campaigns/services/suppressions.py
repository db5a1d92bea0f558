"""The suppression (opt-out) list: every write to it goes through here.

Operators add numbers by hand or from a CSV and remove them; the engine and the
webhooks add the numbers WhatsApp or the customer said to stop
(:func:`suppress_quietly`), and lift only what WhatsApp itself reported
(:func:`lift_provider_suppression`). A number already listed keeps its first
reason and source.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import logging
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.dialects.postgresql import ARRAY, Insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.sql.dml import ReturningInsert

from app import AnySession, db, rows_changed
from campaigns import audit, csvfiles, phones
from campaigns.i18n import _
from campaigns.models import Message, Suppression
from campaigns.services import NotFound, ServiceError
from campaigns.validation import storable

logger = logging.getLogger(__name__)


SUPPRESSION_SOURCES = frozenset({"manual", "import", "opt_out_reply", "provider"})
MAX_REASON_LENGTH = 200  # the column's width
MAX_IMPORT_LINES = 100_000
MAX_REPORTED_INVALID = 50
# An import's header row, in English or Portuguese (any case).
PHONE_HEADERS = frozenset({"phone", "telefone"})
REASON_HEADERS = frozenset({"reason", "motivo"})


def _unless_listed(insert: Insert) -> ReturningInsert[tuple[int]]:
    """The insert, skipping numbers already listed and returning the new rows' ids."""
    # Rather than look-then-insert: two concurrent adds of one number cannot collide,
    # and RETURNING lists only the rows that are really new.
    return insert.on_conflict_do_nothing(index_elements=[Suppression.phone]).returning(
        Suppression.id
    )


def _check_source(source: str) -> None:
    if source not in SUPPRESSION_SOURCES:
        raise ValueError(f"unknown suppression source {source!r}")


def suppress(
    phone_raw: str, reason: str, source: str, user_id: int | None
) -> tuple[Suppression, bool]:
    """Put a number on the suppression list; also say whether it is new there."""
    _check_source(source)
    phone = phones.normalise(phone_raw, current_app.config["PHONE_DEFAULT_REGION"])
    if phone is None:
        raise ServiceError(
            _("Enter a phone number with its area code, or in international form (+…)."), "phone"
        )
    reason = (reason or "").strip()
    if len(reason) > MAX_REASON_LENGTH:
        raise ServiceError(
            _("The reason has at most %(n)d characters.") % {"n": MAX_REASON_LENGTH}, "reason"
        )
    new_id = db.session.execute(
        _unless_listed(
            pg_insert(Suppression).values(
                phone=phone, reason=reason, source=source, created_by_id=user_id
            )
        )
    ).scalar()
    # A number already there keeps its row unchanged: its first reason and source stand.
    suppression = db.session.scalars(sa.select(Suppression).where(Suppression.phone == phone)).one()
    if new_id is not None:
        audit.record(
            db.session,
            "suppression.add",
            target_type="suppression",
            target_id=suppression.id,
            target_label=audit.mask_phone(phone),
            details={"source": source},
        )
    db.session.commit()
    if new_id is not None:
        logger.info("suppression %s added (%s) by user %s", suppression.id, source, user_id)
    return suppression, new_id is not None


def suppress_quietly(session: AnySession, phone: str | None, reason: str, source: str) -> bool:
    """Put an E.164 number on the list in the caller's transaction; whether it is new there.

    For the engine and the webhooks: what WhatsApp or the customer said is recorded
    as it came (the reason cut to the column's width), never refused. A message
    whose number was erased (None) has nothing to list; a number listed as a hash
    is already there, and is not stored again in the clear.
    """
    _check_source(source)
    if phone is None or _listed_as_hash(session, phone):
        return False
    insert = pg_insert(Suppression).values(
        phone=phone, reason=reason[:MAX_REASON_LENGTH], source=source
    )
    return session.execute(_unless_listed(insert)).scalar() is not None


def suppress_message(
    session: AnySession, message_id: int, phone_seen: str | None, reason: str, source: str
) -> bool:
    """WhatsApp says this message's recipient opted out (131050): list the number, in the
    caller's transaction; whether it is new there.

    The number is read again from the message's row, held FOR SHARE, as
    ``undeliverable.remember_message`` does: if the recipient's data was erased since
    ``phone_seen`` was read, the opt-out is still kept (the person asked not to be
    contacted) but only as a hash, as the erasure keeps opt-outs, never in the clear.
    An erasure running meanwhile waits, then hashes the new row with the rest.
    """
    phone = session.scalar(
        sa.select(Message.phone).where(Message.id == message_id).with_for_update(read=True)
    )
    if phone is not None:
        return suppress_quietly(session, phone, reason, source)
    if phone_seen is None or _listed_as_hash(session, phone_seen):
        return False
    _check_source(source)
    insert = pg_insert(Suppression).values(
        phone=None, phone_hash=phone_hash(phone_seen), reason="", source=source
    )
    new = insert.on_conflict_do_nothing(index_elements=[Suppression.phone_hash])
    return session.execute(new.returning(Suppression.id)).scalar() is not None


def lift_provider_suppression(session: AnySession, phone: str) -> bool:
    """Take a number off the list if WhatsApp itself put it there (the customer resumed).

    A reply, a hand entry or an import stays until an operator removes it.
    """
    removed = rows_changed(
        session,
        sa.delete(Suppression).where(
            sa.or_(Suppression.phone == phone, Suppression.phone_hash == phone_hash(phone)),
            Suppression.source == "provider",
        ),
    )
    return bool(removed)


def add_suppression(phone_raw: str, reason: str, source: str, user_id: int | None) -> Suppression:
    """Put a number on the suppression list; one already there is returned unchanged."""
    return suppress(phone_raw, reason, source, user_id)[0]


def remove_suppression(suppression_id: int) -> None:
    """Take a number off the suppression list: campaigns reach it again."""
    phone = db.session.scalar(sa.select(Suppression.phone).where(Suppression.id == suppression_id))
    removed = db.session.execute(
        sa.delete(Suppression).where(Suppression.id == suppression_id).returning(Suppression.id)
    ).scalar()
    if removed is None:
        db.session.rollback()
        raise NotFound(_("There is no such opt-out."))
    audit.record(
        db.session,
        "suppression.remove",
        target_type="suppression",
        target_id=suppression_id,
        target_label=audit.mask_phone(phone),
    )
    db.session.commit()
    logger.info("suppression %s removed", suppression_id)


def is_suppressed(phones: Collection[str]) -> set[str]:
    """Which of these E.164 numbers are on the suppression list, in the clear or as a hash
    (one query)."""
    if not phones:
        return set()
    hashes = {phone_hash(phone): phone for phone in phones}
    # One array parameter, not IN (…): a batch of any size stays one short statement.
    wanted = sa.bindparam("phones", list(phones), type_=ARRAY(sa.String))
    hashed = sa.bindparam("hashes", list(hashes), type_=ARRAY(sa.String))
    rows = db.session.execute(
        sa.select(Suppression.phone, Suppression.phone_hash).where(
            sa.or_(Suppression.phone == sa.any_(wanted), Suppression.phone_hash == sa.any_(hashed))
        )
    )
    return {row.phone if row.phone is not None else hashes[row.phone_hash] for row in rows}


def phone_hash(phone: str) -> str:
    """The one-way form an erased opt-out keeps: HMAC-SHA256 of the E.164 number, in hex.

    Keyed (PHONE_HASH_KEY, or derived from SECRET_KEY), so the list cannot be
    reversed by hashing every possible number without the key; changing the key
    loses the match for every number kept this way.
    """
    key = current_app.config["PHONE_HASH_KEY"]
    return hmac.new(key, phone.encode(), hashlib.sha256).hexdigest()


def _listed_as_hash(session: AnySession, phone: str) -> bool:
    query = sa.select(Suppression.id).where(Suppression.phone_hash == phone_hash(phone))
    return session.execute(query).first() is not None


def keep_only_as_hash(session: AnySession, phone: str) -> bool:
    """The number's opt-out, if any, stays on the list as a hash only (caller commits).

    The reason goes too (it may quote the person's reply); the source and date stay.
    Whether the number was listed (in the clear or as a hash already).
    """
    digest = phone_hash(phone)
    if _listed_as_hash(session, phone):
        # Listed twice (added again by hand after an erasure): the hashed row is enough.
        session.execute(sa.delete(Suppression).where(Suppression.phone == phone))
        return True
    return bool(
        rows_changed(
            session,
            sa.update(Suppression)
            .where(Suppression.phone == phone)
            .values(phone=None, phone_hash=digest, reason=""),
        )
    )


@dataclass(frozen=True)
class ImportReport:
    """What an import did: numbers added, already listed, and the lines that were not numbers."""

    added: int
    already_present: int
    invalid: list[tuple[int, str]]  # (line number, raw value), the first MAX_REPORTED_INVALID
    invalid_count: int  # every invalid line, shown or not


def _rows(lines: list[str]) -> Iterator[tuple[int, list[str]]]:
    """The CSV's rows with their line numbers; what the csv module cannot read is the
    file's problem, not a 500. Spreadsheets set to Portuguese save CSV with semicolons
    (the comma is their decimal mark), others with commas; some with tabs."""
    reader = csv.reader(lines, delimiter=csvfiles.sniff_delimiter(lines))
    try:
        for row in reader:
            yield reader.line_num, row
    except csv.Error as error:  # a cell over 128 KiB
        raise ServiceError(
            _("Line %(n)d of the file cannot be read as CSV (%(reason)s).")
            % {"n": reader.line_num, "reason": error},
            "file",
        ) from None


def _column(names: list[str], wanted: Collection[str]) -> int | None:
    return next((at for at, name in enumerate(names) if name in wanted), None)


def import_suppressions(lines: Iterable[str] | str, user_id: int | None) -> ImportReport:
    """Suppress every number of a CSV: a ``phone`` (``telefone``) column and an optional
    ``reason`` (``motivo``), or one bare column; separated by ``,``, ``;`` or tabs."""
    all_lines = lines.splitlines() if isinstance(lines, str) else list(lines)
    if all_lines:  # Excel's UTF-8 byte order mark, when the text was not decoded as utf-8-sig
        all_lines[0] = all_lines[0].removeprefix(csvfiles.BOM)
    region = current_app.config["PHONE_DEFAULT_REGION"]
    phone_at, reason_at = 0, None
    header_seen = False
    wanted: dict[str, str] = {}  # phone → reason; a number's first line wins
    repeated = invalid_count = numbers = 0
    invalid: list[tuple[int, str]] = []
    for line_num, cells in _rows(all_lines):
        cells = [cell.strip() for cell in cells]
        if not any(cells):
            continue
        if not header_seen:
            header_seen = True
            names = [cell.lower() for cell in cells]
            header_at = _column(names, PHONE_HEADERS)
            if header_at is not None:
                phone_at, reason_at = header_at, _column(names, REASON_HEADERS)
                continue
        numbers += 1
        if numbers > MAX_IMPORT_LINES:
            raise ServiceError(
                _("A file can have at most %(n)s numbers; split it.")
                % {"n": f"{MAX_IMPORT_LINES:,}"},
                "file",
            )
        raw = cells[phone_at] if phone_at < len(cells) else ""
        # A line with text PostgreSQL cannot store (a NUL) is invalid like any other.
        phone = phones.normalise(raw, region) if all(map(storable, cells)) else None
        if phone is None:
            invalid_count += 1
            if len(invalid) < MAX_REPORTED_INVALID:
                invalid.append((line_num, raw[:40].replace("\x00", "\ufffd")))
        elif phone in wanted:
            repeated += 1
        else:
            reason = cells[reason_at] if reason_at is not None and reason_at < len(cells) else ""
            wanted[phone] = reason[:MAX_REASON_LENGTH]
    if numbers == 0:
        raise ServiceError(_("The file has no phone numbers."), "file")

    # Two array parameters unnested server-side: one short statement for 100,000 rows,
    # where a multi-row VALUES costs seconds just to compile.
    lines_in = (
        sa.func.unnest(
            sa.bindparam("phones", list(wanted), type_=ARRAY(sa.String)),
            sa.bindparam("reasons", list(wanted.values()), type_=ARRAY(sa.String)),
        )
        .table_valued("phone", "reason")
        .render_derived()
    )
    unnested = sa.select(
        lines_in.c.phone,
        lines_in.c.reason,
        sa.literal("import", sa.String),
        sa.literal(user_id, sa.Integer),
    )
    insert = pg_insert(Suppression).from_select(
        ["phone", "reason", "source", "created_by_id"], unnested
    )
    added = len(db.session.execute(_unless_listed(insert)).all())
    audit.record(
        db.session,
        "suppression.import",
        target_type="suppression",
        details={"numbers": numbers, "added": added, "invalid": invalid_count},
    )
    db.session.commit()
    logger.info(
        "suppression import by user %s: %d added, %d invalid", user_id, added, invalid_count
    )
    # A number repeated in the file counts as already there from its second line on.
    return ImportReport(added, len(wanted) - added + repeated, invalid, invalid_count)
