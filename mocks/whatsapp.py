"""The mock WhatsApp: the Cloud API's send endpoint and status webhooks.

``POST /mock/whatsapp/<version>/<phone_number_id>/messages`` takes the Cloud API's
template message JSON, checks it as Meta would (``messaging_product``,
``to``, ``type``, the template's name and language, text body parameters, all
named or all positional) and answers with Meta's JSON and a fresh ``wamid``. Every
accepted message is recorded in ``mock_whatsapp_messages`` (Postgres, so every
web and worker process sees one log); ``GET /mock/whatsapp/log`` reads it back.

Two servers answer the send endpoint with this module's one behaviour (:func:`screen`
decides, :func:`record_many` records, :func:`error_body` and :func:`accepted_body`
answer): this blueprint on the web port, a thread per call, which the tests use; and
the asyncio mock process of ``mocks/whatsapp_server.py``, which holds thousands of
calls in flight and records together the ones that arrive together. The engine
posts to the latter when ``MOCK_WHATSAPP_URL`` is set (``make run`` sets it).

Failures can be injected, each 0 by default: ``MOCK_WHATSAPP_LATENCY_MS`` before
every answer, then the share of sends answered HTTP 429 / 130429 (throttled,
``MOCK_WHATSAPP_THROTTLE_RATE``), HTTP 500 / 131000 (transient,
``MOCK_WHATSAPP_TRANSIENT_RATE``), HTTP 400 / 131026 (undeliverable,
``MOCK_WHATSAPP_PERMANENT_RATE``), HTTP 400 / 131049 (per-user marketing limit,
``MOCK_WHATSAPP_MARKETING_LIMIT_RATE``) and HTTP 400 / 131056 (pair rate limit,
``MOCK_WHATSAPP_PAIR_LIMIT_RATE``). Some recipients always fail the same way, so
tests need no randomness — by the last four digits of ``to``:

- ``…0000``: HTTP 400, code 131026 (Message undeliverable, permanent);
- ``…0429``: HTTP 429, code 130429 (Rate limit hit, retry), on the first two tries of
  each (phone number id, number, ``biz_opaque_callback_data`` up to its first ``.``: the
  message, whichever attempt the rest names); the third passes, so
  a campaign that holds such a number still completes. The tries are counted in the
  memory of the process that answers (the web process, or the mock process), for
  the last ``TRIES_KEPT`` such keys: a restart, or a key forgotten, starts again.
- ``…0500``: HTTP 500, code 131000 (Something went wrong, retry).

A **throughput cap** stands in for Meta's messages per second per number (80 by
default, up to 1,000 upgraded): ``MOCK_WHATSAPP_THROUGHPUT_CAP`` sends per second per
phone number id (0, the default, is no cap). A send beyond it is answered HTTP 429 /
130429 like the throttled error above, before anything else is decided (a storm, a
forced number, the rates). The window is *sliding*: a send is admitted when fewer
than the cap were admitted for its phone number id in the second before it (refused
sends do not count, so a sender over the cap still gets the cap's worth through).
Decided when the call's latency has passed, in the answering process's memory
(:class:`ThroughputCap`, thread-safe like ``ThrottleTries``); the mock process's
``GET /stats`` counts its refusals (``capped``). ``bench/throughput.py`` measures the
engine's slowdown (``campaigns/slowdown.py``) against it.

Later, like Meta, the mock posts signed status webhooks for each accepted message
to ``{APP_BASE_URL}/webhooks/whatsapp``: ``sent``, then ``delivered``, then
``read`` for about ``MOCK_WHATSAPP_READ_RATE`` of the messages (decided by a hash
of the wamid, so the same message always behaves the same), one every
``MOCK_WHATSAPP_WEBHOOK_DELAY_MS``. Each body is signed with
``X-Hub-Signature-256: sha256=<HMAC-SHA256 of the raw body>`` under the app
secret of the sender owning the phone number id (else ``WHATSAPP_APP_SECRET``).
The webhooks wait in ``mock_whatsapp_webhooks``; the ``mock_whatsapp.post_webhooks``
job (``mocks/tasks.py``) posts the due ones, and a failed post is tried again
later with a growing delay, never dropped. ``MOCK_WHATSAPP_WEBHOOKS=off`` queues none.

Template webhooks are posted on demand, as Meta posts them when it reviews, pauses,
rates or re-categorises a template: ``POST /mock/whatsapp/templates/<provider id>/status``
with ``{"event": "PAUSED"}`` (and an optional ``"reason"``), ``…/quality`` with
``{"new_quality_score": "RED"}``, ``…/category`` with ``{"new_category": "MARKETING"}``.
The mock builds the ``message_template_status_update`` (``_quality_update``,
``template_category_update``) webhook on the WABA object for the template with that
provider id (``mock-<id>`` for templates the mock reviewed), posts it at once, signed
like the status webhooks (a template made "in WhatsApp Manager",
``mocks/waba_templates.py``, changes there too), and answers ``{"posted": true|false,
"status": <the app's HTTP status>, "webhook": <the body>}``; 404 for no such template,
400 for a bad body.

A **storm** is the provider having a bad minute, started at run time:
``POST /mock/whatsapp/storm`` (or ``POST /storm`` on the mock process) with
``{"seconds": 60, "throttle": 0.5, "transient": 0.2, "permanent": 0}`` answers, for
the next ``seconds``, that share of every call with HTTP 429 / 130429, with HTTP 500 /
131000 or 503 / 131016 (half each), and with HTTP 400 / 131026 or 132001 (half each),
whatever the number; the rest go on as usual. ``GET`` on the same path says what storm
is on, for how many more seconds, and how many errors of each code storms have given
(``{"storm": …, "given": {"130429": n, …}}``); a new storm replaces the one that is on.

**Account health**: ``GET /mock/whatsapp/<version>/<phone_number_id>`` answers the Graph
API's phone-number fields (``display_phone_number``, ``quality_rating``,
``whatsapp_business_manager_messaging_limit``, the deprecated ``messaging_limit_tier``,
``throughput.level``): GREEN, ``TIER_UNLIMITED`` and ``HIGH`` (1,000 msg/s) unless told
otherwise by ``POST /mock/whatsapp/<phone_number_id>/quality`` or ``/account`` with
``{"quality": "RED", "messaging_limit": "TIER_2K", "throughput": "STANDARD"}`` (each
optional; ``event`` overrides the webhook's). Each stores the new state
(``mock_whatsapp_numbers``) and posts at once, signed like the status webhooks, a
``phone_number_quality_update`` (``event`` FLAGGED for YELLOW or RED, UNFLAGGED for
GREEN, else UPGRADE/DOWNGRADE for a limit change; ``current_limit`` and
``max_daily_conversations_per_business``) or an ``account_update``
(``max_daily_conversations_per_business``), naming the number by its display number
under the WABA id as Meta does. Meta's quality webhook says YELLOW by no event of its
own, so the mock adds ``quality_rating`` to both. ``POST …/<phone_number_id>/capability``
with ``{"messaging_limit": "TIER_10K"}`` posts a ``business_capability_update`` on the
number's WABA (``max_daily_conversations_per_business``; with ``"legacy": true`` the
older ``max_daily_conversation_per_phone``, users a day, -1 for unlimited). The answer
says whether the post was acknowledged (``{"posted": true, "status": 200, "state": {…}}``).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import random
import re
import secrets
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
import sqlalchemy as sa
from flask import Blueprint, current_app, jsonify, request
from requests.adapters import HTTPAdapter
from werkzeug.wrappers import Response

from app import AnySession, db
from campaigns.models import MessageTemplate, Sender
from mocks import template_check
from mocks.models import MockWhatsAppMessage, MockWhatsAppNumber, MockWhatsAppWebhook
from mocks.template_check import TemplateBook

logger = logging.getLogger(__name__)

bp = Blueprint("mock_whatsapp", __name__, url_prefix="/mock/whatsapp")

# (error.code, HTTP status, Meta's title)
UNDELIVERABLE = (131026, 400, "Message undeliverable")
THROTTLED = (130429, 429, "Rate limit hit")
TRANSIENT = (131000, 500, "Something went wrong")
MARKETING_LIMIT = (
    131049,
    400,
    "This message was not delivered to maintain healthy ecosystem engagement.",
)
PAIR_LIMIT = (131056, 400, "(Business Account, Consumer Account) pair rate limit hit")
UNAVAILABLE = (131016, 503, "Service unavailable")
NO_TEMPLATE = (132001, 404, "Template name does not exist in the translation")
FORCED_ERRORS = {"0000": UNDELIVERABLE, "0429": THROTTLED, "0500": TRANSIENT}
# A storm's shares, by what the engine must do: wait, try again, give up.
STORM_ERRORS = {
    "throttle": (THROTTLED,),
    "transient": (TRANSIENT, UNAVAILABLE),
    "permanent": (UNDELIVERABLE, NO_TEMPLATE),
}
STORM_MAX_SECONDS = 3600
STORM_EXTENSION = "mock_whatsapp_storm"  # the web process's Storms, per Flask app
FORCED_THROTTLES = 2  # a …0429 number is throttled on its first two tries, then passes
TRIES_KEPT = 100_000  # the (phone number id, number, callback data) keys counted at most
TRIES_EXTENSION = "mock_whatsapp_tries"  # the web process's ThrottleTries, per Flask app
CAP_EXTENSION = "mock_whatsapp_cap"  # the web process's ThroughputCap, per Flask app
BOOK_EXTENSION = "mock_whatsapp_templates"  # the web process's TemplateBook
CAP_WINDOW_SECONDS = 1.0  # MOCK_WHATSAPP_THROUGHPUT_CAP counts sends in this sliding window
CALLBACK_DATA_MAX = 512  # Meta's limit on biz_opaque_callback_data

WEBHOOK_PATH = "/webhooks/whatsapp"
WEBHOOK_BATCH = 50
WEBHOOK_MAX_BATCHES = 20  # per run; the job comes back at once if more are due
WEBHOOK_TIMEOUT = (2, 5)  # (connect, read) seconds
# A claimed webhook is hidden this long: longer than a batch can take to post, so
# two posters never send one twice unless a poster died mid-batch (Meta, too, is
# at-least-once).
WEBHOOK_LEASE_SECONDS = WEBHOOK_BATCH * sum(WEBHOOK_TIMEOUT) + 10
WEBHOOK_RETRY_SECONDS = 5  # after the first failure, doubling up to the maximum
WEBHOOK_RETRY_MAX_SECONDS = 300
LOG_LIMIT_DEFAULT = 1000
LOG_LIMIT_MAX = 100_000

_session = requests.Session()
_session.mount("http://", HTTPAdapter(pool_maxsize=8))
_session.mount("https://", HTTPAdapter(pool_maxsize=8))

# -- accepted messages, many at once, each at the time its request arrived
INSERT_MESSAGES = sa.text(
    """
    INSERT INTO mock_whatsapp_messages
           (wamid, "to", phone_number_id, message_id, template_name, received_at)
    SELECT * FROM unnest(CAST(:wamids AS text[]), CAST(:tos AS text[]),
                         CAST(:phone_number_ids AS text[]), CAST(:message_ids AS text[]),
                         CAST(:template_names AS text[]), CAST(:received_ats AS timestamptz[]))
    RETURNING wamid, received_at
    """
)
# -- their status webhooks, many at once: one JSON array of rows (a text[] of JSON bodies
# -- would cost psycopg a regex escape of every quote in them)
INSERT_WEBHOOKS = sa.text(
    """
    INSERT INTO mock_whatsapp_webhooks (wamid, status, payload, due_at)
    SELECT wamid, status, payload, due_at
      FROM jsonb_to_recordset(CAST(:rows AS jsonb))
           AS w(wamid text, status text, payload jsonb, due_at timestamptz)
    """
)
# -- claim due webhooks: hide them for a lease while they are posted, count the attempt
CLAIM_DUE = sa.text(
    """
    UPDATE mock_whatsapp_webhooks AS w
       SET due_at = clock_timestamp() + make_interval(secs => :lease), attempts = w.attempts + 1
     WHERE w.id IN (SELECT id FROM mock_whatsapp_webhooks
                     WHERE posted_at IS NULL AND due_at <= clock_timestamp()
                     ORDER BY due_at, id
                     LIMIT :limit
                       FOR UPDATE SKIP LOCKED)
    RETURNING w.id, w.payload
    """
)
# -- a failed post: due again after a delay that doubles with each attempt
RESCHEDULE = sa.text(
    """
    UPDATE mock_whatsapp_webhooks
       SET due_at = clock_timestamp()
                    + make_interval(secs => least(:max, :base * 2 ^ least(attempts - 1, 20)))
     WHERE id = ANY(:ids)
    """
)
# -- seconds until the next unposted webhook is due (negative: overdue; NULL: none)
NEXT_DUE = sa.text(
    """
    SELECT extract(epoch FROM min(due_at) - clock_timestamp())::float
      FROM mock_whatsapp_webhooks
     WHERE posted_at IS NULL
    """
)


class MetaError(Exception):
    """An answer the Cloud API would give instead of accepting the message."""

    def __init__(self, error: tuple[int, int, str], details: str | None = None) -> None:
        self.code, self.http_status, self.title = error
        self.details = details or self.title
        super().__init__(f"{self.code} {self.title}")


def _invalid(details: str) -> MetaError:
    return MetaError((100, 400, "Invalid parameter"), details)


def _missing(details: str) -> MetaError:
    return MetaError((131008, 400, "Required parameter is missing"), details)


def _not_valid(details: str) -> MetaError:
    return MetaError((131009, 400, "Parameter value is not valid"), details)


def error_body(error: MetaError) -> dict[str, Any]:
    """Meta's error JSON for a refusal (answered with ``error.http_status``)."""
    return {
        "error": {
            "message": f"(#{error.code}) {error.title}",
            "type": "OAuthException",
            "code": error.code,
            "error_data": {"messaging_product": "whatsapp", "details": error.details},
            "fbtrace_id": secrets.token_urlsafe(12),
        }
    }


