"""Rate limiter SQL functions: consume all-or-nothing under advisory locks, read usage

Hand-written and reviewed. The tables (rate_limit_buckets, rate_limit_keys) come
from 0002 and keep their shape; this revision only installs the functions that
campaigns/ratelimit.py calls. Nothing else may write those tables.

Semantics, for a key with limit L, window W and minimum gap G:
- grants are counted in time buckets of width B = bucket_ms(W); a bucket
  [start, start + B) is counted in full while any part of it lies inside the
  window (now - W, now], so the check never undercounts: no half-open interval
  of length W ever holds more than L grants;
- no grant comes less than G after the key's previous grant (rate_limit_keys).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 15:00:00.000000

"""
from alembic import op

# revision identifiers, used by Alembic.
revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


# Bucket width = W / 60 (at least 1 ms), so 60 s windows get 1 s buckets.
# Counting a straddling bucket in full makes a saturated key wait at most one
# extra bucket per window: utilisation >= W / (W + B) = 60/61 = 98.4 %, above the
# 95 % promise, while a check reads at most ~61 rows per key (the window's
# buckets), whatever the limit. Finer buckets would buy < 1.6 % for more rows.
# The width follows the window, and each limiter's window is fixed (60 s, 300 s).
# Were a key's window ever shortened, its older, wider buckets could straddle the
# new edge uncounted, for at most one window.
BUCKET_MS = """
CREATE FUNCTION disparo_rate_limit_bucket_ms(window_ms integer) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN greatest(1, window_ms / 60)
"""

# One key's state at a moment: grants counted in its window, when it would next
# allow one grant (<= at means now), and when all counted grants leave the window.
STATE = """
CREATE FUNCTION disparo_rate_limit_state(
    p_key text, p_limit integer, p_window_ms integer, p_gap_ms integer, p_at timestamptz,
    OUT used integer, OUT ready_at timestamptz, OUT reset_at timestamptz
)
LANGUAGE plpgsql AS $$
DECLARE
    span interval := p_window_ms * interval '1 millisecond';
    width interval := disparo_rate_limit_bucket_ms(p_window_ms) * interval '1 millisecond';
    gap_until timestamptz;
BEGIN
    -- A bucket overlaps the window unless it ended at or before its start. No
    -- upper bound: if the clock ever steps back, "future" buckets still count.
    SELECT coalesce(sum(b.count), 0), max(b.bucket_start) + width + span
      INTO used, reset_at
      FROM rate_limit_buckets AS b
     WHERE b.key = p_key AND b.bucket_start > p_at - span - width;
    reset_at := coalesce(reset_at, p_at);
    ready_at := p_at;
    IF used >= p_limit THEN
        -- Buckets leave the window oldest first; the key frees up when the one
        -- that brings the count below the limit has left.
        SELECT o.bucket_start + width + span
          INTO ready_at
          FROM (SELECT b.bucket_start, sum(b.count) OVER (ORDER BY b.bucket_start) AS freed
                  FROM rate_limit_buckets AS b
                 WHERE b.key = p_key AND b.bucket_start > p_at - span - width) AS o
         WHERE used - o.freed < p_limit
         ORDER BY o.bucket_start
         LIMIT 1;
    END IF;
    IF p_gap_ms > 0 THEN
        SELECT k.last_grant_at + p_gap_ms * interval '1 millisecond'
          INTO gap_until
          FROM rate_limit_keys AS k
         WHERE k.key = p_key;
        ready_at := greatest(ready_at, gap_until);  -- greatest() skips a NULL (no grant yet)
    END IF;
END
$$
"""

