"""Recurring campaigns: a campaign that repeats (the series) and the runs it makes

``campaigns.recurrence``: how the campaign repeats (``{"every": "daily"|"weekly"|"monthly",
"at": "HH:MM", "weekday": 0-6, "day": 1-31, "time_zone": "<IANA>"}``; NULL: it does not,
as every campaign before this revision). ``campaigns.recurrence_of_id``: the series a run
was made from, and ``run_number`` its place among the series' runs (both NULL for any
other campaign). Unique together: two scheduler ticks never make the same run twice, and
the series' runs are read in order through the constraint's index.

Revision ID: 0032
Revises: 0030
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0032"
down_revision = "0030"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("campaigns", sa.Column("recurrence", JSONB(), nullable=True))
    op.add_column(
        "campaigns",
        sa.Column(
            "recurrence_of_id",
            sa.Integer(),
            sa.ForeignKey("campaigns.id", name="campaigns_recurrence_of_id_fkey"),
            nullable=True,
        ),
    )
    op.add_column("campaigns", sa.Column("run_number", sa.Integer(), nullable=True))
    op.create_unique_constraint(
        "campaigns_run_number_key", "campaigns", ["recurrence_of_id", "run_number"]
    )


def downgrade() -> None:
    op.drop_constraint("campaigns_run_number_key", "campaigns", type_="unique")
    op.drop_column("campaigns", "run_number")
    op.drop_column("campaigns", "recurrence_of_id")
    op.drop_column("campaigns", "recurrence")
