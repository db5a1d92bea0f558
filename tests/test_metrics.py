"""/metrics (Prometheus, read from the database), /livez, /readyz, and docs/alerts.yml."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
import yaml
from flask_migrate import downgrade
from prometheus_client.parser import text_string_to_metric_families

from app import db
from campaigns import campaign_states, fanout, metrics, pump, queues, ratelimit, sending
from campaigns.config import PROJECT_ROOT
from campaigns.models import CampaignStatus, Message, MessageStatus, Role
from campaigns.providers.base import ErrorKind, SendError
from campaigns.services.campaigns import send_campaign_now
from tests.helpers import (
    defer_job,
    demo_campaign,
    jobs,
    make_app,
    message_counts,
    post_webhook,
    register_worker,
    status_webhook,
)

METRICS_TOKEN = "scraper-token-0123456789abcdef-0123456789"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _samples(text: str) -> Samples:
    """Every sample of a scrape by (name, sorted labels); parsing it checks the format."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def _with_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: value for (n, labels), value in samples.items() if n == name}


@pytest.fixture
def scrape(client, app) -> Callable[[], Samples]:
    app.config["METRICS_TOKEN"] = METRICS_TOKEN

    def get() -> Samples:
        response = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert response.status_code == 200, response.data
        assert response.mimetype == "text/plain"
        return _samples(response.get_data(as_text=True))

    return get


# -- who may read it


def test_metrics_need_a_token(client):
    response = client.get("/metrics")
    assert response.status_code == 401
    assert response.json["error"]["code"] == "unauthenticated"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_wrong_token_is_refused(client, app):
    app.config["METRICS_TOKEN"] = METRICS_TOKEN
    for header in (f"Bearer {METRICS_TOKEN}x", "Bearer nope", f"Basic {METRICS_TOKEN}", "Bearer é"):
        response = client.get("/metrics", headers={"Authorization": header})
        assert response.status_code == 401, header
        assert response.json["error"]["code"] == "unauthenticated"


def test_a_token_of_someone_not_an_admin_is_forbidden(client, token_for):
    for role in (r for r in Role if r is not Role.ADMIN):
        response = client.get("/metrics", headers=token_for(role))
        assert response.status_code == 403, role
        assert response.json["error"]["code"] == "forbidden"
        assert "admin" in response.json["error"]["message"].lower()


def test_an_admin_token_reads_them(client, token_for):
    response = client.get("/metrics", headers=token_for(Role.ADMIN))
    assert response.status_code == 200
    samples = _samples(response.get_data(as_text=True))
    assert _value(samples, "disparo_workers_alive") == 0


def test_the_metrics_token_reads_them_and_is_off_when_unset(client, app, scrape):
    assert _value(scrape(), "disparo_messages_last_minute", outcome="sent") == 0
    app.config["METRICS_TOKEN"] = None
    response = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert response.status_code == 401


def test_a_short_metrics_token_stops_the_app(monkeypatch):
    from campaigns.config import ConfigError, load_settings

    monkeypatch.setenv("METRICS_TOKEN", "short")
    with pytest.raises(ConfigError, match="METRICS_TOKEN"):
        load_settings()


# -- what they say


LAST_MINUTE = "date_trunc('minute', now()) - interval '1 minute'"
# Each per-minute table: its key columns besides the minute, and how its figures add up.
MINUTE_TABLES = {
    "campaign_minute_stats": ("campaign_id, shard", "sum(sent), sum(failed)", "sent, failed"),
    "message_failure_minutes": ("campaign_id, error_code, shard", "sum(failed)", "failed"),
    "rate_limit_denial_minutes": ("kind, shard", "sum(units)", "units"),
    "webhook_status_minutes": (
        "shard",
        "sum(statuses), sum(lag_seconds_sum), max(lag_seconds_max), max(last_applied_at)",
        "statuses, lag_seconds_sum, lag_seconds_max, last_applied_at",
    ),
}


