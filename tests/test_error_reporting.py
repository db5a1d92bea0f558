"""SENTRY_DSN: errors from views and jobs reach Sentry with their request or job, and
without a phone number or a customer's name. Sentry here is a local HTTP stub that keeps
the envelopes the SDK posts."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import uuid
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from app import db
from campaigns import redact
from campaigns.config import ConfigError, sentry_settings
from jobs import tasks
from tests.helpers import PROCRASTINATE, serving_server, wait_for

ROOT = Path(__file__).resolve().parent.parent
NAME = "Maria Aparecida"
PHONE = "+55 (11) 97531-8642"
PHONE_DIGITS = "5511975318642"


class SentryStub:
    """What a Sentry server would have received: each envelope, decoded."""

    def __init__(self) -> None:
        self.envelopes: list[str] = []
        handler = self._handler()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.dsn = f"http://public@127.0.0.1:{self.server.server_port}/1"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                stub.envelopes.append(body.decode())
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def events(self) -> list[dict]:
        """The error events among the envelopes' items (not sessions nor client reports)."""
        found = []
        for envelope in list(self.envelopes):
            lines = envelope.split("\n")[1:]  # the envelope's own header first
            for header, payload in zip(lines[::2], lines[1::2], strict=False):
                if header and json.loads(header).get("type") == "event":
                    found.append(json.loads(payload))
        return found

    def everything(self) -> str:
        return "\n".join(self.envelopes)


@pytest.fixture
def sentry() -> Iterator[SentryStub]:
    stub = SentryStub()
    with serving_server(stub.server):
        yield stub


def assert_nothing_personal(stub: SentryStub) -> None:
    sent = stub.everything()
    assert sent, "nothing reached Sentry"
    for piece in (NAME, "Maria", "Aparecida", PHONE, PHONE_DIGITS, "97531", "975318642"):
        assert piece not in sent, piece


def frame_vars(event: dict, function: str) -> dict:
    frames = [
        frame
        for value in event["exception"]["values"]
        for frame in value["stacktrace"]["frames"]
        if frame["function"] == function
    ]
    assert frames, function
    return frames[-1]["vars"]


VIEW_FAILS = """
import logging, sys
import sentry_sdk
from flask import request
from app import create_app, csrf
from campaigns import error_reporting

app = create_app()
assert error_reporting.enabled()

def customer_failure():
    customer_data = request.get_json()
    nome = customer_data["nome"]
    to = customer_data["phone"]
    variables = [nome, "R$ 10,00"]
    logging.getLogger("campaigns.example").warning("sending to %s failed", to)
    raise ValueError(f"variables {{'nome': {nome!r}}} do not fit the template for {to}")

customer_failure.required_role = None  # public (campaigns/auth.py)
app.add_url_rule("/customer-failure", view_func=csrf.exempt(customer_failure), methods=["POST"])
name, phone, request_id = sys.argv[1:]
response = app.test_client().post(
    "/customer-failure?q=" + name,
    json={"nome": name, "phone": phone},
    headers={"X-Request-ID": request_id, "Referer": "http://disparo/recipients?q=" + phone},
)
print(response.status_code, response.headers["X-Request-ID"])
sentry_sdk.flush(timeout=30)
"""


@pytest.mark.parametrize("traces", ["0", "1"])  # with tracing, the request's trace is sent too
def test_an_exception_in_a_view_is_reported_without_personal_data(
    sentry, database_url_for_test, traces
):
    request_id = "router-" + uuid.uuid4().hex
    env = os.environ | {
        "DATABASE_URL": database_url_for_test,
        "DISPARO_ENV": "development",
        "SENTRY_DSN": sentry.dsn,
        "SENTRY_ENVIRONMENT": "staging",
        "SENTRY_TRACES_SAMPLE_RATE": traces,
    }
    done = subprocess.run(
        [sys.executable, "-c", VIEW_FAILS, NAME, PHONE, request_id],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].split() == ["500", request_id]  # after the log lines
    [event] = [e for e in sentry.events() if e.get("exception")]
    [error] = event["exception"]["values"]
    assert error["type"] == "ValueError"
    assert error["value"] == "variables {'nome': '[Filtered]'} do not fit the template for [phone]"
    assert event["tags"]["request_id"] == request_id
    assert event["environment"] == "staging"
    # The view's local variables: there, with the customer's data masked.
    local = frame_vars(event, "customer_failure")
    assert local["nome"] == local["to"] == local["variables"] == local["customer_data"]
    assert local["nome"] == redact.FILTERED
    # The request, without its body or query string; the breadcrumb, its number masked.
    assert event["request"]["url"].endswith("/customer-failure")
    assert event["request"].get("data") in (None, "", redact.FILTERED)
    assert event["request"].get("query_string") in (None, "", redact.FILTERED)
    crumbs = [c["message"] for c in event["breadcrumbs"]["values"] if c.get("message")]
    assert "sending to [phone] failed" in crumbs
    traced = '"type":"transaction"' in sentry.everything()
    assert traced == (traces == "1")
    assert_nothing_personal(sentry)


