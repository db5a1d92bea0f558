"""The ``ops`` process: one Procrastinate worker per queue group, in one event loop.

    python -m jobs.ops [--log-level=warning]

Procrastinate 3.10's worker has one concurrency for all its queues, and the source
documents give each queue its own: notifications 3, retry 3, scheduler 2. So each
group of ``OPS_WORKERS`` (campaigns/config.py) runs as a worker of its own —
its concurrency, worker id, heartbeat, stalled-job recovery, periodic deferrer —
and a queue alone in its group never runs more jobs at once than its number. They
share the process's queue pool (``QUEUE_POOL_*``), its job threads and its
SQLAlchemy pool, sized for all their slots (jobs/context.py).

Connections: only the group that holds campaign-sender listens for Postgres
notifications (a fan-out starts as soon as "Send now" commits); the others poll
every second (``fetch_job_polling_interval``), a query a second each instead of a
listener connection each. That listener is also what notices a lost database: its
worker stops, and so does the whole process.

Stopping: SIGTERM or SIGINT stops every group at once, each waiting up to its 20 s
graceful shutdown for its jobs (the platform kills 30 s after SIGTERM). A group
that stops by itself (its listener lost the database, a crash) stops the others,
so the process exits and its process manager starts it again: status 0 after a
signal or a clean stop, 1 if a group failed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from campaigns import logs
from campaigns.config import (
    ConfigError,
    QueueGroup,
    load_env_file,
    ops_workers,
    set_process_role,
)

logger = logging.getLogger("jobs.ops")

LISTENING_QUEUE = "campaign-sender"


async def run(groups: tuple[QueueGroup, ...]) -> int:
    """Run every group until a signal, or until one of them stops; the exit status."""
    from jobs import app, context

    loop = asyncio.get_running_loop()
    context.size_loop(loop, sum(group.concurrency for group in groups))
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with app.open_async():
        workers = {
            asyncio.create_task(
                app.run_worker_async(
                    name=group.name,
                    queues=list(group.queues),
                    concurrency=group.concurrency,
                    listen_notify=LISTENING_QUEUE in group.queues,
                    # One handler for the process (here): each worker's own would
                    # replace the previous one's, and only the last would stop.
                    install_signal_handlers=False,
                ),
                name=group.name,
            ): group
            for group in groups
        }
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopping, *workers], return_when=asyncio.FIRST_COMPLETED)
        if stopping in done:
            logger.info("ops: stop requested, stopping %d workers", len(workers))
        else:
            ended = ", ".join(group.name for task, group in workers.items() if task in done)
            logger.warning("ops: %s stopped by itself; stopping the others", ended)
        stopping.cancel()
        for task in workers:
            task.cancel()  # a cancelled worker shuts down gracefully (worker.run)
        results = await asyncio.gather(*workers, return_exceptions=True)
    failed = False
    for task, result in zip(workers, results, strict=True):
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            failed = True
            logger.error("ops: %s failed", workers[task].name, exc_info=result)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error", "critical"]
    )
    args = parser.parse_args(argv)
    logs.configure(args.log_level.upper())  # text or JSON (LOG_FORMAT), like every process
    set_process_role("ops")  # before any connection opens: they are named disparo-ops
    load_env_file()
    try:
        groups = ops_workers()
        from jobs import context

        slots = sum(group.concurrency for group in groups)
        retry = sum(g.concurrency for g in groups if "message-retry" in g.queues)
        context.configure(slots=slots, limiter_slots=retry, what="the ops process")
    except ConfigError as error:
        print(f"ops: {error}", file=sys.stderr)
        return 2
    logger.info(
        "ops: %s",
        "; ".join(f"{','.join(g.queues)} at most {g.concurrency}" for g in groups),
    )
    return asyncio.run(run(groups))


if __name__ == "__main__":
    sys.exit(main())
