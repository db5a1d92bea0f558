"""The `ops` process (jobs/ops.py) and the connection settings (campaigns/config.py).

A real ``python -m jobs.ops``, as the Procfile runs it: each queue group runs no more
jobs at once than its concurrency (the source documents' notifications 3), and
SIGTERM stops every group, after the jobs in hand, with exit status 0.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.wrappers import Response

from app import db
from campaigns import config, queues
from campaigns.config import ConfigError
from tests.helpers import defer_job, serving, wait_for

ROOT = Path(__file__).resolve().parent.parent


class HeldReceiver:
    """A notification webhook receiver that holds each request until released, and
    counts how many it holds at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.in_flight = 0
        self.most = 0
        self.answered = 0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        with self.lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        try:
            self.release.wait(60)
        finally:
            with self.lock:
                self.in_flight -= 1
                self.answered += 1
        return Response("ok")(environ, start_response)


@pytest.fixture
def receiver() -> Iterator[tuple[HeldReceiver, str]]:
    held = HeldReceiver()
    with serving(held) as base:
        yield held, base
    held.release.set()


def _queue_jobs(status: str) -> int:
    return db.session.execute(
        db.text(
            "SELECT count(*) FROM procrastinate_jobs"
            " WHERE queue_name = :q AND status = CAST(:s AS procrastinate_job_status)"
        ),
        {"q": queues.NOTIFICATIONS_QUEUE, "s": status},
    ).scalar_one()


def test_each_queue_keeps_its_concurrency_and_sigterm_stops_the_whole_process(
    campaign, database_url_for_test, live_server, real_queue, receiver, tmp_path
):
    held, base = receiver
    for _ in range(8):
        defer_job(
            queues.NOTIFY_TASK,
            queues.NOTIFICATIONS_QUEUE,
            {"campaign_id": campaign.id, "kind": "started"},
        )
    env = os.environ | {
        "DATABASE_URL": database_url_for_test,
        "DISPARO_ENV": "development",
        "APP_BASE_URL": live_server,
        "NOTIFICATION_WEBHOOK_URL": f"{base}/hook",
    }
    env.pop("OPS_WORKERS", None)  # the defaults: campaign-notifications at most 3
    log_path = tmp_path / "ops.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "jobs.ops"], cwd=ROOT, env=env, stdout=log, stderr=log
        )
    try:
        # Eight notifications wait; the group takes three and no more while they run.
        wait_for(lambda: held.in_flight == 3, 60, "three notifications in flight")
        wait_for(lambda: _queue_jobs("doing") == 3, 30, "three notify jobs running")
        assert _queue_jobs("todo") == 5
        assert held.most == 3
        held.release.set()
        wait_for(lambda: held.answered == 8, 60, "every notification posted")
        assert held.most == 3

        # SIGTERM while three run: the process stops taking jobs, finishes those in hand
        # and exits 0, every one of its workers unregistered.
        held.release.clear()
        for _ in range(5):
            defer_job(
                queues.NOTIFY_TASK,
                queues.NOTIFICATIONS_QUEUE,
                {"campaign_id": campaign.id, "kind": "started"},
            )
        wait_for(lambda: held.in_flight == 3, 60, "three more in flight")
        process.send_signal(signal.SIGTERM)
        wait_for(lambda: "stop requested" in log_path.read_text(), 30, "the stop logged")
        held.release.set()
        assert process.wait(timeout=30) == 0, log_path.read_text()
    finally:
        held.release.set()
        if process.poll() is None:
            process.kill()
            process.wait()
    db.session.rollback()
    assert held.most == 3
    assert _queue_jobs("doing") == 0
    assert _queue_jobs("todo") == 2  # never started after the stop
    assert _queue_jobs("failed") == _queue_jobs("aborted") == 0  # the three ended well
    assert db.session.execute(db.text("SELECT count(*) FROM procrastinate_workers")).scalar() == 0
    log = log_path.read_text()
    assert "Traceback" not in log, log
    for group in config.ops_workers():
        assert f"Stopped worker on queues {', '.join(group.queues)}" in log