def _last_minute() -> None:
    """Move every per-minute row into the last complete minute: a minute has passed (rows
    of two minutes, had the test straddled one, add up)."""
    for table, (keys, sums, values) in MINUTE_TABLES.items():
        db.session.execute(
            sa.text(
                f"WITH gone AS (DELETE FROM {table} RETURNING *)"
                f" INSERT INTO {table} (minute, {keys}, {values})"
                f" SELECT {LAST_MINUTE}, {keys}, {sums} FROM gone GROUP BY {keys}"
            )
        )
    db.session.commit()


def _database_minute() -> datetime:
    return db.session.execute(sa.text("SELECT date_trunc('minute', now())")).scalar_one()


def _scrape_a_minute_later(scrape) -> Samples:
    """Scrape after moving the rows a minute back, within one minute of the database's
    clock (tried again in the rare case the minute turns in between)."""
    for _attempt in range(3):
        before = _database_minute()
        _last_minute()
        samples = scrape()
        if _database_minute() == before:
            return samples
    raise AssertionError("the minute kept turning")


def test_the_figures_match_the_state(app, client, campaign, fake, owner, scrape):
    # A sending campaign: its audience loaded, one window queued, one batch sent with
    # three permanent failures (two codes) among its successes.
    send_campaign_now(campaign.id, owner.id)
    fanout.load_audience(campaign.id, app.config)
    pump.pump(campaign.id)
    batch = next(j["args"] for j in jobs(queues.SEND_TASK) if j["status"] == "todo")
    ids = batch["message_ids"]
    failure = SendError("bad number", ErrorKind.PERMANENT, 131026)
    fake.plan = {ids[0]: [failure], ids[1]: [failure]}
    fake.plan[ids[2]] = [SendError("not allowed", ErrorKind.PERMANENT, 131047)]
    sending.send_batch(campaign.id, ids, app.config, retry_queue=False)

    # A status of one of them, which WhatsApp stamped 30 s ago.
    delivered = ids[3]
    stamped = int(time.time()) - 30
    answer = post_webhook(
        client, status_webhook(f"wamid.{delivered}", "delivered", delivered, ts=stamped)
    )
    assert answer.status_code == 200

    # A second campaign Disparo paused on its own, and a draft.
    paused = demo_campaign(owner.id, name="Paused")
    send_campaign_now(paused.id, owner.id)
    campaign_states.stop_for_code(
        paused.id, None, "", ErrorKind.PAUSE_CAMPAIGN, own_reason="sender_without_access_token"
    )
    demo_campaign(owner.id, name="Draft")

    # Rate-limit refusals: an API user's (1 a minute, asked twice) and a send whose
    # owner's limit (not its sender's) is the one used up.
    api = ratelimit.Limit("api:999", 1, 60)
    assert ratelimit.consume(db.session, [api]).allowed
    assert not ratelimit.consume(db.session, [api]).allowed
    sender_key = ratelimit.Limit("whatsapp:999", 100, 60)
    owner_key = ratelimit.Limit("campaign:999", 2, 60)
    assert (
        ratelimit.consume(db.session, [sender_key, owner_key], units=5, partial=True).granted == 2
    )
    retry = [ratelimit.Limit(f"retry:{n}", 1, 300) for n in (1, 2)]
    ratelimit.consume_each(db.session, retry)
    assert [d.allowed for d in ratelimit.consume_each(db.session, retry)] == [False, False]

    # Jobs: one waiting two minutes past its time, one not due yet; two workers, one silent.
    overdue = datetime.now(UTC) - timedelta(seconds=120)
    defer_job(queues.TEMPLATE_SYNC_TASK, queues.MAINTENANCE_QUEUE, {"template_id": 1}, overdue)
    later = datetime.now(UTC) + timedelta(hours=1)
    defer_job(queues.TEMPLATE_SYNC_TASK, queues.MAINTENANCE_QUEUE, {"template_id": 2}, later)
    alive = register_worker(seconds_since_heartbeat=3)
    silent = register_worker(seconds_since_heartbeat=300)

    samples = _scrape_a_minute_later(scrape)

    # Jobs by queue and status, as the table has them.
    rows = db.session.execute(
        sa.text("SELECT queue_name, status::text, count(*) FROM procrastinate_jobs GROUP BY 1, 2")
    ).all()
    assert rows
    for queue, status, count in rows:
        assert _value(samples, "disparo_jobs", queue=queue, status=status) == count
    assert _value(samples, "disparo_jobs", queue=queues.RETRY_QUEUE, status="todo") == 0
    assert _value(samples, "disparo_jobs_due", queue=queues.MAINTENANCE_QUEUE) == 1
    oldest = _value(
        samples, "disparo_queue_oldest_due_job_age_seconds", queue=queues.MAINTENANCE_QUEUE
    )
    assert 120 <= oldest < 3600
    assert _value(samples, "disparo_queue_oldest_due_job_age_seconds", queue="message-retry") == 0

    # Workers and their heartbeats.
    assert _value(samples, "disparo_workers_alive") == 1
    ages = _with_label(samples, "disparo_worker_heartbeat_age_seconds", "worker_id")
    assert 3 <= ages[str(alive)] < 30
    assert 300 <= ages[str(silent)] < 3600

    # The sending campaign's messages by status, as its rows are; none of the others'.
    by_status = _with_label(samples, "disparo_campaign_messages", "status")
    rows_by_status = message_counts(campaign.id)
    assert by_status == {s.value: rows_by_status.get(s.value, 0) for s in MessageStatus}
    assert by_status["failed"] == 3 and by_status["delivered"] == 1
    shown = {
        dict(labels)["campaign_id"] for (n, labels) in samples if n == "disparo_campaign_messages"
    }
    assert shown == {str(campaign.id)}

    # Campaigns by status and reason.
    assert _value(samples, "disparo_campaigns", status="sending", reason="none") == 1
    assert (
        _value(samples, "disparo_campaigns", status="paused", reason="sender_without_access_token")
        == 1
    )
    assert _value(samples, "disparo_campaigns", status="draft", reason="none") == 1
    assert _value(samples, "disparo_campaigns", status="completed", reason="none") == 0

    # The last complete minute: sends, failures by code, denials by kind, webhooks.
    sent = db.session.scalar(
        sa.select(sa.func.count()).where(
            Message.campaign_id == campaign.id, Message.sent_at.is_not(None)
        )
    )
    assert sent == len(ids) - 3
    outcomes = _with_label(samples, "disparo_messages_last_minute", "outcome")
    assert outcomes == {"sent": sent, "failed": 3}
    failed = _with_label(samples, "disparo_message_failures_by_code_last_minute", "error_code")
    assert failed == {"131026": 2, "131047": 1}
    denied = _with_label(samples, "disparo_rate_limit_denied_last_minute", "kind")
    assert denied == {"api": 1, "budget": 0, "campaign": 3, "retry": 2, "whatsapp": 0}
    assert _value(samples, "disparo_webhook_statuses_last_minute") == 1
    lag = _value(samples, "disparo_webhook_status_lag_mean_seconds")
    assert 30 <= lag < 600
    assert _value(samples, "disparo_webhook_status_lag_max_seconds") == lag
    assert 0 <= _value(samples, "disparo_webhook_last_status_age_seconds") < 600


