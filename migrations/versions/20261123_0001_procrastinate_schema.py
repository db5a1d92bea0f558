"""Procrastinate 3.10.0 queue schema

Applies Procrastinate's own schema SQL, frozen in migrations/sql/ so this revision
means the same thing after a Procrastinate upgrade. It matches Procrastinate's
migration files up to 03.04.00_50_post; a later Procrastinate release adds a
revision here that runs its newer files from `procrastinate schema --migrations-path`.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from pathlib import Path

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SCHEMA_SQL = Path(__file__).resolve().parent.parent / "sql" / "procrastinate-3.10.0-schema.sql"


def upgrade():
    # Executed on the raw psycopg connection, inside Alembic's transaction:
    # without parameters psycopg sends it as one simple query, so the plpgsql
    # bodies' `%` and `:` reach Postgres untouched (no bind-parameter parsing).
    driver_connection = op.get_bind().connection.driver_connection
    driver_connection.execute(SCHEMA_SQL.read_text())


def downgrade():
    op.execute(
        """
        DO $$
        DECLARE item record;
        BEGIN
          FOR item IN SELECT tablename FROM pg_tables
                      WHERE schemaname = current_schema() AND tablename LIKE 'procrastinate%'
          LOOP EXECUTE format('DROP TABLE IF EXISTS %I CASCADE', item.tablename); END LOOP;
          FOR item IN SELECT p.oid::regprocedure AS signature FROM pg_proc p
                      WHERE p.pronamespace = current_schema()::regnamespace
                        AND p.proname LIKE 'procrastinate%'
          LOOP EXECUTE format('DROP ROUTINE IF EXISTS %s CASCADE', item.signature); END LOOP;
          FOR item IN SELECT t.typname FROM pg_type t
                      WHERE t.typnamespace = current_schema()::regnamespace
                        AND t.typname LIKE 'procrastinate%' AND t.typtype IN ('e', 'c')
          LOOP EXECUTE format('DROP TYPE IF EXISTS %I CASCADE', item.typname); END LOOP;
        END $$;
        """
    )
