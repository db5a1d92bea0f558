"""Every write: plain typed functions that own the transaction (and, later, deferrals)."""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from werkzeug.security import check_password_hash, generate_password_hash

from app import db
from campaigns.i18n import _
from campaigns.models import (
    ApiToken,
    LoginAttempt,
    MessageTemplate,
    ParameterFormat,
    Provider,
    Role,
    Sender,
    TemplateCategory,
    TemplateStatus,
    User,
)

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
    user = User(email=email, password_hash=generate_password_hash(password), role=role)
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
    from flask import current_app

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
    password = secrets.token_urlsafe(12)
    admin = User(
        email=DEMO_ADMIN_EMAIL, password_hash=generate_password_hash(password), role=Role.ADMIN
    )
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
