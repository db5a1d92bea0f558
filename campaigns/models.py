"""ORM models: SQLAlchemy 2 typed mappings on Postgres enums. No queue calls, no URLs."""

from __future__ import annotations

import enum
from copy import deepcopy
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from flask_login import UserMixin
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, column_property, mapped_column, relationship

from app import Model
from campaigns import reasons, slowdown
from campaigns.encryption import EncryptedText


def pg_enum(enum_class: type[enum.Enum], name: str) -> sa.Enum:
    """A Postgres enum that stores the members' lowercase values, not their names."""
    return sa.Enum(
        enum_class,
        name=name,
        values_callable=lambda members: [member.value for member in members],
        validate_strings=True,
    )


def width(column: sa.ColumnElement[Any]) -> int:
    """A text column's width (``width(LoginAttempt.__table__.c.email)``): what a check
    that must agree with the table reads, rather than repeating the number."""
    length = getattr(column.type, "length", None)
    if not isinstance(length, int):
        raise TypeError(f"{column} has no width")
    return length


def created_at_column() -> Mapped[datetime]:
    return mapped_column(sa.DateTime(timezone=True), server_default=sa.func.now())


class Role(enum.StrEnum):
    """Cumulative roles: each one can do everything the ones before it can."""

    VIEWER = "viewer"
    SUPERVISOR = "supervisor"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def includes(self, other: Role) -> bool:
        return self.rank >= other.rank


class Provider(enum.StrEnum):
    MOCK = "mock"
    CLOUD_API = "cloud_api"


class TemplateCategory(enum.StrEnum):
    MARKETING = "MARKETING"
    UTILITY = "UTILITY"
    AUTHENTICATION = "AUTHENTICATION"


class ParameterFormat(enum.StrEnum):
    NAMED = "named"
    POSITIONAL = "positional"


class TemplateStatus(enum.StrEnum):
    DRAFT = "draft"
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    PAUSED = "paused"
    DISABLED = "disabled"


class TemplateQuality(enum.StrEnum):
    """A template's quality as WhatsApp rates it (``message_template_quality_update``)."""

    GREEN = "GREEN"
    YELLOW = "YELLOW"
    RED = "RED"
    UNKNOWN = "UNKNOWN"


class CampaignStatus(enum.StrEnum):
    DRAFT = "draft"
    SCHEDULED = "scheduled"
    SENDING = "sending"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"

    @property
    def is_finished(self) -> bool:
        return self in FINISHED_CAMPAIGN_STATUSES


FINISHED_CAMPAIGN_STATUSES = frozenset(
    {CampaignStatus.COMPLETED, CampaignStatus.CANCELLED, CampaignStatus.FAILED}
)


class MessageStatus(enum.StrEnum):
    """pending → queued → sending → sent → delivered → read; the transitions: message_states.py."""

    PENDING = "pending"
    QUEUED = "queued"
    SENDING = "sending"
    RETRYING = "retrying"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


IN_FLIGHT_MESSAGE_STATUSES = frozenset(
    {MessageStatus.PENDING, MessageStatus.QUEUED, MessageStatus.SENDING, MessageStatus.RETRYING}
)


class User(UserMixin, Model):
    __tablename__ = "users"
    __table_args__ = (sa.Index("users_email_key", sa.func.lower(sa.text("email")), unique=True),)

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(320))
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    role: Mapped[Role] = mapped_column(pg_enum(Role, "user_role"), default=Role.VIEWER)
    is_disabled: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    campaign_rate_limit_per_minute: Mapped[int] = mapped_column(default=100, server_default="100")
    api_rate_limit_per_minute: Mapped[int] = mapped_column(default=1000, server_default="1000")
    created_at: Mapped[datetime] = created_at_column()
    last_login_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    # Part of every session's user id (see get_id): bumping it ends every session.
    session_version: Mapped[int] = mapped_column(default=0, server_default="0")
    # The user's own choices (campaigns/i18n.py); NULL until they choose: the browser's
    # Accept-Language picks the language, DISPLAY_TIMEZONE the time zone.
    locale: Mapped[str | None] = mapped_column(sa.String(10))
    timezone: Mapped[str | None] = mapped_column(sa.String(64))

    api_tokens: Mapped[list[ApiToken]] = relationship(back_populates="user")

    @property
    def is_active(self) -> bool:  # Flask-Login refuses inactive users at login and on load
        return not self.is_disabled

    def get_id(self) -> str:
        """The id Flask-Login keeps in the session and the remember-me cookie: with the
        session version, so a bump (sign-out, new password, new role, disabled) ends
        every session and cookie issued before it (campaigns/auth.py checks it)."""
        return f"{self.id}:{self.session_version}"

    def can(self, role: Role) -> bool:
        return self.role.includes(role)

    def __repr__(self) -> str:
        return f"<User {self.id} {self.email} {self.role}>"


