"""What Meta charges per delivered template message, by category and recipient country

``message_rates``: one row per (category, country, effective_from); the rate in force
on a day is the row with the latest ``effective_from`` on or before it
(``campaigns/pricing.py``). Admins edit them on the Settings page
(``services/pricing.py``); the pre-flight check estimates a campaign's cost from them.
All rows share one currency (the service checks it; no constraint can).

Seeded with Brazil's rates as Meta publishes them, so a Brazilian audience is priced
from the first run; an admin adds or corrects the rest.

Revision ID: 0025
Revises: 0024
"""

from datetime import date
from decimal import Decimal

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None

# Meta's WhatsApp pricing page (developers.facebook.com/docs/whatsapp/pricing), the
# USD rate card: Brazil, per delivered message, from 1 October 2026.
BRAZIL_FROM = date(2026, 10, 1)
BRAZIL_USD = {
    "MARKETING": Decimal("0.0625"),
    "UTILITY": Decimal("0.0068"),
    "AUTHENTICATION": Decimal("0.0068"),
}


def upgrade() -> None:
    # The type exists since 0002 (message_templates.category): reused, not created.
    category = postgresql.ENUM(
        "MARKETING", "UTILITY", "AUTHENTICATION", name="template_category", create_type=False
    )
    rates = op.create_table(
        "message_rates",
        sa.Column("id", sa.Integer(), sa.Identity(), nullable=False),
        sa.Column("category", category, nullable=False),
        sa.Column("country", sa.String(2), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("amount", sa.Numeric(12, 6), nullable=False),
        sa.Column("effective_from", sa.Date(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("updated_by_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["updated_by_id"],
            ["users.id"],
            name=op.f("message_rates_updated_by_id_fkey"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("message_rates_pkey")),
        sa.UniqueConstraint(
            "category",
            "country",
            "effective_from",
            name=op.f("message_rates_category_country_effective_from_key"),
        ),
        sa.CheckConstraint("amount >= 0", name=op.f("message_rates_amount_not_negative_check")),
    )
    op.bulk_insert(
        rates,
        [
            {
                "category": category_value,
                "country": "BR",
                "currency": "USD",
                "amount": amount,
                "effective_from": BRAZIL_FROM,
            }
            for category_value, amount in BRAZIL_USD.items()
        ],
    )


def downgrade() -> None:
    op.drop_table("message_rates")  # the enum type stays: message_templates uses it
