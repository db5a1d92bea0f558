"""Benchmark the sending engine end to end: messages per second, fan-out speed, the job window.

Not a test: it measures, on this machine, what bench/README.md records.

    .venv/bin/python bench/engine.py --quick
    .venv/bin/python bench/engine.py --part throughput --latencies 5,300,1000 --setups 1x5,2x5
    .venv/bin/python bench/engine.py --part throughput --latencies 300 --setups 2x5 \
        --calls-in-flight 300
    .venv/bin/python bench/engine.py --part fanout --fanout-recipients 100000 --repeats 2
    .venv/bin/python bench/engine.py --part limits
    .venv/bin/python bench/engine.py --part profile

Every run gets its own copy (``disparo_bench_<pid>_<n>``) of a migrated and seeded
scratch database (``disparo_bench_<pid>``) on the server of ``DATABASE_URL``, or on
the embedded development server, and its own processes: gunicorn serving the app
(mock ERP, mock WhatsApp) on a free port, the asyncio mock WhatsApp server
(``mocks/whatsapp_server.py``) when the checkout has one, and ``procrastinate worker``
processes started with the Procfile's commands. The sender's and the owner's limits are
lifted as far as the model allows, so the limiter runs on every message but never
says wait; the mock answers after each of ``--latencies`` and posts no status webhooks.

- ``throughput``: at each of ``--latencies``, a campaign of ``--recipients`` from
  send-now to its last accepted message (and to ``completed``), against two runs of
  the same configuration: the baseline of ``bench/engine_baseline.py`` (one
  Procrastinate job per message making the same call and nothing else, at the same
  worker settings), and the floor of ``bench/engine_floor.py`` (the same calls from
  one process on the same call pool, as many in flight as the workers together, no
  engine). The engine's own CPU per message is its workers' less the floor's client,
  plus its Postgres share: the run's Postgres CPU less the floor's (the mock records
  every call in Postgres in both).
- ``limits``: a campaign whose sender allows ``--limits-per-minute`` with a
  ``--limits-gap-ms`` gap, checked at the provider (the mock's log).
- ``fanout``: a ``--fanout-recipients`` campaign, timed from ``started_at`` to
  ``audience_loaded_at``, with ``procrastinate_jobs`` todo rows sampled every 0.1 s
  until ``--window-seconds`` of sending after the fan-out; then it is cancelled.
- ``profile``: the fan-out, the pump and the sends (``sending.send_batch``, batches of
  ``--profile-batch``) run in this process under cProfile, counting SQL statements,
  commits and pool checkouts.

Prints one JSON line and a table (target / measured / baseline / met?) on stdout;
everything else goes to stderr. Processes are stopped and databases dropped on
success, on failure and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import cProfile
import io
import itertools
import json
import logging
import math
import os
import pstats
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere in the checkout
    sys.path.insert(0, str(ROOT))

from bench import _common  # noqa: E402  (needs ROOT on sys.path)

BIN = Path(sys.executable).parent
LIFTED_PER_MINUTE = 1_000_000  # the most senders.rate_limit_range and the user form allow
TEMPLATE_NAME = "promo_weekend"
VARIABLES = {
    "first_name": {"field": "first_name"},
    "discount": {"text": "10%"},
    "city": {"field": "city"},
    "coupon": {"text": "BENCH"},
}
SAMPLE_SECONDS = 0.1
# The asyncio mock WhatsApp server (MOCK_WHATSAPP_URL), when the checkout has one:
# it holds many calls in flight, where the web's mock endpoint holds its threads' worth.
MOCK_SERVER = (ROOT / "mocks" / "whatsapp_server.py").exists()
MOCK_ROLE = "mock" if MOCK_SERVER else "web"
GAP_SECONDS = 0.25  # no message accepted for this long: the workers were waiting for work
STOP_SECONDS = 30.0  # past the workers' graceful shutdown (20 s), then SIGKILL
DEFAULT_CALLS_IN_FLIGHT = 100  # WHATSAPP_CALLS_IN_FLIGHT's default (campaigns/config.py)
TARGET_RATIO = 0.5
TARGET_FLOOR_RATIO = 0.8  # one worker at the defaults, 300 ms and 5 ms
TARGET_PER_S_AT_1S = 80  # one worker at the defaults, 1 s latency
TARGET_OWN_CPU_MS = 2.0  # worker + its Postgres share, per message
TARGET_FANOUT_PER_S = 10_000
TARGET_WINDOW = 5_000  # "a few thousand jobs at most"
FINISHED = ("completed", "cancelled", "failed")


@dataclass(frozen=True)
class Setup:
    """Message workers: ``processes`` x ``concurrency`` (the ops worker comes with the engine)."""

    processes: int
    concurrency: int

    @classmethod
    def parse(cls, text: str) -> Setup:
        processes, _, concurrency = text.lower().partition("x")
        return cls(int(processes), int(concurrency))

    def __str__(self) -> str:
        return f"{self.processes}x{self.concurrency}"


def procfile() -> dict[str, list[str]]:
    commands = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, colon, command = line.partition(":")
        if colon and not line.lstrip().startswith("#"):
            commands[name.strip()] = shlex.split(command)
    return commands


def worker_argv(
    kind: str, name: str, app: str | None = None, concurrency: int | None = None
) -> list[str]:
    """The Procfile's ``kind`` command, quiet, with this name (and app, concurrency)."""
    argv = procfile()[kind]
    # `python -m procrastinate` (the checkout's directory on the import path, README,
    # Processes), or the script.
    for prefix in (["python", "-m", "procrastinate"], ["procrastinate"]):
        if argv[: len(prefix)] == prefix:
            break
    else:
        raise RuntimeError(f"Procfile {kind}: expected a procrastinate command, not {argv[0]}")
    out = [str(BIN / "python"), "-m", "procrastinate"]
    for arg in argv[len(prefix) :]:
        if arg.startswith("--app="):
            out += [f"--app={app or arg.removeprefix('--app=')}", "--log-level=warning"]
        elif arg.startswith("--name="):
            out.append(f"--name={name}")
        elif arg.startswith("--concurrency=") and concurrency is not None:
            out.append(f"--concurrency={concurrency}")
        else:
            out.append(arg)
    if concurrency is not None and not any(a.startswith("--concurrency=") for a in out):
        out.append(f"--concurrency={concurrency}")  # the Procfile leaves it to the settings
    return out


def ops_argv() -> list[str]:
    """The Procfile's ``ops`` command (``python -m jobs.ops``), quiet."""
    argv = procfile()["ops"]
    if argv[:3] != ["python", "-m", "jobs.ops"]:
        raise RuntimeError(f"Procfile ops: expected python -m jobs.ops, not {argv}")
    return [sys.executable, *argv[1:], "--log-level=warning"]


