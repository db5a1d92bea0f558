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
from typing import Any

import procrastinate

from campaigns import error_reporting, logs
from campaigns.config import (
    application_name,
    database_url,
    mocks_enabled,
    process_role,
    queue_pool,
    worker_concurrency,
)
from jobs import context
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


def _connection_kwargs() -> dict[str, Any]:
    """Each new connection's parameters, read when it opens (the process may name
    itself after this module is imported: jobs/ops.py)."""
    return {
        # A server that vanishes without closing its connections (a network blackhole,
        # procrastinate#1334) would leave a worker hanging on a dead socket; TCP
        # keepalives and a send timeout make its connections fail within about a minute,
        # so the worker exits and its process manager restarts it. libpq ignores these
        # on a Unix socket (the embedded database).
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
        "tcp_user_timeout": 60_000,
        "application_name": application_name(),
    }


def _cli_concurrency(argv: list[str]) -> int:
    """The concurrency ``procrastinate … worker`` was given (flag, then the CLI's own
    environment variable), else WORKER_CONCURRENCY (``worker_defaults``)."""
    for i, arg in enumerate(argv):
        value = None
        if arg.startswith("--concurrency="):
            value = arg.partition("=")[2]
        elif arg in ("--concurrency", "-c") and i + 1 < len(argv):
            value = argv[i + 1]
        if value is not None and value.strip().isdigit():
            return int(value)  # anything else: the CLI refuses it itself
    own = os.environ.get("PROCRASTINATE_WORKER_CONCURRENCY", "").strip()  # the CLI's own
    return int(own) if own.isdigit() else worker_concurrency()


_mocks = mocks_enabled()
_queue_min, _queue_max = queue_pool()
_concurrency = worker_concurrency()
if process_role() == "worker":
    # `procrastinate … worker`: size (and check) its pools now, so settings its jobs
    # could deadlock on stop it before it takes a job.
    context.configure(
        slots=_cli_concurrency(sys.argv), limiter_slots=None, what="the worker process"
    )

app = procrastinate.App(
    connector=procrastinate.PsycopgConnector(
        conninfo=database_url,  # a callable: resolved when the pool connects, not at import
        min_size=_queue_min,
        max_size=_queue_max,
        kwargs=_connection_kwargs,  # a callable too (psycopg_pool 3.3)
    ),
    # The mock WhatsApp's task only where the mocks run: production never registers it.
    import_paths=["jobs.tasks", *(["mocks.tasks"] if _mocks else [])],
    worker_defaults={
        # The `worker` process's (the Procfile gives it no --concurrency); ops sets its own.
        "concurrency": _concurrency,
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
