"""What test modules share besides fixtures (those live in conftest.py)."""

from __future__ import annotations

import functools
import html as html_module
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.serving import make_server
from werkzeug.test import TestResponse
from werkzeug.wrappers import Response

from app import create_app, db
from campaigns import counters, erp, phones, queues
from campaigns.config import sqlalchemy_url
from campaigns.models import Campaign, Message, MessageTemplate, User
from campaigns.providers.base import SendResult
from campaigns.queues import MESSAGES_QUEUE, SEND_TASK
from campaigns.services.campaigns import create_campaign, template_variables_for
from campaigns.services.demo import seed_demo
from campaigns.services.templates import default_sender
from campaigns.validation import parse_campaign
from mocks import whatsapp as mock_whatsapp

SUFFIX = os.getpid()
TEMPLATE_DB = f"disparo_test_template_{SUFFIX}"
TEST_DB = f"disparo_test_{SUFFIX}"
PASSWORD = "correct horse battery"
PROCRASTINATE = str(Path(sys.executable).with_name("procrastinate"))
WEBHOOK_URL = "/webhooks/whatsapp"


def url_for_database(server_url: str, name: str) -> str:
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def admin_execute(server_url: str, *statements: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def make_app(url: str, **overrides: object) -> Flask:
    config = {
        "TESTING": True,
        "SQLALCHEMY_DATABASE_URI": sqlalchemy_url(url),
        "WTF_CSRF_ENABLED": False,
        "SERVER_NAME": None,
        # Hashing is not what most tests test, and scrypt would be 40 % of the suite's time.
        "PASSWORD_HASH_METHOD": "pbkdf2:sha256:1000",
        # The mock WhatsApp on the test app's own port, whatever a local .env says.
        "MOCK_WHATSAPP_URL": None,
        # The suite reads the source language unless a test asks for another (a user's
        # preference, an Accept-Language header): tests/test_i18n.py covers pt_BR.
        "DEFAULT_LOCALE": "en",
    }
    config.update(overrides)
    app = create_app(config)
    app.after_request(API_CONTRACT.record)
    return app


def migrate_to(url: str, revision: str = "head") -> None:
    from flask_migrate import upgrade

    app = make_app(url)
    with app.app_context():
        upgrade(revision=revision)
        db.engine.dispose()


def demo_campaign_at(revision: str) -> tuple[int, int]:
    """In the app context of an empty database: a demo campaign and its owner made by
    today's models at the head, then the schema stepped back to ``revision`` (a
    migration test's starting rows); the owner's and the campaign's ids."""
    from flask_migrate import downgrade, upgrade

    upgrade()
    owner = User(email="owner@example.com", password_hash="x")
    db.session.add(owner)
    db.session.commit()
    owner_id, campaign_id = owner.id, demo_campaign(owner.id).id
    db.session.remove()
    downgrade(revision=revision)
    return owner_id, campaign_id


@contextmanager
def scratch_app(
    server_url: str, template_database: str, name: str, **config: Any
) -> Iterator[Flask]:
    """An app on its own clone of the template, for a module whose tests share one database."""
    admin_execute(
        server_url,
        f"DROP DATABASE IF EXISTS {name} WITH (FORCE)",
        f"CREATE DATABASE {name} TEMPLATE {template_database}",
    )
    application = make_app(url_for_database(server_url, name), **config)
    with application.app_context():
        yield application
        db.engine.dispose()
    admin_execute(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def login(client: FlaskClient, user: User, password: str = PASSWORD):
    return client.post("/login", data={"email": user.email, "password": password})


CSRF_INPUT = re.compile(rb'name="csrf_token" value="([^"]+)"')


def csrf_token_from(html: bytes) -> str:
    match = CSRF_INPUT.search(html)
    assert match, "page has no CSRF token"
    return match.group(1).decode()


@contextmanager
def serving(wsgi_app: Callable[..., Any]) -> Iterator[str]:
    """Serve a WSGI app on a free local port in a thread; yield its base URL."""
    with serving_server(make_server("127.0.0.1", 0, wsgi_app, threaded=True)) as url:
        yield url


@contextmanager
def serving_server(server: Any) -> Iterator[str]:
    """Run an HTTP server bound to 127.0.0.1 (a socketserver: http.server's or
    werkzeug's) in a thread; yield its base URL; shut it down and close it after."""
    # A short poll interval: shutdown() waits for the loop to notice (0.5 s by default).
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


class FakeProvider:
    """Answers sends from a script: a SendResult, or a SendError to raise.

    ``plan`` scripts one message's calls by its id (calls of a batch run in parallel
    threads, in no set order); ``script`` scripts calls in the order they come,
    for batches of one. Anything unscripted is accepted.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.callbacks: list[str] = []  # each call's callback data, in the calls' order
        self.header_media: list[object] = []  # each call's HeaderMedia (or None)
        self.script: list[object] = []
        self.plan: dict[int, list[object]] = {}
        self._lock = threading.Lock()

    def send_template(self, *, to, template, params, callback_data, header_media=None):
        with self._lock:
            self.calls.append((to, params))
            self.header_media.append(header_media)
            self.callbacks.append(callback_data)
            # "<message id>.<attempt>" (campaigns/callback_data.py): planned by message
            message_id = int(callback_data.partition(".")[0])
            planned = self.plan.get(message_id)
            if planned:
                outcome = planned.pop(0)
            elif self.script:
                outcome = self.script.pop(0)
            else:
                outcome = SendResult(f"wamid.{message_id}")
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def demo_campaign(owner_id: int, size: int = 120, name: str = "Engine") -> Campaign:
    """A draft on the demo sender and promo template for ``size`` SP customers of the mock ERP."""
    seed_demo()
    template = db.session.query(MessageTemplate).filter_by(name="promo_weekend").one()
    fields = parse_campaign(
        {
            "name": name,
            "sender_id": default_sender().id,
            "template_id": template.id,
            "segment": {"state": "SP", "max_audience": size, "opted_in_only": False},
            "variables": {
                "first_name": {"field": "first_name"},
                "discount": {"text": "10%"},
                "city": {"field": "city"},
                "coupon": {"text": "X1"},
            },
        },
        template_variables_for(template.id),
    )
    return create_campaign(fields, owner_id)


def lift_limits(owner: User) -> None:
    """The demo sender's and the owner's limits out of the way (the limiter still runs)."""
    seed_demo()
    sender = default_sender()
    sender.rate_limit_per_minute, sender.min_interval_ms = 600_000, 0
    owner.campaign_rate_limit_per_minute = 600_000
    db.session.commit()


def audience_numbers(app, campaign: Campaign) -> list[str | None]:
    """The campaign's customers' numbers as the fan-out reads them (None: not a number)."""
    with erp.client_from_config(app.config) as client:
        customers = [
            c for page, _ in client.iter_customers(campaign.segment) for c in page.customers
        ]
    return [phones.normalise(c.get("phone"), app.config["PHONE_DEFAULT_REGION"]) for c in customers]


def jobs(task: str) -> list[dict]:
    rows = db.session.execute(
        sa.text(
            "SELECT args, scheduled_at, queue_name, status::text AS status FROM procrastinate_jobs"
            " WHERE task_name = :t ORDER BY id"
        ),
        {"t": task},
    ).mappings()
    return [dict(r) for r in rows]


# Jobs are written with Procrastinate's own SQL, as the app and the worker do:
# queues.defer (procrastinate_defer_jobs_v1) to defer, the fetch's UPDATE to
# start one, procrastinate_finish_job_v1 to end it. The status triggers record
# the events the queue monitor reads its times from.


def defer_job(
    task: str = SEND_TASK,
    queue: str = MESSAGES_QUEUE,
    args: dict | None = None,
    at: datetime | None = None,
    queueing_lock: str | None = None,
) -> int:
    queues.defer(db.session, task, queue, [args or {}], [at], queueing_lock)
    job_id = db.session.execute(db.text("SELECT max(id) FROM procrastinate_jobs")).scalar_one()
    db.session.commit()
    return job_id


def register_worker(seconds_since_heartbeat: int = 0) -> int:
    worker_id = db.session.execute(
        db.text("SELECT worker_id FROM procrastinate_register_worker_v1()")
    ).scalar_one()
    db.session.execute(
        db.text(
            "UPDATE procrastinate_workers"
            " SET last_heartbeat = now() - make_interval(secs => :s) WHERE id = :id"
        ),
        {"s": seconds_since_heartbeat, "id": worker_id},
    )
    db.session.commit()
    return worker_id


def start_job(job_id: int, worker_id: int | None) -> None:
    """What procrastinate_fetch_job_v2 does to the job it picks."""
    db.session.execute(
        db.text("UPDATE procrastinate_jobs SET status = 'doing', worker_id = :w WHERE id = :id"),
        {"w": worker_id, "id": job_id},
    )
    db.session.commit()


def fail_job(job_id: int) -> None:
    db.session.execute(
        db.text("SELECT procrastinate_finish_job_v1(:id, 'failed', false)"), {"id": job_id}
    )
    db.session.commit()


def message_counts(campaign_id: int) -> dict[str, int]:
    rows = db.session.execute(
        sa.select(Message.status, sa.func.count())
        .where(Message.campaign_id == campaign_id)
        .group_by(Message.status)
    ).all()
    return {status.value: n for status, n in rows}


def assert_counters_match_rows(campaign_id: int) -> None:
    # One snapshot for both reads: workers and webhooks may still be committing
    # (rows and counters change together, but two READ COMMITTED reads could
    # straddle a commit).
    db.session.rollback()
    db.session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    totals = counters.totals(db.session, campaign_id)
    rows = message_counts(campaign_id)
    db.session.rollback()
    assert totals["total"] == sum(rows.values())
    for name in ("pending", "queued", "sending", "retrying", "failed", "skipped", "cancelled"):
        assert totals[name] == rows.get(name, 0), name
    assert totals["read"] == rows.get("read", 0)
    assert totals["delivered"] == rows.get("delivered", 0) + rows.get("read", 0)
    assert totals["sent"] == rows.get("sent", 0) + rows.get("delivered", 0) + rows.get("read", 0)


def wait_for(
    condition: Callable[[], object], seconds: float = 90.0, what: str = "", *, explain: bool = True
) -> object:
    """Poll until condition() is truthy, and return its value: a deadline, not a performance
    assertion. Each poll starts a fresh transaction, to see what other processes committed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        db.session.rollback()
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"not within {seconds} s: {what}" + (f"; {_state()}" if explain else ""))


def _state() -> str:
    """What the campaigns and jobs look like, to explain a missed deadline."""
    campaigns = db.session.execute(
        sa.select(
            Campaign.id, Campaign.status, Campaign.status_reason_code, Campaign.status_reason_params
        )
    ).all()
    queued = db.session.execute(
        sa.text(
            "SELECT task_name, status::text, count(*) FROM procrastinate_jobs"
            " GROUP BY 1, 2 ORDER BY 1, 2"
        )
    ).all()
    messages = {c.id: message_counts(c.id) for c in campaigns}
    return f"campaigns={campaigns} messages={messages} jobs={queued}"


@contextmanager
def counted_statements() -> Iterator[list[str]]:
    """Every SQL statement the app's engine runs inside the block."""
    statements: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    sa.event.listen(db.engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", count)


def translate_one(app: Flask, text: str, translation: str) -> None:
    """Have the app's templates show ``translation`` for ``text`` (every other text as is)."""
    app.jinja_env.install_gettext_callables(  # type: ignore[attr-defined]
        lambda message: translation if message == text else message,
        lambda singular, plural, n: singular if n == 1 else plural,
        newstyle=True,
    )


def webhook_body(field: str, value: dict, phone_number_id: str | None = None) -> dict:
    """A WhatsApp webhook with one change, for the demo sender's number unless told."""
    number_id = phone_number_id or default_sender().phone_number_id
    value = {"messaging_product": "whatsapp", "metadata": {"phone_number_id": number_id}, **value}
    change = {"field": field, "value": value}
    return {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [change]}]}


