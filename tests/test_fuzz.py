"""Fuzzing every input edge with Hypothesis: the JSON API, the HTML forms, the signed
WhatsApp webhook and the suppression-list CSV import.

Two properties hold for every request: it never gives a 500 (with ``TESTING`` an
exception escapes to the test, which is a failure too), and when it is refused (any
4xx) — or only reads — the database is as it was (:func:`fingerprint`). Each test
function gets one fresh database and runs many examples against it, so state builds
up between examples as it would in use.

The signed-webhook tests also count the cases that applied a change (a status, an
opt-out) and fail if too few did: payloads that drifted from Meta's shape would
otherwise pass without ever reaching the code that applies them.

Runs are derandomized (the same cases every run, for CI); ``DISPARO_FUZZ_EXAMPLES=n``
runs n examples per test instead, for a long local run. The "fuzz cases" section at
the end of the run (tests/conftest.py) says how many cases each test ran, by outcome.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import db
from campaigns import fanout, message_states, pump, queues, sending
from campaigns.models import Message, MessageStatus, Role, User
from campaigns.services.campaigns import send_campaign_now
from campaigns.services.demo import seed_demo
from campaigns.services.templates import default_sender
from campaigns.services.users import create_api_token
from tests.helpers import demo_campaign, jobs, lift_limits, login, post_webhook

settings.register_profile(
    "disparo-fuzz",
    deadline=None,  # a request's time varies with the machine; no case is too slow
    derandomize=True,  # the same cases on every run: CI stays deterministic
    database=None,
    print_blob=True,
    # One database per test function, many examples inside it: the state carried
    # between examples is the point, so function-scoped fixtures are wanted here.
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
FUZZ = settings.get_profile("disparo-fuzz")


def examples(default: int) -> settings:
    """``default`` examples per test, or ``DISPARO_FUZZ_EXAMPLES`` for a long run."""
    return settings(FUZZ, max_examples=int(os.environ.get("DISPARO_FUZZ_EXAMPLES") or default))


# ---- what the database looks like ------------------------------------------------

# What a refused request still writes, by design: the API budget counts every call, a
# failed sign-in is recorded for the growing sign-in delays (campaigns/login_throttle.py),
# and a token's last use is kept.
UNCHECKED_TABLES = ("rate_limit_buckets", "rate_limit_keys", "login_attempts", "alembic_version")
UNCHECKED_COLUMNS = "'{last_used_at}'::text[]"


def fingerprint() -> dict[str, tuple[int, str | None]]:
    """Row count and an md5 of the rows of every table but UNCHECKED_TABLES, in one query."""
    # Requests share this session (the test's app context): end what they left open,
    # so the read sees every commit.
    db.session.rollback()
    tables = db.session.scalars(
        sa.text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            " AND tablename <> ALL(:skip) ORDER BY 1"
        ),
        {"skip": list(UNCHECKED_TABLES)},
    ).all()
    row = f"(to_jsonb(t) - {UNCHECKED_COLUMNS})::text"
    query = " UNION ALL ".join(
        f"SELECT '{name}', count(*), md5(string_agg({row}, ',' ORDER BY {row})) FROM {name} t"
        for name in tables
    )
    result = {name: (count, digest) for name, count, digest in db.session.execute(sa.text(query))}
    db.session.rollback()
    return result


def changed(before: dict, after: dict) -> list[str]:
    return [name for name in before.keys() | after.keys() if before.get(name) != after.get(name)]


def check(cases: Counter[str], send: Callable[[], Any], *, reads_only: bool = False) -> Any:
    """Make one request; no 500, and nothing changed if it was refused (or only reads)."""
    before = fingerprint()
    cases["cases"] += 1
    response = send()
    cases[f"{response.status_code // 100}xx"] += 1
    assert response.status_code < 500, f"{response.status_code}: {response.get_data()[:500]!r}"
    if reads_only or 400 <= response.status_code < 500:
        difference = changed(before, fingerprint())
        assert not difference, f"{response.status_code} changed {difference}"
    return response


# ---- what is sent ----------------------------------------------------------------


def mostly(usual: st.SearchStrategy, other: st.SearchStrategy, odds: int = 4) -> st.SearchStrategy:
    """``usual``, but once in ``odds`` ``other`` (shrinking towards ``usual``).

    Not ``st.one_of(usual, usual, usual, other)``: one_of drops a strategy it already has.
    """
    return st.integers(1, odds).flatmap(lambda n: other if n == odds else usual)


_CHARACTERS = st.characters(codec="utf-8")  # NUL included: PostgreSQL refuses it in text
# Values that mean something somewhere: numbers out of every range, phones, variables,
# markup, format specifiers, dates.
TRICKY = st.sampled_from(
    [
        "",
        " ",
        "0",
        "-1",
        "1e999",
        "NaN",
        "inf",
        "-0",
        "9" * 30,
        str(2**31),
        str(2**63),
        "1,5",
        "+5511999990000",
        "11 99999-0000",
        "+1",
        "{{1}}",
        "{{first_name}}",
        "{{ }}",
        "{{{{",
        "}}{{",
        "%s",
        "%(n)d",
        "<script>alert(1)</script>",
        "' OR 1=1 --",
        "../../etc/passwd",
        "\u202e",
        "🙂",
        "on",
        "true",
        "mock",
        "cloud_api",
        "admin",
        "viewer",
        "MARKETING",
        "named",
        "positional",
        "pt_BR",
        "SP",
        "text",
        "first_name",
        "2030-01-01T10:00",
        "2030-01-01T10:00:00+00:00",
        "9999-12-31T23:59:59",
        "0001-01-01T00:00:00+14:00",
        "https://example.com/x",
        "STOP",
    ]
)
# A NUL byte, as often as the rest: PostgreSQL refuses it in a text column.
NUL = st.sampled_from(["a\x00b", "\x00"])
TEXT = st.one_of(TRICKY, st.text(_CHARACTERS, max_size=60), NUL)
# Template bodies: braces, names and spaces, the stuff of {{variables}}; long ones too
# ({{{{… over 1,024 characters once made the variable regex blow up).
BODY_MAX = 20_000
BODY = st.one_of(
    TEXT,
    st.text(st.sampled_from("{}{}{}ab_1 \n"), max_size=BODY_MAX),
    st.integers(0, BODY_MAX // 2).map("{{".__mul__),  # never closed: the regex's slowest
    st.just("Oi {{first_name}}!"),
)
NUMBERS = st.one_of(
    st.integers(),
    st.sampled_from([2**31 - 1, 2**31, -(2**31) - 1, 2**63, 2**64, 10**30, -(10**30), 0, -1]),
    st.floats(),  # NaN and ±Infinity included: Python's JSON reads them
)
# JSON escapes a lone surrogate ("\\ud800"), which UTF-8 cannot hold; a form cannot
# carry one at all.
SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
JSON_TEXT = st.one_of(TEXT, st.tuples(TEXT, SURROGATES).map("".join), st.just("\ud800"))
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, JSON_TEXT)
JSON = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(JSON_TEXT, children, max_size=4)
    ),
    max_leaves=12,
)
IDS = st.one_of(st.integers(0, 12), st.sampled_from([2**31 - 1, 2**31, 2**63 - 1, 2**63, 10**30]))
HUGE = 1_500_000  # characters: over the 1 MB bodies are limited to


def _strategy(value: Any) -> st.SearchStrategy:
    return value if isinstance(value, st.SearchStrategy) else st.just(value)


@st.composite
def mutated(draw: st.DrawFn, valid: dict[str, Any], value: st.SearchStrategy = JSON) -> dict:
    """``valid`` (values, or strategies of valid values) with some fields dropped, some
    spoilt with ``value`` (a template body with braces) and junk fields added."""
    body = {key: draw(_strategy(good)) for key, good in valid.items()}
    keys = st.sampled_from(sorted(valid)) if valid else st.nothing()
    # Often nothing dropped or spoilt: the request then goes past validation.
    for key in draw(st.one_of(st.just(set()), st.sets(keys))):
        body.pop(key)
    for key in draw(st.one_of(st.just(set()), st.sets(keys))):
        body[key] = draw(BODY if key.startswith("body") else value)
    return draw(st.dictionaries(TEXT, value, max_size=2)) | body


def json_bodies(valid: dict[str, Any]) -> st.SearchStrategy[tuple[bytes, str]]:
    """A body and its content type: mostly near-valid objects, sometimes anything at all."""
    encoded = st.one_of(mutated(valid), JSON).map(
        lambda value: (json.dumps(value).encode(), "application/json")
    )
    raw = st.tuples(
        st.one_of(st.binary(max_size=100), st.sampled_from([b"", b"{", b'{"name": 1e999}', b"[]"])),
        st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded"]),
    )
    big = (json.dumps(valid | {"name": "x" * HUGE}).encode(), "application/json")
    # Three in five near-valid, one raw, one over the size limit.
    return mostly(mostly(encoded, raw), st.just(big), odds=5)


def form_data(valid: dict[str, Any]) -> st.SearchStrategy[dict[str, str]]:
    """A form with any of its fields missing or any text, and junk fields."""
    return st.one_of(mutated(valid, TEXT), st.just(valid | {"name": "x" * HUGE}))


IS_HTMX = st.sampled_from([{}, {"HX-Request": "true"}])


# ---- fixtures --------------------------------------------------------------------


@pytest.fixture
def admin(app: Flask, user_factory) -> User:
    """An admin with the demo data, two draft campaigns and no API budget to run out of."""
    seed_demo()
    user = user_factory(Role.ADMIN)
    user.api_rate_limit_per_minute = 1_000_000
    db.session.commit()
    lift_limits(user)
    demo_campaign(user.id, 20, name="First")
    demo_campaign(user.id, 20, name="Second")
    return user


@pytest.fixture
def api(client: FlaskClient, admin: User) -> Callable[..., Any]:
    _token, raw = create_api_token(admin.id)
    auth = {"Authorization": f"Bearer {raw}"}
    client.get("/api/v1/me", headers=auth)  # the token's first use is written now

    def call(method: str, path: str, **kwargs: Any):
        return client.open(f"/api/v1{path}", method=method, headers=auth, **kwargs)

    return call


@pytest.fixture
def signed_in(app: Flask, client: FlaskClient, admin: User, live_server: str) -> FlaskClient:
    """The admin's browser; providers and the ERP answer from the live server's mocks."""
    app.config["APP_BASE_URL"] = live_server
    app.config["WHATSAPP_API_BASE_URL"] = f"{live_server}/mock/whatsapp/v23.0"
    assert login(client, admin).status_code == 303
    return client


# ---- (a) the JSON API ------------------------------------------------------------

VALID_TEMPLATE = {
    "name": "fuzz_promo",
    "language": "pt_BR",
    "category": "MARKETING",
    "parameter_format": "named",
    "body": "Oi {{first_name}}!",
    "header": "Oferta",
    "footer": "Sair: STOP",
    "buttons": [{"type": "URL", "text": "Ver", "url": "https://example.com"}],
    "sender_id": 1,
}
VALID_SENDER = {
    "name": "Loja",
    "provider": "mock",
    "phone_number_id": "123",
    "rate_limit_per_minute": 30,
    "min_interval_ms": 250,
    "access_token": "token",
}
VALID_CAMPAIGN = {
    "name": "Fuzz",
    "sender_id": 1,
    "template_id": 1,
    "segment": {"state": "SP", "max_audience": 5, "tags": ["vip"], "min_total_spent": 10},
    "variables": {"first_name": {"field": "first_name"}, "discount": {"text": "10%"}},
}
VALID_USER = {"role": "supervisor", "campaign_rate_limit_per_minute": 10}

# method, path ({id} is a random id), a near-valid body
API_WRITES: list[tuple[str, str, dict[str, Any]]] = [
    ("PATCH", "/users/{id}", VALID_USER | {"api_rate_limit_per_minute": 1_000_000}),
    ("POST", "/senders", VALID_SENDER),
    ("PATCH", "/senders/{id}", VALID_SENDER),
    ("POST", "/templates", VALID_TEMPLATE),
    ("PATCH", "/templates/{id}", VALID_TEMPLATE),
    ("POST", "/templates/{id}/submit", {}),
    ("POST", "/templates/{id}/sync", {}),
    ("POST", "/suppressions", {"phone": "+5511999990000", "reason": "asked"}),
    ("DELETE", "/suppressions/{id}", {}),
    ("POST", "/campaigns", VALID_CAMPAIGN),
    ("PATCH", "/campaigns/{id}", VALID_CAMPAIGN),
    ("POST", "/campaigns/{id}/schedule", {"scheduled_at": "2030-01-01T10:00:00-03:00"}),
    ("POST", "/campaigns/{id}/send-now", {}),
    ("POST", "/campaigns/{id}/pause", {}),
    ("POST", "/campaigns/{id}/resume", {}),
    ("POST", "/campaigns/{id}/cancel", {}),
    ("POST", "/campaigns/{id}/duplicate", {}),
]

API_READS: list[tuple[str, list[str]]] = [
    ("/me", []),
    ("/senders", ["limit", "cursor"]),
    ("/senders/{id}", []),
    ("/templates", ["status", "language", "category", "q", "limit", "cursor"]),
    ("/templates/{id}", []),
    ("/suppressions", ["q", "page", "limit", "cursor"]),
    ("/suppressions/{id}", []),
    ("/campaigns", ["status", "q", "page", "limit", "cursor"]),
    ("/campaigns/{id}", []),
    ("/campaigns/{id}/progress", []),
    ("/campaigns/{id}/messages", ["status", "limit", "cursor"]),
    ("/audit", ["action", "actor", "before", "limit", "cursor"]),
]


@st.composite
def api_writes(draw: st.DrawFn) -> tuple[str, str, bytes, str]:
    method, path, valid = draw(st.sampled_from(API_WRITES))
    data, content_type = draw(json_bodies(valid))
    return method, path.format(id=draw(IDS)), data, content_type


def test_api_writes_survive_any_body(api, fuzz_cases):
    @examples(400)
    @given(request=api_writes())
    def run(request: tuple[str, str, bytes, str]) -> None:
        method, path, data, content_type = request
        check(fuzz_cases, lambda: api(method, path, data=data, content_type=content_type))

    run()


@st.composite
def api_reads(draw: st.DrawFn) -> tuple[str, dict[str, str]]:
    path, params = draw(st.sampled_from(API_READS))
    names = st.sampled_from(params) if params else st.nothing()
    query = draw(st.dictionaries(st.one_of(names, TEXT), TEXT, max_size=4))
    return path.format(id=draw(IDS)), query


def test_api_reads_survive_any_query(api, fuzz_cases):
    @examples(200)
    @given(request=api_reads())
    def run(request: tuple[str, dict[str, str]]) -> None:
        path, query = request
        check(fuzz_cases, lambda: api("GET", path, query_string=query), reads_only=True)

    run()


# ---- (b) the HTML forms ----------------------------------------------------------

# Forms as a browser fills them in; form_data() drops and spoils their fields.
TEMPLATE_FORM = {
    "name": "fuzz_form",
    "language": "pt_BR",
    "category": "MARKETING",
    "parameter_format": "named",
    "header_text": "Oferta",
    "body_text": "Oi {{first_name}}!",
    "footer_text": "Sair: STOP",
    "buttons": "Ver | https://example.com\nSair",
    "sender_id": "1",
}
CAMPAIGN_FORM = {
    "name": "Fuzz",
    "sender_id": "1",
    "template_id": "1",
    "segment.city": "São Paulo",
    "segment.state": "SP",
    "segment.tags": "vip, novo",
    "segment.min_total_spent": "10,5",
    "segment.last_purchase_within_days": "30",
    "segment.max_audience": "5",
    "segment.opted_in_only": "on",
    "var.first_name.source": "first_name",
    "var.discount.source": "text",
    "var.discount.text": "10%",
    "var.coupon.source": "text",
    "var.coupon.text": "X1",
    "var.city.source": "city",
}
# Names and numbers vary: a sender's must be unique.
SENDER_FORM: dict[str, Any] = {
    "name": st.text("Lojas ", min_size=1, max_size=12),
    "provider": st.sampled_from(["mock", "cloud_api"]),
    "phone_number_id": st.integers(1, 10**15).map(str),
    "display_phone_number": "+55 11 90000-0002",
    "waba_id": "456",
    "rate_limit_per_minute": "30",
    "min_interval_ms": "250",
    "webhook_verify_token": "verify",
    "access_token": "token",
    "app_secret": "secret",
}
USER_FORM: dict[str, Any] = {
    "email": st.emails(),
    "role": "supervisor",
    "campaign_rate_limit_per_minute": "10",
    "api_rate_limit_per_minute": "1000000",
}
RATE_FORM: dict[str, Any] = {
    "category": st.sampled_from(["MARKETING", "UTILITY", "authentication"]),
    "country": st.sampled_from(["BR", "us", "PT"]),
    "currency": "USD",
    "amount": st.sampled_from(["0,0625", "0.0068", "1"]),
    "effective_from": st.dates().map(str),
}

# area: [(path, the form's fields, query parameters)]
FORMS: dict[str, list[tuple[str, dict[str, Any], list[str]]]] = {
    "templates": [
        ("/templates/", TEMPLATE_FORM, []),
        ("/templates/preview", TEMPLATE_FORM, []),
        ("/templates/{id}", TEMPLATE_FORM, []),
        ("/templates/{id}/submit", {}, []),
        ("/templates/{id}/sync", {}, []),
    ],
    "campaigns": [
        ("/campaigns/", CAMPAIGN_FORM, []),
        ("/campaigns/{id}", CAMPAIGN_FORM, []),
        ("/campaigns/mapping", CAMPAIGN_FORM, []),
        ("/campaigns/audience", CAMPAIGN_FORM, []),
        ("/campaigns/{id}/schedule", {"scheduled_at": "2030-01-01T10:00"}, []),
        ("/campaigns/{id}/unschedule", {}, []),
        ("/campaigns/{id}/send-now", {}, []),
        ("/campaigns/{id}/pause", {}, []),
        ("/campaigns/{id}/resume", {}, []),
        ("/campaigns/{id}/cancel", {}, []),
        ("/campaigns/{id}/test-send", {"phone": "+5511999990000"}, []),
        ("/campaigns/{id}/duplicate", {}, []),
        ("/campaigns/{id}/retry-failed", {}, []),
    ],
    "senders": [
        ("/senders/", SENDER_FORM, []),
        ("/senders/{id}", SENDER_FORM, []),
        ("/senders/{id}/test", {}, []),
    ],
    "users": [
        ("/users/", USER_FORM, []),
        ("/users/{id}", USER_FORM, []),
        ("/users/{id}/disable", {}, []),
        ("/users/{id}/enable", {}, []),
        ("/users/{id}/reset-password", {}, []),
        ("/me/tokens", {"name": "ci"}, []),
        ("/me/tokens/{id}/revoke", {}, []),
        ("/notifications/{id}/read", {}, ["next"]),
        ("/notifications/read-all", {"up_to": "3"}, ["next"]),
    ],
    "suppressions": [
        ("/suppressions/", {"phone": "+5511999990000", "reason": "asked"}, ["q", "page"]),
        ("/suppressions/{id}/remove", {}, ["q", "page"]),
    ],
    "settings": [
        ("/settings/rates", RATE_FORM, []),
        ("/settings/rates/{id}", RATE_FORM, []),
        ("/settings/rates/{id}/delete", {}, []),
    ],
}


@st.composite
def form_posts(draw: st.DrawFn, area: str) -> tuple[str, dict[str, str], dict, dict]:
    path, fields, params = draw(st.sampled_from(FORMS[area]))
    query = draw(st.fixed_dictionaries({}, optional=dict.fromkeys(params, TEXT)))
    return path.format(id=draw(IDS)), draw(form_data(fields)), query, draw(IS_HTMX)


@pytest.mark.parametrize("area", list(FORMS))
def test_forms_survive_any_field(signed_in, fuzz_cases, area):
    @examples(120)
    @given(request=form_posts(area))
    def run(request: tuple[str, dict[str, str], dict, dict]) -> None:
        path, data, query, headers = request
        check(
            fuzz_cases,
            lambda: signed_in.post(path, data=data, query_string=query, headers=headers),
        )

    run()


def test_sign_in_survives_any_field(client, admin, fuzz_cases):
    """Anonymous: the sign-in form and signing out, with any fields and any ``next``."""
    posts = st.tuples(
        st.sampled_from(["/login", "/logout"]),
        form_data({"email": "someone@example.com", "password": "correct horse battery"}),
        st.fixed_dictionaries({}, optional={"next": TEXT}),
    )

    @examples(120)
    @given(request=posts)
    def run(request: tuple[str, dict[str, str], dict]) -> None:
        path, data, query = request
        check(fuzz_cases, lambda: client.post(path, data=data, query_string=query))

    run()


# ---- (c) the WhatsApp webhook, correctly signed -----------------------------------


@dataclass(frozen=True)
class Recipients:
    """What a webhook can name that Disparo knows: its sender's number, sent messages'
    wamids, every message's id (the callback data) and the audience's numbers."""

    phone_number_id: str
    wamids: list[str]
    message_ids: list[str]
    wa_ids: list[str]  # as Meta writes a number: digits, no "+"


@pytest.fixture
def recipients(app: Flask, admin: User, fake, live_server) -> Recipients:
    """Sixty messages of a sending campaign: two thirds sent (``wamid.<id>``) through a
    fake provider, the rest claimed and mid-call (no wamid recorded yet, so a status
    finds them by their callback data alone)."""
    campaign = demo_campaign(admin.id, 60, name="Webhooks")
    send_campaign_now(campaign.id, admin.id)
    fanout.load_audience(campaign.id, app.config)
    pump.pump(campaign.id)
    ids = [i for job in jobs(queues.SEND_TASK) for i in job["args"]["message_ids"]]
    sent, mid_call = ids[: len(ids) * 2 // 3], ids[len(ids) * 2 // 3 :]
    sending.send_batch(campaign.id, sent, app.config, retry_queue=False)
    message_states.claim(db.session, campaign.id, mid_call, MessageStatus.QUEUED)
    db.session.commit()
    assert sent and mid_call
    numbers = db.session.scalars(sa.select(Message.phone).where(Message.campaign_id == campaign.id))
    return Recipients(
        phone_number_id=default_sender().phone_number_id or "",
        wamids=[f"wamid.{i}" for i in sent],
        # the plain old form, each call's ("<id>.<attempt>": the first is current)
        message_ids=[f"{i}{call}" for i in ids for call in ("", ".1", ".2")],
        wa_ids=[number.lstrip("+") for number in numbers if number],
    )


# Digits that are no message id: "²" is a digit to str.isdigit, 20 nines are past bigint;
# attempts Disparo never writes (0, a leading zero, a missing one).
CALLBACK_DATA = st.one_of(
    st.integers().map(str),
    st.sampled_from(["²", "9" * 20, "1.0", "1.01", "1.", "1.2.3", "test-1"]),
    TEXT,
)
# Unix times of Meta's size, and sometimes any number or text.
TIMESTAMPS = mostly(
    st.integers(1_600_000_000, 2_000_000_000).map(str),
    st.one_of(st.integers().map(str), TEXT),
    odds=8,
)
STATUSES = st.sampled_from(["sent", "delivered", "read", "failed"])
ERROR_CODES = st.sampled_from([131050, 131048, 131049, 131026, 368, 132016, 1])
OPT_OUT_WORDS = st.sampled_from(["STOP", "sair", " Parar ", "Unsubscribe"])


def _webhook(leaf: st.SearchStrategy, to: Recipients) -> st.SearchStrategy[dict]:
    """Meta's webhook shape about ``to``'s messages and numbers, its leaves sometimes
    junk from ``leaf`` (never with ``st.nothing()``). Mostly every key is there and
    its value usable, so most changes reach the statuses, replies and preferences."""

    # Rarely junk, rarely a key missing: a change reaches the logic only if every part
    # on its way there is usable.
    def field(good: st.SearchStrategy) -> st.SearchStrategy:
        return good if leaf.is_empty else mostly(good, leaf, odds=10)

    def listed(item: st.SearchStrategy) -> st.SearchStrategy:
        return field(st.lists(item, max_size=4))

    def shaped(keys: dict, extra: dict | None = None) -> st.SearchStrategy[dict]:
        """An object with ``keys`` and some of ``extra``; now and then any of either."""
        extra = extra or {}
        return mostly(
            st.fixed_dictionaries(keys, optional=extra),
            st.fixed_dictionaries({}, optional=keys | extra),
            odds=10,
        )

    error = shaped(
        {"code": field(mostly(ERROR_CODES, st.integers()))},
        {"title": field(TEXT), "message": field(TEXT)},
    )
    # A wamid Disparo recorded, or one it has not (yet): then the callback data decides.
    fresh = st.integers(0, 10**6).map("wamid.new{}".format)
    status = shaped(
        {
            "id": field(mostly(mostly(st.sampled_from(to.wamids), fresh), TEXT, odds=8)),
            "status": field(mostly(STATUSES, TEXT, odds=8)),
            "timestamp": field(TIMESTAMPS),
            "biz_opaque_callback_data": field(
                mostly(st.sampled_from(to.message_ids), CALLBACK_DATA, odds=8)
            ),
        },
        {"recipient_id": field(TEXT), "errors": listed(error)},
    )
    phone = mostly(
        st.sampled_from(to.wa_ids),
        st.sampled_from(["5511999990000", "+5511988887777", "1"]) | TEXT,
    )
    words = mostly(OPT_OUT_WORDS, TRICKY)
    sender = {"from": field(phone), "type": field(st.sampled_from(["text", "button"]))}
    # An answer to a campaign message names it (answers.py): a reply's context, a
    # reaction's message_id; a wamid Disparo sent, or one it does not know.
    wamid = field(mostly(mostly(st.sampled_from(to.wamids), fresh), TEXT, odds=8))
    answering = {
        "context": field(shaped({"id": wamid}, {"from": field(TEXT)})),
        "timestamp": field(TIMESTAMPS),
    }
    chosen = shaped({"title": field(words)}, {"id": field(TEXT)})
    message = st.one_of(
        shaped(sender | {"text": field(shaped({"body": field(words)}))}, answering),
        shaped(sender | {"button": field(shaped({"text": field(words)}))}, answering),
        shaped(
            {
                "from": field(phone),
                "type": field(st.just("interactive")),
                "interactive": field(
                    shaped(
                        {"type": field(st.sampled_from(["button_reply", "list_reply"]))},
                        {"button_reply": field(chosen), "list_reply": field(chosen)},
                    )
                ),
            },
            answering,
        ),
        shaped(
            {
                "from": field(phone),
                "type": field(st.just("reaction")),
                "reaction": field(shaped({"message_id": wamid}, {"emoji": field(TEXT)})),
                "timestamp": field(TIMESTAMPS),
            }
        ),
        shaped(
            {
                "from": field(phone),
                "type": field(st.sampled_from(["image", "location", "sticker", "order"])),
            },
            answering,
        ),
    )
    preference = shaped(
        {
            "wa_id": field(phone),
            "category": field(mostly(st.just("marketing_messages"), TEXT)),
            "value": field(mostly(st.sampled_from(["stop", "resume"]), TEXT)),
        },
        {"detail": field(TEXT), "timestamp": field(TIMESTAMPS)},
    )
    number_id = field(mostly(st.just(to.phone_number_id), TEXT, odds=8))
    value = shaped(
        {
            "messaging_product": field(st.just("whatsapp")),
            "metadata": field(shaped({"phone_number_id": number_id})),
        },
        {
            "statuses": listed(status),
            "messages": listed(message),
            "user_preferences": listed(preference),
        },
    )
    handled = st.sampled_from(["messages", "user_preferences"])
    change = shaped({"field": field(mostly(handled, TEXT, odds=8)), "value": field(value)})
    entry = shaped({"id": field(TEXT), "changes": listed(change)})
    return shaped({"object": field(st.just("whatsapp_business_account")), "entry": listed(entry)})


# The counts in the endpoint's answer that say something was written.
CHANGES = ("applied", "opt_outs", "opt_ins", "replies", "clicks")


def _webhook_test(client: FlaskClient, fuzz_cases: Counter[str], payloads) -> None:
    """Post signed webhooks: each one is acknowledged (200, never a 500). The cases
    whose answer counts a change are counted, and those that moved a message's status."""

    @examples(150)
    @given(payload=payloads)
    def run(payload: Any) -> None:
        response = check(fuzz_cases, lambda: post_webhook(client, payload))
        assert response.status_code == 200, response.get_data()[:500]
        if any(response.json[count] for count in CHANGES):
            fuzz_cases["applied a change"] += 1
        if response.json["applied"]:
            fuzz_cases["applied a status"] += 1

    run()


