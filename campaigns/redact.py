"""Credentials out of text that names URLs, before a user or a notification sees it.

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