class ApiToken(Model):
    """A bearer token for the JSON API; only its SHA-256 is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    # Tokens are long random values, so a fast hash is enough and keeps API calls fast.
    token_sha256: Mapped[str] = mapped_column(sa.String(64), unique=True)
    prefix: Mapped[str] = mapped_column(sa.String(16))
    created_at: Mapped[datetime] = created_at_column()
    last_used_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))

    user: Mapped[User] = relationship(back_populates="api_tokens")

    def __repr__(self) -> str:
        return f"<ApiToken {self.id} {self.prefix}… user={self.user_id}>"


class LoginAttempt(Model):
    """Each checked sign-in, kept 30 days to slow guessing per account and per address."""

    __tablename__ = "login_attempts"
    __table_args__ = (
        sa.Index("login_attempts_email_at_idx", "email", "attempted_at"),
        sa.Index("login_attempts_ip_at_idx", "ip_address", "attempted_at"),
        sa.Index("login_attempts_attempted_at_idx", "attempted_at"),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(320))
    ip_address: Mapped[str] = mapped_column(sa.String(45))
    succeeded: Mapped[bool]
    attempted_at: Mapped[datetime] = created_at_column()


class Sender(Model):
    """A WhatsApp instance: one phone number of a business account."""

    __tablename__ = "senders"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100), unique=True)
    provider: Mapped[Provider] = mapped_column(pg_enum(Provider, "sender_provider"))
    phone_number_id: Mapped[str | None] = mapped_column(sa.String(64))
    display_phone_number: Mapped[str | None] = mapped_column(sa.String(32))
    waba_id: Mapped[str | None] = mapped_column(sa.String(64))
    # Secrets stay server-side: encrypted at rest (DISPARO_ENCRYPTION_KEY), read back as
    # plaintext, never rendered back, never logged (see __repr__).
    access_token: Mapped[str | None] = mapped_column(EncryptedText)
    app_secret: Mapped[str | None] = mapped_column(EncryptedText)
    webhook_verify_token: Mapped[str | None] = mapped_column(sa.String(255))
    rate_limit_per_minute: Mapped[int] = mapped_column(default=20, server_default="20")
    # The least time between two messages of this sender (the source's 1 s gap).
    min_interval_ms: Mapped[int] = mapped_column(default=1000, server_default="1000")
    is_active: Mapped[bool] = mapped_column(default=True, server_default=sa.true())
    created_at: Mapped[datetime] = created_at_column()
    # The business portfolio; Meta sets the messaging limit per portfolio (a sender
    # without one is its own). The rest is what Meta says (campaigns/account_health.py).
    business_id: Mapped[str | None] = mapped_column(sa.String(64))
    quality_rating: Mapped[str | None] = mapped_column(sa.String(16))
    # Unique users per moving 24 h; None: unlimited. The effective value: Meta's, or an
    # admin's override until Meta reports a value other than messaging_limit_reported.
    messaging_limit: Mapped[int | None] = mapped_column(sa.BigInteger)
    messaging_limit_reported: Mapped[str | None] = mapped_column(sa.String(32))
    messaging_limit_overridden: Mapped[bool] = mapped_column(
        default=False, server_default=sa.false()
    )
    throughput_per_second: Mapped[int | None]
    account_read_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    # When the event that set each fact happened (a webhook's time, a read's): an older
    # one arriving late is ignored (migration 0021). The limit's is the portfolio's.
    quality_rating_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    throughput_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    messaging_limit_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    # WhatsApp's throughput error (130429) slows the sender (campaigns/slowdown.py): the
    # share of its rate as of the last such error, the last step down, the last error.
    slowdown_factor: Mapped[float] = mapped_column(sa.Float, default=1.0, server_default="1")
    slowed_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    last_throttled_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    # The share of its rate the sender sends at now, recovery included: computed by
    # Postgres when the row is read, with its clock (the limiter and pump use it).
    throughput_factor: Mapped[float] = column_property(
        slowdown.factor_now(slowdown_factor, last_throttled_at)
    )

    __table_args__ = (
        sa.CheckConstraint("rate_limit_per_minute BETWEEN 1 AND 1000000", name="rate_limit_range"),
        sa.CheckConstraint("min_interval_ms BETWEEN 0 AND 3600000", name="min_interval_range"),
        sa.CheckConstraint(
            "slowdown_factor > 0 AND slowdown_factor <= 1", name="slowdown_factor_range"
        ),
        sa.Index("senders_business_id_idx", "business_id"),
    )

    def __repr__(self) -> str:
        return f"<Sender {self.id} {self.name} {self.provider}>"


class HeaderFormat(enum.StrEnum):
    """The kinds of header Meta allows a template (its HEADER component's ``format``)."""

    TEXT = "TEXT"
    IMAGE = "IMAGE"
    VIDEO = "VIDEO"
    DOCUMENT = "DOCUMENT"
    LOCATION = "LOCATION"

    @property
    def is_media(self) -> bool:
        return self in (HeaderFormat.IMAGE, HeaderFormat.VIDEO, HeaderFormat.DOCUMENT)


class MediaFile(Model):
    """A file uploaded for a media header, kept in Postgres in chunks (media_file_chunks):
    the store the web process and the workers share on any deploy (campaigns/media.py)."""

    __tablename__ = "media_files"
    __table_args__ = (
        sa.CheckConstraint("kind IN ('IMAGE', 'VIDEO', 'DOCUMENT')", name="kind"),
        sa.CheckConstraint("size >= 0", name="size"),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(16))  # a media HeaderFormat
    filename: Mapped[str] = mapped_column(sa.String(255))
    content_type: Mapped[str] = mapped_column(sa.String(127))
    size: Mapped[int] = mapped_column(sa.BigInteger)
    sha256: Mapped[str] = mapped_column(sa.String(64))
    created_by_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id"))
    created_at: Mapped[datetime] = created_at_column()

    def __repr__(self) -> str:
        return f"<MediaFile {self.id} {self.kind} {self.size}>"


class MediaFileChunk(Model):
    """One piece of a media file, at most media.CHUNK_BYTES, in order of ``seq``."""

    __tablename__ = "media_file_chunks"

    media_file_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("media_files.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(primary_key=True)
    data: Mapped[bytes] = mapped_column(sa.LargeBinary)


class MediaUpload(Model):
    """The media id WhatsApp's Media API gave a file for a sender, reused until it ages."""

    __tablename__ = "media_uploads"

    media_file_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("media_files.id", ondelete="CASCADE"), primary_key=True
    )
    sender_id: Mapped[int] = mapped_column(
        sa.ForeignKey("senders.id", ondelete="CASCADE"), primary_key=True
    )
    provider_media_id: Mapped[str] = mapped_column(sa.String(128))
    uploaded_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), server_default=sa.func.now()
    )


