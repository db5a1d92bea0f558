from __future__ import annotations

from flask_migrate import downgrade

from app import db


def _add_worker(seconds_ago: int) -> None:
    db.session.execute(
        db.text(
            "INSERT INTO procrastinate_workers (last_heartbeat)"
            " VALUES (now() - make_interval(secs => :s))"
        ),
        {"s": seconds_ago},
    )
    db.session.commit()


def test_unhealthy_without_a_live_worker(client):
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json
    assert body["database"] is True
    assert body["migrations_at_head"] is True
    assert body["queue_schema"] is True
    assert body["live_workers"] == 0
    assert body["healthy"] is False


def test_healthy_with_a_live_worker_and_public(client):
    _add_worker(seconds_ago=5)
    response = client.get("/healthz")  # no login needed
    assert response.status_code == 200
    assert response.json["live_workers"] == 1
    assert response.json["healthy"] is True


def test_a_stale_heartbeat_is_not_a_live_worker(client):
    _add_worker(seconds_ago=45)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json["live_workers"] == 0


def test_unhealthy_when_migrations_are_behind(app, client):
    _add_worker(seconds_ago=1)
    db.session.remove()
    downgrade(revision="0001")
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json["migrations_at_head"] is False
    assert response.json["database_revision"] == "0001"
