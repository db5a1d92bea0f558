"""The mock ERP: a deterministic customer base, its segment filters and its paging."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import db
from campaigns import config
from campaigns.auth import is_self_authenticated, required_role
from campaigns.config import ConfigError
from mocks import erp as mock_erp
from tests.helpers import SUFFIX, make_app, scratch_app

SMALL = 20_000
KEYS = {
    "id",
    "name",
    "first_name",
    "phone",
    "email",
    "city",
    "state",
    "tags",
    "total_spent",
    "last_purchase_at",
    "opted_in",
    "language",
}
VALID_PHONE = re.compile(r"\+55\d{2}9\d{8}")
CITY_STATES = {name: uf for name, uf, _, _ in mock_erp.CITIES}
TAG_NAMES = {tag for tag, _ in mock_erp.TAGS}


@pytest.fixture(scope="module")
def module_app(server_url: str, template_database: str) -> Iterator[Flask]:
    """One app for the module: the mock touches no table, so a database per test buys nothing."""
    with scratch_app(
        server_url,
        template_database,
        f"disparo_test_mock_erp_{SUFFIX}",
        MOCKS_ENABLED=True,
        MOCK_ERP_CUSTOMERS=SMALL,
    ) as application:
        yield application


@pytest.fixture
def erp_app(module_app: Flask) -> Iterator[Flask]:
    """The module's app, with whatever a test changed in its config put back afterwards."""
    saved = dict(module_app.config)
    yield module_app
    module_app.config.update(saved)


@pytest.fixture
def erp(erp_app: Flask) -> FlaskClient:
    return erp_app.test_client()


@pytest.fixture(scope="module")
def everyone() -> list[dict]:
    """Every customer of the small base, as the oracle the filters are checked against."""
    customers = mock_erp.customers_for(SMALL)
    return mock_erp.render(customers, np.arange(SMALL))


def walk(erp: FlaskClient, query: dict[str, str], limit: int = 1000) -> list[str]:
    """Every customer id of a segment, page by page, as a fan-out would read them."""
    ids: list[str] = []
    cursor = None
    while True:
        params = query | {"limit": str(limit)} | ({"cursor": cursor} if cursor else {})
        response = erp.get("/mock/erp/customers", query_string=params)
        assert response.status_code == 200, response.json
        ids += [customer["id"] for customer in response.json["customers"]]
        cursor = response.json["next_cursor"]
        if cursor is None:
            return ids


def count(erp: FlaskClient, query: dict[str, str]) -> int:
    response = erp.get("/mock/erp/customers/count", query_string=query)
    assert response.status_code == 200, response.json
    return response.json["count"]


def purchased_within(days: int) -> Callable[[dict], bool]:
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    since = midnight - timedelta(days=days)
    return lambda c: datetime.fromisoformat(c["last_purchase_at"]) >= since


FILTER_CASES = [
    ({"city": "são PAULO"}, lambda c: c["city"] == "São Paulo"),
    ({"city": "Niterói"}, lambda c: c["city"] == "Niterói"),
    # Typed without accents, in any case, with stray spaces: the same city.
    ({"city": "sao paulo"}, lambda c: c["city"] == "São Paulo"),
    ({"city": "  NITEROI "}, lambda c: c["city"] == "Niterói"),
    ({"city": "Florianopolis"}, lambda c: c["city"] == "Florianópolis"),
    ({"city": "brasília"}, lambda c: c["city"] == "Brasília"),
    ({"city": "Sao  Paulo"}, lambda c: c["city"] == "São Paulo"),
    # Written decomposed (o + U+0301, as macOS may send it): the same letter.
    ({"city": "Niteroi\u0301"}, lambda c: c["city"] == "Niterói"),
    # Accents are ignored, not letters: "Sã" is no city; a bare mark is no filter-all.
    ({"city": "Sã"}, lambda c: False),
    ({"city": "\u0301"}, lambda c: False),
    ({"city": "Atlantis"}, lambda c: False),
    ({"state": "rj"}, lambda c: c["state"] == "RJ"),
    ({"state": "AC"}, lambda c: False),
    ({"tags": "vip"}, lambda c: "vip" in c["tags"]),
    ({"tags": "vip, b2b"}, lambda c: bool({"vip", "b2b"} & set(c["tags"]))),
    (
        {"min_total_spent": "1000.5"},
        lambda c: Decimal(str(c["total_spent"])) >= Decimal("1000.5"),
    ),
    ({"min_total_spent": "0"}, lambda c: True),
    ({"last_purchase_within_days": "30"}, purchased_within(30)),
    ({"opted_in_only": "true"}, lambda c: c["opted_in"]),
    ({"opted_in_only": "false"}, lambda c: True),
    (
        {
            "state": "SP",
            "tags": "newsletter,promo",
            "min_total_spent": "200",
            "last_purchase_within_days": "180",
            "opted_in_only": "true",
        },
        lambda c: (
            c["state"] == "SP"
            and bool({"newsletter", "promo"} & set(c["tags"]))
            and c["total_spent"] >= 200
            and purchased_within(180)(c)
            and c["opted_in"]
        ),
    ),
    (
        {"city": "Campinas", "tags": "churn-risk", "opted_in_only": "true"},
        lambda c: c["city"] == "Campinas" and "churn-risk" in c["tags"] and c["opted_in"],
    ),
]


