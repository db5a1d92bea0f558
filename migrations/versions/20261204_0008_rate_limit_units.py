"""Rate limiter: several units per call (all or nothing, or partial), and consume_each

Hand-written and reviewed, like 0003, whose rules stay: every key's advisory
lock in hash order, the database's clock read after the locks, buckets of width
bucket_ms(W) counted in full while they overlap the window, the minimum gap
measured from rate_limit_keys.last_grant_at. The tables keep their shape.

What changes:
- disparo_rate_limit_consume takes p_units (default 1) and p_partial (default
  false) and returns `granted`. All or nothing: p_units from every key, or
  none. Partial: k = the most units, 1 .. p_units, that every key can give now,
  or none. A grant of k units has one grant time: it adds k to the bucket of
  that time and is one grant for the gap, so a key with a gap caps k at 1, and
  an all-or-nothing call of more units than some key's limit, or of more than
  one unit on a key with a gap, can never be granted and raises.
  The old arguments keep their positions, so a call in 0003's form (five
  arguments) means one unit, all or nothing, as before.
- disparo_rate_limit_consume_each: one unit from each of several keys, each key
  decided on its own, under one set of locks and one clock reading.
- disparo_rate_limit_state takes p_units (default 1): ready_at is when that
  many more could go. disparo_rate_limit_usage calls it unchanged.
- The shared steps are functions of their own: disparo_rate_limit_lock (check
  the arguments, take the locks, read the clock) and disparo_rate_limit_grant
  (count a grant in its bucket and as the key's last grant).

The guarantees, judged on grant times (k units granted at t count k at t): no
half-open interval of length W holds more than L units of a key; no two grants
of a key with a gap G are less than G apart. A grant is checked against every
earlier grant of its key in (t - W, t] (or more: whole buckets), plus its own k.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 10:00:00.000000

"""
from alembic import op

# revision identifiers, used by Alembic.
revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


# One key's state at a moment: units counted in its window, when it would allow
# p_units more (<= p_at means now), and when all counted units leave the window.
STATE = """
CREATE FUNCTION disparo_rate_limit_state(
    p_key text, p_limit integer, p_window_ms integer, p_gap_ms integer, p_at timestamptz,
    p_units integer DEFAULT 1,
    OUT used integer, OUT ready_at timestamptz, OUT reset_at timestamptz
)
LANGUAGE plpgsql AS $$
DECLARE
    span interval := p_window_ms * interval '1 millisecond';
    width interval := disparo_rate_limit_bucket_ms(p_window_ms) * interval '1 millisecond';
    gap_until timestamptz;
BEGIN
    IF p_units IS NULL OR p_units < 1 OR p_units > p_limit THEN
        RAISE EXCEPTION 'disparo_rate_limit_state: % units never fit in a limit of %',
            p_units, p_limit;
    END IF;
    -- A bucket overlaps the window unless it ended at or before its start. No
    -- upper bound: if the clock ever steps back, "future" buckets still count.
    SELECT coalesce(sum(b.count), 0), max(b.bucket_start) + width + span
      INTO used, reset_at
      FROM rate_limit_buckets AS b
     WHERE b.key = p_key AND b.bucket_start > p_at - span - width;
    reset_at := coalesce(reset_at, p_at);
    ready_at := p_at;
    IF used > p_limit - p_units THEN
        -- Buckets leave the window oldest first; the key has room for p_units
        -- when the one that brings the count down to p_limit - p_units has left.
        SELECT o.bucket_start + width + span
          INTO ready_at
          FROM (SELECT b.bucket_start, sum(b.count) OVER (ORDER BY b.bucket_start) AS freed
                  FROM rate_limit_buckets AS b
                 WHERE b.key = p_key AND b.bucket_start > p_at - span - width) AS o
         WHERE used - o.freed <= p_limit - p_units
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

# Check the arguments, lock every key (advisory, transaction-scoped, in one
# global order so that two calls sharing keys cannot deadlock) and only then
# read the clock, which is returned: the decision time of the caller.
LOCK = """
CREATE FUNCTION disparo_rate_limit_lock(
    p_keys text[], p_limits integer[], p_windows_ms integer[], p_gaps_ms integer[]
) RETURNS timestamptz
LANGUAGE plpgsql AS $$
DECLARE
    n integer := coalesce(cardinality(p_keys), 0);
    lock_id bigint;
