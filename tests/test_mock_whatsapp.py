"""The mock WhatsApp over HTTP, through MockProvider: its log, injected errors and webhooks."""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from flask import Flask
from werkzeug.wrappers import Request, Response

from app import db
from campaigns import config
from campaigns.config import ConfigError
from campaigns.models import (
    MessageTemplate,
    ParameterFormat,
    Provider,
    Sender,
    TemplateCategory,
    TemplateStatus,
)
from campaigns.providers.base import SendError, SendResult
from campaigns.providers.errors import ErrorKind
from campaigns.webhooks import signers
from mocks import tasks as mock_tasks
from mocks import whatsapp as mock_whatsapp
from mocks.models import MockWhatsAppMessage, MockWhatsAppWebhook
from mocks.provider import MockProvider, mock_api_base_url
from tests.helpers import serving

PHONE_NUMBER_ID = "100000000000777"
OTHER_PHONE_NUMBER_ID = "100000000000888"
APP_SECRET = "mock-app-secret-for-signing"
RECEIVED_AT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00")


@pytest.fixture
def mock_app(app: Flask, live_server: str) -> Flask:
    """The test app on a socket, its mock WhatsApp reached over HTTP like any provider."""
    assert app.config["MOCKS_ENABLED"], "tests run with DISPARO_ENV=development (mocks on)"
    app.config.update(
        APP_BASE_URL=live_server,
        MOCK_WHATSAPP_LATENCY_MS=0,
        MOCK_WHATSAPP_THROTTLE_RATE=0.0,
        MOCK_WHATSAPP_TRANSIENT_RATE=0.0,
        MOCK_WHATSAPP_PERMANENT_RATE=0.0,
        MOCK_WHATSAPP_WEBHOOKS=True,
        MOCK_WHATSAPP_READ_RATE=0.6,
        MOCK_WHATSAPP_WEBHOOK_DELAY_MS=0,
    )
    return app


def _sender(name: str, phone_number_id: str, app_secret: str | None = APP_SECRET) -> Sender:
    sender = Sender(
        name=name,
        provider=Provider.MOCK,
        phone_number_id=phone_number_id,
        display_phone_number="+55 11 90000-0777",
        waba_id="200000000000777",
        app_secret=app_secret,
    )
    db.session.add(sender)
    db.session.commit()
    return sender


@pytest.fixture
def sender(mock_app: Flask) -> Sender:
    return _sender("Mock 777", PHONE_NUMBER_ID)


@pytest.fixture
def template(sender: Sender) -> MessageTemplate:
    template = MessageTemplate(
        sender_id=sender.id,
        name="promo_fim_de_semana",
        language="pt_BR",
        category=TemplateCategory.MARKETING,
        parameter_format=ParameterFormat.NAMED,
        body_text="Oi {{first_name}}, {{discount}} de desconto!",
        status=TemplateStatus.APPROVED,
    )
    db.session.add(template)
    db.session.commit()
    return template


@pytest.fixture
def send(mock_app: Flask, sender: Sender, template: MessageTemplate) -> Callable[..., SendResult]:
    def send_one(
        to: str = "+5511987654321", callback_data: str = "1", via: Sender | None = None
    ) -> SendResult:
        provider = MockProvider(via or sender, mock_app.config)
        return provider.send_template(
            to=to,
            template=template,
            params={"first_name": "Ana", "discount": "15%"},
            callback_data=callback_data,
        )

    return send_one


def logged() -> list[MockWhatsAppMessage]:
    return list(db.session.scalars(sa.select(MockWhatsAppMessage).order_by(MockWhatsAppMessage.id)))


def webhooks() -> list[MockWhatsAppWebhook]:
    db.session.expire_all()  # rows change under us, in the server's threads
    return list(db.session.scalars(sa.select(MockWhatsAppWebhook).order_by(MockWhatsAppWebhook.id)))


def test_an_accepted_message_is_logged_with_its_callback_data(send):
    result = send(callback_data="4711")

    assert result.provider_message_id.startswith("wamid.")
    [row] = logged()
    assert row.wamid == result.provider_message_id
    assert row.to == "+5511987654321"
    assert row.phone_number_id == PHONE_NUMBER_ID
    assert row.message_id == "4711"
    assert row.template_name == "promo_fim_de_semana"


def test_the_mock_answers_with_meta_json(mock_app, sender):
    payload = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "+55 11 98765-4321",
        "type": "template",
        "template": {"name": "hello_world", "language": {"code": "en_US"}},
    }
    url = f"{mock_api_base_url(mock_app.config)}/{PHONE_NUMBER_ID}/messages"
    response = requests.post(url, json=payload, timeout=10)

    assert response.status_code == 200
    body = response.json()
    assert body["messaging_product"] == "whatsapp"
    assert body["contacts"] == [{"input": "+55 11 98765-4321", "wa_id": "5511987654321"}]
    [message] = body["messages"]
    assert message["message_status"] == "accepted"
    assert message["id"].startswith("wamid.")
    [row] = logged()
    assert row.message_id is None  # no biz_opaque_callback_data was sent


