"""The mock WhatsApp's send endpoint as an asyncio process: a thousand calls in flight and more.

``python -m mocks.whatsapp_server`` (the Procfile's development-only ``mock:`` entry,
which ``make run`` starts) listens on ``MOCK_WHATSAPP_URL``'s host and port and
answers ``POST <any path>/<phone_number_id>/messages`` exactly as the web port's
endpoint does: the same validation, injected errors, ``…0429`` tries, log rows and
status webhooks, all from ``mocks/whatsapp.py``. The engine posts here whenever
``MOCK_WHATSAPP_URL`` is set (``mocks/provider.py``); the log stays on the web port,
``GET /mock/whatsapp/log``, since both write the same table.

Why a process of its own: on the web port a call holds one of gunicorn's 8 threads
for its whole ``MOCK_WHATSAPP_LATENCY_MS`` and commits alone, so 8 calls are in flight
at most. Here a call in flight is a sleeping coroutine: its latency costs no thread
and no CPU. The server is aiohttp's: maintained (aio-libs), an HTTP/1.1 server of its
own with a C parser and keep-alive, so one pinned dependency and no ASGI server
beside it (Starlette or Quart would need uvicorn or hypercorn too); about 0.2 ms
of CPU a call here, the figures in ``bench/README.md``.

Group commit: once a call's latency has passed and it is accepted, it waits for the
flusher, which gathers what arrives within ``--flush-ms`` (10 ms) and records it with
one :func:`mocks.whatsapp.record_many`, one transaction on one connection, in a
thread (``asyncio.to_thread``, so the event loop never waits for Postgres). Each call
is answered only after its row is committed: the log is complete by the time the
engine records the send. A flush that fails answers its calls 500 / 131000, as
Meta's own trouble would, and the engine tries them again.

After a flush that queued status webhooks, and before its calls are answered, the
poster job is deferred (in the flusher's thread: Procrastinate's sync API), at most
once every ``POSTER_DEFER_SECONDS``: a poster that is waiting or running comes back
by itself for whatever falls due later.

``POST /storm`` starts a storm and ``GET /storm`` reads it, as on the web port
(``mocks/whatsapp.py`` says what a storm is); the storm lives in this process.

``GET /stats`` says how many calls are in flight now and at most since the start,
and how many were accepted, refused (``capped``: of them, by the throughput cap,
``MOCK_WHATSAPP_THROUGHPUT_CAP``) and recorded in how many flushes.

With mocks off (production) or without ``MOCK_WHATSAPP_URL`` the process idles
until it is stopped, then exits 0: honcho stops every process when one exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn
from urllib.parse import urlsplit

import sqlalchemy as sa
from aiohttp import web
from sqlalchemy.orm import Session

from campaigns import logs
from campaigns.config import load_settings, mocks_enabled, set_process_role
from mocks import whatsapp
from mocks.template_check import TemplateBook
from mocks.whatsapp import Accepted, MetaError

logger = logging.getLogger("mocks.whatsapp_server")

FLUSH_SECONDS = 0.01  # how long the first of a group waits for others to arrive
FLUSH_MAX_ROWS = 1000  # per transaction; more wait for the next flush, which starts at once
POSTER_DEFER_SECONDS = 1.0
BACKLOG = 4096  # pending connections: a thousand calls may connect at once
SHUTDOWN_GRACE_SECONDS = 5.0  # after the latency, for the calls in flight to be answered


@dataclass
class Stats:
    in_flight: int = 0
    peak_in_flight: int = 0
    accepted: int = 0
    refused: int = 0
    recorded: int = 0
    flushes: int = 0
    failed_flushes: int = 0


class MockWhatsApp:
    """The send endpoint's state in one process: calls in flight, rows waiting, counters."""

    def __init__(
        self,
        config: Mapping[str, Any],
        engine: sa.Engine,
        flush_seconds: float = FLUSH_SECONDS,
    ) -> None:
        self.config = config
        self.engine = engine
        self.flush_seconds = flush_seconds
        self.latency = int(config.get("MOCK_WHATSAPP_LATENCY_MS", 0)) / 1000
        self.webhooks = bool(config.get("MOCK_WHATSAPP_WEBHOOKS", True))
        self.tries = whatsapp.ThrottleTries()
        self.storms = whatsapp.Storms()
        self.cap = whatsapp.ThroughputCap()
        self.book = TemplateBook(lambda: Session(engine))
        self.stats = Stats()
        self._waiting: list[tuple[str, Accepted, datetime, asyncio.Future[str]]] = []
        self._arrived = asyncio.Event()
        self._deferred_at = -POSTER_DEFER_SECONDS

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{base:.+}/{phone_number_id}/messages", self.send)
        app.router.add_get("/stats", self.stats_view)
        app.router.add_post("/storm", self.storm_start)
        app.router.add_get("/storm", self.storm_now)
        return app

    async def send(self, request: web.Request) -> web.Response:
        """Accept a template message like the Cloud API, or refuse it the way Meta would."""
        stats = self.stats
        stats.in_flight += 1
        stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)
        arrived = datetime.now(UTC)
        try:
            body = await request.read()
            if self.latency:
                await asyncio.sleep(self.latency)
            phone_number_id = request.match_info["phone_number_id"]
            payload = _json_or_none(request, body)
            try:
                # The template's definition is read in a thread (kept a few seconds), so
                # the event loop never waits for Postgres; screen then finds it kept.
                await asyncio.to_thread(self.book.prepare, phone_number_id, payload)
                accepted = whatsapp.screen(
                    phone_number_id,
                    payload,
                    self.config,
                    self.tries,
                    self.storms,
                    self.cap,
                    self.book,
                )
                wamid = await self.record(phone_number_id, accepted, arrived)
            except MetaError as error:
                stats.refused += 1
                return _json_response(whatsapp.error_body(error), error.http_status)
            stats.accepted += 1
            return _json_response(whatsapp.accepted_body(accepted, wamid), 200)
        finally:
            stats.in_flight -= 1

    async def stats_view(self, request: web.Request) -> web.Response:
        counts = asdict(self.stats) | {"capped": self.cap.refused, "pid": os.getpid()}
        return _json_response(counts, 200)

    async def storm_start(self, request: web.Request) -> web.Response:
        try:
            storm = self.storms.start(_json_or_none(request, await request.read()))
        except ValueError as error:
            refusal = {"code": "invalid_request", "message": str(error)}
            return _json_response({"error": refusal}, 400)
        return _json_response(storm.describe(storm.started), 200)

    async def storm_now(self, request: web.Request) -> web.Response:
        return _json_response(self.storms.describe(), 200)

    def record(
        self, phone_number_id: str, accepted: Accepted, arrived: datetime
    ) -> asyncio.Future[str]:
        """Its wamid, once the flusher has committed its row."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting.append((phone_number_id, accepted, arrived, future))
        self._arrived.set()
        return future

    async def flush_forever(self) -> None:
        """Record what arrived together, a transaction per group, one group at a time."""
        while True:
            await self._arrived.wait()
            await asyncio.sleep(self.flush_seconds)
            self._arrived.clear()
            while self._waiting:
                group = self._waiting[:FLUSH_MAX_ROWS]
                del self._waiting[:FLUSH_MAX_ROWS]
                await self._flush(group)

    async def _flush(
        self, group: Sequence[tuple[str, Accepted, datetime, asyncio.Future[str]]]
    ) -> None:
        sends = [(pnid, accepted, arrived) for pnid, accepted, arrived, _ in group]
        try:
            wamids = await asyncio.to_thread(self._record, sends)
        except Exception:
            logger.exception("mock WhatsApp: could not record %d messages", len(group))
            self.stats.failed_flushes += 1
            for *_, future in group:
                if not future.done():
                    future.set_exception(
                        MetaError(whatsapp.TRANSIENT, "The mock could not record the message.")
                    )
            return
        self.stats.flushes += 1
        self.stats.recorded += len(group)
        for (*_, future), wamid in zip(group, wamids, strict=True):
            if not future.done():  # else its call was cancelled: its row stays, like Meta's
                future.set_result(wamid)

    def _record(self, sends: Sequence[tuple[str, Accepted, datetime]]) -> list[str]:
        """In a thread: one transaction for the group, then the poster if it is time."""
        with self.engine.connect() as conn:
            wamids = whatsapp.record_many(conn, sends, self.config)
        now = time.monotonic()
        if self.webhooks and now - self._deferred_at >= POSTER_DEFER_SECONDS:
            self._deferred_at = now  # the flusher runs one group at a time: no race
            _defer_poster(self.config)
        return wamids


def _defer_poster(config: Mapping[str, Any]) -> None:
    try:
        whatsapp.defer_poster(config)
    except Exception:  # the periodic run posts whatever is left
        logger.exception("mock WhatsApp: could not defer the webhook poster")


def _json_or_none(request: web.Request, body: bytes) -> Any:
    """The JSON body, or None: what Flask's ``request.get_json(silent=True)`` gives."""
    mimetype = request.content_type
    if mimetype != "application/json" and not (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    ):
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def _json_response(body: Mapping[str, Any], status: int) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
    )


