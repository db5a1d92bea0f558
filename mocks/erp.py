"""The mock ERP: a large, deterministic customer base served over HTTP, like a real ERP.

Customer *n* (1..``MOCK_ERP_CUSTOMERS``) is computed from *n* alone — splitmix64
hashes of *n*, one per attribute — so a million customers cost no storage and
every process sees the same ones. Filtering a million customers per keystroke is
too slow in a Python loop, so the attributes are computed once per process as
numpy arrays (cached by size) and segments are evaluated as vectorised masks;
only the rows of a returned page are turned into JSON.

``GET /mock/erp/customers?<filters>&cursor=&limit=`` pages a segment in id order
(``{"customers": [...], "next_cursor": ...}``), ``GET /mock/erp/customers/count``
counts it, ``GET /mock/erp/customers/C0000042`` reads one customer and ``GET
/mock/erp/tags`` lists the tags a segment can name (``{"tags": ["vip", ...]}``).
Filters: ``city`` (accents and case aside: "sao paulo" is São Paulo), ``state``
(case-insensitive), ``tags`` (comma-separated, any of them), ``min_total_spent``,
``last_purchase_within_days``, ``opted_in_only`` and ``max_audience`` (the first N
matches); a bad one is a 400 with a message per field.

About 1 % of phones are invalid (too short, or with letters) and about 1 % repeat
an earlier customer's phone, so the fan-out's validation and de-duplication have
something to do. Latency and failures can be injected (``MOCK_ERP_LATENCY_MS``,
``MOCK_ERP_FAILURE_RATE``) because this stands in for a remote system.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import random
import re
import threading
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as clock_time
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

import numpy as np
from flask import Blueprint, current_app, jsonify, request
from werkzeug.wrappers import Response

from campaigns.erp import SEGMENT_KEYS
from campaigns.search import fold

logger = logging.getLogger(__name__)

bp = Blueprint("mock_erp", __name__, url_prefix="/mock/erp")

# name, UF, area code (DDD), weight (population in thousands, so big cities dominate)
CITIES: tuple[tuple[str, str, str, int], ...] = (
    ("São Paulo", "SP", "11", 11_450),
    ("Rio de Janeiro", "RJ", "21", 6_212),
    ("Brasília", "DF", "61", 2_817),
    ("Fortaleza", "CE", "85", 2_428),
    ("Salvador", "BA", "71", 2_418),
    ("Belo Horizonte", "MG", "31", 2_315),
    ("Manaus", "AM", "92", 2_063),
    ("Curitiba", "PR", "41", 1_773),
    ("Recife", "PE", "81", 1_488),
    ("Goiânia", "GO", "62", 1_437),
    ("Porto Alegre", "RS", "51", 1_332),
    ("Belém", "PA", "91", 1_303),
    ("Campinas", "SP", "19", 1_139),
    ("Florianópolis", "SC", "48", 537),
    ("Niterói", "RJ", "21", 481),
)
# tag, share of customers carrying it (independently of the other tags)
TAGS: tuple[tuple[str, float], ...] = (
    ("vip", 0.05),
    ("newsletter", 0.40),
    ("churn-risk", 0.12),
    ("b2b", 0.08),
    ("promo", 0.25),
)
FIRST_NAMES = (
    "Ana", "Maria", "Francisca", "Antônia", "Adriana", "Juliana", "Márcia", "Fernanda",
    "Patrícia", "Aline", "Camila", "Beatriz", "Larissa", "Letícia", "Gabriela", "Luíza",
    "José", "João", "Antônio", "Francisco", "Carlos", "Paulo", "Pedro", "Lucas",
    "Luiz", "Marcos", "Gabriel", "Rafael", "Daniel", "Marcelo", "Bruno", "Eduardo",
    "Felipe", "Rodrigo", "Gustavo", "Matheus", "Thiago", "Vitória", "Conceição", "Raimundo",
)  # fmt: skip
LAST_NAMES = (
    "Silva", "Santos", "Oliveira", "Souza", "Rodrigues", "Ferreira", "Alves", "Pereira",
    "Lima", "Gomes", "Costa", "Ribeiro", "Martins", "Carvalho", "Almeida", "Lopes",
    "Soares", "Fernandes", "Vieira", "Barbosa", "Rocha", "Dias", "Nascimento", "Andrade",
    "Moreira", "Nunes", "Marques", "Machado", "Mendes", "Freitas", "Cardoso", "Araújo",
)  # fmt: skip

MAX_PAGE = 1000
DEFAULT_PAGE = 500
MAX_DAYS_AGO = 730
INVALID_PHONE_SHARE = 0.01
DUPLICATE_PHONE_SHARE = 0.01
OPTED_IN_SHARE = 0.85
# Each customer's language as a CRM keeps it: mostly Brazilian Portuguese, some English
# and Spanish, a few left empty (a campaign's language field falls back for them).
LANGUAGES: tuple[tuple[str, float], ...] = (
    ("pt_BR", 0.82),
    ("en_US", 0.08),
    ("es", 0.06),
    ("", 0.04),
)
MEAN_SPENT_CENTS = 45_000
MEAN_DAYS_AGO = 120
# The segment filters a real ERP must understand: the client's own vocabulary.
FILTERS = tuple(sorted(SEGMENT_KEYS))
CUSTOMER_ID = re.compile(r"C(\d{7})")
WHOLE_NUMBER = re.compile(r"\d{1,9}")
UF = re.compile(r"[A-Za-z]{2}")

_MASK64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_SALTS = {
    "city": 1,
    "first": 2,
    "last": 3,
    "tags": 4,
    "spent": 5,
    "days": 6,
    "second": 7,
    "opted_in": 8,
    "phone": 9,
    "duplicate_of": 10,
    "language": 11,
}
_CITY_CUMULATIVE = np.cumsum([w for *_, w in CITIES]) / sum(w for *_, w in CITIES)
_STATES = tuple(sorted({uf for _, uf, _, _ in CITIES}))
_STATE_OF_CITY = np.array([_STATES.index(uf) for _, uf, _, _ in CITIES], dtype=np.uint8)
_CITY_BY_NAME = {fold(name): i for i, (name, *_) in enumerate(CITIES)}
_TAG_BITS = {tag: 1 << i for i, (tag, _) in enumerate(TAGS)}
_LANGUAGE_CUMULATIVE = np.cumsum([w for _, w in LANGUAGES]) / sum(w for _, w in LANGUAGES)


def _ascii(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()


_FIRST_ASCII = tuple(_ascii(name) for name in FIRST_NAMES)
_LAST_ASCII = tuple(_ascii(name) for name in LAST_NAMES)


def _hash(ids: np.ndarray, field: str) -> np.ndarray:
    """splitmix64 of (id, field): an independent uniform 64-bit word per attribute."""
    # Array arithmetic on uint64 wraps silently (scalars would warn), as the hash needs.
    salt = np.uint64((_SALTS[field] * 0xD1B54A32D192ED03) & _MASK64)
    x = ids.astype(np.uint64) * _GOLDEN + salt
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def _uniform(ids: np.ndarray, field: str) -> np.ndarray:
    """Floats in [0, 1) from the top 53 bits of the hash."""
    return (_hash(ids, field) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _city_index(ids: np.ndarray) -> np.ndarray:
    return np.searchsorted(_CITY_CUMULATIVE, _uniform(ids, "city"), side="right").astype(np.uint8)


def _phone_roll(ids: np.ndarray) -> np.ndarray:
    return _uniform(ids, "phone")


def _is_duplicate(ids: np.ndarray) -> np.ndarray:
    roll = _phone_roll(ids)
    share = INVALID_PHONE_SHARE + DUPLICATE_PHONE_SHARE
    # Customer 1 has nobody before it to copy.
    return (roll >= INVALID_PHONE_SHARE) & (roll < share) & (ids > 1)


def _duplicate_of(ids: np.ndarray) -> np.ndarray:
    """An earlier customer, so walking in id order meets the original first."""
    earlier = (ids - 1).astype(np.uint64)
    return (_hash(ids, "duplicate_of") % earlier).astype(np.int64) + 1


def _phone_sources(ids: np.ndarray) -> np.ndarray:
    """The customer whose base number each customer shows (itself unless a duplicate)."""
    source = ids.copy()
    pending = _is_duplicate(source)
    # A duplicate of a duplicate follows the chain; targets only decrease, so it ends.
    while pending.any():
        source[pending] = _duplicate_of(source[pending])
        pending[pending] = _is_duplicate(source[pending])
    # A chain ending on an invalid number has no valid number to copy: keep our own.
    copied_invalid = (source != ids) & (_phone_roll(source) < INVALID_PHONE_SHARE)
    source[copied_invalid] = ids[copied_invalid]
    return source


@dataclass(frozen=True)
class Customers:
    """Every attribute of a run of customers, one numpy array per field, aligned with ids."""

    ids: np.ndarray  # int64
    city: np.ndarray  # uint8 index into CITIES
    state: np.ndarray  # uint8 index into _STATES
    first: np.ndarray  # uint8 index into FIRST_NAMES
    last: np.ndarray  # uint8 index into LAST_NAMES
    tags: np.ndarray  # uint8 bit mask over TAGS
    spent_cents: np.ndarray  # int64
    days_ago: np.ndarray  # int16, 1..MAX_DAYS_AGO
    second_of_day: np.ndarray  # int32
    opted_in: np.ndarray  # bool
    phone_source: np.ndarray  # int64: whose number this customer shows
    phone_source_city: np.ndarray  # uint8: that customer's city (the area code)
    phone_kind: np.ndarray  # uint8: 0 valid, 1 too short, 2 letters
    language: np.ndarray  # uint8 index into LANGUAGES


def generate(ids: np.ndarray) -> Customers:
    """Compute the customers with these ids; each row depends on its own id only."""
    ids = np.asarray(ids, dtype=np.int64)
    city = _city_index(ids)
    tags = np.zeros(len(ids), dtype=np.uint8)
    tag_hash = _hash(ids, "tags")
    for bit, (_, share) in enumerate(TAGS):
        # 12 bits of the one hash per tag, so tags are drawn independently.
        draw = (tag_hash >> np.uint64(12 * bit)) & np.uint64(0xFFF)
        tags |= (draw < np.uint64(round(share * 4096))).astype(np.uint8) << np.uint8(bit)
    spent = np.floor(-np.log1p(-_uniform(ids, "spent")) * MEAN_SPENT_CENTS).astype(np.int64)
    days = 1 + np.floor(-np.log1p(-_uniform(ids, "days")) * MEAN_DAYS_AGO)
    roll = _phone_roll(ids)
    invalid = roll < INVALID_PHONE_SHARE
    # Which way an invalid number is broken: a bit of the hash the roll does not use.
    broken_kind = 1 + (_hash(ids, "phone") & np.uint64(1)).astype(np.uint8)
    source = _phone_sources(ids)
    return Customers(
        ids=ids,
        city=city,
        state=_STATE_OF_CITY[city],
        first=(_hash(ids, "first") % np.uint64(len(FIRST_NAMES))).astype(np.uint8),
        last=(_hash(ids, "last") % np.uint64(len(LAST_NAMES))).astype(np.uint8),
        tags=tags,
        spent_cents=spent,
        days_ago=np.minimum(days, MAX_DAYS_AGO).astype(np.int16),
        second_of_day=(_hash(ids, "second") % np.uint64(86_400)).astype(np.int32),
        opted_in=_uniform(ids, "opted_in") < OPTED_IN_SHARE,
        phone_source=source,
        phone_source_city=_city_index(source),
        phone_kind=np.where(invalid, broken_kind, 0).astype(np.uint8),
        language=np.minimum(
            np.searchsorted(_LANGUAGE_CUMULATIVE, _uniform(ids, "language"), side="right"),
            len(LANGUAGES) - 1,
        ).astype(np.uint8),
    )


_customers: dict[int, Customers] = {}
_customers_lock = threading.Lock()
_CACHED_SIZES = 2  # the configured size, plus one more for tests that switch sizes


def customers_for(total: int) -> Customers:
    """Customers 1..total, computed once per process and size, then shared."""
    with _customers_lock:
        found = _customers.get(total)
        if found is None:
            started = time.perf_counter()
            found = generate(np.arange(1, total + 1, dtype=np.int64))
            while len(_customers) >= _CACHED_SIZES:
                _customers.pop(next(iter(_customers)))
            _customers[total] = found
            elapsed_ms = (time.perf_counter() - started) * 1000
            logger.info("mock ERP: computed %d customers in %.0f ms", total, elapsed_ms)
        return found


def clear_cache() -> None:
    """Forget every computed customer base and segment (tests; memory)."""
    with _customers_lock:
        _customers.clear()
    _select.cache_clear()


@dataclass(frozen=True)
class Segment:
    """A parsed, normalised segment: hashable, so selections can be cached by it."""

    city: str | None = None  # folded: lower case, without accents (campaigns/search.py)
    state: str | None = None  # upper case
    tags: frozenset[str] = frozenset()
    min_spent_cents: int | None = None
    within_days: int | None = None
    opted_in_only: bool = False
    max_audience: int | None = None


class InvalidRequest(Exception):
    """A query parameter the ERP cannot use; answered as 400 with one message per field."""

    def __init__(self, code: str, fields: dict[str, str]) -> None:
        super().__init__(f"{code}: {fields}")
        self.code = code
        self.fields = fields


PAGE_PARAMS = frozenset({"cursor", "limit"})


def _whole_number(raw: str, low: int, high: int) -> int | None:
    if not WHOLE_NUMBER.fullmatch(raw):
        return None
    value = int(raw)
    return value if low <= value <= high else None


def _segment_errors(values: dict[str, str]) -> dict[str, str]:
    errors: dict[str, str] = {}
    state = values["state"]
    if state and not UF.fullmatch(state):
        errors["state"] = "must be a two-letter state code (UF), like SP"
    unknown = sorted({tag for tag in _tag_names(values["tags"]) if tag not in _TAG_BITS})
    if unknown:
        known = ", ".join(tag for tag, _ in TAGS)
        errors["tags"] = f"unknown tag {', '.join(unknown)}; known tags: {known}"
    if values["min_total_spent"] and _cents_at_least(values["min_total_spent"]) is None:
        errors["min_total_spent"] = "must be an amount of 0 or more, like 150.00"
    days = values["last_purchase_within_days"]
    if days and _whole_number(days, 1, 36_500) is None:
        errors["last_purchase_within_days"] = "must be a whole number of days from 1 to 36500"
    if values["opted_in_only"] and values["opted_in_only"].lower() not in ("true", "false"):
        errors["opted_in_only"] = "must be true or false"
    cap = values["max_audience"]
    if cap and _whole_number(cap, 1, 999_999_999) is None:
        errors["max_audience"] = "must be a whole number of 1 or more"
    return errors


def _tag_names(raw: str) -> frozenset[str]:
    return frozenset(tag.strip().lower() for tag in raw.split(",") if tag.strip())


def _cents_at_least(raw: str) -> int | None:
    """The smallest whole number of cents that is >= the amount, or None if not an amount."""
    try:
        amount = Decimal(raw)
    except InvalidOperation:
        return None
    if not amount.is_finite() or amount < 0:
        return None
    # Clamped so the comparison stays inside int64; nobody has spent that much.
    return min(math.ceil(amount * 100), 2**62)


def parse_segment(args: Mapping[str, str], allowed: frozenset[str] = frozenset()) -> Segment:
    """The segment in these query parameters; :class:`InvalidRequest` lists every bad one."""
    # Blank values mean "no filter", as an empty form field would.
    values = {name: (args.get(name) or "").strip() for name in FILTERS}
    errors = _segment_errors(values)
    for name in args:
        if name not in FILTERS and name not in allowed:
            errors[name] = "is not a filter this ERP knows"
    if errors:
        raise InvalidRequest("invalid_segment", errors)
    days = values["last_purchase_within_days"]
    cap = values["max_audience"]
    spent = values["min_total_spent"]
    return Segment(
        # A value folding to nothing (only combining marks) is no city: it finds nobody.
        city=fold(values["city"]) or values["city"] or None,
        state=values["state"].upper() or None,
        tags=_tag_names(values["tags"]),
        min_spent_cents=_cents_at_least(spent) if spent else None,
        within_days=int(days) if days else None,
        opted_in_only=values["opted_in_only"].lower() == "true",
        max_audience=int(cap) if cap else None,
    )


def encode_cursor(last_id: int) -> str:
    """An opaque cursor: the last customer of the page, base64-wrapped."""
    return base64.urlsafe_b64encode(f"v1:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int | None:
    """The last customer id a cursor stands for, or None if this ERP did not issue it."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    match = re.fullmatch(r"v1:(\d{1,9})", text)
    return int(match.group(1)) if match else None


