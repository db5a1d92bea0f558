"""An audit trail of administrative actions: who, what, to what, when

``audit_events`` holds one row per administrative action (campaigns/audit.py):
the actor's user id (NULL once that user is deleted, or when no user acted: the
CLI, the system) and their email as it was, the action's code, its target, a JSONB
of details (before/after of a change; never a secret or a full phone number) and
the client's address. Maintenance deletes rows older than AUDIT_RETENTION_DAYS
through ``audit_events_at_idx``; the page filters by action through
``audit_events_action_id_idx``.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "audit_events",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column(
            "at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("actor_id", sa.Integer(), nullable=True),
        sa.Column("actor_email", sa.Text(), nullable=False),
        sa.Column("action", sa.String(length=40), nullable=False),
        sa.Column("target_type", sa.String(length=40), nullable=True),
        sa.Column("target_id", sa.BigInteger(), nullable=True),
        sa.Column("target_label", sa.Text(), nullable=True),
        sa.Column(
            "details",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("client_address", sa.String(length=45), nullable=True),
        sa.ForeignKeyConstraint(
            ["actor_id"],
            ["users.id"],
            name=op.f("audit_events_actor_id_fkey"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("audit_events_pkey")),
    )
    op.create_index("audit_events_at_idx", "audit_events", ["at"])
    op.create_index("audit_events_action_id_idx", "audit_events", ["action", "id"])


def downgrade():
    op.drop_index("audit_events_action_id_idx", table_name="audit_events")
    op.drop_index("audit_events_at_idx", table_name="audit_events")
    op.drop_table("audit_events")