def _reached(fuzz_cases: Counter[str], changes: int, statuses: int) -> None:
    """At least one case in ``changes`` applied a change, one in ``statuses`` a status:
    a shape gone wrong (a field's name, the sender's number) would let every case
    pass without reaching the code that applies them."""
    cases = fuzz_cases["cases"]
    assert fuzz_cases["applied a change"] >= cases // changes, fuzz_cases
    # A message's status moves a few times at most (delivered, read, or failed), so
    # a long run uses them up: this floor stops growing at ten cases.
    assert fuzz_cases["applied a status"] >= min(cases // statuses, 10), fuzz_cases


def test_signed_webhooks_of_the_right_shape(client, recipients, fuzz_cases):
    """Meta's shape about real messages and numbers, values of the right types: the
    statuses, replies and preferences are applied, not just parsed."""
    _webhook_test(client, fuzz_cases, _webhook(st.nothing(), recipients))
    _reached(fuzz_cases, changes=3, statuses=50)


def test_signed_webhooks_with_junk_leaves(client, recipients, fuzz_cases):
    _webhook_test(client, fuzz_cases, _webhook(JSON, recipients))
    _reached(fuzz_cases, changes=15, statuses=100)


def test_signed_webhooks_of_any_json(client, recipients, fuzz_cases):
    _webhook_test(client, fuzz_cases, JSON)


# What business_capability_update may carry as a limit: Meta's values, and text that
# str.isdigit() or a minus sign would pass but int() refuses (or takes as 5,000 digits).
CAPABILITY_LIMITS = mostly(
    st.sampled_from(["TIER_2K", 2000, "250", -1, "-1", 100_000, "TIER_UNLIMITED"]),
    st.one_of(st.sampled_from(["--5", "²", "٣٠٠", "9" * 5000, "-" + "9" * 5000, "-"]), NUMBERS),
    odds=3,
)


def _account_webhook(
    leaf: st.SearchStrategy, display: str, waba_id: str
) -> st.SearchStrategy[dict]:
    """Meta's phone_number_quality_update and account_update about the demo sender's
    number (by its display digits), and business_capability_update about its WABA, its
    leaves sometimes junk from ``leaf``."""

    def field(good: st.SearchStrategy) -> st.SearchStrategy:
        return good if leaf.is_empty else mostly(good, leaf, odds=10)

    def shaped(keys: dict, extra: dict) -> st.SearchStrategy[dict]:
        return mostly(
            st.fixed_dictionaries(keys, optional=extra),
            st.fixed_dictionaries({}, optional=keys | extra),
            odds=10,
        )

    number = mostly(st.just(display), st.sampled_from(["+" + display, "1", ""]) | TEXT)
    tier = mostly(st.sampled_from(["TIER_250", "TIER_2K", "TIER_10K", "TIER_UNLIMITED"]), TEXT)
    extra = {
        "event": field(st.sampled_from(["FLAGGED", "UNFLAGGED", "UPGRADE", "DOWNGRADE"])),
        "current_limit": field(tier),
        "max_daily_conversations_per_business": field(tier),
        "quality_rating": field(mostly(st.sampled_from(["GREEN", "YELLOW", "RED"]), TEXT)),
    }
    quality = shaped({"display_phone_number": field(number)}, extra)
    account = shaped({"phone_number": field(number)}, extra)
    capability = shaped(
        {},
        {
            "max_daily_conversations_per_business": field(CAPABILITY_LIMITS),
            "max_daily_conversation_per_phone": field(CAPABILITY_LIMITS),
            "max_phone_numbers_per_business": field(st.integers(0, 20)),
        },
    )
    change = st.one_of(
        shaped({"field": st.just("phone_number_quality_update"), "value": field(quality)}, {}),
        shaped({"field": st.just("account_update"), "value": field(account)}, {}),
        shaped({"field": st.just("business_capability_update"), "value": field(capability)}, {}),
    )
    entry_id = field(mostly(st.just(waba_id), TEXT, odds=8))
    entry = shaped({"id": entry_id, "changes": st.lists(change, max_size=3)}, {})
    return shaped({"object": st.just("whatsapp_business_account"), "entry": st.lists(entry)}, {})


@pytest.mark.parametrize("junk", [False, True])
def test_signed_account_webhooks(client, recipients, fuzz_cases, junk):
    """Quality, account and capability updates, well formed or with junk leaves (a
    capability's limit is junk now and then even in the well-formed ones): always a 200,
    and the well-formed ones reach the sender (its quality, its limit)."""
    sender = default_sender()
    display = "".join(c for c in sender.display_phone_number or "" if c.isdigit())
    assert display, "the demo sender has a display number"
    assert sender.waba_id, "the demo sender has a WABA id"

    @examples(100)
    @given(payload=_account_webhook(JSON if junk else st.nothing(), display, sender.waba_id))
    def run(payload: Any) -> None:
        response = check(fuzz_cases, lambda: post_webhook(client, payload))
        assert response.status_code == 200, response.get_data()[:500]
        if response.json["applied"]:
            fuzz_cases["applied an account report"] += 1

    run()
    if not junk:
        assert fuzz_cases["applied an account report"] >= fuzz_cases["cases"] // 5, fuzz_cases


def test_unsigned_webhooks_are_refused(client, recipients, fuzz_cases):
    """Any signature header but the right one: 401, nothing changed."""
    hexes = st.one_of(
        st.text("0123456789abcdef", min_size=64, max_size=64),
        # Any Latin-1 text a header can carry: non-ASCII, too short, too long.
        st.text(st.characters(max_codepoint=0xFF, exclude_characters="\r\n"), max_size=80),
    )
    header = st.one_of(hexes.map("sha256={}".format), hexes)

    @examples(80)
    @given(payload=_webhook(st.nothing(), recipients), signature=header)
    def run(payload: dict, signature: str) -> None:
        response = check(
            fuzz_cases,
            lambda: client.post(
                "/webhooks/whatsapp", json=payload, headers={"X-Hub-Signature-256": signature}
            ),
        )
        assert response.status_code == 401

    run()


# ---- (d) the suppression-list CSV import ------------------------------------------

CELL = st.one_of(
    st.sampled_from(["phone", "reason", "+5511999990000", "11 98888-7777", "abc", '"', ""]), TEXT
)
ROWS = st.lists(st.lists(CELL, max_size=4), max_size=8)


@st.composite
def csv_files(draw: st.DrawFn) -> bytes:
    """A CSV of junk cells (any delimiter, any encoding), or bytes that are no CSV at all."""
    if draw(st.booleans()):
        data = draw(st.binary(max_size=300))
    else:
        delimiter = draw(st.sampled_from([",", ";", "\t", "|"]))
        text = "\n".join(delimiter.join(row) for row in draw(ROWS))
        encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "cp1252", "utf-16"]))
        data = text.encode(encoding, errors="replace")
    return data


def test_suppression_import_survives_any_file(signed_in, fuzz_cases):
    @examples(150)
    @given(data=csv_files(), filename=st.sampled_from(["list.csv", "", "x.txt"]) | TEXT)
    def run(data: bytes, filename: str) -> None:
        upload = {"file": (io.BytesIO(data), filename)}
        check(fuzz_cases, lambda: signed_in.post("/suppressions/import", data=upload))

    run()