def parse_page(args: Mapping[str, str]) -> tuple[int, int]:
    """(customers already seen, page size) from ``cursor`` and ``limit``."""
    errors: dict[str, str] = {}
    after = 0
    cursor = (args.get("cursor") or "").strip()
    if cursor:
        decoded = decode_cursor(cursor)
        if decoded is None:
            errors["cursor"] = "is not a cursor this ERP issued"
        else:
            after = decoded
    limit = DEFAULT_PAGE
    raw_limit = (args.get("limit") or "").strip()
    if raw_limit:
        parsed = _whole_number(raw_limit, 1, MAX_PAGE)
        if parsed is None:
            errors["limit"] = f"must be a whole number from 1 to {MAX_PAGE}"
        else:
            limit = parsed
    if errors:
        raise InvalidRequest("invalid_page", errors)
    return after, limit


@dataclass(frozen=True)
class Selection:
    """The customers of a segment: a mask over ids (None: all), capped by max_audience."""

    mask: np.ndarray | None
    count: int
    end: int  # index just past the last customer in the audience


def _mask(customers: Customers, segment: Segment) -> np.ndarray | None:
    conditions: list[np.ndarray] = []
    nobody = np.zeros(len(customers.ids), dtype=bool)
    if segment.city is not None:
        city = _CITY_BY_NAME.get(segment.city)
        conditions.append(nobody if city is None else customers.city == city)
    if segment.state is not None:
        known = segment.state in _STATES
        state = _STATES.index(segment.state) if known else None
        conditions.append(nobody if state is None else customers.state == state)
    if segment.tags:
        bits = 0
        for tag in segment.tags:
            bits |= _TAG_BITS[tag]
        conditions.append((customers.tags & np.uint8(bits)) != 0)
    if segment.min_spent_cents is not None:
        conditions.append(customers.spent_cents >= segment.min_spent_cents)
    if segment.within_days is not None and segment.within_days < MAX_DAYS_AGO:
        conditions.append(customers.days_ago <= segment.within_days)
    if segment.opted_in_only:
        conditions.append(customers.opted_in)
    if not conditions:
        return None
    mask = conditions[0].copy()
    for condition in conditions[1:]:
        mask &= condition
    return mask


