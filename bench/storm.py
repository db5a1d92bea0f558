"""A provider storm at a high rate: a minute of 429 / 130429 and 5xx mid-campaign.

    .venv/bin/python bench/storm.py
    .venv/bin/python bench/storm.py --recipients 30000 --storm-seconds 60 --throttle 0.5 \\
        --transient 0.2 --latency-ms 100 --setup 1x5

The stack of ``bench/engine.py`` (its ``Stack``: the mock WhatsApp process, gunicorn,
the Procfile's workers, on a scratch database), limits lifted. Once the campaign has
sent for ``--calm-seconds``, the mock process is told to storm (``POST /storm``,
``mocks/whatsapp.py``) for ``--storm-seconds``; the campaign runs on to completion by
itself. Prints one JSON line: msg/s before, during and after the storm (from the
messages' ``sent_at``), the errors the storm gave by code, failed messages by code,
and the tries and attempts the messages spent. The figures are in ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere in the checkout
    sys.path.insert(0, str(ROOT))

from bench import _common, engine  # noqa: E402  (needs ROOT on sys.path)

OUTCOMES = """
SELECT count(*) FILTER (WHERE sent_at >= to_timestamp(%(t0)s) AND sent_at < to_timestamp(%(t1)s))
           AS before,
       count(*) FILTER (WHERE sent_at >= to_timestamp(%(t1)s) AND sent_at < to_timestamp(%(t2)s))
           AS during,
       count(*) FILTER (WHERE sent_at >= to_timestamp(%(t2)s)) AS after,
       extract(epoch FROM max(sent_at))::float8 AS last_sent,
       sum(attempts) AS attempts, sum(tries) AS tries, max(tries) AS max_tries,
       count(*) FILTER (WHERE attempts > 1) AS called_again,
       count(*) FILTER (WHERE status = 'failed') AS failed
  FROM messages WHERE campaign_id = %(id)s
"""
FAILED_CODES = """
SELECT coalesce(error_code, '-'), count(*) FROM messages
 WHERE campaign_id = %(id)s AND status = 'failed' GROUP BY 1
"""


def run(args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    import psycopg
    import requests

    from campaigns.services.campaigns import send_campaign_now

    setup = engine.Setup.parse(args.setup)
    with (
        _common.scratch_database(f"disparo_bench_storm_{int(time.time())}") as url,
        engine.running(url, log_dir, args) as stack,
    ):
        engine.seed(url)
        with engine.app_on(url), psycopg.connect(url, autocommit=True) as conn:
            campaign_id, owner_id, segment = engine.create_campaign(args.recipients)
            engine.warm_erp(stack.start_web(), segment)
            stack.start_workers(setup)
            mock = stack.mock_api_base_url().removesuffix("/v23.0")
            send_campaign_now(campaign_id, owner_id)

            def sent() -> int:
                (n,) = conn.execute(
                    "SELECT count(*) FROM messages WHERE campaign_id = %s AND sent_at IS NOT NULL",
                    (campaign_id,),
                ).fetchone()
                return n

            deadline = time.monotonic() + args.timeout
            while sent() == 0:  # the first send starts the calm period
                stack.check()
                assert time.monotonic() < deadline, "nothing sent"
                time.sleep(0.1)
            time.sleep(args.calm_seconds)  # the calm period is the measurement itself
            storm = {
                "seconds": args.storm_seconds,
                "throttle": args.throttle,
                "transient": args.transient,
            }
            storm_at = time.time()
            response = requests.post(f"{mock}/storm", json=storm, timeout=10)
            response.raise_for_status()
            while True:
                stack.check()
                (status,) = conn.execute(
                    "SELECT status::text FROM campaigns WHERE id = %s", (campaign_id,)
                ).fetchone()
                if status in engine.FINISHED:
                    break
                assert time.monotonic() < deadline, f"not finished in {args.timeout} s"
                time.sleep(0.5)
            given = requests.get(f"{mock}/storm", timeout=10).json()["given"]
            t1, t2 = storm_at, storm_at + args.storm_seconds
            row = conn.execute(
                OUTCOMES, {"t0": t1 - args.calm_seconds, "t1": t1, "t2": t2, "id": campaign_id}
            ).fetchone()
            before, during, after, last_sent, attempts, tries, max_tries, again, failed = row
            failed_codes = dict(conn.execute(FAILED_CODES, {"id": campaign_id}).fetchall())
    after_seconds = max(last_sent - t2, 0.001)
    return {
        "recipients": args.recipients,
        "setup": str(setup),
        "latency_ms": args.latency_ms,
        "storm": storm,
        "status": status,
        "msg_per_s": {
            "before": round(before / args.calm_seconds, 1),
            "during": round(during / args.storm_seconds, 1),
            "after": round(after / after_seconds, 1),
        },
        "after_seconds": round(after_seconds, 1),
        "storm_errors_by_code": given,
        "failed": failed,
        "failed_by_code": failed_codes,
        "attempts": int(attempts),
        "tries": int(tries),
        "max_tries": max_tries,
        "messages_called_again": again,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=30_000)
    parser.add_argument("--setup", default="1x5", help="message workers, PxC")
    parser.add_argument("--latency-ms", type=int, default=100, help="the mock's latency")
    parser.add_argument("--calm-seconds", type=float, default=15.0, help="sending before")
    parser.add_argument("--storm-seconds", type=float, default=60.0)
    parser.add_argument("--throttle", type=float, default=0.5, help="share of 429 / 130429")
    parser.add_argument("--transient", type=float, default=0.2, help="share of 500 / 503")
    parser.add_argument("--calls-in-flight", type=int, default=0, help="0: the default")
    parser.add_argument("--web-threads", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args(argv)
    args.fanout_recipients = args.recipients  # what engine.Stack reads
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    log_dir = Path(tempfile.mkdtemp(prefix="disparo-bench-storm-"))
    try:
        print(json.dumps(run(args, log_dir)))
    except BaseException:
        print(f"bench/storm.py: stopped; the processes' logs are in {log_dir}", file=sys.stderr)
        raise
    if args.keep_logs:
        print(f"bench/storm.py: the processes' logs are in {log_dir}", file=sys.stderr)
    else:
        shutil.rmtree(log_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