class AudienceFile(Model):
    """An uploaded CSV audience (campaigns/audiences.py): its header and facts; its rows
    are ``audience_rows``. Personal data: deleted unused a day after upload, with its
    campaigns' data by the retention, and a person's rows on their erasure."""

    __tablename__ = "audience_files"

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(255))  # the uploaded file's name
    columns: Mapped[list[str]] = mapped_column(ARRAY(sa.Text))  # the header, in order
    row_count: Mapped[int] = mapped_column()
    size_bytes: Mapped[int] = mapped_column(sa.BigInteger)
    delimiter: Mapped[str] = mapped_column(sa.String(1))
    encoding: Mapped[str] = mapped_column(sa.String(16))  # as read: utf-8, utf-16, cp1252, latin-1
    uploaded_by_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id"))
    created_at: Mapped[datetime] = created_at_column()

    def __repr__(self) -> str:
        return f"<AudienceFile {self.id} {self.row_count} rows>"


class AudienceRow(Model):
    """One data row of an audience file: its cells in the header's order. The row number
    (1 for the first row after the header) is its messages' customer ref."""

    __tablename__ = "audience_rows"

    file_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("audience_files.id", ondelete="CASCADE"), primary_key=True
    )
    row_number: Mapped[int] = mapped_column(primary_key=True)
    cells: Mapped[list[str]] = mapped_column(ARRAY(sa.Text))
    # The last eight digits of each cell with at least eight (audiences.phone_tails): what
    # a person's erasure looks their number up by, through the GIN index.
    phone_tails: Mapped[list[int]] = mapped_column(ARRAY(sa.Integer))

    __table_args__ = (
        sa.Index("audience_rows_phone_tails_idx", "phone_tails", postgresql_using="gin"),
    )


class MessageTemplate(Model):
    """A WhatsApp message template as Meta knows it, with its approval status."""

    __tablename__ = "message_templates"
    __table_args__ = (
        sa.UniqueConstraint("sender_id", "name", "language", name="message_templates_name_key"),
        sa.Index("message_templates_status_idx", "status"),
        sa.CheckConstraint(
            "quality_rating IN ('GREEN', 'YELLOW', 'RED', 'UNKNOWN')",
            name="quality_rating",
        ),
        sa.CheckConstraint(
            "header_format IN ('TEXT', 'IMAGE', 'VIDEO', 'DOCUMENT', 'LOCATION')",
            name="header_format",
        ),
        sa.Index(
            "message_templates_header_media_file_idx",
            "header_media_file_id",
            postgresql_where=sa.text("header_media_file_id IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    sender_id: Mapped[int] = mapped_column(sa.ForeignKey("senders.id", ondelete="RESTRICT"))
    name: Mapped[str] = mapped_column(sa.String(512))
    language: Mapped[str] = mapped_column(sa.String(16))
    category: Mapped[TemplateCategory] = mapped_column(
        pg_enum(TemplateCategory, "template_category")
    )
    parameter_format: Mapped[ParameterFormat] = mapped_column(
        pg_enum(ParameterFormat, "template_parameter_format"), default=ParameterFormat.NAMED
    )
    # The header (campaigns/template_parts.py): none, or its format and what it shows: a
    # text (with at most one variable), media by a public link or an uploaded file, or a
    # location ({latitude, longitude, name, address}).
    header_format: Mapped[str | None] = mapped_column(sa.String(16))
    header_text: Mapped[str | None] = mapped_column(sa.String(60))
    header_media_link: Mapped[str | None] = mapped_column(sa.Text)
    header_media_file_id: Mapped[int | None] = mapped_column(
        sa.BigInteger, sa.ForeignKey("media_files.id", ondelete="RESTRICT")
    )
    header_location: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    body_text: Mapped[str] = mapped_column(sa.String(1024))
    footer_text: Mapped[str | None] = mapped_column(sa.String(60))
    buttons: Mapped[list[dict[str, Any]]] = mapped_column(
        JSONB, default=list, server_default=sa.text("'[]'::jsonb")
    )
    status: Mapped[TemplateStatus] = mapped_column(
        pg_enum(TemplateStatus, "template_status"), default=TemplateStatus.DRAFT
    )
    # Meta's own reason for a rejection ("INVALID_FORMAT"), kept as the provider gave it;
    # Disparo writes nothing here but NULL.
    status_reason: Mapped[str | None] = mapped_column(sa.Text)
    provider_template_id: Mapped[str | None] = mapped_column(sa.String(64))
    # A TemplateQuality value from WhatsApp's last quality webhook; NULL until one arrives.
    quality_rating: Mapped[str | None] = mapped_column(sa.String(16))
    created_by_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id"))
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), server_default=sa.func.now(), onupdate=sa.func.now()
    )
    submitted_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    # The time of the webhook that last set the status, quality and category: an older
    # one arriving late is ignored (template_webhooks.py, migration 0021).
    status_event_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    quality_event_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    category_event_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))

    sender: Mapped[Sender] = relationship()
    header_media_file: Mapped[MediaFile | None] = relationship()

    def __repr__(self) -> str:
        return f"<MessageTemplate {self.id} {self.name}/{self.language} {self.status}>"