@lru_cache(maxsize=32)
def _select(total: int, segment: Segment) -> Selection:
    # Cached: an operator typing repeats segments, and a fan-out pages one segment
    # thousands of times. A mask over a million customers is 1 MB.
    mask = _mask(customers_for(total), segment)
    count = total if mask is None else int(np.count_nonzero(mask))
    end = total
    if segment.max_audience is not None and count > segment.max_audience:
        count = segment.max_audience
        end = count if mask is None else int(np.flatnonzero(mask)[count - 1]) + 1
    return Selection(mask, count, end)


def count(total: int, segment: Segment) -> int:
    """How many of customers 1..total the segment selects."""
    return _select(total, segment).count


def page_indexes(total: int, segment: Segment, after: int, limit: int) -> tuple[np.ndarray, bool]:
    """Indexes of the next ``limit`` selected customers after id ``after``; and more follow?"""
    selection = _select(total, segment)
    end = selection.end
    start = min(after, end)  # customer `after` sits at index after - 1
    if selection.mask is None:
        stop = min(end, start + limit)
        return np.arange(start, stop), stop < end
    found: list[np.ndarray] = []
    seen = 0
    position = start
    # Scan outward in growing chunks: a page rarely needs the whole million.
    chunk = max(4 * limit, 65_536)
    while position < end and seen <= limit:
        stop = min(end, position + chunk)
        hits = np.flatnonzero(selection.mask[position:stop]) + position
        found.append(hits)
        seen += len(hits)
        position = stop
        chunk *= 2
    indexes = np.concatenate(found) if found else np.arange(0)
    return indexes[:limit], len(indexes) > limit


