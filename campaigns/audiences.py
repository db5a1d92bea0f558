"""CSV audiences: an uploaded spreadsheet, kept in Postgres, read by the fan-out.

An operator uploads a CSV (a phone column and any others, usable as the template's
variables) as a campaign's audience instead of an ERP segment. :func:`import_csv` reads
it from the spooled upload (werkzeug writes it to disk as it arrives) a row at a time
and streams the rows into ``audience_rows`` with ``COPY`` (psycopg's ``cursor.copy``):
the file is never in memory, whatever its size, and a million rows import in well
under a minute (``bench/csv_import.py``). The file's facts and header are
``audience_files``; each row is its cells in the header's order, keyed by (file, row
number), which is how the fan-out pages through it (:func:`page`) and what its
messages' customer ref is (unique per file).

What a spreadsheet gives: UTF-8 with or without a byte order mark, UTF-16 with its
byte order mark (Excel's "Unicode Text"), or, when the bytes are not UTF-8,
Windows-1252 (Excel's "CSV" in Portuguese; Latin-1 for the five bytes that code page
leaves undefined). The delimiter is guessed as the opt-out import's is
(``csvfiles.sniff_delimiter``: ``,``, ``;`` or a tab). The first non-blank row is the
header: every column named, no name twice. A shorter row is padded (spreadsheets drop
trailing empty cells); a longer one is refused, naming its line. Blank rows are
skipped. A row (its physical lines) is held to :data:`ROW_MAX_CHARS` before the csv
module parses it, so one long line of many small cells cannot take the process's
memory. Quoting is strict: an unclosed quote is refused, not read to the file's end.
Every refusal is a :class:`ServiceError` at :data:`FIELD`, nothing kept.

Personal data: a file no campaign uses is deleted a day after its upload
(:func:`delete_unused`, maintenance); one used only by campaigns whose data the
retention erased goes with them (:func:`delete_if_erased`); a person's erasure deletes
their rows from every file (:func:`person_rows`, :func:`erase_person_rows`), found by
the rows' ``phone_tails`` (GIN-indexed), not by reading every row.
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
import re
import struct
from collections.abc import Collection, Mapping, Sequence
from datetime import timedelta
from typing import IO, Any

import psycopg
import sqlalchemy as sa
from psycopg.adapt import Dumper
from psycopg.pq import Format
from sqlalchemy.exc import IntegrityError

from app import AnySession, db, rows_changed
from campaigns import csvfiles, phones
from campaigns.i18n import _, format_number
from campaigns.media import MB, clean_filename
from campaigns.models import AudienceFile
from campaigns.search import fold
from campaigns.services import ServiceError

logger = logging.getLogger(__name__)

FIELD = "audience_file"  # the campaign form's field a refusal is shown at
PREVIEW_ROWS = 5  # the rows the mapping's preview shows
PAGE_ROWS = 1000  # the fan-out's page: as the ERP's
MAX_COLUMNS = 200
COLUMN_MAX_CHARS = 200  # campaigns.audience_phone_column's width
# A row's characters (all its physical lines): the csv module builds a whole row before
# its cells can be counted, so a longer one is refused unparsed. The csv module's own
# limit on one cell (csv.field_size_limit()) is as much.
ROW_MAX_CHARS = 128 * 1024
TAIL_DIGITS = 8  # a phone's last digits, whatever its formatting: phone_tails
HEAD_BYTES = 64 * 1024  # the encoding and the delimiter are guessed from this much
FORM_OVERHEAD_BYTES = 1024 * 1024  # the multipart framing and the form's other fields
# A file no campaign uses is kept this long (the operator may still be building one).
UNUSED_AFTER = timedelta(days=1)
# Column names that say "the phone", in the words spreadsheets use (folded, no accents).
PHONE_NAMES = ("whatsapp", "celular", "telefone", "phone", "mobile", "fone", "tel", "numero")
NAME_NAMES = ("name", "nome", "first_name", "primeiro_nome", "cliente")
COPY_ROWS = (
    "COPY audience_rows (file_id, row_number, cells, phone_tails) FROM STDIN (FORMAT BINARY)"
)
_NOT_WORD = re.compile(r"[\W_]+")
_NOT_DIGIT = re.compile(r"\D+")


def upload_limit_bytes(config: Mapping[str, Any]) -> int:
    """A CSV audience upload's request limit: ``AUDIENCE_UPLOAD_MAX_MB`` and the form."""
    return int(config["AUDIENCE_UPLOAD_MAX_MB"]) * MB + FORM_OVERHEAD_BYTES


