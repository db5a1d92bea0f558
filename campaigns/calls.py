"""Provider calls in flight: the HTTP calls of every batch overlap on one pool per process.

A message job claims its batch, hands the calls here and records their outcomes as
they come back (:func:`as_they_return`). The pool is a thread pool of
``WHATSAPP_CALLS_IN_FLIGHT`` threads (default 100) per worker process, shared by all
its jobs, over the Cloud API client's pooled ``requests`` session (keep-alive
connections, as many as threads): a worker's calls in flight no longer depend on its
job concurrency, and its database connections no longer depend on its calls in flight
(no call thread touches the database).

Threads rather than an asyncio client: the one client in
``campaigns/providers/cloud_api.py`` (payload, timeouts, error classification) keeps
serving sends, test messages and template management, with nothing to keep in step;
a thread waiting on its socket releases the GIL, and the benchmark measures what the
threads cost against a floor that uses them without the engine (bench/README.md).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TypeVar

T = TypeVar("T")

# After the first outcome of a wait, gather the others that land this soon after it,
# so a batch whose calls return together is recorded in one transaction, not in many.
GATHER_SECONDS = 0.02

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def pool(size: int) -> ThreadPoolExecutor:
    """The process's call pool, made on first use with ``size`` threads."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="call")
        return _pool


def start(size: int, call: Callable[..., T], *args: object, **kwargs: object) -> Future[T]:
    """Start one call on the process's pool (it waits for a free thread if all are busy)."""
    return pool(size).submit(call, *args, **kwargs)


def as_they_return(futures: Collection[Future[T]]) -> Iterator[list[Future[T]]]:
    """The calls, in groups of those that returned together, until every one has."""
    pending = set(futures)
    while pending:
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        if pending:
            more, pending = wait(pending, timeout=GATHER_SECONDS)
            done |= more
        yield list(done)
