"""Read models for pages, fragments and health checks. No writes here."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import joinedload

from app import db
from campaigns import counters, ratelimit
from campaigns.models import (
    ApiToken,
    Campaign,
    CampaignActivity,
    CampaignCounter,
    CampaignStatus,
    Message,
    MessageStatus,
    MessageTemplate,
    Notification,
    Sender,
    Suppression,
    TemplateCategory,
    TemplateStatus,
    User,
)
from campaigns.providers import errors
from campaigns.sending import pace_seconds

WORKER_HEARTBEAT_SECONDS = 30
# A scheduled campaign's page starts polling this long before it is due.
LIVE_BEFORE_START = timedelta(minutes=5)
# Delivered/read webhooks keep arriving after completion; the page follows them this long.
RECEIPTS_FOLLOW = timedelta(hours=1)


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
    scheduled_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    read_at: datetime | None = None  # the database's now() when these figures were read

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

    @property
    def is_live(self) -> bool:
        """Worth polling: sending, or scheduled to start within LIVE_BEFORE_START."""
        if self.status is CampaignStatus.SENDING:
            return True
        return (
            self.status is CampaignStatus.SCHEDULED
            and self.scheduled_at is not None
            and self.read_at is not None
            and self.scheduled_at - self.read_at <= LIVE_BEFORE_START
        )

    @property
    def elapsed_seconds(self) -> float | None:
        """From the start to completion (or to now while it goes on); None before it starts."""
        if self.started_at is None:
            return None
        end = self.completed_at or self.read_at
        return max(0.0, (end - self.started_at).total_seconds()) if end else None

    @property
    def follows_receipts(self) -> bool:
        """Finished lately: delivered/read webhooks may still arrive (a slower poll shows them)."""
        return (
            self.status is CampaignStatus.COMPLETED
            and self.completed_at is not None
            and self.read_at is not None
            and self.read_at - self.completed_at <= RECEIPTS_FOLLOW
        )

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
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "completed_at": self.completed_at.isoformat() if self.completed_at else None,
            "elapsed_seconds": self.elapsed_seconds,
        }


def get_progress(campaign: Campaign) -> Progress:
    """Counters summed over their shards, plus the last minute's sends."""
    return _progress_of(campaign, *counters.snapshot(db.session, campaign.id))


@dataclass(frozen=True)
class Chart:
    """Sent and failed per minute, oldest first, for the inline SVG chart."""

    minutes: list[sa.Row]

    @property
    def peak(self) -> int:
        return max([1, *(m.sent for m in self.minutes), *(m.failed for m in self.minutes)])


def throughput_chart(progress: Progress) -> Chart:
    """The last hour of the campaign: up to now, or up to its end once it is over."""
    until = progress.completed_at or progress.read_at or database_time()
    return Chart(counters.minutes_of_hour(db.session, progress.campaign_id, until))


def sender_usage(senders: list[Sender]) -> dict[int, object]:
    """Each sender's WhatsApp limit now: used / limit this minute, next slot (nothing consumed)."""
    return {s.id: ratelimit.usage(db.session, ratelimit.whatsapp_limit(s)) for s in senders}


# -- dashboard

# The dashboard's campaigns, in the order shown: sending, then paused, then scheduled.
DASHBOARD_STATUSES = (CampaignStatus.SENDING, CampaignStatus.PAUSED, CampaignStatus.SCHEDULED)
DASHBOARD_CAMPAIGNS = 50
RECENT_NOTIFICATIONS = 10


def _progress_of(
    campaign: Campaign, totals: Mapping[str, int], sent_last_minute: int, read_at: datetime
) -> Progress:
    """A campaign's Progress from figures already read (its sender and owner give the pace)."""
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
        sent_last_minute=sent_last_minute,
        allowed_per_minute=allowed,
        scheduled_at=campaign.scheduled_at,
        started_at=campaign.started_at,
        completed_at=campaign.completed_at,
        read_at=read_at,
    )


@dataclass(frozen=True)
class ActiveCampaign:
    campaign: Campaign
    progress: Progress


@dataclass(frozen=True)
class ActiveCampaigns:
    campaigns: list[ActiveCampaign]
    total: int  # every sending, paused and scheduled campaign, shown or not

    @property
    def any_live(self) -> bool:
        """Worth polling: a campaign is sending, or is about to start."""
        return any(active.progress.is_live for active in self.campaigns)


