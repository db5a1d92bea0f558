"""Read models for pages, fragments and health checks. No writes here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from app import db
from campaigns.models import (
    ApiToken,
    Campaign,
    CampaignActivity,
    CampaignStatus,
    MessageTemplate,
    Sender,
    TemplateCategory,
    TemplateStatus,
    User,
)

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


def _member(enum_class, raw: str | None):
    """An enum member from a query-string value; an unknown value filters nothing."""
    try:
        return enum_class(raw) if raw else None
    except ValueError:
        return None


@dataclass(frozen=True)
class TemplateFilters:
    status: TemplateStatus | None = None
    language: str | None = None
    category: TemplateCategory | None = None
    q: str | None = None

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> TemplateFilters:
        """The filters of a list page or API query string."""
        return cls(
            status=_member(TemplateStatus, args.get("status")),
            language=args.get("language") or None,
            category=_member(TemplateCategory, args.get("category")),
            q=(args.get("q") or "").strip() or None,
        )


def list_templates(filters: TemplateFilters) -> list[MessageTemplate]:
    """Templates matching the list page's filters, newest first."""
    query = sa.select(MessageTemplate).order_by(
        MessageTemplate.updated_at.desc(), MessageTemplate.id.desc()
    )
    if filters.status:
        query = query.where(MessageTemplate.status == filters.status)
    if filters.language:
        query = query.where(MessageTemplate.language == filters.language)
    if filters.category:
        query = query.where(MessageTemplate.category == filters.category)
    if filters.q:
        escaped = filters.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(MessageTemplate.name.ilike(f"%{escaped}%"))
    return list(db.session.scalars(query.limit(500)))


def template_languages() -> list[str]:
    return list(
        db.session.scalars(
            sa.select(MessageTemplate.language).distinct().order_by(MessageTemplate.language)
        )
    )


def get_template(template_id: int) -> MessageTemplate | None:
    return db.session.get(MessageTemplate, template_id)


def approved_templates() -> list[MessageTemplate]:
    return list(
        db.session.scalars(
            sa.select(MessageTemplate)
            .where(MessageTemplate.status == TemplateStatus.APPROVED)
            .order_by(MessageTemplate.name, MessageTemplate.language)
        )
    )


def list_senders() -> list[Sender]:
    return list(db.session.scalars(sa.select(Sender).order_by(Sender.name)))


def get_sender(sender_id: int) -> Sender | None:
    return db.session.get(Sender, sender_id)


def list_users() -> list[User]:
    return list(db.session.scalars(sa.select(User).order_by(User.email)))


def get_user(user_id: int) -> User | None:
    return db.session.get(User, user_id)


def api_tokens_of(user_id: int) -> list[ApiToken]:
    return list(
        db.session.scalars(
            sa.select(ApiToken)
            .where(ApiToken.user_id == user_id)
            .order_by(ApiToken.created_at.desc())
        )
    )


@dataclass(frozen=True)
class CampaignPage:
    campaigns: list[Campaign]
    page: int
    pages: int
    total: int

    @property
    def any_live(self) -> bool:
        return any(
            c.status in (CampaignStatus.SENDING, CampaignStatus.SCHEDULED) for c in self.campaigns
        )


CAMPAIGNS_PER_PAGE = 20


def list_campaigns(status: CampaignStatus | None, q: str | None, page: int = 1) -> CampaignPage:
    """One page of campaigns, newest first, filtered by status and name."""
    query = sa.select(Campaign)
    if status:
        query = query.where(Campaign.status == status)
    if q:
        escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(Campaign.name.ilike(f"%{escaped}%"))
    total = db.session.scalar(sa.select(sa.func.count()).select_from(query.subquery())) or 0
    pages = max(1, -(-total // CAMPAIGNS_PER_PAGE))
    page = min(max(1, page), pages)
    rows = db.session.scalars(
        query.order_by(Campaign.created_at.desc(), Campaign.id.desc())
        .limit(CAMPAIGNS_PER_PAGE)
        .offset((page - 1) * CAMPAIGNS_PER_PAGE)
    )
    return CampaignPage(list(rows), page, pages, total)


def get_campaign(campaign_id: int) -> Campaign | None:
    return db.session.get(Campaign, campaign_id)


def campaign_activity(campaign_id: int) -> list[CampaignActivity]:
    return list(
        db.session.scalars(
            sa.select(CampaignActivity)
            .where(CampaignActivity.campaign_id == campaign_id)
            .order_by(CampaignActivity.created_at.desc(), CampaignActivity.id.desc())
        )
    )