def ops_workers(env: dict[str, str]) -> int:
    """How many Procrastinate workers ``ops`` registers with this environment's OPS_WORKERS."""
    from unittest import mock

    from campaigns import config

    with mock.patch.dict(os.environ, {"OPS_WORKERS": env.get("OPS_WORKERS", "")}):
        return len(config.ops_workers())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Stack:
    """One run's processes, each in its own session; stopped however the run ends."""

    def __init__(self, url: str, log_dir: Path, args: argparse.Namespace) -> None:
        self.url = url
        self.log_dir = log_dir
        self.args = args
        self.children: list[tuple[str, str, subprocess.Popen]] = []  # (name, role, process)
        self.base = ""
        self.extra_env: dict[str, str] = {}
        self._web_workers: list[int] = []

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("MOCK_", "ERP_", "BENCH_")) and k != "WHATSAPP_API_BASE_URL"
        }
        # Set explicitly, so a local .env cannot change what is measured.
        return env | {
            "DATABASE_URL": self.url,
            "DISPARO_ENV": "development",
            "DISPARO_MOCKS": "on",
            "APP_BASE_URL": self.base,
            "MOCK_WHATSAPP_LATENCY_MS": str(self.args.latency_ms),
            "MOCK_WHATSAPP_URL": "",  # the web port's endpoint (extra_env may name the process)
            "MOCK_WHATSAPP_WEBHOOKS": "off",
            "MOCK_WHATSAPP_THROTTLE_RATE": "0",
            "MOCK_WHATSAPP_TRANSIENT_RATE": "0",
            "MOCK_WHATSAPP_PERMANENT_RATE": "0",
            "MOCK_ERP_LATENCY_MS": "0",
            "MOCK_ERP_FAILURE_RATE": "0",
            "MOCK_ERP_CUSTOMERS": str(max(1_000_000, self.args.fanout_recipients)),
            **(
                {"WHATSAPP_CALLS_IN_FLIGHT": str(self.args.calls_in_flight)}
                if self.args.calls_in_flight
                else {}
            ),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            **self.extra_env,
        }

    def start(self, name: str, role: str, argv: list[str]) -> subprocess.Popen:
        log = (self.log_dir / f"{name}.log").open("ab")
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches only this script, which stops them in order
        )
        log.close()
        self.children.append((name, role, process))
        return process

    def start_mock(self) -> None:
        """The asyncio mock WhatsApp server, when this checkout has one (else the web's)."""
        import requests

        if not MOCK_SERVER:
            return
        port = free_port()
        self.extra_env["MOCK_WHATSAPP_URL"] = f"http://127.0.0.1:{port}/v23.0"
        self.start(
            "mock",
            "mock",
            [sys.executable, "-m", "mocks.whatsapp_server", "--port", str(port)],
        )
        deadline = time.monotonic() + 60
        while True:
            self.check()
            try:
                requests.get(f"http://127.0.0.1:{port}/", timeout=5)
                return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the mock server did not answer in 60 s; see {self.log_dir}")
            time.sleep(0.2)

    def mock_api_base_url(self) -> str:
        """The Cloud API base URL of the mock the workers call."""
        from mocks.provider import mock_api_base_url

        return mock_api_base_url({"APP_BASE_URL": self.base, **self.extra_env})

    def start_web(self) -> str:

        self.start_mock()
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        # The Procfile's web command, without its access log (one line per mock call).
        web = self.start(
            "web",
            "web",
            [
                str(BIN / "gunicorn"),
                "--threads",
                str(self.args.web_threads),
                "--bind",
                f"127.0.0.1:{port}",
                "--log-level",
                "warning",
                "app:create_app()",
            ],
        )
        self.wait_for_web(web)
        return self.base

    def wait_for_web(self, web: subprocess.Popen) -> None:
        """Until gunicorn answers (60 s at most); then note its worker processes."""
        import requests

        deadline = time.monotonic() + 60
        while True:
            self.check()
            try:
                if requests.get(f"{self.base}/mock/erp/customers/count", timeout=5).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn did not answer in 60 s; see {self.log_dir}")
            time.sleep(0.2)
        import psutil

        self._web_workers = [child.pid for child in psutil.Process(web.pid).children()]

    def start_workers(self, setup: Setup, app: str | None = None, ops: bool = True) -> None:
        for i in range(1, setup.processes + 1):
            argv = worker_argv("worker", f"messages-{i}", app, setup.concurrency)
            self.start(f"messages-{i}", "messages", argv)
        if ops:
            self.start("ops", "ops", ops_argv())
        self.wait_registered(setup.processes + (ops_workers(self.env()) if ops else 0))

    def wait_registered(self, count: int) -> None:
        import psycopg

        deadline = time.monotonic() + 90
        with psycopg.connect(self.url, autocommit=True) as conn:
            while True:
                self.check()
                (ready,) = conn.execute("SELECT count(*) FROM procrastinate_workers").fetchone()
                if ready >= count:
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{ready} of {count} workers started; see {self.log_dir}")
                time.sleep(0.2)

    def check(self) -> None:
        for name, _role, process in self.children:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {process.returncode}; see {self.log_dir}/{name}.log"
                )

    def pids(self) -> dict[int, str]:
        pids = {process.pid: role for _name, role, process in self.children}
        return pids | dict.fromkeys(self._web_workers, "web")

    def stop(self) -> None:
        """Workers first (they finish their jobs), then the web; SIGKILL what outlives that."""
        workers = [p for _n, role, p in self.children if role != "web"]
        web = [p for _n, role, p in self.children if role == "web"]
        for group in (workers, web):
            self._terminate(group)

    @staticmethod
    def _terminate(processes: list[subprocess.Popen]) -> None:
        for process in processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        try:
            for process in processes:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except KeyboardInterrupt:  # a second Ctrl-C: no more waiting
            pass
        for process in processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@contextlib.contextmanager
def running(url: str, log_dir: Path, args: argparse.Namespace) -> Iterator[Stack]:
    stack = Stack(url, log_dir, args)
    try:
        yield stack
    finally:
        stack.stop()


@contextlib.contextmanager
def app_on(url: str, **config: Any) -> Iterator[Any]:
    """The app on a benchmark database, with an app context pushed, its pool closed at the end."""
    from app import create_app, db
    from campaigns.config import sqlalchemy_url

    application = create_app({"SQLALCHEMY_DATABASE_URI": sqlalchemy_url(url), **config})
    with application.app_context():
        try:
            yield application
        finally:
            db.session.remove()
            db.engine.dispose()


def seed(url: str) -> dict[str, Any]:
    """Demo data, limits lifted; returns what the baseline needs to make the same call."""
    import sqlalchemy as sa

    from app import db
    from campaigns import rendering
    from campaigns.models import MessageTemplate, User
    from campaigns.providers.cloud_api import template_message
    from campaigns.services.demo import DEMO_ADMIN_EMAIL, seed_demo
    from campaigns.services.templates import default_sender
    from mocks import erp as mock_erp

    with app_on(url):
        seed_demo()
        owner = db.session.scalar(sa.select(User).where(User.email == DEMO_ADMIN_EMAIL))
        sender = default_sender()
        owner.campaign_rate_limit_per_minute = LIFTED_PER_MINUTE
        sender.rate_limit_per_minute, sender.min_interval_ms = LIFTED_PER_MINUTE, 0
        db.session.commit()
        template = db.session.scalar(
            sa.select(MessageTemplate).where(MessageTemplate.name == TEMPLATE_NAME)
        )
        customer = mock_erp.customer(1)
        payload = template_message(
            to=customer["phone"],
            template=template,
            params=rendering.params_for(VARIABLES, customer),
            callback_data="0",
        )
        return {"payload": payload, "phone_number_id": sender.phone_number_id}


def create_campaign(recipients: int) -> tuple[int, int, dict[str, Any]]:
    """A draft campaign for the first ``recipients`` ERP customers: (id, owner id, segment)."""
    import sqlalchemy as sa

    from app import db
    from campaigns.models import MessageTemplate, User
    from campaigns.services.campaigns import (
        create_campaign,
        template_variables_for,
    )
    from campaigns.services.demo import DEMO_ADMIN_EMAIL
    from campaigns.validation import parse_campaign

    owner = db.session.scalar(sa.select(User).where(User.email == DEMO_ADMIN_EMAIL))
    template = db.session.scalar(
        sa.select(MessageTemplate).where(MessageTemplate.name == TEMPLATE_NAME)
    )
    fields = parse_campaign(
        {
            "name": f"Benchmark {recipients}",
            "sender_id": template.sender_id,
            "template_id": template.id,
            "segment": {"max_audience": recipients, "opted_in_only": False},
            "variables": VARIABLES,
        },
        template_variables_for(template.id),
    )
    campaign = create_campaign(fields, owner.id)
    return campaign.id, owner.id, dict(campaign.segment)


def warm_erp(base: str, segment: dict[str, Any]) -> None:
    """Build the mock ERP's customer arrays and segment cache before the clock starts."""
    from campaigns import erp

    with erp.ErpClient(f"{base}/mock/erp") as client:
        client.page(segment, None, 1)


