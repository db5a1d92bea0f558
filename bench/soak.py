"""Soak the sending engine: send for an hour at a realistic rate and watch for stalls.

Not a test: issue 13 asks whether the stall of one ``bench/engine.py`` 2x5 run
(sending stopped for ~19 s, then 2 duplicates and 7 failures of unknown code;
bench/README.md) comes back over a long run. It reuses ``bench/engine.py``'s
machinery: a migrated, seeded scratch database, gunicorn for the app (mock ERP,
status webhooks), the asyncio mock WhatsApp (``mocks/whatsapp_server.py``, here with
a jittered latency), ``procrastinate worker`` processes as the Procfile starts them,
and the monitor.

    .venv/bin/python bench/soak.py                        # an hour, 2x5, 80 msg/s, 300 ms
    .venv/bin/python bench/soak.py --seconds 150 --campaign-recipients 5000
    nohup .venv/bin/python bench/soak.py --keep-logs > /tmp/soak.out 2>&1 &

Campaigns of ``--campaign-recipients`` are chained: the next is sent as soon as the
current one has less than ``--next-when-left`` messages still to send, so sending
never waits for a fan-out. The sender allows ``--per-minute`` (4,800: Meta's default
80 msg/s per number); the mock answers after ``--latency-ms`` ± ``--jitter-ms``.

Every second it records, in ``<out>/seconds.jsonl``: the calls the mock accepted
(its ``/stats``, and whether ``/stats`` answered at all), its calls in flight, the
queue's todo and doing jobs, the run database's and the whole server's connections,
every process's RSS, and ``/proc/loadavg``. While no call has been accepted for
``--stall-seconds`` / 2 it snapshots ``pg_stat_activity``, the ungranted locks and
the queue into ``<out>/stall-*.json``. Every minute it prints a progress line
(stdout, flushed): so a run cut short still leaves its figures.

At the end, from the mock's log: the longest gap between two accepted calls (their
arrival times), duplicates (a message id accepted more than once), failures by code
(those of the mock's forced-error numbers are expected, any other is a finding), the
lines of the processes' logs that say Traceback / ERROR / CRITICAL, and processes
that exited. It prints one JSON line and a table, and exits 1 on a duplicate, a
failure of unknown code, a log error, a dead process or a stall over
``--stall-seconds``. The evidence stays in ``--out`` (the processes' logs too on a
failure or with ``--keep-logs``).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import itertools
import json
import os
import random
import re
import shutil
import signal
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere in the checkout
    sys.path.insert(0, str(ROOT))

from bench import _common, engine  # noqa: E402  (needs ROOT on sys.path)

TICK_SECONDS = 1.0
PROGRESS_SECONDS = 60.0
SETTLE_SECONDS = 15.0  # a call's row is in the log by then (latency, group commit)
LOG_PROBLEM = re.compile(rb"Traceback|\bERROR\b|\bCRITICAL\b")
EXCERPT_LINES = 40  # per log, kept in the evidence directory
STALL_SNAPSHOTS = 30  # per stall at most
# A gap that began when the calls of the last LIMIT_WINDOW_SECONDS had reached this
# share of the sender's limit is the limit binding (the limiter holding batches until its
# window frees room), not a stall. The limiter's window is 60 s and counts one 1-s bucket
# more (61 s); arrival times at the mock jitter by the latency's spread, hence 0.95.
LIMIT_WINDOW_SECONDS = 61.0
LIMIT_BOUND_SHARE = 0.95

ACTIVITY = """
SELECT pid, application_name, state, wait_event_type, wait_event,
       round(extract(epoch FROM now() - xact_start)::numeric, 2) AS xact_s,
       round(extract(epoch FROM now() - query_start)::numeric, 2) AS query_s,
       left(query, 300) AS query
  FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()
 ORDER BY xact_start NULLS LAST
"""
WAITING_LOCKS = """
SELECT l.pid, l.locktype, l.mode, l.relation::regclass::text AS relation,
       l.classid, l.objid, pg_blocking_pids(l.pid) AS blocked_by
  FROM pg_locks l WHERE NOT l.granted