@bp.errorhandler(MetaError)
def meta_error(error: MetaError) -> tuple[Response, int]:
    """Meta's error JSON, with the HTTP status Meta uses for that code."""
    return jsonify(error_body(error)), error.http_status


@dataclass(frozen=True)
class Accepted:
    to: str
    wa_id: str  # the recipient's digits, as Meta returns them
    template_name: str
    callback_data: str | None


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def validate(payload: Any, book: TemplateBook | None = None, phone_number_id: str = "") -> Accepted:
    """Check a send like the Cloud API does; raise MetaError where it would refuse.

    With a ``book``, a send of a template the mock knows is also checked against its
    definition (``mocks/template_check.py``: 132012, 132000, 131053)."""
    if not isinstance(payload, dict):
        raise _invalid("The request body must be a JSON object.")
    if payload.get("messaging_product") != "whatsapp":
        raise _invalid("messaging_product must be 'whatsapp'.")
    to = _text(payload.get("to"))
    if to is None:
        raise _missing("Parameter 'to' is required.")
    wa_id = re.sub(r"\D", "", to)
    if not 8 <= len(wa_id) <= 15:
        raise _not_valid("'to' is not a valid phone number.")
    if payload.get("type") != "template":
        raise _invalid("The mock sends template messages only: type must be 'template'.")
    callback_data = payload.get("biz_opaque_callback_data")
    if callback_data is not None and (
        not isinstance(callback_data, str) or len(callback_data) > CALLBACK_DATA_MAX
    ):
        raise _not_valid(f"biz_opaque_callback_data must be text of at most {CALLBACK_DATA_MAX}.")
    template = payload.get("template")
    if not isinstance(template, dict):
        raise _missing("Parameter 'template' is required.")
    name = _text(template.get("name"))
    if name is None:
        raise _missing("Parameter 'template.name' is required.")
    language = template.get("language")
    if not isinstance(language, dict) or _text(language.get("code")) is None:
        raise _missing("Parameter 'template.language.code' is required.")
    components = template.get("components", [])
    _validate_components(components)
    definition = book.lookup(phone_number_id, name, language["code"]) if book else None
    if book is not None and definition is not None:
        try:
            template_check.check(components, definition, book.media_known)
        except template_check.Refused as refused:
            raise MetaError(refused.error, refused.details) from None
    return Accepted(to, wa_id, name, callback_data)