VALID = {
    "messaging_product": "whatsapp",
    "recipient_type": "individual",
    "to": "+5511987654321",
    "type": "template",
    "biz_opaque_callback_data": "9",
    "template": {
        "name": "promo",
        "language": {"code": "pt_BR"},
        "components": [
            {"type": "body", "parameters": [{"type": "text", "parameter_name": "a", "text": "x"}]}
        ],
    },
}


def _with(path: str, value: Any) -> dict[str, Any]:
    payload = json.loads(json.dumps(VALID))
    *parents, last = path.split(".")
    target = payload
    for key in parents:
        target = target[int(key)] if isinstance(target, list) else target[key]
    if value is ...:
        del target[last]
    elif isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return payload


REFUSALS = [
    (_with("messaging_product", "sms"), 100),
    (_with("to", ...), 131008),
    (_with("to", "12"), 131009),
    (_with("type", "text"), 100),
    (_with("template.name", ...), 131008),
    (_with("template.name", " "), 131008),
    (_with("template.language", ...), 131008),
    (_with("template.language.code", ""), 131008),
    (_with("template.components.0.parameters.0.text", ""), 131008),
    (_with("template.components.0.parameters.0.type", "image"), 131009),
    (
        _with(
            "template.components.0.parameters",
            [
                {"type": "text", "parameter_name": "a", "text": "x"},
                {"type": "text", "text": "y"},
            ],
        ),
        132012,
    ),
    (_with("biz_opaque_callback_data", "x" * 513), 131009),
    ("not an object", 100),
]


