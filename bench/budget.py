"""Benchmark the 24-hour messaging budget's call, with a full day's recipients counted.

Not a test: it measures, on this machine, what bench/README.md records.

    .venv/bin/python bench/budget.py                       # 100,000 counted, 1,000,000 rows
    .venv/bin/python bench/budget.py --counted 10000 --calls 100

In a scratch database (bench/_common.py) it counts ``--counted`` recipients in one
portfolio's window (Meta's 100K tier, spread over the last 23 hours) and as many again in
each of nine other portfolios (a table of a million rows), then times, in the same run:

- the baseline: the rate limiter's call a batch of 100 messages takes anyway
  (``ratelimit.consume`` of a sender's per-minute limit, 100 units);
- the same budget call as first built, counting the window's rows rather than summing
  its minutes (``count(*)`` over the portfolio's recipients in the window: the cost the
  per-minute counts removed);
- the pump's budget call for 100 new recipients while the budget has room
  (``ratelimit.consume_budget``: lock, count the window, find the new ones, insert them);
- the same call once the budget is spent (a campaign waiting for its next wave: it
  counts and refuses);
- the same 100 recipients again (all counted already: free);
- ``ratelimit.budget_usage`` (what the campaign page and the pre-flight check read).

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
from bench.progress import _percentiles, _time  # noqa: E402

PORTFOLIOS = 10
BATCH = 100
COUNT_ROWS_SQL = (
    "SELECT count(*) FROM budget_recipients"
    " WHERE portfolio = 'business:0' AND counted_at > now() - interval '24 hours'"
)


def fill(connection, counted: int) -> None:
    """``counted`` recipients in each portfolio's window, oldest 23 hours ago (on an
    autocommit connection: VACUUM cannot run in a transaction)."""
    import sqlalchemy as sa

    connection.execute(
        sa.text(
            "INSERT INTO budget_recipients (portfolio, phone_hash, counted_at)"
            " SELECT 'business:' || p, md5(p || ':' || n) || md5(n || ':' || p),"
            "        now() - (n * interval '23 hours') / :counted"
            " FROM generate_series(0, :portfolios - 1) AS p,"
            "      generate_series(1, :counted) AS n"
        ),
        {"counted": counted, "portfolios": PORTFOLIOS},
    )
    connection.execute(
        sa.text(
            "INSERT INTO budget_minutes (portfolio, minute, count)"
            " SELECT portfolio, date_trunc('minute', counted_at), count(*)"
            " FROM budget_recipients GROUP BY 1, 2"
        )
    )
    connection.execute(sa.text("VACUUM ANALYZE budget_recipients, budget_minutes"))


def run(counted: int, calls: int) -> dict[str, object]:
    import sqlalchemy as sa

    from app import create_app, db
    from campaigns import ratelimit
    from campaigns.config import sqlalchemy_url

    COUNT_ROWS = sa.text(COUNT_ROWS_SQL)

    with scratch_database(f"disparo_bench_budget_{os.getpid()}") as url:
        app = create_app({"SQLALCHEMY_DATABASE_URI": sqlalchemy_url(url)})
        with app.app_context():
            with db.engine.connect() as connection:
                fill(connection.execution_options(isolation_level="AUTOCOMMIT"), counted)
            roomy = ratelimit.Budget("business:0", counted + calls * BATCH * 2, 0)
            spent = ratelimit.Budget("business:0", counted, 0)
            minute = ratelimit.Limit("whatsapp:1", 10_000_000, 60)
            batches = iter(range(10**9))

            def fresh() -> list[str]:
                n = next(batches)
                return [f"new-{n}-{i}" for i in range(BATCH)]

            again = fresh()
            ratelimit.consume_budget(db.session, roomy, again)
            figures = {
                "baseline_rate_limit_100_units": _time(
                    lambda: ratelimit.consume(db.session, [minute], units=BATCH), calls
                ),
                "budget_100_new": _time(
                    lambda: ratelimit.consume_budget(db.session, roomy, fresh()), calls
                ),
                "budget_100_counted_before": _time(
                    lambda: ratelimit.consume_budget(db.session, roomy, again), calls
                ),
                "budget_spent_refuses_100": _time(
                    lambda: ratelimit.consume_budget(db.session, spent, fresh()), calls
                ),
                "count_window_rows_instead": _time(
                    lambda: (db.session.execute(COUNT_ROWS).scalar_one(), db.session.rollback()),
                    calls,
                ),
                "budget_usage_read": _time(
                    lambda: (ratelimit.budget_usage(db.session, roomy), db.session.rollback()),
                    calls,
                ),
            }
            db.session.remove()
            db.engine.dispose()
    return {
        "counted": counted,
        "rows": counted * PORTFOLIOS,
        "batch": BATCH,
        **{name: _percentiles(samples) for name, samples in figures.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counted", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    result = run(args.counted, args.calls)
    print(json.dumps(result))
    print(f"\n{result['counted']:,} counted in the portfolio, {result['rows']:,} rows in all")
    print(f"{'call':34} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for name, value in result.items():
        if isinstance(value, dict):
            print(f"{name:34} {value['p50_ms']:8.2f} {value['p95_ms']:8.2f} {value['max_ms']:8.2f}")


if __name__ == "__main__":
    main()
