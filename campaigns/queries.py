"""Read models for pages, fragments and the health check: lists, lookups, the dashboard's
summary. No writes here; a campaign's progress is in ``progress.py`` and its recipients in
``recipients.py``."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import joinedload

from app import db
from campaigns import encryption, queues
from campaigns.models import (
    ApiToken,
    Campaign,
    CampaignActivity,
    CampaignStatus,
    MessageTemplate,
    Notification,
    Sender,
    Suppression,
    TemplateCategory,
    TemplateStatus,
    User,
)


def containing(text: str) -> str:
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


T = TypeVar("T")


@dataclass(frozen=True)
class KeysetPage(Generic[T]):
    """A page of rows in a list's order and the last row's key when more rows follow it
    (what the API's next cursor holds; campaigns/cursors.py)."""

    rows: list[T]
    next_key: tuple[Any, ...] | None


def keyset_page(
    query: sa.Select,
    key: Sequence[Any],
    *,
    descending: bool,
    after: Sequence[Any] | None,
    limit: int | None,
) -> KeysetPage:
    """``limit`` rows of ``query`` (every row with None) ordered by the ``key`` columns
    (the list's order, ending with the id), starting after the row whose key is ``after``.

    A row comparison, ``(created_at, id) < (…, …)``: PostgreSQL walks an index on the
    key as a range where there is one, and the comparison follows the ORDER BY exactly
    (text by the same collation), so pages neither overlap nor leave gaps.
    """
    query = query.order_by(*(column.desc() if descending else column for column in key))
    if after is not None:
        row, bound = sa.tuple_(*key), sa.tuple_(*after)
        query = query.where(row < bound if descending else row > bound)
    if limit is None:
        return KeysetPage(list(db.session.scalars(query)), None)
    rows = list(db.session.scalars(query.limit(limit + 1)))
    if len(rows) <= limit:
        return KeysetPage(rows, None)
    rows = rows[:limit]
    return KeysetPage(rows, key_of(rows[-1], key))


def key_of(row: Any, key: Sequence[Any]) -> tuple[Any, ...]:
    """The values of the ``key`` columns in a row (the ORM object)."""
    return tuple(getattr(row, column.key) for column in key)


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
    # Stored secrets no configured key opens: DISPARO_ENCRYPTION_KEY replaced, not rotated.
    undecryptable_secrets: int = 0
    error: str | None = None

    @property
    def healthy(self) -> bool:
        return (
            self.database
            and self.migrations_at_head
            and self.queue_schema
            and self.live_workers > 0
            and self.undecryptable_secrets == 0
        )


DATABASE_REVISION = sa.text(
    "SELECT CASE WHEN to_regclass('alembic_version') IS NULL THEN NULL"
    " ELSE (SELECT max(version_num) FROM alembic_version) END"
)


def health() -> Health:
    """Is the database reachable, migrated to head, with the queue schema and a live worker?"""
    head = migrations_head()
    try:
        revision = db.session.execute(DATABASE_REVISION).scalar()
        queue_schema = queues.has_queue_schema(db.session)
        workers = queues.live_workers(db.session) if queue_schema else 0
        locked = encryption.undecryptable_count(db.session.connection()) if revision == head else 0
    except SQLAlchemyError as exc:
        db.session.rollback()
        return Health(False, False, None, head, False, 0, error=type(exc).__name__)
    return Health(True, revision == head, revision, head, queue_schema, workers, locked)


@dataclass(frozen=True)
class Readiness:
    """/readyz: can this process serve requests? The database answers, at the code's schema."""

    database: bool
    migrations_at_head: bool
    database_revision: str | None
    code_revision: str | None
    error: str | None = None

    @property
    def ready(self) -> bool:
        return self.database and self.migrations_at_head


def readiness() -> Readiness:
    """One statement: the database's Alembic revision, compared with the code's head."""
    head = migrations_head()
    try:
        revision = db.session.execute(DATABASE_REVISION).scalar()
    except SQLAlchemyError as exc:
        return Readiness(False, False, None, head, error=type(exc).__name__)
    finally:
        # A probe every few seconds must not keep a pooled connection in a transaction.
        db.session.rollback()
    return Readiness(True, revision == head, revision, head)


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


def enum_member(enum_class, raw: str | None):
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
            status=enum_member(TemplateStatus, args.get("status")),
            language=args.get("language") or None,
            category=enum_member(TemplateCategory, args.get("category")),
            q=(args.get("q") or "").strip() or None,
        )


TEMPLATES_SHOWN = 500  # the list page's (and the API's without a cursor) rows, at most
TEMPLATE_KEY = (MessageTemplate.updated_at, MessageTemplate.id)


def list_templates(filters: TemplateFilters) -> list[MessageTemplate]:
    """Templates matching the list page's filters, newest first."""
    return templates_page(filters, None, TEMPLATES_SHOWN).rows


