"""The deploy, as a Heroku-style Python buildpack does it, on this machine.

The repository's tracked files (no .env, no instance/) are copied to a directory of their
own; a clean virtualenv of the same Python gets ``requirements.txt`` and nothing else
(``pip install --require-hashes``, as the buildpack); then the Procfile's ``release``,
``web``, ``worker`` and ``ops`` lines run exactly as written, each through ``bash -c``,
with only the configuration app.json declares (its generated secrets generated, its
required values given), what the platform adds (``DATABASE_URL`` from the Postgres
add-on: a scratch database on the test server; ``PORT``; ``HOME``; ``PATH`` with the
virtualenv first) and the WhatsApp Cloud API's base URL pointed at a stub. The ERP and
the Cloud API are small threaded HTTP servers of this test answering what
campaigns/erp.py and campaigns/providers/cloud_api.py ask. Then, as an operator would:
``/healthz`` turns 200, an admin with an API token is created as the README says, and
through the JSON API a Cloud API sender, a template approved through the stub and a
campaign to a small ERP segment are made and sent; the stub must receive exactly one
send per recipient. README's "Deploying on a Heroku-style platform" is this test.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from campaigns import config
from tests.helpers import SUFFIX, admin_execute, serving_server, url_for_database

ROOT = Path(__file__).resolve().parent.parent
APP_JSON = json.loads((ROOT / "app.json").read_text())
# What the platform's dynos run; `release` runs once before them, `mock` never.
PROCESSES = ("web", "worker", "ops")
PASSWORD = "deploy check password"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def procfile() -> dict[str, str]:
    """The Procfile's lines, name → command, as a platform reads them."""
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(
        (match.group(1), match.group(2).strip())
        for line in lines
        if (match := re.fullmatch(r"([A-Za-z0-9_-]+):\s*(.+)", line))
    )


# -- app.json and .python-version, checked without deploying


def test_app_json_runs_the_procfile_processes_on_the_python_buildpack():
    assert APP_JSON["buildpacks"] == [{"url": "heroku/python"}]
    assert [addon["plan"].split(":")[0] for addon in APP_JSON["addons"]] == ["heroku-postgresql"]
    assert set(APP_JSON["formation"]) == set(PROCESSES)
    assert set(procfile()) - set(PROCESSES) == {"release", "mock"}
    for process in APP_JSON["formation"].values():
        assert process == {"quantity": 1, "size": "basic"}
    assert len(APP_JSON["name"]) <= 30 and len(APP_JSON["description"]) <= 140


def test_app_json_sets_what_production_requires():
    env = APP_JSON["env"]
    assert env["DISPARO_ENV"]["value"] == "production"
    for name in config.REQUIRED_IN_PRODUCTION:
        if name == "DATABASE_URL":  # the Postgres add-on sets it
            continue
        assert env[name].get("generator") == "secret", name
    assert env["APP_BASE_URL"]["required"] is True
    assert all(spec.get("description") for spec in env.values())


def test_the_python_version_is_the_one_the_project_targets():
    version = (ROOT / ".python-version").read_text().strip()
    assert version == "3.11"
    assert sys.version_info[:2] == (3, 11)  # the check below deploys with this Python


# -- the stubs: the outside systems, answering what the app asks


@dataclass
class Customer:
    id: str
    name: str
    phone: str  # as an ERP holds it: national format, spaces, punctuation
    city: str
    opted_in: bool
    e164: str  # what WhatsApp must be asked to send to

    def json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "first_name": self.name.split()[0],
            "phone": self.phone,
            "city": self.city,
            "state": "SP" if self.city == "Campinas" else "PE",
            "tags": [],
            "opted_in": self.opted_in,
        }


CUSTOMERS = [
    Customer("C001", "Ana Souza", "(19) 99123-4501", "Campinas", True, "+5519991234501"),
    Customer("C002", "Bruno Lima", "19 99123 4502", "Campinas", True, "+5519991234502"),
    Customer("C003", "Carla Dias", "(19) 99123-4503", "Recife", True, "+5519991234503"),
    Customer("C004", "Davi Rocha", "(19) 99123-4504", "Campinas", False, "+5519991234504"),
    Customer("C005", "Elisa Melo", "+55 19 99123-4505", "Campinas", True, "+5519991234505"),
]
SEGMENT = {"city": "Campinas"}  # opted in only, the API's default
AUDIENCE = [c for c in CUSTOMERS if c.city == "Campinas" and c.opted_in]
ERP_PAGE_CAP = 2  # the stub's pages are small, so the fan-out follows its cursor