class Campaign(Model):
    __tablename__ = "campaigns"
    __table_args__ = (
        sa.Index("campaigns_status_idx", "status"),
        sa.Index("campaigns_owner_idx", "owner_id"),
        # Which campaigns use a file (its deletion when unused, or with their data).
        sa.Index("campaigns_audience_file_idx", "audience_file_id"),
        # The scheduler's claim: due scheduled campaigns, oldest first.
        sa.Index(
            "campaigns_due_idx",
            "scheduled_at",
            postgresql_where=sa.text("status = 'scheduled'"),
        ),
        # A recurring campaign's runs, one per number (two ticks never make one twice), and
        # in order through this index (migration 0032).
        sa.UniqueConstraint("recurrence_of_id", "run_number", name="campaigns_run_number_key"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    owner_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"))
    sender_id: Mapped[int] = mapped_column(sa.ForeignKey("senders.id"))
    template_id: Mapped[int] = mapped_column(sa.ForeignKey("message_templates.id"))
    # ERP segment criteria and template variable → customer field/fixed text.
    segment: Mapped[dict[str, Any]] = mapped_column(
        JSONB, default=dict, server_default=sa.text("'{}'::jsonb")
    )
    variable_mapping: Mapped[dict[str, Any]] = mapped_column(
        JSONB, default=dict, server_default=sa.text("'{}'::jsonb")
    )
    # The customer field holding each recipient's language (validation.CUSTOMER_FIELDS):
    # the template's version in it is sent (campaigns/languages.py); NULL: the template's
    # own language for everyone.
    language_field: Mapped[str | None] = mapped_column(sa.String(64))
    # The local hours and days its messages go out in each recipient's time zone
    # (campaigns/send_windows.py): {"start": "09:00", "end": "20:00", "days": [0, ...]};
    # NULL: any time. The customer field (or CSV column) naming a recipient's IANA zone;
    # NULL: from the number (campaigns/time_zones.py).
    send_window: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    time_zone_field: Mapped[str | None] = mapped_column(sa.String(64))
    # With a window: its recipients' zones and how many of each are pending, recorded by
    # the fan-out and kept by the pump ({zone: count}), so the pump and the progress know
    # the zones without reading the pending rows.
    window_zones: Mapped[dict[str, int] | None] = mapped_column(JSONB)
    status: Mapped[CampaignStatus] = mapped_column(
        pg_enum(CampaignStatus, "campaign_status"), default=CampaignStatus.DRAFT
    )
    # Why it is paused or failed: a code of campaigns/reasons.py and its parameters, worded
    # in the reader's language when shown (status_reason); NULL when there is none to tell.
    status_reason_code: Mapped[str | None] = mapped_column(sa.String(reasons.CODE_WIDTH))
    status_reason_params: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    scheduled_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    # A CSV audience (campaigns/audiences.py) instead of the ERP segment; NULL: the segment.
    # Its phone column is kept when the retention deletes the file (and sets this NULL), so
    # the page still says the audience was a file. No ON DELETE: the unused files' delete
    # fails rather than unlinking a campaign saved with one at that moment.
    audience_file_id: Mapped[int | None] = mapped_column(
        sa.BigInteger, sa.ForeignKey("audience_files.id")
    )
    audience_phone_column: Mapped[str | None] = mapped_column(sa.String(200))
    # Fan-out resumes from here after a crash (the ERP's cursor or page; a file's last row).
    erp_cursor: Mapped[str | None] = mapped_column(sa.Text)
    audience_loaded_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    # The pump staggers message jobs from here, so successive batches keep the pace.
    pace_cursor_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    # When the retention task erased its recipients' personal data (DATA_RETENTION_DAYS).
    data_erased_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), server_default=sa.func.now(), onupdate=sa.func.now()
    )
    # How it repeats (campaigns/recurrence.py: {"every", "at", "weekday"|"day", "time_zone"});
    # NULL: it does not. A campaign that repeats is a series: it never sends itself, the
    # scheduler makes a run of it at each occurrence (campaign_states.start_due).
    recurrence: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # A run: the series it was made from and its number among the series' runs (1, 2…).
    recurrence_of_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("campaigns.id", name="campaigns_recurrence_of_id_fkey")
    )
    run_number: Mapped[int | None] = mapped_column(sa.Integer)
    # Exclusions (campaigns/exclusions.py, migration 0031): skip a number any other
    # campaign contacted within this many days (NULL: no cap), and one with a message in
    # another sending or paused campaign.
    frequency_cap_days: Mapped[int | None] = mapped_column(sa.SmallInteger)
    exclude_running: Mapped[bool] = mapped_column(default=False, server_default=sa.false())

    owner: Mapped[User] = relationship()
    sender: Mapped[Sender] = relationship()
    template: Mapped[MessageTemplate] = relationship()
    audience_file: Mapped[AudienceFile | None] = relationship()
    recurrence_of: Mapped[Campaign | None] = relationship(remote_side=[id])

    def copy(self, *, name: str, owner_id: int) -> Campaign:
        """A new draft configured as this one (not added to a session): every column but
        those of :data:`NOT_COPIED`, JSON values copied deep. Both a duplicate and a
        recurring campaign's run are made by it, so a column added to the campaign is
        copied by both unless it is named there."""
        values = {
            column.key: deepcopy(getattr(self, column.key))
            for column in sa.inspect(Campaign).column_attrs
            if column.key not in NOT_COPIED
        }
        return Campaign(name=name, owner_id=owner_id, status=CampaignStatus.DRAFT, **values)

    @property
    def status_reason(self) -> str | None:
        """Why it is paused or failed, in the reader's language (None: no reason given)."""
        return reasons.render_or_none(self.status_reason_code, self.status_reason_params)

    def set_status_reason(self, reason: reasons.Reason | None) -> None:
        """Record why (or, with None, that there is no reason any more)."""
        self.status_reason_code = reason.code if reason else None
        self.status_reason_params = dict(reason.params) if reason else None

    def __repr__(self) -> str:
        return f"<Campaign {self.id} {self.name!r} {self.status}>"


