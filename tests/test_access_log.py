"""The web access log leaves out query strings: recipient searches carry phones and names."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
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


def test_the_web_process_logs_requests_without_their_query_string(database_url_for_test):
    env = os.environ | {"DATABASE_URL": database_url_for_test, "DISPARO_ENV": "development"}
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
        response = requests.get(
            f"http://127.0.0.1:{port}/login",
            params={"next": f"/campaigns/1/recipients?q=+{PHONE}"},
            headers={"Referer": f"http://127.0.0.1:{port}/campaigns/1/recipients?q={NAME}"},
            timeout=30,
        )
        assert response.status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        access_log, _ = process.communicate(timeout=30)
    lines = [line for line in access_log.splitlines() if "/login" in line]
    assert len(lines) == 1, access_log
    assert '"GET /login HTTP/1.1" 200' in lines[0]
    assert PHONE not in access_log and NAME not in access_log and "?" not in lines[0]
