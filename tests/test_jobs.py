from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app import db
from jobs import tasks
from tests.helpers import PROCRASTINATE, wait_for


@pytest.fixture
def worker_process(database_url_for_test: str) -> Iterator[subprocess.Popen[str]]:
    """A real `procrastinate worker` on the test database, as the Procfile runs it."""
    env = os.environ | {"DATABASE_URL": database_url_for_test, "DISPARO_ENV": "development"}
    process = subprocess.Popen(
        [
            PROCRASTINATE,
            "--app=jobs.app",
            "worker",
            "--name=test-worker",
            "--queues=maintenance",
            "--delete-jobs=never",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    yield process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    process.stdout.close()


def _job_status(job_id: int) -> str | None:
    db.session.rollback()  # see the worker's commits
    return db.session.execute(
        db.text("SELECT status::text FROM procrastinate_jobs WHERE id = :id"), {"id": job_id}
    ).scalar()


def test_a_job_makes_the_round_trip_through_a_real_worker(client, real_queue, worker_process):
    # The worker registers and heartbeats: /healthz turns healthy.
    wait_for(lambda: client.get("/healthz").status_code == 200, 30, "the worker is live")
    assert client.get("/healthz").json["live_workers"] == 1

    job_id = tasks.ping.defer(token="round-trip")
    wait_for(lambda: _job_status(job_id) in ("succeeded", "failed"), 30, "the ping job ended")
    assert _job_status(job_id) == "succeeded"

    # A graceful stop unregisters the worker, so health reports it gone at once.
    worker_process.send_signal(signal.SIGTERM)
    assert worker_process.wait(timeout=30) == 0
    output = worker_process.stdout.read()
    assert "ping round-trip" in output  # the task ran inside the worker's Flask context
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json["live_workers"] == 0


def test_deferring_from_the_web_side_only_records_ids(in_memory_queue):
    tasks.ping.defer(token="abc")
    [job] = in_memory_queue.jobs.values()
    assert job["task_name"] == "maintenance.ping"
    assert job["queue_name"] == "maintenance"
    assert job["args"] == {"token": "abc"}


PRODUCTION_IMPORTS = """
import sys
import app, jobs
app.create_app()
jobs.app.perform_import_paths()
print(sorted(jobs.app.tasks))
print(sorted(m for m in sys.modules if m.split(".")[0] in ("mocks", "numpy")))
"""


def test_production_never_loads_a_mock():
    """With mocks off, neither the web app nor a worker imports the mocks (nor numpy)."""
    env = {
        "PATH": os.environ["PATH"],
        "DISPARO_ENV": "production",
        "DATABASE_URL": "postgresql://db.example.com/disparo",  # never reached: nothing connects
        "SECRET_KEY": "x" * 40,
        "DISPARO_ENCRYPTION_KEY": "Rl7wK4bPt2uYfL3p9vJxq0mZcN8sD1eHaGiTkUoVyWs=",  # any Fernet key
    }
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-c", PRODUCTION_IMPORTS],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    registered, loaded = result.stdout.strip().splitlines()[-2:]
    assert "messages.send" in registered and "mock_whatsapp.post_webhooks" not in registered
    assert loaded == "[]"
