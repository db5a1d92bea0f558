"""When each fact Meta reports about a sender or a template was last applied

Meta's webhooks can arrive late, out of order, or again (it retries for days): each
fact keeps the time of the event that set it (the webhook's ``entry[].time``; a Graph
API read's own time), and an older event about it is ignored.

- ``senders.quality_rating_at``, ``throughput_at``: the number's quality rating and
  throughput; ``messaging_limit_at``: the portfolio's messaging limit (the same on
  every member of the portfolio, as the report it came with).
- ``message_templates.status_event_at``, ``quality_event_at``, ``category_event_at``:
  the template's status, quality rating and category from its webhooks.

NULL: nothing applied yet, so any event applies.

Revision ID: 0021
Revises: 0020
"""

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

SENDER_COLUMNS = ("quality_rating_at", "throughput_at", "messaging_limit_at")
TEMPLATE_COLUMNS = ("status_event_at", "quality_event_at", "category_event_at")


def upgrade() -> None:
    for name in SENDER_COLUMNS:
        op.add_column("senders", sa.Column(name, sa.DateTime(timezone=True), nullable=True))
    for name in TEMPLATE_COLUMNS:
        op.add_column(
            "message_templates", sa.Column(name, sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    for name in TEMPLATE_COLUMNS:
        op.drop_column("message_templates", name)
    for name in SENDER_COLUMNS:
        op.drop_column("senders", name)
