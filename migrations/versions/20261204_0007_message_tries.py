"""Per-message attempts for batched sends: tries in the current queue, first throttle

Message jobs now carry batches, so Procrastinate's job attempts no longer count a
message's attempts. ``tries`` counts the calls made for a message on its current
queue (3 on campaign-messages, then 5 on message-retry; back to 0 when it moves
on, or when "retry failed" reopens it); ``attempts`` keeps counting every call.
``throttled_at`` is when WhatsApp first throttled it (130429) since it was last
sent or reopened: a throttle costs no try, until the throttle deadline.
Both columns have constant defaults, so adding them rewrites nothing.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 12:40:00

"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column(
        "messages", sa.Column("tries", sa.SmallInteger(), server_default="0", nullable=False)
    )
    op.add_column("messages", sa.Column("throttled_at", sa.DateTime(timezone=True)))


def downgrade():
    op.drop_column("messages", "throttled_at")
    op.drop_column("messages", "tries")
