"""Every write: plain typed functions that own the transaction (and, later, deferrals)."""

from __future__ import annotations

import csv
import hashlib
import logging
import secrets
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.dialects.postgresql import ARRAY, Insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.sql.dml import ReturningInsert
from werkzeug.security import check_password_hash, generate_password_hash

from app import db
from campaigns import counters, phones, providers, rendering, sending
from campaigns.i18n import _
from campaigns.models import (
    ApiToken,
    Campaign,
    CampaignActivity,
    CampaignStatus,
    LoginAttempt,
    Message,
    MessageStatus,
    MessageTemplate,
    ParameterFormat,
    Provider,
    Role,
    Sender,
    Suppression,
    TemplateCategory,
    TemplateStatus,
    User,
)
from campaigns.providers.errors import is_retryable
from campaigns.queues import RETRY_TASK, SEND_TASK
from campaigns.validation import CampaignFields, SenderFields, TemplateFields, UserLimits

logger = logging.getLogger(__name__)

MIN_PASSWORD_LENGTH = 10
# A password hash to compare against when the email is unknown, so a failed
# login takes the same time whether or not the account exists.
_DUMMY_HASH = generate_password_hash(secrets.token_hex(8))
IP_FAILURE_FACTOR = 4  # an address may fail this many times the per-account limit


