"""Read models for pages, fragments and health checks. No writes here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cache

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from app import db
from campaigns.models import Campaign, CampaignStatus, MessageTemplate, Sender, TemplateStatus

WORKER_HEARTBEAT_SECONDS = 30


def database_time() -> datetime:
    return db.session.execute(sa.text("SELECT now()")).scalar_one()


@cache
def migrations_head() -> str | None:
    """The newest Alembic revision in ``migrations/`` (read once per process)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from campaigns.config import PROJECT_ROOT

    config = Config()
    config.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    return ScriptDirectory.from_config(config).get_current_head()


@dataclass(frozen=True)
class Health:
    database: bool
    migrations_at_head: bool
    database_revision: str | None
    code_revision: str | None
    queue_schema: bool
    live_workers: int
    error: str | None = None

    @property
    def healthy(self) -> bool:
        return (
            self.database
            and self.migrations_at_head
            and self.queue_schema
            and self.live_workers > 0
        )


def health() -> Health:
    """Is the database reachable, migrated to head, with the queue schema and a live worker?"""
    head = migrations_head()
    try:
        revision = db.session.execute(
            sa.text(
                "SELECT CASE WHEN to_regclass('alembic_version') IS NULL THEN NULL"
                " ELSE (SELECT max(version_num) FROM alembic_version) END"
            )
        ).scalar()
        queue_schema = db.session.execute(
            sa.text("SELECT to_regclass('procrastinate_jobs') IS NOT NULL")
        ).scalar_one()
        workers = 0
        if queue_schema:
            workers = db.session.execute(
                sa.text(
                    "SELECT count(*) FROM procrastinate_workers"
                    " WHERE last_heartbeat > now() - make_interval(secs => :seconds)"
                ),
                {"seconds": WORKER_HEARTBEAT_SECONDS},
            ).scalar_one()
    except SQLAlchemyError as exc:
        db.session.rollback()
        return Health(False, False, None, head, False, 0, error=type(exc).__name__)
    return Health(True, revision == head, revision, head, bool(queue_schema), int(workers))


@dataclass(frozen=True)
class DashboardSummary:
    campaigns_by_status: dict[CampaignStatus, int]
    approved_templates: int
    active_senders: int
    live_workers: int

    @property
    def sending(self) -> int:
        return self.campaigns_by_status.get(CampaignStatus.SENDING, 0)


def dashboard_summary() -> DashboardSummary:
    by_status = dict(
        db.session.execute(
            sa.select(Campaign.status, sa.func.count()).group_by(Campaign.status)
        ).all()
    )
    approved = db.session.scalar(
        sa.select(sa.func.count()).where(MessageTemplate.status == TemplateStatus.APPROVED)
    )
    senders = db.session.scalar(sa.select(sa.func.count()).where(Sender.is_active.is_(True)))
    return DashboardSummary(by_status, approved or 0, senders or 0, health().live_workers)
