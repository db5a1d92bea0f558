"""A sender slowed by WhatsApp's throughput error (130429), and when it recovers

- ``senders.slowdown_factor``: the share of its configured rate the sender sends at,
  as of its last throughput error (1: full speed; never below 0.5).
- ``senders.slowed_at``: when the factor last stepped down (events within a few
  seconds of it are the same event).
- ``senders.last_throttled_at``: the last throughput error; the factor recovers a
  step a minute from it (``campaigns/slowdown.py``). NULL: never slowed.

Adding nullable columns and one with a constant default takes a brief lock only.

Revision ID: 0022
Revises: 0021
"""

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "senders",
        sa.Column("slowdown_factor", sa.Float(), server_default="1", nullable=False),
    )
    op.add_column("senders", sa.Column("slowed_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "senders", sa.Column("last_throttled_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.create_check_constraint(
        op.f("senders_slowdown_factor_range_check"),
        "senders",
        "slowdown_factor > 0 AND slowdown_factor <= 1",
    )


def downgrade() -> None:
    op.drop_constraint(op.f("senders_slowdown_factor_range_check"), "senders", type_="check")
    for column in ("last_throttled_at", "slowed_at", "slowdown_factor"):
        op.drop_column("senders", column)