def _refuse(message: str) -> ServiceError:
    return ServiceError(message, FIELD)


def _too_large(config: Mapping[str, Any]) -> ServiceError:
    return _refuse(
        _("The file is larger than an audience may be: at most %(n)s MB.")
        % {"n": config["AUDIENCE_UPLOAD_MAX_MB"]}
    )


def import_csv(
    stream: IO[bytes] | None,
    filename: str | None,
    user_id: int | None,
    config: Mapping[str, Any],
) -> AudienceFile:
    """Keep an uploaded CSV as an audience; committed. ServiceError at :data:`FIELD`
    for no file, an empty one, one over ``AUDIENCE_UPLOAD_MAX_MB``, a header with an
    empty or repeated name, no rows, or a row longer than the header."""
    if stream is None:
        raise _refuse(_("Choose a CSV file."))
    stream.seek(0, io.SEEK_END)
    size = stream.tell()
    stream.seek(0)
    if size == 0:
        raise _refuse(_("The file is empty."))
    if size > int(config["AUDIENCE_UPLOAD_MAX_MB"]) * MB:
        raise _too_large(config)
    head = stream.read(HEAD_BYTES)
    encoding = _encoding(head)
    lines = head.decode(encoding, "replace").splitlines()
    if len(head) == HEAD_BYTES:
        lines = lines[:-1]  # cut short by the head's end
    delimiter = csvfiles.sniff_delimiter(lines)
    name = clean_filename(filename, "audience.csv")
    for attempt in (encoding, *_FALLBACKS.get(encoding, ())):
        stream.seek(0)
        try:
            return _import(stream, attempt, delimiter, name, size, user_id)
        except UnicodeDecodeError:
            # Not UTF-8 after all, past the bytes it was guessed from: read again.
            db.session.rollback()
            logger.info("audiences: %s is not %s; read again", name, attempt)
    # Only UTF-16 has no fallback (latin-1 decodes any byte): a broken "Unicode Text".
    raise _refuse(
        _("The file could not be read as text; save it as “CSV UTF-8” and upload it again.")
    )


# Read as UTF-8 but it was not, past the head: Excel's code page, then any byte (also
# for a byte Windows-1252 leaves undefined past the head).
_FALLBACKS = {
    "utf-8": ("cp1252", "latin-1"),
    "utf-8-sig": ("cp1252", "latin-1"),
    "cp1252": ("latin-1",),
}


def _encoding(head: bytes) -> str:
    """The file's encoding as its first bytes say: UTF-8 (with its BOM or not), UTF-16
    (with its BOM: Excel's "Unicode Text"), else Windows-1252, else Latin-1 (which
    reads any byte)."""
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"  # the codec reads the BOM and drops it
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        return "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        head.decode("cp1252")
        return "cp1252"
    except UnicodeDecodeError:
        return "latin-1"


def _import(
    stream: IO[bytes], encoding: str, delimiter: str, name: str, size: int, user_id: int | None
) -> AudienceFile:
    text = io.TextIOWrapper(stream, encoding=encoding, newline="")
    lines = _Lines(text)
    try:
        reader = csv.reader(lines, delimiter=delimiter, strict=True)
        columns = _header(reader, lines)
        audience = AudienceFile(
            name=name,
            columns=columns,
            row_count=0,
            size_bytes=size,
            delimiter=delimiter,
            encoding=encoding.removesuffix("-sig"),
            uploaded_by_id=user_id,
        )
        db.session.add(audience)
        db.session.flush()  # its id, for the rows
        audience.row_count = _copy_rows(reader, lines, audience.id, len(columns))
        if audience.row_count == 0:
            raise _refuse(_("The file has a header but no rows."))
        db.session.commit()
        return audience
    except csv.Error as error:
        db.session.rollback()
        raise _refuse(_csv_problem(error, lines.number)) from error
    except BaseException:
        db.session.rollback()
        raise
    finally:
        text.detach()  # the upload stays open: werkzeug closes it with the request