def status_webhook(
    wamid: str,
    status: str,
    message_id: int,
    ts: int = 1_800_000_000,
    phone_number_id: str | None = None,
    **extra,
) -> dict:
    """A status webhook as Meta sends it, for one message."""
    entry = {
        "id": wamid,
        "status": status,
        "timestamp": str(ts),
        "recipient_id": "5511",
        "biz_opaque_callback_data": str(message_id),
        **extra,
    }
    return webhook_body("messages", {"statuses": [entry]}, phone_number_id)


def reply_webhook(
    text: str, phone: str = "5511987650000", phone_number_id: str | None = None
) -> dict:
    """A customer's text reply as Meta sends it, to the demo sender's number unless told."""
    message = {"from": phone, "type": "text", "text": {"body": text}}
    return webhook_body("messages", {"messages": [message]}, phone_number_id)


def webhook_signature(raw: bytes, secret: str | None = None) -> str:
    """``X-Hub-Signature-256`` for ``raw`` under ``secret`` (the demo sender's app secret
    unless told), computed as the mock WhatsApp signs what it posts."""
    return mock_whatsapp.sign(raw, secret or default_sender().app_secret or "")


def post_webhook(client: FlaskClient, body: Any, secret: str | None = None) -> TestResponse:
    """POST ``body`` (JSON, or bytes as they are) to the webhook endpoint, signed as Meta
    signs it: with ``secret``, the demo sender's app secret unless told."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(
        WEBHOOK_URL,
        data=raw,
        headers={"X-Hub-Signature-256": webhook_signature(raw, secret)},
        content_type="application/json",
    )


class OwnContextClient(FlaskClient):
    """A test client whose every request has an app context of its own, as under a real
    server. A plain test client's requests share the test's app context, and with it
    Flask-Login's user cached in ``g``: the last one signed in, whatever the client."""

    def open(self, *args: Any, **kwargs: Any) -> Any:
        with self.application.app_context():
            return super().open(*args, **kwargs)


