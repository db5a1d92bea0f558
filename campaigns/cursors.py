"""The API's cursor pages: the opaque cursor, and ``limit``/``cursor`` read from a query.

A list answers a page of rows after a key (keyset, never OFFSET: a deep page costs
what the first does, and rows added meanwhile neither repeat a row nor push one out
of view). The key is the list's order's columns plus the id (``created_at, id`` for
campaigns), and the cursor that resumes after a row is the URL-safe base64, without
padding, of a small JSON document: which list it belongs to and that row's key,
``{"l": "campaigns", "k": ["2026-12-04T21:00:00.123456+00:00", 42]}``.

Clients treat it as opaque; we read it strictly. Anything that is not one of ours —
garbage, another list's cursor, a key of the wrong types or out of its column's
range, text PostgreSQL cannot store — is a 422 at the field ``cursor`` and never
reaches SQL. It is not signed: a well-formed cursor written by hand only chooses
where a page starts, which the caller could reach by walking the list anyway.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from campaigns.i18n import _
from campaigns.validation import BIGINT_MAX, INTEGER_MAX, Invalid, storable

# How a key's value is kept: an integer id (a column's range), a time, or text.
Kind = Literal["id", "bigid", "time", "text"]

LIMIT_MAX = 500
DEFAULT_LIMIT = 50
MAX_CURSOR_CHARS = 1024  # ours are under 200; a longer one is not one of ours
_CURSOR = re.compile(r"[A-Za-z0-9_-]+")
_LIMIT = re.compile(r"[0-9]{1,3}")


class BadCursor(ValueError):
    """Not a cursor this list gave."""


def encode(list_name: str, key: Sequence[Any]) -> str:
    """The cursor that resumes ``list_name`` after the row whose key is ``key``."""
    values = [value.isoformat() if isinstance(value, datetime) else value for value in key]
    document = json.dumps({"l": list_name, "k": values}, separators=(",", ":"))
    return base64.urlsafe_b64encode(document.encode()).rstrip(b"=").decode("ascii")


def encode_or_none(list_name: str, key: Sequence[Any] | None) -> str | None:
    return None if key is None else encode(list_name, key)


def decode(cursor: str, list_name: str, kinds: Sequence[Kind]) -> tuple[Any, ...]:
    """The key a cursor of ``list_name`` holds, each value checked against its kind."""
    if len(cursor) > MAX_CURSOR_CHARS or not _CURSOR.fullmatch(cursor):
        raise BadCursor("not URL-safe base64")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        document = json.loads(raw.decode("utf-8"))
    except (binascii.Error, ValueError, RecursionError) as error:  # UnicodeDecodeError too
        raise BadCursor("not base64 of JSON") from error
    if not isinstance(document, dict) or document.keys() != {"l", "k"}:
        raise BadCursor("not a cursor document")
    if document["l"] != list_name:
        raise BadCursor("another list's cursor")
    key = document["k"]
    if not isinstance(key, list) or len(key) != len(kinds):
        raise BadCursor("a key of another shape")
    return tuple(_value(value, kind) for value, kind in zip(key, kinds, strict=True))


def _value(value: Any, kind: Kind) -> Any:
    if kind in ("id", "bigid"):
        top = INTEGER_MAX if kind == "id" else BIGINT_MAX
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= top:
            return value
        raise BadCursor("an id out of range")
    if not isinstance(value, str) or not storable(value):
        raise BadCursor("not text")
    if kind == "text":
        return value
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise BadCursor("not a time") from None
    if when.tzinfo is None:
        raise BadCursor("a time without its offset")
    return when


@dataclass(frozen=True)
class PageRequest:
    """What a list's query asked for: ``limit`` rows after ``after``, or, with
    ``limit`` None (neither ``cursor`` nor ``limit`` sent), the list's own older paging."""

    limit: int | None = None
    after: tuple[Any, ...] | None = None

    @property
    def by_cursor(self) -> bool:
        return self.limit is not None


def parse_page(
    args: Mapping[str, str],
    list_name: str,
    kinds: Sequence[Kind],
    *,
    default_limit: int = DEFAULT_LIMIT,
    older_paging: Sequence[str] = (),
    always: bool = False,
) -> PageRequest:
    """``limit`` (1 to LIMIT_MAX) and ``cursor`` from a query string, or :class:`Invalid`.

    ``older_paging`` names the list's older parameters (``page``, ``before``): they
    cannot be combined with a cursor (field ``cursor``) or a limit (field ``limit``).
    ``always``: the list has no older paging, a first page without either is a cursor
    page of ``default_limit`` rows.
    """
    errors: dict[str, str] = {}
    raw_limit, raw_cursor = args.get("limit"), args.get("cursor")
    limit = default_limit
    if raw_limit is not None:
        if _LIMIT.fullmatch(raw_limit) and 1 <= int(raw_limit) <= LIMIT_MAX:
            limit = int(raw_limit)
        else:
            errors["limit"] = _("Give a whole number from 1 to %(max)d.") % {"max": LIMIT_MAX}
    after = None
    if raw_cursor is not None:
        try:
            after = decode(raw_cursor, list_name, kinds)
        except BadCursor:
            errors["cursor"] = _(
                "This is not a cursor of this list: send the next_cursor of its last answer,"
                " or none for the first page."
            )
    if raw_cursor is not None or raw_limit is not None:
        for name in older_paging:
            if name in args:
                field = "cursor" if raw_cursor is not None else "limit"
                errors.setdefault(
                    field,
                    _("%(name)s cannot be combined with cursor or limit.") % {"name": name},
                )
    if errors:
        raise Invalid(errors)
    if raw_cursor is None and raw_limit is None and not always:
        return PageRequest()
    return PageRequest(limit, after)
