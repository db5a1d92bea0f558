"""Benchmark one /metrics scrape on a database with a sending campaign of a million messages.

Not a test: it measures, on this machine, what docs/metrics.md and bench/README.md record.

    .venv/bin/python bench/metrics.py                  # 1,000,000 messages
    .venv/bin/python bench/metrics.py --messages 100000 --scrapes 50

In a scratch database (bench/_common.py) it builds bench/progress.py's sending campaign
(N message rows in a realistic mix, counters that match them, an hour of minute stats),
then adds what a busy day leaves behind: 10,000 finished message jobs and 100 waiting
ones (the pump's window), a day of per-minute rows in every /metrics table (eight
shards a minute), and five workers. It times the whole scrape (the collector's reads
and the text format: ``generate_latest`` on a warm session) and, as the baseline
the counters replace, ``SELECT status, count(*) FROM messages … GROUP BY status``.
It prints one JSON line and a table of p50 / p95 / max, then drops the database.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere in the checkout
    sys.path.insert(0, str(ROOT))

from bench._common import scratch_database  # noqa: E402
from bench.progress import _percentiles, _time, build  # noqa: E402


def add_history(url: str, campaign_id: int) -> None:
    """Jobs, workers and a day of the per-minute rows /metrics reads one minute of."""
    import sqlalchemy as sa

    from app import create_app, db
    from campaigns.config import sqlalchemy_url

    app = create_app({"SQLALCHEMY_DATABASE_URI": sqlalchemy_url(url)})
    with app.app_context():
        run = db.session.execute
        run(
            sa.text(
                "SELECT procrastinate_defer_jobs_v1(ARRAY("
                " SELECT ROW('campaign-messages', 'messages.send', 0, NULL, NULL,"
                "   jsonb_build_object('campaign_id', :c, 'message_ids', jsonb_build_array(n)),"
                "   now() + make_interval(secs => n * 3 - 20000))::procrastinate_job_to_defer_v1"
                " FROM generate_series(1, 10100) AS n))"
            ),
            {"c": campaign_id},
        )
        # All but the last 100 finished (failed keeps its row; workers delete succeeded).
        run(
            sa.text(
                "UPDATE procrastinate_jobs SET status = 'failed'"
                " WHERE id <= (SELECT min(id) + 9999 FROM procrastinate_jobs)"
            )
        )
        for _ in range(5):
            run(sa.text("SELECT procrastinate_register_worker_v1()"))
        day = (
            "FROM generate_series(0, 1439) AS m, generate_series(0, 7) AS s"
            " CROSS JOIN LATERAL (SELECT date_trunc('minute', now())"
            "   - make_interval(mins => m) AS minute) AS t"
        )
        run(
            sa.text(
                "INSERT INTO message_failure_minutes (minute, campaign_id, error_code, shard,"
                f" failed) SELECT t.minute, :c, code, s, 1 {day}"
                " CROSS JOIN unnest(ARRAY['131026', '131047', '130429']) AS code"
            ),
            {"c": campaign_id},
        )
        run(
            sa.text(
                "INSERT INTO rate_limit_denial_minutes (minute, kind, shard, units)"
                f" SELECT t.minute, kind, s, 2 {day}"
                " CROSS JOIN unnest(ARRAY['whatsapp', 'campaign', 'api', 'retry']) AS kind"
            )
        )
        run(
            sa.text(
                "INSERT INTO webhook_status_minutes (minute, shard, statuses, lag_seconds_sum,"
                f" lag_seconds_max, last_applied_at) SELECT t.minute, s, 40, 80, 5, t.minute {day}"
            )
        )
        # A day of the campaign's own minute stats too (bench/progress.py made an hour).
        run(
            sa.text(
                "INSERT INTO campaign_minute_stats (campaign_id, minute, shard, sent, failed)"
                f" SELECT :c, t.minute, s, 40, 1 {day} ON CONFLICT DO NOTHING"
            ),
            {"c": campaign_id},
        )
        db.session.commit()
        run(sa.text("ANALYZE"))
        db.session.commit()
        db.engine.dispose()


def measure(url: str, campaign_id: int, scrapes: int) -> dict[str, object]:
    import sqlalchemy as sa
    from prometheus_client import generate_latest

    from app import create_app, db
    from campaigns import metrics
    from campaigns.config import sqlalchemy_url

    app = create_app({"SQLALCHEMY_DATABASE_URI": sqlalchemy_url(url)})
    count_by_status = sa.text(
        "SELECT status, count(*) FROM messages WHERE campaign_id = :c GROUP BY status"
    )
    with app.app_context():
        body = generate_latest(metrics.REGISTRY)  # warm the session and the pool

        def count() -> object:
            result = db.session.execute(count_by_status, {"c": campaign_id}).all()
            db.session.rollback()
            return result

        scrape = _percentiles(_time(lambda: generate_latest(metrics.REGISTRY), scrapes))
        baseline = _percentiles(_time(count, max(3, scrapes // 20)))
        db.engine.dispose()
    return {
        "scrape": scrape,
        "count_by_status_baseline": baseline,
        "series": sum(1 for line in body.decode().splitlines() if not line.startswith("#")),
        "bytes": len(body),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--scrapes", type=int, default=100)
    args = parser.parse_args()
    with scratch_database(f"disparo_bench_metrics_{os.getpid()}") as url:
        campaign_id = build(url, args.messages)
        add_history(url, campaign_id)
        result = {"messages": args.messages, **measure(url, campaign_id, args.scrapes)}
    print(json.dumps(result))
    print(f"{'read':<28} {'n':>5} {'p50 ms':>9} {'p95 ms':>9} {'max ms':>9}")
    for name in ("scrape", "count_by_status_baseline"):
        row = result[name]
        assert isinstance(row, dict)
        print(f"{name:<28} {row['n']:>5} {row['p50_ms']:>9} {row['p95_ms']:>9} {row['max_ms']:>9}")


if __name__ == "__main__":
    main()
