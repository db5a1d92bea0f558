"""Benchmark the contact history's calls: the pump's admission and the fan-out's check.

Not a test: it measures, on this machine, what bench/README.md records.

    .venv/bin/python bench/contact_history.py                  # 1,000,000 rows
    .venv/bin/python bench/contact_history.py --rows 100000 --calls 50

In a scratch database (bench/_common.py) it fills ``contact_history`` with ``--rows``
numbers contacted over the last 90 days, then times, each a transaction rolled back (so
every call sees the same table):

- the pump's admission of a run's new recipients, 100 and 1,000 numbers the history has
  never seen (``contact_history.capped`` then ``record``, capped at 7 days: the numbers'
  lock rows upserted, the history read, all recorded);
- the same for 100 numbers contacted by another campaign a day ago (all refused);
- the same for 100 numbers contacted 30 days ago (past the cap: all recorded);
- the fan-out's check of a 1,000-customer page (``contacted_within``).

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


def _phones(prefix: int, n: int) -> list[str]:
    return [f"+55{prefix:02d}9{i:08d}" for i in range(n)]


def run(rows: int, calls: int) -> dict[str, object]:
    import sqlalchemy as sa

    from app import create_app, db
    from campaigns import contact_history
    from campaigns.config import sqlalchemy_url
    from campaigns.services.suppressions import phone_hash

    with scratch_database(f"disparo_bench_contacts_{os.getpid()}") as url:
        app = create_app({"SQLALCHEMY_DATABASE_URI": sqlalchemy_url(url)})
        with app.app_context():
            recent, old = _phones(11, 100), _phones(12, 100)
            with db.engine.connect() as raw:
                connection = raw.execution_options(isolation_level="AUTOCOMMIT")
                connection.execute(
                    sa.text(
                        "INSERT INTO contact_history (phone_hash, contacted_at, campaign_id)"
                        " SELECT md5(n::text) || md5((n + 1)::text),"
                        "        now() - (n * interval '90 days') / :rows, 1 + n % 50"
                        " FROM generate_series(1, :rows) AS n"
                    ),
                    {"rows": rows},
                )
                for phones, age in ((recent, "1 day"), (old, "30 days")):
                    connection.execute(
                        sa.text(
                            "INSERT INTO contact_history (phone_hash, contacted_at, campaign_id)"
                            " SELECT h, now() - CAST(:age AS interval), 999"
                            " FROM unnest(CAST(:hashes AS text[])) AS h"
                        ),
                        {"hashes": [phone_hash(p) for p in phones], "age": age},
                    )
                connection.execute(sa.text("VACUUM ANALYZE contact_history"))
            runs = iter(range(10**9))

            def admit(phones: list[str]) -> None:
                ids = dict(enumerate(phones))
                refused = contact_history.capped(db.session, 1000, 7, ids)
                admitted = {i: p for i, p in ids.items() if i not in refused}
                contact_history.record(db.session, 1000, admitted)
                db.session.rollback()

            def new(n: int) -> list[str]:
                return _phones(20 + next(runs) % 70, n)

            page = _phones(13, 1000)
            figures = {
                "admit_100_new": _time(lambda: admit(new(100)), calls),
                "admit_1000_new": _time(lambda: admit(new(1000)), calls),
                "admit_100_refused": _time(lambda: admit(recent), calls),
                "admit_100_past_the_cap": _time(lambda: admit(old), calls),
                "fan_out_check_1000": _time(
                    lambda: (
                        contact_history.contacted_within(db.session, page, 7, 1000),
                        db.session.rollback(),
                    ),
                    calls,
                ),
            }
            db.session.remove()
            db.engine.dispose()
    return {
        "rows": rows,
        **{name: _percentiles(samples) for name, samples in figures.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--calls", type=int, default=100)
    args = parser.parse_args()
    result = run(args.rows, args.calls)
    print(json.dumps(result))
    print(f"\n{result['rows']:,} rows in the contact history")
    print(f"{'call':28} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for name, value in result.items():
        if isinstance(value, dict):
            print(f"{name:28} {value['p50_ms']:8.2f} {value['p95_ms']:8.2f} {value['max_ms']:8.2f}")


if __name__ == "__main__":
    main()
