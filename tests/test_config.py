from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet, MultiFernet
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from campaigns import config
from campaigns.config import ConfigError

KEY = Fernet.generate_key().decode()
OLD_KEY = Fernet.generate_key().decode()


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
        "DISPARO_ENCRYPTION_KEY",
        "NOTIFICATION_WEBHOOK_SECRET",
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
    env.setenv("DISPARO_ENCRYPTION_KEY", KEY)
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


# -- production requires exactly SECRET_KEY, DATABASE_URL and DISPARO_ENCRYPTION_KEY

PRODUCTION = {
    "SECRET_KEY": "x" * 40,
    "DATABASE_URL": "postgresql://db.example.com/disparo",
    "DISPARO_ENCRYPTION_KEY": KEY,
}


def test_production_starts_with_the_three_required_settings_and_nothing_else(env):
    for name, value in PRODUCTION.items():
        env.setenv(name, value)
    settings = config.load_settings()
    assert settings.env == "production" and settings.mocks is False
    assert config.encryption_keys() == [KEY]


@pytest.mark.parametrize("missing", sorted(PRODUCTION))
def test_production_names_the_missing_setting(env, missing):
    for name, value in PRODUCTION.items():
        if name != missing:
            env.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        config.load_settings()
    assert f"Production needs {missing}, which is not set" in str(caught.value)


def test_production_names_every_missing_setting_at_once(env):
    with pytest.raises(ConfigError) as caught:
        config.load_settings()
    assert "SECRET_KEY, DATABASE_URL, DISPARO_ENCRYPTION_KEY, which are not set" in str(
        caught.value
    )
    assert "secrets.token_urlsafe(48)" in str(caught.value)  # how to make the key


@pytest.mark.parametrize(
    "raw",
    [
        "not-a-key",
        base64.urlsafe_b64encode(b"too short").decode(),
        "s" * (config.MIN_ENCRYPTION_SECRET_LENGTH - 1),  # a secret one character short
        f"{KEY},",  # an empty entry
    ],
)
def test_an_invalid_encryption_key_is_refused_without_repeating_it(env, raw):
    for name, value in PRODUCTION.items():
        env.setenv(name, value)
    env.setenv("DISPARO_ENCRYPTION_KEY", raw)
    with pytest.raises(ConfigError, match="DISPARO_ENCRYPTION_KEY is not valid") as caught:
        config.load_settings()
    assert "neither a Fernet key nor a random secret of at least 32 characters" in str(caught.value)
    assert raw.strip(",") not in str(caught.value)


def test_several_encryption_keys_rotate_and_a_bad_one_is_named_by_position(env):
    env.setenv("DISPARO_ENV", "development")
    env.setenv("DISPARO_ENCRYPTION_KEY", f" {KEY} , {OLD_KEY} ")
    assert config.encryption_keys() == [KEY, OLD_KEY]
    env.setenv("DISPARO_ENCRYPTION_KEY", f"{KEY},nope")
    with pytest.raises(ConfigError, match="key 2 of 2 is neither a Fernet key"):
        config.encryption_keys()


# What app.json's "generator": "secret" gives: 64 hex digits, not a Fernet key.
GENERATED_SECRET = "3f" * 32


def test_a_long_random_secret_gives_its_own_fixed_fernet_key(env):
    for name, value in PRODUCTION.items():
        env.setenv(name, value)
    env.setenv("DISPARO_ENCRYPTION_KEY", GENERATED_SECRET)
    config.load_settings()  # accepted at startup
    [derived] = config.encryption_keys()
    assert derived not in (GENERATED_SECRET, KEY)
    Fernet(derived)  # a valid key
    # The documented derivation (README), so any tool can reproduce the key.
    hkdf = HKDF(algorithm=SHA256(), length=32, salt=None, info=b"disparo encryption key")
    assert derived == base64.urlsafe_b64encode(hkdf.derive(GENERATED_SECRET.encode())).decode()
    assert config.encryption_keys() == [derived]  # the same in every process
    env.setenv("DISPARO_ENCRYPTION_KEY", "4f" * 32)
    assert config.encryption_keys() != [derived]  # from the secret, not a constant
    # Exactly 32 characters is enough; a Fernet key is still taken as it is.
    env.setenv("DISPARO_ENCRYPTION_KEY", "k" * config.MIN_ENCRYPTION_SECRET_LENGTH)
    assert len(config.encryption_keys()) == 1
    env.setenv("DISPARO_ENCRYPTION_KEY", KEY)
    assert config.encryption_keys() == [KEY]


def test_secrets_and_fernet_keys_rotate_together(env):
    """Moving from a Fernet key to a generated secret (or back) is an ordinary rotation."""
    env.setenv("DISPARO_ENV", "development")
    env.setenv("DISPARO_ENCRYPTION_KEY", f"{GENERATED_SECRET},{KEY}")
    new, old = config.encryption_keys()
    assert old == KEY and new == config.fernet_key_from_secret(GENERATED_SECRET)
    token = Fernet(KEY).encrypt(b"EAAG-token")
    ring = MultiFernet([Fernet(new), Fernet(old)])
    assert ring.decrypt(token) == b"EAAG-token"  # the old key still reads
    rotated = ring.rotate(token)
    assert Fernet(new).decrypt(rotated) == b"EAAG-token"  # and the secret's key encrypts


