"""The sender's limits and slowdown against a provider that really caps throughput.

    .venv/bin/python bench/throughput.py
    .venv/bin/python bench/throughput.py --recipients 1000 --cap 80 --runs 1,1@80,1.5@100 \\
        --latency-ms 300 --setup 1x5

The stack of ``bench/engine.py`` (its ``Stack``: the mock WhatsApp process, gunicorn,
the Procfile's workers, on a scratch database), the owner's limit lifted. The mock
answers after ``--latency-ms`` and caps each phone number id at ``--cap`` sends a second
(``MOCK_WHATSAPP_THROUGHPUT_CAP``, a sliding window): beyond it, 429 / 130429. Then,
one after the other in the same stack, a campaign of ``--recipients`` per run ``M@R``
of ``--runs``: the sender configured at M x cap x 60 a minute, no minimum gap, Meta
reporting R messages a second (``throughput_per_second``: the per-second limit,
``ratelimit.throughput_limit``; no R: not reported, the per-minute limit alone), its
slowdown and its limiter's keys cleared first. ``1@cap`` is the oracle (configured at
the cap, and Meta saying so); ``1`` is the per-minute limit alone at the cap; ``R``
above the cap is Meta reporting more than the number takes, which only the slowdown
(``campaigns/slowdown.py``) can find out.

For each: the wall time from send-now to ``completed``, msg/s from the messages'
``sent_at`` (overall, and per ``--bucket-seconds`` to show any oscillation), the
130429s the cap gave (the mock's ``GET /stats``), the calls the messages spent
(attempts) beyond one each, failed messages (by code), the sender's throughput factor
sampled every ``--sample-seconds`` (min, final, and each change), the busiest second
the mock accepted, and the ratio of msg/s to the oracle's. Prints one JSON line; the
figures are in ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere in the checkout
    sys.path.insert(0, str(ROOT))

from bench import _common, engine  # noqa: E402  (needs ROOT on sys.path)

# The sender as configured for a run: its rate, no gap, nothing slowed it yet; and its
# limiter key's window forgotten, so one run's grants do not hold back the next.
RESET_SENDER = """
UPDATE senders SET rate_limit_per_minute = %(per_minute)s, min_interval_ms = 0,
       throughput_per_second = %(reported)s,
       slowdown_factor = 1, slowed_at = NULL, last_throttled_at = NULL
 WHERE id = %(id)s
"""
RESET_LIMITER = (
    "DELETE FROM rate_limit_buckets WHERE key LIKE %(key)s",
    "DELETE FROM rate_limit_keys WHERE key LIKE %(key)s",
)
OUTCOMES = """
SELECT count(*) FILTER (WHERE sent_at IS NOT NULL) AS sent,
       extract(epoch FROM min(sent_at))::float8 AS first_sent,
       extract(epoch FROM max(sent_at))::float8 AS last_sent,
       coalesce(sum(attempts), 0) AS attempts, coalesce(sum(tries), 0) AS tries,
       count(*) FILTER (WHERE attempts > 1) AS called_again,
       count(*) FILTER (WHERE status = 'failed') AS failed,
       count(*) FILTER (WHERE status = 'skipped') AS skipped
  FROM messages WHERE campaign_id = %(id)s
"""
FAILED_CODES = """
SELECT coalesce(error_code, '-'), count(*) FROM messages
 WHERE campaign_id = %(id)s AND status = 'failed' GROUP BY 1
"""
SENT_TIMES = """
SELECT extract(epoch FROM sent_at)::float8 FROM messages
 WHERE campaign_id = %(id)s AND sent_at IS NOT NULL ORDER BY sent_at
"""
# What the mock accepted from the sender's number in the run, by arrival (received_at).
ACCEPTED_TIMES = """
SELECT extract(epoch FROM received_at)::float8 FROM mock_whatsapp_messages
 WHERE phone_number_id = %(pnid)s AND received_at >= to_timestamp(%(t0)s)
   AND received_at <= to_timestamp(%(t1)s)
"""


def _mock_stats(base: str) -> dict[str, int]:
    import requests

    response = requests.get(f"{base}/stats", timeout=10)
    response.raise_for_status()
    return response.json()


def _factor(sender_id: int) -> float:
    """The sender's throughput factor now, as the engine reads it (``Sender.throughput_factor``)."""
    import sqlalchemy as sa

    from app import db
    from campaigns.models import Sender

    factor = db.session.scalar(sa.select(Sender.throughput_factor).where(Sender.id == sender_id))
    db.session.rollback()  # a new transaction next time: now() moves on
    return float(factor)


