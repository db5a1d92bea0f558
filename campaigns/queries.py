"""Read models for pages, fragments and health checks. No writes here."""

from __future__ import annotations

import re
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
    Suppression,
    TemplateCategory,
    TemplateStatus,
    User,
)

WORKER_HEARTBEAT_SECONDS = 30


def _containing(text: str) -> str:
    """An ILIKE pattern matching ``text`` anywhere, its own %, _ and \\ taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _paginate(query: sa.Select, page: int, per_page: int) -> tuple[list, int, int, int]:
    """(rows, page, pages, total) for an ordered query; an out-of-range page is clamped."""
    total = db.session.scalar(sa.select(sa.func.count()).select_from(query.subquery())) or 0
    pages = max(1, -(-total // per_page))
    page = min(max(1, page), pages)
    rows = db.session.scalars(query.limit(per_page).offset((page - 1) * per_page))
    return list(rows), page, pages, total


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
        query = query.where(MessageTemplate.name.ilike(_containing(filters.q)))
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
        query = query.where(Campaign.name.ilike(_containing(q)))
    query = query.order_by(Campaign.created_at.desc(), Campaign.id.desc())
    return CampaignPage(*_paginate(query, page, CAMPAIGNS_PER_PAGE))


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


@dataclass(frozen=True)
class SuppressionPage:
    suppressions: list[Suppression]
    page: int
    pages: int
    total: int


SUPPRESSIONS_PER_PAGE = 50


def list_suppressions(q: str | None, page: int = 1) -> SuppressionPage:
    """One page of opt-outs, newest first; ``q`` matches digits of the phone (or the reason)."""
    query = sa.select(Suppression)
    digits = re.sub(r"\D", "", q or "")
    if digits:
        # Phones are stored as +<digits>, so "(11) 98765" finds +5511987654321.
        query = query.where(Suppression.phone.contains(digits))
    elif q and q.strip():
        query = query.where(Suppression.reason.ilike(_containing(q.strip())))
    query = query.order_by(Suppression.created_at.desc(), Suppression.id.desc())
    return SuppressionPage(*_paginate(query, page, SUPPRESSIONS_PER_PAGE))


@dataclass(frozen=True)
class Progress:
    """A campaign's progress from its counters: O(1), whatever its size."""

    campaign_id: int
    status: CampaignStatus
    status_reason: str | None
    total: int
    pending: int
    queued: int
    sending: int
    retrying: int
    sent: int
    delivered: int
    read: int
    failed: int
    skipped: int
    cancelled: int
    sent_last_minute: int
    allowed_per_minute: float

    @property
    def in_flight(self) -> int:
        return self.pending + self.queued + self.sending + self.retrying

    @property
    def done(self) -> int:
        return self.sent + self.failed + self.skipped + self.cancelled

    @property
    def percent_done(self) -> float:
        return 100.0 * self.done / self.total if self.total else 0.0

    @property
    def success_rate(self) -> float | None:
        """Reached sent and did not fail ÷ (those + failed); None before any outcome."""
        outcomes = self.sent + self.failed
        return self.sent / outcomes if outcomes else None

    @property
    def eta_seconds(self) -> float | None:
        """Remaining ÷ min(recent throughput, what the limits allow); None when unknown."""
        rate = min(self.sent_last_minute, self.allowed_per_minute)
        if self.status is not CampaignStatus.SENDING or rate <= 0 or not self.in_flight:
            return None
        return self.in_flight / rate * 60.0

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    def as_dict(self) -> dict[str, object]:
        return {
            "campaign_id": self.campaign_id,
            "status": self.status.value,
            "status_reason": self.status_reason,
            "total": self.total,
            "in_flight": self.in_flight,
            "pending": self.pending,
            "queued": self.queued,
            "sending": self.sending,
            "retrying": self.retrying,
            "sent": self.sent,
            "delivered": self.delivered,
            "read": self.read,
            "failed": self.failed,
            "skipped": self.skipped,
            "cancelled": self.cancelled,
            "success_rate": self.success_rate,
            "sent_last_minute": self.sent_last_minute,
            "eta_seconds": self.eta_seconds,
            "is_finished": self.is_finished,
        }


def get_progress(campaign: Campaign) -> Progress:
    """Counters summed over their shards, plus the last minute's sends."""
    from campaigns import counters
    from campaigns.models import CampaignMinuteStat
    from campaigns.sending import pace_seconds

    totals = counters.totals(db.session, campaign.id)
    last_minute = db.session.scalar(
        sa.select(sa.func.coalesce(sa.func.sum(CampaignMinuteStat.sent), 0)).where(
            CampaignMinuteStat.campaign_id == campaign.id,
            CampaignMinuteStat.minute
            >= sa.func.date_trunc("minute", sa.func.now()) - sa.text("interval '1 minute'"),
        )
    )
    allowed = 60.0 / pace_seconds(campaign.sender, campaign.owner.campaign_rate_limit_per_minute)
    return Progress(
        campaign_id=campaign.id,
        status=campaign.status,
        status_reason=campaign.status_reason,
        total=totals["total"],
        pending=totals["pending"],
        queued=totals["queued"],
        sending=totals["sending"],
        retrying=totals["retrying"],
        sent=totals["sent"],
        delivered=totals["delivered"],
        read=totals["read"],
        failed=totals["failed"],
        skipped=totals["skipped"],
        cancelled=totals["cancelled"],
        sent_last_minute=int(last_minute or 0),
        allowed_per_minute=allowed,
    )


def sender_usage(senders: list[Sender]) -> dict[int, object]:
    """Each sender's WhatsApp limit now: used / limit this minute, next slot (nothing consumed)."""
    from campaigns import ratelimit

    return {s.id: ratelimit.usage(db.session, ratelimit.whatsapp_limit(s)) for s in senders}
