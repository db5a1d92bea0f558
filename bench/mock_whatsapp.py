"""Benchmark the mock WhatsApp's own process: N calls, K in flight, at latency L.

Not a test: it measures, on this machine, what bench/README.md records.

    .venv/bin/python bench/mock_whatsapp.py                          # 20,000 calls, 1,000 at 300 ms
    .venv/bin/python bench/mock_whatsapp.py --in-flight 100 --latency-ms 1000 --calls 5000
    .venv/bin/python bench/mock_whatsapp.py --webhooks               # status webhooks queued too

It creates a scratch database (``disparo_bench_mock_<pid>``) on the server of
``DATABASE_URL`` or the embedded development server, with one mock sender, starts
``python -m mocks.whatsapp_server`` on a free port as the Procfile's ``mock`` does
(webhooks off unless ``--webhooks``, as ``bench/engine.py`` runs the mock), opens K
keep-alive connections and keeps a call in flight on each (a small asyncio HTTP/1.1
client, so the client costs little beside the server), first ``--warm-up`` calls,
then N measured ones. It prints one JSON line and a table:

- ``calls_per_s``: N ÷ the measured phase's wall time (at most K ÷ L);
- ``mock_cpu_ms_per_call``: the mock process's CPU (user + system, psutil) over the
  phase ÷ N;
- ``postgres_cpu_ms_per_call``: the CPU of every process of the Postgres server
  (its postmaster and children) over the phase, less what the same processes spent
  in an idle interval of the same length measured just before, ÷ N. Only
  meaningful with the server to yourself: another suite's queries count too;
- ``rows_per_flush``, ``commits_per_call`` (``pg_stat_database``) and the calls'
  latency as the client saw it (p50, p99), with ``peak_in_flight`` from the mock's
  ``GET /stats``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere in the checkout
    sys.path.insert(0, str(ROOT))

PHONE_NUMBER_ID = "100000000000999"
TEMPLATE = {
    "name": "promo_weekend",
    "language": {"code": "pt_BR"},
    "components": [
        {
            "type": "body",
            "parameters": [
                {"type": "text", "parameter_name": "first_name", "text": "Ana"},
                {"type": "text", "parameter_name": "discount", "text": "10%"},
            ],
        }
    ],
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def requests_for(port: int, first: int, count: int) -> Iterator[bytes]:
    """The HTTP/1.1 requests of calls first … first + count - 1, keep-alive."""
    path = f"/v23.0/{PHONE_NUMBER_ID}/messages"
    for n in range(first, first + count):
        body = json.dumps(
            {
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": f"+551190{n % 10_000_000:07d}1",  # never a failing …0000, …0429, …0500
                "type": "template",
                "biz_opaque_callback_data": str(n),
                "template": TEMPLATE,
            },
            separators=(",", ":"),
        ).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        yield head.encode() + body


@dataclass
class Phase:
    statuses: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)


async def _read_answer(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def _keep_calling(
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    requests: Iterator[bytes],
    phase: Phase,
) -> None:
    reader, writer = connection
    for request in requests:  # one iterator shared by every connection: the next call
        started = time.perf_counter()
        writer.write(request)
        phase.statuses[await _read_answer(reader)] += 1
        phase.latencies.append(time.perf_counter() - started)


async def run_phase(
    connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]], requests: Iterator[bytes]
) -> Phase:
    phase = Phase()
    await asyncio.gather(*(_keep_calling(c, requests, phase) for c in connections))
    return phase


async def connect(port: int, count: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    for start in range(0, count, 100):
        connections += await asyncio.gather(
            *(asyncio.open_connection("127.0.0.1", port) for _ in range(min(100, count - start)))
        )
    return connections


class PostgresCpu:
    """CPU seconds of the Postgres server's processes: its postmaster and all its children."""

    def __init__(self, url: str) -> None:
        import psutil
        import psycopg

        with psycopg.connect(url) as conn:
            (backend,) = conn.execute("SELECT pg_backend_pid()").fetchone()
            self.postmaster = psutil.Process(backend).parent()
        self._seen: dict[int, float] = {}

    def seconds(self) -> float:
        import psutil

        for process in [self.postmaster, *self.postmaster.children()]:
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue  # gone: its last reading stays counted
            self._seen[process.pid] = times.user + times.system
        return sum(self._seen.values())


