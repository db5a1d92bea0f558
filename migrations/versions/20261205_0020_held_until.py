"""Messages held by WhatsApp's per-user marketing limit (131049) say so, and until when

``held_until`` is set when a message is held (at the send, or by a failed status
webhook): the time its one message-retry job is due. It is the explicit "held once"
marker (a message held again fails), and, while the message is ``retrying`` and the
time is to come, what the pump leaves out of its window, what the campaign page and
the API count as held, and when the earliest is tried again. "Retry failed" clears it.
A nullable column: catalog only. The partial index holds only retrying messages that
were held, so counting a campaign's held messages reads them and nothing else, however
big the campaign; built CONCURRENTLY in its own transaction, so sends go on.

Revision ID: 0020
Revises: 0019
"""

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

HELD_WHERE = "status = 'retrying' AND held_until IS NOT NULL"


def upgrade():
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.add_column("messages", sa.Column("held_until", sa.DateTime(timezone=True)))
    with op.get_context().autocommit_block():
        op.create_index(
            "messages_held_idx",
            "messages",
            ["campaign_id", "held_until"],
            postgresql_where=sa.text(HELD_WHERE),
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade():
    with op.get_context().autocommit_block():
        op.drop_index(
            "messages_held_idx",
            table_name="messages",
            postgresql_concurrently=True,
            if_exists=True,
        )
    op.drop_column("messages", "held_until")