def _validate_components(components: Any) -> None:
    if not isinstance(components, list):
        raise _invalid("template.components must be a list.")
    for component in components:
        if not isinstance(component, dict) or _text(component.get("type")) is None:
            raise _missing("Every component needs a type.")
        if component["type"].lower() != "body":
            continue  # headers and buttons: checked against the template (template_check)
        parameters = component.get("parameters", [])
        if not isinstance(parameters, list):
            raise _invalid("body parameters must be a list.")
        for parameter in parameters:
            if not isinstance(parameter, dict) or parameter.get("type") != "text":
                raise _not_valid("The mock accepts text body parameters only.")
            if _text(parameter.get("text")) is None:
                raise _missing("Every body parameter needs a non-empty text.")
        named = {"parameter_name" in parameter for parameter in parameters}
        if len(named) > 1:
            raise MetaError(
                (132012, 400, "Parameter format does not match format in the created template"),
                "Body parameters must all be named or all positional.",
            )
        names = [_text(p.get("parameter_name")) for p in parameters if "parameter_name" in p]
        if None in names or len(set(names)) != len(names):
            raise _not_valid("Named body parameters need distinct, non-empty names.")


class ThrottleTries:
    """How often each key was tried, in this process's memory, for the last ``kept`` keys.

    Counts the tries of the ``…0429`` numbers, keyed by (phone number id, the number's
    digits, ``biz_opaque_callback_data`` up to its first ``.``); the least recently
    tried key is forgotten first. Thread-safe: the web process answers on many threads.
    """

    def __init__(self, kept: int = TRIES_KEPT) -> None:
        self.kept = kept
        self._counts: OrderedDict[tuple[str, str, str | None], int] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._counts)

    def count(self, key: tuple[str, str, str | None]) -> int:
        """Count one more try of ``key``; which try this is (1 for the first)."""
        with self._lock:
            tries = self._counts.pop(key, 0) + 1
            self._counts[key] = tries  # now the most recent
            if len(self._counts) > self.kept:
                self._counts.popitem(last=False)
            return tries


