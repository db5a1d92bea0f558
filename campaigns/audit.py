"""The audit trail: which administrative action who took, on what, when, from where.

:func:`record` adds one row to the caller's session and leaves the commit to it, so
the row is written by the same commit as the action: an action refused or rolled
back leaves none, and no action commits without its row. Services call it where
the action happens (``services/users``, ``senders``, ``suppressions``), after their
checks and before their commit.

The actor is, unless given: in a request, the API token's user on the JSON API and
the signed-in user elsewhere; in a ``flask`` command, ``cli:<OS user>``; anywhere
else (a job), ``system``. Its email is kept as written, so the row still names who
acted after that user is gone.

``details`` says what changed (``{"field": {"before": …, "after": …}}`` for a change)
and never holds a secret, a password, a token or a full phone number: a phone is
written through :func:`mask_phone` (its last four digits), a secret only as the
name of what was replaced. :func:`record` refuses a details key that names a
secret, so a slip fails in the tests rather than lands in the table, and a key not in
``DETAIL_KEYS`` (each has its words in ``labels.AUDIT_DETAIL``), so none shows raw.

Rows older than ``AUDIT_RETENTION_DAYS`` are deleted by maintenance
(:func:`delete_old_events`, in batches).

Actions (``ACTIONS``): ``user.create``, ``user.role_change``, ``user.disable``,
``user.enable``, ``user.password_reset``, ``api_token.create``, ``api_token.revoke``,
``sender.create``, ``sender.update``, ``suppression.add``, ``suppression.remove``,
``suppression.import``, ``settings.change`` (a user's or a sender's rate limits or
gap), ``message_rate.create``, ``message_rate.update``, ``message_rate.delete``
(Meta's prices, ``services/pricing``), ``campaign_defaults.update`` (what new campaigns
start with, ``services/campaign_defaults``) and ``data.erase``: a person's data erased on
request, recorded by the erasure as ``record(session, "data.erase", target_type="phone",
target_label=mask_phone(phone), details={…what was erased, counted…})``.
"""

from __future__ import annotations

import getpass
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import click
import sqlalchemy as sa
from flask import g, has_request_context, request
from flask_login import current_user

from app import DELETE_BATCH, AnySession, db, delete_oldest
from campaigns import security
from campaigns.models import AuditEvent, User
from campaigns.queries import containing
from campaigns.validation import SENDER_SETTINGS

ACTIONS = (
    "user.create",
    "user.role_change",
    "user.disable",
    "user.enable",
    "user.password_reset",
    "api_token.create",
    "api_token.revoke",
    "sender.create",
    "sender.update",
    "suppression.add",
    "suppression.remove",
    "suppression.import",
    "settings.change",
    "message_rate.create",
    "message_rate.update",
    "message_rate.delete",
    "campaign_defaults.update",
    "data.erase",
)
# Every key a details mapping may have at its top (labels.AUDIT_DETAIL words each for
# the audit page; a test holds them in step): record() refuses any other, so a key added
# without its label fails in the tests of its action rather than shows raw on the page.
DETAIL_KEYS = frozenset(
    {
        # users and API tokens
        "role",
        "user_id",
        "campaign_rate_limit_per_minute",
        "api_rate_limit_per_minute",
        # senders: their settings but the verify token (a secret), the secrets named only
        *(key for key in SENDER_SETTINGS if key != "webhook_verify_token"),
        "credentials_set",
        "credentials_replaced",
        "messaging_limit",
        "messaging_limit_overridden",
        # opt-outs
        "source",
        "numbers",
        "added",
        "invalid",
        # message rates (services/pricing.RateFields.details)
        "category",
        "country",
        "currency",
        "amount",
        "effective_from",
        # campaign defaults (services/campaign_defaults)
        "frequency_cap_days",
        "exclude_running",
        "send_window",
        # erasures (services/personal_data.ErasureReport.details)
        "phone_last4",
        "phone_hash_prefix",
        "messages",
        "campaigns",
        "cancelled",
        "opt_out_kept_as_hash",
        "undeliverable_deleted",
        "contact_history_deleted",
        "activity_entries",
        "audience_rows",
    }
)
# Words no details key may contain: their values would be secrets.
SECRET_WORDS = ("password", "secret", "token")
SYSTEM = "system"
EVENTS_PER_PAGE = 50


