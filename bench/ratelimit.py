"""Benchmark the Postgres rate limiter: P processes x T threads hammer one key.

Not a test: it measures, on this machine, what bench/README.md records.

    .venv/bin/python bench/ratelimit.py --processes 2 --threads 2 --limit 1000 --window 1
    .venv/bin/python bench/ratelimit.py --units 1 50   # one unit per call, then 50 partial

It creates a scratch database on the server of ``DATABASE_URL`` (or the embedded
development server), migrates it, runs the workers, prints one JSON line and a
short table, and drops the database. Every worker thread has its own session and
calls :func:`campaigns.ratelimit.consume` back to back (no sleeping on
``retry_after``: the point is the most decisions one key can take); every tenth
iteration it also times a bare ``SELECT 1`` through the same path (pooled
connection, autocommit) as the same-run baseline. With ``--units N`` (N > 1) each
call asks for N units, partial (a batch of messages); several values run one
after the other in the same scratch database, each on a key of its own.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import sys
import threading
import time
from bisect import bisect_right
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere in the checkout
    sys.path.insert(0, str(ROOT))

BASELINE_EVERY = 10
KEY = "bench:one-key"


@dataclass(frozen=True)
class Run:
    processes: int
    threads: int
    limit: int
    window: float
    seconds: float
    min_gap: float
    sync_commit: bool
    units: int = 1  # asked per call; partial when more than one


@dataclass
class WorkerResult:
    grants: list[float]  # database grant times, epoch seconds, one per grant
    units: list[float]  # the same, one per unit granted
    latencies: list[float]  # seconds per consume() call
    baseline: list[float]  # seconds per SELECT 1
    errors: int


def _thread(engine, run: Run, start: float, result: WorkerResult, lock: threading.Lock) -> None:
    import sqlalchemy as sa
    from sqlalchemy.orm import Session

    from campaigns import ratelimit

    limit = ratelimit.Limit(f"{KEY}:{run.units}", run.limit, run.window, run.min_gap)
    select_one = sa.text("SELECT 1")
    grants: list[float] = []
    units: list[float] = []
    latencies: list[float] = []
    baseline: list[float] = []
    errors = 0
    with Session(engine) as session:
        # Warm up the pool connection and psycopg's prepared statements, off the clock.
        ratelimit.usage(session, limit)
        session.rollback()
        time.sleep(max(start - time.time(), 0))
        end = start + run.seconds
        i = 0
        while time.time() < end:
            i += 1
            if i % BASELINE_EVERY == 0:
                t0 = time.perf_counter()
                with engine.connect() as connection:
                    connection.execution_options(isolation_level="AUTOCOMMIT")
                    connection.execute(select_one).scalar_one()
                baseline.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            try:
                decision = ratelimit.consume(
                    session,
                    [limit],
                    units=run.units,
                    partial=run.units > 1,
                    synchronous_commit=run.sync_commit,
                )
            except Exception as error:  # counted and reported: a benchmark keeps going
                if not errors:
                    print(f"consume() failed: {error!r}", file=sys.stderr)
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)
            if decision.granted_at is not None:
                grants.append(decision.granted_at.timestamp())
                units += [grants[-1]] * decision.granted
    with lock:
        result.grants += grants
        result.units += units
        result.latencies += latencies
        result.baseline += baseline
        result.errors += errors


def _process(url: str, run: Run, start: float, queue: Any) -> None:
    import sqlalchemy as sa

    from campaigns.config import sqlalchemy_url

    # The app's engine options (pool_pre_ping), one pooled connection per thread.
    engine = sa.create_engine(
        sqlalchemy_url(url), pool_size=run.threads, max_overflow=0, pool_pre_ping=True
    )
    result = WorkerResult([], [], [], [], 0)
    lock = threading.Lock()
    threads = [
        threading.Thread(target=_thread, args=(engine, run, start, result, lock))
        for _ in range(run.threads)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    engine.dispose()
    queue.put(asdict(result))


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(int(fraction * len(ordered)), len(ordered) - 1)]


def window_counts(grants: list[float], window: float) -> list[int]:
    """For each grant t (sorted), the grants in the half-open window (t - window, t]."""
    # The busiest window of length W can always be slid right until it ends on a
    # grant, so these counts include the largest count of any window.
    return [i + 1 - bisect_right(grants, t - window, 0, i + 1) for i, t in enumerate(grants)]


def measure(url: str, run: Run) -> dict[str, object]:
    """Run the workers against a migrated database and summarise what they saw."""
    load_before = round(os.getloadavg()[0], 2)  # other work on the machine skews every figure
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    start = time.time() + 2.0 + 0.5 * run.processes  # every process ready before the gun
    processes = [
        context.Process(target=_process, args=(url, run, start, queue))
        for _ in range(run.processes)
    ]
    for process in processes:
        process.start()
    # A worker that dies never reports: give up rather than wait forever.
    results = [queue.get(timeout=start - time.time() + run.seconds + 120) for _ in processes]
    for process in processes:
        process.join()
    grants = sorted(g for r in results for g in r["grants"])
    units = sorted(u for r in results for u in r["units"])
    latencies = [x for r in results for x in r["latencies"]]
    baseline = [x for r in results for x in r["baseline"]]
    counts = window_counts(units, run.window)  # the limit is in units
    gaps = [b - a for a, b in itertools.pairwise(grants)]
    allowed_by_limit = run.limit * run.seconds / run.window
    return {
        **asdict(run),
        "load_1min_before": load_before,
        "decisions": len(latencies),
        "grants": len(grants),
        "units_granted": len(units),
        "errors": sum(r["errors"] for r in results),
        "max_in_window": max(counts, default=0),
        "windows_over_limit": sum(1 for count in counts if count > run.limit),
        "min_gap_seen_ms": round(min(gaps) * 1000, 3) if gaps else None,
        "utilisation": round(len(units) / allowed_by_limit, 4),
        "decisions_per_s": round(len(latencies) / run.seconds, 1),
        "grants_per_s": round(len(grants) / run.seconds, 1),
        "units_per_s": round(len(units) / run.seconds, 1),
        "p50_ms": round(_percentile(latencies, 0.50) * 1000, 3),
        "p99_ms": round(_percentile(latencies, 0.99) * 1000, 3),
        "baseline_p50_ms": round(_percentile(baseline, 0.50) * 1000, 3),
        "baseline_p99_ms": round(_percentile(baseline, 0.99) * 1000, 3),
    }


def _table(summary: dict[str, object]) -> str:
    run = f"{summary['processes']}x{summary['threads']}"
    rows = [
        ("run (P x T, L / W)", f"{run}, {summary['limit']} / {summary['window']} s"),
        ("units per call", f"{summary['units']}" + (" (partial)" if summary["units"] != 1 else "")),
        ("max in any window", f"{summary['max_in_window']} (limit {summary['limit']})"),
        ("windows over limit", f"{summary['windows_over_limit']}"),
        ("min gap (asked / seen)", f"{summary['min_gap']} s / {summary['min_gap_seen_ms']} ms"),
        ("utilisation", f"{float(summary['utilisation']):.1%}"),  # type: ignore[arg-type]
        ("decisions/s", f"{summary['decisions_per_s']} ({summary['grants_per_s']} grants/s)"),
        ("units granted/s", f"{summary['units_per_s']}"),
        ("decision p50 / p99", f"{summary['p50_ms']} / {summary['p99_ms']} ms"),
        ("SELECT 1 p50 / p99", f"{summary['baseline_p50_ms']} / {summary['baseline_p99_ms']} ms"),
        ("commit", "synchronous" if summary["sync_commit"] else "asynchronous (default)"),
        ("errors", f"{summary['errors']}"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the benchmark in a scratch database, print the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=1000, help="grants per window")
    parser.add_argument("--window", type=float, default=1.0, help="window length, seconds")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to hammer")
    parser.add_argument("--min-gap", type=float, default=0.0, help="minimum gap, seconds")
    parser.add_argument(
        "--units",
        type=int,
        nargs="+",
        default=[1],
        help="units asked per call (partial when more than 1); several values run in turn",
    )
    parser.add_argument(
        "--sync-commit",
        action="store_true",
        help="wait for the WAL flush of every grant (what asynchronous commit saves)",
    )
    args = parser.parse_args(argv)
    runs = [
        Run(
            args.processes,
            args.threads,
            args.limit,
            args.window,
            args.seconds,
            args.min_gap,
            args.sync_commit,
            units,
        )
        for units in args.units
    ]

    from bench._common import scratch_database

    with scratch_database(f"disparo_bench_{os.getpid()}") as url:
        for run in runs:
            summary = measure(url, run)
            print(json.dumps(summary))
            print(_table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
