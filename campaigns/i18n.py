"""The reader's language, time zone and local formats (Flask-Babel).

English is the source language; ``translations/pt_BR`` holds Brazilian Portuguese.
Python code marks UI text with ``_()`` (translated now, in the request's locale) or,
where text is defined at import time, with ``_l()`` (a lazy string, translated each
time it is shown; ``_lp(context, text)`` when one English word needs two translations,
such as a campaign's "Paused" and a template's); ``N_()`` only marks text that is
translated later with ``_()``.
Templates use ``_()`` and ``ngettext()`` (Jinja's i18n extension, new style).

The locale is the signed-in user's own setting, else the browser's
``Accept-Language``, else ``DEFAULT_LOCALE``. The JSON API stays English: only
its human messages follow ``Accept-Language`` (its codes never change). Times are
shown in the user's time zone (``DISPLAY_TIMEZONE`` until they choose one).

Outside a request (jobs, the CLI) the locale is the shell's (``LANG``) when it is
Portuguese or English, else ``DEFAULT_LOCALE``; code that writes for a particular
person wraps itself in :func:`for_user`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import flask_babel
import pytz
from babel import dates as babel_dates
from babel import numbers as babel_numbers
from babel.dates import get_timezone_name
from babel.numbers import NumberFormatError, parse_decimal
from flask import Flask, current_app, has_request_context, request
from flask_babel import Babel, force_locale, get_locale, get_timezone
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_babel import lazy_pgettext as _lp
from flask_babel import ngettext as ngettext
from flask_login import current_user

from campaigns.config import LOCALES

logger = logging.getLogger(__name__)

__all__ = [
    "LOCALES",
    "N_",
    "_",
    "_l",
    "_lp",
    "for_user",
    "force_locale",
    "get_locale",
    "html_lang",
    "ngettext",
    "parse_amount",
]

LOCALE_NAMES = {"en": "English", "pt_BR": "Português (Brasil)"}
API_PREFIX = "/api/"
# The catalogues: messages.pot extracted from the code (babel.cfg), one .po per
# language, compiled to the .mo that Flask-Babel reads (make messages).
TRANSLATIONS = Path(__file__).resolve().parent.parent / "translations"


def N_(text: str) -> str:
    """Mark text for extraction without translating it now (Babel's ``N_``): the code
    translates it with ``_()`` where it is shown."""
    return text


def _browser_locale() -> str | None:
    """The best of LOCALES for the request's Accept-Language, by full tag and then by
    language alone (a pt-PT browser reads pt_BR better than English)."""
    tags = [locale.replace("_", "-") for locale in LOCALES]
    best = request.accept_languages.best_match(tags)
    if best is None:
        languages = {tag.split("-")[0]: tag for tag in reversed(tags)}
        for value, quality in request.accept_languages:
            if quality <= 0:  # "pt;q=0" refuses Portuguese
                continue
            best = languages.get(value.replace("_", "-").split("-")[0].lower())
            if best:
                break
    return best.replace("-", "_") if best else None


def _environment_locale() -> str | None:
    """The shell's language for the CLI (LC_ALL, LC_MESSAGES, LANG, as gettext reads
    them): pt_BR for any Portuguese, en for English, None for C/POSIX or another."""
    for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = os.environ.get(name, "")
        if value:
            language = value.split(".")[0].split("_")[0].lower()
            return {"pt": "pt_BR", "en": "en"}.get(language)
    return None


def select_locale() -> str:
    default = str(current_app.config["DEFAULT_LOCALE"])
    if not has_request_context():
        # A CLI command speaks the shell's language; a job's texts are for a person
        # and are wrapped in for_user(), which overrides this.
        return _environment_locale() or default
    if not request.path.startswith(API_PREFIX):
        user_locale = getattr(current_user, "locale", None) if current_user else None
        if user_locale in LOCALES:
            return str(user_locale)
        return _browser_locale() or default
    # The API's messages follow the client's Accept-Language, else English.
    return (_browser_locale() or "en") if "Accept-Language" in request.headers else "en"


def select_timezone() -> str:
    if has_request_context() and current_user and getattr(current_user, "timezone", None):
        zone = str(current_user.timezone)
        if valid_timezone(zone):
            return zone
        # A zone a newer tzdata dropped: the default, not a 500 on every page.
        logger.warning("user %s: unknown time zone %r", current_user.id, zone)
    return str(current_app.config["DISPLAY_TIMEZONE"])


@contextmanager
def for_user(user: Any) -> Iterator[None]:
    """Translate and format for ``user`` (their own locale, else DEFAULT_LOCALE) inside the
    block: what a job writes to one person, such as a notification's outgoing text."""
    locale = getattr(user, "locale", None)
    with force_locale(locale if locale in LOCALES else current_app.config["DEFAULT_LOCALE"]):
        yield