class ThroughputCap:
    """Sends admitted per phone number id in the last second (sliding), in this process's
    memory: at most ``per_second`` of them, the rest refused.

    Only admitted sends are counted, so a sender that keeps calling above the cap still
    gets the cap's worth through (a refusal spends nothing). Each phone number id keeps
    at most ``per_second`` times. Thread-safe: the web process answers on many threads.
    ``clock`` is injectable for the tests (``time.monotonic``).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.refused = 0  # sends refused since the start
        self._admitted: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def admit(self, phone_number_id: str, per_second: int) -> bool:
        """Whether this send fits under ``per_second`` (0: no cap); counted if it does."""
        if per_second <= 0:
            return True
        now = self.clock()
        with self._lock:
            times = self._admitted.setdefault(phone_number_id, deque())
            while times and times[0] <= now - CAP_WINDOW_SECONDS:
                times.popleft()
            if len(times) >= per_second:
                self.refused += 1
                return False
            times.append(now)
            return True


@dataclass(frozen=True)
class Storm:
    """For ``seconds`` from ``started`` (``time.monotonic()``), shares of calls refused."""

    seconds: float
    throttle: float = 0.0
    transient: float = 0.0
    permanent: float = 0.0
    started: float = 0.0

    @classmethod
    def parse(cls, payload: Any, now: float) -> Storm:
        """A storm from its JSON; ValueError with the reason if it is not one."""
        if not isinstance(payload, dict) or set(payload) - {"seconds", *STORM_ERRORS}:
            raise ValueError(
                "A storm is a JSON object of seconds, throttle, transient and permanent."
            )
        values = {}
        for key in ("seconds", *STORM_ERRORS):
            value = payload.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{key} must be a number.")
            values[key] = float(value)
        if not 0 < values["seconds"] <= STORM_MAX_SECONDS:
            raise ValueError(f"seconds must be more than 0 and at most {STORM_MAX_SECONDS}.")
        shares = [values[key] for key in STORM_ERRORS]
        if not all(0 <= share <= 1 for share in shares) or sum(shares) > 1:
            raise ValueError("The shares must be between 0 and 1, and add up to at most 1.")
        return cls(started=now, **values)

    def remaining(self, now: float) -> float:
        return max(0.0, self.started + self.seconds - now)

    def error(self, now: float) -> tuple[int, int, str] | None:
        """The error this call gets from the storm, if it is on and the draw says so."""
        if not self.remaining(now):
            return None
        draw = random.random()
        for key, errors in STORM_ERRORS.items():
            share = getattr(self, key)
            if draw < share:
                return random.choice(errors)
            draw -= share
        return None

    def describe(self, now: float) -> dict[str, float]:
        shares = {key: getattr(self, key) for key in STORM_ERRORS}
        return {"seconds": self.seconds, "remaining": self.remaining(now), **shares}


class Storms:
    """The storm on now, if any, and every storm's errors given by code, in this process's
    memory (thread-safe, like ThrottleTries)."""

    def __init__(self) -> None:
        self._storm: Storm | None = None
        self.given: Counter[str] = Counter()
        self._lock = threading.Lock()

    def start(self, payload: Any) -> Storm:
        storm = Storm.parse(payload, time.monotonic())
        with self._lock:
            self._storm = storm
        logger.info("mock WhatsApp: storm %s", storm.describe(storm.started))
        return storm

    def error(self) -> tuple[int, int, str] | None:
        """The error the storm gives this call, if one is on and its draw says so; counted."""
        storm = self._storm
        error = storm.error(time.monotonic()) if storm is not None else None
        if error is not None:
            with self._lock:
                self.given[str(error[0])] += 1
        return error

    def describe(self) -> dict[str, Any]:
        """The storm on (or the last one, with 0 remaining) and the errors given so far."""
        with self._lock:
            storm, given = self._storm, dict(self.given)
        return {"storm": storm.describe(time.monotonic()) if storm else None, "given": given}


def injected_error(
    phone_number_id: str,
    accepted: Accepted,
    config: Mapping[str, Any],
    tries: ThrottleTries,
    storms: Storms | None = None,
    cap: ThroughputCap | None = None,
) -> tuple[int, int, str] | None:
    """The error this send gets: the throughput cap's, a storm's, forced by the number's
    last digits, or drawn at the rates.

    A ``…0429`` number is throttled on its first ``FORCED_THROTTLES`` tries only; after
    that it is any number, drawn at the rates like the others.
    """
    per_second = int(config.get("MOCK_WHATSAPP_THROUGHPUT_CAP", 0))
    if cap is not None and not cap.admit(phone_number_id, per_second):
        return THROTTLED
    if storms is not None and (error := storms.error()) is not None:
        return error
    forced = FORCED_ERRORS.get(accepted.wa_id[-4:])
    # Keyed by the message, not the call: Disparo's callback data is "<message id>.<attempt>"
    # (campaigns/callback_data.py), a new one each try, which would be throttled forever.
    message = None if accepted.callback_data is None else accepted.callback_data.partition(".")[0]
    tried = (phone_number_id, accepted.wa_id, message)
    if forced is THROTTLED and tries.count(tried) > FORCED_THROTTLES:
        forced = None  # the throttle has passed
    if forced is not None:
        return forced
    draw = random.random()
    for error, key in (
        (THROTTLED, "MOCK_WHATSAPP_THROTTLE_RATE"),
        (TRANSIENT, "MOCK_WHATSAPP_TRANSIENT_RATE"),
        (UNDELIVERABLE, "MOCK_WHATSAPP_PERMANENT_RATE"),
        (MARKETING_LIMIT, "MOCK_WHATSAPP_MARKETING_LIMIT_RATE"),
        (PAIR_LIMIT, "MOCK_WHATSAPP_PAIR_LIMIT_RATE"),
    ):
        rate = float(config.get(key, 0.0))
        if draw < rate:
            return error
        draw -= rate
    return None


def screen(
    phone_number_id: str,
    payload: Any,
    config: Mapping[str, Any],
    tries: ThrottleTries,
    storms: Storms | None = None,
    cap: ThroughputCap | None = None,
    book: TemplateBook | None = None,
) -> Accepted:
    """Decide a send as Meta would: the message to record, or MetaError (invalid, injected)."""
    accepted = validate(payload, book, phone_number_id)
    error = injected_error(phone_number_id, accepted, config, tries, storms, cap)
    if error is not None:
        raise MetaError(error)
    return accepted


def accepted_body(accepted: Accepted, wamid: str) -> dict[str, Any]:
    """Meta's JSON for an accepted message."""
    return {
        "messaging_product": "whatsapp",
        "contacts": [{"input": accepted.to, "wa_id": accepted.wa_id}],
        "messages": [{"id": wamid, "message_status": "accepted"}],
    }