@pytest.mark.parametrize(("query", "matches"), FILTER_CASES)
def test_filters_select_exactly_the_matching_customers(erp, everyone, query, matches):
    expected = [c["id"] for c in everyone if matches(c)]
    assert count(erp, query) == len(expected)
    assert walk(erp, query) == expected


def test_the_tags_endpoint_lists_every_tag_a_segment_may_name(erp, everyone):
    response = erp.get("/mock/erp/tags")
    assert response.status_code == 200
    assert response.json == {"tags": ["vip", "newsletter", "churn-risk", "b2b", "promo"]}
    carried = {tag for customer in everyone for tag in customer["tags"]}
    assert set(response.json["tags"]) == carried == TAG_NAMES
    for tag in response.json["tags"]:  # each one a filter the ERP accepts
        assert count(erp, {"tags": tag}) > 0


def test_a_customer_is_the_same_every_time_and_computed_from_its_id_alone(erp):
    first = erp.get("/mock/erp/customers/C0000042")
    assert first.status_code == 200
    mock_erp.clear_cache()
    again = erp.get("/mock/erp/customers/C0000042")
    listed = erp.get("/mock/erp/customers", query_string={"limit": "50"})
    assert first.json == again.json == listed.json["customers"][41]
    assert set(first.json) == KEYS
    assert first.json["id"] == "C0000042"
    # A bigger base does not change the customers it shares with a smaller one.
    assert mock_erp.customer(42) == first.json
    big = mock_erp.generate(np.arange(1, 3 * SMALL + 1))
    assert mock_erp.render(big, np.arange(41, 42))[0] == first.json


def test_customers_have_the_documented_fields(everyone):
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    for number, customer in enumerate(everyone, start=1):
        assert set(customer) == KEYS
        assert customer["id"] == f"C{number:07d}"
        assert customer["name"].startswith(customer["first_name"] + " ")
        assert re.fullmatch(r"[a-z]+\.[a-z]+\d+@example\.com", customer["email"])
        assert CITY_STATES[customer["city"]] == customer["state"]
        assert set(customer["tags"]) <= TAG_NAMES
        assert customer["total_spent"] >= 0
        assert round(customer["total_spent"], 2) == customer["total_spent"]
        purchased = datetime.fromisoformat(customer["last_purchase_at"])
        assert customer["last_purchase_at"].endswith("Z")
        assert midnight - timedelta(days=mock_erp.MAX_DAYS_AGO) <= purchased < midnight
        assert isinstance(customer["opted_in"], bool)
    shares = Counter(tag for customer in everyone for tag in customer["tags"])
    assert shares.keys() == TAG_NAMES
    assert 0.80 < sum(c["opted_in"] for c in everyone) / len(everyone) < 0.90
    assert len({c["city"] for c in everyone}) == len(mock_erp.CITIES)


def test_about_one_percent_of_phones_are_invalid_and_one_percent_repeat(everyone):
    phones = [c["phone"] for c in everyone]
    invalid = [phone for phone in phones if not VALID_PHONE.fullmatch(phone)]
    seen: set[str] = set()
    repeats = 0
    for phone in phones:
        if VALID_PHONE.fullmatch(phone):
            repeats += phone in seen
            seen.add(phone)
    assert 0.006 < len(invalid) / len(phones) < 0.014
    assert 0.006 < repeats / len(phones) < 0.014
    # Both kinds of breakage appear: cut short, and letters among the digits.
    assert any(len(phone) < 14 for phone in invalid)
    assert any(re.search(r"[A-Z]", phone) for phone in invalid)


def test_max_audience_keeps_the_first_matches_in_id_order(erp, everyone):
    vip = [c["id"] for c in everyone if "vip" in c["tags"]]
    assert count(erp, {"tags": "vip", "max_audience": "25"}) == 25
    assert walk(erp, {"tags": "vip", "max_audience": "25"}, limit=10) == vip[:25]
    huge = {"tags": "vip", "max_audience": str(SMALL * 10)}
    assert count(erp, huge) == len(vip)
    assert walk(erp, huge) == vip
    assert count(erp, {"max_audience": "7"}) == 7
    assert walk(erp, {"max_audience": "7"}, limit=3) == [f"C{n:07d}" for n in range(1, 8)]


