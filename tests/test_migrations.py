from __future__ import annotations

import psycopg
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade

from app import db
from tests.helpers import make_app

APP_TABLES = {
    "users",
    "api_tokens",
    "login_attempts",
    "senders",
    "message_templates",
    "campaigns",
    "messages",
    "campaign_counters",
    "campaign_minute_stats",
    "rate_limit_buckets",
    "rate_limit_keys",
    "notifications",
    "campaign_activity",
    "suppressions",
    "audit_events",
}


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {name for (name,) in rows}


def _types(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT typname FROM pg_type WHERE typnamespace = 'public'::regnamespace"
            " AND (typtype = 'e' OR (SELECT relkind FROM pg_class WHERE oid = typrelid) = 'c')"
        ).fetchall()
    return {name for (name,) in rows}


def _ignore_procrastinate(obj, name, type_, reflected, compare_to):
    return not (name or "").startswith("procrastinate")


def test_upgrade_from_empty_creates_app_tables_and_the_queue_schema(empty_database_url):
    app = make_app(empty_database_url)
    with app.app_context():
        upgrade()
        tables = _tables(empty_database_url)
        assert APP_TABLES <= tables
        assert {"procrastinate_jobs", "procrastinate_workers", "procrastinate_events"} <= tables
        with psycopg.connect(empty_database_url) as conn:
            defer_jobs = "procrastinate_defer_jobs_v1(procrastinate_job_to_defer_v1[])"
            assert (
                conn.execute("SELECT to_regprocedure(%s)", [defer_jobs]).fetchone()[0] is not None
            )

        # Autogenerate sees no drift between the models and the migrated schema,
        # and leaves Procrastinate's objects alone.
        with db.engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"include_object": _ignore_procrastinate, "compare_type": True}
            )
            assert compare_metadata(context, db.metadata) == []

        downgrade(revision="base")
        assert _tables(empty_database_url) <= {"alembic_version"}
        assert _types(empty_database_url) == set()

        upgrade()  # and back up again, cleanly
        assert APP_TABLES <= _tables(empty_database_url)
        db.engine.dispose()


def test_0010_encrypts_existing_sender_secrets_and_its_downgrade_decrypts_them(
    empty_database_url,
):
    from campaigns import encryption
    from campaigns.models import Sender

    app = make_app(empty_database_url)
    with app.app_context():
        upgrade(revision="0008")
        with psycopg.connect(empty_database_url) as conn:
            conn.execute(
                "INSERT INTO senders (name, provider, access_token, app_secret) VALUES"
                " ('plain', 'cloud_api', 'EAAG-token', 'app-secret'),"
                " ('none', 'mock', NULL, NULL)"
            )

        def raw() -> dict[str, tuple[str | None, str | None]]:
            with psycopg.connect(empty_database_url) as conn:
                rows = conn.execute("SELECT name, access_token, app_secret FROM senders").fetchall()
            return {name: (token, secret) for name, token, secret in rows}

        upgrade(revision="0010")
        token, secret = raw()["plain"]
        assert token is not None and secret is not None
        assert encryption.decrypt(token) == "EAAG-token" and "EAAG-token" not in token
        assert encryption.decrypt(secret) == "app-secret"
        assert raw()["none"] == (None, None)
        plain = db.session.scalars(db.select(Sender).where(Sender.name == "plain")).one()
        assert (plain.access_token, plain.app_secret) == ("EAAG-token", "app-secret")
        db.session.rollback()

        downgrade(revision="0008")
        assert raw() == {"plain": ("EAAG-token", "app-secret"), "none": (None, None)}

        # A value new code wrote encrypted before the release phase ran is left alone.
        with psycopg.connect(empty_database_url) as conn:
            conn.execute(
                "INSERT INTO senders (name, provider, access_token) VALUES ('new', 'mock', %s)",
                [encryption.encrypt("written-encrypted")],
            )
        upgrade(revision="0010")
        assert encryption.decrypt(raw()["new"][0]) == "written-encrypted"
        assert encryption.decrypt(raw()["plain"][0]) == "EAAG-token"
        db.session.remove()
        db.engine.dispose()
