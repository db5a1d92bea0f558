"""CSV files the way the reader's spreadsheet opens them, and uploaded CSV read either way.

A spreadsheet set to Brazilian Portuguese (Excel, LibreOffice) splits a CSV on ``;``,
because the comma is its decimal mark, and reads ``04/12/2026 14:30:05`` as a date and
time; one set to English splits on ``,`` and reads ``2026-12-04 14:30:05``. An export
is written in one of these two formats: the one the reader asks for (``?format=``), else
the one of their language.

Times are written as the reader's local time, to the second, with no offset in the cell:
a spreadsheet opens a plain date and time as one (a value with an offset, such as
``-03:00``, stays text there), and the column's header names the zone
("Sent at (America/Sao_Paulo)"), so the file still says what the times mean.

Every file starts with a UTF-8 byte order mark: without it, Excel reads UTF-8 as its
Windows code page ("JoÃ£o").

Phones (and customer refs) that a spreadsheet would read as a number are written
after an invisible U+2060 WORD JOINER (:data:`KEEP_AS_TEXT`). Read as a number,
``+5511987654321`` loses its ``+`` and shows as ``5,51199E+12``, and a ref's
leading zeros are gone for good once the sheet is saved. The other ways out are
worse: a leading apostrophe, tab or space becomes a visible part of the value in
one program or another (an apostrophe means "text" when typed into a cell, not
always when read from a file); ``="+55…"`` is a formula, right in Excel but read as that formula's
text by anything that is not a spreadsheet (a script, a database import, our own
opt-out import). A word joiner is not shown, is not a space (nothing trims or
splits on it), and phone parsers skip it: libphonenumber reads from the first
``+`` or digit, and ours drops it (campaigns/phones.py), so an exported file
imports back.

A download is named after what it holds and the day (:func:`content_disposition`):
``promocao-de-natal-2026-12-04.csv``.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from urllib.parse import quote
from zoneinfo import ZoneInfo

from campaigns.i18n import _l, get_locale
from campaigns.search import fold

BOM = "\ufeff"
CHUNK_ROWS = 1000  # rows per chunk handed to the client
SNIFF_LINES = 50  # an upload's delimiter is guessed from its first lines
SNIFF_CHARS = 4096  # csv.Sniffer's quote search is quadratic on hostile text
DELIMITERS = (",", ";", "\t")
# Written before an Identifier that starts like a number: the spreadsheet keeps it text.
KEEP_AS_TEXT = "\u2060"  # WORD JOINER: invisible, not a space
SLUG_CHARS = 80  # a download's name keeps this much of what it is named after
_NOT_WORD = re.compile(r"[\W_]+")


class Identifier(str):
    """A value a spreadsheet must keep as written (a phone, a customer ref), not read
    as a number (see KEEP_AS_TEXT)."""


@dataclass(frozen=True)
class CsvFormat:
    name: str  # the value of ?format=
    label: object  # the link offering it (a lazy string)
    delimiter: str
    decimal_mark: str
    datetime_pattern: str  # strftime: the reader's local time, without microseconds


EXCEL_BR = CsvFormat("excel-br", _l("Excel in Portuguese (;)"), ";", ",", "%d/%m/%Y %H:%M:%S")
STANDARD = CsvFormat("standard", _l("Standard (,)"), ",", ".", "%Y-%m-%d %H:%M:%S")
FORMATS = {f.name: f for f in (EXCEL_BR, STANDARD)}
# The format of each language's spreadsheets; a language not listed uses STANDARD.
LOCALE_FORMATS = {"pt_BR": EXCEL_BR}


def chosen_format(requested: str | None) -> CsvFormat:
    """The format named by ``?format=``, else the one of the reader's language."""
    if requested and requested in FORMATS:
        return FORMATS[requested]
    return LOCALE_FORMATS.get(str(get_locale()), STANDARD)


def offered_formats() -> list[CsvFormat]:
    """Every format, the reader's own first (the export's links)."""
    own = chosen_format(None)
    return [own, *(fmt for fmt in FORMATS.values() if fmt is not own)]