@pytest.mark.parametrize(
    ("query", "limit"),
    [
        ({"state": "RJ", "tags": "vip,b2b", "opted_in_only": "true"}, 1),
        ({"state": "RJ", "opted_in_only": "true"}, 137),
        ({"state": "RJ", "opted_in_only": "true"}, 1000),
    ],
)
def test_paging_reads_every_customer_once_and_agrees_with_the_count(erp, query, limit):
    ids = walk(erp, query, limit=limit)
    assert len(ids) == len(set(ids)) == count(erp, query)
    assert ids == sorted(ids)


def test_paging_without_filters_covers_the_whole_base(erp):
    ids = walk(erp, {})
    assert len(ids) == SMALL == count(erp, {})
    assert ids[0] == "C0000001" and ids[-1] == f"C{SMALL:07d}"


def test_the_default_page_is_500_and_the_last_page_has_no_cursor(erp):
    response = erp.get("/mock/erp/customers")
    assert len(response.json["customers"]) == mock_erp.DEFAULT_PAGE
    empty = erp.get("/mock/erp/customers", query_string={"city": "Atlantis"})
    assert empty.json == {"customers": [], "next_cursor": None}
    past_the_end = mock_erp.encode_cursor(SMALL + 5)
    tail = erp.get("/mock/erp/customers", query_string={"cursor": past_the_end})
    assert tail.json == {"customers": [], "next_cursor": None}


def test_blank_filters_mean_no_filter(erp):
    blank = {name: "" for name in mock_erp.FILTERS} | {"tags": " , "}
    assert count(erp, blank) == SMALL


def test_bad_filters_are_400_with_one_message_per_field(erp):
    response = erp.get(
        "/mock/erp/customers/count",
        query_string={
            "state": "São Paulo",
            "tags": "vip,gold",
            "min_total_spent": "-5",
            "last_purchase_within_days": "soon",
            "opted_in_only": "maybe",
            "max_audience": "0",
            "colour": "blue",
        },
    )
    assert response.status_code == 400
    error = response.json["error"]
    assert error["code"] == "invalid_segment"
    assert set(error["fields"]) == {
        "state",
        "tags",
        "min_total_spent",
        "last_purchase_within_days",
        "opted_in_only",
        "max_audience",
        "colour",
    }
    assert "gold" in error["fields"]["tags"]
    assert "two-letter" in error["fields"]["state"]
    assert error["message"]


@pytest.mark.parametrize(
    "query",
    [{"min_total_spent": "NaN"}, {"min_total_spent": "Infinity"}, {"min_total_spent": "1e"}],
)
def test_amounts_must_be_finite_numbers(erp, query):
    response = erp.get("/mock/erp/customers/count", query_string=query)
    assert response.status_code == 400
    assert set(response.json["error"]["fields"]) == {"min_total_spent"}


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "!!!"}, "cursor"),
    ],
)
def test_bad_page_parameters_are_400(erp, query, field):
    response = erp.get("/mock/erp/customers", query_string=query)
    assert response.status_code == 400
    assert response.json["error"]["code"] == "invalid_page"
    assert set(response.json["error"]["fields"]) == {field}


def test_the_count_endpoint_takes_no_page_parameters(erp):
    response = erp.get("/mock/erp/customers/count", query_string={"limit": "5"})
    assert response.status_code == 400
    assert set(response.json["error"]["fields"]) == {"limit"}


@pytest.mark.parametrize("customer_id", ["C0000000", f"C{SMALL + 1:07d}", "C42", "42", "c0000042"])
def test_unknown_customers_are_404(erp, customer_id):
    response = erp.get(f"/mock/erp/customers/{customer_id}")
    assert response.status_code == 404
    assert response.json["error"]["code"] == "not_found"


def test_injected_failures_are_503_with_a_json_error(erp_app, erp, monkeypatch):
    erp_app.config["MOCK_ERP_FAILURE_RATE"] = 0.5
    monkeypatch.setattr(mock_erp.random, "random", lambda: 0.49)
    response = erp.get("/mock/erp/customers/count")
    assert response.status_code == 503
    assert response.json["error"]["code"] == "unavailable"
    assert response.headers["Retry-After"] == "1"
    monkeypatch.setattr(mock_erp.random, "random", lambda: 0.51)
    assert erp.get("/mock/erp/customers/count").status_code == 200
    erp_app.config["MOCK_ERP_FAILURE_RATE"] = 1.0
    assert erp.get("/mock/erp/customers/C0000001").status_code == 503