async def serve(
    host: str,
    port: int,
    config: Mapping[str, Any],
    *,
    flush_seconds: float = FLUSH_SECONDS,
) -> None:
    """Serve until SIGTERM or SIGINT; answer the calls in flight, then stop."""
    # One connection: the flusher records one group at a time.
    engine = sa.create_engine(
        config["SQLALCHEMY_DATABASE_URI"],
        pool_size=1,
        max_overflow=1,
        connect_args=config["SQLALCHEMY_ENGINE_OPTIONS"]["connect_args"],  # disparo-mock
    )
    mock = MockWhatsApp(config, engine, flush_seconds)
    flusher = asyncio.create_task(mock.flush_forever())
    runner = web.AppRunner(
        mock.application(),
        access_log=None,  # a line per call would cost more than the call
        shutdown_timeout=mock.latency + SHUTDOWN_GRACE_SECONDS,
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await web.TCPSite(runner, host, port, backlog=BACKLOG).start()
        logger.info(
            "mock WhatsApp listening on http://%s:%d (latency %d ms, webhooks %s)",
            host,
            port,
            int(mock.latency * 1000),
            "on" if mock.webhooks else "off",
        )
        await stop.wait()
    finally:
        await runner.cleanup()  # the flusher still runs: calls in flight get their rows
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
        engine.dispose()


def idle(reason: str) -> int:
    """Wait for SIGTERM or SIGINT, doing nothing; then exit 0."""
    logger.info("mock WhatsApp idle: %s", reason)

    def stop(signum: int, frame: Any) -> NoReturn:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        signal.pause()


def _raise_open_files_limit() -> None:
    """A call in flight is a socket: allow as many as the hard limit does."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(
                resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard)
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mocks.whatsapp_server", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--host", help="default: MOCK_WHATSAPP_URL's host")
    parser.add_argument("--port", type=int, help="default: MOCK_WHATSAPP_URL's port")
    parser.add_argument(
        "--flush-ms", type=float, default=FLUSH_SECONDS * 1000, help="the group commit's window"
    )
    args = parser.parse_args(argv)
    logs.configure()  # stdout, text or JSON as LOG_FORMAT says, like every process
    if not mocks_enabled():
        return idle("mocks are off (DISPARO_MOCKS), so there is nothing to serve")
    set_process_role("mock")
    config = load_settings().flask_config()
    if args.port is None and not config["MOCK_WHATSAPP_URL"]:
        return idle("MOCK_WHATSAPP_URL is unset: the web port serves the mock WhatsApp")
    url = urlsplit(config["MOCK_WHATSAPP_URL"] or "")
    host = args.host or url.hostname or "127.0.0.1"
    port = args.port or url.port or 80
    _raise_open_files_limit()
    asyncio.run(serve(host, port, config, flush_seconds=args.flush_ms / 1000))
    return 0


if __name__ == "__main__":
    sys.exit(main())