class ServiceError(ValueError):
    """A refused write, with a message fit to show the user (and the field it concerns)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class NotFound(ServiceError):
    """The thing to change does not exist (404)."""


class Conflict(ServiceError):
    """The thing exists but is in a state that refuses this change (409)."""


def hash_password(password: str) -> str:
    """A salted hash under the configured method (werkzeug's scrypt unless set otherwise)."""
    return generate_password_hash(password, method=current_app.config["PASSWORD_HASH_METHOD"])


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def create_user(email: str, password: str, role: Role = Role.VIEWER) -> User:
    """Create a user; the email is unique regardless of case."""
    email = email.strip()
    if "@" not in email or len(email) > 320:
        raise ServiceError(_("Enter a valid email address."), "email")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ServiceError(
            _("The password needs at least %(n)d characters.") % {"n": MIN_PASSWORD_LENGTH},
            "password",
        )
    exists = db.session.scalar(sa.select(User.id).where(sa.func.lower(User.email) == email.lower()))
    if exists:
        raise ServiceError(_("A user with that email already exists."), "email")
    user = User(email=email, password_hash=hash_password(password), role=role)
    db.session.add(user)
    db.session.commit()
    logger.info("created user %s (%s) with role %s", user.id, user.email, role)
    return user


def create_api_token(user_id: int, name: str = "default") -> tuple[ApiToken, str]:
    """Create a bearer token; the raw value is returned once and never stored."""
    raw = "dsp_" + secrets.token_urlsafe(32)
    token = ApiToken(user_id=user_id, name=name, token_sha256=hash_token(raw), prefix=raw[:10])
    db.session.add(token)
    db.session.commit()
    return token, raw


@dataclass(frozen=True)
class LoginResult:
    user: User | None
    error: str | None = None


def authenticate(email: str, password: str, ip_address: str) -> LoginResult:
    """Check a login, refusing while the account or address is locked out by failures."""
    email = email.strip().lower()
    max_failures = _login_setting("LOGIN_MAX_FAILURES")
    window = timedelta(minutes=_login_setting("LOGIN_LOCKOUT_MINUTES"))
    since = datetime.now(UTC) - window
    failures_by_email, failures_by_ip = db.session.execute(
        sa.select(
            sa.func.count().filter(LoginAttempt.email == email),
            sa.func.count().filter(LoginAttempt.ip_address == ip_address),
        ).where(
            LoginAttempt.attempted_at > since,
            LoginAttempt.succeeded.is_(False),
            sa.or_(LoginAttempt.email == email, LoginAttempt.ip_address == ip_address),
        )
    ).one()
    if failures_by_email >= max_failures or failures_by_ip >= max_failures * IP_FAILURE_FACTOR:
        logger.warning("login locked out for %s from %s", email, ip_address)
        return LoginResult(
            None,
            _("Too many failed sign-ins. Try again in %(n)d minutes.")
            % {"n": int(window.total_seconds() // 60)},
        )

    user = db.session.scalar(sa.select(User).where(sa.func.lower(User.email) == email))
    valid = check_password_hash(user.password_hash if user else _DUMMY_HASH, password)
    ok = bool(user and valid and user.is_active)
    db.session.add(LoginAttempt(email=email, ip_address=ip_address, succeeded=ok))
    if ok:
        assert user is not None
        user.last_login_at = sa.func.now()
    db.session.commit()
    if ok:
        return LoginResult(user)
    if user and valid and not user.is_active:
        return LoginResult(None, _("This account is disabled."))
    return LoginResult(None, _("Wrong email or password."))


def _login_setting(name: str) -> int:
    return int(current_app.config[name])


@dataclass(frozen=True)
class DemoSeed:
    admin_email: str
    admin_password: str | None  # None when the admin already existed
    created: bool


DEMO_ADMIN_EMAIL = "admin@disparo.local"
DEMO_TEMPLATES = [
    {
        "name": "promo_weekend",
        "language": "pt_BR",
        "category": TemplateCategory.MARKETING,
        "parameter_format": ParameterFormat.NAMED,
        "header_text": "Ofertas de fim de semana",
        "body_text": (
            "Olá {{first_name}}! Neste fim de semana você tem {{discount}} de desconto "
            "na loja de {{city}}. Use o cupom {{coupon}}."
        ),
        "footer_text": "Responda SAIR para não receber mais mensagens",
        "buttons": [{"type": "QUICK_REPLY", "text": "Quero saber mais"}],
    },
    {
        "name": "order_ready",
        "language": "pt_BR",
        "category": TemplateCategory.UTILITY,
        "parameter_format": ParameterFormat.POSITIONAL,
        "header_text": None,
        "body_text": "Oi {{1}}, seu pedido {{2}} está pronto para retirada.",
        "footer_text": None,
        "buttons": [],
    },
    {
        "name": "welcome_back",
        "language": "en_US",
        "category": TemplateCategory.MARKETING,
        "parameter_format": ParameterFormat.NAMED,
        "header_text": None,
        "body_text": "Hi {{first_name}}, we miss you! Here is {{discount}} off your next order.",
        "footer_text": "Reply STOP to opt out",
        "buttons": [],
    },
]


def seed_demo() -> DemoSeed:
    """Create the demo admin, one mock sender and approved demo templates — once."""
    admin = db.session.scalar(sa.select(User).where(User.email == DEMO_ADMIN_EMAIL))
    if admin is not None:
        return DemoSeed(DEMO_ADMIN_EMAIL, None, created=False)
    password = generate_password()
    admin = User(email=DEMO_ADMIN_EMAIL, password_hash=hash_password(password), role=Role.ADMIN)
    sender = Sender(
        name="Demo sender (mock)",
        provider=Provider.MOCK,
        phone_number_id="100000000000001",
        display_phone_number="+55 11 90000-0001",
        waba_id="200000000000001",
        # The mock signs its status webhooks with this, as Meta does with the app secret.
        app_secret=secrets.token_hex(32),
        webhook_verify_token=secrets.token_urlsafe(16),
    )
    db.session.add_all([admin, sender])
    db.session.flush()
    for spec in DEMO_TEMPLATES:
        db.session.add(
            MessageTemplate(
                sender_id=sender.id,
                status=TemplateStatus.APPROVED,
                provider_template_id=f"mock-{spec['name']}",
                created_by_id=admin.id,
                **spec,
            )
        )
    db.session.commit()
    return DemoSeed(DEMO_ADMIN_EMAIL, password, created=True)


# --- message templates -------------------------------------------------------------

EDITABLE_TEMPLATE_STATUSES = frozenset(
    {TemplateStatus.DRAFT, TemplateStatus.REJECTED, TemplateStatus.APPROVED, TemplateStatus.PAUSED}
)
SUBMITTABLE_TEMPLATE_STATUSES = frozenset({TemplateStatus.DRAFT, TemplateStatus.REJECTED})
ACTIVE_CAMPAIGN_STATUSES = frozenset(
    {CampaignStatus.SCHEDULED, CampaignStatus.SENDING, CampaignStatus.PAUSED}
)


def default_sender() -> Sender:
    sender = db.session.scalar(sa.select(Sender).order_by(Sender.id).limit(1))
    if sender is None:
        raise ServiceError(_("Create a sender first: templates live in its WhatsApp account."))
    return sender


def _template_name_taken(fields: TemplateFields, sender_id: int, exclude_id: int | None) -> bool:
    query = sa.select(MessageTemplate.id).where(
        MessageTemplate.sender_id == sender_id,
        MessageTemplate.name == fields.name,
        MessageTemplate.language == fields.language,
    )
    if exclude_id is not None:
        query = query.where(MessageTemplate.id != exclude_id)
    return db.session.scalar(query) is not None


def create_template(
    fields: TemplateFields, user_id: int, sender_id: int | None = None
) -> MessageTemplate:
    """Create a draft template in a sender's WhatsApp Business Account."""
    sender = db.session.get(Sender, sender_id) if sender_id else default_sender()
    if sender is None:
        raise ServiceError(_("There is no such sender."), "sender_id")
    if _template_name_taken(fields, sender.id, None):
        raise ServiceError(
            _("This account already has a template with that name and language."), "name"
        )
    template = MessageTemplate(
        sender_id=sender.id, created_by_id=user_id, status=TemplateStatus.DRAFT
    )
    _apply_template_fields(template, fields)
    db.session.add(template)
    db.session.commit()
    return template


def _apply_template_fields(template: MessageTemplate, fields: TemplateFields) -> None:
    for name, value in fields.__dict__.items():
        setattr(template, name, value)


def update_template(template_id: int, fields: TemplateFields) -> MessageTemplate:
    """Edit a template; an approved one goes back to draft and must be resubmitted."""
    template = _get_template_for_update(template_id)
    if template.status not in EDITABLE_TEMPLATE_STATUSES:
        raise ServiceError(
            _("A %(status)s template cannot be edited.") % {"status": template.status.value}
        )
    in_use = db.session.scalar(
        sa.select(Campaign.name)
        .where(Campaign.template_id == template.id, Campaign.status.in_(ACTIVE_CAMPAIGN_STATUSES))
        .limit(1)
    )
    if in_use:
        raise ServiceError(
            _(
                "Campaign “%(name)s” is scheduled or sending with this template;"
                " create a new template instead."
            )
            % {"name": in_use}
        )
    if _template_name_taken(fields, template.sender_id, template.id):
        raise ServiceError(
            _("This account already has a template with that name and language."), "name"
        )
    _apply_template_fields(template, fields)
    template.status = TemplateStatus.DRAFT
    template.status_reason = None
    template.provider_template_id = None
    template.submitted_at = None
    db.session.commit()
    return template


def _get_template_for_update(template_id: int) -> MessageTemplate:
    template = db.session.scalar(
        sa.select(MessageTemplate).where(MessageTemplate.id == template_id).with_for_update()
    )
    if template is None:
        raise NotFound(_("There is no such template."))
    return template


def submit_template(template_id: int) -> MessageTemplate:
    """Send a draft (or rejected) template to the provider for review."""
    template = _get_template_for_update(template_id)
    if template.status not in SUBMITTABLE_TEMPLATE_STATUSES:
        raise Conflict(
            _("Only draft or rejected templates can be submitted; this one is %(s)s.")
            % {"s": template.status.value}
        )
    provider = providers.for_sender(template.sender, current_app.config)
    try:
        submission = provider.submit_template(template)
    except providers.ProviderError as error:
        db.session.rollback()
        raise ServiceError(error.message) from error
    template.provider_template_id = submission.provider_template_id
    template.status = submission.status
    template.status_reason = None
    template.submitted_at = sa.func.now()
    db.session.commit()
    db.session.refresh(template)
    _defer_template_sync(template.id, current_app.config)
    return template


def _defer_template_sync(template_id: int, config) -> None:
    """Check the review outcome soon (the mock decides within seconds; Meta, later)."""
    from jobs import open_for_deferring, tasks

    open_for_deferring()
    delay = float(config["MOCK_TEMPLATE_APPROVAL_SECONDS"]) + 1
    tasks.sync_template.configure(schedule_in={"seconds": delay}).defer(template_id=template_id)


def sync_template_status(template_id: int) -> MessageTemplate:
    """Ask the provider for a submitted template's status and record it."""
    template = _get_template_for_update(template_id)
    if template.provider_template_id is None:
        db.session.rollback()
        return template
    try:
        report = providers.for_sender(template.sender, current_app.config).template_status(template)
    except providers.ProviderError as error:
        db.session.rollback()
        raise ServiceError(error.message) from error
    if report.status != template.status or report.reason != template.status_reason:
        logger.info("template %s: %s → %s", template.id, template.status, report.status)
    template.status = report.status
    template.status_reason = report.reason
    db.session.commit()
    return template


def pending_template_ids() -> list[int]:
    return list(
        db.session.scalars(
            sa.select(MessageTemplate.id).where(MessageTemplate.status == TemplateStatus.PENDING)
        )
    )


# --- senders -----------------------------------------------------------------------


def save_sender(fields: SenderFields, sender_id: int | None = None) -> Sender:
    """Create or update a sender; blank secrets keep the stored ones."""
    sender = Sender() if sender_id is None else db.session.get(Sender, sender_id)
    if sender is None:
        raise NotFound(_("There is no such sender."))
    clash = db.session.scalar(
        sa.select(Sender.id).where(Sender.name == fields.name, Sender.id != (sender_id or 0))
    )
    if clash:
        raise ServiceError(_("Another sender has that name."), "name")
    for name in (
        "name",
        "provider",
        "phone_number_id",
        "display_phone_number",
        "waba_id",
        "rate_limit_per_minute",
        "min_interval_ms",
        "webhook_verify_token",
    ):
        setattr(sender, name, getattr(fields, name))
    if fields.access_token is not None:
        sender.access_token = fields.access_token
    if fields.app_secret is not None:
        sender.app_secret = fields.app_secret
    if sender.provider is Provider.MOCK and not sender.app_secret:
        sender.app_secret = secrets.token_hex(32)  # the mock signs its webhooks with it
    if sender_id is None:
        db.session.add(sender)
    db.session.commit()
    return sender


def check_sender_connection(sender_id: int) -> tuple[bool, str]:
    """Ask the provider about a sender; return whether it answered well, and what it said."""
    sender = db.session.get(Sender, sender_id)
    if sender is None:
        raise NotFound(_("There is no such sender."))
    try:
        return True, providers.for_sender(sender, current_app.config).check_connection()
    except providers.ProviderError as error:
        return False, error.message


# --- users (admin) and tokens ------------------------------------------------------


def update_user(user_id: int, changes: UserLimits, acting_user_id: int) -> User:
    """Change a user's role or rate limits (admins only, enforced by the views)."""
    user = db.session.get(User, user_id)
    if user is None:
        raise NotFound(_("There is no such user."))
    if changes.role is not None and user.id == acting_user_id and changes.role is not Role.ADMIN:
        raise Conflict(_("You cannot remove your own admin role."))
    if changes.role is not None:
        user.role = changes.role
    if changes.campaign_rate_limit_per_minute is not None:
        user.campaign_rate_limit_per_minute = changes.campaign_rate_limit_per_minute
    if changes.api_rate_limit_per_minute is not None:
        user.api_rate_limit_per_minute = changes.api_rate_limit_per_minute
    db.session.commit()
    return user


def set_user_disabled(user_id: int, disabled: bool, acting_user_id: int) -> User:
    """Disable (or re-enable) a user: a disabled user cannot sign in and its tokens stop working."""
    user = db.session.get(User, user_id)
    if user is None:
        raise NotFound(_("There is no such user."))
    if user.id == acting_user_id and disabled:
        raise Conflict(_("You cannot disable yourself."))
    user.is_disabled = disabled
    db.session.commit()
    return user


def generate_password() -> str:
    return secrets.token_urlsafe(12)


def reset_password(user_id: int) -> str:
    """Give a user a new random password and return it (shown once to the admin)."""
    user = db.session.get(User, user_id)
    if user is None:
        raise NotFound(_("There is no such user."))
    password = generate_password()
    user.password_hash = hash_password(password)
    db.session.commit()
    return password


def revoke_api_token(token_id: int, user_id: int) -> None:
    """Revoke one of the user's own tokens."""
    token = db.session.get(ApiToken, token_id)
    if token is None or token.user_id != user_id:
        raise NotFound(_("There is no such token."))
    if token.revoked_at is None:
        token.revoked_at = sa.func.now()
        db.session.commit()


def user_for_token(raw: str) -> User | None:
    """The active user behind a bearer token, or None (unknown, revoked or disabled)."""
    row = db.session.execute(
        sa.select(ApiToken, User)
        .join(User, User.id == ApiToken.user_id)
        .where(ApiToken.token_sha256 == hash_token(raw), ApiToken.revoked_at.is_(None))
    ).first()
    if row is None or not row.User.is_active:
        return None
    # Last use is coarse on purpose: one write per token per minute at most.
    db.session.execute(
        sa.update(ApiToken)
        .where(
            ApiToken.id == row.ApiToken.id,
            sa.or_(
                ApiToken.last_used_at.is_(None),
                ApiToken.last_used_at < sa.func.now() - sa.text("interval '1 minute'"),
            ),
        )
        .values(last_used_at=sa.func.now())
    )
    db.session.commit()
    return row.User


# --- campaigns ---------------------------------------------------------------------

# Which statuses each operator action starts from (enforced here, for UI and API alike).
CAMPAIGN_TRANSITIONS: dict[str, frozenset[CampaignStatus]] = {
    "edit": frozenset({CampaignStatus.DRAFT, CampaignStatus.SCHEDULED}),
    "schedule": frozenset({CampaignStatus.DRAFT, CampaignStatus.SCHEDULED}),
    "unschedule": frozenset({CampaignStatus.SCHEDULED}),
    "send_now": frozenset({CampaignStatus.DRAFT, CampaignStatus.SCHEDULED}),
    "pause": frozenset({CampaignStatus.SENDING}),
    "resume": frozenset({CampaignStatus.PAUSED}),
    "cancel": frozenset(
        {
            CampaignStatus.DRAFT,
            CampaignStatus.SCHEDULED,
            CampaignStatus.SENDING,
            CampaignStatus.PAUSED,
        }
    ),
}
ACTION_LABELS = {
    "edit": _("edited"),
    "schedule": _("scheduled"),
    "unschedule": _("unscheduled"),
    "send_now": _("sent now"),
    "pause": _("paused"),
    "resume": _("resumed"),
    "cancel": _("cancelled"),
}


def allowed_actions(status: CampaignStatus) -> set[str]:
    return {action for action, sources in CAMPAIGN_TRANSITIONS.items() if status in sources}


def template_variables_for(template_id: Any) -> list[str] | None:
    """The variables of an approved template, or None if there is no such approved template."""
    try:
        template = db.session.get(MessageTemplate, int(template_id))
    except (TypeError, ValueError):
        return None
    if template is None or template.status is not TemplateStatus.APPROVED:
        return None
    return rendering.variables(template.body_text, template.parameter_format)


def _check_sender_and_template(fields: CampaignFields) -> None:
    sender = db.session.get(Sender, fields.sender_id)
    if sender is None or not sender.is_active:
        raise ServiceError(_("Choose an active sender."), "sender_id")
    template = db.session.get(MessageTemplate, fields.template_id)
    if template is None or template.status is not TemplateStatus.APPROVED:
        raise ServiceError(_("Choose an approved template."), "template_id")
    template_sender = template.sender
    same_account = template.sender_id == sender.id or (
        sender.waba_id is not None and template_sender.waba_id == sender.waba_id
    )
    if not same_account:
        raise ServiceError(
            _("This template belongs to another WhatsApp account than the sender's."), "template_id"
        )


def _locked_campaign(campaign_id: int) -> Campaign:
    campaign = db.session.scalar(
        sa.select(Campaign).where(Campaign.id == campaign_id).with_for_update(key_share=True)
    )
    if campaign is None:
        raise NotFound(_("There is no such campaign."))
    return campaign


def _require(campaign: Campaign, action: str) -> None:
    if campaign.status not in CAMPAIGN_TRANSITIONS[action]:
        db.session.rollback()
        raise Conflict(
            _("A %(status)s campaign cannot be %(action)s.")
            % {"status": campaign.status.value, "action": ACTION_LABELS[action]}
        )


def record_activity(
    campaign_id: int, user_id: int | None, action: str, detail: str | None = None
) -> None:
    """Add to the campaign's activity (committed with the caller's transaction)."""
    db.session.add(
        CampaignActivity(campaign_id=campaign_id, user_id=user_id, action=action, detail=detail)
    )


def create_campaign(fields: CampaignFields, owner_id: int) -> Campaign:
    """Create a draft campaign."""
    _check_sender_and_template(fields)
    campaign = Campaign(
        name=fields.name,
        owner_id=owner_id,
        sender_id=fields.sender_id,
        template_id=fields.template_id,
        segment=fields.segment,
        variable_mapping=fields.variable_mapping,
        status=CampaignStatus.DRAFT,
    )
    db.session.add(campaign)
    db.session.flush()
    record_activity(campaign.id, owner_id, "created")
    db.session.commit()
    return campaign


def update_campaign(campaign_id: int, fields: CampaignFields, user_id: int) -> Campaign:
    """Change a draft or scheduled campaign."""
    campaign = _locked_campaign(campaign_id)
    _require(campaign, "edit")
    _check_sender_and_template(fields)
    campaign.name = fields.name
    campaign.sender_id = fields.sender_id
    campaign.template_id = fields.template_id
    campaign.segment = fields.segment
    campaign.variable_mapping = fields.variable_mapping
    record_activity(campaign.id, user_id, "updated")
    db.session.commit()
    return campaign


def schedule_campaign(campaign_id: int, when: datetime, user_id: int) -> Campaign:
    """Schedule (or reschedule) a campaign for a future time."""
    if when.tzinfo is None:
        raise ServiceError(_("Give the time with its time zone."), "scheduled_at")
    campaign = _locked_campaign(campaign_id)
    _require(campaign, "schedule")
    now = db.session.scalar(sa.select(sa.func.now()))
    if when <= now:
        db.session.rollback()
        raise ServiceError(_("Choose a time in the future."), "scheduled_at")
    _check_sender_and_template(_fields_of(campaign))
    campaign.status = CampaignStatus.SCHEDULED
    campaign.scheduled_at = when
    campaign.status_reason = None
    record_activity(campaign.id, user_id, "scheduled", when.astimezone(UTC).isoformat())
    db.session.commit()
    return campaign


def _fields_of(campaign: Campaign) -> CampaignFields:
    return CampaignFields(
        campaign.name,
        campaign.sender_id,
        campaign.template_id,
        campaign.segment,
        campaign.variable_mapping,
    )


def unschedule_campaign(campaign_id: int, user_id: int) -> Campaign:
    """Put a scheduled campaign back to draft."""
    campaign = _locked_campaign(campaign_id)
    _require(campaign, "unschedule")
    campaign.status = CampaignStatus.DRAFT
    campaign.scheduled_at = None
    record_activity(campaign.id, user_id, "unscheduled")
    db.session.commit()
    return campaign


def duplicate_campaign(campaign_id: int, user_id: int) -> Campaign:
    """A new draft with the same sender, template, audience and mapping."""
    source = db.session.get(Campaign, campaign_id)
    if source is None:
        raise NotFound(_("There is no such campaign."))
    copy = Campaign(
        name=(_("Copy of %(name)s") % {"name": source.name})[:200],
        owner_id=user_id,
        sender_id=source.sender_id,
        template_id=source.template_id,
        segment=dict(source.segment),
        variable_mapping=dict(source.variable_mapping),
        status=CampaignStatus.DRAFT,
    )
    db.session.add(copy)
    db.session.flush()
    record_activity(copy.id, user_id, "created", _("duplicated from #%(id)d") % {"id": source.id})
    record_activity(source.id, user_id, "duplicated", _("as #%(id)d") % {"id": copy.id})
    db.session.commit()
    return copy


def send_campaign_now(campaign_id: int, user_id: int) -> Campaign:
    """Start a draft or scheduled campaign at once (the scheduler's own start, without waiting)."""
    campaign = _locked_campaign(campaign_id)
    _require(campaign, "send_now")
    _check_sender_and_template(_fields_of(campaign))
    sending.start(db.session, campaign)
    record_activity(campaign.id, user_id, "started", _("sent now"))
    db.session.commit()
    return campaign


def pause_campaign(campaign_id: int, user_id: int) -> Campaign:
    """Stop sending: queued messages return to pending; one mid-call finishes its call."""
    campaign = _locked_campaign(campaign_id)
    _require(campaign, "pause")
    campaign.status = CampaignStatus.PAUSED
    campaign.status_reason = None
    sending.unqueue(db.session, campaign.id)
    record_activity(campaign.id, user_id, "paused")
    db.session.commit()
    return campaign


def resume_campaign(campaign_id: int, user_id: int) -> Campaign:
    """Carry on sending a paused campaign from where it stopped."""
    campaign = _locked_campaign(campaign_id)
    _require(campaign, "resume")
    _check_sender_and_template(_fields_of(campaign))
    campaign.status = CampaignStatus.SENDING
    campaign.status_reason = None
    campaign.pace_cursor_at = None
    sending.defer_next_step(
        db.session, campaign.id, audience_loaded=campaign.audience_loaded_at is not None
    )
    record_activity(campaign.id, user_id, "resumed")
    db.session.commit()
    return campaign


def cancel_campaign(campaign_id: int, user_id: int) -> Campaign:
    """Cancel for good: every message not yet being sent is cancelled at once."""
    campaign = _locked_campaign(campaign_id)
    _require(campaign, "cancel")
    campaign.status = CampaignStatus.CANCELLED
    campaign.completed_at = sa.func.now()
    sending.cancel_pending(db.session, campaign.id)
    record_activity(campaign.id, user_id, "cancelled")
    db.session.commit()
    return campaign


# --- suppression list (opt-outs) ---------------------------------------------------

SUPPRESSION_SOURCES = frozenset({"manual", "import", "opt_out_reply", "provider"})
MAX_REASON_LENGTH = 200  # the column's width
MAX_IMPORT_LINES = 100_000
MAX_REPORTED_INVALID = 50


def _unless_listed(insert: Insert) -> ReturningInsert[tuple[int]]:
    """The insert, skipping numbers already listed and returning the new rows' ids."""
    # Rather than look-then-insert: two concurrent adds of one number cannot collide,
    # and RETURNING lists only the rows that are really new.
    return insert.on_conflict_do_nothing(index_elements=[Suppression.phone]).returning(
        Suppression.id
    )


def _check_source(source: str) -> None:
    if source not in SUPPRESSION_SOURCES:
        raise ValueError(f"unknown suppression source {source!r}")


def suppress(
    phone_raw: str, reason: str, source: str, user_id: int | None
) -> tuple[Suppression, bool]:
    """Put a number on the suppression list; also say whether it is new there."""
    _check_source(source)
    phone = phones.normalise(phone_raw)
    if phone is None:
        raise ServiceError(
            _("Enter a phone number with its area code, or in international form (+…)."), "phone"
        )
    reason = (reason or "").strip()
    if len(reason) > MAX_REASON_LENGTH:
        raise ServiceError(
            _("The reason has at most %(n)d characters.") % {"n": MAX_REASON_LENGTH}, "reason"
        )
    new_id = db.session.execute(
        _unless_listed(
            pg_insert(Suppression).values(
                phone=phone, reason=reason, source=source, created_by_id=user_id
            )
        )
    ).scalar()
    # A number already there keeps its row unchanged: its first reason and source stand.
    suppression = db.session.scalars(sa.select(Suppression).where(Suppression.phone == phone)).one()
    db.session.commit()
    if new_id is not None:
        logger.info("suppression %s added (%s) by user %s", suppression.id, source, user_id)
    return suppression, new_id is not None


def add_suppression(phone_raw: str, reason: str, source: str, user_id: int | None) -> Suppression:
    """Put a number on the suppression list; one already there is returned unchanged."""
    return suppress(phone_raw, reason, source, user_id)[0]


def remove_suppression(suppression_id: int) -> None:
    """Take a number off the suppression list: campaigns reach it again."""
    removed = db.session.execute(
        sa.delete(Suppression).where(Suppression.id == suppression_id).returning(Suppression.id)
    ).scalar()
    if removed is None:
        db.session.rollback()
        raise NotFound(_("There is no such opt-out."))
    db.session.commit()
    logger.info("suppression %s removed", suppression_id)


def is_suppressed(phones: Collection[str]) -> set[str]:
    """Which of these E.164 numbers are on the suppression list (one query)."""
    if not phones:
        return set()
    # One array parameter, not IN (…): a batch of any size stays one short statement.
    wanted = sa.bindparam("phones", list(phones), type_=ARRAY(sa.String))
    return set(
        db.session.scalars(sa.select(Suppression.phone).where(Suppression.phone == sa.any_(wanted)))
    )


@dataclass(frozen=True)
class ImportReport:
    """What an import did: numbers added, already listed, and the lines that were not numbers."""

    added: int
    already_present: int
    invalid: list[tuple[int, str]]  # (line number, raw value), the first MAX_REPORTED_INVALID
    invalid_count: int  # every invalid line, shown or not


def _csv_delimiter(first_line: str) -> str:
    # Spreadsheets set to Portuguese save CSV with semicolons (the comma is the decimal mark).
    for candidate in (",", ";", "\t"):
        if candidate in first_line:
            return candidate
    return ","


def import_suppressions(lines: Iterable[str] | str, user_id: int | None) -> ImportReport:
    """Suppress every number of a CSV: a ``phone`` column (and ``reason``), or one bare column."""
    all_lines = lines.splitlines() if isinstance(lines, str) else list(lines)
    first = next((line for line in all_lines if line.strip()), "")
    reader = csv.reader(all_lines, delimiter=_csv_delimiter(first))
    phone_at, reason_at = 0, None
    header_seen = False
    wanted: dict[str, str] = {}  # phone → reason; a number's first line wins
    repeated = invalid_count = numbers = 0
    invalid: list[tuple[int, str]] = []
    for cells in reader:
        cells = [cell.strip() for cell in cells]
        if not any(cells):
            continue
        if not header_seen:
            header_seen = True
            names = [cell.lstrip("\ufeff").lower() for cell in cells]
            if "phone" in names:
                phone_at = names.index("phone")
                reason_at = names.index("reason") if "reason" in names else None
                continue
        numbers += 1
        if numbers > MAX_IMPORT_LINES:
            raise ServiceError(
                _("A file can have at most %(n)s numbers; split it.")
                % {"n": f"{MAX_IMPORT_LINES:,}"},
                "file",
            )
        raw = cells[phone_at] if phone_at < len(cells) else ""
        phone = phones.normalise(raw)
        if phone is None:
            invalid_count += 1
            if len(invalid) < MAX_REPORTED_INVALID:
                invalid.append((reader.line_num, raw[:40]))
        elif phone in wanted:
            repeated += 1
        else:
            reason = cells[reason_at] if reason_at is not None and reason_at < len(cells) else ""
            wanted[phone] = reason[:MAX_REASON_LENGTH]
    if numbers == 0:
        raise ServiceError(_("The file has no phone numbers."), "file")

    # Two array parameters unnested server-side: one short statement for 100,000 rows,
    # where a multi-row VALUES costs seconds just to compile.
    lines_in = (
        sa.func.unnest(
            sa.bindparam("phones", list(wanted), type_=ARRAY(sa.String)),
            sa.bindparam("reasons", list(wanted.values()), type_=ARRAY(sa.String)),
        )
        .table_valued("phone", "reason")
        .render_derived()
    )
    unnested = sa.select(
        lines_in.c.phone,
        lines_in.c.reason,
        sa.literal("import", sa.String),
        sa.literal(user_id, sa.Integer),
    )
    insert = pg_insert(Suppression).from_select(
        ["phone", "reason", "source", "created_by_id"], unnested
    )
    added = len(db.session.execute(_unless_listed(insert)).all())
    db.session.commit()
    logger.info(
        "suppression import by user %s: %d added, %d invalid", user_id, added, invalid_count
    )
    # A number repeated in the file counts as already there from its second line on.
    return ImportReport(added, len(wanted) - added + repeated, invalid, invalid_count)


def test_send(campaign_id: int, phone_raw: str, user_id: int) -> str:
    """Send the campaign's message to one number, filled from the audience's first customer.

    It goes through the sender's provider and its WhatsApp limit like any send;
    nothing is recorded as a campaign message. Returns the provider's message id.
    """
    from campaigns import erp, phones, ratelimit

    campaign = db.session.get(Campaign, campaign_id)
    if campaign is None:
        raise NotFound(_("There is no such campaign."))
    phone = phones.normalise(phone_raw)
    if phone is None:
        raise ServiceError(
            _("Enter a phone number with its area code, e.g. +55 11 98765-4321."), "phone"
        )
    try:
        with erp.client_from_config(current_app.config) as client:
            customers = client.page(campaign.segment, None, 1).customers
    except erp.ErpError as error:
        raise ServiceError(_("The ERP did not answer: %(m)s") % {"m": error.message}) from error
    sample = customers[0] if customers else {}
    params = rendering.params_for(campaign.variable_mapping, sample)
    if empty := rendering.missing_params(params):
        params |= rendering.sample_values(empty, campaign.template.parameter_format)
    decision = ratelimit.consume(db.session, [ratelimit.whatsapp_limit(campaign.sender)])
    if not decision.allowed:
        raise ServiceError(
            _("The sender's limit is used up; try again in %(s)d s.")
            % {"s": int(decision.retry_after) + 1}
        )
    try:
        result = providers.for_sender(campaign.sender, current_app.config).send_template(
            to=phone, template=campaign.template, params=params, callback_data=f"test-{campaign_id}"
        )
    except providers.SendError as error:
        raise ServiceError(_("WhatsApp refused it: %(m)s") % {"m": error.message}) from error
    record_activity(campaign_id, user_id, "test_sent", phone[:-4] + "****")
    db.session.commit()
    return result.provider_message_id


# -- queue monitor actions

LOCK_JOB = sa.text(
    "-- lock one Procrastinate job, so its status cannot change between check and action\n"
    "SELECT CAST(status AS text) AS status, task_name, args, queueing_lock"
    " FROM procrastinate_jobs WHERE id = :job_id FOR UPDATE"
)
RETRY_JOB = sa.text(
    "-- Procrastinate's own retry (what its shell's `retry` runs): back to todo, due now\n"
    "SELECT procrastinate_retry_job_v2(:job_id, now(), NULL, NULL, NULL)"
)
CANCEL_JOB = sa.text(
    "-- Procrastinate's own cancel: todo -> cancelled, no abort, the row kept\n"
    "SELECT procrastinate_cancel_job_v1(:job_id, false, false)"
)


def _locked_job(job_id: int) -> sa.Row:
    job = db.session.execute(LOCK_JOB, {"job_id": job_id}).first()
    if job is None:
        db.session.rollback()
        raise NotFound(_("There is no job #%(id)d.") % {"id": job_id})
    return job


def retry_job(job_id: int, user: User) -> None:
    """Run a failed job once more, now (its attempts count on, so no automatic retries follow)."""
    job = _locked_job(job_id)
    # The SQL function would also take a running job back to todo, and a second
    # worker would then run it while the first still is: only failed jobs qualify.
    if job.status != "failed":
        db.session.rollback()
        raise Conflict(
            _("Only failed jobs can be retried; job #%(id)d is %(status)s.")
            % {"id": job_id, "status": job.status}
        )
    try:
        db.session.execute(RETRY_JOB, {"job_id": job_id})
    except sa.exc.IntegrityError:
        db.session.rollback()
        raise Conflict(
            _(
                "Job #%(id)d cannot be retried: another waiting job"
                " holds its queueing lock %(lock)s."
            )
            % {"id": job_id, "lock": job.queueing_lock}
        ) from None
    db.session.commit()
    logger.info("job %s (%s) retried by user %s", job_id, job.task_name, user.id)


def cancel_job(job_id: int, user: User) -> None:
    """Cancel a waiting job; a message job takes its message with it.

    A message waits as queued (or retrying) for its job: left so without one, its
    campaign would never complete. A cancelled pump or fan-out job is replaced by
    the scheduler's re-kick within a minute while its campaign is sending.
    """

    job = _locked_job(job_id)
    if job.status != "todo":
        db.session.rollback()
        if job.status == "doing":
            message = _("Job #%(id)d is running; only waiting jobs can be cancelled.")
        else:
            message = _("Job #%(id)d has ended (%(status)s); there is nothing to cancel.")
        raise Conflict(message % {"id": job_id, "status": job.status})
    db.session.execute(CANCEL_JOB, {"job_id": job_id})
    waiting_as = {SEND_TASK: MessageStatus.QUEUED, RETRY_TASK: MessageStatus.RETRYING}
    message_id = (job.args or {}).get("message_id")
    if job.task_name in waiting_as and isinstance(message_id, int):
        sending.move(db.session, message_id, [waiting_as[job.task_name]], MessageStatus.CANCELLED)
    db.session.commit()
    logger.info("job %s (%s) cancelled by user %s", job_id, job.task_name, user.id)


# Retrying failed messages is not in CAMPAIGN_TRANSITIONS: it is no change of the
# campaign's own state, and a finished (completed) campaign offers no other action.
RETRY_FAILED_STATUSES = frozenset(
    {CampaignStatus.SENDING, CampaignStatus.PAUSED, CampaignStatus.COMPLETED}
)


def retry_failed(campaign_id: int, user_id: int) -> int:
    """Send again the failed messages whose error may pass; returns how many.

    Failures about the message itself (a bad number, an opt-out, a template it
    does not fit) stay failed, and so does a number suppressed since. A completed
    campaign goes back to sending; a paused one sends them once resumed.
    """

    campaign = _locked_campaign(campaign_id)
    if campaign.status not in RETRY_FAILED_STATUSES:
        db.session.rollback()
        raise Conflict(
            _("A %(status)s campaign cannot send its failed messages again.")
            % {"status": campaign.status.value}
        )
    failed_codes = db.session.scalars(
        sa.select(Message.error_code)
        .where(Message.campaign_id == campaign_id, Message.status == MessageStatus.FAILED)
        .distinct()
    ).all()
    codes = [code for code in failed_codes if is_retryable(code)]
    which = Message.error_code.in_([code for code in codes if code is not None])
    if None in codes:
        which = sa.or_(which, Message.error_code.is_(None))
    retried = 0
    if codes:
        _check_sender_and_template(_fields_of(campaign))
        retried = db.session.execute(
            sa.update(Message)
            .where(
                Message.campaign_id == campaign_id,
                Message.status == MessageStatus.FAILED,
                which,
                ~sa.exists().where(Suppression.phone == Message.phone),
            )
            .values(status=MessageStatus.PENDING, error_code=None, error_text=None, failed_at=None)
        ).rowcount
    if not retried:
        db.session.rollback()
        raise Conflict(_("No failed message has an error worth retrying."))
    deltas = counters.transition_deltas(MessageStatus.FAILED, MessageStatus.PENDING)
    counters.apply(db.session, campaign_id, {name: n * retried for name, n in deltas.items()})
    if campaign.status is CampaignStatus.COMPLETED:
        campaign.status = CampaignStatus.SENDING
        campaign.status_reason = None
        campaign.completed_at = None
    if campaign.status is CampaignStatus.SENDING:
        sending.defer_next_step(
            db.session, campaign.id, audience_loaded=campaign.audience_loaded_at is not None
        )
    record_activity(
        campaign.id,
        user_id,
        "retried_failed",
        _("%(n)d messages (%(codes)s)")
        % {"n": retried, "codes": ", ".join(sorted(code or "—" for code in codes))},
    )
    db.session.commit()
    logger.info("campaign %s: %d failed messages retried by user %s", campaign.id, retried, user_id)
    return retried