SAMPLE = """
SELECT (SELECT count(*) FROM procrastinate_jobs WHERE status = 'todo') AS todo,
       (SELECT count(*) FROM procrastinate_jobs
         WHERE status = 'todo' AND task_name = %(send)s) AS todo_send,
       (SELECT count(*) FROM procrastinate_jobs WHERE status = 'doing') AS doing,
       (SELECT coalesce(array_agg(pid), '{}') FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()) AS pids,
       (SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND state = 'idle in transaction') AS idle_in_tx
"""
CAMPAIGN_STATE = """
SELECT c.status::text AS status, c.audience_loaded_at IS NOT NULL AS loaded,
       coalesce(sum(k.pending + k.queued + k.sending), 0) AS in_flight,
       coalesce(sum(k.retrying), 0) AS retrying, coalesce(sum(k.total), 0) AS total
  FROM campaigns c LEFT JOIN campaign_counters k ON k.campaign_id = c.id
 WHERE c.id = %(id)s GROUP BY c.id
"""
FORCED_ALLOWANCE = 50
UNFORCED_IN_FLIGHT = """
SELECT count(*) FROM messages
 WHERE campaign_id = %(id)s AND status IN ('pending', 'queued', 'sending', 'retrying')
   AND right(phone, 4) <> ALL(%(forced)s)
"""
DB_STATS = """
SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted, sessions
  FROM pg_stat_database WHERE datname = current_database()
"""


@dataclass
class Sample:
    t: float
    todo: int
    todo_send: int
    doing: int
    idle_in_tx: int
    connections: int
    cpu: dict[str, float]  # role -> CPU seconds so far (messages, ops, web, postgres)
    machine_busy: float  # the whole machine's busy CPU seconds so far (every user's)
    machine_total: float


class Monitor:
    """Every ``SAMPLE_SECONDS``: the queue, the database's connections, every process's CPU."""

    def __init__(self, url: str, stack: Stack) -> None:
        import psycopg

        from campaigns.queues import SEND_TASK

        self.conn = psycopg.connect(url, autocommit=True)
        self.stack = stack
        self.send_task = SEND_TASK
        self.samples: list[Sample] = []
        self._cpu: dict[int, tuple[str, float]] = {}  # pid -> (role, CPU seconds when last seen)
        self._processes: dict[int, Any] = {}

    def close(self) -> None:
        self.conn.close()

    def sample(self) -> Sample:
        import psutil

        todo, todo_send, doing, pids, idle_in_tx = self.conn.execute(
            SAMPLE, {"send": self.send_task}
        ).fetchone()
        roles = dict.fromkeys(pids, "postgres") | self.stack.pids()
        for pid, role in roles.items():
            try:
                process = self._processes.get(pid) or psutil.Process(pid)
                self._processes[pid] = process
                times = process.cpu_times()
            except psutil.Error:
                continue  # gone: its last reading stays counted
            self._cpu[pid] = (role, times.user + times.system)
        by_role: dict[str, float] = defaultdict(float)
        for role, seconds in self._cpu.values():
            by_role[role] += seconds
        machine = psutil.cpu_times()
        total = sum(machine)
        sample = Sample(
            time.time(),
            todo,
            todo_send,
            doing,
            idle_in_tx,
            len(pids),
            dict(by_role),
            total - machine.idle - getattr(machine, "iowait", 0.0),
            total,
        )
        self.samples.append(sample)
        return sample

    def at(self, t: float) -> Sample:
        """The last sample taken at or before ``t`` (the first one if none)."""
        index = bisect.bisect_right([s.t for s in self.samples], t) - 1
        return self.samples[max(index, 0)]

    def cpu_ms_per(self, count: int, t0: float, t1: float) -> dict[str, float | None]:
        """Each role's CPU milliseconds per item over [t0, t1], and the machine's busy share."""
        a, b = self.at(t0), self.at(t1)
        result: dict[str, float | None] = {
            role: round((b.cpu.get(role, 0.0) - a.cpu.get(role, 0.0)) * 1000 / count, 3)
            if count
            else None
            for role in sorted(set(a.cpu) | set(b.cpu))
        }
        span = b.machine_total - a.machine_total
        result["machine_busy_share"] = (
            round((b.machine_busy - a.machine_busy) / span, 3) if span else None
        )
        return result

    def window(self, t0: float, t1: float) -> dict[str, Any]:
        inside = [s for s in self.samples if t0 <= s.t <= t1]
        return {
            "max_todo": max((s.todo for s in inside), default=0),
            "max_todo_send": max((s.todo_send for s in inside), default=0),
            "max_doing": max((s.doing for s in inside), default=0),
            "max_idle_in_transaction": max((s.idle_in_tx for s in inside), default=0),
            "max_connections": max((s.connections for s in inside), default=0),
            "samples": len(inside),
            "sampled_seconds": round(inside[-1].t - inside[0].t, 1) if inside else 0.0,
        }


def db_stats(conn: Any) -> dict[str, int]:
    row = conn.execute(DB_STATS).fetchone()
    names = ("commits", "rollbacks", "inserted", "updated", "deleted", "sessions")
    return dict(zip(names, row, strict=True))


def per_item(before: dict[str, int], after: dict[str, int], count: int) -> dict[str, float]:
    return {k: round((after[k] - before[k]) / count, 2) for k in before} if count else {}


def mock_log(conn: Any, since: float) -> dict[str, Any]:
    """What the mock accepted: how many, duplicates, first/last, per second, idle gaps."""
    times = [
        r[0]
        for r in conn.execute(
            "SELECT extract(epoch FROM received_at)::float8 FROM mock_whatsapp_messages"
            " ORDER BY received_at"
        )
    ]
    (duplicates,) = conn.execute(
        "SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM mock_whatsapp_messages"
        " GROUP BY split_part(message_id, '.', 1) HAVING count(*) > 1) AS d"
    ).fetchone()
    if not times:
        return {"accepted": 0, "duplicates": int(duplicates)}
    first, last = times[0], times[-1]
    gaps = sum(b - a for a, b in itertools.pairwise(times) if b - a > GAP_SECONDS)
    per_second = Counter(int(t - since) for t in times)
    return {
        "accepted": len(times),
        "duplicates": int(duplicates),
        "first": first,
        "last": last,
        "steady_per_s": round(len(times) / (last - first), 1) if last > first else None,
        "idle_gap_share": round(gaps / (last - first), 3) if last > first else None,
        "per_second": [per_second.get(s, 0) for s in range(int(last - since) + 1)],
    }


@dataclass
class Context:
    args: argparse.Namespace
    template: str
    call: dict[str, Any]
    log_dir: Path
    runs: int = 0
    results: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))

    def run_database(self) -> str:
        self.runs += 1
        return f"{self.template}_{self.runs}"

    def call_env(self, stack: Stack) -> dict[str, str]:
        """The call the baseline and the floor make: the engine's, to the same mock."""
        return {
            "BENCH_BASELINE_URL": stack.mock_api_base_url(),
            "BENCH_BASELINE_PHONE_NUMBER_ID": self.call["phone_number_id"],
            "BENCH_BASELINE_PAYLOAD": json.dumps(self.call["payload"]),
        }


def capped(args: argparse.Namespace, in_flight: int, seconds: float) -> int:
    """--recipients, or fewer: about ``seconds`` of calls with ``in_flight`` at a time."""
    at_most = in_flight / max(args.latency_ms / 1000, 0.001) * seconds
    return min(args.recipients, max(100, math.ceil(at_most)))


def wait_until(
    monitor: Monitor, stack: Stack, done: Callable[[], bool], timeout: float, what: str
) -> None:
    deadline = time.monotonic() + timeout
    checked = 0.0
    while True:
        started = time.monotonic()
        monitor.sample()
        if done():
            return
        if started - checked > 1.0:
            stack.check()
            checked = started
        if started > deadline:
            raise RuntimeError(f"not within {timeout:.0f} s: {what}")
        time.sleep(max(SAMPLE_SECONDS - (time.monotonic() - started), 0))


def warm_workers(monitor: Monitor, stack: Stack, setup: Setup) -> None:
    """Give every worker process its first job (Flask app, connections) before the clock starts.

    A ping for the ops worker, and jobs for a message that does not exist for the
    message workers (each skips at once); twice their slots, so each process gets some.
    """
    from app import db
    from campaigns import queues
    from campaigns.queues import MAINTENANCE_QUEUE, MESSAGES_QUEUE, SEND_TASK
    from jobs.tasks import ping

    slots = setup.processes * setup.concurrency
    queues.defer(db.session, ping.name, MAINTENANCE_QUEUE, [{"token": "bench warm-up"}])
    nothing = {"campaign_id": 0, "message_ids": []}  # no such campaign: skipped at once
    queues.defer(db.session, SEND_TASK, MESSAGES_QUEUE, [nothing] * (2 * slots))
    db.session.commit()

    def done() -> bool:
        (left,) = monitor.conn.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
            " AND task_name = ANY(%s)",
            ([ping.name, SEND_TASK],),
        ).fetchone()
        return left == 0

    wait_until(monitor, stack, done, 120, "the workers warmed up")