@pytest.mark.parametrize(("payload", "code"), REFUSALS)
def test_the_mock_refuses_what_meta_would(mock_app, payload, code):
    url = f"{mock_api_base_url(mock_app.config)}/{PHONE_NUMBER_ID}/messages"
    response = requests.post(url, json=payload, timeout=10)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"].startswith(f"(#{code})")
    assert logged() == []


def test_the_valid_payload_of_the_refusal_cases_is_accepted(mock_app):
    url = f"{mock_api_base_url(mock_app.config)}/{PHONE_NUMBER_ID}/messages"
    assert requests.post(url, json=VALID, timeout=10).status_code == 200


def _log(base: str, **params: Any) -> list[dict[str, Any]]:
    response = requests.get(f"{base}/mock/whatsapp/log", params=params, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_log_lists_accepted_messages_oldest_first_and_filters(mock_app, send, live_server):
    other = _sender("Mock 888", OTHER_PHONE_NUMBER_ID)
    first = send(callback_data="1").provider_message_id
    second = send(callback_data="2", via=other).provider_message_id
    third = send(to="+5511912345678", callback_data="3").provider_message_id

    everything = _log(live_server)
    assert [row["wamid"] for row in everything] == [first, second, third]
    assert everything[0] == {
        "wamid": first,
        "to": "+5511987654321",
        "phone_number_id": PHONE_NUMBER_ID,
        "message_id": "1",
        "received_at": everything[0]["received_at"],
    }
    assert all(RECEIVED_AT.fullmatch(row["received_at"]) for row in everything)

    mine = _log(live_server, phone_number_id=PHONE_NUMBER_ID)
    assert [row["message_id"] for row in mine] == ["1", "3"]
    theirs = _log(live_server, phone_number_id=OTHER_PHONE_NUMBER_ID)
    assert [row["wamid"] for row in theirs] == [second]

    since = everything[1]["received_at"]
    assert [row["wamid"] for row in _log(live_server, since=since)] == [second, third]
    # An unencoded "+00:00" arrives as " 00:00": still understood.
    unencoded = requests.get(f"{live_server}/mock/whatsapp/log?since={since}", timeout=10)
    assert [row["wamid"] for row in unencoded.json()] == [second, third]
    assert [row["wamid"] for row in _log(live_server, limit=1)] == [first]


@pytest.mark.parametrize("params", [{"since": "yesterday"}, {"limit": "0"}, {"limit": "many"}])
def test_the_log_refuses_bad_queries(mock_app, live_server, params):
    response = requests.get(f"{live_server}/mock/whatsapp/log", params=params, timeout=10)
    assert response.status_code == 400
    assert response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("setting", "kind", "code", "http_status"),
    [
        ("MOCK_WHATSAPP_THROTTLE_RATE", ErrorKind.THROTTLED, 130429, 429),
        ("MOCK_WHATSAPP_TRANSIENT_RATE", ErrorKind.RETRY, 131000, 500),
        ("MOCK_WHATSAPP_PERMANENT_RATE", ErrorKind.PERMANENT, 131026, 400),
    ],
)
def test_injected_errors_at_rate_one(mock_app, send, setting, kind, code, http_status):
    mock_app.config[setting] = 1.0
    for _ in range(3):
        with pytest.raises(SendError) as caught:
            send()
        assert (caught.value.kind, caught.value.code) == (kind, code)
        assert caught.value.http_status == http_status
    assert logged() == []
    assert webhooks() == []


@pytest.mark.parametrize(
    ("to", "kind", "code", "http_status"),
    [
        ("+5511987650000", ErrorKind.PERMANENT, 131026, 400),
        ("+5511987650429", ErrorKind.THROTTLED, 130429, 429),  # twice (its third passes)
        ("+5511987650500", ErrorKind.RETRY, 131000, 500),
    ],
)
def test_some_numbers_always_fail_the_same_way(send, to, kind, code, http_status):
    for _ in range(2):
        with pytest.raises(SendError) as caught:
            send(to=to)
        assert (caught.value.kind, caught.value.code, caught.value.http_status) == (
            kind,
            code,
            http_status,
        )
    assert logged() == []
    send(to="+5511987650001")  # its neighbour goes through
    assert len(logged()) == 1


def test_latency_is_injected_without_changing_the_answer(mock_app, send):
    mock_app.config["MOCK_WHATSAPP_LATENCY_MS"] = 20
    assert send().provider_message_id.startswith("wamid.")


def test_every_message_gets_sent_and_delivered_and_the_poster_is_deferred(
    mock_app, send, in_memory_queue
):
    mock_app.config["MOCK_WHATSAPP_WEBHOOK_DELAY_MS"] = 1500
    wamid = send(callback_data="77").provider_message_id

    rows = webhooks()
    statuses = [row.status for row in rows]
    assert statuses[:2] == ["sent", "delivered"]
    assert statuses[2:] == (["read"] if mock_whatsapp.is_read(wamid, 0.6) else [])
    [received_at] = [row.received_at for row in logged()]
    assert [(row.due_at - received_at).total_seconds() for row in rows] == [
        1.5 * n for n in range(1, len(rows) + 1)
    ]
    assert all(row.wamid == wamid and row.posted_at is None for row in rows)

    [job] = in_memory_queue.jobs.values()
    assert job["task_name"] == "mock_whatsapp.post_webhooks"
    assert job["queue_name"] == "maintenance"
    assert job["args"] == {}
    # A second send while that run waits adds no second job (its queueing lock).
    send(callback_data="78")
    assert len(in_memory_queue.jobs) == 1


def test_webhooks_off_queues_none(mock_app, send, in_memory_queue):
    mock_app.config["MOCK_WHATSAPP_WEBHOOKS"] = False
    send()
    assert len(logged()) == 1
    assert webhooks() == []
    assert in_memory_queue.jobs == {}


def test_about_sixty_percent_are_read_and_always_the_same_ones():
    wamids = [mock_whatsapp.new_wamid() for _ in range(2000)]
    reads = [mock_whatsapp.is_read(wamid, 0.6) for wamid in wamids]
    assert 0.5 < sum(reads) / len(reads) < 0.7
    assert reads == [mock_whatsapp.is_read(wamid, 0.6) for wamid in wamids]
    assert not any(mock_whatsapp.is_read(wamid, 0.0) for wamid in wamids)
    assert all(mock_whatsapp.is_read(wamid, 1.0) for wamid in wamids)


@dataclass
class Receiver:
    """A stand-in for /webhooks/whatsapp: keeps each raw body and its headers."""

    status: int = 200
    base: str = ""
    received: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        with self.lock:
            self.received.append((request.path, dict(request.headers), request.get_data()))
        return Response(b"", status=self.status)(environ, start_response)


@pytest.fixture
def receiver(mock_app: Flask) -> Iterator[Receiver]:
    """Sends go to the mock (live_server); webhooks then go to this stub instead."""
    stub = Receiver()
    with serving(stub) as base:
        stub.base = base
        yield stub


def _point_webhooks_at(app: Flask, receiver: Receiver) -> None:
    app.config["APP_BASE_URL"] = receiver.base


def test_due_webhooks_are_posted_signed_like_meta(mock_app, sender, send, receiver):
    mock_app.config["MOCK_WHATSAPP_READ_RATE"] = 1.0
    first = send(callback_data="11").provider_message_id
    second = send(to="+5521987654321", callback_data="12").provider_message_id
    _point_webhooks_at(mock_app, receiver)

    report = mock_whatsapp.post_due_webhooks()

    assert (report.posted, report.failed, report.next_due_in) == (6, 0, None)
    seen: dict[str, list[str]] = {}
    for path, headers, body in receiver.received:
        assert path == "/webhooks/whatsapp"
        assert headers["Content-Type"] == "application/json"
        # Signed as Disparo's receiver checks Meta's signature, with the sender's secret.
        signed = signers(body, headers["X-Hub-Signature-256"], None)
        assert signed.sender_ids == {sender.id}
        payload = json.loads(body)
        assert payload["object"] == "whatsapp_business_account"
        [entry] = payload["entry"]
        assert entry["id"] == "200000000000777"
        [change] = entry["changes"]
        assert change["field"] == "messages"
        value = change["value"]
        assert value["messaging_product"] == "whatsapp"
        assert value["metadata"]["phone_number_id"] == PHONE_NUMBER_ID
        [status] = value["statuses"]
        assert status["biz_opaque_callback_data"] == {first: "11", second: "12"}[status["id"]]
        assert (
            status["recipient_id"]
            == {first: "5511987654321", second: "5521987654321"}[status["id"]]
        )
        assert int(status["timestamp"]) > 1_700_000_000
        seen.setdefault(status["id"], []).append(status["status"])
    assert seen == {first: ["sent", "delivered", "read"], second: ["sent", "delivered", "read"]}
    assert all(row.posted_at is not None and row.attempts == 1 for row in webhooks())

    assert mock_whatsapp.post_due_webhooks().posted == 0  # nothing is posted twice
    assert len(receiver.received) == 6


def test_webhooks_not_yet_due_wait(mock_app, send, receiver):
    mock_app.config["MOCK_WHATSAPP_WEBHOOK_DELAY_MS"] = 60_000
    send()
    _point_webhooks_at(mock_app, receiver)

    report = mock_whatsapp.post_due_webhooks()

    assert (report.posted, report.failed) == (0, 0)
    assert report.next_due_in is not None and report.next_due_in > 0
    assert receiver.received == []


def _make_all_due() -> None:
    db.session.execute(sa.update(MockWhatsAppWebhook).values(due_at=sa.func.now()))
    db.session.commit()


def test_a_failing_receiver_gets_the_webhooks_again_later(mock_app, send, receiver):
    mock_app.config["MOCK_WHATSAPP_READ_RATE"] = 0.0
    send()
    _point_webhooks_at(mock_app, receiver)
    receiver.status = 500

    report = mock_whatsapp.post_due_webhooks()

    assert (report.posted, report.failed) == (0, 2)
    assert report.next_due_in is not None and report.next_due_in > 0  # retried later, not now
    rows = webhooks()
    assert all(row.posted_at is None and row.attempts == 1 for row in rows)
    assert mock_whatsapp.post_due_webhooks().failed == 0  # not due again yet

    receiver.status = 200
    _make_all_due()
    report = mock_whatsapp.post_due_webhooks()
    assert (report.posted, report.failed) == (2, 0)
    assert all(row.posted_at is not None and row.attempts == 2 for row in webhooks())
    assert len(receiver.received) == 4  # two refused, then the same two accepted


def test_an_unreachable_receiver_is_retried_too(mock_app, send):
    send()
    mock_app.config["APP_BASE_URL"] = "http://127.0.0.1:9"  # discard port: nobody listens
    report = mock_whatsapp.post_due_webhooks()
    assert report.posted == 0 and report.failed >= 2
    assert all(row.posted_at is None for row in webhooks())


def test_without_any_app_secret_nothing_is_posted_unsigned(mock_app, template, receiver):
    unsigned = _sender("No secret", OTHER_PHONE_NUMBER_ID, app_secret=None)
    mock_app.config["WHATSAPP_APP_SECRET"] = None
    MockProvider(unsigned, mock_app.config).send_template(
        to="+5511987654321",
        template=template,
        params={"first_name": "Ana", "discount": "5%"},
        callback_data="1",
    )
    _point_webhooks_at(mock_app, receiver)
    assert mock_whatsapp.post_due_webhooks().posted == 0
    assert receiver.received == []

    mock_app.config["WHATSAPP_APP_SECRET"] = "global-secret"
    _make_all_due()
    assert mock_whatsapp.post_due_webhooks().posted >= 2
    _, headers, body = receiver.received[0]
    assert headers["X-Hub-Signature-256"] == mock_whatsapp.sign(body, "global-secret")


def test_the_poster_job_comes_back_for_webhooks_due_soon(mock_app, send, receiver, in_memory_queue):
    mock_app.config["MOCK_WHATSAPP_READ_RATE"] = 0.0
    send()
    in_memory_queue.reset()
    _point_webhooks_at(mock_app, receiver)
    receiver.status = 503

    mock_tasks.post_webhooks(timestamp=0)  # as the periodic run calls it

    [job] = in_memory_queue.jobs.values()
    assert job["task_name"] == "mock_whatsapp.post_webhooks"
    assert job["scheduled_at"] is not None

    in_memory_queue.reset()
    receiver.status = 200
    _make_all_due()
    mock_tasks.post_webhooks()
    assert all(row.posted_at is not None for row in webhooks())
    assert in_memory_queue.jobs == {}  # nothing left: the periodic run is enough


def test_the_poster_job_does_nothing_with_mocks_off(mock_app, send, receiver):
    send()
    _point_webhooks_at(mock_app, receiver)
    mock_app.config["MOCKS_ENABLED"] = False
    mock_tasks.post_webhooks(timestamp=0)
    assert receiver.received == []


def test_the_poster_runs_every_minute():
    [periodic] = [
        task
        for task in mock_tasks.app.periodic_registry.periodic_tasks.values()
        if task.task.name == "mock_whatsapp.post_webhooks"
    ]
    assert periodic.cron == "* * * * *"


def test_mock_whatsapp_settings(monkeypatch, tmp_path):
    monkeypatch.setattr(config, "load_env_file", lambda: None)
    monkeypatch.setattr(config, "INSTANCE_PATH", tmp_path)
    monkeypatch.setattr(config, "database_url", lambda: "postgresql://db.example.com/disparo")
    monkeypatch.setenv("DISPARO_ENV", "development")
    names = ("LATENCY_MS", "THROTTLE_RATE", "WEBHOOKS", "READ_RATE", "WEBHOOK_DELAY_MS", "URL")
    for name in (*names, "THROUGHPUT_CAP"):
        monkeypatch.delenv(f"MOCK_WHATSAPP_{name}", raising=False)
    defaults = config.load_settings().flask_config()
    assert defaults["MOCK_WHATSAPP_THROUGHPUT_CAP"] == 0
    assert defaults["MOCK_WHATSAPP_LATENCY_MS"] == 0
    assert defaults["MOCK_WHATSAPP_THROTTLE_RATE"] == 0.0
    assert defaults["MOCK_WHATSAPP_WEBHOOKS"] is True
    assert defaults["MOCK_WHATSAPP_READ_RATE"] == 0.6
    assert defaults["MOCK_WHATSAPP_WEBHOOK_DELAY_MS"] == 1000
    assert defaults["MOCK_WHATSAPP_URL"] is None  # the web port's endpoint

    monkeypatch.setenv("MOCK_WHATSAPP_THROTTLE_RATE", "0.25")
    monkeypatch.setenv("MOCK_WHATSAPP_WEBHOOKS", "off")
    monkeypatch.setenv("MOCK_WHATSAPP_URL", " http://127.0.0.1:5001/v23.0/ ")
    changed = config.load_settings().flask_config()
    assert changed["MOCK_WHATSAPP_THROTTLE_RATE"] == 0.25
    assert changed["MOCK_WHATSAPP_WEBHOOKS"] is False
    assert changed["MOCK_WHATSAPP_URL"] == "http://127.0.0.1:5001/v23.0"

    for bad in ("127.0.0.1:5001", "ftp://127.0.0.1:5001", "http://127.0.0.1:port/v23.0"):
        monkeypatch.setenv("MOCK_WHATSAPP_URL", bad)
        with pytest.raises(ConfigError, match="MOCK_WHATSAPP_URL"):
            config.load_settings()
    monkeypatch.delenv("MOCK_WHATSAPP_URL")

    monkeypatch.setenv("MOCK_WHATSAPP_READ_RATE", "60%")
    with pytest.raises(ConfigError, match="MOCK_WHATSAPP_READ_RATE"):
        config.load_settings()
    monkeypatch.delenv("MOCK_WHATSAPP_READ_RATE")

    monkeypatch.setenv("MOCK_WHATSAPP_THROUGHPUT_CAP", "80")
    assert config.load_settings().flask_config()["MOCK_WHATSAPP_THROUGHPUT_CAP"] == 80
    monkeypatch.setenv("MOCK_WHATSAPP_THROUGHPUT_CAP", "-1")
    with pytest.raises(ConfigError, match="MOCK_WHATSAPP_THROUGHPUT_CAP"):
        config.load_settings()


def test_received_at_is_the_database_clock_with_milliseconds(send):
    send()
    [row] = logged()
    assert isinstance(row.received_at, datetime)
    assert row.received_at.microsecond % 1000 == 0


def test_mock_whatsapp_url_takes_the_engine_to_the_mock_process():
    web = {"APP_BASE_URL": "http://127.0.0.1:5000/", "MOCK_WHATSAPP_URL": None}
    assert mock_api_base_url(web) == "http://127.0.0.1:5000/mock/whatsapp/v23.0"
    process = web | {"MOCK_WHATSAPP_URL": "http://127.0.0.1:5001/v23.0/"}
    assert mock_api_base_url(process) == "http://127.0.0.1:5001/v23.0"


def test_throttle_tries_are_counted_per_key_and_bounded():
    tries = mock_whatsapp.ThrottleTries(kept=2)
    a, b, c = ("1", "5511987650429", "7"), ("1", "5511987650429", "8"), ("2", "5511987650429", "7")
    assert [tries.count(a), tries.count(a), tries.count(b), tries.count(a)] == [1, 2, 1, 3]
    assert tries.count(c) == 1  # b, tried least recently, is forgotten
    assert len(tries) == 2
    assert tries.count(b) == 1  # so it starts again; now a is forgotten
    assert tries.count(a) == 1


class Clock:
    """A clock the test moves by hand (the throughput cap's window, without timing)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_throughput_cap_admits_so_many_a_second_per_number_in_a_sliding_window():
    clock = Clock()
    cap = mock_whatsapp.ThroughputCap(clock)
    assert [cap.admit("1", 3) for _ in range(4)] == [True, True, True, False]
    assert cap.admit("2", 3)  # each phone number id has its own window
    clock.now += 0.5
    assert not cap.admit("1", 3)  # all three are still within the last second
    clock.now += 0.5  # the first three are exactly a second old: out of the window
    assert [cap.admit("1", 3) for _ in range(4)] == [True, True, True, False]
    assert cap.refused == 3  # refusals take no room: the window holds only admitted sends
    clock.now += 0.999
    assert not cap.admit("1", 3)  # sliding, not per whole second
    assert all(cap.admit("1", 0) for _ in range(100))  # 0: no cap
    assert cap.refused == 4


def test_sends_beyond_the_throughput_cap_are_throttled_like_meta(mock_app, sender, send):
    clock = Clock()
    mock_app.extensions[mock_whatsapp.CAP_EXTENSION] = mock_whatsapp.ThroughputCap(clock)
    assert mock_app.config["MOCK_WHATSAPP_THROUGHPUT_CAP"] == 0  # off unless asked for
    for n in range(3):
        send(callback_data=str(n))
    mock_app.config["MOCK_WHATSAPP_THROUGHPUT_CAP"] = 2
    clock.now += 1.0
    send(callback_data="3")
    send(callback_data="4")
    with pytest.raises(SendError) as caught:
        send(callback_data="5")
    error = caught.value
    assert (error.kind, error.code, error.http_status) == (ErrorKind.THROTTLED, 130429, 429)
    other = _sender("Mock 888", OTHER_PHONE_NUMBER_ID)
    send(callback_data="6", via=other)  # another number has its own cap
    clock.now += 1.0
    send(callback_data="5")  # a second later it goes through
    assert [row.message_id for row in logged()] == ["0", "1", "2", "3", "4", "6", "5"]


# -- the mock process (mocks/whatsapp_server.py), started as the Procfile's `mock:` does

ROOT = Path(__file__).resolve().parent.parent
THROTTLED_NUMBER = "+5511987650429"


@dataclass
class MockProcess:
    process: subprocess.Popen
    port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api(self) -> str:
        """Its Cloud API base URL: what MOCK_WHATSAPP_URL says."""
        return f"{self.base}/v23.0"

    def stats(self) -> dict[str, int]:
        response = requests.get(f"{self.base}/stats", timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    def wait_for(self, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 60
        while not ready():
            assert self.process.poll() is None, f"exited {self.process.returncode}: {self.output()}"
            assert time.monotonic() < deadline, f"never {what}: {self.output()}"
            time.sleep(0.05)

    def answering(self) -> bool:
        try:
            return requests.get(f"{self.base}/stats", timeout=1).ok
        except requests.RequestException:
            return False

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def start_mock_process(
    database_url_for_test: str, mock_app: Flask, live_server: str, tmp_path: Path
) -> Iterator[Callable[..., MockProcess]]:
    """Start ``python -m mocks.whatsapp_server`` on this test's database and a free port."""
    started: list[MockProcess] = []

    def start(wait: bool = True, **settings: str) -> MockProcess:
        port = _free_port()
        env = (
            dict(os.environ)
            | {
                "DATABASE_URL": database_url_for_test,
                "DISPARO_ENV": "development",
                "DISPARO_MOCKS": "on",
                "APP_BASE_URL": live_server,
                "MOCK_WHATSAPP_URL": f"http://127.0.0.1:{port}/v23.0",
                "MOCK_WHATSAPP_LATENCY_MS": "0",
                "MOCK_WHATSAPP_THROTTLE_RATE": "0",
                "MOCK_WHATSAPP_TRANSIENT_RATE": "0",
                "MOCK_WHATSAPP_PERMANENT_RATE": "0",
                "MOCK_WHATSAPP_WEBHOOKS": "on",
                "MOCK_WHATSAPP_READ_RATE": "0.6",
                "MOCK_WHATSAPP_WEBHOOK_DELAY_MS": "0",
            }
            | settings
        )
        log = tmp_path / f"mock-whatsapp-{port}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "mocks.whatsapp_server"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        mock = MockProcess(process, port, log)
        started.append(mock)
        if wait:
            mock.wait_for(mock.answering, "answered")
        return mock

    yield start
    for mock in started:
        if mock.process.poll() is None:
            mock.process.terminate()
        try:
            mock.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            mock.process.kill()
            mock.process.wait()


def _without_trace(response: requests.Response) -> dict[str, Any]:
    body = response.json()
    body["error"].pop("fbtrace_id")
    return body


def test_the_mock_process_answers_like_the_web_port(
    mock_app, sender, live_server, start_mock_process
):
    mock = start_mock_process()
    urls = [
        f"{mock_api_base_url(mock_app.config)}/{PHONE_NUMBER_ID}/messages",  # the web port
        f"{mock.api}/{PHONE_NUMBER_ID}/messages",
    ]

    def both(payload: Any) -> list[requests.Response]:
        return [requests.post(url, json=payload, timeout=10) for url in urls]

    forced = [
        (_with("to", "+5511987650000"), 131026, 400),
        (_with("to", THROTTLED_NUMBER), 130429, 429),  # its first try
        (_with("to", "+5511987650500"), 131000, 500),
    ]
    for payload, code, http_status in [(p, c, 400) for p, c in REFUSALS] + forced:
        web, process = both(payload)
        assert web.status_code == process.status_code == http_status
        assert _without_trace(web) == _without_trace(process)
        assert process.json()["error"]["code"] == code
    # Flask's silent get_json: a body that is not JSON, or not said to be, is no object
    refusals = [
        requests.post(urls[1], data=b"{", headers={"Content-Type": "application/json"}, timeout=10),
        requests.post(urls[1], data=json.dumps(VALID), timeout=10),
    ]
    assert [(r.status_code, r.json()["error"]["code"]) for r in refusals] == [(400, 100)] * 2
    assert _log(live_server) == []

    web, process = both(VALID)
    assert web.status_code == process.status_code == 200
    bodies = [web.json(), process.json()]
    wamids = [body["messages"][0].pop("id") for body in bodies]
    assert bodies[0] == bodies[1]
    assert all(wamid.startswith("wamid.") for wamid in wamids)

    # Both write the one log the web port reads, and queue the same webhooks.
    log = _log(live_server)
    assert [row["wamid"] for row in log] == wamids
    assert {(row["phone_number_id"], row["message_id"], row["to"]) for row in log} == {
        (PHONE_NUMBER_ID, "9", "+5511987654321")
    }
    queued = webhooks()
    for wamid in wamids:
        mine = [row for row in queued if row.wamid == wamid]
        assert [row.status for row in mine] == ["sent", "delivered", "read"][: len(mine)]
        assert len(mine) == (3 if mock_whatsapp.is_read(wamid, 0.6) else 2)
        [entry] = mine[0].payload["entry"]
        assert entry["id"] == "200000000000777"  # the sender's WABA
        [status] = entry["changes"][0]["value"]["statuses"]
        assert status["biz_opaque_callback_data"] == "9"
        assert status["recipient_id"] == "5511987654321"
    # The process deferred the poster in the test database (the web port's went to memory).
    posters = db.session.scalar(
        sa.text("SELECT count(*) FROM procrastinate_jobs WHERE task_name = :name"),
        {"name": "mock_whatsapp.post_webhooks"},
    )
    assert posters == 1

    assert mock.stats() | {"pid": 0} == {
        "in_flight": 0,
        "peak_in_flight": 1,
        "accepted": 1,
        "refused": len(REFUSALS) + len(forced) + 2,
        "recorded": 1,
        "flushes": 1,
        "failed_flushes": 0,
        "capped": 0,  # no throughput cap unless MOCK_WHATSAPP_THROUGHPUT_CAP
        "pid": 0,
    }
    mock.process.terminate()
    assert mock.process.wait(timeout=30) == 0


@pytest.mark.parametrize("via", ["web port", "mock process"])
def test_a_throttled_number_passes_on_its_third_try(mock_app, send, start_mock_process, via):
    if via == "mock process":
        mock_app.config["MOCK_WHATSAPP_URL"] = start_mock_process().api
    # Tried as Disparo tries: each call's callback data "<message id>.<attempt>", the
    # tries counted by the message.
    for attempt in (1, 2):
        with pytest.raises(SendError) as caught:
            send(to=THROTTLED_NUMBER, callback_data=f"5.{attempt}")
        assert (caught.value.kind, caught.value.code) == (ErrorKind.THROTTLED, 130429)
    with pytest.raises(SendError):  # another message to that number: its own first try
        send(to=THROTTLED_NUMBER, callback_data="6.1")
    assert logged() == []

    third = send(to=THROTTLED_NUMBER, callback_data="5.3")
    [row] = logged()
    assert (row.wamid, row.to, row.message_id) == (
        third.provider_message_id,
        THROTTLED_NUMBER,
        "5.3",  # logged, and echoed in its statuses, as it came
    )
    send(to=THROTTLED_NUMBER, callback_data="5")  # and from then on, in the plain form too
    assert len(logged()) == 2


def _post_request(port: int, path: str, payload: dict[str, Any]) -> bytes:
    body = json.dumps(payload).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


async def _all_at_once(port: int, requests_: list[bytes]) -> list[tuple[int, bytes]]:
    """Connect every call first, then send them all, then read every answer (status, body)."""
    connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    for start in range(0, len(requests_), 100):
        chunk = range(start, min(start + 100, len(requests_)))
        connections += await asyncio.gather(
            *(asyncio.open_connection("127.0.0.1", port) for _ in chunk)
        )
    for (_, writer), request_ in zip(connections, requests_, strict=True):
        writer.write(request_)
    await asyncio.gather(*(writer.drain() for _, writer in connections))

    async def answer(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[int, bytes]:
        raw = await reader.read()  # the server closes: Connection: close
        writer.close()
        await writer.wait_closed()
        head, _, body = raw.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), body

    return await asyncio.gather(*(answer(reader, writer) for reader, writer in connections))


def _allow_open_files(count: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count:
        if hard != resource.RLIM_INFINITY and hard < count:
            pytest.skip(f"{count} sockets need a higher open files limit than {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (count, hard))


def test_the_mock_process_holds_a_thousand_calls_in_flight(mock_app, sender, start_mock_process):
    calls = 1000
    _allow_open_files(calls + 200)
    mock = start_mock_process(MOCK_WHATSAPP_LATENCY_MS="300", MOCK_WHATSAPP_WEBHOOKS="off")
    path = f"/v23.0/{PHONE_NUMBER_ID}/messages"
    requests_ = [
        _post_request(mock.port, path, _with("biz_opaque_callback_data", str(n)))
        for n in range(calls)
    ]

    answers = asyncio.run(_all_at_once(mock.port, requests_))

    assert [status for status, _ in answers] == [200] * calls
    wamids = {json.loads(body)["messages"][0]["id"] for _, body in answers}
    assert len(wamids) == calls
    stats = mock.stats()
    # Every call was in flight at one moment: the gauge saw all of them at once.
    assert stats["peak_in_flight"] == calls
    assert (stats["accepted"], stats["recorded"], stats["in_flight"]) == (calls, calls, 0)
    assert stats["flushes"] < calls  # calls that arrived together were committed together
    assert set(db.session.scalars(sa.select(MockWhatsAppMessage.wamid))) == wamids


def test_the_mock_process_idles_with_mocks_off(start_mock_process):
    mock = start_mock_process(wait=False, DISPARO_MOCKS="off")
    mock.wait_for(lambda: "idle" in mock.output(), "idled")
    assert not mock.answering()
    mock.process.terminate()
    assert mock.process.wait(timeout=30) == 0


def test_no_transaction_stays_open_while_webhooks_are_posted(mock_app, send, receiver, monkeypatch):
    send()
    _point_webhooks_at(mock_app, receiver)
    _make_all_due()
    post = mock_whatsapp._post
    open_during_posts = []

    def watched(*args):
        open_during_posts.append(db.session().in_transaction())
        return post(*args)

    monkeypatch.setattr(mock_whatsapp, "_post", watched)
    assert mock_whatsapp.post_due_webhooks().posted >= 2
    assert open_during_posts and not any(open_during_posts)


FETCH_MAINTENANCE_JOB = "SELECT id FROM procrastinate_fetch_job_v2(ARRAY['maintenance'], NULL)"


def _fetch_maintenance_job() -> int | None:
    """What an ops worker's free slot takes next (procrastinate's own fetch)."""
    job_id = db.session.execute(db.text(FETCH_MAINTENANCE_JOB)).scalar()
    db.session.commit()
    return job_id


def test_one_poster_runs_at_a_time(app, real_queue):
    # A run in progress frees the queueing lock, so the mock server defers the next one
    # a second later; that one waits for the first to end instead of taking another of
    # the ops worker's slots (ten slow runs at once starved the pump: bench/soak.py).
    mock_tasks.defer_post_webhooks(0)
    assert _fetch_maintenance_job() is not None  # the first run starts
    mock_tasks.defer_post_webhooks(0)
    assert _fetch_maintenance_job() is None  # the second waits