def _broken(number: str, kind: int) -> str:
    if kind == 1:
        # "+551191": too short for any E.164 check, not just a Brazilian one.
        return number[:7]
    # The last four digits typed as look-alike letters, as a bad OCR or form would.
    return number[:-4] + number[-4:].translate(str.maketrans("0123456789", "OIZEASGTBQ"))


def render(customers: Customers, indexes: np.ndarray, now: datetime | None = None) -> list[dict]:
    """The JSON rows of the customers at these indexes (positions in ``customers``)."""
    # Purchases are placed relative to today's UTC midnight, so they hold all day.
    now = now or datetime.now(UTC)
    midnight = datetime.combine(now.date(), clock_time(), tzinfo=UTC)
    columns = (
        customers.ids,
        customers.first,
        customers.last,
        customers.city,
        customers.tags,
        customers.spent_cents,
        customers.days_ago,
        customers.second_of_day,
        customers.opted_in,
        customers.phone_source,
        customers.phone_source_city,
        customers.phone_kind,
        customers.language,
    )
    rows = []
    for n, first, last, city, tags, cents, days, second, opted_in, source, area, kind, lang in zip(
        *(column[indexes].tolist() for column in columns), strict=True
    ):
        subscriber = (source * 73_219_147 + 11_384_507) % 100_000_000  # a bijection below 1e8
        phone = f"+55{CITIES[area][2]}9{subscriber:08d}"
        purchased = midnight - timedelta(days=days) + timedelta(seconds=second)
        rows.append(
            {
                "id": f"C{n:07d}",
                "name": f"{FIRST_NAMES[first]} {LAST_NAMES[last]}",
                "first_name": FIRST_NAMES[first],
                "phone": _broken(phone, kind) if kind else phone,
                "email": f"{_FIRST_ASCII[first]}.{_LAST_ASCII[last]}{n}@example.com",
                "city": CITIES[city][0],
                "state": CITIES[city][1],
                "tags": [tag for tag, bit in _TAG_BITS.items() if tags & bit],
                "total_spent": cents / 100,
                "last_purchase_at": purchased.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "opted_in": opted_in,
                "language": LANGUAGES[lang][0],
            }
        )
    return rows