def active_campaigns(limit: int = DASHBOARD_CAMPAIGNS) -> ActiveCampaigns:
    """Sending, paused and scheduled campaigns with their progress, in two statements.

    However many campaigns there are: one statement reads them (with their sender
    and owner) and their counters summed over the shards, one their last minute.
    """
    totals = (
        sa.select(
            *(
                sa.func.coalesce(sa.func.sum(getattr(CampaignCounter, name)), 0).label(name)
                for name in counters.COLUMNS
            )
        )
        .where(CampaignCounter.campaign_id == Campaign.id)
        .lateral("totals")
    )
    shown_first = sa.case(
        {status: rank for rank, status in enumerate(DASHBOARD_STATUSES)}, value=Campaign.status
    )
    rows = db.session.execute(
        sa.select(
            Campaign,
            *totals.c,
            sa.func.count().over().label("matching"),
            sa.func.now().label("read_at"),
        )
        .outerjoin(totals, sa.true())
        .where(Campaign.status.in_(DASHBOARD_STATUSES))
        .options(joinedload(Campaign.sender), joinedload(Campaign.owner))
        .order_by(shown_first, Campaign.scheduled_at.asc().nulls_last(), Campaign.id)
        .limit(limit)
    ).all()
    if not rows:
        return ActiveCampaigns([], 0)
    last_minute = counters.sent_last_minute(db.session, [row.Campaign.id for row in rows])
    shown = [
        ActiveCampaign(
            row.Campaign,
            _progress_of(row.Campaign, row._mapping, last_minute[row.Campaign.id], row.read_at),
        )
        for row in rows
    ]
    return ActiveCampaigns(shown, rows[0].matching)


@dataclass(frozen=True)
class LimitsNow:
    """Each active sender's WhatsApp limit, and each active campaign owner's, right now."""

    senders: list[tuple[Sender, ratelimit.Usage]]
    owners: list[tuple[User, ratelimit.Usage]]


def limits_now() -> LimitsNow:
    """Used / limit in the current window and the next slot, per sender and per owner."""
    senders = list(
        db.session.scalars(
            sa.select(Sender).where(Sender.is_active.is_(True)).order_by(Sender.name)
        )
    )
    by_sender = sender_usage(senders)
    owners = db.session.scalars(
        sa.select(User)
        .where(
            User.id.in_(sa.select(Campaign.owner_id).where(Campaign.status.in_(DASHBOARD_STATUSES)))
        )
        .order_by(User.email)
    )
    return LimitsNow(
        [(sender, by_sender[sender.id]) for sender in senders],
        [(owner, ratelimit.usage(db.session, ratelimit.campaign_limit(owner))) for owner in owners],
    )


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


# -- recipients of a campaign

RECIPIENTS_PER_PAGE = 50
# customer_data keeps the ERP fields the template's variables use; the first present is the name.
NAME_FIELDS = ("name", "first_name")
RECIPIENT_CSV_COLUMNS = (
    "customer_ref",
    "name",
    "phone",
    "status",
    "error_code",
    "error_message",
    "sent_at",
    "delivered_at",
    "read_at",
    "failed_at",
    "provider_message_id",
)
CSV_FETCH_ROWS = 2000  # rows per round trip of the export's server-side cursor


@dataclass(frozen=True)
class RecipientFilters:
    status: MessageStatus | None = None
    q: str | None = None  # a phone (any digits of it), a customer name or an exact customer ref

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> RecipientFilters:
        return cls(
            status=_member(MessageStatus, args.get("status")),
            q=(args.get("q") or "").strip() or None,
        )


@dataclass(frozen=True)
class RecipientPage:
    messages: list[Message]
    next_after: int | None  # the last id shown, when more rows follow it
    total: int | None  # rows matching the status filter; None with a search (not counted)


def _recipient_name() -> sa.ColumnElement[str]:
    return sa.func.coalesce(*(Message.customer_data[field].astext for field in NAME_FIELDS))