def current_zone() -> ZoneInfo:
    """The reader's time zone as a ZoneInfo (Flask-Babel's is pytz, whose zones must not
    be attached with ``replace(tzinfo=…)``: that gives the zone's 1914 offset)."""
    return ZoneInfo(str(get_timezone()))


def html_lang() -> str:
    """The page's ``<html lang>``: BCP 47 (``pt-BR``, ``en``)."""
    return str(get_locale() or "en").replace("_", "-")


def valid_timezone(name: str) -> bool:
    """A zone both the system's tzdata (ZoneInfo) and Flask-Babel's pytz know: ZoneInfo
    also takes file names such as ``posix/America/Sao_Paulo`` or ``localtime``, which
    pytz refuses on every page that shows a time."""
    if name not in pytz.all_timezones_set:
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


# Brazil's four zones first (Fernando de Noronha, Brasília, Amazonas, Acre).
BRAZILIAN_ZONES = ("America/Sao_Paulo", "America/Manaus", "America/Rio_Branco", "America/Noronha")


def timezone_choices() -> list[str]:
    """Every IANA zone the system knows, Brazil's first."""
    known = available_timezones() & pytz.all_timezones_set
    others = sorted(known - set(BRAZILIAN_ZONES))
    return [*BRAZILIAN_ZONES, *(zone for zone in others if "/" in zone)]


def timezone_label(name: str | None = None) -> str:
    """The zone times are shown in, as the reader says it: "Horário de Brasília"."""
    zone = ZoneInfo(name) if name else current_zone()
    return str(get_timezone_name(zone, locale=get_locale()))


# ASCII digits: \d would also take "٣" or "३", which Babel and Decimal read as 3.
AMOUNT = re.compile(r"-?[0-9][0-9.,]*")


def parse_amount(raw: str, *, decimals: int = 2) -> Decimal:
    """An amount as a person types it, in either convention: ``1.234,56``, ``1234,56``,
    ``1,234.56``, ``1234.56``, with or without ``R$``. Raises ValueError when it is not one.

    The decimal separator is the last of ``,`` and ``.`` when followed by one to
    ``decimals`` digits; the other is a grouping separator, checked by Babel in groups
    of three. A price per message (``decimals=6``: ``0,0625`` or ``0.0625``) reads
    ``1.234`` as 1.234, money (2) as 1234.
    """
    text = raw.strip().replace("R$", "").replace("\u00a0", "").replace(" ", "")
    if not AMOUNT.fullmatch(text):  # digits and separators only: no exponent, no NaN
        raise ValueError("not an amount")
    last = max(text.rfind(","), text.rfind("."))
    fraction = 0 < len(text) - last - 1 <= decimals
    decimal_comma = last != -1 and text[last] == "," and fraction
    decimal_point = last != -1 and text[last] == "." and fraction
    if text.count(",") + text.count(".") == 1 and not (decimal_comma or decimal_point):
        decimal_comma = decimal_point = False  # "1.234" or "1,234": a thousands separator
    locale = "pt_BR" if decimal_comma or (not decimal_point and "." in text) else "en"
    try:
        value = parse_decimal(text, locale=locale, strict=True)
    except (NumberFormatError, InvalidOperation) as error:
        raise ValueError(str(error)) from error
    if not value.is_finite():
        raise ValueError("not finite")
    return value