def _cpu(process: Any) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _commits(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        (commits,) = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return int(commits)


def seed_sender(url: str) -> None:
    """The mock sender the webhooks name (its WABA id and display number)."""
    from app import create_app, db
    from campaigns.config import sqlalchemy_url
    from campaigns.models import Provider, Sender

    app = create_app({"SQLALCHEMY_DATABASE_URI": sqlalchemy_url(url)})
    with app.app_context():
        db.session.add(
            Sender(
                name="Bench mock",
                provider=Provider.MOCK,
                phone_number_id=PHONE_NUMBER_ID,
                display_phone_number="+55 11 90000-0999",
                waba_id="200000000000999",
            )
        )
        db.session.commit()
        db.engine.dispose()


def start_mock(url: str, args: argparse.Namespace, port: int, log: Path) -> subprocess.Popen:
    import requests

    env = {k: v for k, v in os.environ.items() if not k.startswith("MOCK_")} | {
        "DATABASE_URL": url,
        "DISPARO_ENV": "development",
        "DISPARO_MOCKS": "on",
        "APP_BASE_URL": "http://127.0.0.1:9",  # nobody posts the webhooks in a benchmark
        "MOCK_WHATSAPP_URL": f"http://127.0.0.1:{port}/v23.0",
        "MOCK_WHATSAPP_LATENCY_MS": str(args.latency_ms),
        "MOCK_WHATSAPP_WEBHOOKS": "on" if args.webhooks else "off",
        "MOCK_WHATSAPP_THROTTLE_RATE": "0",
        "MOCK_WHATSAPP_TRANSIENT_RATE": "0",
        "MOCK_WHATSAPP_PERMANENT_RATE": "0",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "mocks.whatsapp_server", f"--flush-ms={args.flush_ms}"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the mock exited with {process.returncode}; see {log}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/stats", timeout=2).ok:
                return process
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the mock did not answer in 60 s; see {log}")
        time.sleep(0.1)


def _raise_open_files_limit(count: int) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(count, hard), hard))