def browser(app: Flask) -> FlaskClient:
    """A client of its own, as a separate browser is."""
    client = OwnContextClient(app, app.response_class, use_cookies=True)
    return client


# --- what is left in English on a page read in Portuguese (tests/test_i18n.py, browser) ---

_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
# Tokens that are data or code, not UI text: addresses, identifiers, URLs, file names.
_NOT_TEXT = re.compile(r"\S*[@_/\\:=]\S*|\S+\.\S+|\{\{[^}]*\}\}")
# Words both languages use, or names, that English msgids hold but no msgstr repeats.
_SHARED_WORDS = {"disparo", "whatsapp", "meta", "erp", "api", "csv", "json", "id", "ok", "cli"}


def english_only_words() -> frozenset[str]:
    """Words of the English msgids that no pt_BR translation uses: seeing one on a page
    read in Portuguese means a string escaped translation (or a raw code is shown)."""
    from babel.messages.pofile import read_po

    from campaigns.i18n import TRANSLATIONS

    with open(TRANSLATIONS / "pt_BR" / "LC_MESSAGES" / "messages.po", "rb") as po:
        catalogue = read_po(po, locale="pt_BR")
    english: set[str] = set()
    portuguese: set[str] = set()
    for message in catalogue:
        if not message.id:
            continue
        ids = message.id if isinstance(message.id, tuple) else (message.id,)
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        for text in ids:
            english.update(w.lower() for w in _WORD.findall(re.sub(r"%\(\w+\)\w", " ", text)))
        for text in strings:
            portuguese.update(w.lower() for w in _WORD.findall(text))
    return frozenset(english - portuguese - _SHARED_WORDS)