# What a campaign did, not what it is: a copy (Campaign.copy) starts without it. Every
# other column is the campaign's configuration and is copied.
NOT_COPIED = frozenset(
    {
        "id",
        "name",
        "owner_id",
        "status",
        "status_reason_code",
        "status_reason_params",
        "scheduled_at",
        "started_at",
        "completed_at",
        "erp_cursor",
        "audience_loaded_at",
        "pace_cursor_at",
        "window_zones",
        "data_erased_at",
        "created_at",
        "updated_at",
        "recurrence_of_id",
        "run_number",
    }
)


class Message(Model):
    """One recipient of one campaign: the campaign's durable queue and its audit trail."""

    __tablename__ = "messages"
    __table_args__ = (
        # One row per ERP customer: re-running the fan-out after a crash adds nothing.
        sa.UniqueConstraint("campaign_id", "customer_ref", name="messages_campaign_customer_key"),
        # One message per phone; a second customer with the same phone is kept as skipped.
        sa.Index(
            "messages_campaign_phone_key",
            "campaign_id",
            "phone",
            unique=True,
            postgresql_where=sa.text("status <> 'skipped'"),
        ),
        # A campaign's recipients in id order (keyset pages, CSV), by status or not.
        sa.Index("messages_campaign_id_idx", "campaign_id", "id"),
        sa.Index("messages_campaign_status_id_idx", "campaign_id", "status", "id"),
        # The pump takes the next pending rows of a campaign in id order.
        sa.Index(
            "messages_pending_idx",
            "campaign_id",
            "id",
            postgresql_where=sa.text("status = 'pending'"),
        ),
        # With a sending window, the pump takes the next pending rows of the open zones
        # in id order, a zone's first rows each (migration 0030).
        sa.Index(
            "messages_pending_zone_idx",
            "campaign_id",
            "time_zone",
            "id",
            postgresql_where=sa.text("status = 'pending'"),
        ),
        # Maintenance finds rows left in sending by a dead worker.
        sa.Index(
            "messages_sending_idx", "sending_at", postgresql_where=sa.text("status = 'sending'")
        ),
        # The messages 131049 holds, per campaign, by when they are tried again (migration
        # 0020): the pump's window, the page's count and its "tried again from".
        sa.Index(
            "messages_held_idx",
            "campaign_id",
            "held_until",
            postgresql_where=sa.text("status = 'retrying' AND held_until IS NOT NULL"),
        ),
        # A campaign's answered messages in id order (the recipients' "Replied" filter,
        # migration 0028): only the rows answered, however big the campaign.
        sa.Index(
            "messages_replied_idx",
            "campaign_id",
            "id",
            postgresql_where=sa.text("replied_at IS NOT NULL"),
        ),
        sa.Index(
            "messages_provider_message_id_key",
            "provider_message_id",
            unique=True,
            postgresql_where=sa.text("provider_message_id IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(sa.ForeignKey("campaigns.id", ondelete="CASCADE"))
    # E.164, or the raw value when skipped. The phone, customer ref, customer data,
    # variables and error text are personal data: NULL (and {}) once erased
    # (services/personal_data.py); the status, codes, times and counts stay.
    phone: Mapped[str | None] = mapped_column(sa.String(32))
    customer_ref: Mapped[str | None] = mapped_column(sa.String(64))
    customer_data: Mapped[dict[str, Any]] = mapped_column(
        JSONB, default=dict, server_default=sa.text("'{}'::jsonb")
    )
    params: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # The language version of the campaign's template chosen for this recipient by the
    # fan-out (campaigns/languages.py); NULL: the campaign's own template.
    template_id: Mapped[int | None] = mapped_column(sa.ForeignKey("message_templates.id"))
    # The recipient's IANA time zone (campaigns/time_zones.py), set by the fan-out: a
    # sending window is applied in it. NULL: messages fanned out before it (no window).
    time_zone: Mapped[str | None] = mapped_column(sa.String(64))
    status: Mapped[MessageStatus] = mapped_column(
        pg_enum(MessageStatus, "message_status"), default=MessageStatus.PENDING
    )
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    # Calls on the current queue (campaign-messages, then message-retry): its try budget.
    tries: Mapped[int] = mapped_column(sa.SmallInteger, default=0, server_default="0")
    # When WhatsApp first throttled it (130429) since it was last sent or reopened.
    throttled_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    # Held by WhatsApp's per-user marketing limit (131049) until then, when its one retry
    # is due: set once, so a message held again fails; cleared by "retry failed".
    held_until: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    provider_message_id: Mapped[str | None] = mapped_column(sa.String(128))
    error_code: Mapped[str | None] = mapped_column(sa.String(32))
    error_text: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = created_at_column()
    queued_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    sending_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    sent_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    read_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    failed_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    # What the recipient answered (campaigns/answers.py): the first reply's and the first
    # button click's times (each counted once); the latest reply's text and the clicked
    # button's text are personal data, NULL once erased (the times stay).
    replied_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    reply_text: Mapped[str | None] = mapped_column(sa.Text)
    clicked_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    clicked_button: Mapped[str | None] = mapped_column(sa.String(64))
    updated_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), server_default=sa.func.now(), onupdate=sa.func.now()
    )

    campaign: Mapped[Campaign] = relationship()

    def __repr__(self) -> str:
        return f"<Message {self.id} campaign={self.campaign_id} {self.status}>"


COUNTER_SHARDS = 8
"""Rows per campaign in ``campaign_counters``: one hot row would serialise every send."""


class CampaignCounter(Model):
    """One shard of a campaign's running totals; progress sums the shards (O(1) reads)."""

    __tablename__ = "campaign_counters"

    campaign_id: Mapped[int] = mapped_column(
        sa.ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True
    )
    shard: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True)
    total: Mapped[int] = mapped_column(default=0, server_default="0")
    pending: Mapped[int] = mapped_column(default=0, server_default="0")
    queued: Mapped[int] = mapped_column(default=0, server_default="0")
    sending: Mapped[int] = mapped_column(default=0, server_default="0")
    retrying: Mapped[int] = mapped_column(default=0, server_default="0")
    sent: Mapped[int] = mapped_column(default=0, server_default="0")
    delivered: Mapped[int] = mapped_column(default=0, server_default="0")
    read: Mapped[int] = mapped_column(default=0, server_default="0")
    failed: Mapped[int] = mapped_column(default=0, server_default="0")
    skipped: Mapped[int] = mapped_column(default=0, server_default="0")
    cancelled: Mapped[int] = mapped_column(default=0, server_default="0")
    # Messages answered (campaigns/answers.py): a first reply, a first button click.
    replied: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    clicked: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")


