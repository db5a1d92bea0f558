"""What every benchmark script needs: a scratch database that is migrated, then always dropped.

A benchmark works in its own database (``disparo_bench_<pid>``…) on the server of
``DATABASE_URL``, or on the embedded development server when that is unset, so it
never touches the development data and runs beside the test suite.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit


def database_url(server_url: str, name: str) -> str:
    """The URL of database ``name`` on the server of ``server_url``."""
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))


def admin(server_url: str, *statements: str) -> None:
    """Run statements that cannot run in a transaction (CREATE / DROP DATABASE)."""
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def migrate(url: str) -> None:
    """Bring the database at ``url`` to the head revision: app tables and Procrastinate's."""
    from flask_migrate import upgrade

    from app import create_app, db
    from campaigns.config import sqlalchemy_url

    app = create_app({"SQLALCHEMY_DATABASE_URI": sqlalchemy_url(url)})
    logging.getLogger("alembic").setLevel(logging.WARNING)
    with app.app_context():
        upgrade()
        db.engine.dispose()


@contextmanager
def scratch_database(name: str, template: str | None = None) -> Iterator[str]:
    """Create database ``name`` (migrated, or a copy of ``template``); drop it on any exit.

    Dropped WITH (FORCE), so connections a failed run left open cannot keep it alive.
    """
    from campaigns.config import database_url as server_database_url

    server_url = server_database_url()
    create = f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else "")
    admin(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", create)
    try:
        url = database_url(server_url, name)
        if template is None:
            migrate(url)
        yield url
    finally:
        admin(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
