"""What Meta says about each sender's account: its business portfolio, quality rating,
messaging limit and throughput, and the mock WhatsApp's view of the same

- ``senders.business_id``: the business portfolio (Meta's messaging limit is shared by
  every number of a portfolio since October 2025); NULL: the sender is its own.
- ``senders.quality_rating``: GREEN / YELLOW / RED / UNKNOWN as Meta last said; NULL:
  never read.
- ``senders.messaging_limit``: the effective limit on unique users per moving 24 h
  (NULL: unlimited); ``messaging_limit_reported`` is Meta's last report as it came
  (``TIER_2K``, ``TIER_UNLIMITED``), kept apart so an admin's override
  (``messaging_limit_overridden``) holds until Meta reports something different.
- ``senders.throughput_per_second``: messages per second Meta allows the number.
- ``senders.account_read_at``: when any of these was last read or received.
- ``mock_whatsapp_numbers``: what the mock WhatsApp reports for a phone number id when
  told otherwise than its defaults (GREEN, unlimited, 1,000 msg/s).

Revision ID: 0018
Revises: 0017
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("senders", sa.Column("business_id", sa.String(64), nullable=True))
    op.add_column("senders", sa.Column("quality_rating", sa.String(16), nullable=True))
    op.add_column("senders", sa.Column("messaging_limit", sa.BigInteger(), nullable=True))
    op.add_column("senders", sa.Column("messaging_limit_reported", sa.String(32), nullable=True))
    op.add_column(
        "senders",
        sa.Column(
            "messaging_limit_overridden", sa.Boolean(), server_default=sa.false(), nullable=False
        ),
    )
    op.add_column("senders", sa.Column("throughput_per_second", sa.Integer(), nullable=True))
    op.add_column(
        "senders", sa.Column("account_read_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.create_index("senders_business_id_idx", "senders", ["business_id"])
    op.create_table(
        "mock_whatsapp_numbers",
        sa.Column("phone_number_id", sa.String(64), primary_key=True),
        sa.Column("quality_rating", sa.String(16), nullable=False),
        sa.Column("messaging_limit_tier", sa.String(32), nullable=False),
        sa.Column("throughput_level", sa.String(32), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("mock_whatsapp_numbers")
    op.drop_index("senders_business_id_idx", table_name="senders")
    for column in (
        "account_read_at",
        "throughput_per_second",
        "messaging_limit_overridden",
        "messaging_limit_reported",
        "messaging_limit",
        "quality_rating",
        "business_id",
    ):
        op.drop_column("senders", column)
