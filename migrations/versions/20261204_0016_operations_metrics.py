"""Per-minute figures for /metrics that no table kept: failures by error code, rate-limit
denials by key kind, and the lag of WhatsApp's status webhooks

Prometheus scrapes /metrics every few seconds, and a scrape must cost the same on a
campaign of a million messages as on one of ten: it reads these small tables (one
row per minute, kind and shard) rather than counting messages. Each is written in
the transaction that did the thing it counts, sharded like ``campaign_minute_stats``
so concurrent writers rarely share a row, and maintenance deletes minutes older than
a day. ``campaign_minute_stats`` gains an index on its minute, so "sent in the last
complete minute" over every campaign reads only that minute's rows.

- ``message_failure_minutes``: messages failed per minute, campaign and error code
  ('' when WhatsApp gave none). Per campaign so that a transaction's rows here are
  serialised by the campaign's counter shard it already holds (no deadlock between
  two transactions bumping two codes in opposite orders).
- ``rate_limit_denial_minutes``: units the limiter held back per minute and kind of
  key (whatsapp, campaign, api, retry), written only when a call is refused.
- ``webhook_status_minutes``: statuses applied per minute, with the sum and the
  largest of their lags (Disparo's clock when applied minus WhatsApp's timestamp)
  and when the last one was applied.

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def _minute():
    return sa.Column("minute", sa.DateTime(timezone=True), nullable=False)


def _shard():
    return sa.Column("shard", sa.SmallInteger(), server_default="0", nullable=False)


def upgrade():
    op.create_table(
        "message_failure_minutes",
        _minute(),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("error_code", sa.String(length=32), server_default="", nullable=False),
        _shard(),
        sa.Column("failed", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint(
            "minute", "campaign_id", "error_code", "shard", name="message_failure_minutes_pkey"
        ),
    )
    op.create_table(
        "rate_limit_denial_minutes",
        _minute(),
        sa.Column("kind", sa.String(length=40), nullable=False),
        _shard(),
        sa.Column("units", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("minute", "kind", "shard", name="rate_limit_denial_minutes_pkey"),
    )
    op.create_table(
        "webhook_status_minutes",
        _minute(),
        _shard(),
        sa.Column("statuses", sa.Integer(), server_default="0", nullable=False),
        sa.Column("lag_seconds_sum", sa.Float(), server_default="0", nullable=False),
        sa.Column("lag_seconds_max", sa.Float(), server_default="0", nullable=False),
        sa.Column("last_applied_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("minute", "shard", name="webhook_status_minutes_pkey"),
    )
    # Built concurrently: the table has a row per campaign, minute and shard of history.
    with op.get_context().autocommit_block():
        op.create_index(
            "campaign_minute_stats_minute_idx",
            "campaign_minute_stats",
            ["minute"],
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade():
    with op.get_context().autocommit_block():
        op.drop_index(
            "campaign_minute_stats_minute_idx",
            table_name="campaign_minute_stats",
            postgresql_concurrently=True,
            if_exists=True,
        )
    op.drop_table("webhook_status_minutes")
    op.drop_table("rate_limit_denial_minutes")
    op.drop_table("message_failure_minutes")