def new_wamid() -> str:
    return "wamid." + secrets.token_urlsafe(32)


def is_read(wamid: str, read_rate: float) -> bool:
    """Whether this message will be read: a stable draw from its wamid."""
    draw = int.from_bytes(hashlib.sha256(wamid.encode()).digest()[:8], "big") / 2**64
    return draw < read_rate


def status_webhooks(
    *,
    wamid: str,
    accepted: Accepted,
    phone_number_id: str,
    sender: Mapping[str, Any] | sa.RowMapping | None,
    received_at: datetime,
    config: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """The webhook rows to queue for one accepted message: sent, delivered, maybe read."""
    statuses = ["sent", "delivered"]
    if is_read(wamid, float(config.get("MOCK_WHATSAPP_READ_RATE", 0.6))):
        statuses.append("read")
    step = timedelta(milliseconds=int(config.get("MOCK_WHATSAPP_WEBHOOK_DELAY_MS", 1000)))
    rows = []
    for number, status in enumerate(statuses, start=1):
        due_at = received_at + step * number
        entry = {
            "id": wamid,
            "status": status,
            "timestamp": str(int(due_at.timestamp())),
            "recipient_id": accepted.wa_id,
        }
        if accepted.callback_data is not None:
            entry["biz_opaque_callback_data"] = accepted.callback_data
        value = {
            "messaging_product": "whatsapp",
            "metadata": {
                "display_phone_number": (sender or {}).get("display_phone_number") or "",
                "phone_number_id": phone_number_id,
            },
            "statuses": [entry],
        }
        payload = {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": (sender or {}).get("waba_id") or "",
                    "changes": [{"field": "messages", "value": value}],
                }
            ],
        }
        rows.append({"wamid": wamid, "status": status, "payload": payload, "due_at": due_at})
    return rows


def record_many(
    session: AnySession | sa.Connection,
    sends: Sequence[tuple[str, Accepted, datetime]],
    config: Mapping[str, Any],
) -> list[str]:
    """Log accepted messages and queue their status webhooks, in one committed transaction.

    ``sends`` are (phone number id it was sent from, the accepted message, when its
    request arrived: what the log calls ``received_at``, so that a rate measured on the
    log is the rate the calls came in, whatever the latency and batching of the writes);
    the answer is their wamids, in the same order. Two statements whatever their
    number (one INSERT of arrays per table) and one read of their senders.
    """
    if not sends:
        return []
    wamids = [new_wamid() for _ in sends]
    received: dict[str, datetime] = {
        wamid: received_at
        for wamid, received_at in session.execute(
            INSERT_MESSAGES,
            {
                "wamids": wamids,
                "tos": [accepted.to for _, accepted, _ in sends],
                "phone_number_ids": [phone_number_id for phone_number_id, _, _ in sends],
                "message_ids": [accepted.callback_data for _, accepted, _ in sends],
                "template_names": [accepted.template_name for _, accepted, _ in sends],
                "received_ats": [arrived for _, _, arrived in sends],
            },
        )
    }
    if config.get("MOCK_WHATSAPP_WEBHOOKS", True):
        senders = _senders_for(session, sorted({pnid for pnid, _, _ in sends}))
        rows = [
            row
            for wamid, (phone_number_id, accepted, _) in zip(wamids, sends, strict=True)
            for row in status_webhooks(
                wamid=wamid,
                accepted=accepted,
                phone_number_id=phone_number_id,
                sender=senders.get(phone_number_id),
                received_at=received[wamid],
                config=config,
            )
        ]
        for row in rows:
            row["due_at"] = row["due_at"].isoformat()
        session.execute(INSERT_WEBHOOKS, {"rows": json.dumps(rows, separators=(",", ":"))})
    session.commit()
    return wamids


def _senders_for(
    session: AnySession | sa.Connection, phone_number_ids: Sequence[str]
) -> dict[str, sa.RowMapping]:
    """The WABA id and display number of each phone number id's first sender."""
    rows = session.execute(
        sa.select(Sender.phone_number_id, Sender.waba_id, Sender.display_phone_number)
        .where(Sender.phone_number_id.in_(phone_number_ids))
        .order_by(Sender.id)
    ).mappings()
    found: dict[str, sa.RowMapping] = {}
    for row in rows:
        found.setdefault(row["phone_number_id"], row)
    return found


def defer_poster(config: Mapping[str, Any]) -> None:
    # The mock stands in for Meta's servers, which push statuses on their own; the
    # poster job is its "server side". The periodic run catches anything missed here.
    from mocks import tasks

    tasks.defer_post_webhooks(int(config.get("MOCK_WHATSAPP_WEBHOOK_DELAY_MS", 1000)) / 1000)


def _tries() -> ThrottleTries:
    # mocks.init_app puts one there; setdefault covers an app that mounted only the blueprint
    tries: ThrottleTries = current_app.extensions.setdefault(TRIES_EXTENSION, ThrottleTries())
    return tries


def _storms() -> Storms:
    storms: Storms = current_app.extensions.setdefault(STORM_EXTENSION, Storms())
    return storms


def _cap() -> ThroughputCap:
    cap: ThroughputCap = current_app.extensions.setdefault(CAP_EXTENSION, ThroughputCap())
    return cap


def _book() -> TemplateBook:
    book: TemplateBook = current_app.extensions.setdefault(
        BOOK_EXTENSION, TemplateBook(lambda: contextlib.nullcontext(db.session), seconds=0)
    )
    return book


