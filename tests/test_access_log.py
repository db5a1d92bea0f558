"""The web access log leaves out query strings: recipient searches carry phones and names."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))
PHONE, NAME = "5511999990000", "Maria"


def web_command() -> list[str]:
    """The Procfile's `web` line, on a free local port."""
    line = next(
        line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("web:")
    )
    command = line.removeprefix("web:").replace("0.0.0.0:${PORT:-5000}", "127.0.0.1:0")
    argv = shlex.split(command)
    assert argv[0] == "gunicorn"
    return [GUNICORN, *argv[1:]]


def access_log_of(database_url: str, request: Callable[[str], requests.Response], **env) -> str:
    """Run the web process, make one request to its base URL, return its access log."""
    env = os.environ | env | {"DATABASE_URL": database_url, "DISPARO_ENV": "development"}
    # From the checkout's root, as the platform runs it: gunicorn reads ./gunicorn.conf.py.
    process = subprocess.Popen(
        web_command(), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stderr is not None
        port = None
        for line in process.stderr:  # gunicorn's own log: where it listens
            if match := re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", line):
                port = match[1]
                break
        assert port, "gunicorn did not start"
        assert request(f"http://127.0.0.1:{port}").status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        access_log, _ = process.communicate(timeout=30)
    return access_log


def test_the_web_process_logs_requests_without_their_query_string(database_url_for_test):
    access_log = access_log_of(
        database_url_for_test,
        lambda base: requests.get(
            f"{base}/login",
            params={"next": f"/campaigns/1/recipients?q=+{PHONE}"},
            headers={"Referer": f"{base}/campaigns/1/recipients?q={NAME}"},
            timeout=30,
        ),
    )
    lines = [line for line in access_log.splitlines() if "/login" in line]
    assert len(lines) == 1, access_log
    assert '"GET /login HTTP/1.1" 200' in lines[0]
    assert PHONE not in access_log and NAME not in access_log and "?" not in lines[0]


def test_behind_a_proxy_the_access_log_names_the_client(database_url_for_test):
    """ProxyFix rewrites the request's environ, which gunicorn's ``%(h)s`` reads."""
    access_log = access_log_of(
        database_url_for_test,
        lambda base: requests.get(
            f"{base}/login", headers={"X-Forwarded-For": "203.0.113.7"}, timeout=30
        ),
        PROXY_COUNT="1",
    )
    lines = [line for line in access_log.splitlines() if "/login" in line]
    assert len(lines) == 1, access_log
    assert lines[0].startswith("203.0.113.7 "), lines[0]