def test_latency_is_injected_before_answering(erp_app, erp, monkeypatch):
    pauses: list[float] = []
    monkeypatch.setattr(mock_erp.time, "sleep", pauses.append)
    erp.get("/mock/erp/customers/count")
    assert pauses == []
    erp_app.config["MOCK_ERP_LATENCY_MS"] = 250
    assert erp.get("/mock/erp/customers/count").status_code == 200
    assert pauses == [0.25]


def test_the_mock_needs_no_login_and_is_only_mounted_with_mocks_on(erp_app, database_url_for_test):
    assert required_role(erp_app, "mock_erp.customer_list") is None
    assert is_self_authenticated("mock_erp") and is_self_authenticated("mock_whatsapp")
    assert is_self_authenticated("api") and is_self_authenticated("webhooks")
    assert not is_self_authenticated("mock") and not is_self_authenticated("campaigns")
    assert "mock_erp" in erp_app.blueprints

    without = make_app(database_url_for_test, MOCKS_ENABLED=False)
    assert "mock_erp" not in without.blueprints
    assert not any(rule.rule.startswith("/mock/") for rule in without.url_map.iter_rules())
    with without.app_context():
        response = without.test_client().get("/mock/erp/customers/count")
        assert response.status_code == 404
        db.engine.dispose()


def test_a_million_customers_by_default(database_url_for_test, monkeypatch):
    monkeypatch.delenv("MOCK_ERP_CUSTOMERS", raising=False)
    application = make_app(database_url_for_test, MOCKS_ENABLED=True)
    assert application.config["MOCK_ERP_CUSTOMERS"] == 1_000_000
    client = application.test_client()
    with application.app_context():
        assert count(client, {}) == 1_000_000
        paulistanos = count(client, {"city": "São Paulo"})
        assert 0.25 < paulistanos / 1_000_000 < 0.33
        assert count(client, {"city": "São Paulo", "max_audience": "1000"}) == 1000
        last = mock_erp.encode_cursor(999_999)
        tail = client.get("/mock/erp/customers", query_string={"cursor": last}).json
        assert [c["id"] for c in tail["customers"]] == ["C1000000"]
        assert tail["next_cursor"] is None
        db.engine.dispose()


@pytest.fixture
def settings_env(monkeypatch, tmp_path):
    """A development environment with nothing else set, for reading settings."""
    monkeypatch.setattr(config, "load_env_file", lambda: None)
    monkeypatch.setattr(config, "INSTANCE_PATH", tmp_path)
    monkeypatch.setenv("DISPARO_ENV", "development")
    for name in ("MOCK_ERP_CUSTOMERS", "MOCK_ERP_LATENCY_MS", "MOCK_ERP_FAILURE_RATE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_mock_erp_settings_have_defaults(settings_env):
    flask_config = config.load_settings().flask_config()
    assert flask_config["MOCK_ERP_CUSTOMERS"] == 1_000_000
    assert flask_config["MOCK_ERP_LATENCY_MS"] == 0
    assert flask_config["MOCK_ERP_FAILURE_RATE"] == 0.0


def test_mock_erp_settings_are_read_from_the_environment(settings_env):
    settings_env.setenv("MOCK_ERP_CUSTOMERS", "50_000")
    settings_env.setenv("MOCK_ERP_LATENCY_MS", "0")
    settings_env.setenv("MOCK_ERP_FAILURE_RATE", "0.25")
    settings = config.load_settings()
    assert settings.mock_erp_customers == 50_000
    assert settings.mock_erp_latency_ms == 0
    assert settings.mock_erp_failure_rate == 0.25


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("MOCK_ERP_CUSTOMERS", "lots", "MOCK_ERP_CUSTOMERS must be a whole number"),
        ("MOCK_ERP_CUSTOMERS", "0", "MOCK_ERP_CUSTOMERS must be at least 1"),
        ("MOCK_ERP_CUSTOMERS", "10000000", "MOCK_ERP_CUSTOMERS must be at most"),
        ("MOCK_ERP_LATENCY_MS", "-1", "MOCK_ERP_LATENCY_MS must be at least 0"),
        ("MOCK_ERP_LATENCY_MS", "0.5", "MOCK_ERP_LATENCY_MS must be a whole number"),
        ("MOCK_ERP_FAILURE_RATE", "often", "MOCK_ERP_FAILURE_RATE must be a number from 0 to 1"),
        ("MOCK_ERP_FAILURE_RATE", "1.5", "MOCK_ERP_FAILURE_RATE must be a number from 0 to 1"),
        ("MOCK_ERP_FAILURE_RATE", "nan", "MOCK_ERP_FAILURE_RATE must be a number from 0 to 1"),
    ],
)
def test_bad_mock_erp_settings_stop_the_process(settings_env, name, raw, message):
    settings_env.setenv(name, raw)
    with pytest.raises(ConfigError, match=message):
        config.load_settings()