def test_ops_refuses_a_pool_its_jobs_could_deadlock_on():
    """Sixteen connections at once at the defaults (13 slots + 3 retry jobs' limiter calls)."""
    env = os.environ | {
        "DISPARO_ENV": "development",
        "DATABASE_URL": "postgresql://db.invalid/disparo",  # never reached
        "DB_POOL_SIZE": "4",
        "DB_MAX_OVERFLOW": "0",
    }
    env.pop("OPS_WORKERS", None)
    result = subprocess.run(
        [sys.executable, "-m", "jobs.ops"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "DB_POOL_SIZE + DB_MAX_OVERFLOW (4 + 0) is below the 16" in result.stderr


# -- the settings


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setattr(config, "load_env_file", lambda: None)
    for name in (
        "OPS_WORKERS",
        "DB_POOL_SIZE",
        "DB_MAX_OVERFLOW",
        "QUEUE_POOL_MIN_SIZE",
        "QUEUE_POOL_MAX_SIZE",
        "WORKER_CONCURRENCY",
        "WEB_THREADS",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_ops_queues_are_the_queues_but_the_messages_one():
    assert set(config.OPS_QUEUES) == {
        queues.SCHEDULER_QUEUE,
        queues.SENDER_QUEUE,
        queues.NOTIFICATIONS_QUEUE,
        queues.RETRY_QUEUE,
        queues.MAINTENANCE_QUEUE,
        "builtin",  # Procrastinate's own
    }


def test_the_default_ops_groups_are_the_source_documents(env):
    concurrency = {q: g.concurrency for g in config.ops_workers() for q in g.queues}
    assert concurrency["campaign-notifications"] == 3
    assert concurrency["message-retry"] == 3
    assert concurrency["campaign-scheduler"] == 2


def test_ops_groups_can_share_a_worker(env):
    env.setenv(
        "OPS_WORKERS",
        "campaign-sender:2; campaign-scheduler:1;"
        " campaign-notifications,message-retry,maintenance,builtin:1",
    )
    groups = config.ops_workers()
    assert [(g.queues, g.concurrency) for g in groups] == [
        (("campaign-sender",), 2),
        (("campaign-scheduler",), 1),
        (("campaign-notifications", "message-retry", "maintenance", "builtin"), 1),
    ]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("campaign-sender", "groups of queues and their concurrency"),
        ("campaign-sender:x", "groups of queues and their concurrency"),
        ("campaign-sender:0", "concurrency must be 1 to 100"),
        ("campaign-messages:3", "not an ops queue"),
        ("campaign-sender:1; campaign-sender:2", "names campaign-sender twice"),
        ("campaign-sender:3", "leaves out campaign-scheduler"),
    ],
)
def test_a_bad_ops_groups_setting_is_refused(env, raw, message):
    env.setenv("OPS_WORKERS", raw)
    with pytest.raises(ConfigError, match=message):
        config.ops_workers()


def test_pool_settings_default_to_each_process_own(env):
    assert config.db_pool() == (None, None)
    assert config.queue_pool() == (1, 10)
    assert config.sqlalchemy_pool("worker", 10) == (10, 2)  # 5 message jobs, as before
    env.setenv("DB_POOL_SIZE", "3")
    env.setenv("DB_MAX_OVERFLOW", "1")
    assert config.sqlalchemy_pool("worker", 4) == (3, 1)
    with pytest.raises(ConfigError, match=r"\(3 \+ 1\) is below the 6"):
        config.sqlalchemy_pool("worker", 6)


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("DB_POOL_SIZE", "0", "at least 1"),
        ("DB_MAX_OVERFLOW", "-1", "at least 0"),
        ("DB_POOL_SIZE", "five", "whole number"),
        ("QUEUE_POOL_MAX_SIZE", "0", "at least 1"),
        ("QUEUE_POOL_MIN_SIZE", "11", r"QUEUE_POOL_MIN_SIZE \(11\) must be at most"),
        ("WORKER_CONCURRENCY", "0", "at least 1"),
        ("WEB_THREADS", "100", "at most 64"),
    ],
)
def test_a_bad_pool_setting_is_refused(env, name, raw, message):
    env.setenv(name, raw)
    with pytest.raises(ConfigError, match=message):
        config.db_pool()
        config.queue_pool()
        config.worker_concurrency()
        config.web_threads()


@pytest.mark.parametrize(
    ("argv", "role"),
    [
        (["/app/.venv/bin/gunicorn", "--bind", ":5000", "app:create_app()"], "web"),
        (["/app/.venv/bin/procrastinate", "--app=jobs.app", "worker"], "worker"),
        (["/x/site-packages/procrastinate/__main__.py", "--app=jobs.app", "worker"], "worker"),
        (["/app/.venv/bin/procrastinate", "--app=jobs.app", "shell"], "cli"),
        (["/app/.venv/bin/flask", "--app", "app", "db", "upgrade"], "release"),
        (["/app/.venv/bin/flask", "--app", "app", "users", "create", "a@b.c"], "cli"),
        (["-c"], "cli"),
    ],
)
def test_a_process_names_its_connections_after_its_command(monkeypatch, argv, role):
    monkeypatch.setattr(config, "_process_role", None)
    monkeypatch.setattr(sys, "argv", argv)
    assert config.process_role() == role
    assert config.application_name() == f"disparo-{role}"


def test_the_web_and_cli_pool_carries_the_process_name(env, monkeypatch):
    env.setenv("DISPARO_ENV", "development")
    monkeypatch.setattr(config, "_process_role", "web")
    options = config.load_settings().flask_config()["SQLALCHEMY_ENGINE_OPTIONS"]
    assert options["connect_args"] == {"application_name": "disparo-web"}
    assert (options["pool_size"], options["max_overflow"]) == (5, 10)  # SQLAlchemy's own


def _refused(argv: list[str], **settings: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {
        "DISPARO_ENV": "development",
        "DATABASE_URL": "postgresql://db.invalid/disparo",  # never reached
        **settings,
    }
    return subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_a_worker_refuses_a_pool_its_message_jobs_could_deadlock_on():
    """Five message jobs can hold ten connections at once (session and limiter each)."""
    procrastinate = str(Path(sys.executable).with_name("procrastinate"))
    result = _refused(
        [procrastinate, "--app=jobs.app", "worker", "--queues=campaign-messages"],
        DB_POOL_SIZE="6",
        DB_MAX_OVERFLOW="2",
        WORKER_CONCURRENCY="5",
    )
    assert result.returncode != 0
    assert "DB_POOL_SIZE + DB_MAX_OVERFLOW (6 + 2) is below the 10" in result.stderr


def test_the_web_refuses_fewer_connections_than_threads_plus_one():
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    result = _refused(
        [gunicorn, "--bind", "127.0.0.1:0", "app:create_app()"],
        WEB_THREADS="8",
        DB_POOL_SIZE="4",
        DB_MAX_OVERFLOW="0",
    )
    assert result.returncode != 0
    assert "must be at least WEB_THREADS + 1 (9)" in result.stdout + result.stderr