def measure(url: str, args: argparse.Namespace, log: Path) -> dict[str, Any]:
    import psutil
    import requests

    seed_sender(url)
    port = free_port()
    mock = start_mock(url, args, port, log)
    try:
        server = psutil.Process(mock.pid)
        me = psutil.Process()
        postgres = PostgresCpu(url)

        async def go() -> dict[str, Any]:
            connections = await connect(port, args.in_flight)
            await run_phase(connections, requests_for(port, 0, args.warm_up))
            # The same processes idle, for as long as the measured phase should take.
            expected = max(args.calls / (args.in_flight / (args.latency_ms / 1000 or 0.001)), 2.0)
            idle_pg, idle_mock, idle_t = postgres.seconds(), _cpu(server), time.perf_counter()
            await asyncio.sleep(expected)
            idle_seconds = time.perf_counter() - idle_t
            idle_pg_rate = (postgres.seconds() - idle_pg) / idle_seconds
            idle_mock_rate = (_cpu(server) - idle_mock) / idle_seconds

            stats_before = requests.get(f"http://127.0.0.1:{port}/stats", timeout=10).json()
            commits_before = _commits(url)
            pg0, mock0, me0, t0 = postgres.seconds(), _cpu(server), _cpu(me), time.perf_counter()
            phase = await run_phase(connections, requests_for(port, args.warm_up, args.calls))
            seconds = time.perf_counter() - t0
            pg1, mock1, me1 = postgres.seconds(), _cpu(server), _cpu(me)
            commits = _commits(url) - commits_before - 1  # less _commits' own
            stats = requests.get(f"http://127.0.0.1:{port}/stats", timeout=10).json()
            for _, writer in connections:
                writer.close()
            n = args.calls
            flushes = stats["flushes"] - stats_before["flushes"]
            latencies = sorted(phase.latencies)
            return {
                "calls": n,
                "in_flight": args.in_flight,
                "latency_ms": args.latency_ms,
                "webhooks": args.webhooks,
                "flush_ms": args.flush_ms,
                "statuses": dict(phase.statuses),
                "seconds": round(seconds, 2),
                "calls_per_s": round(n / seconds, 1),
                "ceiling_per_s": round(args.in_flight / (args.latency_ms / 1000), 1)
                if args.latency_ms
                else None,
                "mock_cpu_ms_per_call": round((mock1 - mock0) * 1000 / n, 4),
                "mock_idle_cpu_ms_per_s": round(idle_mock_rate * 1000, 2),
                "postgres_cpu_ms_per_call": round(
                    ((pg1 - pg0) - idle_pg_rate * seconds) * 1000 / n, 4
                ),
                "postgres_raw_cpu_ms_per_call": round((pg1 - pg0) * 1000 / n, 4),
                "postgres_idle_cpu_ms_per_s": round(idle_pg_rate * 1000, 2),
                "client_cpu_ms_per_call": round((me1 - me0) * 1000 / n, 4),
                "machine_busy_share": None,
                "flushes": flushes,
                "rows_per_flush": round(n / flushes, 1) if flushes else None,
                "commits_per_call": round(commits / n, 3),
                "p50_ms": round(statistics.median(latencies) * 1000, 1),
                "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1),
                "peak_in_flight": stats["peak_in_flight"],
                "recorded": stats["recorded"] - stats_before["recorded"],
                "load_1min_before": round(os.getloadavg()[0], 2),
            }

        busy0 = psutil.cpu_times()
        result = asyncio.run(go())
        busy1 = psutil.cpu_times()
        total = sum(busy1) - sum(busy0)
        idle = (busy1.idle + getattr(busy1, "iowait", 0.0)) - (
            busy0.idle + getattr(busy0, "iowait", 0.0)
        )
        result["machine_busy_share"] = round(1 - idle / total, 3) if total else None
        return result
    finally:
        mock.send_signal(signal.SIGTERM)
        try:
            mock.wait(timeout=30)
        except subprocess.TimeoutExpired:
            mock.kill()
            mock.wait()


def table(result: dict[str, Any]) -> str:
    rows = [
        (
            "calls, in flight, latency",
            f"{result['calls']}, {result['in_flight']}, "
            f"{result['latency_ms']} ms, webhooks {'on' if result['webhooks'] else 'off'}",
        ),
        ("answers", ", ".join(f"{n} x {status}" for status, n in result["statuses"].items())),
        ("calls/s (ceiling K ÷ L)", f"{result['calls_per_s']} ({result['ceiling_per_s']})"),
        ("peak in flight", str(result["peak_in_flight"])),
        ("mock CPU ms/call", str(result["mock_cpu_ms_per_call"])),
        (
            "Postgres CPU ms/call (raw)",
            f"{result['postgres_cpu_ms_per_call']} ({result['postgres_raw_cpu_ms_per_call']};"
            f" idle {result['postgres_idle_cpu_ms_per_s']} ms/s)",
        ),
        ("client CPU ms/call", str(result["client_cpu_ms_per_call"])),
        ("rows/flush, commits/call", f"{result['rows_per_flush']}, {result['commits_per_call']}"),
        ("latency p50 / p99 ms", f"{result['p50_ms']} / {result['p99_ms']}"),
        ("machine busy", str(result["machine_busy_share"])),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000, help="measured calls (N)")
    parser.add_argument("--in-flight", type=int, default=1000, help="calls in flight (K)")
    parser.add_argument("--latency-ms", type=int, default=300, help="the mock's latency (L)")
    parser.add_argument("--warm-up", type=int, default=2000, help="calls before measuring")
    parser.add_argument("--webhooks", action="store_true", help="queue the status webhooks too")
    parser.add_argument("--flush-ms", type=float, default=10.0, help="the mock's group window")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    _raise_open_files_limit(args.in_flight + 256)

    import tempfile

    from bench._common import scratch_database

    log = Path(tempfile.mkdtemp(prefix="bench-mock-")) / "mock.log"
    for repeat in range(args.repeats):
        with scratch_database(f"disparo_bench_mock_{os.getpid()}_{repeat}") as url:
            result = measure(url, args, log)
        print(json.dumps(result))
        print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