@bp.post("/<version>/<phone_number_id>/messages")
def message_send(version: str, phone_number_id: str) -> tuple[Response, int]:
    """Accept a template message like the Cloud API, or refuse it the way Meta would."""
    arrived = datetime.now(UTC)
    config = current_app.config
    latency_ms = int(config.get("MOCK_WHATSAPP_LATENCY_MS", 0))
    if latency_ms:
        time.sleep(latency_ms / 1000)
    accepted = screen(
        phone_number_id,
        request.get_json(silent=True),
        config,
        _tries(),
        _storms(),
        _cap(),
        _book(),
    )
    [wamid] = record_many(db.session, [(phone_number_id, accepted, arrived)], config)
    if config.get("MOCK_WHATSAPP_WEBHOOKS", True):
        defer_poster(config)
    return jsonify(accepted_body(accepted, wamid)), 200


@bp.post("/storm")
def storm_start() -> tuple[Response, int]:
    """Start a storm (the module's docstring says what it is); 400 with the reason if bad."""
    try:
        storm = _storms().start(request.get_json(silent=True))
    except ValueError as error:
        return _bad_query(str(error))
    return jsonify(storm.describe(storm.started)), 200


@bp.get("/storm")
def storm_now() -> tuple[Response, int]:
    return jsonify(_storms().describe()), 200


def _parse_since(raw: str) -> datetime:
    # An unencoded "+00:00" arrives as " 00:00": put the plus sign back.
    value = re.sub(r" (\d\d(:?\d\d)?)$", r"+\1", raw.strip())
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _bad_query(message: str) -> tuple[Response, int]:
    return jsonify(error={"code": "invalid_request", "message": message}), 400


@bp.get("/log")
def message_log() -> Any:
    """Accepted messages, oldest first: ``phone_number_id``, ``since`` (inclusive), ``limit``."""
    query = sa.select(
        MockWhatsAppMessage.wamid,
        MockWhatsAppMessage.to,
        MockWhatsAppMessage.phone_number_id,
        MockWhatsAppMessage.message_id,
        MockWhatsAppMessage.received_at,
    ).order_by(MockWhatsAppMessage.received_at, MockWhatsAppMessage.id)
    if phone_number_id := request.args.get("phone_number_id", "").strip():
        query = query.where(MockWhatsAppMessage.phone_number_id == phone_number_id)
    if since := request.args.get("since", "").strip():
        try:
            query = query.where(MockWhatsAppMessage.received_at >= _parse_since(since))
        except ValueError:
            return _bad_query("since must be an ISO 8601 date and time.")
    try:
        limit = int(request.args.get("limit", LOG_LIMIT_DEFAULT))
    except ValueError:
        return _bad_query("limit must be a whole number.")
    if not 1 <= limit <= LOG_LIMIT_MAX:
        return _bad_query(f"limit must be from 1 to {LOG_LIMIT_MAX}.")
    rows = db.session.execute(query.limit(limit)).all()
    return jsonify(
        [
            {
                "wamid": row.wamid,
                "to": row.to,
                "phone_number_id": row.phone_number_id,
                "message_id": row.message_id,
                "received_at": row.received_at.astimezone(UTC).isoformat(timespec="milliseconds"),
            }
            for row in rows
        ]
    )


@dataclass(frozen=True)
class PostReport:
    posted: int
    failed: int
    next_due_in: float | None  # seconds until the next waiting webhook is due; None: none waits


