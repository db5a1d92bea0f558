"""Database connections per process: the default settings and the small profile, one run.

    .venv/bin/python bench/connections.py
    .venv/bin/python bench/connections.py --recipients 5000 --latency-ms 300 --clients 4

For each profile, on a scratch database (``bench/_common.py``): the Procfile's
``web`` (gunicorn), one ``worker`` and ``ops`` (``python -m jobs.ops``), with the
mocks on (the mock WhatsApp's own process answering after ``--latency-ms``, its
status webhooks posted to the web by ops), a campaign of ``--recipients`` sent
through them while ``--clients`` threads load pages (signed in: the campaign page,
its 2 s progress poll, the campaign list) and call the JSON API (each call takes
its user's rate limit: two connections at once). Every ``--sample-ms`` it counts
``pg_stat_activity`` by ``application_name`` (each process names its connections
``disparo-<process>``), and prints each process's peak, the peak of their total
(web + worker + ops, sampled together), the mock's and this script's own apart, the
caps the settings allow, and messages per second (from the messages' ``sent_at``).

The small profile is what README ("Deploying") recommends for a 20-connection
plan; its settings are ``SMALL`` below. Figures: bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere in the checkout
    sys.path.insert(0, str(ROOT))

from bench import _common, engine  # noqa: E402  (needs ROOT on sys.path)

# The settings a profile may set; the default profile unsets them all.
SETTINGS = (
    "WEB_CONCURRENCY",
    "WEB_THREADS",
    "DB_POOL_SIZE",
    "DB_MAX_OVERFLOW",
    "QUEUE_POOL_MIN_SIZE",
    "QUEUE_POOL_MAX_SIZE",
    "WORKER_CONCURRENCY",
    "OPS_WORKERS",
    "WHATSAPP_CALLS_IN_FLIGHT",
)
SMALL = {
    "WEB_CONCURRENCY": "1",
    "WEB_THREADS": "3",
    "DB_POOL_SIZE": "4",
    "DB_MAX_OVERFLOW": "0",
    "QUEUE_POOL_MIN_SIZE": "1",
    "QUEUE_POOL_MAX_SIZE": "1",
    "WORKER_CONCURRENCY": "2",
    "OPS_WORKERS": (
        "campaign-sender:2; "
        "campaign-scheduler,campaign-notifications,message-retry,maintenance,builtin:1"
    ),
}
PROFILES = {"default": {}, "small": SMALL}
PROCESSES = ("disparo-web", "disparo-worker", "disparo-ops")
COUNT = """
SELECT coalesce(application_name, ''), count(*) FROM pg_stat_activity
 WHERE datname = current_database() AND pid <> pg_backend_pid() GROUP BY 1
"""
SENT = """
SELECT count(*), extract(epoch FROM min(sent_at))::float8, extract(epoch FROM max(sent_at))::float8
  FROM messages WHERE campaign_id = %(id)s AND sent_at IS NOT NULL
"""
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
BENCH_EMAIL, BENCH_PASSWORD = "bench-connections@example.com", "bench connections password"


class Sampler(threading.Thread):
    """Counts the run database's connections by application_name every ``every`` s."""

    def __init__(self, url: str, every: float) -> None:
        super().__init__(daemon=True)
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True, application_name="disparo-bench")
        self.every = every
        self.peaks: Counter[str] = Counter()
        self.total_peak = 0
        self.samples = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            counts = dict(self.conn.execute(COUNT).fetchall())
            for name, n in counts.items():
                self.peaks[name] = max(self.peaks[name], n)
            self.total_peak = max(self.total_peak, sum(counts.get(p, 0) for p in PROCESSES))
            self.samples += 1
            self.done.wait(self.every)
        self.conn.close()


class Clients:
    """``n`` threads of an operator and an integration: pages signed in, and API calls."""

    def __init__(self, base: str, token: str, campaign_id: int, n: int) -> None:
        self.base, self.token, self.campaign_id = base, token, campaign_id
        self.statuses: Counter[str] = Counter()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(n)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def finish(self) -> dict[str, int]:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)
        return dict(sorted(self.statuses.items()))

    def run(self, index: int) -> None:
        import requests

        session = requests.Session()
        page = session.get(f"{self.base}/login", timeout=30)
        csrf = CSRF.search(page.text)
        session.post(
            f"{self.base}/login",
            data={
                "email": BENCH_EMAIL,
                "password": BENCH_PASSWORD,
                "csrf_token": csrf.group(1) if csrf else "",
            },
            timeout=30,
        )
        api = {"Authorization": f"Bearer {self.token}"}
        c = self.campaign_id
        requests_ = [
            ("page", f"/campaigns/{c}", {}),
            ("poll", f"/campaigns/{c}/progress", {"HX-Request": "true"}),
            ("page", "/campaigns/", {}),
            ("api", f"/api/v1/campaigns/{c}/progress", api),
            ("api", f"/api/v1/campaigns/{c}", api),
            ("api", "/api/v1/campaigns", api),
        ]
        i = index
        while not self.stop.is_set():
            kind, path, headers = requests_[i % len(requests_)]
            i += 1
            try:
                status = str(session.get(self.base + path, headers=headers, timeout=60).status_code)
            except requests.RequestException as error:
                status = type(error).__name__
            with self.lock:
                self.statuses[f"{kind} {status}"] += 1
            self.stop.wait(0.05)