class _Lines:
    """The text's physical lines for csv.reader, a row's held to :data:`ROW_MAX_CHARS`
    (all its lines: a quoted cell may span several) before the reader builds it: the
    reader asks for a row's lines only, and the caller calls :meth:`row_read` after
    each. A line is read at most that long, so none is in memory whole either."""

    def __init__(self, text: io.TextIOWrapper) -> None:
        self.text = text
        self.number = 0  # the physical lines read: the line a refusal names
        self.row_chars = 0

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self.text.readline(ROW_MAX_CHARS + 1)
        if not line:
            raise StopIteration
        self.number += 1
        self.row_chars += len(line)
        if self.row_chars > ROW_MAX_CHARS:
            raise _refuse(
                _("Line %(line)s is longer than a row may be (at most %(n)s characters).")
                % {"line": format_number(self.number), "n": format_number(ROW_MAX_CHARS)}
            )
        return line

    def row_read(self) -> None:
        self.row_chars = 0


def _csv_problem(error: csv.Error, line: int) -> str:
    """What the csv module's refusal (English, for programmers) means, in the UI's words."""
    said = str(error)
    if "field limit" in said:
        problem = _("a cell is longer than %(n)s characters.") % {
            "n": format_number(csv.field_size_limit())
        }
    elif "NUL" in said:
        problem = _("it holds a NUL byte; is it a CSV?")
    elif "expected after" in said or "end of data" in said or "quote" in said:
        problem = _(
            "a quoted cell is not closed, or has text after its closing quote"
            " (write a quote inside a cell as two)."
        )
    else:
        logger.info("audiences: csv refused a file: %s", said)
        problem = _("check that it is a CSV file.")
    return _("The file could not be read as CSV (line %(n)s): %(problem)s") % {
        "n": format_number(line),
        "problem": problem,
    }


def _header(reader: Any, lines: _Lines) -> list[str]:
    for row in reader:
        lines.row_read()
        columns = [cell.strip() for cell in row]
        if not any(columns):
            continue
        if len(columns) > MAX_COLUMNS:
            raise _refuse(_("The file has more than %(n)d columns.") % {"n": MAX_COLUMNS})
        for number, column in enumerate(columns, 1):
            if not column:
                raise _refuse(
                    _("Column %(n)d of the header has no name: name every column.") % {"n": number}
                )
            if "\x00" in column:
                raise _refuse(
                    _(
                        "The header holds a NUL byte: is the file a CSV? Save it as"
                        " “CSV UTF-8” and upload it again."
                    )
                )
            if len(column) > COLUMN_MAX_CHARS:
                raise _refuse(
                    _("Column %(n)d's name is too long (at most %(max)d characters).")
                    % {"n": number, "max": COLUMN_MAX_CHARS}
                )
        seen: set[str] = set()
        for column in columns:
            if column in seen:
                raise _refuse(
                    _("The header names the column “%(name)s” twice: name each one once.")
                    % {"name": column}
                )
            seen.add(column)
        return columns
    raise _refuse(_("The file is empty."))


def phone_tails(cells: Sequence[str]) -> list[int]:
    """The last :data:`TAIL_DIGITS` digits, as a number, of each cell holding at least
    that many digits: a phone's, however it is written ("(11) 98765-4321", "+55 11…"),
    or any other long number's (a false match costs :func:`person_rows` a check)."""
    tails = []
    for cell in cells:
        if len(cell) >= TAIL_DIGITS:
            digits = _NOT_DIGIT.sub("", cell)
            if len(digits) >= TAIL_DIGITS:
                tails.append(int(digits[-TAIL_DIGITS:]))
    return tails


INT4 = 23
INT4_ARRAY = 1007
_ARRAY_HEAD = struct.Struct("!iiiii")  # dimensions, has nulls, element type; length, lower bound
_EMPTY_INT4_ARRAY = struct.pack("!iii", 0, 0, INT4)


class _TailsDumper(Dumper):
    """phone_tails in binary COPY, packed here: psycopg's array dumper is Python, and
    a second array per row (after the cells) halved the import's rate with it."""

    format = Format.BINARY
    oid = INT4_ARRAY

    def dump(self, obj: list[int]) -> bytes:
        if not obj:
            return _EMPTY_INT4_ARRAY
        return _ARRAY_HEAD.pack(1, 0, INT4, len(obj), 1) + struct.pack(
            f"!{len(obj) * 2}i", *(n for tail in obj for n in (4, tail))
        )


