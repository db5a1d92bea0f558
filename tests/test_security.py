"""The edge of every request (campaigns/security.py): the client's address behind a
router, and the headers every response carries."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from flask import Flask

from app import db
from campaigns import config
from campaigns.models import LoginAttempt, Role
from campaigns.services.users import create_api_token
from tests.helpers import make_app

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


def failed_sign_in(client, forwarded_for: str) -> None:
    response = client.post(
        "/login",
        data={"email": "ghost@example.com", "password": "x" * 12},
        headers={"X-Forwarded-For": forwarded_for},
    )
    assert response.status_code == 422


def addresses() -> list[str]:
    db.session.rollback()
    return [a.ip_address for a in db.session.query(LoginAttempt).order_by(LoginAttempt.id)]


@pytest.fixture
def proxied(app, database_url_for_test) -> Iterator[Flask]:
    """The app as production runs it behind one router."""
    application = make_app(database_url_for_test, PROXY_COUNT=1)
    yield application
    with application.app_context():
        db.engine.dispose()


def test_behind_one_proxy_each_client_is_seen_by_its_own_address(proxied):
    client = proxied.test_client()
    failed_sign_in(client, "203.0.113.7")
    failed_sign_in(client, "203.0.113.8")
    # What a client writes ahead of the router's entry is not believed.
    failed_sign_in(client, "192.0.2.1, 203.0.113.9")
    assert addresses() == ["203.0.113.7", "203.0.113.8", "203.0.113.9"]


def test_without_proxies_x_forwarded_for_is_ignored(app, client):
    assert app.config["PROXY_COUNT"] == 0  # development's default
    failed_sign_in(client, "203.0.113.7")
    failed_sign_in(client, "203.0.113.8")
    assert addresses() == ["127.0.0.1", "127.0.0.1"]


def test_a_forwarded_value_that_is_no_address_is_kept_cut_to_fit(proxied):
    failed_sign_in(proxied.test_client(), "not-an-address-" + "x" * 100)
    assert addresses() == [("not-an-address-" + "x" * 100)[:45]]


def test_a_refused_webhook_is_logged_with_the_client_address_sign_in_sees(proxied, caplog):
    forwarded = "not-an-address-" + "x" * 100
    response = proxied.test_client().post(
        "/webhooks/whatsapp", data=b"{}", headers={"X-Forwarded-For": forwarded}
    )
    assert response.status_code == 401
    assert f"webhook refused: bad or missing signature from {forwarded[:45]}" in caplog.messages


def test_proxy_count_defaults_to_one_in_production_and_none_in_development(monkeypatch, tmp_path):
    monkeypatch.setattr(config, "load_env_file", lambda: None)
    monkeypatch.setattr(config, "INSTANCE_PATH", tmp_path)
    monkeypatch.setenv("SECRET_KEY", "x" * 40)
    monkeypatch.setenv("DISPARO_ENCRYPTION_KEY", Fernet.generate_key().decode())
    monkeypatch.setenv("DATABASE_URL", "postgresql://db.example.com/disparo")
    monkeypatch.delenv("PROXY_COUNT", raising=False)
    monkeypatch.setenv("DISPARO_ENV", "production")
    assert config.load_settings().proxy_count == 1
    monkeypatch.setenv("DISPARO_ENV", "development")
    assert config.load_settings().proxy_count == 0
    monkeypatch.setenv("PROXY_COUNT", "2")
    assert config.load_settings().proxy_count == 2
    monkeypatch.setenv("PROXY_COUNT", "-1")
    with pytest.raises(config.ConfigError, match="PROXY_COUNT"):
        config.load_settings()


def assert_security_headers(response) -> None:
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"


def test_signed_in_pages_carry_the_security_headers_and_are_not_stored(client, login_as):
    login_as(Role.VIEWER)
    for path in ("/", "/campaigns/", "/me/tokens", "/no-such-page"):
        response = client.get(path)
        assert_security_headers(response)
        assert response.headers["Cache-Control"] == "no-store", path
        assert "Strict-Transport-Security" not in response.headers  # development


def test_api_answers_are_not_stored(client, user_factory):
    _token, raw = create_api_token(user_factory(Role.VIEWER).id)
    response = client.get("/api/v1/me", headers={"Authorization": f"Bearer {raw}"})
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert_security_headers(response)


def test_static_files_may_be_cached(client):
    with client.get("/static/app.css") as response:
        assert response.status_code == 200
        assert "no-store" not in response.headers.get("Cache-Control", "")
        assert_security_headers(response)


def test_production_adds_hsts(app, client):
    app.config["DISPARO_ENV"] = "production"
    response = client.get("/login")
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")


# What the policy refuses: inline scripts, inline event handlers, style attributes and
# elements, javascript: URLs, and htmx's attributes that it evaluates as code.
INLINE_CODE = re.compile(
    r"<script(?![^>]*\bsrc=)[^>]*>|\son[a-z]+\s*=|\sstyle\s*=|<style|javascript:|hx-on|"
    r"hx-vars|hx-(?:vals|headers)\s*=\s*['\"]\s*(?:js|javascript):|"
    r"hx-trigger=\"(?:[^\"]*,)?\s*[\w.-]+\[",  # an event filter: click[ctrlKey]
    re.IGNORECASE,
)
JINJA_COMMENT = re.compile(r"{#.*?#}", re.DOTALL)


def test_templates_have_nothing_the_content_security_policy_refuses():
    found = [
        f"{path.relative_to(TEMPLATES)}: {match.group(0)}"
        for path in TEMPLATES.rglob("*.html")
        for match in INLINE_CODE.finditer(JINJA_COMMENT.sub("", path.read_text()))
    ]
    assert found == []


def test_htmx_is_configured_for_the_policy(client):
    page = client.get("/login").get_data(as_text=True)
    meta = re.search(r"<meta name=\"htmx-config\" content='([^']+)'>", page)
    assert meta
    for setting in ('"includeIndicatorStyles":false', '"allowEval":false'):
        assert setting in meta.group(1)