@dataclass
class Stub:
    """A threaded HTTP server answering ``route(method, path, query, body, headers)``."""

    route: Callable[[str, str, dict[str, str], Any, dict[str, str]], tuple[int, Any]]
    calls: list[tuple[str, str, dict[str, str], Any, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @contextmanager
    def serving(self) -> Iterator[str]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the app's pooled sessions expect

            def _answer(self) -> None:
                parts = urlsplit(self.path)
                query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.loads(raw) if raw else None
                headers = {name.lower(): value for name, value in self.headers.items()}
                with stub.lock:
                    stub.calls.append((self.command, parts.path, query, body, headers))
                    status, answer = stub.route(self.command, parts.path, query, body, headers)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the calls are kept in stub.calls

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        with serving_server(server) as url:
            yield url


ERP_FILTERS = {"city", "opted_in_only", "max_audience"}


def erp_route(
    method: str, path: str, query: dict[str, str], body: Any, headers: dict[str, str]
) -> tuple[int, Any]:
    """The customers API campaigns/erp.py reads: counts, cursor pages, tags."""
    if method != "GET":
        return 405, {"error": {"message": "method not allowed"}}
    if path == "/tags":
        return 200, {"tags": ["vip"]}
    unknown = set(query) - ERP_FILTERS - {"limit", "cursor"}
    if unknown:  # a filter this ERP cannot apply: refused, never ignored
        return 400, {"error": {"message": "unknown filter", "fields": dict.fromkeys(unknown, "?")}}
    selected = [
        c
        for c in CUSTOMERS
        if c.city.lower() == query.get("city", c.city).lower()
        and (c.opted_in or query.get("opted_in_only") != "true")
    ][: int(query.get("max_audience", len(CUSTOMERS)))]
    if path == "/customers/count":
        return 200, {"count": len(selected)}
    if path == "/customers":
        start = int(query.get("cursor", 0))
        end = start + min(int(query["limit"]), ERP_PAGE_CAP)
        page = selected[start:end]
        return 200, {
            "customers": [c.json() for c in page],
            "next_cursor": str(end) if end < len(selected) else None,
        }
    return 404, {"error": {"message": "not found"}}


@dataclass
class CloudApi:
    """The Graph API endpoints campaigns/providers/cloud_api.py calls, under /v23.0."""

    access_token: str
    phone_number_id: str
    waba_id: str
    submitted: dict[str, dict[str, Any]] = field(default_factory=dict)  # template id → body
    sends: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def route(
        self, method: str, path: str, query: dict[str, str], body: Any, headers: dict[str, str]
    ) -> tuple[int, Any]:
        if headers.get("authorization") != f"Bearer {self.access_token}":
            return 401, {"error": {"code": 190, "message": "Invalid OAuth access token."}}
        parts = path.split("/")[1:]  # "", "v23.0", …
        if len(parts) < 2 or parts[0] != "v23.0":
            return 404, {"error": {"code": 100, "message": "Unknown path."}}
        match method, parts[1:]:
            case "POST", [waba, "message_templates"] if waba == self.waba_id:
                template_id = str(1_000_000 + len(self.submitted))
                self.submitted[template_id] = body
                return 200, {"id": template_id, "status": "PENDING", "category": body["category"]}
            case "GET", [template_id] if template_id in self.submitted:
                # Meta's review: approved by the time the app asks.
                return 200, {"id": template_id, "status": "APPROVED"}
            case "POST", [phone_number_id, "messages"]:
                self.sends.append((phone_number_id, body))
                return 200, {
                    "messaging_product": "whatsapp",
                    "contacts": [{"input": body["to"], "wa_id": body["to"].lstrip("+")}],
                    "messages": [{"id": f"wamid.DEPLOY{len(self.sends)}"}],
                }
        return 400, {"error": {"code": 100, "message": f"Unsupported {method} request."}}


# -- the deployment: a copy of the checkout, a clean virtualenv, the Procfile's processes


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Deployment:
    app_dir: Path
    env: dict[str, str]
    logs: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    stopped: bool = False

    def run(self, name: str, command: str, stdin: str = "", timeout: float = 300) -> str:
        """One command through ``bash -c`` in the app's directory, as a one-off dyno; its
        output, or a failure with it."""
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=self.app_dir,
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, f"{name}: `{command}` exited {done.returncode}\n" + (
            done.stdout + done.stderr
        )
        return done.stdout

    def start(self, name: str, command: str) -> None:
        """A process of the formation, in a process group of its own (gunicorn's workers
        with it), its output in logs/<name>.log."""
        with open(self.logs / f"{name}.log", "wb") as log:
            self.processes[name] = subprocess.Popen(
                ["bash", "-c", command],
                cwd=self.app_dir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def check_running(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise AssertionError(
                    f"{name} exited with {process.returncode}:\n{tail(self.logs / f'{name}.log')}"
                )

    def explain(self) -> str:
        return "\n".join(
            f"--- {name}.log\n{tail(self.logs / f'{name}.log')}" for name in self.processes
        )

    def stop(self) -> None:
        """SIGTERM to every process group, as the platform stops dynos; SIGKILL after 30 s.
        Once: a group already reaped is never signalled again."""
        if self.stopped:
            return
        self.stopped = True
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for process in self.processes.values():  # a child left behind in its group
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def until(condition: Callable[[], Any], seconds: float, what: str, deployment: Deployment) -> Any:
    """Poll until condition() is truthy: a deadline for a fresh machine, not a timing."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        deployment.check_running()
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"not within {seconds} s: {what}\n{deployment.explain()}")


def copy_tracked_files(destination: Path) -> None:
    """What a push deploys: the tracked files, as they are in the working tree."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is not pushed
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def build(app_dir: Path) -> Path:
    """The buildpack's part: a virtualenv of this Python with requirements.txt only."""
    venv = app_dir / ".heroku" / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=120)
    # pip's own settings and cache as on this machine; nothing of the suite's virtualenv.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(
        [
            venv / "bin" / "python",
            *("-m", "pip", "install", "--quiet", "--disable-pip-version-check"),
            *("--require-hashes", "-r", "requirements.txt"),
        ],
        cwd=app_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"pip install -r requirements.txt failed:\n{done.stderr}"
    return venv


def app_json_config(given: dict[str, str]) -> dict[str, str]:
    """The config vars app.json sets up: values, generated secrets (64 random hex digits),
    and the required ones an operator types (``given``)."""
    values = {}
    for name, spec in APP_JSON["env"].items():
        if "value" in spec:
            values[name] = spec["value"]
        elif spec.get("generator") == "secret":
            values[name] = secrets.token_hex(32)
        elif spec.get("required", True):
            values[name] = given[name]
    assert set(given) <= set(values), "the check gives a value app.json does not declare"
    return values


@pytest.fixture
def scratch_database(server_url: str) -> Iterator[str]:
    """The Postgres add-on: an empty database on the test server."""
    name = f"disparo_deploy_{SUFFIX}"
    admin_execute(
        server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name}"
    )
    yield url_for_database(server_url, name)
    admin_execute(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.mark.slow
def test_a_buildpack_deploy_sends_a_campaign(scratch_database):
    commands = procfile()
    erp = Stub(erp_route)
    cloud = CloudApi(
        access_token=f"EAAG{secrets.token_hex(16)}",
        phone_number_id="106540352242922",
        waba_id="102290129340398",
    )
    whatsapp = Stub(cloud.route)
    with (
        tempfile.TemporaryDirectory(prefix="disparo-deploy-") as scratch,
        erp.serving() as erp_url,
        whatsapp.serving() as whatsapp_url,
    ):
        app_dir = Path(scratch) / "app"
        logs = Path(scratch) / "logs"
        logs.mkdir()
        copy_tracked_files(app_dir)
        assert not (app_dir / ".env").exists() and not (app_dir / "instance").exists()
        venv = build(app_dir)

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = app_json_config({"APP_BASE_URL": base, "ERP_BASE_URL": erp_url}) | {
            "DATABASE_URL": scratch_database,  # the add-on's
            "PORT": str(port),
            "HOME": str(app_dir),  # the platform's /app
            "PATH": f"{venv / 'bin'}:{SYSTEM_PATH}",
            # graph.facebook.com's stand-in (production leaves it at its default)
            "WHATSAPP_API_BASE_URL": f"{whatsapp_url}/v23.0",
        }
        deployment = Deployment(app_dir, env, logs)
        try:
            deployment.run("release", commands["release"])
            for name in PROCESSES:
                deployment.start(name, commands[name])

            def healthy() -> dict | None:
                try:
                    response = requests.get(f"{base}/healthz", timeout=5)
                except requests.ConnectionError:
                    return None  # gunicorn still starting
                body = response.json()
                # 200 from the first heartbeat on; every worker's is awaited: `worker`'s
                # and one per queue group of `ops` (jobs/ops.py).
                live = body["live_workers"] == 1 + len(config.ops_workers())
                return body if response.status_code == 200 and live else None

            health = until(healthy, 90, "/healthz 200 with every worker", deployment)
            assert health["migrations_at_head"] and health["undecryptable_secrets"] == 0
            assert requests.get(f"{base}/readyz", timeout=5).status_code == 200
            # Prometheus' view, with the token app.json generated: both workers connected.
            scrape = requests.get(
                f"{base}/metrics",
                headers={"Authorization": f"Bearer {env['METRICS_TOKEN']}"},
                timeout=10,
            )
            assert scrape.status_code == 200, scrape.text
            for process in ("disparo-worker", "disparo-ops"):
                found = re.search(
                    rf'^disparo_database_connections{{process="{process}"}} (\S+)$',
                    scrape.text,
                    re.M,
                )
                assert found and float(found.group(1)) >= 1, (process, scrape.text)

            # The first admin, as the README says; the token is the output's last line.
            output = deployment.run(
                "users create",
                "flask --app app users create admin@example.com --role admin --api-token",
                stdin=f"{PASSWORD}\n",
            )
            token = output.strip().splitlines()[-1]
            api = requests.Session()
            api.headers["Authorization"] = f"Bearer {token}"

            def call(method: str, path: str, status: int, **body: Any) -> dict:
                response = api.request(method, f"{base}/api/v1{path}", json=body or None)
                assert response.status_code == status, (
                    f"{method} {path}: {response.status_code} {response.text}\n"
                    + deployment.explain()
                )
                return response.json()

            assert call("GET", "/me", 200)["role"] == "admin"
            sender = call(
                "POST",
                "/senders",
                201,
                name="Loja Centro",
                provider="cloud_api",
                phone_number_id=cloud.phone_number_id,
                waba_id=cloud.waba_id,
                access_token=cloud.access_token,
                rate_limit_per_minute=600,
                min_interval_ms=0,
            )
            assert sender["has_access_token"] is True
            template = call(
                "POST",
                "/templates",
                201,
                sender_id=sender["id"],
                name="deploy_check_offer",
                language="pt_BR",
                category="MARKETING",
                parameter_format="named",
                body="Olá {{first_name}}, sua oferta chegou.",
            )
            submitted = call("POST", f"/templates/{template['id']}/submit", 202)
            assert submitted["status"] == "pending"
            [meta_template] = cloud.submitted.values()
            assert meta_template["name"] == "deploy_check_offer"
            approved = call("POST", f"/templates/{template['id']}/sync", 200)
            assert approved["status"] == "approved", approved

            campaign = call(
                "POST",
                "/campaigns",
                201,
                name="Deploy check",
                sender_id=sender["id"],
                template_id=template["id"],
                segment=SEGMENT,
                variables={"first_name": {"field": "first_name"}},
            )
            call("POST", f"/campaigns/{campaign['id']}/send-now", 202)

            def completed() -> dict | None:
                progress = call("GET", f"/campaigns/{campaign['id']}/progress", 200)
                assert progress["status"] in ("sending", "completed"), progress
                return progress if progress["status"] == "completed" else None

            progress = until(completed, 120, "the campaign completed", deployment)
            assert (progress["total"], progress["sent"]) == (len(AUDIENCE), len(AUDIENCE))
            assert progress["failed"] == progress["skipped"] == 0

            # Exactly one send per recipient, to the right number, as the sender.
            sent_to = Counter(body["to"] for _id, body in cloud.sends)
            assert sent_to == Counter(c.e164 for c in AUDIENCE)
            assert {phone_number_id for phone_number_id, _body in cloud.sends} == {
                cloud.phone_number_id
            }
            for _id, body in cloud.sends:
                customer = next(c for c in AUDIENCE if c.e164 == body["to"])
                assert body["template"]["name"] == "deploy_check_offer"
                assert body["template"]["components"][0]["parameters"] == [
                    {
                        "type": "text",
                        "parameter_name": "first_name",
                        "text": customer.json()["first_name"],
                    }
                ]
            # The audience came through the ERP's pages, filtered there.
            pages = [call for call in erp.calls if call[1] == "/customers"]
            assert len(pages) == -(-len(AUDIENCE) // ERP_PAGE_CAP)
            assert all(query["city"] == "Campinas" for _m, _p, query, _b, _h in pages)
            # Each process did its Procfile part: ops the fan-out, worker the sends.
            deployment.stop()
            assert "campaigns.fan_out" in (logs / "ops.log").read_text()
            assert "messages.send" in (logs / "worker.log").read_text()
        finally:
            deployment.stop()