@contextlib.contextmanager
def campaign_under_workers(
    ctx: Context, recipients: int, setup: Setup
) -> Iterator[tuple[Any, Monitor, tuple[int, int]]]:
    """A run's own database, gunicorn and warmed-up workers, and a draft campaign of
    ``recipients``: yields (stack, monitor, (campaign_id, owner_id))."""
    with (
        _common.scratch_database(ctx.run_database(), ctx.template) as url,
        app_on(url),
        running(url, ctx.log_dir, ctx.args) as stack,
    ):
        campaign_id, owner_id, segment = create_campaign(recipients)
        warm_erp(stack.start_web(), segment)
        stack.start_workers(setup)
        monitor = Monitor(url, stack)
        try:
            warm_workers(monitor, stack, setup)
            yield stack, monitor, (campaign_id, owner_id)
        finally:
            monitor.close()


def engine_throughput(ctx: Context, setup: Setup, repeat: int) -> dict[str, Any]:
    """One campaign of ``--recipients`` through the real engine, send-now to last send."""
    from campaigns.services.campaigns import (
        send_campaign_now,
    )
    from mocks.whatsapp import FORCED_ERRORS

    args = ctx.args
    load = os.getloadavg()[0]
    with campaign_under_workers(ctx, args.recipients, setup) as (stack, monitor, ids):
        campaign_id, owner_id = ids
        conn = monitor.conn
        state: dict[str, Any] = {}

        def progress() -> bool:
            status, loaded, in_flight, retrying, total = conn.execute(
                CAMPAIGN_STATE, {"id": campaign_id}
            ).fetchone()
            state.update(status=status, retrying=retrying, total=total)
            if loaded and in_flight <= FORCED_ALLOWANCE and "drained" not in state:
                # The mock's forced errors (…0429 throttled again and again) keep a few
                # messages in flight for minutes: drained when only those are left.
                (left,) = conn.execute(
                    UNFORCED_IN_FLIGHT, {"id": campaign_id, "forced": list(FORCED_ERRORS)}
                ).fetchone()
                in_flight = left
            if loaded and in_flight == 0 and "drained" not in state:
                state["drained"] = time.time()
                state["stats_drained"] = db_stats(conn)
            return status in FINISHED or ("drained" in state and not args.wait_complete)

        stats_before = db_stats(conn)
        monitor.sample()
        t_send = time.time()
        send_campaign_now(campaign_id, owner_id)
        wait_until(monitor, stack, progress, args.timeout, "the campaign sent")
        summary = _engine_summary(
            ctx, setup, repeat, conn, monitor, campaign_id, t_send, stats_before, state
        )
        return summary | {"load_1min_before": round(load, 2)}


def _engine_summary(
    ctx: Context,
    setup: Setup,
    repeat: int,
    conn: Any,
    monitor: Monitor,
    campaign_id: int,
    t_send: float,
    stats_before: dict[str, int],
    state: dict[str, Any],
) -> dict[str, Any]:
    from campaigns import pump
    from mocks.whatsapp import FORCED_ERRORS

    started, loaded, completed = conn.execute(
        "SELECT extract(epoch FROM started_at)::float8, extract(epoch FROM audience_loaded_at)"
        "::float8, extract(epoch FROM completed_at)::float8 FROM campaigns WHERE id = %s",
        (campaign_id,),
    ).fetchone()
    log = mock_log(conn, started)
    sent = log["accepted"]
    statuses = dict(
        conn.execute("SELECT status::text, count(*) FROM messages GROUP BY 1 ORDER BY 1").fetchall()
    )
    forced = dict(
        conn.execute(
            "SELECT right(phone, 4) || ' ' || status::text, count(*) FROM messages"
            " WHERE right(phone, 4) = ANY(%s) AND status <> 'skipped' GROUP BY 1 ORDER BY 1",
            (list(FORCED_ERRORS),),
        ).fetchall()
    )
    (retried,) = conn.execute("SELECT count(*) FROM messages WHERE attempts > 1").fetchone()
    # Why messages failed, by code: beside the forced ones, any other is a finding.
    failed_codes = dict(
        conn.execute(
            "SELECT coalesce(error_code, '-') || ': ' || left(coalesce(error_text, ''), 80),"
            " count(*) FROM messages WHERE status = 'failed' GROUP BY 1 ORDER BY 2 DESC"
        ).fetchall()
    )
    last = log.get("last", t_send)
    e2e = last - started if sent else None
    interval = 60.0 / LIFTED_PER_MINUTE
    return {
        "engine": "disparo",
        "setup": str(setup),
        "repeat": repeat,
        "latency_ms": ctx.args.latency_ms,
        "calls_in_flight": ctx.args.calls_in_flight or DEFAULT_CALLS_IN_FLIGHT,
        "recipients": ctx.args.recipients,
        "messages": state.get("total"),
        "statuses": statuses,
        "forced_error_messages": forced,
        "failed_codes": failed_codes,
        "messages_retried": retried,
        "sent": sent,
        "duplicates": log["duplicates"],
        "fanout_s": round(loaded - started, 2) if loaded else None,
        "first_send_after_s": round(log["first"] - started, 2) if sent else None,
        "e2e_s": round(e2e, 2) if e2e else None,
        "e2e_per_s": round(sent / e2e, 1) if e2e else None,
        "steady_per_s": log.get("steady_per_s"),
        "idle_gap_share": log.get("idle_gap_share"),
        "completed_after_s": round(completed - started, 1) if completed else None,
        "final_status": state.get("status"),
        "still_retrying": state.get("retrying"),
        "cpu_ms_per_message": monitor.cpu_ms_per(sent, t_send, last),
        "db_per_message": per_item(
            stats_before, state.get("stats_drained") or db_stats(conn), sent
        ),
        **monitor.window(t_send, last),
        "pump": {
            "pace_interval_ms": round(interval * 1000, 3),
            "window_jobs": pump.WINDOW_JOBS,
            "batch_size": pump.batch_size(interval, 0),
            "pump_interval_s": pump.INTERVAL_SECONDS,
            "ceiling_per_s": round(
                pump.WINDOW_JOBS * pump.batch_size(interval, 0) / pump.INTERVAL_SECONDS, 1
            ),
        },
        "per_second": log.get("per_second", []),
    }


def baseline_throughput(ctx: Context, setup: Setup, repeat: int) -> dict[str, Any]:
    """The same number of mock calls as bare Procrastinate jobs, at the same worker settings."""
    import procrastinate

    from bench import engine_baseline

    args = ctx.args
    with (
        _common.scratch_database(ctx.run_database(), ctx.template) as url,
        running(url, ctx.log_dir, args) as stack,
    ):
        stack.start_web()
        stack.extra_env.update(ctx.call_env(stack))
        # One job per message holds only `slots` calls in flight: at 300 ms, 20,000 jobs
        # would take many minutes, so the baseline runs about --baseline-seconds.
        jobs = capped(args, setup.processes * setup.concurrency, args.baseline_seconds)
        connector = procrastinate.SyncPsycopgConnector(conninfo=url)
        with engine_baseline.app.replace_connector(connector) as papp, papp.open():
            for start in range(0, jobs, 1000):
                stop = min(start + 1000, jobs)
                engine_baseline.send.batch_defer(*({"message_id": i} for i in range(start, stop)))
        monitor = Monitor(url, stack)
        try:
            conn = monitor.conn
            stats_before = db_stats(conn)
            monitor.sample()
            t_start = time.time()
            stack.start_workers(setup, app="bench.engine_baseline.app", ops=False)

            def drained() -> bool:
                (left,) = conn.execute(
                    "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
                ).fetchone()
                return left == 0

            wait_until(monitor, stack, drained, args.timeout, "the baseline jobs done")
            time.sleep(1.0)  # backends report their statistics at most once a second
            stats_after = db_stats(conn)
            log = mock_log(conn, t_start)
            (failed,) = conn.execute(
                "SELECT count(*) FROM procrastinate_jobs WHERE status = 'failed'"
            ).fetchone()
            sent = log["accepted"]
            first, last = log.get("first", t_start), log.get("last", t_start)
            return {
                "engine": "baseline",
                "setup": str(setup),
                "repeat": repeat,
                "latency_ms": args.latency_ms,
                "jobs": jobs,
                "sent": sent,
                "failed_jobs": failed,
                "duplicates": log["duplicates"],
                "per_s": log.get("steady_per_s"),
                "idle_gap_share": log.get("idle_gap_share"),
                "cpu_ms_per_message": monitor.cpu_ms_per(sent, first, last),
                "db_per_message": per_item(stats_before, stats_after, sent),
                **monitor.window(first, last),
            }
        finally:
            monitor.close()