def customer(n: int, now: datetime | None = None) -> dict[str, Any]:
    """Customer n on its own, computed from n without the cached base."""
    return render(generate(np.array([n], dtype=np.int64)), np.array([0]), now)[0]


def _error(status: int, code: str, message: str, fields: dict[str, str] | None = None):
    body: dict[str, Any] = {"code": code, "message": message}
    if fields is not None:
        body["fields"] = fields
    return jsonify(error=body), status


@bp.before_request
def simulate_remote() -> Any:
    """Behave like a remote system: the configured latency, then injected 503s."""
    latency_ms = current_app.config.get("MOCK_ERP_LATENCY_MS", 0)
    if latency_ms:
        time.sleep(latency_ms / 1000)
    failure_rate = current_app.config.get("MOCK_ERP_FAILURE_RATE", 0.0)
    if failure_rate and random.random() < failure_rate:
        response, status = _error(503, "unavailable", "The ERP is unavailable (injected failure).")
        response.headers["Retry-After"] = "1"
        return response, status
    return None


@bp.errorhandler(InvalidRequest)
def invalid_request(error: InvalidRequest) -> tuple[Response, int]:
    """400 with one message per bad query parameter."""
    message = "; ".join(f"{name} {text}" for name, text in error.fields.items())
    return _error(400, error.code, message, error.fields)


