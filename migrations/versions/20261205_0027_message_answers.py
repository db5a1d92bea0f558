"""What recipients answered: replies and button clicks, attributed to the message they answer

``messages.replied_at`` / ``clicked_at``: the recipient's first reply to the message and
first button click on it (campaigns/answers.py sets each once, so a webhook Meta delivers
again counts nothing twice); ``reply_text`` (the latest reply, truncated) and
``clicked_button`` (the button's text) are personal data, erased with the phone
(services/personal_data.py); the times and counters stay. ``campaign_counters.replied``
and ``.clicked`` count the messages answered, sharded like the rest (O(1) progress).

Revision ID: 0027
Revises: 0025
"""

import sqlalchemy as sa
from alembic import op

revision = "0027"
down_revision = "0025"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable columns without a default, and NOT NULL ones with a constant default: no
    # table rewrite on PostgreSQL 11+, only a brief ACCESS EXCLUSIVE lock.
    op.add_column("messages", sa.Column("replied_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("messages", sa.Column("reply_text", sa.Text(), nullable=True))
    op.add_column("messages", sa.Column("clicked_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("messages", sa.Column("clicked_button", sa.String(64), nullable=True))
    for name in ("replied", "clicked"):
        op.add_column(
            "campaign_counters",
            sa.Column(name, sa.BigInteger(), server_default="0", nullable=False),
        )


def downgrade() -> None:
    for name in ("clicked", "replied"):
        op.drop_column("campaign_counters", name)
    for name in ("clicked_button", "clicked_at", "reply_text", "replied_at"):
        op.drop_column("messages", name)