def floor_throughput(ctx: Context, setup: Setup, repeat: int) -> dict[str, Any]:
    """The floor: the same calls to the same mock from one process, no engine
    (bench/engine_floor.py), with as many in flight as the setup's worker processes."""
    args = ctx.args
    in_flight = setup.processes * (args.calls_in_flight or DEFAULT_CALLS_IN_FLIGHT)
    calls = capped(args, in_flight, args.floor_seconds)
    database = ctx.run_database()
    with (
        _common.scratch_database(database, ctx.template) as url,
        running(url, ctx.log_dir, args) as stack,
    ):
        stack.start_web()
        stack.extra_env.update(
            ctx.call_env(stack)
            | {"BENCH_FLOOR_CALLS": str(calls), "BENCH_FLOOR_IN_FLIGHT": str(in_flight)}
        )
        monitor = Monitor(url, stack)
        try:
            conn = monitor.conn
            stats_before = db_stats(conn)
            monitor.sample()
            t_start = time.time()
            log_path = ctx.log_dir / f"floor-{database}.log"
            stack.start(log_path.stem, "floor", [sys.executable, "-m", "bench.engine_floor"])
            own: dict[str, Any] = {}

            def finished() -> bool:
                for line in log_path.read_text().splitlines():
                    if line.startswith("{"):
                        own.update(json.loads(line))
                return bool(own)

            wait_until(monitor, stack, finished, args.timeout, "the floor's calls made")
            time.sleep(1.0)  # backends report their statistics at most once a second
            monitor.sample()
            log = mock_log(conn, t_start)
            sent = log["accepted"]
            first, last = log.get("first", t_start), log.get("last", t_start)
            return {
                "engine": "floor",
                "setup": str(setup),
                "repeat": repeat,
                "latency_ms": args.latency_ms,
                "in_flight": in_flight,
                "calls": calls,
                "sent": sent,
                "errors": own.get("errors"),
                "duplicates": log["duplicates"],
                "per_s": log.get("steady_per_s"),
                "own_figures": own,
                "cpu_ms_per_message": monitor.cpu_ms_per(sent, first, last),
                "db_per_message": per_item(stats_before, db_stats(conn), sent),
            }
        finally:
            monitor.close()


def fanout(ctx: Context, repeat: int) -> dict[str, Any]:
    """A ``--fanout-recipients`` campaign: fan-out time, and the todo rows all along."""
    from campaigns.services.campaigns import (
        cancel_campaign,
        send_campaign_now,
    )

    args = ctx.args
    setup = Setup.parse(args.fanout_setup)
    load = os.getloadavg()[0]
    with campaign_under_workers(ctx, args.fanout_recipients, setup) as (stack, monitor, ids):
        campaign_id, owner_id = ids
        conn = monitor.conn
        state: dict[str, Any] = {}

        def window_seen() -> bool:
            status, loaded, *_ = conn.execute(CAMPAIGN_STATE, {"id": campaign_id}).fetchone()
            if loaded and "loaded" not in state:
                state["loaded"] = time.time()
            return status in FINISHED or (
                "loaded" in state and time.time() - state["loaded"] >= args.window_seconds
            )

        monitor.sample()
        t_send = time.time()
        send_campaign_now(campaign_id, owner_id)
        wait_until(monitor, stack, window_seen, args.timeout, "the fan-out and its window")
        t_end = time.time()
        cancel_campaign(campaign_id, owner_id)
        started, loaded = conn.execute(
            "SELECT extract(epoch FROM started_at)::float8,"
            " extract(epoch FROM audience_loaded_at)::float8 FROM campaigns WHERE id = %s",
            (campaign_id,),
        ).fetchone()
        (rows,) = conn.execute("SELECT count(*) FROM messages").fetchone()
        log = mock_log(conn, loaded)  # nothing is sent before the audience is loaded
        # Autovacuum and autoanalyze after a big insert compete with the sends for the CPU.
        maintenance = {
            name: {
                "autovacuum_s": round(vacuumed - loaded, 1) if vacuumed else None,
                "autoanalyze_s": round(analyzed - loaded, 1) if analyzed else None,
            }
            for name, vacuumed, analyzed in conn.execute(
                "SELECT relname, extract(epoch FROM last_autovacuum)::float8,"
                " extract(epoch FROM last_autoanalyze)::float8"
                " FROM pg_stat_user_tables WHERE relname = ANY(%s) ORDER BY 1",
                (["messages", "procrastinate_jobs", "campaign_counters"],),
            )
        }
        seconds = loaded - started
        return {
            "setup": str(setup),
            "repeat": repeat,
            "recipients": args.fanout_recipients,
            "rows": rows,
            "fanout_s": round(seconds, 2),
            "fanout_per_s": round(rows / seconds, 1),
            "cpu_ms_per_recipient": monitor.cpu_ms_per(rows, t_send, loaded),
            "during_fanout": monitor.window(t_send, loaded),
            "after_fanout": monitor.window(loaded, t_end),
            "whole_run": monitor.window(t_send, t_end),
            "sent_after_fanout": log["accepted"],
            "sent_after_fanout_per_s": round(log["accepted"] / (t_end - loaded), 1),
            "cpu_ms_per_message_after_fanout": monitor.cpu_ms_per(log["accepted"], loaded, t_end),
            "per_second_after_fanout": log.get("per_second", []),
            "last_maintenance_after_fanout": maintenance,
            "load_1min_before": round(load, 2),
        }


def limits(ctx: Context) -> dict[str, Any]:
    """A campaign whose sender's limits bind: checked at the provider, from the mock's log.

    Grant times are not kept after the fact, so the check is on what the mock received:
    per phone number id, no 60-s window over the limit, and no two calls closer than the
    gap less ``--jitter-ms`` (the calls' own latency varies by that much).
    """
    import sqlalchemy as sa

    from app import db
    from campaigns.models import Sender
    from campaigns.services.campaigns import send_campaign_now
    from mocks.whatsapp import FORCED_ERRORS

    args = ctx.args
    setup = Setup.parse(args.limits_setup)
    with campaign_under_workers(ctx, args.limits_recipients, setup) as (stack, monitor, ids):
        campaign_id, owner_id = ids
        db.session.execute(
            sa.update(Sender).values(
                rate_limit_per_minute=args.limits_per_minute, min_interval_ms=args.limits_gap_ms
            )
        )
        db.session.commit()
        conn = monitor.conn

        def finished() -> bool:
            status, loaded, in_flight, *_ = conn.execute(
                CAMPAIGN_STATE, {"id": campaign_id}
            ).fetchone()
            if loaded and in_flight <= FORCED_ALLOWANCE:
                (in_flight,) = conn.execute(
                    UNFORCED_IN_FLIGHT, {"id": campaign_id, "forced": list(FORCED_ERRORS)}
                ).fetchone()
            return status in FINISHED or (loaded and in_flight == 0)

        monitor.sample()
        t_send = time.time()
        send_campaign_now(campaign_id, owner_id)
        wait_until(monitor, stack, finished, args.timeout, "the limited campaign sent")
        received: dict[str, list[float]] = defaultdict(list)
        for phone_number_id, t in conn.execute(
            "SELECT phone_number_id, extract(epoch FROM received_at)::float8"
            " FROM mock_whatsapp_messages ORDER BY received_at"
        ):
            received[phone_number_id].append(t)
        log = mock_log(conn, t_send)
        gap = args.limits_gap_ms / 1000
        tolerance = args.jitter_ms / 1000
        keys = {}
        for phone_number_id, times in received.items():
            # For each call t, the calls in (t - 60 s, t]: the busiest window ends on a call.
            in_window = [i - bisect.bisect_right(times, t - 60.0) + 1 for i, t in enumerate(times)]
            gaps = [b - a for a, b in itertools.pairwise(times)]
            keys[phone_number_id] = {
                "calls": len(times),
                "seconds": round(times[-1] - times[0], 1),
                "max_in_60s": max(in_window),
                "windows_over_limit": sum(n > args.limits_per_minute for n in in_window),
                "min_gap_ms": round(min(gaps) * 1000, 2) if gaps else None,
                "gaps_below_gap": sum(g < gap for g in gaps),
                "gaps_below_gap_less_jitter": sum(g < gap - tolerance for g in gaps),
            }
        return {
            "setup": str(setup),
            "latency_ms": args.latency_ms,
            "recipients": args.limits_recipients,
            "per_minute": args.limits_per_minute,
            "gap_ms": args.limits_gap_ms,
            "jitter_ms": args.jitter_ms,
            "sent": log["accepted"],
            "duplicates": log["duplicates"],
            "per_phone_number_id": keys,
            "violations": sum(
                k["windows_over_limit"] + k["gaps_below_gap_less_jitter"] for k in keys.values()
            ),
        }