def _total() -> int:
    return int(current_app.config["MOCK_ERP_CUSTOMERS"])


@bp.get("/customers")
def customer_list() -> Response:
    """One page of a segment's customers in id order, with the cursor of the next."""
    segment = parse_segment(request.args, allowed=PAGE_PARAMS)
    after, limit = parse_page(request.args)
    total = _total()
    indexes, more = page_indexes(total, segment, after, limit)
    rows = render(customers_for(total), indexes)
    next_cursor = encode_cursor(int(indexes[-1]) + 1) if more and len(indexes) else None
    return jsonify(customers=rows, next_cursor=next_cursor)


@bp.get("/customers/count")
def customer_count() -> Response:
    """How many customers a segment selects."""
    return jsonify(count=count(_total(), parse_segment(request.args)))


@bp.get("/tags")
def tag_list() -> Response:
    """The tags customers carry, the ones a segment's ``tags`` may name."""
    return jsonify(tags=[tag for tag, _share in TAGS])


@bp.get("/customers/<customer_id>")
def customer_show(customer_id: str) -> Any:
    """One customer by id (``C0000042``), or 404."""
    match = CUSTOMER_ID.fullmatch(customer_id)
    if match is None or not 1 <= int(match.group(1)) <= _total():
        return _error(404, "not_found", f"No customer {customer_id}.")
    return jsonify(customer(int(match.group(1))))