def test_a_failed_job_is_reported_with_its_job_and_without_personal_data(
    sentry, app, real_queue, database_url_for_test, tmp_path
):
    # A job with arguments its task does not take (a stale deferral, say): it fails.
    job_id = tasks.ping.defer(token="t", nome=NAME, phone=PHONE)
    env = os.environ | {
        "DATABASE_URL": database_url_for_test,
        "DISPARO_ENV": "development",
        "SENTRY_DSN": sentry.dsn,
    }
    with (tmp_path / "worker.log").open("w") as log:
        process = subprocess.Popen(
            [
                PROCRASTINATE,
                "--app=jobs.app",
                "worker",
                "--name=reports",
                "--queues=maintenance",
                "--delete-jobs=never",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            event = wait_for(
                lambda: next(
                    (e for e in sentry.events() if e.get("tags", {}).get("job_id") == str(job_id)),
                    None,
                ),
                60,
                "the failed job's event",
                explain=False,
            )
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
    assert isinstance(event, dict)
    job = {"task": "maintenance.ping", "queue": "maintenance", "attempt": "1"}
    assert event["tags"] | job == event["tags"]
    [error] = event["exception"]["values"]
    assert error["type"] == "TypeError"
    assert "ended with status: Error" in event["logentry"]["formatted"]
    assert_nothing_personal(sentry)
    # The job itself kept its arguments: only the report is masked.
    db.session.rollback()
    args = db.session.execute(
        db.text("SELECT args FROM procrastinate_jobs WHERE id = :id"), {"id": job_id}
    ).scalar()
    assert args["nome"] == NAME


JOB_LOGS_AN_ERROR = """
import logging, sys
import sentry_sdk
from procrastinate import JobContext
from procrastinate.jobs import Job
import jobs
from jobs.context import flask_context

job = Job(
    id=41, queue="campaign-sender", task_name="campaigns.fan_out", lock=None,
    queueing_lock=None, task_kwargs={"campaign_id": 7}, attempts=1, status="doing",
)

def task():
    logging.getLogger("campaigns.fanout").error("ERP page refused for %s", sys.argv[1])

context = JobContext(app=jobs.app, job=job, start_timestamp=0.0, abort_reason=lambda: None)
flask_context(task, context, None)  # the worker's task middleware
sentry_sdk.flush(timeout=30)
"""


def test_an_error_a_job_logs_carries_the_job(sentry, database_url_for_test):
    env = os.environ | {
        "DATABASE_URL": database_url_for_test,
        "DISPARO_ENV": "development",
        "SENTRY_DSN": sentry.dsn,
    }
    done = subprocess.run(
        [sys.executable, "-c", JOB_LOGS_AN_ERROR, PHONE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    [event] = sentry.events()
    assert event["logentry"]["formatted"] == "ERP page refused for [phone]"
    assert (
        event["tags"]
        | {
            "job_id": "41",
            "task": "campaigns.fan_out",
            "queue": "campaign-sender",
            "attempt": "2",
            "campaign_id": "7",
        }
        == event["tags"]
    )
    assert_nothing_personal(sentry)


UNSET = """
import sys
import app, jobs
app.create_app()
print("sentry_sdk" in sys.modules)
"""


def test_without_a_dsn_sentry_is_never_even_imported(database_url_for_test):
    env = os.environ | {"DATABASE_URL": database_url_for_test, "DISPARO_ENV": "development"}
    env.pop("SENTRY_DSN", None)
    done = subprocess.run(
        [sys.executable, "-c", UNSET], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_a_dsn_that_is_not_one_stops_the_process(monkeypatch):
    monkeypatch.setenv("SENTRY_DSN", "https://sentry.example.com/1")  # no key
    with pytest.raises(ConfigError, match="SENTRY_DSN is not a Sentry DSN") as raised:
        sentry_settings()
    assert "sentry.example.com" not in str(raised.value)
    monkeypatch.setenv("SENTRY_DSN", "https://key@o1.ingest.sentry.io/42")
    monkeypatch.setenv("SENTRY_TRACES_SAMPLE_RATE", "2")
    with pytest.raises(ConfigError, match="SENTRY_TRACES_SAMPLE_RATE"):
        sentry_settings()
    monkeypatch.setenv("SENTRY_TRACES_SAMPLE_RATE", "0.25")
    settings = sentry_settings()
    assert settings is not None
    assert settings.traces_sample_rate == 0.25 and settings.environment == "development"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("call +55 (11) 97531-8642 now", "call [phone] now"),
        ("5511975318642,+5511888880000", "[phone],[phone]"),
        ("to 11 97531-8642.", "to [phone]."),
        # Dates and short numbers stay.
        ("at 2026-12-04 21:00:00, id 1234567", "at 2026-12-04 21:00:00, id 1234567"),
        # Personal keys' quoted or bracketed values, in a repr or a JSON text.
        ("ping[5](nome='Maria', token='t')", "ping[5](nome='[Filtered]', token='t')"),
        ('{"name": "Ana", "id": 3}', '{"name": "[Filtered]", "id": 3}'),
        ("{'params': ['Ana', ['x]']], 'n': 1}", "{'params': [Filtered], 'n': 1}"),
        ("{'job': {'kw': {'wa_id': 'x'}}}", "{'job': {'kw': {'wa_id': '[Filtered]'}}}"),
        # A state in a log line is not quoted data; a URL's credentials and query are.
        ("message_state from=queued to=sending", "message_state from=queued to=sending"),
        ("https://u:p@erp/c?token=1&q=Ana", "https://***@erp/c?token=[Filtered]&q=[Filtered]"),
        ("<Request 'http://h/r?q=Ana%20Maria' [GET]>", "<Request 'http://h/r?q=[Filtered]' [GET]>"),
    ],
)
def test_personal_data_is_masked_in_text(text, expected):
    assert redact.redact_personal(text) == expected