"""
QUEUE = """
SELECT queue_name, status::text, count(*),
       round(extract(epoch FROM now() - min(scheduled_at))::numeric, 1) AS oldest_due_s
  FROM procrastinate_jobs WHERE status IN ('todo', 'doing') GROUP BY 1, 2 ORDER BY 1, 2
"""
FAILED = """
SELECT right(phone, 4), coalesce(error_code, '-'), left(coalesce(error_text, ''), 80), count(*)
  FROM messages WHERE status = 'failed' GROUP BY 1, 2, 3 ORDER BY 4 DESC
"""
# What the sender's limit has granted in its window now (read-only, takes no lock).
SENDER_USED = """
SELECT used FROM disparo_rate_limit_usage(
    'whatsapp:' || (SELECT sender_id FROM campaigns ORDER BY id LIMIT 1), %(limit)s, 60000, 0)
"""
SERVER_CONNECTIONS = """
SELECT count(*), (SELECT setting::int FROM pg_settings WHERE name = 'max_connections')
  FROM pg_stat_activity WHERE backend_type = 'client backend'
"""


def expected_failures() -> set[tuple[str, str]]:
    """(last four digits, code) of the mock's forced errors that end in failure."""
    from mocks.whatsapp import FORCED_ERRORS, THROTTLED

    return {
        (suffix, str(error[0])) for suffix, error in FORCED_ERRORS.items() if error != THROTTLED
    }


class SoakStack(engine.Stack):
    """engine.Stack, its mock WhatsApp run with a jittered latency (``serve_mock``)."""

    def start(self, name: str, role: str, argv: list[str]) -> Any:
        if role == "mock":
            port = argv[argv.index("--port") + 1]
            argv = [sys.executable, str(Path(__file__).resolve()), "--serve-mock", port]
            argv += ["--jitter-ms", str(self.args.jitter_ms)]
        return super().start(name, role, argv)


def serve_mock(port: int, jitter_ms: float) -> int:
    """mocks/whatsapp_server.py, each call's latency drawn from latency ± jitter."""
    from mocks import whatsapp_server

    class JitteredMock(whatsapp_server.MockWhatsApp):
        @property
        def latency(self) -> float:
            base = self._base_latency
            return max(0.0, random.uniform(base - jitter_ms / 1000, base + jitter_ms / 1000))

        @latency.setter
        def latency(self, seconds: float) -> None:
            self._base_latency = seconds

    whatsapp_server.MockWhatsApp = JitteredMock  # type: ignore[misc]
    return whatsapp_server.main(["--port", str(port)])


def classify_gaps(arrivals: list[float], threshold: float, per_minute: int) -> dict[str, Any]:
    """The gaps between accepted calls (arrival times) longer than ``threshold``: each
    with the calls accepted in the limiter's window before it began, split into stalls
    and gaps the sender's limit explains (``LIMIT_BOUND_SHARE`` of it or more)."""
    times = sorted(arrivals)
    longest, longest_at = 0.0, None
    stalls, limit_bound = [], []
    for i, (a, b) in enumerate(itertools.pairwise(times)):
        if b - a > longest:
            longest, longest_at = b - a, a
        if b - a > threshold:
            in_window = i + 1 - bisect.bisect_right(times, a - LIMIT_WINDOW_SECONDS)
            gap = {
                "from": time.strftime("%H:%M:%S", time.localtime(a)),
                "seconds": round(b - a, 2),
                "accepted_in_the_window_before": in_window,
            }
            bound = in_window >= LIMIT_BOUND_SHARE * per_minute
            (limit_bound if bound else stalls).append(gap)
    return {
        "longest_gap_s": round(longest, 3),
        "longest_gap_at": longest_at and time.strftime("%H:%M:%S", time.localtime(longest_at)),
        "stalls": stalls,
        "limit_bound_gaps": limit_bound,
    }


@dataclass
class Figures:
    """What the soak has seen so far."""

    arrivals: list[float] = field(default_factory=list)  # mock log received_at, id order
    last_id: int = 0
    message_ids: set[str] = field(default_factory=set)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    log_offsets: dict[str, int] = field(default_factory=dict)
    log_problems: list[dict[str, Any]] = field(default_factory=list)
    stalls: list[dict[str, Any]] = field(default_factory=list)  # live: no /stats progress
    campaigns: list[dict[str, Any]] = field(default_factory=list)
    exited: list[str] = field(default_factory=list)
    maxima: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    rss_first: dict[str, float] = field(default_factory=dict)
    rss_last: dict[str, float] = field(default_factory=dict)
    load: list[float] = field(default_factory=list)
    stats_misses: int = 0


