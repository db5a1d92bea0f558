from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
import sqlalchemy as sa

from campaigns import devdb
from campaigns.config import sqlalchemy_url


@pytest.fixture
def pgdata(tmp_path, monkeypatch):
    monkeypatch.setattr(devdb, "PGDATA", tmp_path)
    return tmp_path


def _pidfile(pgdata, pid: int):
    path = pgdata / "postmaster.pid"
    path.write_text(f"{pid}\n{pgdata}\n1700000000\n5432\n{pgdata}\n\n  0 0\nready\n")
    return path


def test_a_pidfile_naming_another_program_is_stale(pgdata):
    # After a reboot the old postmaster's PID can belong to anything, e.g. this test.
    pidfile = _pidfile(pgdata, os.getpid())
    devdb._clear_stale_pidfile()
    assert not pidfile.exists()


def test_a_pidfile_naming_a_dead_process_is_stale(pgdata):
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    pidfile = _pidfile(pgdata, process.pid)
    devdb._clear_stale_pidfile()
    assert not pidfile.exists()


def test_the_running_server_keeps_its_pidfile(server_url):
    if not (devdb.PGDATA / "postmaster.pid").exists():
        pytest.skip("tests are using DATABASE_URL, not the embedded server")
    devdb._clear_stale_pidfile()
    assert (devdb.PGDATA / "postmaster.pid").exists()


def _serves(url: str) -> tuple[str, str, str, str]:
    """Which data directory, role and database a connection to ``url`` reaches."""
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT current_setting('data_directory'), current_user, current_database(),"
            " current_setting('default_transaction_read_only')"
        ).fetchone()
    return row


@pytest.fixture(scope="module")
def embedded_url(server_url):
    """The embedded server's URL; started here if the suite runs on DATABASE_URL."""
    devdb._clear_stale_pidfile()
    was_running = (devdb.PGDATA / "postmaster.pid").exists()
    url = devdb.url()
    yield url
    if not was_running and server_url != url:
        devdb.stop()


def test_the_url_names_the_socket_directory_and_the_port(embedded_url):
    pid_lines = (devdb.PGDATA / "postmaster.pid").read_text().splitlines()
    port, socket_dir = pid_lines[3].strip(), pid_lines[4].strip()
    query = parse_qs(urlsplit(embedded_url).query, keep_blank_values=True)
    assert query["host"] == [socket_dir]
    assert query["port"] == [port]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PGPORT", "1"),
        ("PGHOST", "/nonexistent"),
        ("PGHOST", "127.0.0.1"),
        ("PGHOSTADDR", "127.0.0.1"),
        ("PGUSER", "nobody"),
        ("PGDATABASE", "nowhere"),
        ("PGSSLMODE", "require"),
        ("PGGSSENCMODE", "require"),
        ("PGCHANNELBINDING", "require"),
        ("PGTARGETSESSIONATTRS", "standby"),
        ("PGOPTIONS", "-c default_transaction_read_only=on"),
    ],
)
def test_libpq_environment_cannot_redirect_the_url(embedded_url, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    assert _serves(embedded_url) == (str(devdb.PGDATA.resolve()), "postgres", "postgres", "off")


@pytest.mark.parametrize(("name", "value"), [("PGPORT", "1"), ("PGHOST", "/nonexistent")])
def test_the_flask_engine_url_is_pinned_too(embedded_url, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    engine = sa.create_engine(sqlalchemy_url(embedded_url), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            data_directory = conn.execute(sa.text("SHOW data_directory")).scalar()
    finally:
        engine.dispose()
    assert data_directory == str(devdb.PGDATA.resolve())


@pytest.fixture
def fresh_pgdata(monkeypatch):
    """An empty data directory for a server of this test's own, stopped and removed after."""
    parent = Path(tempfile.mkdtemp(prefix="test-pgdata-", dir=devdb.INSTANCE_PATH))
    monkeypatch.setattr(devdb, "PGDATA", parent / "pgdata")
    yield devdb.PGDATA
    devdb.stop()
    shutil.rmtree(parent, ignore_errors=True)


def test_a_stray_pgport_at_start_does_not_move_the_server(fresh_pgdata, monkeypatch):
    # postgres takes PGPORT as its port; the next shell may have another one, or none.
    monkeypatch.setenv("PGPORT", "54329")
    monkeypatch.setenv("PGHOST", "/nonexistent")
    url = devdb.url()
    assert os.environ["PGPORT"] == "54329"  # put back after the start
    port = (fresh_pgdata / "postmaster.pid").read_text().splitlines()[3].strip()
    assert port != "54329"
    assert parse_qs(urlsplit(url).query)["port"] == [port]
    monkeypatch.delenv("PGPORT")
    assert _serves(url)[0] == str(fresh_pgdata.resolve())
    monkeypatch.setenv("PGPORT", "1")
    assert _serves(url)[0] == str(fresh_pgdata.resolve())
