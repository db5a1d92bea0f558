"""Per-job plumbing: a Flask app context for every job, and enough threads to run them."""

from __future__ import annotations

import asyncio
import functools
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from flask import Flask

from campaigns import error_reporting, logs, statelog

_sized_loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
_job_slots = 0  # the worker's concurrency, once size_thread_pool has seen it


@functools.cache
def flask_app() -> Flask:
    """The worker process's Flask app, built once, on the first job."""
    from app import create_app
    from campaigns.config import load_settings

    if not _job_slots:
        return create_app()
    # A message job holds two connections while it takes the rate limits (its session's
    # and the limiter's autocommit one). With fewer kept in the pool than that, every
    # job past the pool opens a connection and closes it again (bench/README.md).
    engine = load_settings().flask_config()["SQLALCHEMY_ENGINE_OPTIONS"]
    return create_app(
        {"SQLALCHEMY_ENGINE_OPTIONS": {**engine, "pool_size": 2 * _job_slots, "max_overflow": 2}}
    )


def flask_context(call_next: Any, context: Any, worker: Any) -> Any:
    """Task middleware: sync tasks run in worker threads, so push a context per job.

    Flask-SQLAlchemy scopes its session to the app context, so each job gets its
    own session and returns its connection to the pool when it ends.
    """
    # The job and attempt, for the log line of every state change the job makes.
    token = statelog.current_job.set((context.job.id, context.job.attempts + 1))
    # Its id, task, queue and attempt on every line it writes (campaigns/logs.py) and on
    # every error it reports (tags).
    fields = logs.job_fields(context.job)
    try:
        with logs.bound(**fields), error_reporting.job_scope(fields):
            with flask_app().app_context():
                return call_next()
    finally:
        statelog.current_job.reset(token)


async def size_thread_pool(call_next: Any, context: Any, worker: Any) -> Any:
    """Worker middleware: give sync tasks one thread per concurrency slot.

    Procrastinate runs sync tasks in the event loop's default executor, which has
    min(32, cores + 4) threads — 6 on a 2-core dyno, fewer than ``--concurrency``.
    """
    global _job_slots
    loop = asyncio.get_running_loop()
    if loop not in _sized_loops:
        _sized_loops.add(loop)
        _job_slots = worker.concurrency
        loop.set_default_executor(
            ThreadPoolExecutor(max_workers=worker.concurrency + 2, thread_name_prefix="job")
        )
    return await call_next()
