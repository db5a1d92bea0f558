"""Credentials and personal data out of text before someone else reads it.

Credentials: an ERP error's message, which users and notifications see. Personal
data: what an error report carries off to Sentry (campaigns/error_reporting.py).

An ERP URL may carry a user and password (``https://user:pass@erp/…``) or a token
in its query (``?api_key=…``), and ``requests`` repeats the URL in its errors
(``Max retries exceeded with url: /customers?token=…``). :func:`redact_urls`
masks both wherever they appear in a message, and leaves everything else as it
was, so the message still says which host and path failed.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

MASK = "***"
# scheme://userinfo@ — userinfo holds no "/", "?", "#", "@" or whitespace.
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^\s/?#@]+@")
# One name=value pair of a query string (after ? & or ;), up to the next separator.
_QUERY_PAIR = re.compile(r"(?P<lead>[?&;](?P<name>[^\s=&;#?'\"]+)=)(?P<value>[^\s&;#'\"]*)")
# A parameter whose name holds one of these carries a credential.
SECRET_NAME_PARTS = (
    "token",
    "key",
    "secret",
    "pass",
    "pwd",
    "auth",
    "sig",
    "credential",
    "session",
)


def is_secret_name(name: str) -> bool:
    folded = unquote(name).lower()
    return any(part in folded for part in SECRET_NAME_PARTS)


def _mask_pair(match: re.Match[str]) -> str:
    if match["value"] and is_secret_name(match["name"]):
        return match["lead"] + MASK
    return match[0]


def redact_urls(text: str) -> str:
    """``text`` with URLs' userinfo and credential-named query values replaced by ***."""
    text = _USERINFO.sub(lambda m: m["scheme"] + MASK + "@", text)
    return _QUERY_PAIR.sub(_mask_pair, text)


# Personal data. What leaves the process in an error report (campaigns/error_reporting.py)
# goes through these: phone numbers wherever they appear, and the values kept under the
# names customers' data travels by (the ERP's rows, a template's variables, WhatsApp's
# payloads and webhooks, the recipients' search). A name in free text under no such key
# cannot be told from any other word, and is not masked.
FILTERED = "[Filtered]"
PHONE_MASK = "[phone]"
PERSONAL_KEYS = frozenset(
    {
        "name",
        "nome",
        "first_name",
        "last_name",
        "full_name",
        "customer_name",
        "profile",
        "phone",
        "phone_number",
        "telefone",
        "celular",
        "to",
        "wa_id",
        "recipient_id",
        "customer_data",
        "params",
        "parameters",
        "variables",
        "text",
        "body",
        "q",
    }
)
# Any run of 8 or more digits, with a + before it and spaces, dashes or parentheses
# between them: +55 (11) 99999-0000, 5511999990000. Long ids and epoch times look the
# same and are masked too; an ISO date (2026-12-04) is not, and no newline joins two runs.
_PHONE = re.compile(r"(?<![\d+])(?!\d{4}-\d\d-\d\d(?!\d))\+?\(?\d(?:[ \t\u00a0()-]*\d){7,}")
# A key before ``=`` or ``:``, bare or quoted: ``name='Ana'``, ``'nome': 'Ana'``,
# ``"to": "+55…"`` (a Python repr, a JSON text).
_KEY = re.compile(r"""(?P<quote>['"]?)\b(?P<key>[A-Za-z_][\w-]*)(?P=quote)[ \t]*[:=][ \t]*""")
_CLOSING = {"[": "]", "{": "}", "(": ")"}


def is_personal_key(name: object) -> bool:
    return isinstance(name, str) and name.strip().lower().replace("-", "_") in PERSONAL_KEYS


def _value_end(text: str, start: int) -> int | None:
    """Where a quoted string or a bracketed value starting at ``start`` ends, if it does."""
    if start >= len(text):
        return None
    first = text[start]
    if first in "'\"":
        index = start + 1
        while index < len(text):
            if text[index] == "\\":
                index += 2
                continue
            if text[index] == first:
                return index + 1
            index += 1
        return None
    if first not in _CLOSING:
        return None  # a bare value (``to=sending``): a state or an id, not quoted data
    depth, index, quote = 0, start, ""
    while index < len(text):
        char = text[index]
        if quote:
            if char == "\\":
                index += 1
            elif char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char in _CLOSING:
            depth += 1
        elif char in _CLOSING.values():
            depth -= 1
            if depth == 0:
                return index + 1
        index += 1
    return None


def mask_personal_values(text: str) -> str:
    """``text`` with the quoted or bracketed value of every personal key replaced."""
    pieces, done = [], 0
    for match in _KEY.finditer(text):
        if match.start() < done or not is_personal_key(match["key"]):
            continue
        end = _value_end(text, match.end())
        if end is None:
            continue
        quote = text[match.end()] if text[match.end()] in "'\"" else ""
        pieces += [text[done : match.end()], f"{quote}{FILTERED}{quote}"]
        done = end
    return "".join(pieces) + text[done:]


def mask_phones(text: str) -> str:
    return _PHONE.sub(PHONE_MASK, text)


def mask_query_values(text: str) -> str:
    """Every value of a URL's query string masked: a recipients search is ``?q=<name>``."""
    return _QUERY_PAIR.sub(lambda m: m["lead"] + FILTERED if m["value"] else m[0], text)


def redact_personal(text: str) -> str:
    """Credentials and query values in URLs, personal keys' values and phone numbers out
    of ``text``."""
    return mask_phones(mask_personal_values(mask_query_values(redact_urls(text))))