def format_number(
    value: float | int | Decimal | None, digits: int | None = None, *, exact: bool = False
) -> str:
    """1.000.000 (pt_BR) or 1,000,000 (en); ``digits`` fixes the decimals; ``exact``
    keeps every one the value has (0,0625), where the locale's pattern rounds to 3."""
    if value is None:
        return "—"
    if exact:
        return babel_numbers.format_decimal(value, locale=get_locale(), decimal_quantization=False)
    pattern = None if digits is None else "#,##0" + ("." + "0" * digits if digits else "")
    return str(flask_babel.format_decimal(value, format=pattern))


def format_percent(value: float | None, digits: int = 1) -> str:
    """A percentage already times 100 (98.5): "98,5 %" (pt_BR) or "98.5 %" (en)."""
    if value is None:
        return "—"
    return format_number(value, digits) + "\u00a0%"


def format_money(
    value: float | Decimal | None, currency: str = "BRL", *, exact: bool = False
) -> str:
    """R$ 1.234,56 (pt_BR) or R$1,234.56 (en); ``exact`` keeps decimals past the
    currency's cents (a price per message: US$ 0,0625)."""
    if value is None:
        return "—"
    if exact:
        return babel_numbers.format_currency(
            value, currency, locale=get_locale(), decimal_quantization=False
        )
    return str(flask_babel.format_currency(value, currency))


def format_datetime(value: datetime | None, fmt: str = "short") -> str:
    """A timestamp in the reader's time zone: 04/12/2026 14:30 (pt_BR)."""
    if value is None:
        return ""
    return str(flask_babel.format_datetime(value, fmt))


def format_date(value: date | datetime | None, fmt: str = "short") -> str:
    """A day (04/12/2026 in pt_BR); a timestamp's in the reader's time zone."""
    if value is None:
        return ""
    return str(flask_babel.format_date(value, fmt))


def format_time(value: datetime | None, fmt: str = "short") -> str:
    """A time of day in the reader's time zone: 14:30 ("short"), 14:30:05 ("medium")."""
    if value is None:
        return ""
    return str(flask_babel.format_time(value, fmt))


def weekday_names(width: Literal["abbreviated", "wide"] = "wide") -> list[str]:
    """The days of the week in the reader's language, Monday first (a window's days: 0-6)."""
    names = babel_dates.get_day_names(width, locale=get_locale())
    return [str(names[day]) for day in range(7)]


def input_datetime(value: datetime | None) -> str:
    """The value of a ``datetime-local`` input, in the reader's time zone (the browser
    shows it the local way; the wire format is ISO)."""
    if value is None:
        return ""
    return value.astimezone(current_zone()).strftime("%Y-%m-%dT%H:%M")


def format_ago(value: datetime | None, now: datetime | None = None) -> str:
    """How long ago (or from now): "há 5 minutos", "in 3 hours"."""
    if value is None:
        return ""
    reference = now or datetime.now(value.tzinfo)
    delta: timedelta = value - reference
    return str(flask_babel.format_timedelta(delta, add_direction=True, threshold=0.9))


def init_app(app: Flask) -> None:
    app.config.setdefault("DEFAULT_LOCALE", "pt_BR")
    app.config["BABEL_DEFAULT_LOCALE"] = "en"  # the source language of the msgids
    app.config["BABEL_TRANSLATION_DIRECTORIES"] = str(TRANSLATIONS)
    Babel(app, locale_selector=select_locale, timezone_selector=select_timezone)
    # Flask-Babel keeps the choice in ``g``, which lives as long as the app context: a
    # request inside an app context already pushed (a test, a CLI command calling views)
    # would otherwise read the previous request's language.
    app.before_request(flask_babel.refresh)
    app.jinja_env.filters.update(
        number=format_number,
        percent=format_percent,
        money=format_money,
        datetime=format_datetime,
        date=format_date,
        time=format_time,
        input_datetime=input_datetime,
        ago=format_ago,
    )
    app.jinja_env.globals.update(
        html_lang=html_lang,
        timezone_label=timezone_label,
        current_zone=current_zone,
        weekday_names=weekday_names,
        LOCALE_NAMES=LOCALE_NAMES,
    )
