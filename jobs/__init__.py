"""The Procrastinate app, ``jobs.app``: ``procrastinate --app=jobs.app worker``.

Building it connects to nothing (it reads only whether mocks are on, from the
environment): the connection pool resolves the database URL
through :func:`campaigns.config.database_url` (the one resolver Flask uses too)
when it opens. Workers open it themselves; the web process opens it lazily, once
per process, on its first deferral (see :func:`open_for_deferring`).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading

import procrastinate

from campaigns import error_reporting, logs
from campaigns.config import database_url, mocks_enabled
from jobs.context import flask_context, size_thread_pool


def _cli_log_level() -> str:
    """The level Procrastinate's CLI was asked for (``--log-level``), INFO by default."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--log-level", default=os.environ.get("PROCRASTINATE_LOG_LEVEL"))
    level = parser.parse_known_args(sys.argv[1:])[0].log_level or "info"
    return str(level).upper()


# A worker is ``procrastinate --app=jobs.app worker``: its CLI imports this module, then
# calls logging.basicConfig, which does nothing once the root logger has a handler. So in
# JSON the handler goes in here, before the worker's first line, at the CLI's level.
# (In the web process and the CLI, create_app has configured logging already.)
if logs.json_enabled():
    logs.configure(_cli_log_level())
error_reporting.init()

app = procrastinate.App(
    connector=procrastinate.PsycopgConnector(
        conninfo=database_url,  # a callable: resolved when the pool connects, not at import
        min_size=1,
        max_size=10,
        # A server that vanishes without closing its connections (a network blackhole,
        # procrastinate#1334) would leave a worker hanging on a dead socket; TCP
        # keepalives and a send timeout make its connections fail within about a minute,
        # so the worker exits and its process manager restarts it. libpq ignores these
        # on a Unix socket (the embedded database).
        kwargs={
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
            "tcp_user_timeout": 60_000,
        },
    ),
    # The mock WhatsApp's task only where the mocks run: production never registers it.
    import_paths=["jobs.tasks", *(["mocks.tasks"] if mocks_enabled() else [])],
    worker_defaults={
        # Paced message jobs become due without a NOTIFY: poll about every second.
        "fetch_job_polling_interval": 1.0,
        # Heroku sends SIGKILL 30 s after SIGTERM.
        "shutdown_graceful_timeout": 20.0,
        "delete_jobs": "successful",
        "task_middleware": [flask_context],
        "worker_middleware": [size_thread_pool],
    },
)

_open_lock = threading.Lock()


def open_for_deferring() -> procrastinate.App:
    """Open the synchronous pool once per process; a no-op inside a worker.

    Called on the first deferral, after gunicorn has forked (never at import, and
    never with ``--preload``, which would fork an open pool).
    """
    connector = app.connector.get_sync_connector()
    if connector is not app.connector:  # inside a worker the async pool serves sync calls
        with _open_lock:
            connector.open()  # idempotent
    return app