NUMBER_LIKE = re.compile(r"\+?[0-9]+")


def cell(value: object, fmt: CsvFormat, zone: ZoneInfo) -> str:
    """One value as text: times in ``zone``, decimals with the format's mark, and text a
    spreadsheet would run as a formula made inert."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(zone).strftime(fmt.datetime_pattern)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float | Decimal):
        # No thousands separator: "1234,56" is a number in any pt-BR spreadsheet.
        text = format(Decimal(repr(value)) if isinstance(value, float) else value, "f")
        return text.replace(".", fmt.decimal_mark)
    if isinstance(value, int):
        return str(value)
    text = str(value)
    # Only a number-like identifier (a phone, a numeric ref) is kept as text this way:
    # anything else still meets the formula check below, whatever it starts with.
    if isinstance(value, Identifier) and NUMBER_LIKE.fullmatch(text):
        return KEEP_AS_TEXT + text
    # A spreadsheet runs a cell that starts like a formula; names and error texts
    # come from outside (the ERP, WhatsApp). A +<digits> phone is only a number.
    if text[:1] in ("=", "+", "-", "@", "\t", "\r") and not (
        text[:1] == "+" and text[1:].isdigit()
    ):
        return "'" + text
    return text


def slug(text: str) -> str:
    """``text`` for a file name: lower case, no accents, words joined by ``-``."""
    return _NOT_WORD.sub("-", fold(text)[:SLUG_CHARS]).strip("-")


def content_disposition(name: str, day: date, fallback: str) -> str:
    """An attachment named ``<name as a slug>-<day>.csv``, ``fallback`` for a name with no
    letter or digit to keep. ``filename`` is ASCII for every client; ``filename*``
    (RFC 6266) carries the UTF-8 name, which differs for a name in another script."""
    utf8 = slug(name) or fallback
    ascii_name = _NOT_WORD.sub("-", utf8.encode("ascii", "ignore").decode()).strip("-")
    suffix = f"-{day.isoformat()}.csv"
    return (
        f'attachment; filename="{ascii_name or fallback}{suffix}";'
        f" filename*=UTF-8''{quote(utf8 + suffix, safe='')}"
    )


def chunks(
    header: Sequence[str],
    rows: Iterable[Iterable[object]],
    fmt: CsvFormat,
    zone: ZoneInfo,
) -> Iterator[str]:
    """The file in pieces of CHUNK_ROWS rows, for a streamed response."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=fmt.delimiter)
    buffer.write(BOM)
    writer.writerow(header)
    for n, row in enumerate(rows, 1):
        writer.writerow([cell(value, fmt, zone) for value in row])
        if n % CHUNK_ROWS == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def sniff_delimiter(lines: Sequence[str]) -> str:
    """The delimiter of an uploaded CSV: ``,``, ``;`` (spreadsheets in Portuguese) or a tab.

    csv.Sniffer guesses from the first lines, restricted to those three; when it cannot
    tell (one column, one line, ragged rows), the one most frequent on the first line
    that has any, else ``,`` (a file of one column: any delimiter reads it).
    """
    sample_lines: list[str] = []
    size = 0
    for line in lines:
        if not line.strip():
            continue
        sample_lines.append(line[:SNIFF_CHARS])
        size += len(sample_lines[-1])
        if len(sample_lines) >= SNIFF_LINES or size >= SNIFF_CHARS:
            break
    if not sample_lines:
        return ","
    sample_lines[0] = sample_lines[0].removeprefix(BOM)
    try:
        delimiter = csv.Sniffer().sniff("\n".join(sample_lines), "".join(DELIMITERS)).delimiter
    except csv.Error:
        delimiter = ""
    if delimiter in DELIMITERS:
        return delimiter
    for line in sample_lines:
        counts = {candidate: line.count(candidate) for candidate in DELIMITERS}
        best = max(DELIMITERS, key=lambda candidate: counts[candidate])
        if counts[best]:
            return best
    return ","
