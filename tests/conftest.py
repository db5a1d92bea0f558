"""Tests run against a real PostgreSQL: the embedded server, or DATABASE_URL's.

A template database is migrated once per session; each test gets a fresh clone
(``CREATE DATABASE … TEMPLATE``), so tests are isolated and never touch the
development database. Jobs go to an in-memory queue unless a test asks for the
real one (``real_queue``).
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient
from procrastinate import testing

from app import db
from campaigns import fanout, providers, pump, queues, sending
from campaigns.config import database_url
from campaigns.models import Campaign, Message, MessageStatus, Role, User
from campaigns.services.campaigns import send_campaign_now
from campaigns.services.users import create_api_token, create_user
from tests.helpers import (
    API_CONTRACT,
    PASSWORD,
    PROCRASTINATE,
    SUFFIX,
    TEMPLATE_DB,
    TEST_DB,
    FakeProvider,
    admin_execute,
    demo_campaign,
    lift_limits,
    login,
    make_app,
    migrate_to,
    serving,
    url_for_database,
)
from tests.helpers import (
    jobs as deferred_jobs,
)

# The CLI speaks the shell's language (campaigns/i18n.py): the suite's is neutral, so
# commands answer in DEFAULT_LOCALE (English here) on any machine.
for _name in ("LC_ALL", "LC_MESSAGES"):
    os.environ.pop(_name, None)
os.environ["LANG"] = "C.UTF-8"
# Plain logs and no error reporting, whatever the checkout's .env says: no test sends a
# developer's Sentry an event (tests that want either set it for their own processes).
os.environ["LOG_FORMAT"] = "text"
os.environ["SENTRY_DSN"] = ""


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
def api_answers_match_document() -> Iterator[None]:
    """Every /api/v1 answer the test got through a test app (tests/helpers.py's make_app
    records them) must be one campaigns/openapi.py's document describes."""
    API_CONTRACT.take()
    yield
    if problems := API_CONTRACT.problems(API_CONTRACT.take()):
        pytest.fail(
            "answers the OpenAPI document (campaigns/openapi.py) does not describe:\n"
            + "\n".join(problems),
            pytrace=False,
        )


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


@pytest.fixture
def token_for(user_factory) -> Callable[[Role], dict[str, str]]:
    """The API headers of a new user of ``role``, with a token of their own."""

    def make(role: Role) -> dict[str, str]:
        _token, raw = create_api_token(user_factory(role).id)
        return {"Authorization": f"Bearer {raw}"}

    return make


@pytest.fixture
def login_as(client: FlaskClient, user_factory) -> Callable[[Role], User]:
    def sign_in(role: Role = Role.VIEWER) -> User:
        user = user_factory(role)
        response = login(client, user)
        assert response.status_code == 303, response.data
        return user

    return sign_in


@pytest.fixture
def live_server(app: Flask) -> Iterator[str]:
    """The test app on a real socket (its mock ERP becomes the ERP it talks to)."""
    with serving(app) as base:
        app.config["ERP_BASE_URL"] = f"{base}/mock/erp"
        yield base


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
                "MOCK_WHATSAPP_URL": "",  # the live server's mock WhatsApp
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


@pytest.fixture
def fake(monkeypatch):
    provider = FakeProvider()
    monkeypatch.setattr(providers, "for_sender", lambda sender, config: provider)
    return provider


@pytest.fixture
def owner(user_factory):
    return user_factory(Role.SUPERVISOR)


@pytest.fixture
def campaign(app, owner, live_server) -> Campaign:
    """A draft for 120 SP customers on the demo sender, its and its owner's limits lifted."""
    lift_limits(owner)
    return demo_campaign(owner.id)


@pytest.fixture
def sent(app, campaign, fake) -> Message:
    """The campaign's first message, sent (``wamid.<id>``, the fake provider's) and
    waiting for its statuses and answers."""
    send_campaign_now(campaign.id, campaign.owner_id)
    fanout.load_audience(campaign.id, app.config)
    pump.pump(campaign.id)
    first = deferred_jobs(queues.SEND_TASK)[0]["args"]["message_ids"][0]
    sending.send_batch(campaign.id, [first], app.config, retry_queue=False)
    message = db.session.get(Message, first)
    assert message is not None and message.status is MessageStatus.SENT
    return message


FUZZ_CASES = pytest.StashKey[dict[str, Counter[str]]]()


@pytest.fixture
def fuzz_cases(request: pytest.FixtureRequest) -> Counter[str]:
    """This fuzz test's cases by outcome, reported in the run's "fuzz cases" summary."""
    tests = request.config.stash.setdefault(FUZZ_CASES, {})
    return tests.setdefault(request.node.name, Counter())


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    tests = config.stash.get(FUZZ_CASES, {})
    if not tests:
        return
    terminalreporter.section("fuzz cases")
    for name, counts in tests.items():
        outcomes = ", ".join(f"{k} {n}" for k, n in sorted(counts.items()) if k != "cases")
        terminalreporter.write_line(f"{name}: {counts['cases']} cases ran ({outcomes})")
    total = sum(counts["cases"] for counts in tests.values())
    terminalreporter.write_line(f"{total} fuzz cases ran in all")