BEGIN
    -- Under REPEATABLE READ or SERIALIZABLE the caller's reads would use a
    -- snapshot taken before the locks were granted and miss the grants made meanwhile.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'the rate limiter needs READ COMMITTED, not %',
            current_setting('transaction_isolation');
    END IF;
    IF n = 0
       OR cardinality(p_limits) IS DISTINCT FROM n
       OR cardinality(p_windows_ms) IS DISTINCT FROM n
       OR cardinality(p_gaps_ms) IS DISTINCT FROM n THEN
        RAISE EXCEPTION 'the rate limiter needs one limit, window and gap per key';
    END IF;
    IF EXISTS (SELECT FROM unnest(p_keys, p_limits, p_windows_ms, p_gaps_ms) AS a(k, l, w, g)
                WHERE k IS NULL OR l IS NULL OR l < 1 OR w IS NULL OR w < 1
                   OR g IS NULL OR g < 0)
       OR (SELECT count(DISTINCT k) FROM unnest(p_keys) AS k) <> n THEN
        RAISE EXCEPTION 'the rate limiter got bad or repeated limits for %', p_keys;
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
    RETURN clock_timestamp();
END
$$
"""

# Count p_units granted at p_at: in the bucket of p_at, and as the key's last
# grant. Returns when that bucket leaves the window. Only under the key's lock.
GRANT = """
CREATE FUNCTION disparo_rate_limit_grant(
    p_key text, p_window_ms integer, p_units integer, p_at timestamptz
) RETURNS timestamptz
LANGUAGE plpgsql AS $$
DECLARE
    width interval := disparo_rate_limit_bucket_ms(p_window_ms) * interval '1 millisecond';
    bucket timestamptz := date_bin(width, p_at, timestamptz '1970-01-01 00:00:00+00');
BEGIN
    INSERT INTO rate_limit_buckets AS b (key, bucket_start, count)
    VALUES (p_key, bucket, p_units)
    ON CONFLICT (key, bucket_start) DO UPDATE SET count = b.count + excluded.count;
    INSERT INTO rate_limit_keys AS k (key, last_grant_at)
    VALUES (p_key, p_at)
    ON CONFLICT (key) DO UPDATE SET last_grant_at = excluded.last_grant_at;
    RETURN bucket + width + p_window_ms * interval '1 millisecond';
END
$$
"""

# Take units from every key: p_units or none (all or nothing), or the most
# that every key can give now, up to p_units (partial). retry_after: 0 when all
# p_units were granted; else when the keys would allow p_units (all or nothing)
# or one more unit, counting this call's grant (partial).
# p_async_commit: commit a grant without waiting for its WAL flush. Only for a
# call that is its own transaction (it would apply to the whole transaction);
# campaigns/ratelimit.py says what it risks.
CONSUME = """
CREATE FUNCTION disparo_rate_limit_consume(
    p_keys text[], p_limits integer[], p_windows_ms integer[], p_gaps_ms integer[],
    p_async_commit boolean DEFAULT false, p_units integer DEFAULT 1,
    p_partial boolean DEFAULT false,
    OUT allowed boolean, OUT decided_at timestamptz, OUT retry_after double precision,
    OUT remaining integer, OUT reset_after double precision, OUT granted integer
)
LANGUAGE plpgsql AS $$
DECLARE
    n integer := coalesce(cardinality(p_keys), 0);
    wanted integer;  -- the units each key is checked for: all of them, or one
    room integer;  -- the units every key can give now (partial)
    i integer;
    state record;
    ready timestamptz;
    reset timestamptz;
BEGIN
    IF p_units IS NULL OR p_units < 1 OR p_partial IS NULL THEN
        RAISE EXCEPTION 'disparo_rate_limit_consume: units must be 1 or more, not %', p_units;
    END IF;
    -- One grant time per call: more than one unit at once never meets a gap, and
    -- all or nothing never gets more than a key's limit.
    IF NOT p_partial AND p_units > 1
       AND EXISTS (SELECT FROM unnest(p_limits, p_gaps_ms) AS a(l, g) WHERE g > 0 OR l < p_units)
    THEN
        RAISE EXCEPTION 'disparo_rate_limit_consume: % units at once can never be granted for %',
            p_units, p_keys;
    END IF;
    decided_at := disparo_rate_limit_lock(p_keys, p_limits, p_windows_ms, p_gaps_ms);

    wanted := CASE WHEN p_partial THEN 1 ELSE p_units END;
    room := p_units;
    ready := decided_at;
    reset := decided_at;
    FOR i IN 1 .. n LOOP
        state := disparo_rate_limit_state(
            p_keys[i], p_limits[i], p_windows_ms[i], p_gaps_ms[i], decided_at, wanted);
        ready := greatest(ready, state.ready_at);
        reset := greatest(reset, state.reset_at);
        remaining := least(remaining, p_limits[i] - state.used);  -- least() skips NULL
        IF state.ready_at > decided_at THEN
            room := 0;
        ELSIF p_gaps_ms[i] > 0 THEN
            room := least(room, 1);  -- the units of one call share one grant time
        ELSE
            room := least(room, p_limits[i] - state.used);
        END IF;
    END LOOP;
    -- ready <= decided_at: every key can give `wanted` now (and room >= wanted).
    granted := CASE WHEN ready > decided_at THEN 0 WHEN p_partial THEN room ELSE p_units END;
    allowed := granted > 0;

    IF allowed THEN
        FOR i IN 1 .. n LOOP
            reset := greatest(
                reset, disparo_rate_limit_grant(p_keys[i], p_windows_ms[i], granted, decided_at));
        END LOOP;
        remaining := remaining - granted;
        IF granted < p_units THEN
            -- Partly granted: when one more unit could go, this grant counted.
            FOR i IN 1 .. n LOOP
                state := disparo_rate_limit_state(
                    p_keys[i], p_limits[i], p_windows_ms[i], p_gaps_ms[i], decided_at, 1);
                ready := greatest(ready, state.ready_at);
            END LOOP;
        END IF;
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

