"""The API's idempotency keys: a create request's key and the response it got

One row per (user, ``Idempotency-Key``) of a POST that creates (campaigns/idempotency.py):
the request's method, path and body hash, whether it is still being processed, and
once done its status, body and ``Location``, so a retry is answered with the same
response instead of creating again. Rows are kept 24 hours; maintenance deletes older
ones by ``created_at`` (hence its index).

No index on ``messages`` is added for the messages endpoint: migration 0006's
``(campaign_id, id)`` and ``(campaign_id, status, id)`` already make its keyset pages,
with or without a status, range scans.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-04 21:30:00

"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("method", sa.String(10), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("body_sha256", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("response_status", sa.SmallInteger(), nullable=True),
        sa.Column("response_body", sa.Text(), nullable=True),
        sa.Column("response_location", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("idempotency_keys_user_id_fkey"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("idempotency_keys_pkey")),
        sa.UniqueConstraint("user_id", "key", name=op.f("idempotency_keys_user_key_key")),
        sa.CheckConstraint(
            "state IN ('in_progress', 'done')", name=op.f("idempotency_keys_state_known_check")
        ),
    )
    op.create_index("idempotency_keys_created_at_idx", "idempotency_keys", ["created_at"])


def downgrade() -> None:
    op.drop_index("idempotency_keys_created_at_idx", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