def mask_phone(phone: str | None) -> str | None:
    """A phone number as the trail may show it: its last four digits only."""
    if phone is None:
        return None
    digits = "".join(ch for ch in phone if ch.isdigit())
    return "…" + digits[-4:]


def change(before: Any, after: Any) -> dict[str, Any]:
    """One field's change, as ``details`` holds it."""
    return {"before": before, "after": after}


def _check_details(details: Mapping[str, Any]) -> None:
    for key, value in details.items():
        if any(word in key.lower() for word in SECRET_WORDS):
            raise ValueError(f"audit details must not hold secrets: {key!r}")
        if isinstance(value, Mapping):
            _check_details(value)


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name and no USER/LOGNAME (a container)
        return ""


def current_actor() -> User | str:
    """Who is acting now: the request's user, the CLI's OS user, or the system."""
    if has_request_context():
        # The API authenticates by token, not session (views/api.py sets g.api_user).
        if request.blueprint == "api" and g.get("api_user") is not None:
            return g.api_user
        if current_user.is_authenticated:
            return current_user._get_current_object()
        return "anonymous"
    if click.get_current_context(silent=True) is not None:
        name = _os_user()
        return f"cli:{name}" if name else "cli"
    return SYSTEM


def record(
    session: AnySession,
    action: str,
    *,
    actor: User | str | None = None,
    target_type: str | None = None,
    target_id: int | None = None,
    target_label: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> AuditEvent:
    """Add one audit row to ``session``; the caller's commit writes it with the action."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    details = dict(details or {})
    _check_details(details)
    unknown = sorted(str(key) for key in details if key not in DETAIL_KEYS)
    if unknown:
        raise ValueError(f"unknown audit details {unknown}: add them to DETAIL_KEYS, labelled")
    who = current_actor() if actor is None else actor
    event = AuditEvent(
        actor_id=None if isinstance(who, str) else who.id,
        actor_email=who if isinstance(who, str) else who.email,
        action=action,
        target_type=target_type,
        target_id=target_id,
        target_label=target_label,
        details=details,
        client_address=security.client_address() if has_request_context() else None,
    )
    session.add(event)
    return event


@dataclass(frozen=True)
class AuditFilters:
    action: str | None = None
    actor: str | None = None  # any part of the actor's email (or "cli", "system")

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> AuditFilters:
        """The filters of the page's or the API's query string; an unknown action filters
        nothing (the API refuses it first)."""
        action = args.get("action") or None
        return cls(
            action=action if action in ACTIONS else None,
            actor=(args.get("actor") or "").strip() or None,
        )


@dataclass(frozen=True)
class AuditPage:
    events: list[AuditEvent]
    next_before: int | None  # the last id shown, when older rows follow it


def events_page(
    filters: AuditFilters, before: int | None = None, per_page: int = EVENTS_PER_PAGE
) -> AuditPage:
    """The events before id ``before``, newest first (ids follow commit order closely
    enough: each is taken at the action's insert).

    Keyset, not OFFSET: a deep page costs what the first does, and events recorded
    while an admin reads neither repeat a row nor push one out of view.
    """
    query = sa.select(AuditEvent).order_by(AuditEvent.id.desc()).limit(per_page + 1)
    if filters.action:
        query = query.where(AuditEvent.action == filters.action)
    if filters.actor:
        query = query.where(AuditEvent.actor_email.ilike(containing(filters.actor)))
    if before is not None:
        query = query.where(AuditEvent.id < before)
    events = list(db.session.scalars(query))
    more = len(events) > per_page
    events = events[:per_page]
    return AuditPage(events, events[-1].id if more else None)


def delete_old_events(session: AnySession, days: int, batch: int = DELETE_BATCH) -> int:
    """Delete up to ``batch`` of the events older than ``days`` (maintenance); the caller
    commits."""
    return delete_oldest(session, AuditEvent, AuditEvent.at, timedelta(days=days), batch)
