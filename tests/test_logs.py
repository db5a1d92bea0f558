"""LOG_FORMAT=json: one JSON object a line from every process, with the request or the job."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import requests

from app import db
from campaigns import logs
from campaigns.config import ConfigError, log_format
from jobs import tasks
from tests.helpers import PROCRASTINATE, WEBHOOK_URL, wait_for
from tests.test_access_log import web_command

ROOT = Path(__file__).resolve().parent.parent
FLASK = str(Path(sys.executable).with_name("flask"))
PHONE = "5511999990000"
FIELDS = ("time", "level", "logger", "message")


def parse_lines(output: str) -> list[dict]:
    """Every line of a JSON process's output: one object, with the fields every line has."""
    lines = []
    for text in output.splitlines():
        line = json.loads(text)  # a line that is not JSON fails here
        assert isinstance(line, dict), text
        assert all(field in line for field in FIELDS), text
        assert line["time"].endswith("Z"), text
        datetime.fromisoformat(line["time"].replace("Z", "+00:00"))
        lines.append(line)
    return lines


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """The root logger's lines in JSON for this test, as LOG_FORMAT=json writes them."""
    stream = io.StringIO()
    handler = logs.json_handler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)


def test_log_format_is_text_unless_json(monkeypatch):
    monkeypatch.setenv("LOG_FORMAT", "")
    assert log_format() == "text"
    monkeypatch.setenv("LOG_FORMAT", "JSON")
    assert log_format() == "json"
    monkeypatch.setenv("LOG_FORMAT", "logfmt")
    with pytest.raises(ConfigError, match="LOG_FORMAT must be one of text, json"):
        log_format()


def test_a_line_is_one_object_with_its_context_extra_and_exception():
    stream = io.StringIO()
    logger = logging.getLogger("tests.logs.one")
    logger.propagate = False
    logger.addHandler(logs.json_handler(stream))
    try:
        with logs.bound(job_id=7, task="maintenance.ping"):
            try:
                raise ValueError("first line\nsecond line")
            except ValueError:
                logger.exception("it failed\non two lines", extra={"campaign_id": 3})
        logger.warning("after the job")
    finally:
        logger.handlers.clear()
        logger.propagate = True
    failed, after = parse_lines(stream.getvalue())
    assert failed["level"] == "ERROR" and failed["logger"] == "tests.logs.one"
    assert failed["message"] == "it failed\non two lines"
    assert failed["job_id"] == 7 and failed["task"] == "maintenance.ping"
    assert failed["campaign_id"] == 3
    assert failed["exception"].startswith("Traceback")
    assert "ValueError: first line\nsecond line" in failed["exception"]
    assert "job_id" not in after  # the context ended with the job


def webhook_refused(client, **headers):
    """A request the app logs a line about: an unsigned webhook."""
    return client.post(WEBHOOK_URL, data=b"{}", content_type="application/json", headers=headers)


def test_a_request_id_is_generated_echoed_and_on_the_request_s_lines(client, json_lines):
    response = webhook_refused(client)
    assert response.status_code == 401
    request_id = response.headers["X-Request-ID"]
    assert uuid.UUID(request_id)
    [line] = [
        line for line in parse_lines(json_lines.getvalue()) if "webhook refused" in line["message"]
    ]
    assert line["request_id"] == request_id
    assert line["logger"] == "campaigns.views.webhooks" and line["level"] == "WARNING"
    # Each request gets its own.
    assert webhook_refused(client).headers["X-Request-ID"] != request_id


def test_a_well_formed_incoming_request_id_is_kept(client, json_lines):
    router_id = "f3b9c2d4-0d6e-4f1a-9a57-2c8e1d7b6a90"
    response = webhook_refused(client, **{"X-Request-ID": router_id})
    assert response.headers["X-Request-ID"] == router_id
    lines = parse_lines(json_lines.getvalue())
    assert [line["request_id"] for line in lines if "webhook refused" in line["message"]] == [
        router_id
    ]


@pytest.mark.parametrize(
    "incoming",
    [
        "short",  # under 8
        "x" * 201,  # over 200
        'abc12345" level="CRITICAL',  # forged fields in a text log
        "abc12345\tdef",
        "id-with-ünïcode",
        "",
    ],
)
def test_a_malformed_incoming_request_id_is_replaced(client, incoming):
    response = client.get("/login", headers={"X-Request-ID": incoming})
    assert response.status_code == 200
    echoed = response.headers["X-Request-ID"]
    assert echoed != incoming and uuid.UUID(echoed)
    assert response.headers.getlist("X-Request-ID") == [echoed]


def test_every_response_carries_the_request_id(client, app):
    app.config["MAX_CONTENT_LENGTH"] = app.config["MAX_REQUEST_BYTES"] = 64 * 1024
    responses = {
        "page": client.get("/login"),
        "redirect to sign in": client.get("/campaigns"),
        "api without a token": client.get("/api/v1/campaigns"),
        "404": client.get("/no/such/page"),
        "405": client.delete("/login"),
        "413": client.post(WEBHOOK_URL, data=b"x" * (65 * 1024), content_type="application/json"),
        "static": client.get("/static/app.css"),
    }
    assert responses["404"].status_code == 404
    assert responses["413"].status_code == 413
    for what, response in responses.items():
        response.close()
        assert re.fullmatch(r"[0-9a-f-]{36}", response.headers.get("X-Request-ID", "")), what


