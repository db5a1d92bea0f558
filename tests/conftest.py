"""Tests run against a real PostgreSQL: the embedded server, or DATABASE_URL's.

A template database is migrated once per session; each test gets a fresh clone
(``CREATE DATABASE … TEMPLATE``), so tests are isolated and never touch the
development database. Jobs go to an in-memory queue unless a test asks for the
real one (``real_queue``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from procrastinate import testing
from werkzeug.serving import make_server

from app import create_app, db
from campaigns import providers
from campaigns.config import database_url, sqlalchemy_url
from campaigns.models import Campaign, MessageTemplate, Role, User
from campaigns.providers.base import SendResult
from campaigns.services.campaigns import create_campaign, template_variables_for
from campaigns.services.demo import seed_demo
from campaigns.services.templates import default_sender
from campaigns.services.users import create_user
from campaigns.validation import parse_campaign

SUFFIX = os.getpid()
TEMPLATE_DB = f"disparo_test_template_{SUFFIX}"
TEST_DB = f"disparo_test_{SUFFIX}"
PASSWORD = "correct horse battery"
PROCRASTINATE = str(Path(sys.executable).with_name("procrastinate"))


def url_for_database(server_url: str, name: str) -> str:
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def admin_execute(server_url: str, *statements: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def make_app(url: str, **overrides: object) -> Flask:
    config = {
        "TESTING": True,
        "SQLALCHEMY_DATABASE_URI": sqlalchemy_url(url),
        "WTF_CSRF_ENABLED": False,
        "SERVER_NAME": None,
        # Hashing is not what most tests test, and scrypt would be 40 % of the suite's time.
        "PASSWORD_HASH_METHOD": "pbkdf2:sha256:1000",
    }
    config.update(overrides)
    return create_app(config)


def migrate_to(url: str, revision: str = "head") -> None:
    from flask_migrate import upgrade

    app = make_app(url)
    with app.app_context():
        upgrade(revision=revision)
        db.engine.dispose()


@pytest.fixture(scope="session")
def server_url() -> str:
    return database_url()


@pytest.fixture(scope="session")
def template_database(server_url: str) -> Iterator[str]:
    admin_execute(
        server_url,
        f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)",
        f"CREATE DATABASE {TEMPLATE_DB}",
    )
    migrate_to(url_for_database(server_url, TEMPLATE_DB))
    yield TEMPLATE_DB
    admin_execute(
        server_url,
        f"DROP DATABASE IF EXISTS {TEST_DB} WITH (FORCE)",
        f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)",
    )


@pytest.fixture
def database_url_for_test(server_url: str, template_database: str) -> str:
    """A fresh, migrated database for this test only."""
    admin_execute(
        server_url,
        f"DROP DATABASE IF EXISTS {TEST_DB} WITH (FORCE)",
        f"CREATE DATABASE {TEST_DB} TEMPLATE {template_database}",
    )
    return url_for_database(server_url, TEST_DB)


@pytest.fixture
def empty_database_url(server_url: str) -> Iterator[str]:
    """A database with nothing in it, for migration tests."""
    name = f"disparo_test_empty_{SUFFIX}"
    admin_execute(
        server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name}"
    )
    yield url_for_database(server_url, name)
    admin_execute(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextmanager
def scratch_app(
    server_url: str, template_database: str, name: str, **config: Any
) -> Iterator[Flask]:
    """An app on its own clone of the template, for a module whose tests share one database."""
    admin_execute(
        server_url,
        f"DROP DATABASE IF EXISTS {name} WITH (FORCE)",
        f"CREATE DATABASE {name} TEMPLATE {template_database}",
    )
    application = make_app(url_for_database(server_url, name), **config)
    with application.app_context():
        yield application
        db.engine.dispose()
    admin_execute(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def app(database_url_for_test: str, tmp_path) -> Iterator[Flask]:
    application = make_app(
        database_url_for_test, DEMO_CREDENTIALS_FILE=str(tmp_path / "demo-admin.txt")
    )
    with application.app_context():
        yield application
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask):
    return app.test_cli_runner()


@pytest.fixture(autouse=True)
def in_memory_queue() -> Iterator[testing.InMemoryConnector]:
    """Deferred jobs land in memory: no test can reach the development queue."""
    import jobs

    connector = testing.InMemoryConnector()
    with jobs.app.replace_connector(connector):
        yield connector


@pytest.fixture
def real_queue(database_url_for_test: str, in_memory_queue) -> Iterator[object]:
    """jobs.app on the test database, through the real psycopg connector."""
    import procrastinate

    import jobs

    connector = procrastinate.PsycopgConnector(
        conninfo=database_url_for_test, min_size=1, max_size=2
    )
    with jobs.app.replace_connector(connector):
        jobs.open_for_deferring()  # the web process's lazy, idempotent open
        jobs.open_for_deferring()
        try:
            yield jobs.app
        finally:
            jobs.app.close()


@pytest.fixture
def user_factory(app: Flask) -> Callable[..., User]:
    counter = iter(range(1, 10_000))

    def make(role: Role = Role.VIEWER, email: str | None = None, password: str = PASSWORD) -> User:
        return create_user(email or f"user{next(counter)}@example.com", password, role)

    return make


def login(client: FlaskClient, user: User, password: str = PASSWORD):
    return client.post("/login", data={"email": user.email, "password": password})


@pytest.fixture
def login_as(client: FlaskClient, user_factory) -> Callable[[Role], User]:
    def sign_in(role: Role = Role.VIEWER) -> User:
        user = user_factory(role)
        response = login(client, user)
        assert response.status_code == 303, response.data
        return user

    return sign_in


@contextmanager
def serving(wsgi_app: Callable[..., Any]) -> Iterator[str]:
    """Serve a WSGI app on a free local port in a thread; yield its base URL."""
    server = make_server("127.0.0.1", 0, wsgi_app, threaded=True)
    # A short poll interval: shutdown() waits for the loop to notice (0.5 s by default).
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


@pytest.fixture
def live_server(app: Flask) -> Iterator[str]:
    """The test app on a real socket (its mock ERP becomes the ERP it talks to)."""
    with serving(app) as base:
        app.config["ERP_BASE_URL"] = f"{base}/mock/erp"
        yield base


CSRF_INPUT = re.compile(rb'name="csrf_token" value="([^"]+)"')


def csrf_token_from(html: bytes) -> str:
    match = CSRF_INPUT.search(html)
    assert match, "page has no CSRF token"
    return match.group(1).decode()


@pytest.fixture
def start_worker(
    database_url_for_test, live_server, real_queue, tmp_path
) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start real `procrastinate worker` processes on this test's database and live server."""
    processes: list[subprocess.Popen] = []

    def start(
        name: str = "w",
        concurrency: int = 8,
        env: dict[str, str] | None = None,
        delete_jobs: str = "successful",
    ) -> subprocess.Popen:
        env = (
            os.environ
            | (env or {})
            | {
                "DATABASE_URL": database_url_for_test,
                "DISPARO_ENV": "development",
                "APP_BASE_URL": live_server,
            }
        )
        # The worker's warnings and errors, kept with the test's tmp_path for a post-mortem.
        with open(tmp_path / f"worker-{name}.log", "ab") as log:
            process = subprocess.Popen(
                [
                    PROCRASTINATE,
                    "--app=jobs.app",
                    "--log-level=warning",
                    "worker",
                    f"--name={name}",
                    f"--concurrency={concurrency}",
                    f"--delete-jobs={delete_jobs}",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- a campaign of 120 SP customers on the demo sender, limits lifted, for engine tests


class FakeProvider:
    """Answers sends from a script: a SendResult, or a SendError to raise."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.script: list[object] = []

    def send_template(self, *, to, template, params, callback_data):
        self.calls.append((to, params))
        outcome = self.script.pop(0) if self.script else SendResult(f"wamid.{callback_data}")
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


@pytest.fixture
def fake(monkeypatch):
    provider = FakeProvider()
    monkeypatch.setattr(providers, "for_sender", lambda sender, config: provider)
    return provider


@pytest.fixture
def owner(user_factory):
    return user_factory(Role.SUPERVISOR)


def demo_campaign(owner_id: int, size: int = 120, name: str = "Engine") -> Campaign:
    """A draft on the demo sender and promo template for ``size`` SP customers of the mock ERP."""
    seed_demo()
    template = db.session.query(MessageTemplate).filter_by(name="promo_weekend").one()
    fields = parse_campaign(
        {
            "name": name,
            "sender_id": default_sender().id,
            "template_id": template.id,
            "segment": {"state": "SP", "max_audience": size, "opted_in_only": False},
            "variables": {
                "first_name": {"field": "first_name"},
                "discount": {"text": "10%"},
                "city": {"field": "city"},
                "coupon": {"text": "X1"},
            },
        },
        template_variables_for(template.id),
    )
    return create_campaign(fields, owner_id)


def lift_limits(owner: User) -> None:
    """The demo sender's and the owner's limits out of the way (the limiter still runs)."""
    seed_demo()
    sender = default_sender()
    sender.rate_limit_per_minute, sender.min_interval_ms = 600_000, 0
    owner.campaign_rate_limit_per_minute = 600_000
    db.session.commit()


@pytest.fixture
def campaign(app, owner, live_server) -> Campaign:
    lift_limits(owner)
    return demo_campaign(owner.id)
