"""The 24-hour messaging budget: unique recipients per business portfolio

Meta's messaging limit counts, per business portfolio, the unique users reached with
business-initiated (template) messages in a moving 24 hours. ``budget_recipients``
keeps, per portfolio (``business:<id>``, or ``sender:<id>`` for a sender whose
portfolio Meta has not named), each recipient's keyed hash
(``services/suppressions.phone_hash``, never the number) and when it was last counted.
A recipient counted within the window is free to message again; one counted longer ago
counts anew. ``budget_minutes`` keeps how many were counted each minute, which the window's
count sums. Maintenance deletes rows older than the window; a person's erasure unlinks
theirs (their hash replaced by a random token: they still count).

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
# The window's count is read from per-minute counts (budget_minutes: at most 1,441 rows
# a portfolio), not by counting up to 100,000 recipients' rows a call (bench/README.md,
# "24-hour budget"); the minute straddling the window's start counts whole, so room opens
# up to a minute late (errs towards less, as the rate limiter's buckets do).
WINDOW = """
CREATE FUNCTION disparo_budget_window(
    p_portfolio text, p_window_ms integer, p_now timestamptz,
    OUT used integer, OUT room_at timestamptz
)
LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum(count), 0)::integer,
           min(minute) + interval '1 minute' + p_window_ms * interval '1 millisecond'
      FROM budget_minutes
     WHERE portfolio = p_portfolio
       AND minute > p_now - p_window_ms * interval '1 millisecond' - interval '1 minute'
$$
"""

CONSUME = """
CREATE FUNCTION disparo_budget_consume(
    p_portfolio text, p_limit integer, p_window_ms integer, p_hashes text[],
    p_partial boolean,
    OUT refused text[], OUT counted integer, OUT used integer,
    OUT decided_at timestamptz, OUT room_at timestamptz
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

    SELECT w.used INTO used FROM disparo_budget_window(p_portfolio, p_window_ms, decided_at) AS w;
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
    -- Recipients counted in the window go free, but from now on: Meta counts a user in
    -- the window of their latest conversation, so their row and its minute's count move
    -- to now (else the row would leave the window a day after the first message while
    -- Meta still counts the second, and the budget would admit someone too many).
    WITH seen AS (
        SELECT phone_hash, date_trunc('minute', counted_at) AS minute
          FROM budget_recipients
         WHERE portfolio = p_portfolio AND phone_hash = ANY(p_hashes) AND counted_at > since
           FOR UPDATE
    ), moved AS (
        UPDATE budget_recipients AS b SET counted_at = decided_at
          FROM seen WHERE b.portfolio = p_portfolio AND b.phone_hash = seen.phone_hash
    ), earlier AS (
        SELECT minute, count(*) AS n FROM seen
         WHERE minute < date_trunc('minute', decided_at) GROUP BY minute
    ), emptied AS (
        UPDATE budget_minutes AS m SET count = m.count - earlier.n
          FROM earlier WHERE m.portfolio = p_portfolio AND m.minute = earlier.minute
    )
    INSERT INTO budget_minutes AS m (portfolio, minute, count)
    SELECT p_portfolio, date_trunc('minute', decided_at), sum(n) FROM earlier HAVING sum(n) > 0
        ON CONFLICT (portfolio, minute) DO UPDATE SET count = m.count + excluded.count;
    IF counted > 0 THEN
        INSERT INTO budget_recipients AS b (portfolio, phone_hash, counted_at)
        SELECT p_portfolio, h, decided_at FROM unnest(fresh[1:counted]) AS h
            ON CONFLICT (portfolio, phone_hash) DO UPDATE SET counted_at = excluded.counted_at;
        INSERT INTO budget_minutes AS m (portfolio, minute, count)
        VALUES (p_portfolio, date_trunc('minute', decided_at), counted)
            ON CONFLICT (portfolio, minute) DO UPDATE SET count = m.count + excluded.count;
        used := used + counted;
    END IF;
    -- When the window's oldest minute has left it (room opens again then).
    SELECT w.room_at INTO room_at FROM disparo_budget_window(p_portfolio, p_window_ms, decided_at) AS w;
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
    # Maintenance's prune, and a person's erasure (every portfolio's rows of one hash).
    op.create_index("budget_recipients_counted_at_idx", "budget_recipients", ["counted_at"])
    op.create_index("budget_recipients_phone_hash_idx", "budget_recipients", ["phone_hash"])
    op.create_table(
        "budget_minutes",
        sa.Column("portfolio", sa.String(length=80), nullable=False),
        sa.Column("minute", sa.DateTime(timezone=True), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("portfolio", "minute", name="budget_minutes_pkey"),
    )
    op.execute(WINDOW)
    op.execute(CONSUME)


def downgrade():
    op.execute("DROP FUNCTION disparo_budget_consume(text, integer, integer, text[], boolean)")
    op.execute("DROP FUNCTION disparo_budget_window(text, integer, timestamptz)")
    op.drop_table("budget_minutes")
    op.drop_table("budget_recipients")