class CampaignMinuteStat(Model):
    """Messages sent per campaign per minute: 'sent in the last minute' and the hourly chart.

    Sharded like campaign_counters: every send of a campaign in one minute would
    otherwise update (and wait for the lock on) the same row; reads sum the shards.
    """

    __tablename__ = "campaign_minute_stats"
    # /metrics reads one minute across every campaign (campaigns/metrics.py).
    __table_args__ = (sa.Index("campaign_minute_stats_minute_idx", "minute"),)

    campaign_id: Mapped[int] = mapped_column(
        sa.ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True
    )
    minute: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), primary_key=True)
    shard: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True, server_default="0")
    sent: Mapped[int] = mapped_column(default=0, server_default="0")
    failed: Mapped[int] = mapped_column(default=0, server_default="0")


class MessageFailureMinute(Model):
    """Messages failed per minute, campaign and error code ('' for none): /metrics' failures
    by code. Per campaign and sharded like campaign_minute_stats, and written after them in
    the same transaction, so the campaign's counter shard already orders its writers."""

    __tablename__ = "message_failure_minutes"

    minute: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), primary_key=True)
    campaign_id: Mapped[int] = mapped_column(primary_key=True)
    error_code: Mapped[str] = mapped_column(sa.String(32), primary_key=True, server_default="")
    shard: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True, server_default="0")
    failed: Mapped[int] = mapped_column(default=0, server_default="0")


class RateLimitDenialMinute(Model):
    """Units the rate limiter held back per minute, by the kind of key that held them
    (whatsapp, campaign, api, retry); written only when a call is refused (ratelimit.py)."""

    __tablename__ = "rate_limit_denial_minutes"

    minute: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    shard: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True, server_default="0")
    units: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")


class WebhookStatusMinute(Model):
    """WhatsApp statuses applied per minute: how many, their lag (applied minus WhatsApp's
    timestamp: sum and largest) and the last one's time; one row write per webhook."""

    __tablename__ = "webhook_status_minutes"

    minute: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), primary_key=True)
    shard: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True, server_default="0")
    statuses: Mapped[int] = mapped_column(default=0, server_default="0")
    lag_seconds_sum: Mapped[float] = mapped_column(sa.Float, default=0, server_default="0")
    lag_seconds_max: Mapped[float] = mapped_column(sa.Float, default=0, server_default="0")
    last_applied_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))


class RateLimitBucket(Model):
    """Grants per limiter key per time bucket; written only by ratelimit.py's SQL."""

    __tablename__ = "rate_limit_buckets"

    key: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    bucket_start: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), primary_key=True)
    count: Mapped[int] = mapped_column(default=0, server_default="0")


