"""WhatsApp senders: numbers, credentials and pace, and a connection check."""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from flask import current_app

from app import db
from campaigns import providers
from campaigns.i18n import _
from campaigns.models import Provider, Sender
from campaigns.services import NotFound, ServiceError
from campaigns.validation import SENDER_SETTINGS, SenderFields


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
