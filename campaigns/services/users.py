"""Accounts: users, their passwords and sign-ins, roles and limits, and API tokens."""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
from dataclasses import dataclass

import sqlalchemy as sa
from flask import current_app
from werkzeug.security import check_password_hash, generate_password_hash

from app import db
from campaigns import audit, i18n, login_throttle
from campaigns.i18n import _, ngettext
from campaigns.models import (
    ApiToken,
    LoginAttempt,
    Role,
    User,
    width,
)
from campaigns.services import Conflict, NotFound, ServiceError
from campaigns.validation import UserLimits

logger = logging.getLogger(__name__)


MIN_PASSWORD_LENGTH = 10
# A user's email, and every sign-in's (recorded in login_attempts), must fit.
EMAIL_MAX_LENGTH = min(width(User.__table__.c.email), width(LoginAttempt.__table__.c.email))


# A password hash to compare against when the email is unknown, so a failed
# login takes the same time whether or not the account exists.
_DUMMY_HASH = generate_password_hash(secrets.token_hex(8))


def hash_password(password: str) -> str:
    """A salted hash under the configured method (werkzeug's scrypt unless set otherwise)."""
    return generate_password_hash(password, method=current_app.config["PASSWORD_HASH_METHOD"])


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def create_user(email: str, password: str, role: Role = Role.VIEWER) -> User:
    """Create a user; the email is unique regardless of case."""
    email = email.strip()
    if "@" not in email or len(email) > EMAIL_MAX_LENGTH:
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
    db.session.flush()  # its id, for the audit row
    audit.record(
        db.session,
        "user.create",
        target_type="user",
        target_id=user.id,
        target_label=user.email,
        details={"role": role.value},
    )
    db.session.commit()
    logger.info("created user %s (%s) with role %s", user.id, user.email, role)
    return user


def create_api_token(user_id: int, name: str = "default") -> tuple[ApiToken, str]:
    """Create a bearer token; the raw value is returned once and never stored."""
    raw = "dsp_" + secrets.token_urlsafe(32)
    token = ApiToken(user_id=user_id, name=name, token_sha256=hash_token(raw), prefix=raw[:10])
    db.session.add(token)
    db.session.flush()  # its id, for the audit row
    _record_token(token, "api_token.create")
    db.session.commit()
    return token, raw


@dataclass(frozen=True)
class LoginResult:
    user: User | None
    error: str | None = None
    retry_after: int | None = None  # seconds, when refused for too many failures


def authenticate(email: str, password: str, ip_address: str) -> LoginResult:
    """Check a sign-in, unless too many failures make it wait (campaigns/login_throttle.py).

    The throttle's locks are held from its count to this commit, so concurrent
    attempts on one account or from one address are counted one after the other.
    """
    email = email.strip().lower()[:EMAIL_MAX_LENGTH]  # longer is nobody's, and would not fit
    verdict = login_throttle.check(
        db.session,
        email,
        ip_address,
        free=_login_setting("LOGIN_FREE_FAILURES"),
        cap=_login_setting("LOGIN_MAX_DELAY_SECONDS"),
    )
    if verdict.wait_seconds:
        db.session.rollback()  # releases the locks; a refused attempt is not recorded
        logger.warning(
            "sign-in delayed %ss for %s from %s", verdict.wait_seconds, email, ip_address
        )
        return LoginResult(None, _try_again_in(verdict.wait_seconds), verdict.wait_seconds)

    user = db.session.scalar(sa.select(User).where(sa.func.lower(User.email) == email))
    valid = check_password_hash(user.password_hash if user else _DUMMY_HASH, password)
    ok = bool(user and valid and user.is_active)
    login_throttle.record(db.session, email, ip_address, ok, verdict.now)
    if ok:
        assert user is not None
        user.last_login_at = verdict.now
    db.session.commit()
    if ok:
        return LoginResult(user)
    if user and valid and not user.is_active:
        return LoginResult(None, _("This account is disabled."))
    return LoginResult(None, _("Wrong email or password."))