def _copy_rows(reader: Any, lines: _Lines, file_id: int, width: int) -> int:
    """Stream the reader's rows into audience_rows (binary COPY); how many."""
    connection = db.session.connection().connection.driver_connection
    assert isinstance(connection, psycopg.Connection)
    count = 0
    padding = [""] * width
    try:
        with connection.cursor() as cursor:
            cursor.adapters.register_dumper(None, _TailsDumper)  # this cursor's COPY only
            with cursor.copy(COPY_ROWS) as copy:
                copy.set_types(["int8", "int4", "text[]", "int4[]"])
                for row in reader:
                    lines.row_read()
                    cells = len(row)
                    if not (row and row[0].strip()) and not any(cell.strip() for cell in row):
                        continue  # a blank line, or one of empty cells
                    if cells != width:
                        if cells > width:
                            raise _refuse(
                                _(
                                    "Line %(line)d has %(n)d cells, more than the header's"
                                    " %(columns)d columns."
                                )
                                % {"line": reader.line_num, "n": cells, "columns": width}
                            )
                        row += padding[cells:]
                    count += 1
                    stripped = [cell.strip() for cell in row]
                    copy.write_row((file_id, count, stripped, phone_tails(stripped)))
    except psycopg.errors.DataError as error:
        # A NUL byte: PostgreSQL's text cannot hold it.
        raise _refuse(
            _("The file holds a character that cannot be saved (a NUL byte); is it a CSV?")
        ) from error
    return count


def get(file_id: int) -> AudienceFile | None:
    return db.session.get(AudienceFile, file_id)


def _fold(column: str) -> str:
    return _NOT_WORD.sub("_", fold(column)).strip("_")


def guess_column(columns: Sequence[str], names: Sequence[str]) -> str | None:
    """The first column named like one of ``names`` (the earlier name wins), else None."""
    folded = [_fold(column) for column in columns]
    for wanted in names:
        for column, simple in zip(columns, folded, strict=True):
            if simple == wanted or simple.startswith(wanted + "_") or simple.endswith("_" + wanted):
                return column
    return None


def guess_phone_column(columns: Sequence[str]) -> str | None:
    return guess_column(columns, PHONE_NAMES)


PAGE = sa.text(
    "SELECT row_number, cells FROM audience_rows"
    " WHERE file_id = :file_id AND row_number > :after ORDER BY row_number LIMIT :limit"
)


def page(
    session: AnySession, file_id: int, after: int, limit: int = PAGE_ROWS
) -> list[tuple[int, list[str]]]:
    """The file's next rows after row number ``after``, in order: (row number, cells)."""
    rows = session.execute(PAGE, {"file_id": file_id, "after": after, "limit": limit})
    return [(row.row_number, row.cells) for row in rows]


def customers(
    columns: Sequence[str], rows: Sequence[tuple[int, Sequence[str]]]
) -> list[tuple[str, dict[str, Any]]]:
    """Each row as the fan-out's customer: its ref (the row number) and its fields (the
    columns). A file without a ``name`` column names its customers from a column named
    like one (nome, cliente…), so the recipients' table shows and searches them."""
    name_column = None if "name" in columns else guess_column(columns, NAME_NAMES)
    found = []
    for number, cells in rows:
        fields: dict[str, Any] = dict(zip(columns, cells, strict=False))
        if name_column is not None:
            fields["name"] = fields[name_column]
        found.append((str(number), fields))
    return found


def preview(audience: AudienceFile, limit: int = PREVIEW_ROWS) -> list[list[str]]:
    """The file's first rows, for the mapping's preview."""
    return [cells for _number, cells in page(db.session, audience.id, 0, limit)]


def first_customers(audience: AudienceFile, limit: int) -> list[tuple[str, dict[str, Any]]]:
    """The file's first ``limit`` rows as customers (a dry run's, a test send's sample)."""
    return customers(audience.columns, page(db.session, audience.id, 0, limit))


DELETE_UNUSED = sa.text(
    """
    -- files no campaign names, past their grace (a batch; maintenance comes back)
    DELETE FROM audience_files
     WHERE id = ANY(ARRAY(
           SELECT f.id FROM audience_files f
            WHERE f.created_at < now() - make_interval(secs => :older_than)
              AND NOT EXISTS (SELECT 1 FROM campaigns c WHERE c.audience_file_id = f.id)
            ORDER BY f.id
            LIMIT :batch
              FOR UPDATE SKIP LOCKED))
    """
)