class RateLimitKey(Model):
    """The last grant of each limiter key, for the minimum gap between two sends."""

    __tablename__ = "rate_limit_keys"

    key: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    last_grant_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))


class BudgetRecipient(Model):
    """A recipient the 24-hour messaging budget counted for a business portfolio, as the
    number's keyed hash; written only by ratelimit.py's SQL (migration 0024)."""

    __tablename__ = "budget_recipients"
    __table_args__ = (
        sa.Index("budget_recipients_counted_at_idx", "counted_at"),
        sa.Index("budget_recipients_phone_hash_idx", "phone_hash"),
    )

    portfolio: Mapped[str] = mapped_column(sa.String(80), primary_key=True)
    phone_hash: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    counted_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))


class BudgetMinute(Model):
    """How many recipients a portfolio's 24-hour budget counted in a minute (the window's
    count sums them); written only by ratelimit.py's SQL (migration 0024)."""

    __tablename__ = "budget_minutes"

    portfolio: Mapped[str] = mapped_column(sa.String(80), primary_key=True)
    minute: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), primary_key=True)
    count: Mapped[int]


class Notification(Model):
    """An in-app notice for a user: a campaign started, completed, paused, was cancelled or
    failed; a template was approved, rejected or rated RED.

    ``kind`` is what happened (``started``, ``completed``, ``auto_paused``, ``paused``,
    ``cancelled``, ``failed``, ``template_approved``, ``template_rejected``,
    ``template_quality_red``, ``account_quality``: a template rated RED, a sender's
    quality rating dropped);
    its words are a code of campaigns/reasons.py and its parameters (the campaign's
    name, its counts, the reason it stopped), worded in the reader's language when
    shown (:attr:`text`).
    """

    __tablename__ = "notifications"
    __table_args__ = (sa.Index("notifications_user_unread_idx", "user_id", "read_at"),)

    id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"))
    campaign_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("campaigns.id", ondelete="CASCADE")
    )
    kind: Mapped[str] = mapped_column(sa.String(40))
    code: Mapped[str] = mapped_column(sa.String(reasons.CODE_WIDTH))
    params: Mapped[dict[str, Any]] = mapped_column(
        JSONB, default=dict, server_default=sa.text("'{}'::jsonb")
    )
    created_at: Mapped[datetime] = created_at_column()
    read_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))

    @property
    def text(self) -> str:
        """The notice in the reader's language."""
        return reasons.render(self.code, self.params)

    @property
    def template_id(self) -> int | None:
        """The template a template's notice is about (its parameters keep the id)."""
        value = (self.params or {}).get("template_id")
        return value if isinstance(value, int) and not isinstance(value, bool) else None


class CampaignActivity(Model):
    """Who did what to a campaign, and when (the user is NULL for the system).

    ``action`` is what was done, a key of ``reasons.ACTIONS`` (``paused``); the detail,
    if any, is a code of campaigns/reasons.py and its parameters (why it paused, when
    it is scheduled for, which masked number a test went to). Both are worded in the
    reader's language when shown (:attr:`summary`, :attr:`detail`).
    """

    __tablename__ = "campaign_activity"
    __table_args__ = (sa.Index("campaign_activity_campaign_idx", "campaign_id", "created_at"),)

    id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(sa.ForeignKey("campaigns.id", ondelete="CASCADE"))
    user_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id", ondelete="SET NULL"))
    action: Mapped[str] = mapped_column(sa.String(40))
    detail_code: Mapped[str | None] = mapped_column(sa.String(reasons.CODE_WIDTH))
    detail_params: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = created_at_column()

    user: Mapped[User | None] = relationship()

    @property
    def summary(self) -> str:
        """Who did what, in the reader's language: "ana@… paused the campaign"."""
        return reasons.action_text(self.action, self.user.email if self.user else None)

    @property
    def detail(self) -> str | None:
        """The detail in the reader's language (None when there is none)."""
        return reasons.render_or_none(self.detail_code, self.detail_params)


class Suppression(Model):
    """A phone number that opted out: skipped at send time.

    Once the person's data was erased, the number is kept only as a one-way hash
    (``phone_hash``, see ``services/suppressions.phone_hash``): still skipped, no
    longer readable.
    """

    __tablename__ = "suppressions"
    __table_args__ = (
        sa.CheckConstraint("phone IS NOT NULL OR phone_hash IS NOT NULL", name="phone_or_hash"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    phone: Mapped[str | None] = mapped_column(sa.String(20), unique=True)  # E.164
    phone_hash: Mapped[str | None] = mapped_column(sa.String(64), unique=True)
    # Words, never Disparo's own: what the operator typed (manual, import), the customer's
    # reply (opt_out_reply), WhatsApp's text (provider); "" when there were none.
    reason: Mapped[str] = mapped_column(sa.String(200))
    # How it got here, a code the page words: manual, import, opt_out_reply, provider.
    source: Mapped[str] = mapped_column(sa.String(40))
    created_by_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("users.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = created_at_column()


class UndeliverableNumber(Model):
    """A number a send failed with 131026 (undeliverable), as its keyed hash only, and
    when: later campaigns skip it for UNDELIVERABLE_DAYS (services/undeliverable.py)."""

    __tablename__ = "undeliverable_numbers"

    phone_hash: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    failed_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), server_default=sa.func.now(), index=True
    )


class ContactHistory(Model):
    """When a campaign last admitted a number to go, as its keyed hash only
    (campaigns/contact_history.py): the frequency cap's record, one row per number and
    campaign. Kept CONTACT_HISTORY_DAYS."""

    __tablename__ = "contact_history"

    phone_hash: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    # No foreign key: a contact made stays a contact whatever becomes of its campaign.
    campaign_id: Mapped[int] = mapped_column(primary_key=True, index=True)
    # The message admitted: a campaign cancelled or paused before calling it gives it back.
    message_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    contacted_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), index=True)


