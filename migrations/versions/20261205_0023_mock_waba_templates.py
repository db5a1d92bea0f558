"""The mock WhatsApp's templates made "in WhatsApp Manager"

``mock_whatsapp_templates``: templates of a WhatsApp Business Account that the mock
WhatsApp lists at ``GET /{waba-id}/message_templates`` besides those Disparo submitted
to it, so the template import (``services/template_import.py``) can be tried and tested
through the mock. Migrated everywhere like the mock's other tables; empty with mocks off.

Revision ID: 0023
Revises: 0022
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mock_whatsapp_templates",
        sa.Column(
            "id",
            sa.BigInteger(),
            sa.Identity(start=7_000_000_000_000_001),
            primary_key=True,
        ),
        sa.Column("waba_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column("language", sa.String(16), nullable=False),
        sa.Column("category", sa.String(32), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("parameter_format", sa.String(16), nullable=False),
        sa.Column("components", JSONB(), nullable=False),
        sa.Column("quality_score", sa.String(16), nullable=False),
        sa.UniqueConstraint("waba_id", "name", "language", name="mock_whatsapp_templates_name_key"),
    )


def downgrade() -> None:
    op.drop_table("mock_whatsapp_templates")
