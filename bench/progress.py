"""Benchmark the progress read behind the campaign page on a campaign of a million messages.

Not a test: it measures, on this machine, what bench/README.md records.

    .venv/bin/python bench/progress.py                 # 1,000,000 messages
    .venv/bin/python bench/progress.py --messages 100000 --reads 200

In a scratch database (bench/_common.py) it builds one sending campaign with N message
rows in a realistic mix of states and counters that match them, then times, in the
same run and the same way (perf_counter around one call on a warm session):

- the progress read (``progress.get_progress``: the counter shards and the last minute);
- the baseline the design replaces: ``SELECT status, count(*) FROM messages WHERE
  campaign_id = … GROUP BY status``;
- the hourly chart's read (``progress.throughput_chart``), for completeness;
- the whole fragment over HTTP (``GET /campaigns/<id>/progress``, logged in) from a
  gunicorn web process like the Procfile's.

It prints one JSON line and a table of p50 / p95 / max, then drops the database.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere in the checkout
    sys.path.insert(0, str(ROOT))

from bench._common import scratch_database  # noqa: E402

PASSWORD = "bench password 1"
# The state mix of a campaign two thirds of the way through (fractions of N, in id order).
MIX = (
    ("read", 0.30),
    ("delivered", 0.20),
    ("sent", 0.10),
    ("failed", 0.04),
    ("skipped", 0.02),
    ("queued", 0.001),
    ("pending", None),  # the rest
)


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[max(0, round(0.95 * len(ordered)) - 1)]
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p95_ms": round(p95 * 1000, 3),
        "max_ms": round(ordered[-1] * 1000, 3),
    }


def _time(call: Callable[[], object], times: int) -> list[float]:
    samples = []
    for _ in range(times):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


def build(url: str, messages: int) -> int:
    """One sending campaign with ``messages`` rows, counters and an hour of minute stats."""
    import sqlalchemy as sa

    from app import create_app, db
    from campaigns import counters, message_states
    from campaigns.config import sqlalchemy_url
    from campaigns.models import MessageTemplate, Role
    from campaigns.services.campaigns import create_campaign, template_variables_for
    from campaigns.services.demo import seed_demo
    from campaigns.services.templates import default_sender
    from campaigns.services.users import create_user
    from campaigns.validation import parse_campaign

    app = create_app({"SQLALCHEMY_DATABASE_URI": sqlalchemy_url(url)})
    with app.app_context():
        seed_demo()
        owner = create_user("bench@example.com", PASSWORD, Role.SUPERVISOR)
        sender = default_sender()
        template = db.session.query(MessageTemplate).filter_by(name="promo_weekend").one()
        fields = parse_campaign(
            {
                "name": "A million",
                "sender_id": sender.id,
                "template_id": template.id,
                "segment": {"state": "SP", "opted_in_only": False},
                "variables": {
                    "first_name": {"field": "first_name"},
                    "discount": {"text": "10%"},
                    "city": {"field": "city"},
                    "coupon": {"text": "MILLION"},
                },
            },
            template_variables_for(template.id),
        )
        campaign = create_campaign(fields, owner.id)
        campaign_id = campaign.id
        case, upper = [], 0.0
        for status, share in MIX:
            if share is None:
                case.append(f"ELSE '{status}'")
            else:
                upper += share
                case.append(f"WHEN n <= {int(upper * messages)} THEN '{status}'")
        db.session.execute(
            sa.text(
                "INSERT INTO messages (campaign_id, phone, customer_ref, customer_data, status,"
                " attempts, created_at, updated_at)"
                " SELECT :c, '+55119' || lpad(n::text, 8, '0'), 'C' || n,"
                " jsonb_build_object('first_name', 'Cliente ' || n, 'city', 'São Paulo'),"
                f" (CASE {' '.join(case)} END)::message_status, 1, now(), now()"
                " FROM generate_series(1, :n) AS n"
            ),
            {"c": campaign_id, "n": messages},
        )
        db.session.execute(
            sa.text(
                "UPDATE campaigns SET status = 'sending',"
                " started_at = now() - interval '50 minutes' WHERE id = :c"
            ),
            {"c": campaign_id},
        )
        # Counters as the engine would have kept them, spread over the shards.
        counters.ensure_rows(db.session, campaign_id)
        rows = db.session.execute(
            sa.text(
                "SELECT status::text, count(*) FROM messages WHERE campaign_id = :c GROUP BY 1"
            ),
            {"c": campaign_id},
        ).all()
        for status, count in rows:
            deltas = message_states.counter_deltas(None, _status(status))
            counters.apply(db.session, campaign_id, {k: v * count for k, v in deltas.items()})
        for minute in range(60):
            db.session.execute(
                sa.text(
                    "INSERT INTO campaign_minute_stats (campaign_id, minute, shard, sent, failed)"
                    " SELECT :c, date_trunc('minute', now()) - make_interval(mins => :m), s, 40, 1"
                    " FROM generate_series(0, 7) AS s"
                ),
                {"c": campaign_id, "m": minute},
            )
        db.session.commit()
        db.session.execute(sa.text("ANALYZE"))
        db.session.commit()
        db.engine.dispose()
    return campaign_id


def _status(name: str):
    from campaigns.models import MessageStatus

    return MessageStatus(name)


def in_process(url: str, campaign_id: int, reads: int, counts: int) -> dict[str, object]:
    """The progress read against COUNT(*) … GROUP BY status, on one warm session."""
    import sqlalchemy as sa

    from app import create_app, db
    from campaigns.config import sqlalchemy_url
    from campaigns.models import Campaign
    from campaigns.progress import get_progress, throughput_chart

    app = create_app({"SQLALCHEMY_DATABASE_URI": sqlalchemy_url(url)})
    count_by_status = sa.text(
        "SELECT status, count(*) FROM messages WHERE campaign_id = :c GROUP BY status"
    )
    with app.app_context():
        campaign = db.session.get(Campaign, campaign_id)
        _loaded = (campaign.sender, campaign.owner)  # once, as the view's request loads them

        def progress() -> object:
            result = get_progress(campaign)
            db.session.rollback()  # one read per "request"; the campaign stays loaded
            return result

        def count() -> object:
            result = db.session.execute(count_by_status, {"c": campaign_id}).all()
            db.session.rollback()
            return result

        def chart() -> object:
            result = throughput_chart(get_progress(campaign))
            db.session.rollback()
            return result

        for call in (progress, count, chart):  # warm caches and the connection
            call()
        check = get_progress(campaign)
        counted = dict(db.session.execute(count_by_status, {"c": campaign_id}).all())
        db.session.rollback()
        assert check.total == sum(counted.values()), (check.total, counted)
        results = {
            "progress_read": _percentiles(_time(progress, reads)),
            "count_group_by": _percentiles(_time(count, counts)),
            "chart_read": _percentiles(_time(chart, reads)),
        }
        db.engine.dispose()
    return results


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def over_http(url: str, campaign_id: int, requests_n: int) -> dict[str, object]:
    """The fragment from a gunicorn web process (the Procfile's settings), logged in."""
    import requests

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = os.environ | {"DATABASE_URL": url, "DISPARO_ENV": "development", "APP_BASE_URL": base}
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    web = subprocess.Popen(
        [gunicorn, "--threads", "8", "--bind", f"127.0.0.1:{port}", "app:create_app()"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        session = requests.Session()
        deadline = time.monotonic() + 30
        while True:
            try:
                page = session.get(f"{base}/login", timeout=2)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        login = session.post(
            f"{base}/login",
            data={"email": "bench@example.com", "password": PASSWORD, "csrf_token": token},
            allow_redirects=False,
        )
        assert login.status_code == 303, login.status_code
        fragment = f"{base}/campaigns/{campaign_id}/progress?shown=sending"
        headers = {"HX-Request": "true"}

        def get() -> None:
            response = session.get(fragment, headers=headers, timeout=10)
            assert response.status_code == 200 and "every 2s" in response.text

        for _ in range(20):
            get()
        return {"fragment_http": _percentiles(_time(get, requests_n))}
    finally:
        web.send_signal(signal.SIGTERM)
        web.wait(timeout=30)


def _table(summary: dict) -> str:
    rows = [("read", "p50 ms", "p95 ms", "max ms", "n")]
    for name in ("progress_read", "count_group_by", "chart_read", "fragment_http"):
        r = summary[name]
        rows.append((name, str(r["p50_ms"]), str(r["p95_ms"]), str(r["max_ms"]), str(r["n"])))
    width = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(width[i]) for i, cell in enumerate(row)) for row in rows]
    speedup = summary["speedup_p50"]
    lines.append("")
    lines.append(
        f"progress read vs COUNT(*): {speedup}x faster at p50 (target >= 10x): "
        f"{'met' if speedup >= 10 else 'NOT met'}"
    )
    p95 = summary["fragment_http"]["p95_ms"]
    lines.append(
        f"fragment over HTTP p95: {p95} ms (target <= 20 ms): {'met' if p95 <= 20 else 'NOT met'}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--reads", type=int, default=500, help="progress reads to time")
    parser.add_argument("--counts", type=int, default=30, help="COUNT(*) reads to time")
    parser.add_argument("--requests", type=int, default=500, help="fragment GETs to time")
    args = parser.parse_args(argv)

    with scratch_database(f"disparo_bench_{os.getpid()}") as url:
        started = time.perf_counter()
        campaign_id = build(url, args.messages)
        built = time.perf_counter() - started
        summary: dict[str, object] = {"messages": args.messages, "build_seconds": round(built, 1)}
        summary |= in_process(url, campaign_id, args.reads, args.counts)
        summary |= over_http(url, campaign_id, args.requests)
    summary["speedup_p50"] = round(
        summary["count_group_by"]["p50_ms"] / summary["progress_read"]["p50_ms"], 1
    )
    print(json.dumps(summary))
    print(_table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
