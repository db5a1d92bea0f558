"""Phone numbers in E.164, as WhatsApp wants them.

Brazilian numbers are the common case: a national number (with or without the
leading 0 and carrier code) gets +55; mobiles written without the ninth digit are
left as they are (WhatsApp still routes them). Anything else must carry its ``+``
and country code.
"""

from __future__ import annotations

import re

DEFAULT_COUNTRY_CODE = "55"
E164 = re.compile(r"\+[1-9][0-9]{7,14}")
_SEPARATORS = re.compile(r"[\s().\-/]")


def normalise(raw: str | None, default_country_code: str = DEFAULT_COUNTRY_CODE) -> str | None:
    """The E.164 form of a phone number, or None when it cannot be one."""
    if raw is None:
        return None
    text = _SEPARATORS.sub("", str(raw).strip())
    if text.startswith("00"):
        text = "+" + text[2:]
    if not text.startswith("+"):
        digits = text.lstrip("0")
        if not digits.isdigit():
            return None
        if default_country_code == "55" and len(digits) in (10, 11):
            text = "+55" + digits  # DDD + number
        elif digits.startswith(default_country_code) and len(digits) >= 12:
            text = "+" + digits
        else:
            return None
    return text if E164.fullmatch(text) else None
