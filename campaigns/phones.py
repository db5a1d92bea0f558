"""Phone numbers in E.164, as WhatsApp wants them.

Numbers are parsed by ``phonenumbers`` (Google's libphonenumber metadata) in a
default region, Brazil unless told otherwise, and only numbers it deems valid
pass, so a made-up number (``1100000000``) or area code (10) is refused rather
than sent to WhatsApp.

Written without ``+``, a number is read the way an operator in the default region
types it. For Brazil that is: separators anywhere; the national form with or
without the leading 0 (``(11) 98765-4321``, ``011 98765 4321``); with a carrier
code after the 0 (``0 21 11 98765-4321``) or the ``0xx`` placeholder for it
(``0xx11 98765-4321``); and with the country code but no plus (``55 11 98765-4321``).
A leading ``00`` starts an international number (``0055 11 98765 4321``), as does
``+``; any other country's number must carry its country code that way.

Brazilian mobiles written in the old 8-digit format (the subscriber starting 6-9,
``(11) 8765-4321``) get the ninth digit every mobile has carried since 2016;
landlines (starting 2-5) keep their 8 digits.

Letters are refused, apart from the ``xx`` placeholder: libphonenumber would read
them as keypad digits, and here they are typos, not vanity numbers.
"""

from __future__ import annotations

import re

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumber

DEFAULT_REGION = "BR"
BRAZIL = 55
# Far above any way of writing a real number; longer input is not worth parsing.
MAX_INPUT_LENGTH = 64
# Spaces, brackets, dots, dashes, slashes, and the invisible format characters a copied
# number can carry: zero-width spaces and joiners, direction marks, the word joiner the
# CSV export puts before a phone (campaigns/csvfiles.py), a byte order mark.
_SEPARATORS = re.compile(r"[\s().\-/\u2010-\u2015\u2212\u200b-\u200f\u2060\ufeff]")
# 0xx11: the trunk 0, then "xx" where the caller picks a carrier code.
_CARRIER_PLACEHOLDER = re.compile(r"^0xx", re.IGNORECASE)
_DIALLABLE = re.compile(r"\+?[0-9]+")
_OLD_MOBILE_FIRST_DIGITS = "6789"


def normalise(raw: str | None, region: str = DEFAULT_REGION) -> str | None:
    """The E.164 form of a phone number, or None when it cannot be one.

    ``region`` is the ISO 3166 code national numbers are read in (``BR``, ``US``).
    """
    if raw is None:
        return None
    text = _diallable(str(raw))
    if text is None:
        return None
    for candidate in _readings(text):
        number = _valid_number(candidate, region.upper())
        if number is not None:
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return None


def is_known_region(region: str) -> bool:
    """Whether phonenumbers has metadata for this region code (upper case)."""
    return region in phonenumbers.SUPPORTED_REGIONS


def _diallable(text: str) -> str | None:
    """Just the digits and a leading ``+``, or None if anything else is in there."""
    text = text.strip()
    if len(text) > MAX_INPUT_LENGTH:
        return None
    text = _ascii_digits(text)
    text = _CARRIER_PLACEHOLDER.sub("0", _SEPARATORS.sub("", text))
    return text if _DIALLABLE.fullmatch(text) else None


def _ascii_digits(text: str) -> str:
    """Full-width, Arabic-Indic and other decimal digits as ASCII; a full-width plus as ``+``."""
    if text.isascii():
        return text  # the common case, at a tenth of the cost
    digits = (str(int(char)) if char.isdecimal() else char for char in text)
    return "".join(digits).replace("\uff0b", "+")


def _readings(text: str) -> list[str]:
    """The ways to read the number, most likely first."""
    if text.startswith("00"):
        # How Brazilians write international numbers (0055…); the region's own
        # reading then covers dialling through a carrier (0021 55…) or 011 in the US.
        return ["+" + text[2:], text]
    return [text]


def _valid_number(text: str, region: str) -> PhoneNumber | None:
    shortcut = _brazilian_without_prefix(text, region)
    if shortcut is not None:
        number = _valid_or_ninth_digit(shortcut)
        if number is not None:
            return number
    try:
        number = phonenumbers.parse(text, region)
    except NumberParseException:
        return None
    return _valid_or_ninth_digit(number)


def _valid_or_ninth_digit(number: PhoneNumber) -> PhoneNumber | None:
    if phonenumbers.is_valid_number(number):
        return number
    return _with_ninth_digit(number)


def _brazilian_without_prefix(text: str, region: str) -> PhoneNumber | None:
    """The number ``parse`` would read, built directly, for the shape ERPs mostly hold.

    A Brazilian number with its area code, as ``+55`` and 10 or 11 digits, or (in region
    BR) as those digits alone, and not starting with the national prefix (0, or 90
    with a carrier code): ``parse`` strips nothing from it and reads the same country
    and national number, at four times the cost. A fan-out normalises every customer's
    phone, so this is most of its CPU (bench/README.md). Anything else is parsed.
    """
    if text.startswith("+55"):
        national = text[3:]
    elif region == "BR" and not text.startswith("+"):
        national = text
    else:
        return None
    if len(national) not in (10, 11) or national.startswith(("0", "90")):
        return None
    return PhoneNumber(country_code=BRAZIL, national_number=int(national))


def _with_ninth_digit(number: PhoneNumber) -> PhoneNumber | None:
    """A Brazilian mobile in the old 8-digit format, with the 9 it now starts with."""
    national = str(number.national_number)
    if number.country_code != BRAZIL or len(national) != 10:
        return None
    area, subscriber = national[:2], national[2:]
    if subscriber[0] not in _OLD_MOBILE_FIRST_DIGITS:
        return None
    mobile = PhoneNumber(country_code=BRAZIL, national_number=int(area + "9" + subscriber))
    return mobile if phonenumbers.is_valid_number(mobile) else None