def visible_text(html: str) -> str:
    """A page's text as a reader meets it: element text and the attributes people read
    (placeholder, title, aria-label, alt, value of buttons, hx-confirm questions); not
    scripts, styles, <code>, the hidden CSRF inputs or the htmx config."""
    html = re.sub(r"(?is)<(script|style|code|pre)\b.*?</\1>", " ", html)
    html = re.sub(r"(?is)<meta\b[^>]*>", " ", html)
    read = re.findall(
        r'(?i)\b(?:placeholder|title|aria-label|alt|hx-confirm|data-confirm)="([^"]*)"', html
    )
    text = re.sub(r"(?s)<[^>]+>", " ", html)
    return html_module.unescape(" ".join([text, *read]))


def english_words_in(text: str, vocabulary: frozenset[str]) -> set[str]:
    text = _NOT_TEXT.sub(" ", text)
    return {w for w in _WORD.findall(text) if w.lower() in vocabulary}


# --- every /api/v1 answer a test gets is one the OpenAPI document describes ----------------


@dataclass(frozen=True)
class ApiExchange:
    """One /api/v1 request and its answer, as openapi-core reads them (copied at the end of
    the request: the request's own objects do not outlive it)."""

    request: Any  # openapi_core.testing.MockRequest
    response: Any  # openapi_core.testing.MockResponse
    routed: bool  # False: no route took the path and method (werkzeug's 404 or 405)

    @property
    def name(self) -> str:
        request = self.request
        return f"{request.method.upper()} {request.path} → {self.response.status_code}"