def test_connections_are_counted_by_process(app, scrape):
    before = _with_label(scrape(), "disparo_database_connections", "process")
    assert before["disparo-worker"] == 0 and before["disparo-ops"] == 0  # none is running
    url = db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, application_name="disparo-worker"):
        during = _with_label(scrape(), "disparo_database_connections", "process")
    assert during["disparo-worker"] == 1
    assert during["disparo-ops"] == 0


def test_a_failing_read_answers_503(client, app, scrape, monkeypatch):
    def broken():
        db.session.execute(sa.text("SELECT * FROM no_such_table"))
        yield from ()

    monkeypatch.setattr(metrics, "_campaigns", broken)
    response = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert response.status_code == 503
    assert response.json["error"]["code"] == "unavailable"
    # The session was rolled back: the next request works.
    assert client.get("/readyz").status_code == 200


def test_old_minutes_are_pruned(app):
    from jobs.tasks import reconcile

    ratelimit.consume(db.session, [ratelimit.Limit("api:1", 1, 60)])
    ratelimit.consume(db.session, [ratelimit.Limit("api:1", 1, 60)])
    counters_rows = (
        "INSERT INTO message_failure_minutes (minute, campaign_id, error_code, shard, failed)"
        " VALUES (now() - interval '2 days', 1, '131026', 0, 5),"
        " (date_trunc('minute', now()), 1, '131026', 0, 1)"
    )
    db.session.execute(sa.text(counters_rows))
    db.session.execute(
        sa.text(
            "INSERT INTO webhook_status_minutes (minute, shard, statuses, last_applied_at)"
            " VALUES (now() - interval '2 days', 0, 1, now() - interval '2 days')"
        )
    )
    db.session.execute(
        sa.text(
            "INSERT INTO rate_limit_denial_minutes (minute, kind, shard, units)"
            " VALUES (now() - interval '2 days', 'api', 0, 1)"
        )
    )
    db.session.commit()
    reconcile(0)
    for table, left in (
        ("message_failure_minutes", 1),
        ("webhook_status_minutes", 0),
        ("rate_limit_denial_minutes", 1),
    ):
        count = db.session.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
        assert count == left, table


