"""What recipients answered: replies and button clicks, attributed to the message they answer

``messages.replied_at`` / ``clicked_at``: the recipient's first reply to the message and
first button click on it (campaigns/answers.py sets each once, so a webhook Meta delivers
again counts nothing twice); ``reply_text`` (the latest reply, truncated) and
``clicked_button`` (the button's text) are personal data, erased with the phone
(services/personal_data.py); the times and counters stay. ``campaign_counters.replied``
and ``.clicked`` count the messages answered, sharded like the rest (O(1) progress).
The partial index holds only the messages answered, so the recipients' "Replied" filter
pages through them and nothing else, however big the campaign; built CONCURRENTLY in its
own transaction, so sends go on.

Revision ID: 0028
Revises: 0027
"""

import sqlalchemy as sa
from alembic import op

revision = "0028"
down_revision = "0027"
branch_labels = None
depends_on = None


REPLIED_WHERE = "replied_at IS NOT NULL"


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
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
    with op.get_context().autocommit_block():
        op.create_index(
            "messages_replied_idx",
            "messages",
            ["campaign_id", "id"],
            postgresql_where=sa.text(REPLIED_WHERE),
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            "messages_replied_idx",
            table_name="messages",
            postgresql_concurrently=True,
            if_exists=True,
        )
    for name in ("clicked", "replied"):
        op.drop_column("campaign_counters", name)
    for name in ("clicked_button", "clicked_at", "reply_text", "replied_at"):
        op.drop_column("messages", name)