class StatementCounter:
    """Counts what the app's engine sends: statements by verb, commits, pool checkouts."""

    def __init__(self, engine: Any) -> None:
        from sqlalchemy import event

        self.counts: Counter[str] = Counter()
        self.trace: Counter[str] | None = None  # statements of one step, when asked
        self.engine = engine
        self._hooks = [
            ("before_cursor_execute", self._statement),
            ("commit", self._commit),
        ]
        for name, hook in self._hooks:
            event.listen(engine, name, hook)
        event.listen(engine.pool, "checkout", self._checkout)

    def _statement(self, conn, cursor, statement, *rest) -> None:
        lines = [line for line in statement.strip().splitlines() if not line.startswith("--")]
        verb = lines[0].split(None, 1)[0].upper() if lines else "?"
        self.counts[verb if verb != "WITH" else "UPDATE"] += 1  # the transitions are WITH … UPDATE
        if self.trace is not None:
            self.trace[" ".join(" ".join(lines).split())[:100]] += 1

    def _commit(self, conn) -> None:
        self.counts["COMMIT"] += 1

    def _checkout(self, *args) -> None:
        self.counts["checkout"] += 1

    def take(self) -> Counter[str]:
        counts, self.counts = self.counts, Counter()
        return counts

    def close(self) -> None:
        from sqlalchemy import event

        for name, hook in self._hooks:
            event.remove(self.engine, name, hook)
        event.remove(self.engine.pool, "checkout", self._checkout)


def _top(profiler: cProfile.Profile, limit: int, sort: str, only: str = "") -> list[str]:
    """The profile's first ``limit`` functions by ``sort`` (matching ``only``), paths shortened."""
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats(sort).print_stats(only, limit)
    lines = out.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls"))
    site = str(Path(pstats.__file__).parent)
    prefixes = (f"{ROOT}/.venv/lib/python3.11/site-packages/", f"{ROOT}/", f"{site}/")
    shortened = []
    for line in lines[start : start + limit + 1]:
        for prefix in prefixes:
            line = line.replace(prefix, "")
        if line.strip():
            shortened.append(line.rstrip())
    return shortened


