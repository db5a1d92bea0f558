"""Numbers WhatsApp could not deliver to (131026), remembered for a while

``undeliverable_numbers`` keeps, for each number a send failed with 131026, its keyed
hash (``services/suppressions.phone_hash``, never the number in the clear) and when
it last failed so. Later campaigns' fan-out skips such numbers (code
``undeliverable``) for ``UNDELIVERABLE_DAYS``; maintenance deletes older rows, and a
person's erasure deletes theirs. The index on ``failed_at`` serves the prune.

Revision ID: 0019
Revises: 0018
"""

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "undeliverable_numbers",
        sa.Column("phone_hash", sa.String(length=64), nullable=False),
        sa.Column(
            "failed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("phone_hash", name="undeliverable_numbers_pkey"),
    )
    op.create_index("undeliverable_numbers_failed_at_idx", "undeliverable_numbers", ["failed_at"])


def downgrade():
    op.drop_index("undeliverable_numbers_failed_at_idx", table_name="undeliverable_numbers")
    op.drop_table("undeliverable_numbers")
