"""WhatsApp senders: numbers, credentials and pace, a connection check, and what Meta
says about each number (campaigns/account_health.py)."""

from __future__ import annotations

import logging
import secrets
from dataclasses import replace
from typing import Any

import sqlalchemy as sa
from flask import current_app

from app import db
from campaigns import account_health, audit, providers, queues
from campaigns.clock import database_now
from campaigns.i18n import _
from campaigns.models import Provider, Sender
from campaigns.services import NotFound, ServiceError
from campaigns.validation import SENDER_SETTINGS, SenderFields

logger = logging.getLogger(__name__)

# A change to any of these (or a new secret) makes the next read of the account worth it.
CONNECTION_SETTINGS = ("provider", "phone_number_id", "access_token")


def save_sender(fields: SenderFields, sender_id: int | None = None) -> Sender:
    """Create or update a sender; blank secrets keep the stored ones."""
    sender = Sender() if sender_id is None else db.session.get(Sender, sender_id)
    if sender is None:
        raise NotFound(_("There is no such sender."))
    before = {} if sender_id is None else _audited(sender)
    clash = db.session.scalar(
        sa.select(Sender.id).where(Sender.name == fields.name, Sender.id != (sender_id or 0))
    )
    if clash:
        raise ServiceError(_("Another sender has that name."), "name")
    for name in SENDER_SETTINGS:
        setattr(sender, name, getattr(fields, name))
    if fields.access_token is not None:
        sender.access_token = fields.access_token
    if fields.app_secret is not None:
        sender.app_secret = fields.app_secret
    if sender.provider is Provider.MOCK and not sender.app_secret:
        sender.app_secret = secrets.token_hex(32)  # the mock signs its webhooks with it
    if sender_id is None:
        db.session.add(sender)
    db.session.flush()  # its id, for the audit row; its business_id, for its portfolio
    after = _audited(sender)
    moved = after["business_id"] != before.get("business_id")
    limit_before = _limit_facts(sender)
    if moved:
        # The limit facts it holds were its old portfolio's: its override must not
        # follow it into the new one.
        account_health.join_portfolio(db.session, sender)
    limit_after = _limit_facts(sender)
    limit_changes = {
        name: audit.change(limit_before[name], value)
        for name, value in limit_after.items()
        if value != limit_before[name]
    }
    _record_changes(sender, before, created=sender_id is None, extra=limit_changes)
    if can_read_account(sender) and (
        moved or any(after[name] != before.get(name) for name in CONNECTION_SETTINGS)
    ):
        # Connected (or connected differently, or to another portfolio): read its
        # quality and limits, in a job so that saving never waits on Meta.
        queues.defer_account_read(db.session, sender.id)
    db.session.commit()
    return sender


def can_read_account(sender: Sender) -> bool:
    """Has the sender what a Graph API read needs (the mock asks for no token)?"""
    return bool(sender.phone_number_id) and (
        sender.provider is Provider.MOCK or bool(sender.access_token)
    )


def refresh_account(sender_id: int) -> bool:
    """Read and apply what Meta says about the sender's number; False if it cannot be
    read (no phone number id or token), or was deleted or connected otherwise while
    Meta answered. ProviderError if Meta refuses or is down.

    No transaction is open during the call (it can take seconds, and a transaction
    left open holds back vacuum and any lock it took): what the call needs is read and
    the transaction ended, then the report is applied in a new one."""
    sender = db.session.get(Sender, sender_id)
    if sender is None:
        raise NotFound(_("There is no such sender."))
    if not can_read_account(sender):
        db.session.rollback()
        return False
    # A "now" read: what Meta answers is as of the call, at the database's time.
    read_at = account_health.whole_seconds(database_now(db.session))
    connection = _connection(sender)
    db.session.expunge(sender)  # a detached copy the provider reads, with no lazy load
    db.session.rollback()  # ends the transaction before the call
    report = providers.for_sender(sender, current_app.config).account_status()
    current = db.session.get(Sender, sender_id)
    if current is None or _connection(current) != connection or not can_read_account(current):
        db.session.rollback()
        logger.info("sender %s: deleted or reconnected during its account read", sender_id)
        return False
    account_health.apply_report(db.session, current, replace(report, at=read_at))
    db.session.commit()
    return True


def _connection(sender: Sender) -> tuple[Any, ...]:
    """What an account read is about: the same values after the call, the same number."""
    return sender.provider, sender.phone_number_id


def readable_sender_ids() -> list[int]:
    """Active senders whose account can be read, by id."""
    query = (
        sa.select(Sender.id)
        .where(Sender.is_active.is_(True), Sender.phone_number_id.is_not(None))
        .order_by(Sender.id)
    )
    return list(db.session.scalars(query))


