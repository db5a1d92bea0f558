"""The mock WhatsApp's tables: the messages it accepted and the status webhooks it owes.

Migrated everywhere (revision 0004) so the schema is one; they stay empty when mocks
are off.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP
from sqlalchemy.orm import Mapped, mapped_column

from app import Model


class MockWhatsAppMessage(Model):
    """A message the mock WhatsApp accepted: the log tests and benchmarks count."""

    __tablename__ = "mock_whatsapp_messages"
    __table_args__ = (
        sa.Index(
            "mock_whatsapp_messages_phone_number_id_received_at_idx",
            "phone_number_id",
            "received_at",
        ),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    wamid: Mapped[str] = mapped_column(sa.String(128), unique=True)
    to: Mapped[str] = mapped_column(sa.String(32))
    phone_number_id: Mapped[str] = mapped_column(sa.String(64))
    message_id: Mapped[str | None] = mapped_column(sa.Text)  # its biz_opaque_callback_data
    template_name: Mapped[str] = mapped_column(sa.String(512))
    # The database's clock at insert, per statement (not now(), the transaction's start).
    received_at: Mapped[datetime] = mapped_column(
        TIMESTAMP(timezone=True, precision=3), server_default=sa.func.clock_timestamp()
    )

    def __repr__(self) -> str:
        return f"<MockWhatsAppMessage {self.id} {self.wamid}>"


class MockWhatsAppWebhook(Model):
    """A status webhook the mock WhatsApp still has to post (or has posted)."""

    __tablename__ = "mock_whatsapp_webhooks"
    __table_args__ = (
        sa.Index(
            "mock_whatsapp_webhooks_due_idx",
            "due_at",
            postgresql_where=sa.text("posted_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    wamid: Mapped[str] = mapped_column(sa.String(128))
    status: Mapped[str] = mapped_column(sa.String(16))  # sent, delivered, read, failed
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    due_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    posted_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")

    def __repr__(self) -> str:
        return f"<MockWhatsAppWebhook {self.id} {self.wamid} {self.status}>"


class MockWhatsAppNumber(Model):
    """What the mock WhatsApp reports about a phone number id, once told something other
    than its defaults (``mocks.whatsapp.ACCOUNT_DEFAULTS``)."""

    __tablename__ = "mock_whatsapp_numbers"

    phone_number_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    quality_rating: Mapped[str] = mapped_column(sa.String(16))
    messaging_limit_tier: Mapped[str] = mapped_column(sa.String(32))
    throughput_level: Mapped[str] = mapped_column(sa.String(32))

    def __repr__(self) -> str:
        return f"<MockWhatsAppNumber {self.phone_number_id} {self.quality_rating}>"


class MockWhatsAppTemplate(Model):
    """A template of a WhatsApp Business Account made outside Disparo, as if in WhatsApp
    Manager (``mocks/waba_templates.py``): what the mock's template listing serves besides
    the templates Disparo submitted to the mock."""

    __tablename__ = "mock_whatsapp_templates"
    __table_args__ = (
        sa.UniqueConstraint("waba_id", "name", "language", name="mock_whatsapp_templates_name_key"),
    )

    # Meta's template ids are long numbers; these start past any small test id.
    id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.Identity(start=7_000_000_000_000_001), primary_key=True
    )
    waba_id: Mapped[str] = mapped_column(sa.String(64))
    name: Mapped[str] = mapped_column(sa.String(512))
    language: Mapped[str] = mapped_column(sa.String(16))
    category: Mapped[str] = mapped_column(sa.String(32))
    status: Mapped[str] = mapped_column(sa.String(32))
    parameter_format: Mapped[str] = mapped_column(sa.String(16))
    components: Mapped[list[Any]] = mapped_column(JSONB)
    quality_score: Mapped[str] = mapped_column(sa.String(16))

    def __repr__(self) -> str:
        return f"<MockWhatsAppTemplate {self.id} {self.name}/{self.language} {self.status}>"


class MockWhatsAppMedia(Model):
    """A file the mock WhatsApp's Media API accepted (``POST /{phone-number-id}/media``):
    its id is what a send may name in a media header; the bytes are not kept."""

    __tablename__ = "mock_whatsapp_media"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    phone_number_id: Mapped[str] = mapped_column(sa.String(64))
    mime_type: Mapped[str] = mapped_column(sa.String(127))
    size: Mapped[int] = mapped_column(sa.BigInteger)
    created_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), server_default=sa.func.now()
    )

    def __repr__(self) -> str:
        return f"<MockWhatsAppMedia {self.id} {self.mime_type}>"