class Soak:
    def __init__(self, args: argparse.Namespace, url: str, stack: engine.Stack, out: Path):
        import psycopg
        import requests

        self.args = args
        self.url = url
        self.stack = stack
        self.out = out
        self.conn = psycopg.connect(url, autocommit=True)
        self.monitor = engine.Monitor(url, stack)
        self.http = requests.Session()
        self.stats_url = stack.extra_env["MOCK_WHATSAPP_URL"].rsplit("/", 1)[0] + "/stats"
        self.figures = Figures()
        self.seconds_file = (out / "seconds.jsonl").open("a")
        self.mock_accepted = 0
        self.last_progress_at = time.monotonic()
        self.accepted_at = time.time()  # the last tick /stats said more were accepted
        self.stall: dict[str, Any] | None = None
        self.owner_id = 0
        self.current: dict[str, Any] | None = None
        self.minute_arrivals = 0

    def close(self) -> None:
        self.seconds_file.close()
        self.monitor.close()
        self.conn.close()

    # -- campaigns, chained
    def next_campaign(self) -> None:
        from campaigns.services.campaigns import send_campaign_now

        campaign_id, owner_id, _segment = engine.create_campaign(self.args.campaign_recipients)
        self.owner_id = owner_id
        send_campaign_now(campaign_id, owner_id)
        self.current = {"id": campaign_id, "sent_at": time.time()}
        self.figures.campaigns.append(self.current)

    def campaign_left(self) -> int | None:
        """Messages of the current campaign not yet sent (None while it fans out)."""
        assert self.current is not None
        _status, loaded, in_flight, _retrying, _total = self.conn.execute(
            engine.CAMPAIGN_STATE, {"id": self.current["id"]}
        ).fetchone()
        if loaded and "loaded_at" not in self.current:
            self.current["loaded_at"] = time.time()
        return int(in_flight) if loaded else None

    # -- every second
    def mock_stats(self) -> dict[str, Any] | None:
        try:
            started = time.monotonic()
            stats = self.http.get(self.stats_url, timeout=2).json()
            stats["answered_ms"] = round((time.monotonic() - started) * 1000, 1)
            return stats
        except Exception:  # the mock not answering is itself a figure
            self.figures.stats_misses += 1
            return None

    def new_arrivals(self) -> int:
        rows = self.conn.execute(
            "SELECT id, extract(epoch FROM received_at)::float8, message_id"
            " FROM mock_whatsapp_messages WHERE id > %s ORDER BY id",
            (self.figures.last_id,),
        ).fetchall()
        figures = self.figures
        for row_id, received, callback in rows:
            # The message, not the call: Disparo tags each call "<id>.<attempt>".
            message_id = None if callback is None else callback.partition(".")[0]
            figures.arrivals.append(received)
            if message_id in figures.message_ids:
                figures.duplicates.append(
                    {"message_id": message_id, "received_at": received, "row_id": row_id}
                )
            figures.message_ids.add(message_id)
        if rows:
            figures.last_id = rows[-1][0]
        return len(rows)

    def rss(self) -> dict[str, float]:
        import psutil

        by_role: dict[str, float] = defaultdict(float)
        for pid, role in self.stack.pids().items():
            with contextlib.suppress(psutil.Error):
                by_role[role] += psutil.Process(pid).memory_info().rss / 2**20
        return {role: round(mb, 1) for role, mb in by_role.items()}

    def tick(self) -> None:
        figures = self.figures
        now = time.time()
        load = [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
        figures.load.append(load[0])
        stats = self.mock_stats()
        accepted = None
        if stats is not None:
            accepted = stats["accepted"] - self.mock_accepted
            self.mock_accepted = stats["accepted"]
            if accepted > 0:
                self.accepted_at = now
        arrived = self.new_arrivals()
        self.minute_arrivals += arrived
        sample = self.monitor.sample()
        (server_connections, max_connections) = self.conn.execute(SERVER_CONNECTIONS).fetchone()
        (sender_used,) = self.conn.execute(SENDER_USED, {"limit": self.args.per_minute}).fetchone()
        rss = self.rss()
        for role, mb in rss.items():
            figures.rss_first.setdefault(role, mb)
            figures.rss_last[role] = mb
            figures.maxima[f"rss_{role}_mb"] = max(figures.maxima[f"rss_{role}_mb"], mb)
        for name, value in (
            ("todo", sample.todo),
            ("doing", sample.doing),
            ("db_connections", sample.connections),
            ("server_connections", server_connections),
            ("idle_in_transaction", sample.idle_in_tx),
            ("load1", load[0]),
            ("mock_in_flight", (stats or {}).get("in_flight", 0)),
        ):
            figures.maxima[name] = max(figures.maxima[name], value)
        record = {
            "t": round(now, 3),
            "accepted": accepted,
            "mock_in_flight": stats and stats["in_flight"],
            "stats_ms": stats and stats["answered_ms"],
            "rows": arrived,
            "todo": sample.todo,
            "doing": sample.doing,
            "db_connections": sample.connections,
            "server_connections": server_connections,
            "max_connections": max_connections,
            "idle_in_transaction": sample.idle_in_tx,
            "load": load,
            "rss_mb": rss,
            "campaign": self.current and self.current["id"],
            "sender_used": sender_used,  # of --per-minute, in the limiter's window now
        }
        self.seconds_file.write(json.dumps(record) + "\n")
        self.watch_stall(now, record)

    def watch_stall(self, now: float, record: dict[str, Any]) -> None:
        """While /stats shows no accepted call for half the threshold: snapshot why."""
        quiet = now - self.accepted_at
        if quiet < self.args.stall_seconds / 2:
            if self.stall is not None:
                self.stall["ended"] = now
                self.stall["seconds"] = round(now - self.stall["since"], 1)
                self.figures.stalls.append(self.stall)
                path = self.out / f"stall-{len(self.figures.stalls)}.json"
                path.write_text(json.dumps(self.stall, indent=1, default=str))
                self.stall = None
            return
        if self.stall is None:
            self.stall = {"since": self.accepted_at, "snapshots": []}
        if len(self.stall["snapshots"]) < STALL_SNAPSHOTS:
            self.stall["snapshots"].append(
                {
                    "t": now,
                    "second": record,
                    "activity": [list(r) for r in self.conn.execute(ACTIVITY)],
                    "waiting_locks": [list(r) for r in self.conn.execute(WAITING_LOCKS)],
                    "queue": [list(r) for r in self.conn.execute(QUEUE)],
                }
            )

    # -- every minute, and at the end
    def scan_logs(self) -> None:
        for path in sorted(self.stack.log_dir.glob("*.log")):
            offset = self.figures.log_offsets.get(path.name, 0)
            with path.open("rb") as log:
                log.seek(offset)
                data = log.read()
            self.figures.log_offsets[path.name] = offset + len(data)
            lines = data.splitlines()
            for i, line in enumerate(lines):
                if LOG_PROBLEM.search(line):
                    self.figures.log_problems.append(
                        {
                            "log": path.name,
                            "at": time.time(),
                            "excerpt": b"\n".join(lines[i : i + EXCERPT_LINES]).decode(
                                errors="replace"
                            ),
                        }
                    )

    def failures(self) -> tuple[dict[str, int], int]:
        expected = expected_failures()
        codes: dict[str, int] = {}
        unknown = 0
        for suffix, code, text, count in self.conn.execute(FAILED):
            known = (suffix, code) in expected
            codes[f"{'' if known else 'UNKNOWN '}…{suffix} {code}: {text}"] = count
            unknown += 0 if known else count
        return codes, unknown

    def progress(self, started: float) -> dict[str, Any]:
        self.scan_logs()
        now = time.time()
        figures = self.figures
        recent = [t for t in figures.arrivals if now - PROGRESS_SECONDS - SETTLE_SECONDS <= t]
        recent = sorted(t for t in recent if t <= now - SETTLE_SECONDS)
        minute_gap = max((b - a for a, b in itertools.pairwise(recent)), default=None)
        settled = [t for t in figures.arrivals if t <= now - SETTLE_SECONDS]
        gaps = classify_gaps(settled, self.args.stall_seconds, self.args.per_minute)
        codes, unknown = self.failures()
        line = {
            "elapsed_s": round(now - started),
            "accepted": len(figures.arrivals),
            "per_s_last_minute": round(len(recent) / PROGRESS_SECONDS, 1),
            "longest_gap_last_minute_s": minute_gap and round(minute_gap, 2),
            "longest_gap_s": gaps["longest_gap_s"],
            "stalls": len(gaps["stalls"]),
            "limit_bound_gaps": len(gaps["limit_bound_gaps"]),
            "live_stalls": len(figures.stalls) + (self.stall is not None),
            "duplicates": len(figures.duplicates),
            "failed_unknown": unknown,
            "failed": sum(codes.values()),
            "log_problems": len(figures.log_problems),
            "campaigns": len(figures.campaigns),
            "load1": figures.load[-1] if figures.load else None,
            "max": {k: round(v, 1) for k, v in figures.maxima.items()},
            "rss_mb": figures.rss_last,
            "stats_misses": figures.stats_misses,
        }
        print("progress " + json.dumps(line), flush=True)
        return line

    def run(self) -> None:
        args = self.args
        started = time.time()
        deadline = time.monotonic() + args.seconds
        self.next_campaign()
        next_progress = time.monotonic() + PROGRESS_SECONDS
        while time.monotonic() < deadline:
            tick_started = time.monotonic()
            try:
                self.stack.check()
            except RuntimeError as error:
                self.figures.exited.append(str(error))
                print(f"bench/soak.py: {error}", file=sys.stderr, flush=True)
                return
            self.tick()
            left = self.campaign_left()
            if left is not None and left < args.next_when_left:
                self.next_campaign()
            if tick_started >= next_progress:
                self.progress(started)
                next_progress += PROGRESS_SECONDS
            time.sleep(max(TICK_SECONDS - (time.monotonic() - tick_started), 0))

    def finish(self, started_wall: float) -> dict[str, Any]:
        """Stop the campaigns, let the calls in flight land, then the figures."""
        from campaigns.services.campaigns import cancel_campaign

        for campaign in self.figures.campaigns:
            with contextlib.suppress(Exception):  # completed ones cannot be cancelled
                cancel_campaign(campaign["id"], self.owner_id)
        time.sleep(min(SETTLE_SECONDS, 3 + self.args.latency_ms / 1000 * 4))
        self.new_arrivals()
        self.scan_logs()
        if self.stall is not None:
            self.watch_stall(time.time() + self.args.stall_seconds, {})  # closes it
        figures = self.figures
        first = min(figures.arrivals, default=started_wall)
        last = max(figures.arrivals, default=started_wall)
        gaps = classify_gaps(figures.arrivals, self.args.stall_seconds, self.args.per_minute)
        codes, unknown = self.failures()
        per_minute = Counter(int((t - first) // 60) for t in figures.arrivals)
        rates = [per_minute[m] / 60 for m in range(int((last - first) // 60))]
        return {
            "seconds": self.args.seconds,
            "setup": self.args.setup,
            "latency_ms": self.args.latency_ms,
            "jitter_ms": self.args.jitter_ms,
            "per_minute_limit": self.args.per_minute,
            "webhooks": self.args.webhooks,
            "campaign_recipients": self.args.campaign_recipients,
            "campaigns": len(figures.campaigns),
            "accepted": len(figures.arrivals),
            "mean_per_s": round(len(figures.arrivals) / (last - first), 1) if last > first else 0,
            "min_minute_per_s": round(min(rates), 1) if rates else None,
            "max_minute_per_s": round(max(rates), 1) if rates else None,
            **gaps,
            "live_stalls": [
                {k: v for k, v in s.items() if k != "snapshots"} for s in figures.stalls
            ],
            "duplicates": len(figures.duplicates),
            "duplicate_examples": figures.duplicates[:10],
            "failed": codes,
            "failed_unknown": unknown,
            "log_problems": len(figures.log_problems),
            "exited": figures.exited,
            "stats_misses": figures.stats_misses,
            "max": {k: round(v, 1) for k, v in figures.maxima.items()},
            "rss_first_mb": figures.rss_first,
            "rss_last_mb": figures.rss_last,
            "load1_mean": round(sum(figures.load) / len(figures.load), 2) if figures.load else None,
            "load1_max": max(figures.load, default=None),
        }


def verdict(result: dict[str, Any], stall_seconds: float) -> list[str]:
    problems = []
    if result["duplicates"]:
        problems.append(f"{result['duplicates']} duplicates")
    if result["failed_unknown"]:
        problems.append(f"{result['failed_unknown']} failures of unknown code")
    if result["stalls"]:
        longest = max(gap["seconds"] for gap in result["stalls"])
        problems.append(
            f"{len(result['stalls'])} stalls over {stall_seconds} s, the longest {longest} s"
        )
    if result["log_problems"]:
        problems.append(f"{result['log_problems']} error lines in the logs")
    if result["exited"]:
        problems.append("a process exited")
    return problems


def table(result: dict[str, Any]) -> str:
    rows = [
        ("accepted", f"{result['accepted']:,} in {result['campaigns']} campaigns"),
        (
            "msg/s mean (slowest, fastest minute)",
            f"{result['mean_per_s']} ({result['min_minute_per_s']}, {result['max_minute_per_s']})",
        ),
        ("longest gap", f"{result['longest_gap_s']} s at {result['longest_gap_at']}"),
        (
            "gaps over threshold: stalls / the limit binding",
            f"{len(result['stalls'])} / {len(result['limit_bound_gaps'])}",
        ),
        ("duplicates", str(result["duplicates"])),
        ("failed (unknown code)", f"{sum(result['failed'].values())} ({result['failed_unknown']})"),
        ("log error lines / exited", f"{result['log_problems']} / {len(result['exited'])}"),
        ("max todo / doing jobs", f"{result['max'].get('todo')} / {result['max'].get('doing')}"),
        (
            "max connections: run db / server",
            f"{result['max'].get('db_connections')} / {result['max'].get('server_connections')}",
        ),
        (
            "RSS MB first -> last",
            ", ".join(
                f"{role} {result['rss_first_mb'][role]} -> {mb}"
                for role, mb in sorted(result["rss_last_mb"].items())
            ),
        ),
        ("load1 mean / max", f"{result['load1_mean']} / {result['load1_max']}"),
        ("/stats misses", str(result["stats_misses"])),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


def report(out: Path, span_seconds: float) -> str:
    """A Markdown table of a soak's seconds (``<out>/seconds.jsonl``), ``span_seconds`` a row.

    Works on a soak still running or cut short: the file grows a line a second. The
    longest quiet run here is in whole ticks of /stats (no accepted call); the exact
    longest gap, from the mock's log, is in the summary at the end.
    """
    seconds = [json.loads(line) for line in (out / "seconds.jsonl").read_text().splitlines()]
    if not seconds:
        return "no seconds recorded yet"
    start = seconds[0]["t"]
    spans: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for second in seconds:
        spans[int((second["t"] - start) // span_seconds)].append(second)
    header = (
        "| minutes | accepted | msg/s | longest quiet (s) | load1 mean / max | max todo / doing"
        " | max connections (run db / server) | RSS MB at the end (messages, ops, web, mock) |"
    )
    rows = [header, "|" + "---|" * (header.count("|") - 1)]
    for index, span in sorted(spans.items()):
        accepted = sum(s["accepted"] or 0 for s in span)
        quiet = longest = 0.0
        for before, second in itertools.pairwise(span):
            quiet = 0.0 if second["accepted"] else quiet + second["t"] - before["t"]
            longest = max(longest, quiet)
        loads = [s["load"][0] for s in span]
        rss = span[-1]["rss_mb"]
        minutes = f"{index * span_seconds / 60:g}-{(index + 1) * span_seconds / 60:g}"
        roles = ("messages", "ops", "web", "mock")
        rows.append(
            f"| {minutes} | {accepted:,} | {accepted / (span[-1]['t'] - span[0]['t'] + 1):.1f}"
            f" | {longest:.1f} | {sum(loads) / len(loads):.1f} / {max(loads):.1f}"
            f" | {max(s['todo'] for s in span)} / {max(s['doing'] for s in span)}"
            f" | {max(s['db_connections'] for s in span)}"
            f" / {max(s['server_connections'] for s in span)}"
            f" | {', '.join(str(rss.get(role, '-')) for role in roles)}"
            " |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3600.0, help="how long to send")
    parser.add_argument("--setup", default="2x5", help="message workers, PxC (plus ops)")
    parser.add_argument("--latency-ms", type=int, default=300)
    parser.add_argument("--jitter-ms", type=float, default=150.0, help="latency ± this, uniform")
    parser.add_argument(
        "--per-minute", type=int, default=4800, help="the sender's limit (4,800: 80 msg/s)"
    )
    parser.add_argument("--campaign-recipients", type=int, default=50_000)
    parser.add_argument(
        "--next-when-left", type=int, default=800, help="send the next campaign below this"
    )
    parser.add_argument("--stall-seconds", type=float, default=5.0)
    parser.add_argument(
        "--no-webhooks", dest="webhooks", action="store_false", help="no status webhooks"
    )
    parser.add_argument("--calls-in-flight", type=int, default=None)
    parser.add_argument("--web-threads", type=int, default=8)
    parser.add_argument("--out", type=Path, help="evidence directory (default: a new one in /tmp)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the logs on success too")
    parser.add_argument(
        "--report", type=Path, metavar="OUT", help="print OUT's seconds as a table, then exit"
    )
    parser.add_argument(
        "--gaps-from",
        type=Path,
        metavar="CSV",
        help="classify the gaps of a mock log dump (arrival epoch seconds first), then exit",
    )
    parser.add_argument("--report-minutes", type=float, default=10.0, help="a row per this")
    parser.add_argument("--serve-mock", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_mock:
        return serve_mock(args.serve_mock, args.jitter_ms)
    if args.report:
        print(report(args.report, args.report_minutes * 60))
        return 0
    if args.gaps_from:
        with args.gaps_from.open() as dump:
            arrivals = [float(row.split(",", 1)[0]) for row in dump if row.strip()]
        print(json.dumps(classify_gaps(arrivals, args.stall_seconds, args.per_minute), indent=1))
        return 0
    # What engine.Stack reads from its arguments.
    args.fanout_recipients = args.campaign_recipients
    out = args.out or Path(f"/tmp/disparo-soak-{time.strftime('%Y%m%d-%H%M%S')}")
    log_dir = out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"bench/soak.py: evidence in {out}", flush=True)
    signal.signal(signal.SIGTERM, engine._interrupt)
    started = time.time()
    with _common.scratch_database(f"disparo_soak_{os.getpid()}") as url:
        engine.seed(url)
        soak_stack = SoakStack(url, log_dir, args)
        with engine.app_on(url):
            try:
                result = soak(args, url, soak_stack, out, started)
            finally:
                soak_stack.stop()
    problems = verdict(result, args.stall_seconds)
    result["problems"] = problems
    (out / "summary.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    print(table(result))
    print(f"bench/soak.py: {'; '.join(problems) or 'clean'}; evidence in {out}", flush=True)
    if not problems and not args.keep_logs:
        shutil.rmtree(log_dir, ignore_errors=True)
    return 1 if problems else 0


def soak(
    args: argparse.Namespace, url: str, stack: engine.Stack, out: Path, started: float
) -> dict[str, Any]:
    """Start the processes, warm the workers, send until the time is up: the figures."""
    _limit_sender(args.per_minute)
    stack.extra_env["MOCK_WHATSAPP_WEBHOOKS"] = "on" if args.webhooks else "off"
    stack.start_web()
    setup = engine.Setup.parse(args.setup)
    stack.start_workers(setup)
    monitor = engine.Monitor(url, stack)
    try:
        engine.warm_workers(monitor, stack, setup)
    finally:
        monitor.close()
    run = Soak(args, url, stack, out)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            run.run()
        return run.finish(started)
    finally:
        run.close()


def _limit_sender(per_minute: int) -> None:
    """The demo sender at ``per_minute`` (no gap); the owner's limit stays lifted."""
    import sqlalchemy as sa

    from app import db
    from campaigns.models import Sender

    db.session.execute(
        sa.update(Sender).values(rate_limit_per_minute=per_minute, min_interval_ms=0)
    )
    db.session.commit()


if __name__ == "__main__":
    sys.exit(main())
