"""Indexes for a campaign's recipients in id order (keyset pages, CSV export)

Without an index on (campaign_id, id) the planner walks the primary key across
every other campaign's rows to page one campaign in id order (about 200 ms with
1.2M rows in the table, growing with its history). (campaign_id, status, id)
replaces (campaign_id, status): it serves the same lookups and makes a
status-filtered page an exact range scan. Built CONCURRENTLY so a deploy does not
block sends on a large messages table.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 15:20:00

"""
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade():
    with op.get_context().autocommit_block():
        op.create_index(
            'messages_campaign_id_idx', 'messages', ['campaign_id', 'id'],
            postgresql_concurrently=True, if_not_exists=True,
        )
        op.create_index(
            'messages_campaign_status_id_idx', 'messages', ['campaign_id', 'status', 'id'],
            postgresql_concurrently=True, if_not_exists=True,
        )
        op.drop_index(
            'messages_campaign_status_idx', table_name='messages',
            postgresql_concurrently=True, if_exists=True,
        )


def downgrade():
    with op.get_context().autocommit_block():
        op.create_index(
            'messages_campaign_status_idx', 'messages', ['campaign_id', 'status'],
            postgresql_concurrently=True, if_not_exists=True,
        )
        op.drop_index(
            'messages_campaign_status_id_idx', table_name='messages',
            postgresql_concurrently=True, if_exists=True,
        )
        op.drop_index(
            'messages_campaign_id_idx', table_name='messages',
            postgresql_concurrently=True, if_exists=True,
        )