class ContactLock(Model):
    """A number's lock row (keyed hash) for the frequency cap's admissions: each admission
    locks its numbers' rows before it reads the history (campaigns/contact_history.py).
    Kept CONTACT_HISTORY_DAYS after the last admission."""

    __tablename__ = "contact_locks"

    phone_hash: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    locked_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), index=True)


class CampaignDefaults(Model):
    """What a new campaign starts with (one row, id 1; the admin's Settings page):
    a frequency cap, the exclusion of numbers in running campaigns, a sending window."""

    __tablename__ = "campaign_defaults"
    __table_args__ = (sa.CheckConstraint("id = 1", name="one_row"),)

    id: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True, autoincrement=False)
    frequency_cap_days: Mapped[int | None] = mapped_column(sa.SmallInteger)
    exclude_running: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    # {"start": "09:00", "end": "20:00", "days": [0, ..., 6]} (0: Monday), each recipient's
    # local time; NULL: any time. The shape of campaigns.send_window.
    send_window: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    updated_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), server_default=sa.func.now(), onupdate=sa.func.now()
    )
    updated_by_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("users.id", ondelete="SET NULL")
    )


class AuditEvent(Model):
    """An administrative action: who did it, what, to what, and when (campaigns/audit.py).

    ``actor_email`` is kept as written, so the row still says who after the user is
    deleted (``actor_id`` then goes NULL) and names the CLI or the system for what
    no signed-in user did. ``details`` never holds a secret or a full phone number.
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        # Retention deletes by age; the page filters by action, newest (highest id) first.
        sa.Index("audit_events_at_idx", "at"),
        sa.Index("audit_events_action_id_idx", "action", "id"),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    at: Mapped[datetime] = created_at_column()
    actor_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id", ondelete="SET NULL"))
    actor_email: Mapped[str] = mapped_column(sa.Text)
    action: Mapped[str] = mapped_column(sa.String(40))
    target_type: Mapped[str | None] = mapped_column(sa.String(40))
    target_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    target_label: Mapped[str | None] = mapped_column(sa.Text)
    details: Mapped[dict[str, Any]] = mapped_column(
        JSONB, default=dict, server_default=sa.text("'{}'::jsonb")
    )
    client_address: Mapped[str | None] = mapped_column(sa.String(45))

    def __repr__(self) -> str:
        return f"<AuditEvent {self.id} {self.action} by {self.actor_email}>"


class MessageRate(Model):
    """What Meta charges per delivered template message of a category to a country, from
    a day on (``campaigns/pricing.py`` reads the rate in force; ``services/pricing.py``
    writes). Every row has the same currency: the service keeps it so."""

    __tablename__ = "message_rates"
    __table_args__ = (
        sa.UniqueConstraint("category", "country", "effective_from"),
        sa.CheckConstraint("amount >= 0", name="amount_not_negative"),
    )

    id: Mapped[int] = mapped_column(sa.Identity(), primary_key=True)
    category: Mapped[TemplateCategory] = mapped_column(
        pg_enum(TemplateCategory, "template_category")
    )
    country: Mapped[str] = mapped_column(sa.String(2))  # ISO 3166 alpha-2, uppercase
    currency: Mapped[str] = mapped_column(sa.String(3))  # ISO 4217, uppercase
    amount: Mapped[Decimal] = mapped_column(sa.Numeric(12, 6))
    effective_from: Mapped[date] = mapped_column(sa.Date)
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), server_default=sa.func.now(), onupdate=sa.func.now()
    )
    updated_by_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("users.id", ondelete="SET NULL")
    )

    def __repr__(self) -> str:
        return f"<MessageRate {self.category} {self.country} {self.amount} {self.currency}>"


class IdempotencyKey(Model):
    """A create request's ``Idempotency-Key`` and, once it finished, its response
    (campaigns/idempotency.py): a retry gets that response again instead of a second
    resource. Kept 24 hours (maintenance deletes older ones)."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        sa.UniqueConstraint("user_id", "key", name="idempotency_keys_user_key_key"),
        sa.CheckConstraint("state IN ('in_progress', 'done')", name="state_known"),
        sa.Index("idempotency_keys_created_at_idx", "created_at"),
    )

    # A new id for every claim: what the claimant's later writes match on, so a request
    # that outlived its lease cannot overwrite the claim that replaced it.
    id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(sa.String(255))
    method: Mapped[str] = mapped_column(sa.String(10))
    path: Mapped[str] = mapped_column(sa.Text)
    body_sha256: Mapped[str] = mapped_column(sa.String(64))
    state: Mapped[str] = mapped_column(sa.String(16))
    response_status: Mapped[int | None] = mapped_column(sa.SmallInteger)
    response_body: Mapped[str | None] = mapped_column(sa.Text)
    response_location: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = created_at_column()