def _accounts_read(conn: Any, timeout: float = 60.0) -> None:
    """Wait for the account reads queued when the senders were connected: one landing in
    the middle of a run would replace the throughput the run set (the mock reports
    1,000 a second)."""
    deadline = time.monotonic() + timeout
    while conn.execute(
        "SELECT count(*) FROM procrastinate_jobs WHERE task_name LIKE 'senders.read_account%%'"
        " AND status IN ('todo', 'doing') AND (scheduled_at IS NULL OR scheduled_at <= now())"
    ).fetchone()[0]:
        assert time.monotonic() < deadline, "the senders' account reads did not finish"
        time.sleep(0.5)


def _per_bucket(times: list[float], t0: float, seconds: float) -> list[float]:
    """msg/s in each ``seconds`` from ``t0`` to the last of ``times``."""
    if not times:
        return []
    counts = Counter(int((t - t0) // seconds) for t in times)
    return [round(counts.get(i, 0) / seconds, 1) for i in range(max(counts) + 1)]


def one_run(
    args: argparse.Namespace,
    conn: Any,
    stack: engine.Stack,
    sender: dict[str, Any],
    multiple: float,
    reported: int | None,
) -> dict[str, Any]:
    from campaigns.services.campaigns import send_campaign_now

    per_minute = round(multiple * args.cap * 60)
    conn.execute(RESET_SENDER, {"per_minute": per_minute, "reported": reported, "id": sender["id"]})
    for statement in RESET_LIMITER:  # its per-minute and per-second keys
        conn.execute(statement, {"key": f"whatsapp:{sender['id']}%"})
    campaign_id, owner_id, _segment = engine.create_campaign(args.recipients)
    mock = stack.mock_api_base_url().removesuffix("/v23.0")
    before = _mock_stats(mock)
    started = time.time()
    send_campaign_now(campaign_id, owner_id)
    samples: list[tuple[float, float]] = []  # (seconds since send-now, factor)
    deadline = time.monotonic() + args.timeout
    checked = 0.0
    while True:
        now = time.monotonic()
        samples.append((round(time.time() - started, 1), round(_factor(sender["id"]), 3)))
        (status,) = conn.execute(
            "SELECT status::text FROM campaigns WHERE id = %s", (campaign_id,)
        ).fetchone()
        if status in engine.FINISHED:
            break
        if now - checked > 1.0:
            stack.check()
            checked = now
        assert now < deadline, f"not finished in {args.timeout} s"
        time.sleep(max(args.sample_seconds - (time.monotonic() - now), 0))
    finished = time.time()
    after = _mock_stats(mock)
    (reported_at_end,) = conn.execute(
        "SELECT throughput_per_second FROM senders WHERE id = %s", (sender["id"],)
    ).fetchone()
    row = conn.execute(OUTCOMES, {"id": campaign_id}).fetchone()
    sent, first_sent, last_sent, attempts, tries, called_again, failed, skipped = row
    failed_codes = dict(conn.execute(FAILED_CODES, {"id": campaign_id}).fetchall())
    sent_times = [t for (t,) in conn.execute(SENT_TIMES, {"id": campaign_id})]
    accepted = Counter(
        int(t)
        for (t,) in conn.execute(
            ACCEPTED_TIMES, {"pnid": sender["phone_number_id"], "t0": started, "t1": finished}
        )
    )
    sending_seconds = max((last_sent or started) - started, 0.001)
    factors = [factor for _, factor in samples]
    changes = [samples[0]] + [
        (t, f) for (_, previous), (t, f) in itertools.pairwise(samples) if f != previous
    ]
    full_seconds = [
        n for second, n in accepted.items() if second not in (min(accepted), max(accepted))
    ]
    return {
        "multiple": multiple,
        "configured_per_minute": per_minute,
        "reported_per_second": reported,
        # What the sender said at the end: an account read from the mock (on connect, or
        # every 15 minutes) during the run would have replaced R with the mock's 1,000.
        "reported_at_end": reported_at_end,
        "status": status,
        "sent": sent,
        "skipped": skipped,
        "wall_seconds": round(finished - started, 1),
        "to_last_sent_seconds": round(sending_seconds, 1),
        "msg_per_s": round(sent / sending_seconds, 1),
        "msg_per_s_first_to_last_sent": (
            round(sent / (last_sent - first_sent), 1)
            if sent > 1 and last_sent > first_sent
            else None
        ),
        "msg_per_s_by_bucket": _per_bucket(sent_times, started, args.bucket_seconds),
        "cap_130429": after["capped"] - before["capped"],
        "mock_refused": after["refused"] - before["refused"],
        "extra_attempts": int(attempts) - sent - int(failed),
        "attempts_minus_tries": int(attempts) - int(tries),
        "messages_called_again": called_again,
        "failed": failed,
        "failed_by_code": failed_codes,
        "factor_min": min(factors),
        "factor_final": factors[-1],
        "factor_changes": changes,
        "mock_busiest_second": max(accepted.values(), default=0),
        "mock_seconds_at_cap": sum(1 for n in full_seconds if n >= args.cap),
        "mock_full_seconds": len(full_seconds),
    }


def run(args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    import psycopg
    import sqlalchemy as sa

    from app import db
    from campaigns.services.templates import default_sender

    setup = engine.Setup.parse(args.setup)
    with (
        _common.scratch_database(f"disparo_bench_throughput_{int(time.time())}") as url,
        engine.running(url, log_dir, args) as stack,
    ):
        stack.extra_env["MOCK_WHATSAPP_THROUGHPUT_CAP"] = str(args.cap)
        engine.seed(url)
        with engine.app_on(url), psycopg.connect(url, autocommit=True) as conn:
            chosen = default_sender()
            sender = {"id": chosen.id, "phone_number_id": chosen.phone_number_id}
            db.session.rollback()
            _campaign_id, _owner_id, segment = engine.create_campaign(args.recipients)
            engine.warm_erp(stack.start_web(), segment)
            stack.start_workers(setup)
            _accounts_read(conn)
            assert stack.env()["MOCK_WHATSAPP_THROUGHPUT_CAP"] == str(args.cap)
            runs = []
            for multiple, reported in args.runs:
                runs.append(one_run(args, conn, stack, sender, multiple, reported))
                print(f"bench/throughput.py: {json.dumps(runs[-1])}", file=sys.stderr)
            db.session.execute(sa.text("SELECT 1"))  # the app's pool is still fine
    # The oracle: configured at the cap, and Meta saying the cap (the per-second limit).
    oracle = next(
        (r for r in runs if r["multiple"] == 1 and r["reported_per_second"] == args.cap),
        runs[0],
    )
    for result in runs:
        result["ratio_to_oracle"] = round(result["msg_per_s"] / oracle["msg_per_s"], 3)
        result["ratio_to_cap"] = round(result["msg_per_s"] / args.cap, 3)
    return {
        "recipients": args.recipients,
        "cap_per_s": args.cap,
        "latency_ms": args.latency_ms,
        "setup": str(setup),
        "runs": runs,
    }


def _runs(text: str) -> list[tuple[float, int | None]]:
    """``M`` or ``M@R``: the sender configured at M x cap a second, and Meta saying it may
    send R a second (``throughput_per_second``; none: not said, the per-minute limit only)."""
    runs = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        multiple, _, reported = part.partition("@")
        try:
            run = (float(multiple), int(reported) if reported else None)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r}: M or M@R, e.g. 1,1@80,1.5@100") from None
        if run[0] <= 0 or (run[1] is not None and run[1] <= 0):
            raise argparse.ArgumentTypeError(f"{part!r}: positive numbers")
        runs.append(run)
    if not runs:
        raise argparse.ArgumentTypeError("at least one run, e.g. 1,1@80,1.5@100")
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=1_000, help="per campaign")
    parser.add_argument("--cap", type=int, default=80, help="the mock's sends per second")
    parser.add_argument(
        "--runs",
        type=_runs,
        default=[(1.0, None), (1.0, 80), (1.5, 100)],
        help="M[@R],...: the sender's rate x cap, and the throughput Meta reports (a second)",
    )
    parser.add_argument("--setup", default="1x5", help="message workers, PxC")
    parser.add_argument("--latency-ms", type=int, default=300, help="the mock's latency")
    parser.add_argument("--sample-seconds", type=float, default=0.5, help="factor sampling")
    parser.add_argument("--bucket-seconds", type=float, default=10.0, help="msg/s series")
    parser.add_argument("--calls-in-flight", type=int, default=0, help="0: the default")
    parser.add_argument("--web-threads", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=600.0, help="per campaign")
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args(argv)
    args.fanout_recipients = args.recipients  # what engine.Stack reads
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    log_dir = Path(tempfile.mkdtemp(prefix="disparo-bench-throughput-"))
    try:
        print(json.dumps(run(args, log_dir)))
    except BaseException:
        print(
            f"bench/throughput.py: stopped; the processes' logs are in {log_dir}", file=sys.stderr
        )
        raise
    if args.keep_logs:
        print(f"bench/throughput.py: the processes' logs are in {log_dir}", file=sys.stderr)
    else:
        shutil.rmtree(log_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