def _recipients_where(campaign_id: int, filters: RecipientFilters) -> list[sa.ColumnElement[bool]]:
    conditions = [Message.campaign_id == campaign_id]
    if filters.status:
        conditions.append(Message.status == filters.status)
    if filters.q:
        matches = [
            _recipient_name().ilike(_containing(filters.q)),
            Message.customer_ref == filters.q,
        ]
        if digits := re.sub(r"\D", "", filters.q):
            # Phones are kept as +<digits>, so "(11) 98765" finds +5511987654321.
            matches.append(Message.phone.contains(digits))
        conditions.append(sa.or_(*matches))
    return conditions


def _rows_in_status(totals: Mapping[str, int], status: MessageStatus | None) -> int:
    """Messages now in ``status``, from the counters (whose sent ⊇ delivered ⊇ read)."""
    if status is None:
        return totals["total"]
    if status is MessageStatus.SENT:
        return totals["sent"] - totals["delivered"]
    if status is MessageStatus.DELIVERED:
        return totals["delivered"] - totals["read"]
    return totals[status.value]


def recipient_page(
    campaign_id: int,
    filters: RecipientFilters,
    after: int | None = None,
    per_page: int = RECIPIENTS_PER_PAGE,
) -> RecipientPage:
    """The campaign's messages after id ``after``, in id order (the order they are sent).

    Keyset, not OFFSET: a deep page costs what the first does, and rows the fan-out
    adds meanwhile (under the campaign's lock, so always with higher ids) neither
    repeat a row nor push one out of view.
    """
    query = (
        sa.select(Message)
        .where(*_recipients_where(campaign_id, filters))
        .order_by(Message.id)
        .limit(per_page + 1)
    )
    if after is not None:
        query = query.where(Message.id > after)
    messages = list(db.session.scalars(query))
    more = len(messages) > per_page
    messages = messages[:per_page]
    total = None
    if not filters.q:  # a search is not counted: "load more" is enough, a count costs a scan
        total = _rows_in_status(counters.totals(db.session, campaign_id), filters.status)
    return RecipientPage(messages, messages[-1].id if more else None, total)


def recipient_csv_rows(campaign_id: int) -> Iterator[sa.Row]:
    """Every message of the campaign as RECIPIENT_CSV_COLUMNS, in id order.

    A server-side cursor hands the rows over CSV_FETCH_ROWS at a time, so a
    million-recipient export never holds more than one batch in memory.
    """
    query = (
        sa.select(
            Message.customer_ref,
            _recipient_name(),
            Message.phone,
            Message.status,
            Message.error_code,
            Message.error_text,
            Message.sent_at,
            Message.delivered_at,
            Message.read_at,
            Message.failed_at,
            Message.provider_message_id,
        )
        .where(Message.campaign_id == campaign_id)
        .order_by(Message.id)
        .execution_options(yield_per=CSV_FETCH_ROWS)
    )
    result = db.session.execute(query)
    try:
        yield from result
    finally:
        result.close()  # also when the download is abandoned half-way


@dataclass(frozen=True)
class ErrorGroup:
    status: MessageStatus  # failed or skipped
    code: str | None
    count: int
    example: str | None  # one of the texts the provider (or the fan-out) gave with this code

    @property
    def explanation(self) -> str:
        return errors.explain(self.code)

    @property
    def retryable(self) -> bool:
        return self.status is MessageStatus.FAILED and errors.is_retryable(self.code)


@dataclass(frozen=True)
class ErrorBreakdown:
    groups: list[ErrorGroup]

    @property
    def retryable(self) -> int:
        """Failed messages whose error may pass: what "retry failed" can send again."""
        return sum(group.count for group in self.groups if group.retryable)


def error_breakdown(campaign_id: int) -> ErrorBreakdown:
    """Failed, then skipped, messages grouped by error code, the most frequent first."""
    count = sa.func.count()
    rows = db.session.execute(
        sa.select(Message.status, Message.error_code, count, sa.func.min(Message.error_text))
        .where(
            Message.campaign_id == campaign_id,
            Message.status.in_([MessageStatus.FAILED, MessageStatus.SKIPPED]),
        )
        .group_by(Message.status, Message.error_code)
        .order_by(Message.status, count.desc(), Message.error_code)
    )
    return ErrorBreakdown([ErrorGroup(*row) for row in rows])