def sign(body: bytes, secret: str) -> str:
    """The ``X-Hub-Signature-256`` value Meta sends with a body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _secrets_for(phone_number_ids: Sequence[str]) -> dict[str, str]:
    rows = db.session.execute(
        sa.select(Sender.phone_number_id, Sender.app_secret)
        .where(Sender.phone_number_id.in_(phone_number_ids), Sender.app_secret.is_not(None))
        .order_by(Sender.id)
    ).all()
    found: dict[str, str] = {}
    for phone_number_id, app_secret in rows:
        assert phone_number_id is not None and app_secret is not None  # the WHERE excludes NULLs
        found.setdefault(phone_number_id, app_secret)
    return found


def _phone_number_id(payload: dict[str, Any]) -> str:
    return str(payload["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"])


def _post(url: str, payload: dict[str, Any], secret: str) -> bool:
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(body, secret)}
    try:
        with _session.post(url, data=body, headers=headers, timeout=WEBHOOK_TIMEOUT) as response:
            return 200 <= response.status_code < 300
    except requests.RequestException as exc:
        logger.info("mock webhook to %s failed: %s", url, type(exc).__name__)
        return False


def _post_batch(url: str, config: Mapping[str, Any]) -> tuple[int, int, int]:
    """Claim, post and settle one batch; (claimed, posted, failed)."""
    claimed = db.session.execute(
        CLAIM_DUE, {"lease": WEBHOOK_LEASE_SECONDS, "limit": WEBHOOK_BATCH}
    ).all()
    db.session.commit()  # the lease holds the rows; no transaction stays open over HTTP
    if not claimed:
        return 0, 0, 0
    claimed = sorted(claimed, key=lambda row: row.id)  # a message's sent before its delivered
    keys = _secrets_for(sorted({_phone_number_id(row.payload) for row in claimed}))
    db.session.commit()  # nor the read of the secrets: a snapshot held over HTTP holds vacuum
    fallback = config.get("WHATSAPP_APP_SECRET")
    posted: list[int] = []
    failed: list[int] = []
    for row in claimed:
        secret = keys.get(_phone_number_id(row.payload)) or fallback
        if secret is None:
            logger.warning("mock webhook %s: no app secret to sign it with", row.id)
        ok = secret is not None and _post(url, row.payload, secret)
        (posted if ok else failed).append(row.id)
    if posted:
        db.session.execute(
            sa.update(MockWhatsAppWebhook)
            .where(MockWhatsAppWebhook.id.in_(posted))
            .values(posted_at=sa.func.clock_timestamp())
        )
    if failed:
        db.session.execute(
            RESCHEDULE,
            {"ids": failed, "base": WEBHOOK_RETRY_SECONDS, "max": WEBHOOK_RETRY_MAX_SECONDS},
        )
    db.session.commit()
    return len(claimed), len(posted), len(failed)


def post_due_webhooks(max_batches: int = WEBHOOK_MAX_BATCHES) -> PostReport:
    """Post the status webhooks that are due, batch by batch; say when the next one is."""
    config = current_app.config
    url = str(config["APP_BASE_URL"]).rstrip("/") + WEBHOOK_PATH
    posted = failed = 0
    for _ in range(max_batches):
        claimed, batch_posted, batch_failed = _post_batch(url, config)
        posted += batch_posted
        failed += batch_failed
        if claimed < WEBHOOK_BATCH:
            break
    next_due_in = db.session.execute(NEXT_DUE).scalar()
    db.session.commit()
    if posted or failed:
        logger.info("mock webhooks: %d posted, %d to retry", posted, failed)
    return PostReport(posted, failed, next_due_in)


# -- account health: what the mock reports about a number, and the webhooks that say so
ACCOUNT_DEFAULTS = {
    "quality_rating": "GREEN",
    "messaging_limit_tier": "TIER_UNLIMITED",
    "throughput_level": "HIGH",
}
MOCK_QUALITIES = ("GREEN", "YELLOW", "RED", "UNKNOWN")
MOCK_TIERS = (
    "TIER_50",
    "TIER_250",
    "TIER_1K",
    "TIER_2K",
    "TIER_10K",
    "TIER_100K",
    "TIER_UNLIMITED",
)
MOCK_THROUGHPUTS = ("STANDARD", "HIGH", "NOT_APPLICABLE")
_TIER_ORDER = {tier: i for i, tier in enumerate(MOCK_TIERS)}
CAPABILITY_FIELD = "business_capability_update"
# The older capability field's users a day for each tier (-1: unlimited).
_LEGACY_LIMITS = {
    "TIER_50": 50,
    "TIER_250": 250,
    "TIER_1K": 1000,
    "TIER_2K": 2000,
    "TIER_10K": 10_000,
    "TIER_100K": 100_000,
    "TIER_UNLIMITED": -1,
}


def _number_state(phone_number_id: str) -> dict[str, str]:
    row = db.session.get(MockWhatsAppNumber, phone_number_id)
    if row is None:
        return dict(ACCOUNT_DEFAULTS)
    return {
        "quality_rating": row.quality_rating,
        "messaging_limit_tier": row.messaging_limit_tier,
        "throughput_level": row.throughput_level,
    }


def _display_number(phone_number_id: str) -> tuple[str, str | None]:
    """The number's display digits and WABA id, from its sender; a made-up US test number
    (+1 555…) when no sender gives one."""
    row = _senders_for(db.session, [phone_number_id]).get(phone_number_id)
    shown = row["display_phone_number"] if row else None
    digits = re.sub(r"\D", "", shown or "") or "1555" + phone_number_id[-7:].rjust(7, "0")
    return digits, row["waba_id"] if row else None


@bp.get("/<version>/<phone_number_id>")
def phone_number_read(version: str, phone_number_id: str) -> tuple[Response, int]:
    """The Graph API's phone-number read, with the fields account health asks for."""
    if not phone_number_id.isdigit():
        raise _invalid("phone number id must be digits")
    state = _number_state(phone_number_id)
    digits, _waba = _display_number(phone_number_id)
    return jsonify(
        id=phone_number_id,
        display_phone_number=digits,
        verified_name="Mock WhatsApp",
        quality_rating=state["quality_rating"],
        whatsapp_business_manager_messaging_limit=state["messaging_limit_tier"],
        messaging_limit_tier=state["messaging_limit_tier"],
        throughput={"level": state["throughput_level"]},
    ), 200


def _portfolio_numbers(phone_number_id: str) -> list[str]:
    """The other phone number ids whose senders share this one's business portfolio."""
    business = (
        sa.select(Sender.business_id)
        .where(Sender.phone_number_id == phone_number_id, Sender.business_id.is_not(None))
        .scalar_subquery()
    )
    query = sa.select(Sender.phone_number_id).where(
        Sender.business_id == business,
        Sender.phone_number_id.is_not(None),
        Sender.phone_number_id != phone_number_id,
    )
    return sorted({number for number in db.session.scalars(query) if number})


def _choose(payload: dict[str, Any], key: str, allowed: Sequence[str]) -> str | None:
    value = payload.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or value.upper() not in allowed:
        raise ValueError(f"{key} must be one of {', '.join(allowed)}.")
    return value.upper()


def _account_webhook(field: str, phone_number_id: str) -> tuple[Response, int]:
    payload = request.get_json(silent=True)
    if not phone_number_id.isdigit() or not isinstance(payload, dict):
        return _bad_query("POST a JSON object to a phone number id (digits).")
    try:
        quality = _choose(payload, "quality", MOCK_QUALITIES)
        limit = _choose(payload, "messaging_limit", MOCK_TIERS)
        level = _choose(payload, "throughput", MOCK_THROUGHPUTS)
        event = payload.get("event")
        if event is not None and (not isinstance(event, str) or not event.isidentifier()):
            raise ValueError("event must be a word such as FLAGGED or UPGRADE.")
    except ValueError as error:
        return _bad_query(str(error))
    before = _number_state(phone_number_id)
    state = {
        "quality_rating": quality or before["quality_rating"],
        "messaging_limit_tier": limit or before["messaging_limit_tier"],
        "throughput_level": level or before["throughput_level"],
    }
    db.session.merge(MockWhatsAppNumber(phone_number_id=phone_number_id, **state))
    if limit:
        # Meta sets the limit per business portfolio: every number of it reports it.
        for other in _portfolio_numbers(phone_number_id):
            theirs = _number_state(other) | {"messaging_limit_tier": limit}
            db.session.merge(MockWhatsAppNumber(phone_number_id=other, **theirs))
    digits, waba_id = _display_number(phone_number_id)
    secret = _secrets_for([phone_number_id]).get(phone_number_id)
    db.session.commit()  # the new state is what a read during the post sees
    secret = secret or current_app.config.get("WHATSAPP_APP_SECRET")
    tier = state["messaging_limit_tier"]
    if event is None and field == "phone_number_quality_update":
        if quality in ("YELLOW", "RED"):
            event = "FLAGGED"
        elif quality == "GREEN":
            event = "UNFLAGGED"
        elif limit:
            grew = _TIER_ORDER[tier] >= _TIER_ORDER[before["messaging_limit_tier"]]
            event = "UPGRADE" if grew else "DOWNGRADE"
    value: dict[str, Any]
    if field == CAPABILITY_FIELD:
        # On the WABA, no number; v24+ names the limit as a tier, older versions as
        # users a day per phone (-1: unlimited).
        if payload.get("legacy") is True:
            value = {"max_daily_conversation_per_phone": _LEGACY_LIMITS[tier]}
        else:
            value = {"max_daily_conversations_per_business": tier}
        value["max_phone_numbers_per_business"] = 2
    else:
        value = {
            (
                "display_phone_number" if field == "phone_number_quality_update" else "phone_number"
            ): digits,
            "event": event or ("ACCOUNT_UPDATE" if field == "account_update" else "ONBOARDING"),
            "quality_rating": state["quality_rating"],
            "max_daily_conversations_per_business": tier,
        }
    if field == "phone_number_quality_update":
        value["current_limit"] = tier
    body = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": waba_id or "0",
                "time": int(time.time()),
                "changes": [{"field": field, "value": value}],
            }
        ],
    }
    url = str(current_app.config["APP_BASE_URL"]).rstrip("/") + WEBHOOK_PATH
    raw = json.dumps(body, separators=(",", ":")).encode()
    status = None
    if secret is None:
        logger.warning("mock %s for %s: no app secret to sign it with", field, phone_number_id)
    else:
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(raw, secret)}
        try:
            with _session.post(url, data=raw, headers=headers, timeout=WEBHOOK_TIMEOUT) as answer:
                status = answer.status_code
        except requests.RequestException as exc:
            logger.info("mock %s to %s failed: %s", field, url, type(exc).__name__)
    posted = status is not None and 200 <= status < 300
    return jsonify(posted=posted, status=status, state=state), 200


