"""The WhatsApp Cloud API send client against a stub Graph API on a real socket."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from werkzeug.wrappers import Request, Response

from campaigns.models import (
    MessageTemplate,
    ParameterFormat,
    Provider,
    Sender,
    TemplateCategory,
)
from campaigns.providers import cloud_api
from campaigns.providers.base import SendError
from campaigns.providers.cloud_api import CloudApiProvider
from campaigns.providers.errors import ErrorKind
from tests.helpers import serving

TOKEN = "EAAG-secret-token-never-logged"
PHONE_NUMBER_ID = "106540352242922"
WAMID = "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI"
OK_BODY = {
    "messaging_product": "whatsapp",
    "contacts": [{"input": "+5511987654321", "wa_id": "5511987654321"}],
    "messages": [{"id": WAMID, "message_status": "accepted"}],
}


@dataclass
class GraphStub:
    """A stand-in Graph API: records each request and answers what the test set."""

    status: int = 200
    body: Any = field(default_factory=lambda: OK_BODY)
    delay: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "headers": dict(request.headers),
                "json": request.get_json(silent=True),
            }
        )
        if self.delay:
            time.sleep(self.delay)
        if isinstance(self.body, str | bytes):
            response = Response(self.body, status=self.status, content_type="text/html")
        elif self.body is None:
            response = Response(b"", status=self.status)
        else:
            response = Response(json.dumps(self.body), self.status, content_type="application/json")
        return response(environ, start_response)


@pytest.fixture
def graph() -> Iterator[tuple[GraphStub, str]]:
    stub = GraphStub()
    with serving(stub) as base:
        yield stub, base


def make_sender(token: str | None = TOKEN) -> Sender:
    return Sender(
        id=7,
        name="Loja",
        provider=Provider.CLOUD_API,
        phone_number_id=PHONE_NUMBER_ID,
        access_token=token,
    )


def make_template(body: str, fmt: ParameterFormat, name: str = "promo") -> MessageTemplate:
    return MessageTemplate(
        name=name,
        language="pt_BR",
        category=TemplateCategory.MARKETING,
        parameter_format=fmt,
        body_text=body,
    )


NAMED = make_template("Oi {{first_name}}, {{discount}} de desconto!", ParameterFormat.NAMED)
POSITIONAL = make_template("Oi {{1}}, seu cupom é {{2}}.", ParameterFormat.POSITIONAL)


def provider_for(base: str, sender: Sender | None = None) -> CloudApiProvider:
    return CloudApiProvider(sender or make_sender(), {"WHATSAPP_API_BASE_URL": f"{base}/v23.0"})


def send(
    provider: CloudApiProvider,
    template: MessageTemplate = NAMED,
    params: dict[str, str] | None = None,
):
    return provider.send_template(
        to="+5511987654321",
        template=template,
        params=params if params is not None else {"first_name": "Ana", "discount": "15%"},
        callback_data="4711",
    )


def test_a_named_template_goes_out_as_meta_documents_it(graph):
    stub, base = graph
    result = send(provider_for(base))

    assert result.provider_message_id == WAMID
    [request] = stub.requests
    assert request["method"] == "POST"
    assert request["path"] == f"/v23.0/{PHONE_NUMBER_ID}/messages"
    assert request["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["json"] == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "+5511987654321",
        "type": "template",
        "biz_opaque_callback_data": "4711",
        "template": {
            "name": "promo",
            "language": {"code": "pt_BR"},
            "components": [
                {
                    "type": "body",
                    "parameters": [
                        {"type": "text", "parameter_name": "first_name", "text": "Ana"},
                        {"type": "text", "parameter_name": "discount", "text": "15%"},
                    ],
                }
            ],
        },
    }


def test_positional_values_follow_placeholder_order_whatever_the_dict_order(graph):
    stub, base = graph
    send(provider_for(base), POSITIONAL, {"2": "FIMDESEMANA", "1": "Ana"})
    [component] = stub.requests[0]["json"]["template"]["components"]
    assert component == {
        "type": "body",
        "parameters": [{"type": "text", "text": "Ana"}, {"type": "text", "text": "FIMDESEMANA"}],
    }


def test_a_template_without_variables_sends_no_components(graph):
    stub, base = graph
    static = make_template("Sua entrega saiu hoje.", ParameterFormat.NAMED, "delivery")
    send(provider_for(base), static, {})
    assert stub.requests[0]["json"]["template"] == {
        "name": "delivery",
        "language": {"code": "pt_BR"},
    }


def test_a_missing_value_fails_before_any_request(graph):
    stub, base = graph
    with pytest.raises(SendError) as caught:
        send(provider_for(base), NAMED, {"first_name": "Ana"})
    assert caught.value.kind is ErrorKind.PERMANENT
    assert "discount" in caught.value.message
    assert stub.requests == []


def test_a_sender_without_token_pauses_without_any_request(graph):
    stub, base = graph
    with pytest.raises(SendError) as caught:
        send(provider_for(base, make_sender(token=None)))
    assert caught.value.kind is ErrorKind.PAUSE_SENDER
    assert stub.requests == []


def meta_error(code: int, message: str) -> dict[str, Any]:
    return {
        "error": {
            "message": f"(#{code}) {message}",
            "type": "OAuthException",
            "code": code,
            "error_data": {"messaging_product": "whatsapp", "details": message},
            "fbtrace_id": "AbCdEf",
        }
    }


@pytest.mark.parametrize(
    ("status", "body", "kind", "code"),
    [
        (429, meta_error(130429, "Rate limit hit"), ErrorKind.THROTTLED, 130429),
        (400, meta_error(131026, "Message undeliverable"), ErrorKind.PERMANENT, 131026),
        (400, meta_error(132015, "Template is paused"), ErrorKind.PAUSE_CAMPAIGN, 132015),
        (
            400,
            meta_error(368, "Temporarily blocked for policies violations"),
            ErrorKind.PAUSE_SENDER,
            368,
        ),
        (401, meta_error(190, "Error validating access token"), ErrorKind.PAUSE_CAMPAIGN, 190),
        (500, meta_error(131000, "Something went wrong"), ErrorKind.RETRY, 131000),
        (500, None, ErrorKind.RETRY, None),
        (502, "<html>Bad Gateway</html>", ErrorKind.RETRY, None),
        (503, None, ErrorKind.RETRY, None),
    ],
)
def test_each_error_is_classified_by_its_meta_code(graph, caplog, status, body, kind, code):
    stub, base = graph
    stub.status, stub.body = status, body
    caplog.set_level(logging.DEBUG)
    with pytest.raises(SendError) as caught:
        send(provider_for(base))
    assert caught.value.kind is kind
    assert caught.value.code == code
    assert caught.value.http_status == status
    # Neither the token nor the number nor the message text reaches the logs.
    assert TOKEN not in caplog.text
    assert "5511987654321" not in caplog.text
    assert "Ana" not in caplog.text


def test_an_error_in_a_200_answer_is_still_an_error(graph):
    stub, base = graph
    stub.body = meta_error(131056, "Pair rate limit hit")
    with pytest.raises(SendError) as caught:
        send(provider_for(base))
    assert (caught.value.kind, caught.value.code) == (ErrorKind.PAIR_LIMITED, 131056)


def test_an_answer_without_a_wamid_is_retried(graph):
    stub, base = graph
    stub.body = {"messaging_product": "whatsapp", "messages": []}
    with pytest.raises(SendError) as caught:
        send(provider_for(base))
    assert caught.value.kind is ErrorKind.RETRY


def test_connection_refused_is_retried():
    with socket.socket() as probe:  # a port that was free a moment ago: nobody listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(SendError) as caught:
        send(provider_for(f"http://127.0.0.1:{port}"))
    assert caught.value.kind is ErrorKind.RETRY
    assert caught.value.http_status is None
    assert "ConnectionError" in caught.value.message


def test_a_timeout_is_retried(graph, monkeypatch):
    stub, base = graph
    stub.delay = 0.5
    monkeypatch.setattr(cloud_api, "SEND_TIMEOUT", (1, 0.05))
    with pytest.raises(SendError) as caught:
        send(provider_for(base))
    assert caught.value.kind is ErrorKind.RETRY
    assert "Timeout" in caught.value.message


def test_sends_share_one_pooled_session():
    adapter = cloud_api._session.get_adapter("https://graph.facebook.com/")
    assert adapter._pool_maxsize >= 20  # one connection per worker thread, ~20 threads