def _halves(
    steps: int, step: Callable[[int], None], web: Monitor, counter: StatementCounter, top: int
) -> dict[str, Any]:
    """Run ``step`` ``steps`` times: the first half plain and timed, the rest under cProfile.

    The plain half gives the CPU and SQL figures (cProfile slows Python code down
    several times); the profiled half says where this process's CPU goes.
    """
    plain = max(steps // 2, 1)
    counter.take()
    web.sample()
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(plain - 1):
        step(i)
    counter.trace = Counter()
    step(plain - 1)
    trace, counter.trace = counter.trace, None
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    before, after = web.samples[-1], web.sample()
    counts = counter.take()
    profiler = cProfile.Profile(time.process_time)  # CPU time: waiting on sockets costs nothing
    for i in range(plain, steps):
        profiler.enable()
        try:
            step(i)
        finally:
            profiler.disable()
    counter.take()
    return {
        "timed": plain,
        "profiled": steps - plain,
        "ms_each": round(wall * 1000 / plain, 2),
        "cpu_ms_each_here": round(cpu * 1000 / plain, 2),
        **{
            f"{role}_cpu_ms_each": round(
                (after.cpu.get(role, 0.0) - before.cpu.get(role, 0.0)) * 1000 / plain, 2
            )
            for role in ("web", "postgres")
        },
        "sql_each": {k: round(v / plain, 2) for k, v in counts.items()},
        "sql_of_one": dict(trace),
        # A single step (a campaign of one fan-out page) leaves nothing profiled.
        "top_cpu": _top(profiler, top, "tottime") if steps > plain else [],
        "top_app": _top(profiler, top, "cumulative", "campaigns/") if steps > plain else [],
    }


def profile(ctx: Context) -> dict[str, Any]:
    """Fan-out pages, one pump and the sends it queued, in this process, timed and profiled."""
    import sqlalchemy as sa

    from app import db
    from campaigns import erp, pump, sending
    from campaigns import fanout as fan_out_stage
    from campaigns.models import Message, MessageStatus
    from campaigns.services.campaigns import send_campaign_now

    args = ctx.args
    recipients = args.profile_recipients
    with (
        _common.scratch_database(ctx.run_database(), ctx.template) as url,
        running(url, ctx.log_dir, args) as stack,
    ):
        base = stack.start_web()
        with app_on(
            url,
            APP_BASE_URL=base,
            ERP_BASE_URL=f"{base}/mock/erp",
            MOCK_WHATSAPP_WEBHOOKS=False,
            **{k: v for k, v in stack.extra_env.items() if k == "MOCK_WHATSAPP_URL"},
        ) as application:
            config = application.config
            campaign_id, owner_id, segment = create_campaign(recipients)
            warm_erp(base, segment)
            send_campaign_now(campaign_id, owner_id)  # its fan-out job never runs here
            counter = StatementCounter(db.engine)
            web = Monitor(url, stack)
            result: dict[str, Any] = {"recipients": recipients}
            reader = erp.PageReader(erp.client_from_config(config), fan_out_stage.PAGE_SIZE)
            try:
                pages: list[fan_out_stage.FanOutPage | None] = []
                with reader:
                    result["fanout"] = _halves(
                        math.ceil(recipients / fan_out_stage.PAGE_SIZE),
                        lambda _i: pages.append(
                            fan_out_stage.fan_out_page(campaign_id, reader, config)
                        ),
                        web,
                        counter,
                        args.profile_top,
                    )
                if not (pages and pages[-1] and pages[-1].done):
                    raise RuntimeError(f"the fan-out did not end on its last page: {pages[-1:]}")
                pump.pump(campaign_id)
                result["pump_one_call"] = dict(counter.take())
                queued = db.session.scalars(
                    sa.select(Message.id)
                    .where(Message.status == MessageStatus.QUEUED)
                    .order_by(Message.id)
                    .limit(args.profile_sends)
                ).all()
                db.session.rollback()
                outcomes: Counter[str] = Counter()
                size = args.profile_batch
                batches = [queued[i : i + size] for i in range(0, len(queued), size)]

                def send(i: int) -> None:
                    report = sending.send_batch(campaign_id, batches[i], config, retry_queue=False)
                    for name in ("sent", "retrying", "throttled", "failed", "held", "stopped"):
                        outcomes[name] += len(getattr(report, name))
                    outcomes["skipped"] += report.skipped

                # Per batch of --profile-batch messages (a job's batch), not per message.
                result["send"] = _halves(len(batches), send, web, counter, args.profile_top)
                result["send"]["outcomes"] = dict(outcomes)
            finally:
                counter.close()
                web.close()
            return result


def _key(run: dict[str, Any]) -> tuple[Any, ...]:
    return (run.get("latency_ms"), run["setup"], run["repeat"])


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _cpu(run: dict[str, Any] | None, *roles: str) -> float | None:
    if run is None:
        return None
    figures = run["cpu_ms_per_message"]
    values = [figures.get(role) for role in roles]
    return round(sum(v or 0.0 for v in values), 3) if any(v is not None for v in values) else None


def derive(results: dict[str, list[dict[str, Any]]]) -> None:
    """Each engine run's figures against its same-run baseline and floor (in place)."""
    baselines = {_key(b): b for b in results["baseline"]}
    floors = {_key(f): f for f in results["floor"]}
    for engine in results["engine"]:
        baseline, floor = baselines.get(_key(engine)), floors.get(_key(engine))
        worker = _cpu(engine, "messages", "ops")
        postgres = _cpu(engine, "postgres")
        floor_client, floor_postgres = _cpu(floor, "floor"), _cpu(floor, "postgres")
        share = (
            round(postgres - floor_postgres, 3)
            if postgres is not None and floor_postgres is not None
            else None
        )
        engine["figures"] = {
            "baseline_per_s": baseline and baseline.get("per_s"),
            "floor_per_s": floor and floor.get("per_s"),
            "ratio": _ratio(engine.get("e2e_per_s"), baseline and baseline.get("per_s")),
            "floor_ratio": _ratio(engine.get("e2e_per_s"), floor and floor.get("per_s")),
            "steady_floor_ratio": _ratio(engine.get("steady_per_s"), floor and floor.get("per_s")),
            "worker_cpu_ms": worker,
            "postgres_cpu_ms": postgres,
            "floor_client_cpu_ms": floor_client,
            "floor_postgres_cpu_ms": floor_postgres,
            "postgres_share_ms": share,
            "own_cpu_ms": (
                round(worker - floor_client + share, 3)
                if None not in (worker, floor_client, share)
                else None
            ),
            "mock_cpu_ms": _cpu(engine, MOCK_ROLE),
            "floor_mock_cpu_ms": _cpu(floor, MOCK_ROLE),
        }


def summarise(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    derive(results)
    return {
        "targets": {
            "ratio": TARGET_RATIO,
            "floor_ratio": TARGET_FLOOR_RATIO,
            "per_s_at_1s": TARGET_PER_S_AT_1S,
            "own_cpu_ms": TARGET_OWN_CPU_MS,
            "fanout_per_s": TARGET_FANOUT_PER_S,
            "max_todo": TARGET_WINDOW,
            "duplicates": 0,
        },
        "mock": MOCK_ROLE,
        **results,
    }


def _yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def _n(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def throughput_table(results: dict[str, list[dict[str, Any]]]) -> str:
    """A Markdown table per latency: one row per engine run, its floor and baseline beside."""
    header = (
        "| setup | msg/s e2e (steady) | floor msg/s | x floor | baseline msg/s | x baseline"
        " | worker CPU ms/msg | Postgres ms/msg (floor's) | engine's Postgres share"
        " | engine's own CPU ms/msg | mock ms/call (floor's) | floor client ms/call"
        " | duplicates | max todo |"
    )
    out = []
    for latency in sorted({e.get("latency_ms") for e in results["engine"]}):
        out += [f"latency {latency} ms", "", header, "|" + "---|" * header.count(" | ") + "---|"]
        for engine in (e for e in results["engine"] if e.get("latency_ms") == latency):
            f = engine["figures"]
            calls = engine.get("calls_in_flight", DEFAULT_CALLS_IN_FLIGHT)
            out.append(
                f"| {engine['setup']}, {calls} calls #{engine['repeat']}"
                f" ({engine['sent']:,} msgs)"
                f" | {_n(engine['e2e_per_s'], 0)} ({_n(engine['steady_per_s'], 0)})"
                f" | {_n(f['floor_per_s'], 0)} | {_n(f['floor_ratio'])}"
                f" ({_n(f['steady_floor_ratio'])})"
                f" | {_n(f['baseline_per_s'], 0)} | {_n(f['ratio'], 1)}"
                f" | {_n(f['worker_cpu_ms'])}"
                f" | {_n(f['postgres_cpu_ms'])} ({_n(f['floor_postgres_cpu_ms'])})"
                f" | {_n(f['postgres_share_ms'])} | {_n(f['own_cpu_ms'])}"
                f" | {_n(f['mock_cpu_ms'])} ({_n(f['floor_mock_cpu_ms'])})"
                f" | {_n(f['floor_client_cpu_ms'])}"
                f" | {engine['duplicates']} | {engine['max_todo']:,} |"
            )
        out.append("")
    return "\n".join(out)


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    rows = [("figure", "target", "measured", "same-run floor / baseline", "met?")]
    for engine in results["engine"]:
        f = engine["figures"]
        name = f"{engine.get('latency_ms')} ms {engine['setup']} #{engine['repeat']}"
        one_default = engine["setup"] == "1x5" and engine.get("calls_in_flight") in (
            None,
            DEFAULT_CALLS_IN_FLIGHT,
        )
        if one_default and (engine.get("latency_ms") or 0) >= 1000:
            target, ok = f">= {TARGET_PER_S_AT_1S}/s", (engine["e2e_per_s"] or 0) >= 80
        elif one_default:
            target = f">= {TARGET_FLOOR_RATIO} x floor"
            ok = (f["floor_ratio"] or 0) >= TARGET_FLOOR_RATIO
        else:
            target, ok = "-", True
        rows.append(
            (
                f"messages/s {name}",
                target,
                f"{engine['e2e_per_s'] or 0:,.0f} e2e, {engine['steady_per_s'] or 0:,.0f} steady"
                f" ({_n(f['floor_ratio'])} x floor, {_n(f['ratio'], 1)} x baseline)",
                f"{_n(f['floor_per_s'], 0)} / {_n(f['baseline_per_s'], 0)} msg/s",
                _yes(ok) if target != "-" else "",
            )
        )
        own = f["own_cpu_ms"]
        rows.append(
            (
                f"  engine's own CPU {name}",
                f"<= {TARGET_OWN_CPU_MS} ms/msg",
                f"{_n(own)} ms (worker {_n(f['worker_cpu_ms'])}, Postgres share"
                f" {_n(f['postgres_share_ms'])})",
                f"floor client {_n(f['floor_client_cpu_ms'])},"
                f" Postgres {_n(f['floor_postgres_cpu_ms'])}",
                _yes(own is not None and own <= TARGET_OWN_CPU_MS),
            )
        )
        rows.append(
            (
                f"  duplicates {name}",
                "0",
                f"{engine['duplicates']} in {engine['sent']:,} sent",
                "-",
                _yes(engine["duplicates"] == 0),
            )
        )
        completed = engine["completed_after_s"]
        rows.append(
            (
                f"  completed {name}",
                "-",
                (f"after {completed} s" if completed else f"{engine['final_status']} (not waited)")
                + f"; forced errors {sum(engine['forced_error_messages'].values())},"
                f" idle gaps {engine['idle_gap_share'] or 0:.0%}",
                "-",
                "",
            )
        )
        rows.append(
            (
                f"  todo rows {name}",
                f"<= {TARGET_WINDOW:,}",
                f"max {engine['max_todo']:,}",
                "-",
                _yes(engine["max_todo"] <= TARGET_WINDOW),
            )
        )
    for run in results["limits"]:
        rows.append(
            (
                f"limits {run['per_minute']}/min, {run['gap_ms']} ms gap, {run['setup']}",
                "0 violations",
                f"{run['violations']} in {run['sent']:,} sent; "
                + "; ".join(
                    f"max {k['max_in_60s']} in 60 s, min gap {k['min_gap_ms']} ms,"
                    f" {k['gaps_below_gap']} gaps under {run['gap_ms']} ms"
                    for k in run["per_phone_number_id"].values()
                ),
                f"tolerance {run['jitter_ms']} ms",
                _yes(run["violations"] == 0 and run["duplicates"] == 0),
            )
        )
    for run in results["fanout"]:
        name = f"{run['recipients']:,} #{run['repeat']}"
        rows.append(
            (
                f"fan-out {name}",
                f">= {TARGET_FANOUT_PER_S:,}/s",
                f"{run['fanout_per_s']:,.0f}/s ({run['fanout_s']} s)",
                "-",
                _yes(run["fanout_per_s"] >= TARGET_FANOUT_PER_S),
            )
        )
        whole = run["whole_run"]
        rows.append(
            (
                f"todo rows {name}",
                f"<= {TARGET_WINDOW:,}",
                f"max {whole['max_todo']:,} over {whole['sampled_seconds']} s"
                f" ({run['after_fanout']['sampled_seconds']} s after fan-out)",
                "-",
                _yes(whole["max_todo"] <= TARGET_WINDOW),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    )


def profile_text(result: dict[str, Any]) -> str:
    lines = []
    for part, unit in (("fanout", "page"), ("send", "batch")):
        figures = {k: v for k, v in result[part].items() if not k.startswith(("top", "sql_of"))}
        lines.append(f"{part}, per {unit}: {json.dumps(figures)}")
        lines.append(f"  {part}: the SQL of one {unit} (statement start: times)")
        lines += [f"    {n:>4}  {text}" for text, n in result[part]["sql_of_one"].items()]
        lines.append(f"  {part}: CPU by function (own time), profiled half")
        lines += ["    " + line for line in result[part]["top_cpu"]]
        lines.append(f"  {part}: the app's functions (cumulative CPU)")
        lines += ["    " + line for line in result[part]["top_app"]]
    lines.append(f"pump, one call: {json.dumps(result['pump_one_call'])}")
    return "\n".join(lines)


def _interrupt(signum: int, frame: Any) -> None:
    # SIGTERM cleans up like Ctrl-C; say which one came (and when), for the record.
    name = signal.Signals(signum).name
    print(f"bench/engine.py: {name} at {time.strftime('%H:%M:%S')}", file=sys.stderr)
    raise KeyboardInterrupt


def run_parts(ctx: Context, parts: tuple[str, ...], setups: list[Setup]) -> None:
    """Run each part; every run is printed to stderr as it ends (a full run takes a while)."""
    args, results = ctx.args, ctx.results
    if "throughput" in parts:
        # Configurations interleaved, each engine run next to its baseline and its floor:
        # drift on a shared machine then hits both sides of a ratio alike.
        recipients = args.recipients
        for latency in args.latencies:
            args.latency_ms = latency
            args.recipients = (
                min(recipients, args.recipients_at_1s) if latency >= 1000 else recipients
            )
            for repeat in range(1, args.repeats + 1):
                for setup in setups:
                    for kind, run in (
                        ("engine", engine_throughput),
                        ("baseline", baseline_throughput),
                        ("floor", floor_throughput),
                    ):
                        result = run(ctx, setup, repeat)
                        results[kind].append(result)
                        brief = {k: v for k, v in result.items() if k != "per_second"}
                        print(
                            f"{kind} {latency} ms {setup} #{repeat}: {json.dumps(brief)}",
                            file=sys.stderr,
                        )
        args.recipients = recipients
    if "limits" in parts:
        args.latency_ms = args.latencies[0]
        results["limits"].append(limits(ctx))
        print(f"limits: {json.dumps(results['limits'][-1])}", file=sys.stderr)
    if "fanout" in parts:
        for repeat in range(1, args.repeats + 1):
            results["fanout"].append(fanout(ctx, repeat))
            print(f"fanout #{repeat}: {json.dumps(results['fanout'][-1])}", file=sys.stderr)
    if "profile" in parts:
        results["profile"] = [profile(ctx)]


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the parts in scratch databases, print the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--part", choices=("throughput", "fanout", "profile", "limits", "all"), default="all"
    )
    parser.add_argument("--recipients", type=int, default=20_000, help="throughput campaign size")
    parser.add_argument(
        "--recipients-at-1s",
        type=int,
        default=20_000,
        help="throughput campaign size at latencies of 1 s and more (they take long)",
    )
    parser.add_argument("--setups", default="1x5,2x5", help="message workers, PxC[,PxC...]")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each configuration")
    parser.add_argument(
        "--latencies",
        default="5,300,1000",
        type=lambda text: [int(ms) for ms in text.split(",")],
        help="the mock WhatsApp's latency, ms[,ms...]: every throughput run at each",
    )
    parser.add_argument(
        "--calls-in-flight",
        type=int,
        default=None,
        help="WHATSAPP_CALLS_IN_FLIGHT per worker process (default: the app's, 100)",
    )
    parser.add_argument(
        "--baseline-seconds",
        type=float,
        default=20.0,
        help="fewer baseline jobs than --recipients, about this long (at least 100)",
    )
    parser.add_argument(
        "--floor-seconds",
        type=float,
        default=20.0,
        help="fewer floor calls than --recipients, about this long (at least 100)",
    )
    parser.add_argument("--limits-recipients", type=int, default=1500)
    parser.add_argument("--limits-per-minute", type=int, default=1200)
    parser.add_argument("--limits-gap-ms", type=int, default=10)
    parser.add_argument("--limits-setup", default="2x5", help="message workers in the limits run")
    parser.add_argument(
        "--jitter-ms", type=float, default=5.0, help="tolerance on the gap at the provider"
    )
    parser.add_argument("--web-threads", type=int, default=8, help="gunicorn threads (Procfile)")
    parser.add_argument(
        "--no-wait-complete",
        dest="wait_complete",
        action="store_false",
        help="stop once only retrying messages are left (forced errors retry for ~2 min)",
    )
    parser.add_argument("--fanout-recipients", type=int, default=100_000)
    parser.add_argument("--fanout-setup", default="1x5", help="message workers in the fan-out run")
    parser.add_argument(
        "--window-seconds", type=float, default=30.0, help="sampling after the fan-out"
    )
    parser.add_argument("--profile-recipients", type=int, default=5000, help="fan-out size")
    parser.add_argument("--profile-sends", type=int, default=600, help="at most one window")
    parser.add_argument("--profile-top", type=int, default=20, help="functions per profile")
    parser.add_argument(
        "--profile-batch", type=int, default=100, help="messages per send_batch call"
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run at most")
    parser.add_argument("--quick", action="store_true", help="a small smoke run of every part")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    args = parser.parse_args(argv)
    if args.quick:
        args.recipients, args.fanout_recipients, args.profile_recipients = 1000, 5000, 1000
        args.profile_sends = 200
        args.setups, args.repeats, args.window_seconds = "1x5", 1, 5.0
        args.wait_complete, args.timeout = False, 300.0
    setups = [Setup.parse(text) for text in args.setups.split(",")]
    args.latency_ms = args.latencies[0]
    parts = ("throughput", "fanout", "profile", "limits") if args.part == "all" else (args.part,)

    # Our logs (and the app's) go to stderr: stdout carries the JSON line and the table.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    log_dir = Path(tempfile.mkdtemp(prefix="disparo-bench-engine-"))
    template = f"disparo_bench_{os.getpid()}"
    ctx: Context | None = None
    try:
        # Every run clones this database, so it holds no connection while they go.
        with _common.scratch_database(template) as url:
            ctx = Context(args, template, seed(url), log_dir)
            run_parts(ctx, parts, setups)
    except BaseException:
        print(f"bench/engine.py: stopped; the processes' logs are in {log_dir}", file=sys.stderr)
        if ctx is not None and any(ctx.results.values()):
            report(ctx.results, interrupted=True)  # the runs that did finish
        raise
    if args.keep_logs:
        print(f"bench/engine.py: the processes' logs are in {log_dir}", file=sys.stderr)
    else:
        shutil.rmtree(log_dir, ignore_errors=True)
    report(ctx.results)
    return 0


def report(results: dict[str, list[dict[str, Any]]], interrupted: bool = False) -> None:
    print(json.dumps(summarise(results) | ({"interrupted": True} if interrupted else {})))
    if results["engine"] or results["fanout"] or results["limits"]:
        print(table(results))
    if results["engine"]:
        print(throughput_table(results))
    for result in results.get("profile", []):
        print(profile_text(result))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