class ProcfileStack(engine.Stack):
    """engine.Stack, its web started exactly as the Procfile's ``web`` line."""

    def start_web(self) -> str:

        self.start_mock()
        port = engine.free_port()
        self.base = f"http://127.0.0.1:{port}"
        argv = [
            arg.replace("${PORT:-5000}", str(port)).replace("0.0.0.0", "127.0.0.1")
            for arg in engine.procfile()["web"]
        ]
        argv[0] = str(engine.BIN / argv[0])
        web = self.start("web", "web", argv)
        self.wait_for_web(web)
        return self.base


def caps(settings: dict[str, str]) -> dict[str, int]:
    """What each process may open at most under these settings (README, Deploying)."""
    from unittest import mock

    from campaigns import config

    with mock.patch.dict(os.environ, settings):
        size, overflow = config.db_pool()
        _low, queue = config.queue_pool()
        threads = config.web_threads()
        web = int(settings.get("WEB_CONCURRENCY") or 1) * (
            (5 if size is None else size) + (10 if overflow is None else overflow)
        )
        c = config.worker_concurrency()
        worker = sum(config.sqlalchemy_pool("worker", 2 * c)) + queue + 1
        groups = config.ops_workers()
        slots = sum(g.concurrency for g in groups)
        retry = sum(g.concurrency for g in groups if "message-retry" in g.queues)
        ops = sum(config.sqlalchemy_pool("ops", slots + retry)) + queue + 1
    del threads
    return {"disparo-web": web, "disparo-worker": worker, "disparo-ops": ops}


def run_profile(name: str, settings: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    import psycopg

    from app import db
    from campaigns.models import Role
    from campaigns.services.campaigns import send_campaign_now
    from campaigns.services.users import create_api_token, create_user

    log_dir = Path(args.log_dir) / name
    log_dir.mkdir(parents=True, exist_ok=True)
    with _common.scratch_database(f"disparo_bench_conn_{name}_{os.getpid()}") as url:
        engine.seed(url)
        stack = ProcfileStack(url, log_dir, args)
        stack.extra_env.update(settings)  # main() took the others out of the environment
        stack.extra_env["MOCK_WHATSAPP_WEBHOOKS"] = "on"
        try:
            with (
                engine.app_on(url),
                psycopg.connect(url, autocommit=True, application_name="disparo-bench") as conn,
            ):
                campaign_id, owner_id, segment = engine.create_campaign(args.recipients)
                user = create_user(BENCH_EMAIL, BENCH_PASSWORD, Role.SUPERVISOR)
                _token, raw = create_api_token(user.id, "bench")
                db.session.commit()
                base = stack.start_web()
                engine.warm_erp(base, segment)
                stack.start_workers(engine.Setup(1, int(settings.get("WORKER_CONCURRENCY", 5))))
                sampler = Sampler(url, args.sample_ms / 1000)
                sampler.start()
                clients = Clients(base, raw, campaign_id, args.clients)
                clients.start()
                time.sleep(args.idle_seconds)  # the processes idle, the clients load the web
                started = time.time()
                send_campaign_now(campaign_id, owner_id)
                deadline = time.monotonic() + args.timeout
                while True:
                    stack.check()
                    (status,) = conn.execute(
                        "SELECT status::text FROM campaigns WHERE id = %s", (campaign_id,)
                    ).fetchone()
                    if status in engine.FINISHED:
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{name}: not finished in {args.timeout} s")
                    time.sleep(0.5)
                time.sleep(args.idle_seconds)  # webhooks and notifications settle
                statuses = clients.finish()
                sampler.done.set()
                sampler.join()
                sent, first, last = conn.execute(SENT, {"id": campaign_id}).fetchone()
        finally:
            stack.stop()
    peaks = dict(sampler.peaks)
    return {
        "profile": name,
        "settings": settings,
        "recipients": args.recipients,
        "status": status,
        "sent": sent,
        "msg_per_s": round(sent / (last - first), 1) if sent and last > first else None,
        "seconds_to_complete": round((last or started) - started, 1),
        "peaks": {p: peaks.get(p, 0) for p in PROCESSES},
        "total_peak": sampler.total_peak,
        "others_peak": {k: v for k, v in peaks.items() if k not in PROCESSES},
        "caps": caps(settings),
        "samples": sampler.samples,
        "requests": statuses,
    }


def table(results: list[dict[str, Any]]) -> str:
    rows = [("", *(r["profile"] for r in results))]
    for process in PROCESSES:
        rows.append(
            (
                f"{process} peak (cap)",
                *(f"{r['peaks'][process]} ({r['caps'][process]})" for r in results),
            )
        )
    rows.append(
        (
            "total peak (caps)",
            *(f"{r['total_peak']} ({sum(r['caps'].values())})" for r in results),
        )
    )
    rows.append(("others' peaks", *(json.dumps(r["others_peak"]) for r in results)))
    rows.append(("msg/s", *(str(r["msg_per_s"]) for r in results)))
    rows.append(("sent / status", *(f"{r['sent']} / {r['status']}" for r in results)))
    rows.append(("requests", *(json.dumps(r["requests"]) for r in results)))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=5000)
    parser.add_argument("--latency-ms", type=int, default=300)
    parser.add_argument("--clients", type=int, default=4, help="page and API threads")
    parser.add_argument("--sample-ms", type=float, default=100.0)
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--profiles", default="default,small")
    parser.add_argument("--log-dir", default=f"/tmp/disparo-bench-connections-{os.getpid()}")
    args = parser.parse_args(argv)
    # What engine.Stack reads from its arguments.
    args.fanout_recipients, args.calls_in_flight, args.web_threads = args.recipients, None, 8
    for setting in SETTINGS:  # each profile sets its own, and nothing else
        os.environ.pop(setting, None)
    results = []
    for name in args.profiles.split(","):
        results.append(run_profile(name, PROFILES[name], args))
        print(json.dumps(results[-1]), flush=True)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