def templates_page(
    filters: TemplateFilters, after: Sequence[Any] | None, limit: int
) -> KeysetPage[MessageTemplate]:
    """Templates matching the filters, most recently changed first (``updated_at, id``),
    after the key ``after``. An edit moves a template to the front: a walk through the
    pages meanwhile does not see it again where it was."""
    query = sa.select(MessageTemplate)
    if filters.status:
        query = query.where(MessageTemplate.status == filters.status)
    if filters.language:
        query = query.where(MessageTemplate.language == filters.language)
    if filters.category:
        query = query.where(MessageTemplate.category == filters.category)
    if filters.q:
        query = query.where(MessageTemplate.name.ilike(containing(filters.q)))
    return keyset_page(query, TEMPLATE_KEY, descending=True, after=after, limit=limit)


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


SENDER_KEY = (Sender.name, Sender.id)


def list_senders() -> list[Sender]:
    return list(db.session.scalars(sa.select(Sender).order_by(Sender.name)))


def senders_page(after: Sequence[Any] | None, limit: int | None) -> KeysetPage[Sender]:
    """Senders by name (``name, id``; names are unique), after the key ``after``."""
    return keyset_page(sa.select(Sender), SENDER_KEY, descending=False, after=after, limit=limit)


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


CAMPAIGN_KEY = (Campaign.created_at, Campaign.id)


def _campaigns(
    status: CampaignStatus | None, q: str | None, recurrence_of: int | None = None
) -> sa.Select:
    query = sa.select(Campaign)
    if recurrence_of is not None:
        query = query.where(Campaign.recurrence_of_id == recurrence_of)
    if status:
        query = query.where(Campaign.status == status)
    if q:
        query = query.where(Campaign.name.ilike(containing(q)))
    return query


def list_campaigns(
    status: CampaignStatus | None,
    q: str | None,
    page: int = 1,
    *,
    recurrence_of: int | None = None,
) -> CampaignPage:
    """One page of campaigns, newest first, filtered by status and name (and to one
    recurring campaign's runs)."""
    query = _campaigns(status, q, recurrence_of).order_by(
        Campaign.created_at.desc(), Campaign.id.desc()
    )
    return CampaignPage(*_paginate(query, page, CAMPAIGNS_PER_PAGE))


def campaigns_page(
    status: CampaignStatus | None,
    q: str | None,
    after: Sequence[Any] | None,
    limit: int,
    *,
    recurrence_of: int | None = None,
) -> KeysetPage[Campaign]:
    """Campaigns in list_campaigns' order (``created_at, id``, newest first) after ``after``."""
    return keyset_page(
        _campaigns(status, q, recurrence_of),
        CAMPAIGN_KEY,
        descending=True,
        after=after,
        limit=limit,
    )


SERIES_RUNS = 20  # the latest runs a recurring campaign's page lists (the API pages them all)


def series_runs(series_id: int, limit: int = SERIES_RUNS) -> tuple[list[Campaign], int]:
    """A recurring campaign's latest runs, newest first, and how many it has made."""
    runs = db.session.scalars(
        sa.select(Campaign)
        .where(Campaign.recurrence_of_id == series_id)
        .order_by(Campaign.run_number.desc())
        .limit(limit)
    ).all()
    total = db.session.scalar(
        sa.select(sa.func.count()).where(Campaign.recurrence_of_id == series_id)
    )
    return list(runs), total or 0


def next_run_at(campaign: Campaign) -> datetime | None:
    """When a recurring campaign makes its next run: its scheduled time while it repeats
    (scheduled), else none."""
    if campaign.recurrence is None or campaign.status is not CampaignStatus.SCHEDULED:
        return None
    return campaign.scheduled_at


def get_campaign(campaign_id: int) -> Campaign | None:
    """With its sender and owner, which every campaign page and the progress pace need."""
    options = (joinedload(Campaign.sender), joinedload(Campaign.owner))
    return db.session.get(Campaign, campaign_id, options=options)


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


SUPPRESSION_KEY = (Suppression.created_at, Suppression.id)


def _suppressions(q: str | None) -> sa.Select:
    query = sa.select(Suppression)
    digits = re.sub(r"\D", "", q or "")
    if digits:
        # Phones are stored as +<digits>, so "(11) 98765" finds +5511987654321.
        query = query.where(Suppression.phone.contains(digits))
    elif q and q.strip():
        query = query.where(Suppression.reason.ilike(containing(q.strip())))
    return query


def list_suppressions(q: str | None, page: int = 1) -> SuppressionPage:
    """One page of opt-outs, newest first; ``q`` matches digits of the phone (or the reason)."""
    query = _suppressions(q).order_by(Suppression.created_at.desc(), Suppression.id.desc())
    return SuppressionPage(*_paginate(query, page, SUPPRESSIONS_PER_PAGE))