# -- the probes


def test_livez_answers_without_a_database():
    app = make_app("postgresql://postgres@127.0.0.1:1/nowhere")
    client = app.test_client()
    response = client.get("/livez")
    assert response.status_code == 200
    assert response.json == {"live": True}
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json["database"] is False and ready.json["ready"] is False


def test_a_scrape_with_an_api_token_answers_503_while_the_database_is_down():
    # The admin's token is looked up in the database: that read fails like the others.
    client = make_app("postgresql://postgres@127.0.0.1:1/nowhere").test_client()
    response = client.get("/metrics", headers={"Authorization": "Bearer some-api-token"})
    assert response.status_code == 503
    assert response.json["error"]["code"] == "unavailable"


def test_readyz_is_public_and_ready_at_head(client):
    response = client.get("/readyz")  # no sign-in, no worker needed
    assert response.status_code == 200
    body = response.json
    assert body["ready"] is True and body["database"] is True
    assert body["database_revision"] == body["code_revision"]
    assert client.get("/healthz").status_code == 503  # no live worker: /healthz unchanged


def test_readyz_is_not_ready_behind_the_head(app, client):
    db.session.remove()
    downgrade(revision="-1")
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json
    assert body["database"] is True and body["migrations_at_head"] is False
    assert body["database_revision"] != body["code_revision"]


# -- the alert rules


def _alert_rules() -> list[dict]:
    rules = yaml.safe_load((PROJECT_ROOT / "docs" / "alerts.yml").read_text())
    return [rule for group in rules["groups"] for rule in group["rules"]]


def test_every_alert_reads_metrics_that_exist(scrape):
    exposed = {family.name for family in text_string_to_metric_families(_exposition(scrape))}
    rules = _alert_rules()
    assert {"DisparoQueueLag", "DisparoNoWorkerAlive", "DisparoFailureSpike"} <= {
        rule["alert"] for rule in rules
    }
    assert any("paused" in rule["expr"] for rule in rules)
    for rule in rules:
        assert rule["annotations"]["summary"] and rule["annotations"]["runbook"]
        used = set(re.findall(r"\bdisparo_[a-z_]+\b", rule["expr"]))
        assert used, rule["alert"]
        assert used <= exposed, (rule["alert"], used - exposed)


def _exposition(scrape) -> str:
    scrape()  # the token and its check
    from prometheus_client import generate_latest

    return generate_latest(metrics.REGISTRY).decode()


def test_every_metric_is_documented(scrape):
    documented = (PROJECT_ROOT / "docs" / "metrics.md").read_text()
    for family in text_string_to_metric_families(_exposition(scrape)):
        assert f"`{family.name}`" in documented, family.name


def test_readme_points_routers_at_readyz():
    assert "/readyz" in Path(PROJECT_ROOT / "README.md").read_text()


def test_campaign_statuses_all_show(scrape):
    statuses = {
        dict(labels)["status"] for (name, labels) in scrape() if name == "disparo_campaigns"
    }
    assert statuses == {status.value for status in CampaignStatus}