def run_web(database_url: str, request) -> tuple[str, str]:
    """The Procfile's web process with LOG_FORMAT=json; one request; its stdout and stderr."""
    env = os.environ | {
        "DATABASE_URL": database_url,
        "DISPARO_ENV": "development",
        "LOG_FORMAT": "json",
    }
    process = subprocess.Popen(
        web_command(), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    seen = []
    try:
        assert process.stdout is not None
        port = None
        for text in process.stdout:  # in JSON everything is on stdout, gunicorn's own too
            seen.append(text)
            if match := re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", text):
                port = match[1]
                break
        assert port, "gunicorn did not start: " + "".join(seen)
        request(f"http://127.0.0.1:{port}")
    finally:
        process.send_signal(signal.SIGTERM)
        rest, errors = process.communicate(timeout=30)
    return "".join(seen) + rest, errors


def test_the_web_process_logs_json_with_the_request_id_on_its_access_line(
    database_url_for_test,
):
    router_id = "router-" + uuid.uuid4().hex
    answers = []
    output, errors = run_web(
        database_url_for_test,
        lambda base: answers.extend(
            [
                requests.get(
                    f"{base}/login",
                    params={"next": f"/campaigns/1/recipients?q=+{PHONE}"},
                    headers={"X-Request-ID": router_id, "User-Agent": 'agent "quoted"'},
                    timeout=30,
                ),
                requests.post(
                    f"{base}{WEBHOOK_URL}",
                    data=b"{}",
                    headers={"Content-Type": "application/json"},
                    timeout=30,
                ),
            ]
        ),
    )
    assert errors == ""
    lines = parse_lines(output)
    assert answers[0].headers["X-Request-ID"] == router_id
    # gunicorn's error log, the app's lines and the access log: all JSON.
    assert any(line["logger"] == "gunicorn.error" for line in lines)
    [login] = [line for line in lines if line.get("path") == "/login"]
    assert login["logger"] == "gunicorn.access"
    assert login["method"] == "GET" and login["status"] == 200
    assert login["request_id"] == router_id
    assert login["user_agent"] == 'agent "quoted"'
    assert isinstance(login["duration_ms"], int) and login["bytes"] > 0
    assert PHONE not in output and "?" not in login["message"] + login["path"]
    # The app's own line and the access line of the same request name the same id.
    webhook_id = answers[1].headers["X-Request-ID"]
    [refused] = [line for line in lines if "webhook refused" in line["message"]]
    [access] = [line for line in lines if line.get("path") == WEBHOOK_URL]
    assert refused["request_id"] == access["request_id"] == webhook_id
    assert access["status"] == 401


def _job_status(job_id: int) -> str | None:
    return db.session.execute(
        db.text("SELECT status::text FROM procrastinate_jobs WHERE id = :id"), {"id": job_id}
    ).scalar()


def test_a_worker_logs_json_with_the_job_on_every_line_of_it(
    app, real_queue, database_url_for_test, tmp_path
):
    ping_id = tasks.ping.defer(token="json-logs")
    broken_id = tasks.ping.defer(unknown_argument=1)  # fails: ping() takes a token
    env = os.environ | {
        "DATABASE_URL": database_url_for_test,
        "DISPARO_ENV": "development",
        "LOG_FORMAT": "json",
    }
    out, err = tmp_path / "worker.out", tmp_path / "worker.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(
            [
                PROCRASTINATE,
                "--app=jobs.app",
                "worker",
                "--name=json",
                "--queues=maintenance",
                "--delete-jobs=never",
            ],
            env=env,
            stdout=stdout,
            stderr=stderr,
        )
        try:
            wait_for(
                lambda: {_job_status(ping_id), _job_status(broken_id)} <= {"succeeded", "failed"},
                60,
                "both jobs ended",
                explain=False,
            )
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
    assert (_job_status(ping_id), _job_status(broken_id)) == ("succeeded", "failed")
    # Procrastinate's CLI prints (not logs) one line of its own as it starts.
    assert err.read_text() == "Launching a worker on maintenance\n"
    lines = parse_lines(out.read_text())
    job = {"task": "maintenance.ping", "queue": "maintenance", "attempt": 1}

    # The task's own line, written in the job's thread.
    [ping] = [line for line in lines if line["message"] == "ping json-logs"]
    assert ping["logger"] == "jobs.tasks"
    assert ping | job == ping and ping["job_id"] == ping_id
    # Procrastinate's lines about the job, written by the worker's event loop.
    started = [line for line in lines if line["message"].startswith("Starting job")]
    assert {line["job_id"] for line in started} >= {ping_id, broken_id}
    assert all(line | job == line for line in started if line["job_id"] in (ping_id, broken_id))
    assert all(line.get("worker") == "json" for line in started)
    # The failure: one line, its traceback a string field.
    [failed] = [
        line
        for line in lines
        if line.get("job_id") == broken_id and "ended with status: Error" in line["message"]
    ]
    assert failed["level"] == "ERROR" and failed["logger"].startswith("procrastinate.worker")
    assert "TypeError" in failed["exception"] and "unknown_argument" in failed["exception"]


def test_the_release_phase_logs_json(database_url_for_test):
    """The Procfile's release command: Alembic logs through the JSON handler, not its .ini's."""
    env = os.environ | {
        "DATABASE_URL": database_url_for_test,
        "DISPARO_ENV": "development",
        "LOG_FORMAT": "json",
    }
    line = next(
        line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("release:")
    )
    argv = line.removeprefix("release:").split()
    assert argv[0] == "flask"
    done = subprocess.run(
        [FLASK, *argv[1:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = parse_lines(done.stdout)
    assert any(line["logger"].startswith("alembic.runtime.migration") for line in lines)