def override_messaging_limit(sender_id: int, limit: int | None) -> Sender:
    """An admin's messaging limit for the sender's portfolio (None: unlimited), until
    Meta reports a value other than its last one; audited as a settings.change."""
    sender = db.session.get(Sender, sender_id)
    if sender is None:
        raise NotFound(_("There is no such sender."))
    before = {s.id: s.messaging_limit for s in account_health.portfolio(db.session, sender)}
    for member_id in account_health.override_messaging_limit(db.session, sender, limit):
        member = db.session.get(Sender, member_id)
        assert member is not None  # locked by portfolio()
        _audit_limit(member, {"messaging_limit": audit.change(before.get(member.id), limit)})
    db.session.commit()
    return sender


def _audit_limit(member: Sender, changes: dict[str, Any]) -> None:
    """An admin changed the portfolio's messaging limit: one settings.change per member."""
    audit.record(
        db.session,
        "settings.change",
        target_type="sender",
        target_id=member.id,
        target_label=member.name,
        details={**changes, "business_id": member.business_id},
    )


def clear_messaging_limit_override(sender_id: int) -> Sender:
    """End an admin's override of the sender's portfolio: Meta's last report applies again
    (unknown until Meta is read, if it never was); audited as a settings.change for each
    sender that had it."""
    sender = db.session.get(Sender, sender_id)
    if sender is None:
        raise NotFound(_("There is no such sender."))
    for member, before in account_health.clear_override(db.session, sender):
        _audit_limit(
            member,
            {
                "messaging_limit": audit.change(before, member.messaging_limit),
                "messaging_limit_overridden": audit.change(True, False),
            },
        )
    db.session.commit()
    return sender


# What a sender's pace is made of: a change to them is recorded as settings.change.
PACE_SETTINGS = ("rate_limit_per_minute", "min_interval_ms")
# Written to the trail only as "replaced", never as values.
SECRET_SETTINGS = ("access_token", "app_secret", "webhook_verify_token")


def _audited(sender: Sender) -> dict[str, Any]:
    """The sender's settings as the audit trail may hold them."""
    values: dict[str, Any] = {
        name: getattr(sender, name) for name in (*SENDER_SETTINGS, *SECRET_SETTINGS)
    }
    values["provider"] = sender.provider.value if sender.provider else None
    # The business's own number, but the trail keeps no full phone number of anyone's.
    values["display_phone_number"] = audit.mask_phone(sender.display_phone_number)
    return values


def _limit_facts(sender: Sender) -> dict[str, Any]:
    """The messaging limit as the trail records its change when the sender's portfolio
    changes (account_health.join_portfolio)."""
    return {
        "messaging_limit": sender.messaging_limit,
        "messaging_limit_overridden": sender.messaging_limit_overridden,
    }


def _record_changes(
    sender: Sender, before: dict[str, Any], created: bool, extra: dict[str, Any] | None = None
) -> None:
    """One sender.create; or a sender.update for what changed besides the pace (and the
    ``extra`` changes that came with it) and a settings.change for the pace (either only
    if something changed)."""
    after = _audited(sender)
    changed = [name for name in after if after[name] != before.get(name)]
    replaced = [name for name in SECRET_SETTINGS if name in changed]
    plain = {name: after[name] for name in after if name not in SECRET_SETTINGS}

    def record(action: str, details: dict[str, Any]) -> None:
        audit.record(
            db.session,
            action,
            target_type="sender",
            target_id=sender.id,
            target_label=sender.name,
            details=details,
        )

    if created:
        record("sender.create", plain | ({"credentials_set": replaced} if replaced else {}))
        return
    fields = {
        name: audit.change(before[name], after[name])
        for name in changed
        if name not in SECRET_SETTINGS and name not in PACE_SETTINGS
    }
    fields |= extra or {}
    if fields or replaced:
        record("sender.update", fields | ({"credentials_replaced": replaced} if replaced else {}))
    pace = {
        name: audit.change(before[name], after[name]) for name in changed if name in PACE_SETTINGS
    }
    if pace:
        record("settings.change", pace)


def check_sender_connection(sender_id: int) -> tuple[bool, str]:
    """Ask the provider about a sender; return whether it answered well, and what it said."""
    sender = db.session.get(Sender, sender_id)
    if sender is None:
        raise NotFound(_("There is no such sender."))
    try:
        return True, providers.for_sender(sender, current_app.config).check_connection()
    except providers.ProviderError as error:
        return False, error.message
