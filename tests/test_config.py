from __future__ import annotations

import pytest

from campaigns import config
from campaigns.config import ConfigError


@pytest.fixture
def env(monkeypatch, tmp_path):
    """A clean environment: no .env file, no cached database URL, a scratch instance/."""
    monkeypatch.setattr(config, "load_env_file", lambda: None)
    monkeypatch.setattr(config, "INSTANCE_PATH", tmp_path)
    for name in (
        "DISPARO_ENV",
        "DATABASE_URL",
        "SECRET_KEY",
        "DISPARO_MOCKS",
        "APP_BASE_URL",
        "ERP_BASE_URL",
        "PORT",
        "PHONE_DEFAULT_REGION",
    ):
        monkeypatch.delenv(name, raising=False)
    config.database_url.cache_clear()
    yield monkeypatch
    config.database_url.cache_clear()


def test_production_is_the_default_and_needs_a_secret_key(env):
    env.setenv("DATABASE_URL", "postgresql://db.example.com/disparo")
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        config.load_settings()


def test_production_without_database_url_refuses_to_start(env):
    env.setenv("SECRET_KEY", "x" * 40)
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        config.database_url()


def test_create_app_fails_closed_in_production(env):
    from app import create_app

    with pytest.raises(ConfigError):
        create_app()


def test_production_settings_are_strict(env):
    env.setenv("SECRET_KEY", "x" * 40)
    env.setenv("DATABASE_URL", "postgres://u:p@db.example.com:5432/disparo")
    settings = config.load_settings()
    flask_config = settings.flask_config()
    assert settings.mocks is False
    assert settings.erp_base_url is None
    assert flask_config["SESSION_COOKIE_SECURE"] is True
    assert flask_config["SQLALCHEMY_DATABASE_URI"] == (
        "postgresql+psycopg://u:p@db.example.com:5432/disparo"
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("postgres://u:p@h/d", "postgresql://u:p@h/d"),
        ("postgresql://u@h:5433/d?sslmode=require", "postgresql://u@h:5433/d?sslmode=require"),
        ("postgresql+psycopg://u@h/d", "postgresql://u@h/d"),
    ],
)
def test_database_urls_are_normalised(env, raw, expected):
    env.setenv("DISPARO_ENV", "production")
    env.setenv("DATABASE_URL", raw)
    assert config.database_url() == expected


@pytest.mark.parametrize("raw", ["mysql://u@h/d", "sqlite:///x.db", "h/d"])
def test_non_postgres_urls_are_refused(env, raw):
    env.setenv("DATABASE_URL", raw)
    with pytest.raises(ConfigError, match="postgres"):
        config.database_url()


def test_unknown_environment_is_refused(env):
    env.setenv("DISPARO_ENV", "staging")
    with pytest.raises(ConfigError, match="DISPARO_ENV"):
        config.load_settings()


def test_development_generates_and_keeps_a_secret(env, tmp_path):
    env.setenv("DISPARO_ENV", "development")
    first = config.load_settings()
    second = config.load_settings()
    assert len(first.secret_key) >= 40
    assert first.secret_key == second.secret_key
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0
    assert first.mocks is True
    assert first.flask_config()["SESSION_COOKIE_SECURE"] is False


def test_mocks_and_erp_follow_the_one_base_url(env):
    env.setenv("DISPARO_ENV", "development")
    env.setenv("PORT", "5100")  # a worker's own PORT under honcho must not matter
    env.setenv("APP_BASE_URL", "http://127.0.0.1:8000/")
    settings = config.load_settings()
    assert settings.app_base_url == "http://127.0.0.1:8000"
    assert settings.erp_base_url == "http://127.0.0.1:8000/mock/erp"


def test_a_bad_flag_is_an_error_not_a_guess(env):
    env.setenv("DISPARO_ENV", "development")
    env.setenv("DISPARO_MOCKS", "maybe")
    with pytest.raises(ConfigError, match="DISPARO_MOCKS"):
        config.load_settings()


def test_database_url_wins_over_the_embedded_server(env):
    env.setenv("DISPARO_ENV", "development")
    env.setenv("DATABASE_URL", "postgresql://other.example.com/disparo")
    assert config.database_url() == "postgresql://other.example.com/disparo"


def test_importing_the_app_module_has_no_side_effects():
    import subprocess
    import sys

    code = (
        "import os; os.environ.pop('DATABASE_URL', None);"
        "os.environ['DISPARO_ENV'] = 'production';"
        "import app, jobs, jobs.tasks; print('ok')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_phone_region_defaults_to_brazil(env):
    env.setenv("DISPARO_ENV", "development")
    env.setenv("DATABASE_URL", "postgresql://db.example.com/disparo")
    settings = config.load_settings()
    assert settings.phone_default_region == "BR"
    assert settings.flask_config()["PHONE_DEFAULT_REGION"] == "BR"


def test_phone_region_can_be_another_country(env):
    env.setenv("DISPARO_ENV", "development")
    env.setenv("PHONE_DEFAULT_REGION", " us ")
    assert config.load_settings().phone_default_region == "US"


@pytest.mark.parametrize("raw", ["ZZ", "Brazil", "55", "001"])
def test_an_unknown_phone_region_is_refused(env, raw):
    env.setenv("DISPARO_ENV", "development")
    env.setenv("PHONE_DEFAULT_REGION", raw)
    with pytest.raises(ConfigError, match="PHONE_DEFAULT_REGION"):
        config.load_settings()


def test_request_bodies_are_limited_and_uploads_have_their_own_limit(env):
    env.setenv("DISPARO_ENV", "development")
    env.setenv("DATABASE_URL", "postgresql://db.example.com/disparo")
    env.delenv("MAX_REQUEST_BYTES", raising=False)
    env.delenv("MAX_UPLOAD_BYTES", raising=False)
    flask = config.load_settings().flask_config()
    assert flask["MAX_CONTENT_LENGTH"] == flask["MAX_REQUEST_BYTES"] == 1024 * 1024
    assert flask["MAX_FORM_MEMORY_SIZE"] == 1024 * 1024
    assert flask["MAX_UPLOAD_BYTES"] == 10 * 1024 * 1024
    env.setenv("MAX_REQUEST_BYTES", "2000000")
    env.setenv("MAX_UPLOAD_BYTES", "1000000")
    with pytest.raises(ConfigError, match="MAX_UPLOAD_BYTES must be at least 2000000"):
        config.load_settings()