# The one way to take grants: lock every key (advisory, transaction-scoped, in
# one global order so that two calls sharing keys cannot deadlock), read the
# clock only then, check every key, and consume from all of them or from none.
# p_async_commit: commit a grant without waiting for its WAL flush. Only for a
# call that is its own transaction (it would apply to the whole transaction);
# campaigns/ratelimit.py says what it risks.
CONSUME = """
CREATE FUNCTION disparo_rate_limit_consume(
    p_keys text[], p_limits integer[], p_windows_ms integer[], p_gaps_ms integer[],
    p_async_commit boolean DEFAULT false,
    OUT allowed boolean, OUT decided_at timestamptz, OUT retry_after double precision,
    OUT remaining integer, OUT reset_after double precision
)
LANGUAGE plpgsql AS $$
DECLARE
    n integer := coalesce(cardinality(p_keys), 0);
    lock_id bigint;
    i integer;
    state record;
    ready timestamptz;
    reset timestamptz;
    bucket timestamptz;
    width interval;
BEGIN
    -- Under REPEATABLE READ or SERIALIZABLE the reads below would use a snapshot
    -- taken before the locks were granted and miss the grants made meanwhile.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'disparo_rate_limit_consume needs READ COMMITTED, not %',
            current_setting('transaction_isolation');
    END IF;
    IF n = 0
       OR cardinality(p_limits) IS DISTINCT FROM n
       OR cardinality(p_windows_ms) IS DISTINCT FROM n
       OR cardinality(p_gaps_ms) IS DISTINCT FROM n THEN
        RAISE EXCEPTION 'disparo_rate_limit_consume: one limit, window and gap per key';
    END IF;
    IF EXISTS (SELECT FROM unnest(p_keys, p_limits, p_windows_ms, p_gaps_ms) AS a(k, l, w, g)
                WHERE k IS NULL OR l IS NULL OR l < 1 OR w IS NULL OR w < 1
                   OR g IS NULL OR g < 0)
       OR (SELECT count(DISTINCT k) FROM unnest(p_keys) AS k) <> n THEN
        RAISE EXCEPTION 'disparo_rate_limit_consume: bad or repeated limits for %', p_keys;
    END IF;

    -- Sorted by lock id, not by key: even two keys whose hashes collide are
    -- then locked in the same order by every caller.
    FOR lock_id IN SELECT DISTINCT hashtextextended(k, 0) AS h FROM unnest(p_keys) AS k ORDER BY h
    LOOP
        PERFORM pg_advisory_xact_lock(lock_id);
    END LOOP;
    -- The database's clock, read after the locks: a key's grants are in time order
    -- and each check sees every earlier grant (READ COMMITTED: a fresh snapshot
    -- per statement, taken after the previous holder committed).
    decided_at := clock_timestamp();

    ready := decided_at;
    reset := decided_at;
    FOR i IN 1 .. n LOOP
        state := disparo_rate_limit_state(
            p_keys[i], p_limits[i], p_windows_ms[i], p_gaps_ms[i], decided_at);
        ready := greatest(ready, state.ready_at);
        reset := greatest(reset, state.reset_at);
        remaining := least(remaining, p_limits[i] - state.used);  -- least() skips NULL
    END LOOP;
    allowed := ready <= decided_at;

    IF allowed THEN
        FOR i IN 1 .. n LOOP
            width := disparo_rate_limit_bucket_ms(p_windows_ms[i]) * interval '1 millisecond';
            bucket := date_bin(width, decided_at, timestamptz '1970-01-01 00:00:00+00');
            INSERT INTO rate_limit_buckets AS b (key, bucket_start, count)
            VALUES (p_keys[i], bucket, 1)
            ON CONFLICT (key, bucket_start) DO UPDATE SET count = b.count + 1;
            INSERT INTO rate_limit_keys AS k (key, last_grant_at)
            VALUES (p_keys[i], decided_at)
            ON CONFLICT (key) DO UPDATE SET last_grant_at = excluded.last_grant_at;
            reset := greatest(reset, bucket + width + p_windows_ms[i] * interval '1 millisecond');
        END LOOP;
        remaining := remaining - 1;
        IF p_async_commit THEN
            -- Transaction-local, so it lasts until this transaction commits.
            PERFORM set_config('synchronous_commit', 'off', true);
        END IF;
    END IF;
    remaining := greatest(remaining, 0);
    retry_after := extract(epoch FROM ready - decided_at);
    reset_after := extract(epoch FROM reset - decided_at);
END
$$
"""

# Read-only: one key's usage now, for pages and X-RateLimit-* headers. It takes
# no lock, so under concurrent grants it may be a moment stale; never consumes.
USAGE = """
CREATE FUNCTION disparo_rate_limit_usage(
    p_key text, p_limit integer, p_window_ms integer, p_gap_ms integer,
    OUT used integer, OUT next_slot_at timestamptz, OUT reset_at timestamptz,
    OUT checked_at timestamptz
)
LANGUAGE plpgsql AS $$
BEGIN
    checked_at := clock_timestamp();
    SELECT s.used, greatest(s.ready_at, checked_at), s.reset_at
      INTO used, next_slot_at, reset_at
      FROM disparo_rate_limit_state(p_key, p_limit, p_window_ms, p_gap_ms, checked_at) AS s;
END
$$
"""

FUNCTIONS = (
    "disparo_rate_limit_usage(text, integer, integer, integer)",
    "disparo_rate_limit_consume(text[], integer[], integer[], integer[], boolean)",
    "disparo_rate_limit_state(text, integer, integer, integer, timestamptz)",
    "disparo_rate_limit_bucket_ms(integer)",
)


def upgrade():
    # On the raw psycopg connection, inside Alembic's transaction, as 0001 does:
    # without parameters psycopg sends each as a simple query, so the plpgsql
    # bodies' `%` and `:=` reach Postgres untouched (no bind-parameter parsing).
    driver_connection = op.get_bind().connection.driver_connection
    for statement in (BUCKET_MS, STATE, CONSUME, USAGE):
        driver_connection.execute(statement)


def downgrade():
    for signature in FUNCTIONS:
        op.execute(f"DROP FUNCTION {signature}")