def suppressions_page(
    q: str | None, after: Sequence[Any] | None, limit: int
) -> KeysetPage[Suppression]:
    """Opt-outs in list_suppressions' order (``created_at, id``, newest first) after ``after``."""
    return keyset_page(_suppressions(q), SUPPRESSION_KEY, descending=True, after=after, limit=limit)


def get_suppression(suppression_id: int) -> Suppression | None:
    return db.session.get(Suppression, suppression_id)


RECENT_NOTIFICATIONS = 10


def recent_notifications(
    user_id: int | None, limit: int = RECENT_NOTIFICATIONS
) -> list[tuple[Notification, str]]:
    """The newest notifications with their recipient's email: ``user_id``'s, or everyone's."""
    query = (
        sa.select(Notification, User.email)
        .join(User, User.id == Notification.user_id)
        .order_by(Notification.created_at.desc(), Notification.id.desc())
        .limit(limit)
    )
    if user_id is not None:
        query = query.where(Notification.user_id == user_id)
    return [(notification, email) for notification, email in db.session.execute(query)]


@dataclass(frozen=True)
class UnreadNotifications:
    """A user's unread notifications: how many, and the newest one's id (None when none)."""

    count: int
    newest_id: int | None


NO_UNREAD = UnreadNotifications(0, None)


def unread_notifications(user_id: int) -> UnreadNotifications:
    """The user's own unread notifications, even for an admin: one scan of the
    (user_id, read_at) index."""
    count, newest_id = db.session.execute(
        sa.select(sa.func.count(), sa.func.max(Notification.id)).where(
            Notification.user_id == user_id, Notification.read_at.is_(None)
        )
    ).one()
    return UnreadNotifications(count, newest_id)


@dataclass(frozen=True)
class NotificationPage:
    notifications: list[Notification]
    page: int
    pages: int
    total: int


NOTIFICATIONS_PER_PAGE = 50


def list_notifications(user_id: int, unread_only: bool = False, page: int = 1) -> NotificationPage:
    """One page of the user's own notifications, newest first (only the unread ones if asked)."""
    query = sa.select(Notification).where(Notification.user_id == user_id)
    if unread_only:
        query = query.where(Notification.read_at.is_(None))
    query = query.order_by(Notification.created_at.desc(), Notification.id.desc())
    return NotificationPage(*_paginate(query, page, NOTIFICATIONS_PER_PAGE))


# -- a sender's page: its campaigns and how its sends went lately

SENDER_CAMPAIGNS = 20
SENDER_HEALTH_MINUTES = 60


@dataclass(frozen=True)
class SenderHealth:
    """How a sender's sends went in the last ``minutes``, and its campaigns WhatsApp stopped."""

    minutes: int
    sent: int
    failed: int
    stopped: list[Campaign]  # paused or failed with a reason, newest first

    @property
    def failure_percent(self) -> float | None:
        """The failed share of outcomes in percent; None before any outcome."""
        outcomes = self.sent + self.failed
        return 100.0 * self.failed / outcomes if outcomes else None


def sender_campaigns(sender_id: int, limit: int = SENDER_CAMPAIGNS) -> tuple[list[Campaign], int]:
    """The sender's newest campaigns (with their owner) and how many it has in all."""
    campaigns = list(
        db.session.scalars(
            sa.select(Campaign)
            .where(Campaign.sender_id == sender_id)
            .options(joinedload(Campaign.owner))
            .order_by(Campaign.created_at.desc(), Campaign.id.desc())
            .limit(limit)
        )
    )
    total = db.session.scalar(
        sa.select(sa.func.count()).select_from(Campaign).where(Campaign.sender_id == sender_id)
    )
    return campaigns, int(total or 0)


def sender_health(sender_id: int, minutes: int = SENDER_HEALTH_MINUTES) -> SenderHealth:
    """Sent and failed in the sender's last ``minutes`` (per-minute stats, every campaign of
    it), and its campaigns now paused or failed with a reason."""
    row = db.session.execute(
        sa.text(
            "SELECT coalesce(sum(s.sent), 0)::bigint AS sent,"
            " coalesce(sum(s.failed), 0)::bigint AS failed"
            " FROM campaign_minute_stats s JOIN campaigns c ON c.id = s.campaign_id"
            " WHERE c.sender_id = :sender_id"
            " AND s.minute >= date_trunc('minute', now()) - make_interval(mins => :minutes)"
        ),
        {"sender_id": sender_id, "minutes": minutes},
    ).one()
    stopped = list(
        db.session.scalars(
            sa.select(Campaign)
            .where(
                Campaign.sender_id == sender_id,
                Campaign.status.in_((CampaignStatus.PAUSED, CampaignStatus.FAILED)),
                Campaign.status_reason_code.is_not(None),
            )
            .order_by(Campaign.id.desc())
            .limit(SENDER_CAMPAIGNS)
        )
    )
    return SenderHealth(minutes, int(row.sent), int(row.failed), stopped)
