"""Sending windows in each recipient's time zone

``campaigns.send_window`` (JSONB, NULL: no window, any time, as before):
``{"start": "09:00", "end": "20:00", "days": [0, 1, 2, 3, 4, 5]}`` in each recipient's
local time (campaigns/send_windows.py). ``campaigns.time_zone_field`` (NULL: from the
number): the customer field or CSV column naming a recipient's IANA zone.
``campaigns.window_zones`` (JSONB, NULL): the campaign's recipients' zones and how many of
each are pending, recorded by the fan-out and kept by the pump, so neither the pump nor
the progress reads the campaign's pending rows to know them.
``messages.time_zone``: the recipient's zone (campaigns/time_zones.py), set by the
fan-out. The partial index ``messages_pending_zone_idx`` on (campaign_id, time_zone, id)
of pending rows lets the pump take the next pending messages of the open zones in id
order, reading a zone's first rows only; built CONCURRENTLY in its own transaction, so
sends go on. Nullable columns: catalog only, existing campaigns unchanged.

Revision ID: 0030
Revises: 0029
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0030"
down_revision = "0029"
branch_labels = None
depends_on = None


def upgrade():
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.add_column("campaigns", sa.Column("send_window", JSONB(), nullable=True))
    op.add_column("campaigns", sa.Column("time_zone_field", sa.String(64), nullable=True))
    op.add_column("campaigns", sa.Column("window_zones", JSONB(), nullable=True))
    op.add_column("messages", sa.Column("time_zone", sa.String(64), nullable=True))
    with op.get_context().autocommit_block():
        op.create_index(
            "messages_pending_zone_idx",
            "messages",
            ["campaign_id", "time_zone", "id"],
            postgresql_where=sa.text("status = 'pending'"),
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade():
    with op.get_context().autocommit_block():
        op.drop_index(
            "messages_pending_zone_idx",
            table_name="messages",
            postgresql_concurrently=True,
            if_exists=True,
        )
    op.drop_column("messages", "time_zone")
    op.drop_column("campaigns", "window_zones")
    op.drop_column("campaigns", "time_zone_field")
    op.drop_column("campaigns", "send_window")
