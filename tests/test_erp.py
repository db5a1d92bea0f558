"""The ERP client, against the mock ERP on a live server and against broken servers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from flask import Flask

from campaigns.config import ConfigError
from campaigns.erp import (
    ErpClient,
    ErpError,
    ErpPage,
    PageReader,
    client_from_config,
    segment_query,
)
from tests.helpers import SUFFIX, scratch_app, serving

SMALL = 20_000
SEGMENT = {"state": "RJ", "tags": ["vip", "b2b"], "opted_in_only": True}


def answering(status: str, body: bytes, content_type: str = "application/json"):
    """A WSGI app that gives every request the same answer."""

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        start_response(status, headers)
        return [body]

    return wsgi


@pytest.fixture(scope="module")
def erp_app(server_url: str, template_database: str) -> Iterator[Flask]:
    with scratch_app(
        server_url,
        template_database,
        f"disparo_test_erp_client_{SUFFIX}",
        MOCKS_ENABLED=True,
        MOCK_ERP_CUSTOMERS=SMALL,
    ) as application:
        yield application


@pytest.fixture(scope="module")
def live_erp(erp_app: Flask) -> Iterator[str]:
    """The app on a real socket: the ERP base URL the client is pointed at."""
    with serving(erp_app) as base:
        erp_app.config["ERP_BASE_URL"] = f"{base}/mock/erp"
        yield f"{base}/mock/erp"


@pytest.fixture
def client(erp_app: Flask, live_erp: str) -> Iterator[ErpClient]:
    saved = dict(erp_app.config)
    with client_from_config(erp_app.config) as erp:
        yield erp
    erp_app.config.update(saved)


def test_segment_query_speaks_the_erps_query_language():
    assert segment_query(None) == {}
    assert segment_query({}) == {}
    assert segment_query(
        {
            "city": "  São Paulo ",
            "state": None,
            "tags": ["vip", " b2b", "", None],
            "min_total_spent": Decimal("1E+2"),
            "last_purchase_within_days": 30,
            "opted_in_only": False,
            "max_audience": "",
        }
    ) == {
        "city": "São Paulo",
        "tags": "vip,b2b",
        "min_total_spent": "100",
        "last_purchase_within_days": "30",
        "opted_in_only": "false",
    }
    assert segment_query({"tags": {"promo", "b2b"}, "opted_in_only": True}) == {
        "tags": "b2b,promo",
        "opted_in_only": "true",
    }
    assert segment_query({"tags": "vip,promo", "min_total_spent": 99.9}) == {
        "tags": "vip,promo",
        "min_total_spent": "99.9",
    }
    assert segment_query({"min_total_spent": 1e20}) == {"min_total_spent": "1" + "0" * 20}
    assert segment_query({"tags": [], "city": "   "}) == {}


@pytest.mark.parametrize(
    "segment",
    [
        {"colour": "blue"},
        {"cities": ["Recife"]},
        {"min_total_spent": float("nan")},
        {"min_total_spent": Decimal("Infinity")},
        {"max_audience": object()},
    ],
)
def test_segment_query_refuses_what_it_cannot_send_faithfully(segment):
    with pytest.raises(ValueError):
        segment_query(segment)


def test_count_and_page_read_the_mock_erp(client):
    total = client.count(None)
    assert total == SMALL
    audience = client.count(SEGMENT)
    assert 0 < audience < total
    first = client.page(SEGMENT, limit=10)
    assert isinstance(first, ErpPage)
    assert len(first.customers) == 10
    assert all(c["state"] == "RJ" and {"vip", "b2b"} & set(c["tags"]) for c in first.customers)
    assert all(c["opted_in"] for c in first.customers)
    assert first.next_cursor is not None
    second = client.page(SEGMENT, first.next_cursor, limit=10)
    assert second.customers[0]["id"] > first.customers[-1]["id"]
    assert client.count(SEGMENT | {"max_audience": 15}) == 15
    assert len(client.page(None).customers) == 500


def test_iter_customers_reads_each_customer_once_and_resumes_from_a_stored_cursor(client):
    walk = list(client.iter_customers(SEGMENT, page_size=100))
    ids = [c["id"] for page, _ in walk for c in page.customers]
    assert len(ids) == len(set(ids)) == client.count(SEGMENT)
    assert ids == sorted(ids)
    assert walk[-1][1] is None
    assert [after for _, after in walk[:-1]] == [page.next_cursor for page, _ in walk[:-1]]

    # A fan-out that stored the cursor after page 2 and then crashed picks up at page 3.
    stored = walk[1][1]
    rest = client.iter_customers(SEGMENT, stored, page_size=100)
    resumed = [c["id"] for page, _ in rest for c in page.customers]
    assert resumed == ids[200:]


def test_the_page_reader_fetches_the_next_page_while_the_caller_stores_this_one(live_erp):
    asked: list[str | None] = []
    second_asked = threading.Event()
    erp = ErpClient(live_erp)
    page_of = erp.page

    def spy(segment, cursor=None, limit=500):
        asked.append(cursor)
        if len(asked) == 2:
            second_asked.set()
        return page_of(segment, cursor, limit)

    erp.page = spy  # type: ignore[method-assign]
    with PageReader(erp, page_size=100) as reader:
        first = reader.page(SEGMENT, None)
        # Nobody asked for page 2 yet, and it is on its way.
        assert second_asked.wait(5)
        assert asked == [None, first.next_cursor]
        ids, cursor = [c["id"] for c in first.customers], first.next_cursor
        while cursor is not None:
            page = reader.page(SEGMENT, cursor)
            ids += [c["id"] for c in page.customers]
            cursor = page.next_cursor
        # Each page was requested once, and the walk is the plain client's walk.
        assert len(asked) == len(set(asked))
        with ErpClient(live_erp) as other:
            walk = other.iter_customers(SEGMENT, page_size=100)
            plain = [c["id"] for page, _ in walk for c in page.customers]
        assert ids == plain
        # A cursor other than the one fetched ahead (resumed elsewhere) is read afresh.
        again = reader.page(SEGMENT, first.next_cursor)
        assert [c["id"] for c in again.customers] == plain[100:200]


def test_the_page_reader_raises_the_erps_errors_to_the_caller():
    down = answering("503 Service Unavailable", b'{"error": {"message": "maintenance"}}')
    with serving(down) as base, PageReader(ErpClient(base)) as reader:
        with pytest.raises(ErpError, match="maintenance") as caught:
            reader.page(None, None)
        assert caught.value.status == 503
    stuck = answering("200 OK", b'{"customers": [{"id": "C1"}], "next_cursor": "same"}')
    with serving(stuck) as base, PageReader(ErpClient(base)) as reader:
        started = time.monotonic()
        with pytest.raises(ErpError, match="same cursor"):
            reader.page(None, "same")
        assert time.monotonic() - started < 5


def test_tags_reads_the_erps_list(client):
    assert client.tags() == ["vip", "newsletter", "churn-risk", "b2b", "promo"]


@pytest.mark.parametrize(
    "body", [b'{"tags": "vip"}', b'{"tags": [1, 2]}', b"[]", b'{"names": ["vip"]}']
)
def test_a_malformed_tags_answer_is_an_erp_error(body):
    with serving(answering("200 OK", body)) as base, ErpClient(base) as erp:
        with pytest.raises(ErpError, match="no list of tags"):
            erp.tags()


def test_tags_are_trimmed_and_each_given_once():
    body = b'{"tags": [" vip ", "vip", "", "b2b"]}'
    with serving(answering("200 OK", body)) as base, ErpClient(base) as erp:
        assert erp.tags() == ["vip", "b2b"]


def test_an_unknown_tag_is_a_caller_error_at_the_tags_field(client):
    with pytest.raises(ErpError) as caught:
        client.count({"tags": ["vip", "gold"]})
    assert caught.value.is_caller_error
    assert set(caught.value.fields) == {"tags"} and "gold" in caught.value.fields["tags"]


def test_a_bad_segment_is_a_caller_error_with_the_erps_field_messages(client):
    with pytest.raises(ErpError) as caught:
        client.count({"state": "São Paulo", "last_purchase_within_days": 0})
    error = caught.value
    assert error.status == 400
    assert error.is_caller_error
    assert set(error.fields) == {"state", "last_purchase_within_days"}
    assert "two-letter" in error.fields["state"]
    assert "state" in error.message


def test_a_503_is_an_erp_error_that_may_be_retried(client, erp_app):
    erp_app.config["MOCK_ERP_FAILURE_RATE"] = 1.0
    with pytest.raises(ErpError) as caught:
        client.count(SEGMENT)
    assert caught.value.status == 503
    assert not caught.value.is_caller_error
    assert "injected" in caught.value.message
    with pytest.raises(ErpError) as caught:
        next(client.iter_customers(SEGMENT))
    assert caught.value.status == 503


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_closed_port_is_an_erp_error_without_status():
    with ErpClient(f"http://127.0.0.1:{free_port()}/erp") as erp, pytest.raises(ErpError) as caught:
        erp.count(None)
    assert caught.value.status is None
    assert not caught.value.is_caller_error
    assert caught.value.fields == {}


def test_a_server_that_never_answers_times_out():
    with socket.socket() as listener:
        # Connections complete in the kernel's backlog, but nobody ever reads them.
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        base = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with ErpClient(base, timeout=(1.0, 0.2)) as erp, pytest.raises(ErpError) as caught:
            erp.count(None)
    assert caught.value.status is None
    assert "in time" in caught.value.message


@pytest.mark.parametrize(
    ("answer", "status", "caller_error"),
    [
        (answering("200 OK", b"<html>hello</html>", "text/html"), 200, False),
        (answering("200 OK", b'{"total": 3}'), 200, False),
        (answering("200 OK", b'{"count": true}'), 200, False),
        (answering("200 OK", b"[1, 2]"), 200, False),
        (answering("500 Internal Server Error", b"<h1>oops</h1>", "text/html"), 500, False),
        (answering("502 Bad Gateway", b'{"error": "upstream"}'), 502, False),
        (answering("404 Not Found", b"no such path", "text/plain"), 404, True),
        (answering("429 Too Many Requests", b"{}"), 429, False),
    ],
)
def test_unexpected_answers_become_erp_errors(answer, status, caller_error):
    with serving(answer) as base, ErpClient(base) as erp, pytest.raises(ErpError) as caught:
        erp.count({"city": "Recife"})
    assert caught.value.status == status
    assert caught.value.is_caller_error is caller_error
    assert caught.value.fields == {}


@pytest.mark.parametrize(
    "body",
    [
        b'{"customers": "none", "next_cursor": null}',
        b'{"customers": [1, 2], "next_cursor": null}',
        b'{"customers": [], "next_cursor": 7}',
    ],
)
def test_a_malformed_page_is_an_erp_error(body):
    with serving(answering("200 OK", body)) as base, ErpClient(base) as erp:
        with pytest.raises(ErpError):
            erp.page(None)


def test_a_cursor_that_does_not_move_stops_the_walk():
    stuck = answering("200 OK", b'{"customers": [{"id": "C1"}], "next_cursor": "same"}')
    with serving(stuck) as base, ErpClient(base) as erp:
        pages = erp.iter_customers(None, cursor="same")
        with pytest.raises(ErpError, match="same cursor"):
            next(pages)


def test_the_client_comes_from_the_config_and_needs_a_base_url():
    with pytest.raises(ConfigError, match="ERP_BASE_URL"):
        client_from_config({"ERP_BASE_URL": None})
    with client_from_config({"ERP_BASE_URL": "https://erp.example.com/api/"}) as erp:
        assert erp.base_url == "https://erp.example.com/api"
        assert erp.timeout == (3.05, 30.0)
    short = client_from_config({"ERP_BASE_URL": "https://erp.example.com"}, timeout=(1.0, 5.0))
    with short:
        assert short.timeout == (1.0, 5.0)
        with pytest.raises(ValueError):
            erp.page(None, limit=0)
