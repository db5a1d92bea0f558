from __future__ import annotations

from pathlib import Path

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
    "idempotency_keys",
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
        # Only the columns 0010 knows: the model has grown since (0018's account health).
        plain = db.session.execute(
            db.select(Sender.access_token, Sender.app_secret).where(Sender.name == "plain")
        ).one()
        assert tuple(plain) == ("EAAG-token", "app-secret")
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


# Rows as the code before 0014 wrote them: English sentences.
OLD_REASONS = {
    "rate": "Paused: 1500 of the last 2000 messages failed, more than 50 % allowed.",
    "stop": "Paused by WhatsApp's answer 131048: Spam rate limit hit: wait",
    "no code": "Paused by WhatsApp's answer None: unreachable",
    "disabled": "WhatsApp disabled the template (132016).",
    "erp": "The ERP could not give the audience: The ERP failed (500)",
    "odd": "Paused: 3 of the last 010 messages failed, more than 50 % allowed.",
    "pt": "Pausada pela resposta 190 do WhatsApp: token expired",
    "none": None,
}
OLD_DETAILS = [
    ("created", None),
    ("started", "scheduled time reached"),
    ("started", "sent now"),
    ("scheduled", "2026-12-05T13:00:00+00:00"),
    ("created", "duplicated from #12"),
    ("duplicated", "as #13"),
    ("test_sent", "+55119876****"),
    ("retried_failed", "5 messages (130429, 131000, 503, —)"),
    ("data_erased", "retention period reached"),
    ("paused", "Paused: 7 of the last 13 messages failed, more than 50 % allowed."),
    ("failed", "WhatsApp disabled the template (132016)."),
    ("paused", "something an older release wrote"),
    ("started", "enviada agora"),
]
OLD_NOTICES = [
    ("started", "Campaign “Black “Friday”” started sending."),
    ("completed", "Campaign “Pedidos” completed: 1200 sent, 3 failed."),
    (
        "auto_paused",
        "Campaign “Pedidos” was paused: Paused: 7 of the last 13 messages failed,"
        " more than 50 % allowed.",
    ),
    ("auto_paused", "Campaign “Pedidos” was paused: "),
    ("failed", "Campaign “X” failed: The ERP could not give the audience: timeout"),
    ("completed", "Mine finished."),
    ("completed", "Campanha “Natal” concluída: 1200 enviadas, 3 com falha."),
]
OLD_OPT_OUTS = [
    ("+5511900000001", "Replied “PARE”", "opt_out_reply"),
    ("+5511900000002", "Stopped marketing messages", "provider"),
    ("+5511900000003", "131050", "provider"),
    ("+5511900000004", "User requested to stop marketing messages", "provider"),
    ("+5511900000005", "asked by phone", "manual"),
]


