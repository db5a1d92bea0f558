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
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from campaigns.i18n import _l, get_locale

BOM = "\ufeff"
CHUNK_ROWS = 1000  # rows per chunk handed to the client
SNIFF_LINES = 50  # an upload's delimiter is guessed from its first lines
SNIFF_CHARS = 4096  # csv.Sniffer's quote search is quadratic on hostile text
DELIMITERS = (",", ";", "\t")


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
    # A spreadsheet runs a cell that starts like a formula; names and error texts
    # come from outside (the ERP, WhatsApp). A +<digits> phone is only a number.
    if text[:1] in ("=", "+", "-", "@", "\t", "\r") and not (
        text[:1] == "+" and text[1:].isdigit()
    ):
        return "'" + text
    return text


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
