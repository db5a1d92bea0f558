"""Search text the way people type it: without accents, in any case.

"Vitoria" finds "Vitória", "sao paulo" finds "São Paulo", "c0000042" finds "C0000042".

In SQL (:func:`contains_folded`) the *pattern* carries the folding, not the column:
each letter of the search becomes a bracket of every way of writing it (``o`` →
``[oOóÓòÒôÔõÕöÖ…]``), followed by any combining marks (a name stored decomposed,
``o`` + U+0301), and the column is matched with PostgreSQL's ``~*``. Both cases
are in the bracket, so a database whose ``LC_CTYPE`` is ``C`` (where ``lower('É')``
is ``'É'``) matches as well as any. That needs no extension (``unaccent``,
``pg_trgm``: not every server Disparo runs on has them, the embedded development
server for one), no function of ours in the database, and no per-row work beyond
the match itself. Measured on 100,000 names: about 55 ms,
close to ILIKE's 45 ms, where ``lower(translate(column, <accent map>)) LIKE``
took 200 ms, the translation of every row costing more than the match. No index
is added: without ``pg_trgm`` none serves a match anywhere in the text, and a
search reads its campaign's rows through the (campaign_id, id) index either way
(recipients.py counts and pages them in one pass; tests/test_recipients.py
prints what a search of a 100,000-message campaign takes).

:func:`fold` is the same folding in Python, for text compared in memory (the mock
ERP's city filter).
"""

from __future__ import annotations

import re
import string
import unicodedata
from functools import cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import QueryableAttribute

# A search longer than this is cut: nobody types more, and the regex stays small.
MAX_SEARCH_CHARS = 100
# Any combining diacritical marks after a letter (text stored in decomposed form).
_COMBINING = "[\u0300-\u036f]*"
_SPACES = re.compile(r"\s+")


def _without_marks(char: str) -> str:
    decomposed = unicodedata.normalize("NFKD", char)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


@cache
def _letter_variants() -> dict[str, str]:
    """Each ASCII letter (lower case) → every Latin character that folds to it."""
    variants: dict[str, list[str]] = {
        letter: [letter, letter.upper()] for letter in string.ascii_lowercase
    }
    # Latin-1 Supplement, Latin Extended-A and B: every accented Latin letter in use.
    for code in range(0xC0, 0x250):
        char = chr(code)
        base = _without_marks(char)
        if base != char and len(base) == 1 and base.isascii() and base.isalpha():
            variants[base.lower()].append(char)
    return {letter: "".join(chars) for letter, chars in variants.items()}


@cache
def _fold_table() -> dict[str, str]:
    """Every character :func:`_letter_variants` knows → its ASCII letter."""
    return {char: letter for letter, chars in _letter_variants().items() for char in chars}


def fold(text: str) -> str:
    """``text`` in lower case, without accents, its runs of spaces one space, trimmed.

    Letters with nothing to remove (``ø``, ``ß``, other scripts) stay as they are, in
    lower case, so that folding never turns a word into nothing.
    """
    table = _fold_table()
    folded = []
    for char in unicodedata.normalize("NFC", text):
        if unicodedata.combining(char):
            continue
        folded.append(table.get(char) or char.lower())
    return _SPACES.sub(" ", "".join(folded)).strip()


def regex_pattern(text: str) -> str:
    """A PostgreSQL regular expression (for ``~*``) that finds ``text`` anywhere, whatever
    its accents and case; every other character is taken literally."""
    variants, table = _letter_variants(), _fold_table()
    parts = []
    for char in fold(text[:MAX_SEARCH_CHARS]):
        if char == " ":
            parts.append(r"\s+")
            continue
        letter = table.get(char)
        if letter is not None:
            parts.append(f"[{variants[letter]}]{_COMBINING}")
        elif char.isascii() and not char.isalnum():
            parts.append("\\" + char)  # "\" and any non-alphanumeric: that character
        else:
            parts.append(char)  # a digit, or a letter of another script (~* folds case)
    return "".join(parts)


def contains_folded(
    column: sa.ColumnElement[Any] | QueryableAttribute[Any], text: str
) -> sa.ColumnElement[bool]:
    """``column`` contains ``text``, accents and case aside (NULL never matches)."""
    return column.regexp_match(regex_pattern(text), flags="i")