class ApiContract:
    """Checks the JSON API's answers against campaigns/openapi.py's document.

    ``make_app`` installs :meth:`record` as an after_request hook of every test app, and
    conftest's autouse fixture calls :meth:`problems` after each test and fails it on any:
    an undocumented path, method, status, header or field, or a body its schema refuses.
    Responses only: many tests send invalid requests on purpose. A request no route took
    (an unknown path under /api/v1, a method its path does not take) cannot be in the
    document; its answer must be a 404 or 405 in the error envelope.
    """

    def __init__(self) -> None:
        self.exchanges: list[ApiExchange] = []
        self._lock = threading.Lock()  # live-server tests answer in threads

    def record(self, response: Response) -> Response:
        from flask import request
        from openapi_core.testing import MockRequest, MockResponse

        if not request.path.startswith("/api/v1/") or response.is_streamed:
            return response
        exchange = ApiExchange(
            MockRequest(
                "http://localhost",
                request.method,
                request.path,
                args=request.args,
                headers=dict(request.headers),
            ),
            MockResponse(
                response.get_data(),
                status_code=response.status_code,
                headers=dict(response.headers),
                content_type=response.mimetype or "",
            ),
            routed=request.url_rule is not None,
        )
        with self._lock:
            self.exchanges.append(exchange)
        return response

    def take(self) -> list[ApiExchange]:
        with self._lock:
            taken, self.exchanges = self.exchanges, []
        return taken

    def problems(self, exchanges: list[ApiExchange]) -> list[str]:
        """What is wrong with each answer, one line per problem, naming the endpoint."""
        found: list[str] = []
        for exchange in exchanges:
            errors = (
                _unrouted_errors(exchange) if not exchange.routed else _document_errors(exchange)
            )
            found.extend(f"{exchange.name}: {error}" for error in errors)
        return found


API_CONTRACT = ApiContract()


@functools.cache
def api_document() -> Any:
    from openapi_core import OpenAPI

    from campaigns.openapi import document

    return OpenAPI.from_dict(document())


def _describe(error: BaseException) -> str:
    """openapi-core's error with its causes (the schema errors say which field)."""
    parts = [str(error)]
    for cause in getattr(error, "schema_errors", None) or ():
        where = "/".join(str(p) for p in cause.absolute_path) or "(body)"
        parts.append(f"at {where}: {cause.message}")
    if error.__cause__ is not None:
        parts.append(_describe(error.__cause__))
    return "; ".join(parts)


def _document_errors(exchange: ApiExchange) -> list[str]:
    return [
        _describe(error)
        for error in api_document().iter_response_errors(exchange.request, exchange.response)
    ]


def _unrouted_errors(exchange: ApiExchange) -> list[str]:
    from openapi_schema_validator import OAS31Validator

    from campaigns.openapi import schemas

    response = exchange.response
    if response.status_code not in (404, 405):
        return [f"no route, yet the answer is {response.status_code} (404 or 405 expected)"]
    try:
        body = json.loads(response.data)
    except ValueError:
        return ["the answer is not JSON"]
    validator = OAS31Validator(schemas()["Error"])
    return [f"not the error envelope: {error.message}" for error in validator.iter_errors(body)]
