"""A recipient's time zone: from a customer field naming an IANA zone, else from the number.

The sending window (``send_windows.py``) is applied in this zone, so what matters is
never to message someone at night: the zone a number gives is a guess, made the
conservative way where the data allows, and explained where it cannot be.

- **Brazil** by area code (DDD), from a table of our own (:data:`BRAZIL_DDD`).
  phonenumbers' timezone data is coarse there: DDD 81 (Recife, UTC-3) comes back as
  America/Noronha (UTC-2), and others as a zone of another state.
- **Other countries** from phonenumbers' timezone data (maintained with the library's
  releases). One zone: that one. Several (a country whose numbers do not say where, as
  Spanish, Russian or Australian mobiles): the country's main zone, where most of its
  people keep time (:func:`main_zones`: the first of the candidates in the order the tz
  database lists the country's zones, which puts the most populous first where geography
  allows, and :data:`MAIN_ZONES` where it does not), so a Spanish mobile is Madrid's, not
  the Canaries'; when none of the candidates is listed for the number's country: all of
  one UTC offset, the first; else the candidate in the middle by UTC offset, so the hour
  used is off by at most half the spread either way. An operator who knows better gives
  ``time_zone_field``. None (``Etc/Unknown``: a non-geographic number): the fallback.
- **A customer field or CSV column** (the campaign's ``time_zone_field``) naming an IANA
  zone wins; a value that is not one (checked with zoneinfo) falls back to the number.

The final fallback is the business's own zone, ``DISPLAY_TIMEZONE`` (the zone the
operators schedule in), so a number nothing places is messaged in their hours.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import TZPATH, ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as phone_timezones

# messages.time_zone's width: the longest IANA name is 32 characters.
WIDTH = 64

SAO_PAULO = "America/Sao_Paulo"  # UTC-3: Brasília time, most of the country
MANAUS = "America/Manaus"  # UTC-4: AM (most), RR, RO, MT, MS
RIO_BRANCO = "America/Rio_Branco"  # UTC-5: AC, and the south-west of AM
NORONHA = "America/Noronha"  # UTC-2: Fernando de Noronha, which has no DDD of its own (81)

# Brazil's area codes (DDD) to their state's zone. Sources: Anatel's national code plan
# (Plano Geral de Códigos Nacionais: the DDDs in use and their states) and the tz
# database's zone.tab (each state's zone). The four zones stand for the state zones of
# equal offset (America/Cuiaba, Campo_Grande, Porto_Velho and Boa_Vista keep Manaus
# time; Bahia, Fortaleza, Recife, Belem, Araguaina... Brasília's): Brazil has kept no
# daylight saving time since 2019; should it return for some states only, this table
# must name the state zones. Where a DDD spans two zones the table says so and picks
# the one most of its municipalities keep (one zone per DDD: the others are an hour off
# at the window's edges):
# - 97 (western Amazonas): Tefé, Coari, Tabatinga... keep Manaus time (UTC-4); the
#   south-west (Eirunepé, Envira, Guajará, Ipixuna, Boca do Acre, Pauini...) keeps
#   Acre's (UTC-5, America/Eirunepe).
# - 81 (Recife) also serves Fernando de Noronha (UTC-2): Recife's.
BRAZIL_DDD: dict[str, str] = {
    **{str(ddd): SAO_PAULO for ddd in range(11, 20)},  # SP
    **{ddd: SAO_PAULO for ddd in ("21", "22", "24", "27", "28")},  # RJ, ES
    **{ddd: SAO_PAULO for ddd in ("31", "32", "33", "34", "35", "37", "38")},  # MG
    **{str(ddd): SAO_PAULO for ddd in range(41, 50)},  # PR, SC
    **{ddd: SAO_PAULO for ddd in ("51", "53", "54", "55")},  # RS
    **{ddd: SAO_PAULO for ddd in ("61", "62", "63", "64")},  # DF, GO, TO
    **{ddd: MANAUS for ddd in ("65", "66")},  # MT
    "67": MANAUS,  # MS
    "68": RIO_BRANCO,  # AC
    "69": MANAUS,  # RO
    **{ddd: SAO_PAULO for ddd in ("71", "73", "74", "75", "77", "79")},  # BA, SE
    **{str(ddd): SAO_PAULO for ddd in range(81, 90)},  # PE, AL, PB, RN, CE, PI
    **{ddd: SAO_PAULO for ddd in ("91", "93", "94")},  # PA
    "92": MANAUS,  # AM (Manaus)
    "95": MANAUS,  # RR
    "96": SAO_PAULO,  # AP
    "97": MANAUS,  # AM (interior): see above, part of it keeps UTC-5
    **{ddd: SAO_PAULO for ddd in ("98", "99")},  # MA
}
# A Brazilian number whose DDD is not in the table (none in use is missing): Brasília's,
# the zone of most of the country.
BRAZIL_DEFAULT = SAO_PAULO


def is_zone(name: str) -> bool:
    """Whether ``name`` is an IANA zone zoneinfo knows (not a path, not "localtime")."""
    if not name or len(name) > WIDTH or name.startswith(("/", ".")) or name == "localtime":
        return False
    return _loads(name)


# Bounded: the names come from customer data (any field may be the time zone field), so
# a million recipients' distinct values must not stay in a worker's memory; the length
# check above keeps each key short.
@lru_cache(maxsize=1024)
def _loads(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def from_field(value: Any) -> str | None:
    """A customer field's or CSV cell's zone, if it names one (surrounding spaces aside)."""
    if not isinstance(value, str):
        return None
    name = value.strip()
    return name if is_zone(name) else None


@lru_cache(maxsize=4096)
def from_number(phone: str, fallback: str) -> str:
    """The zone of an E.164 number (module docstring); ``fallback`` when nothing places it.

    A Brazilian number is a dictionary lookup; another is parsed by phonenumbers (about
    40 µs on this machine's 2 cores). The cache is bounded: numbers rarely repeat.
    """
    if phone.startswith("+55"):
        return BRAZIL_DDD.get(phone[3:5], BRAZIL_DEFAULT)
    try:
        number = phonenumbers.parse(phone)
    except phonenumbers.NumberParseException:
        return fallback
    zones = [
        zone
        for zone in phone_timezones.time_zones_for_number(number)
        if zone != phone_timezones.UNKNOWN_TIMEZONE and is_zone(zone)
    ]
    if not zones:
        return fallback
    return representative(zones, phonenumbers.region_code_for_number(number))


# Offsets are compared at these two instants (a northern and a southern summer), so zones
# that differ only part of the year are told apart.
_SEASONS = (datetime(2026, 1, 15, 12, tzinfo=UTC), datetime(2026, 7, 15, 12, tzinfo=UTC))


def representative(zones: list[str], region: str | None = None) -> str:
    """One zone for a number of ``region`` (ISO 3166 code) that could be in any of
    ``zones``: the country's main zone among them (:func:`main_zones`); else the first if
    they keep the same hours all year, else the one in the middle by UTC offset (ties:
    the first)."""
    for zone in main_zones(region):
        if zone in zones:
            return zone

    def offsets(zone: str) -> tuple[timedelta, ...]:
        return tuple(at.astimezone(ZoneInfo(zone)).utcoffset() or timedelta() for at in _SEASONS)

    if len({offsets(zone) for zone in zones}) == 1:
        return zones[0]
    ordered = sorted(zones, key=lambda zone: (sum(offsets(zone), timedelta()), zones.index(zone)))
    return ordered[(len(ordered) - 1) // 2]


# Countries whose zones the tz database lists in an order that puts a minority first
# among a number's candidates (its order follows geography first): their main zone,
# tried before the others. Australia: Lord Howe Island (some 400 people) comes first.
MAIN_ZONES: dict[str, tuple[str, ...]] = {
    "AU": ("Australia/Sydney",),
}


@cache
def main_zones(region: str | None) -> tuple[str, ...]:
    """A country's zones, its main one first: :data:`MAIN_ZONES`, then the order of the
    tz database's zone.tab ("the most populous zones first, where that does not
    contradict geography"); empty for a region it does not list."""
    if not region:
        return ()
    listed = _zone_tab().get(region, ())
    return MAIN_ZONES.get(region, ()) + listed


@cache
def _zone_tab() -> dict[str, tuple[str, ...]]:
    """zone.tab's zones by country, in its order: from the tzdata package (pinned in
    requirements.txt, through python-dateutil), else the system's zoneinfo directory;
    none found, every number of several zones takes the rule by offsets."""
    text = None
    try:
        text = resources.files("tzdata.zoneinfo").joinpath("zone.tab").read_text("utf-8")
    except (ModuleNotFoundError, OSError):
        for directory in TZPATH:
            try:
                text = Path(directory, "zone.tab").read_text("utf-8")
                break
            except OSError:
                continue
    zones: dict[str, list[str]] = {}
    for line in (text or "").splitlines():
        fields = line.split("\t")
        if line.startswith("#") or len(fields) < 3:
            continue
        zones.setdefault(fields[0], []).append(fields[2])
    return {region: tuple(names) for region, names in zones.items()}


def for_recipient(
    phone: str | None, customer: Mapping[str, Any], field: str | None, fallback: str
) -> str | None:
    """The recipient's zone: the customer's ``field`` if it names a zone, else the number's;
    None without a valid number (a skipped row: no message is sent to it)."""
    if field and (named := from_field(customer.get(field))):
        return named
    return from_number(phone, fallback) if phone else None