@bp.post("/<phone_number_id>/quality")
def quality_update(phone_number_id: str) -> tuple[Response, int]:
    """Change the number's quality (and limit or throughput) and post Meta's
    ``phone_number_quality_update`` webhook about it."""
    return _account_webhook("phone_number_quality_update", phone_number_id)


@bp.post("/<phone_number_id>/capability")
def capability_update(phone_number_id: str) -> tuple[Response, int]:
    """Change the number's portfolio's limit and post Meta's ``business_capability_update``
    webhook about it (on the number's WABA; ``"legacy": true`` for the older field)."""
    return _account_webhook(CAPABILITY_FIELD, phone_number_id)


@bp.post("/<phone_number_id>/account")
def account_update(phone_number_id: str) -> tuple[Response, int]:
    """Change the number's limit (and quality or throughput) and post Meta's
    ``account_update`` webhook about it."""
    return _account_webhook("account_update", phone_number_id)


# -- template webhooks on demand: the path's kind, its webhook field, the body's key
TEMPLATE_WEBHOOKS = {
    "status": ("message_template_status_update", "event"),
    "quality": ("message_template_quality_update", "new_quality_score"),
    "category": ("template_category_update", "new_category"),
}


def template_webhook(
    template: MessageTemplate, kind: str, given: Mapping[str, Any]
) -> dict[str, Any]:
    """The webhook Meta posts about ``template`` (``kind``: a key of TEMPLATE_WEBHOOKS),
    on the WABA object, with the ``given`` new value and the template's current one as
    the previous."""
    field, key = TEMPLATE_WEBHOOKS[kind]
    value: dict[str, Any] = {
        "message_template_id": template.provider_template_id,
        "message_template_name": template.name,
        "message_template_language": template.language,
    }
    if kind == "status":
        value |= {"event": given[key], "reason": given.get("reason") or "NONE"}
    elif kind == "quality":
        value |= {
            "previous_quality_score": template.quality_rating or "UNKNOWN",
            "new_quality_score": given[key],
        }
    else:
        value |= {"previous_category": template.category.value, "new_category": given[key]}
    waba_id = template.sender.waba_id or template.sender.phone_number_id or "0"
    entry = {"id": waba_id, "time": int(time.time()), "changes": [{"value": value, "field": field}]}
    return {"object": "whatsapp_business_account", "entry": [entry]}


def post_signed(payload: dict[str, Any], secret: str) -> int | None:
    """Post one webhook to the app now, signed; the app's HTTP status (None: unreachable)."""
    url = str(current_app.config["APP_BASE_URL"]).rstrip("/") + WEBHOOK_PATH
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(body, secret)}
    try:
        with _session.post(url, data=body, headers=headers, timeout=WEBHOOK_TIMEOUT) as response:
            return response.status_code
    except requests.RequestException as exc:
        logger.info("mock template webhook to %s failed: %s", url, type(exc).__name__)
        return None


@bp.post("/templates/<provider_template_id>/<kind>")
def template_event(provider_template_id: str, kind: str) -> tuple[Response, int]:
    """Post a template webhook now (the module's docstring says which and how)."""
    if kind not in TEMPLATE_WEBHOOKS:
        return _bad_query(f"kind must be one of {', '.join(TEMPLATE_WEBHOOKS)}.")
    given = request.get_json(silent=True)
    key = TEMPLATE_WEBHOOKS[kind][1]
    if not isinstance(given, dict) or not isinstance(given.get(key), str):
        return _bad_query(f"The body must be a JSON object with {key} as a string.")
    template = db.session.scalar(
        sa.select(MessageTemplate)
        .where(MessageTemplate.provider_template_id == provider_template_id)
        .order_by(MessageTemplate.id)
        .limit(1)
    )
    from mocks.waba_templates import apply_event

    apply_event(provider_template_id, given)  # a template made "in WhatsApp Manager"
    if template is None:
        db.session.commit()
        return jsonify(error={"code": "not_found", "message": "No such template."}), 404
    payload = template_webhook(template, kind, given)
    secret = template.sender.app_secret or current_app.config.get("WHATSAPP_APP_SECRET")
    db.session.commit()  # no transaction held while the app applies it
    if not secret:
        return _bad_query("The template's sender has no app secret to sign with.")
    status = post_signed(payload, secret)
    return jsonify(
        posted=status is not None and 200 <= status < 300, status=status, webhook=payload
    ), 200
