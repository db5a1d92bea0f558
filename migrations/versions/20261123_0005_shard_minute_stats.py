"""Shard campaign_minute_stats like campaign_counters

Every send of a campaign bumped the same (campaign, minute) row, so concurrent
message jobs queued on its row lock. A shard column in the primary key spreads
them; readers sum the shards.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 14:40:00

"""
from alembic import op
import sqlalchemy as sa

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade():
    op.add_column(
        'campaign_minute_stats',
        sa.Column('shard', sa.SmallInteger(), server_default='0', nullable=False),
    )
    op.drop_constraint('campaign_minute_stats_pkey', 'campaign_minute_stats', type_='primary')
    op.create_primary_key(
        'campaign_minute_stats_pkey', 'campaign_minute_stats', ['campaign_id', 'minute', 'shard']
    )


def downgrade():
    # Fold the shards back into one row per minute before the old key returns.
    op.execute(
        "CREATE TEMP TABLE folded ON COMMIT DROP AS"
        " SELECT campaign_id, minute, sum(sent)::int AS sent, sum(failed)::int AS failed"
        " FROM campaign_minute_stats GROUP BY campaign_id, minute"
    )
    op.execute("DELETE FROM campaign_minute_stats")
    op.drop_constraint('campaign_minute_stats_pkey', 'campaign_minute_stats', type_='primary')
    op.drop_column('campaign_minute_stats', 'shard')
    op.execute(
        "INSERT INTO campaign_minute_stats (campaign_id, minute, sent, failed)"
        " SELECT campaign_id, minute, sent, failed FROM folded"
    )
    op.create_primary_key(
        'campaign_minute_stats_pkey', 'campaign_minute_stats', ['campaign_id', 'minute']
    )