def test_0014_reads_old_sentences_into_codes_and_its_downgrade_writes_them_back(
    empty_database_url,
):
    from tests.helpers import demo_campaign_at

    app = make_app(empty_database_url)
    with app.app_context():
        # Today's models write the base rows at the head; then back to the revision before.
        owner_id, base = demo_campaign_at("0014-1")

        with psycopg.connect(empty_database_url) as conn:
            conn.execute("DELETE FROM campaign_activity")
            ids = {}
            for name, reason in OLD_REASONS.items():
                ids[name] = conn.execute(
                    "INSERT INTO campaigns (name, owner_id, sender_id, template_id, status,"
                    " status_reason) SELECT %s, owner_id, sender_id, template_id, 'paused', %s"
                    " FROM campaigns WHERE id = %s RETURNING id",
                    [name, reason, base],
                ).fetchone()[0]
            for action, detail in OLD_DETAILS:
                conn.execute(
                    "INSERT INTO campaign_activity (campaign_id, action, detail)"
                    " VALUES (%s, %s, %s)",
                    [base, action, detail],
                )
            for kind, text in OLD_NOTICES:
                conn.execute(
                    "INSERT INTO notifications (user_id, kind, text) VALUES (%s, %s, %s)",
                    [owner_id, kind, text],
                )
            for phone, reason, source in OLD_OPT_OUTS:
                conn.execute(
                    "INSERT INTO suppressions (phone, reason, source) VALUES (%s, %s, %s)",
                    [phone, reason, source],
                )

        def rows(query: str) -> list[tuple]:
            with psycopg.connect(empty_database_url) as conn:
                return conn.execute(query).fetchall()

        upgrade(revision="0014")
        reasons = dict(
            rows(
                "SELECT name, json_build_array(status_reason_code, status_reason_params)"
                f" FROM campaigns WHERE id <> {base}"
            )
        )
        assert reasons == {
            "rate": ["failure_rate", {"failed": 1500, "n": 2000, "pct": 50}],
            "stop": ["whatsapp_stop", {"code": 131048, "message": "Spam rate limit hit: wait"}],
            "no code": ["whatsapp_stop", {"code": None, "message": "unreachable"}],
            "disabled": ["template_disabled", {}],
            "erp": ["erp_failed", {"message": "The ERP failed (500)"}],
            # "010" is not how the code wrote a count: kept as it was, not misread.
            "odd": ["text", {"text": OLD_REASONS["odd"]}],
            "pt": ["whatsapp_stop", {"code": 190, "message": "token expired"}],
            "none": [None, None],
        }
        assert rows("SELECT detail_code, detail_params FROM campaign_activity ORDER BY id") == [
            (None, None),
            ("scheduled_time_reached", {}),
            ("sent_now", {}),
            ("scheduled_for", {"at": "2026-12-05T13:00:00+00:00"}),
            ("duplicated_from", {"id": 12}),
            ("duplicated_as", {"id": 13}),
            ("test_phone", {"phone": "+55119876****"}),
            ("retried_messages", {"n": 5, "codes": "130429, 131000, 503, —"}),
            ("retention_reached", {}),
            ("failure_rate", {"failed": 7, "n": 13, "pct": 50}),
            ("template_disabled", {}),
            ("text", {"text": "something an older release wrote"}),
            ("sent_now", {}),
        ]
        rate_7_of_13 = {"code": "failure_rate", "params": {"failed": 7, "n": 13, "pct": 50}}
        assert rows("SELECT code, params FROM notifications ORDER BY id") == [
            ("campaign_started", {"name": "Black “Friday”"}),
            ("campaign_completed", {"name": "Pedidos", "sent": 1200, "failed": 3}),
            ("campaign_paused", {"name": "Pedidos", "reason": rate_7_of_13}),
            (
                "campaign_paused",
                {"name": "Pedidos", "reason": {"code": "text", "params": {"text": ""}}},
            ),
            (
                "campaign_failed",
                {"name": "X", "reason": {"code": "erp_failed", "params": {"message": "timeout"}}},
            ),
            ("text", {"text": "Mine finished."}),
            ("campaign_completed", {"name": "Natal", "sent": 1200, "failed": 3}),
        ]
        assert rows("SELECT reason FROM suppressions ORDER BY phone") == [
            ("PARE",),
            ("",),
            ("",),
            ("User requested to stop marketing messages",),
            ("asked by phone",),
        ]
        # And the app words them (here in English). Only the reason's columns: today's
        # model has columns added after 0014 (0027's language_field).
        from sqlalchemy.orm import load_only

        from campaigns.models import Campaign, Notification

        reason_only = [load_only(Campaign.status_reason_code, Campaign.status_reason_params)]
        campaign = db.session.get(Campaign, ids["rate"], options=reason_only)
        assert campaign.status_reason == (
            "Paused: 1,500 of the last 2,000 messages failed, more than 50 % allowed."
        )
        assert db.session.query(Notification).count() == len(OLD_NOTICES)
        # Codes newer than any sentence read above, nested too, go back as English.
        later = db.session.get(Campaign, ids["none"], options=reason_only)
        later.status_reason_code = "erp_audience_failed"
        later.status_reason_params = {"message": {"code": "erp_refused", "params": {"status": 422}}}
        db.session.commit()
        db.session.remove()

        downgrade(revision="0014-1")
        assert rows(f"SELECT status_reason FROM campaigns WHERE id = {ids['none']}") == [
            ("The ERP could not give the audience: The ERP refused the request (422).",)
        ]
        with psycopg.connect(empty_database_url) as conn:  # as it was before
            conn.execute(f"UPDATE campaigns SET status_reason = NULL WHERE id = {ids['none']}")
        # Each as it was; what was read from Portuguese comes back in English.
        assert dict(rows(f"SELECT name, status_reason FROM campaigns WHERE id <> {base}")) == (
            OLD_REASONS | {"pt": "Paused by WhatsApp's answer 190: token expired"}
        )
        assert rows("SELECT action, detail FROM campaign_activity ORDER BY id") == [
            *OLD_DETAILS[:-1],
            ("started", "sent now"),
        ]
        assert rows("SELECT kind, text FROM notifications ORDER BY id") == [
            *OLD_NOTICES[:-1],
            ("completed", "Campaign “Natal” completed: 1200 sent, 3 failed."),
        ]
        assert rows("SELECT phone, reason, source FROM suppressions ORDER BY phone") == [
            OLD_OPT_OUTS[0],
            OLD_OPT_OUTS[1],
            ("+5511900000003", "Stopped marketing messages", "provider"),  # one way of saying it
            OLD_OPT_OUTS[3],
            OLD_OPT_OUTS[4],
        ]
        upgrade()
        db.session.remove()
        db.engine.dispose()


def test_the_0014_downgrade_can_word_every_code_the_app_stores():
    """Every reason code gets English on a downgrade, not its bare name: a code added to
    campaigns/reasons.py needs its line in 0014's LATER too."""
    import importlib.util

    from campaigns import reasons

    path = next(Path(__file__).parent.parent.glob("migrations/versions/*_0014_*.py"))
    spec = importlib.util.spec_from_file_location("migration_0014", path)
    assert spec and spec.loader
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    special = {migration.TEXT, "scheduled_for", "test_phone"}
    unworded = sorted(
        code
        for code in reasons.WORDINGS
        if code not in special and code not in migration.ENGLISH and code not in migration.LATER
    )
    assert unworded == []
