"""The 24-hour messaging budget: unique recipients per business portfolio

Meta's messaging limit counts, per business portfolio, the unique users reached with
business-initiated (template) messages in a moving 24 hours. ``budget_recipients``
keeps, per portfolio (``business:<id>``, or ``sender:<id>`` for a sender whose
portfolio Meta has not named), each recipient's keyed hash
(``services/suppressions.phone_hash``, never the number) and when it was last counted.
A recipient counted within the window is free to message again; one counted longer ago
counts anew. Maintenance deletes rows older than the window; a person's erasure deletes
theirs.

``disparo_budget_consume`` is the limiter's new kind of limit (campaigns/ratelimit.py):
under the portfolio's advisory lock (the limiter's key space, key ``budget:<portfolio>``)
it reads the clock, counts the window, and counts the asked-for recipients not yet
counted, all of them or none, or (partial) as many as fit, in the order asked.

Revision ID: 0024
Revises: 0023
"""

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None

# One call is its own transaction (ratelimit.consume_budget calls it in autocommit).
CONSUME = """
CREATE FUNCTION disparo_budget_consume(
    p_portfolio text, p_limit integer, p_window_ms integer, p_hashes text[],
    p_partial boolean,
    OUT refused text[], OUT counted integer, OUT used integer,
    OUT decided_at timestamptz, OUT oldest_at timestamptz
)
LANGUAGE plpgsql AS $$
DECLARE
    since timestamptz;
    fresh text[];
    room integer;
BEGIN
    -- As the rate limiter: a snapshot older than the lock would miss the grants
    -- made meanwhile.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'disparo_budget_consume needs READ COMMITTED, not %',
            current_setting('transaction_isolation');
    END IF;
    IF p_portfolio IS NULL OR p_limit IS NULL OR p_limit < 0 OR p_window_ms IS NULL
       OR p_window_ms < 1 OR p_partial IS NULL THEN
        RAISE EXCEPTION 'disparo_budget_consume: bad arguments';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended('budget:' || p_portfolio, 0));
    -- The clock, read after the lock: each call sees every earlier call's rows.
    decided_at := clock_timestamp();
    since := decided_at - p_window_ms * interval '1 millisecond';

    SELECT count(*) INTO used FROM budget_recipients
     WHERE portfolio = p_portfolio AND counted_at > since;
    -- The asked-for recipients not counted in the window, once each, in the order asked.
    SELECT coalesce(array_agg(d.h ORDER BY d.i), '{}') INTO fresh
      FROM (SELECT h, min(i) AS i FROM unnest(p_hashes) WITH ORDINALITY AS t(h, i)
             WHERE h IS NOT NULL GROUP BY h) AS d
     WHERE NOT EXISTS (SELECT FROM budget_recipients b
                        WHERE b.portfolio = p_portfolio AND b.phone_hash = d.h
                          AND b.counted_at > since);
    room := greatest(p_limit - used, 0);
    IF cardinality(fresh) <= room THEN
        counted := cardinality(fresh);
    ELSIF p_partial THEN
        counted := room;
    ELSE
        counted := 0;
    END IF;
    refused := fresh[counted + 1:];
    IF counted > 0 THEN
        INSERT INTO budget_recipients AS b (portfolio, phone_hash, counted_at)
        SELECT p_portfolio, h, decided_at FROM unnest(fresh[1:counted]) AS h
            ON CONFLICT (portfolio, phone_hash) DO UPDATE SET counted_at = excluded.counted_at;
        used := used + counted;
    END IF;
    -- When the window's first recipient leaves it (room opens again then).
    SELECT min(counted_at) INTO oldest_at FROM budget_recipients
     WHERE portfolio = p_portfolio AND counted_at > since;
END
$$
"""


def upgrade():
    op.create_table(
        "budget_recipients",
        sa.Column("portfolio", sa.String(length=80), nullable=False),
        sa.Column("phone_hash", sa.String(length=64), nullable=False),
        sa.Column("counted_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("portfolio", "phone_hash", name="budget_recipients_pkey"),
    )
    # The window's count and its oldest row, and maintenance's prune.
    op.create_index(
        "budget_recipients_window_idx", "budget_recipients", ["portfolio", "counted_at"]
    )
    op.create_index("budget_recipients_counted_at_idx", "budget_recipients", ["counted_at"])
    op.execute(CONSUME)


def downgrade():
    op.execute(
        "DROP FUNCTION disparo_budget_consume(text, integer, integer, text[], boolean)"
    )
    op.drop_table("budget_recipients")