def _try_again_in(seconds: int) -> str:
    # Flask-Babel's ngettext formats the text itself, with num= and the keywords given.
    if seconds < 60:
        text = ngettext(
            "Too many failed sign-ins. Try again in %(n)d second.",
            "Too many failed sign-ins. Try again in %(n)d seconds.",
            seconds,
            n=seconds,
        )
        return str(text)
    minutes = math.ceil(seconds / 60)
    text = ngettext(
        "Too many failed sign-ins. Try again in %(n)d minute.",
        "Too many failed sign-ins. Try again in %(n)d minutes.",
        minutes,
        n=minutes,
    )
    return str(text)


def _login_setting(name: str) -> int:
    return int(current_app.config[name])


def update_user(user_id: int, changes: UserLimits, acting_user_id: int) -> User:
    """Change a user's role or rate limits (admins only, enforced by the views)."""
    user = db.session.get(User, user_id)
    if user is None:
        raise NotFound(_("There is no such user."))
    if changes.role is not None and user.id == acting_user_id and changes.role is not Role.ADMIN:
        raise Conflict(_("You cannot remove your own admin role."))
    if changes.role is not None and changes.role is not user.role:
        _record_user(
            user, "user.role_change", {"role": audit.change(user.role.value, changes.role.value)}
        )
        user.role = changes.role
        _end_sessions(user)
    limits = {}
    for name in USER_LIMITS:
        new = getattr(changes, name)
        if new is not None and new != getattr(user, name):
            limits[name] = audit.change(getattr(user, name), new)
            setattr(user, name, new)
    if limits:
        _record_user(user, "settings.change", limits)
    db.session.commit()
    return user


def set_preferences(user_id: int, locale: str | None, timezone: str | None) -> User:
    """A user's own language and time zone; None (empty) gives the choice back to the
    browser's Accept-Language and to DISPLAY_TIMEZONE. Not audited: it changes only
    what this user sees."""
    user = db.session.get(User, user_id)
    if user is None:
        raise NotFound(_("There is no such user."))
    if locale is not None and locale not in i18n.LOCALES:
        raise ServiceError(_("Choose a language from the list."), "locale")
    if timezone is not None and not i18n.valid_timezone(timezone):
        raise ServiceError(_("Choose a time zone from the list."), "timezone")
    user.locale, user.timezone = locale, timezone
    db.session.commit()
    return user


# The limits an admin sets on a user (recorded as settings.change when they change).
USER_LIMITS = ("campaign_rate_limit_per_minute", "api_rate_limit_per_minute")


def _record_user(user: User, action: str, details: dict | None = None) -> None:
    audit.record(
        db.session,
        action,
        target_type="user",
        target_id=user.id,
        target_label=user.email,
        details=details,
    )


def _record_token(token: ApiToken, action: str) -> None:
    # Its name and owner only: neither the token nor its prefix.
    audit.record(
        db.session,
        action,
        target_type="api_token",
        target_id=token.id,
        target_label=token.name,
        details={"user_id": token.user_id},
    )


def set_user_disabled(user_id: int, disabled: bool, acting_user_id: int) -> User:
    """Disable (or re-enable) a user: a disabled user cannot sign in and its tokens stop working."""
    user = db.session.get(User, user_id)
    if user is None:
        raise NotFound(_("There is no such user."))
    if user.id == acting_user_id and disabled:
        raise Conflict(_("You cannot disable yourself."))
    if disabled and not user.is_disabled:
        _end_sessions(user)
    if disabled != user.is_disabled:
        _record_user(user, "user.disable" if disabled else "user.enable")
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
    _end_sessions(user)
    _record_user(user, "user.password_reset")
    db.session.commit()
    return password


def sign_out_everywhere(user_id: int) -> None:
    """Signing out ends every session of the user, on every device."""
    db.session.execute(
        sa.update(User).where(User.id == user_id).values(session_version=User.session_version + 1)
    )
    db.session.commit()


def _end_sessions(user: User) -> None:
    # Every session and remember-me cookie holds the version it was issued under
    # (User.get_id); the next request of each finds it changed and is signed out.
    # The caller commits.
    user.session_version = User.session_version + 1


def revoke_api_token(token_id: int, user_id: int) -> None:
    """Revoke one of the user's own tokens."""
    token = db.session.get(ApiToken, token_id)
    if token is None or token.user_id != user_id:
        raise NotFound(_("There is no such token."))
    if token.revoked_at is None:
        token.revoked_at = sa.func.now()
        _record_token(token, "api_token.revoke")
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
