"""Exclusions: the contact history, a campaign's frequency cap and cross-campaign exclusion,
and the admin's campaign defaults

``contact_history``: one row per number and campaign that admitted it to go, the number as
its keyed hash (``services/suppressions.phone_hash``, never the number), with when the
campaign last admitted it and which message (``campaigns/contact_history.py``). The pump
writes it for every campaign; a campaign with ``frequency_cap_days`` skips a number
another campaign (not a run of its own series) contacted within that many days. A
campaign cancelled or paused before a message was called deletes that message's row:
the other campaigns' rows are untouched, so nothing needs restoring. ``contact_locks``:
one row per number, locked by each admission (in hash order) so two campaigns racing
for a number are decided one after the other. Maintenance deletes rows of both past
``CONTACT_HISTORY_DAYS`` (by their time indexes); a person's erasure deletes theirs. The
index on ``campaign_id`` finds a campaign's rows to give back.

``campaigns.frequency_cap_days`` (NULL: no cap) and ``campaigns.exclude_running`` (false:
numbers in other running campaigns are not skipped): an upgrade changes nothing.

``campaign_defaults``: one row (id 1), what a new campaign starts with; everything off.

Revision ID: 0031
Revises: 0030
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0031"
down_revision = "0030"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.create_table(
        "contact_history",
        sa.Column("phone_hash", sa.String(length=64), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.BigInteger(), nullable=True),
        sa.Column("contacted_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("phone_hash", "campaign_id", name="contact_history_pkey"),
    )
    op.create_index("contact_history_contacted_at_idx", "contact_history", ["contacted_at"])
    op.create_index("contact_history_campaign_id_idx", "contact_history", ["campaign_id"])
    op.create_table(
        "contact_locks",
        sa.Column("phone_hash", sa.String(length=64), nullable=False),
        sa.Column("locked_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("phone_hash", name="contact_locks_pkey"),
    )
    op.create_index("contact_locks_locked_at_idx", "contact_locks", ["locked_at"])
    # Nullable without a default, and NOT NULL with a constant default: no table rewrite.
    op.add_column("campaigns", sa.Column("frequency_cap_days", sa.SmallInteger(), nullable=True))
    op.add_column(
        "campaigns",
        sa.Column("exclude_running", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    defaults = op.create_table(
        "campaign_defaults",
        sa.Column("id", sa.SmallInteger(), nullable=False),
        sa.Column("frequency_cap_days", sa.SmallInteger(), nullable=True),
        sa.Column("exclude_running", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("send_window", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("updated_by_id", sa.Integer(), nullable=True),
        sa.CheckConstraint("id = 1", name=op.f("campaign_defaults_one_row_check")),
        sa.ForeignKeyConstraint(
            ["updated_by_id"],
            ["users.id"],
            name=op.f("campaign_defaults_updated_by_id_fkey"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("campaign_defaults_pkey")),
    )
    op.bulk_insert(defaults, [{"id": 1, "exclude_running": False}])


def downgrade() -> None:
    op.drop_table("campaign_defaults")
    op.drop_column("campaigns", "exclude_running")
    op.drop_column("campaigns", "frequency_cap_days")
    op.drop_index("contact_locks_locked_at_idx", table_name="contact_locks")
    op.drop_table("contact_locks")
    op.drop_index("contact_history_campaign_id_idx", table_name="contact_history")
    op.drop_index("contact_history_contacted_at_idx", table_name="contact_history")
    op.drop_table("contact_history")
