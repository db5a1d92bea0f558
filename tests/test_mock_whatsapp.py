"""The mock WhatsApp over HTTP, through MockProvider: its log, injected errors and webhooks."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
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


@pytest.mark.parametrize(
    ("payload", "code"),
    [
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
    ],
)
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
        ("+5511987650429", ErrorKind.THROTTLED, 130429, 429),
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


def test_due_webhooks_are_posted_signed_like_meta(mock_app, send, receiver):
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
        expected = hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert headers["X-Hub-Signature-256"] == f"sha256={expected}"
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
    for name in ("LATENCY_MS", "THROTTLE_RATE", "WEBHOOKS", "READ_RATE", "WEBHOOK_DELAY_MS"):
        monkeypatch.delenv(f"MOCK_WHATSAPP_{name}", raising=False)
    defaults = config.load_settings().flask_config()
    assert defaults["MOCK_WHATSAPP_LATENCY_MS"] == 0
    assert defaults["MOCK_WHATSAPP_THROTTLE_RATE"] == 0.0
    assert defaults["MOCK_WHATSAPP_WEBHOOKS"] is True
    assert defaults["MOCK_WHATSAPP_READ_RATE"] == 0.6
    assert defaults["MOCK_WHATSAPP_WEBHOOK_DELAY_MS"] == 1000

    monkeypatch.setenv("MOCK_WHATSAPP_THROTTLE_RATE", "0.25")
    monkeypatch.setenv("MOCK_WHATSAPP_WEBHOOKS", "off")
    changed = config.load_settings().flask_config()
    assert changed["MOCK_WHATSAPP_THROTTLE_RATE"] == 0.25
    assert changed["MOCK_WHATSAPP_WEBHOOKS"] is False

    monkeypatch.setenv("MOCK_WHATSAPP_READ_RATE", "60%")
    with pytest.raises(ConfigError, match="MOCK_WHATSAPP_READ_RATE"):
        config.load_settings()


def test_received_at_is_the_database_clock_with_milliseconds(send):
    send()
    [row] = logged()
    assert isinstance(row.received_at, datetime)
    assert row.received_at.microsecond % 1000 == 0