# One unit from each key, each decided on its own (one key's refusal takes
# nothing from the others), under the same locks and one clock reading: one row
# per key, key_index being its position in p_keys (from 1).
CONSUME_EACH = """
CREATE FUNCTION disparo_rate_limit_consume_each(
    p_keys text[], p_limits integer[], p_windows_ms integer[], p_gaps_ms integer[],
    p_async_commit boolean DEFAULT false
) RETURNS TABLE (
    key_index integer, allowed boolean, decided_at timestamptz, retry_after double precision,
    remaining integer, reset_after double precision
)
LANGUAGE plpgsql AS $$
DECLARE
    n integer := coalesce(cardinality(p_keys), 0);
    decided timestamptz;
    any_granted boolean := false;
    i integer;
    state record;
    reset timestamptz;
BEGIN
    decided := disparo_rate_limit_lock(p_keys, p_limits, p_windows_ms, p_gaps_ms);
    FOR i IN 1 .. n LOOP
        state := disparo_rate_limit_state(
            p_keys[i], p_limits[i], p_windows_ms[i], p_gaps_ms[i], decided, 1);
        key_index := i;
        decided_at := decided;
        allowed := state.ready_at <= decided;
        remaining := p_limits[i] - state.used;
        reset := greatest(decided, state.reset_at);
        IF allowed THEN
            reset := greatest(
                reset, disparo_rate_limit_grant(p_keys[i], p_windows_ms[i], 1, decided));
            remaining := remaining - 1;
            any_granted := true;
        END IF;
        remaining := greatest(remaining, 0);
        retry_after := extract(epoch FROM state.ready_at - decided);  -- 0 when allowed
        reset_after := extract(epoch FROM reset - decided);
        RETURN NEXT;
    END LOOP;
    IF any_granted AND p_async_commit THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
END
$$
"""

NEW_FUNCTIONS = (
    "disparo_rate_limit_consume_each(text[], integer[], integer[], integer[], boolean)",
    "disparo_rate_limit_consume(text[], integer[], integer[], integer[], boolean, integer, boolean)",
    "disparo_rate_limit_grant(text, integer, integer, timestamptz)",
    "disparo_rate_limit_lock(text[], integer[], integer[], integer[])",
    "disparo_rate_limit_state(text, integer, integer, integer, timestamptz, integer)",
)
OLD_FUNCTIONS = (
    "disparo_rate_limit_consume(text[], integer[], integer[], integer[], boolean)",
    "disparo_rate_limit_state(text, integer, integer, integer, timestamptz)",
)


# 0003's versions, as they were, for the downgrade.
STATE_0003 = """
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

CONSUME_0003 = """
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


def _run(statements):
    # On the raw psycopg connection, inside Alembic's transaction, as 0003 does:
    # without parameters psycopg sends each as a simple query, so the plpgsql
    # bodies' `%` and `:=` reach Postgres untouched (no bind-parameter parsing).
    driver_connection = op.get_bind().connection.driver_connection
    for statement in statements:
        driver_connection.execute(statement)


def upgrade():
    # The old state() goes first: next to the new one (a sixth argument with a
    # default) a call with five arguments would be ambiguous. disparo_rate_limit_usage
    # calls it with five and gets the new one; plpgsql resolves calls when it runs them.
    _run([f"DROP FUNCTION {signature}" for signature in OLD_FUNCTIONS])
    _run((STATE, LOCK, GRANT, CONSUME, CONSUME_EACH))


def downgrade():
    _run([f"DROP FUNCTION {signature}" for signature in NEW_FUNCTIONS])
    _run((STATE_0003, CONSUME_0003))