def test_development_derives_a_fixed_key_of_its_own_from_its_secret(env):
    env.setenv("DISPARO_ENV", "development")
    first = config.encryption_keys()
    assert len(first) == 1 and first == config.encryption_keys()
    Fernet(first[0])  # a valid key
    env.setenv("SECRET_KEY", "another development secret")
    assert config.encryption_keys() != first  # derived from the secret, not a constant
    env.setenv("DISPARO_ENCRYPTION_KEY", KEY)
    assert config.encryption_keys() == [KEY]  # a set key always wins


# -- the mocks never run in production


def test_production_with_mocks_on_refuses_to_start(env):
    for name, value in PRODUCTION.items():
        env.setenv(name, value)
    env.setenv("DISPARO_MOCKS", "on")
    with pytest.raises(ConfigError, match="DISPARO_MOCKS is on, and production never runs"):
        config.load_settings()

    from app import create_app

    with pytest.raises(ConfigError, match="DISPARO_MOCKS"):
        create_app()


def test_a_production_worker_with_mocks_on_refuses_to_start():
    """`procrastinate --app=jobs.app worker` stops while loading the app, before any job."""
    env = {
        "PATH": "",
        "DISPARO_ENV": "production",
        "DISPARO_MOCKS": "on",
        "SECRET_KEY": "x" * 40,
        "DATABASE_URL": "postgresql://db.invalid/disparo",  # never reached
        "DISPARO_ENCRYPTION_KEY": KEY,
    }
    result = subprocess.run(
        [sys.executable, "-m", "procrastinate", "--app=jobs.app", "worker"],
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "DISPARO_MOCKS is on, and production never runs" in result.stderr


def test_development_keeps_its_mocks(env):
    env.setenv("DISPARO_ENV", "development")
    env.setenv("DISPARO_MOCKS", "on")
    assert config.load_settings().mocks is True


# -- the outgoing notification webhook's signing secret


def test_the_notification_webhook_secret_is_derived_when_unset(env):
    env.setenv("DISPARO_ENV", "development")
    secret = config.load_settings().notification_webhook_secret
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    assert config.load_settings().notification_webhook_secret == secret


def test_a_set_notification_webhook_secret_is_used(env):
    env.setenv("DISPARO_ENV", "development")
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    env.setenv("NOTIFICATION_WEBHOOK_SECRET", secret)
    assert config.load_settings().flask_config()["NOTIFICATION_WEBHOOK_SECRET"] == secret


@pytest.mark.parametrize(
    "raw",
    [
        "plain-password",
        base64.b64encode(b"k" * 32).decode(),  # no whsec_ prefix
        "whsec_" + base64.b64encode(b"short").decode(),
        "whsec_not base64!",
    ],
)
def test_a_bad_notification_webhook_secret_is_refused(env, raw):
    env.setenv("DISPARO_ENV", "development")
    env.setenv("NOTIFICATION_WEBHOOK_SECRET", raw)
    with pytest.raises(ConfigError, match="NOTIFICATION_WEBHOOK_SECRET must be whsec_"):
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


def test_the_upload_limit_is_never_below_the_request_limit(env):
    env.setenv("DISPARO_ENV", "development")
    env.setenv("MAX_REQUEST_BYTES", str(20 * 1024 * 1024))
    env.delenv("MAX_UPLOAD_BYTES", raising=False)
    assert config.load_settings().flask_config()["MAX_UPLOAD_BYTES"] == 20 * 1024 * 1024


def test_a_retired_sign_in_setting_is_named_in_a_warning(env, caplog):
    env.setenv("DISPARO_ENV", "development")
    env.setenv("LOGIN_LOCKOUT_MINUTES", "15")
    with caplog.at_level("WARNING", logger="campaigns.config"):
        config.load_settings()
    assert "LOGIN_LOCKOUT_MINUTES is no longer read" in caplog.text


def test_undeliverable_numbers_are_never_kept_past_the_data_retention(env):
    env.setenv("DISPARO_ENV", "development")
    env.delenv("UNDELIVERABLE_DAYS", raising=False)
    env.delenv("DATA_RETENTION_DAYS", raising=False)
    settings = config.load_settings()
    assert (settings.undeliverable_days, settings.data_retention_days) == (30, 180)
    # Unset, it follows a retention shorter than its 30 days.
    env.setenv("DATA_RETENTION_DAYS", "10")
    assert config.load_settings().undeliverable_days == 10
    env.setenv("UNDELIVERABLE_DAYS", "10")  # as long as the retention: allowed
    assert config.load_settings().undeliverable_days == 10
    env.setenv("UNDELIVERABLE_DAYS", "11")
    with pytest.raises(
        ConfigError,
        match=r"UNDELIVERABLE_DAYS \(11\) must not be longer than DATA_RETENTION_DAYS \(10\)",
    ):
        config.load_settings()
    env.setenv("DATA_RETENTION_DAYS", "365")
    assert config.load_settings().undeliverable_days == 11