def delete_unused(session: AnySession, older_than: timedelta = UNUSED_AFTER, batch: int = 5) -> int:
    """Delete up to ``batch`` files no campaign uses, uploaded more than ``older_than``
    ago, with their rows (the caller commits); how many. A campaign saved naming one at
    that very moment keeps it: its key-share lock skips the file, or, committed just
    before, the foreign key refuses the delete and this run deletes nothing (a
    savepoint keeps the caller's other work)."""
    try:
        with session.begin_nested():
            return rows_changed(
                session,
                DELETE_UNUSED.bindparams(older_than=older_than.total_seconds(), batch=batch),
            )
    except IntegrityError:
        logger.info("audiences: a file became used while unused ones were deleted; next run")
        return 0


# -- the campaign's file, if every campaign using it has had its data erased
ERASED_FILE = sa.text(
    """
    SELECT f.id FROM audience_files f
     WHERE f.id = (SELECT audience_file_id FROM campaigns WHERE id = :campaign_id)
       AND NOT EXISTS (SELECT 1 FROM campaigns c
                        WHERE c.audience_file_id = f.id AND c.data_erased_at IS NULL)
       FOR UPDATE
    """
)


def delete_if_erased(session: AnySession, campaign_id: int) -> bool:
    """Delete the campaign's file if the retention has erased every campaign that uses
    it (the caller commits, with the campaign's erasure); whether it did. The campaigns
    keep their phone column: their pages still say the audience was a file."""
    file_id = session.scalar(ERASED_FILE, {"campaign_id": campaign_id})
    if file_id is None:
        return False
    session.execute(
        sa.text("UPDATE campaigns SET audience_file_id = NULL WHERE audience_file_id = :id"),
        {"id": file_id},
    )
    session.execute(sa.delete(AudienceFile).where(AudienceFile.id == file_id))
    logger.info("audiences: file %s deleted with its campaigns' data", file_id)
    return True


# -- candidates for one person's rows: a cell whose digits end in the number's last
# eight (any formatting: "(11) 98765-4321", "+55 11 9876 54321"), through the GIN index
# on phone_tails; confirmed in Python by normalising the cell.
PERSON_CANDIDATES = sa.text(
    "SELECT file_id, row_number, cells FROM audience_rows"
    " WHERE phone_tails @> ARRAY[CAST(:tail AS int)]"
)


def person_rows(session: AnySession, phone: str, region: str) -> list[tuple[int, int]]:
    """(file, row number) of every audience row with a cell that is this E.164 number."""
    tail = int(phone[-TAIL_DIGITS:])
    found = []
    for row in session.execute(PERSON_CANDIDATES, {"tail": tail}):
        if any(_is(cell, phone, tail, region) for cell in row.cells):
            found.append((row.file_id, row.row_number))
    return found


def _is(cell: str, phone: str, tail: int, region: str) -> bool:
    # Only a cell with the number's last digits is worth normalising.
    return phone_tails([cell]) == [tail] and phones.normalise(cell, region) == phone


# The rows deleted, and each file's count less its rows this delete removed (not the
# rows asked for: two erasures at once must not both count a row one of them deleted).
ERASE_ROWS = sa.text(
    """
    WITH gone AS (
        DELETE FROM audience_rows a
         USING unnest(CAST(:files AS bigint[]), CAST(:numbers AS int[])) AS t(file_id, row_number)
         WHERE a.file_id = t.file_id AND a.row_number = t.row_number
     RETURNING a.file_id),
    per_file AS (SELECT file_id, count(*) AS n FROM gone GROUP BY file_id)
    UPDATE audience_files f SET row_count = f.row_count - per_file.n
      FROM per_file WHERE f.id = per_file.file_id
    RETURNING per_file.n
    """
)


def erase_person_rows(session: AnySession, rows: Collection[tuple[int, int]]) -> int:
    """Delete these audience rows (a person's: :func:`person_rows`); the files' row counts
    follow (the caller commits). How many."""
    if not rows:
        return 0
    files = [file_id for file_id, _number in rows]
    numbers = [number for _file_id, number in rows]
    return sum(session.scalars(ERASE_ROWS, {"files": files, "numbers": numbers}))
