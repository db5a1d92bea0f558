from __future__ import annotations

import os
import subprocess
import sys

import pytest

from campaigns import devdb


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
