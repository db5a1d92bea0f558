"""Configuration from the environment (12-factor), failing closed.

One resolver, :func:`database_url`, gives the database to Flask, to ``jobs.app``
and to the CLI, so web and workers can never talk to different databases.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import secrets
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pytz
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from dotenv import load_dotenv

from campaigns import phones

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
INSTANCE_PATH = PROJECT_ROOT / "instance"
ENVIRONMENTS = ("production", "development")
TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off"}
MOCK_ERP_MAX_CUSTOMERS = 9_999_999
# Provider calls in flight per worker process at most (threads, pooled connections).
MAX_CALLS_IN_FLIGHT = 1000
MAX_PROXIES = 10  # PROXY_COUNT: proxies in front of the app that append X-Forwarded-For
MOCK_WHATSAPP_URL_EXAMPLE = "http://127.0.0.1:5001/v23.0"
# What production cannot start without; nothing else is required.
REQUIRED_IN_PRODUCTION = ("SECRET_KEY", "DATABASE_URL", "DISPARO_ENCRYPTION_KEY")
ENCRYPTION_KEY = "DISPARO_ENCRYPTION_KEY"
# DISPARO_ENCRYPTION_KEY takes a Fernet key, or any random secret at least this long, from
# which a Fernet key is derived (such as app.json's "generator": "secret" makes).
MIN_ENCRYPTION_SECRET_LENGTH = 32
GENERATE_ENCRYPTION_KEY = 'python -c "import secrets; print(secrets.token_urlsafe(48))"'
WEBHOOK_SECRET_PREFIX = "whsec_"
# Standard Webhooks: a signing secret of 24 to 64 random bytes.
WEBHOOK_SECRET_BYTES = (24, 64)
# Settings earlier versions read, and what took their place (a warning at startup).
RETIRED_SETTINGS = {
    "LOGIN_MAX_FAILURES": "failures now slow the next sign-in down; see LOGIN_FREE_FAILURES",
    "LOGIN_LOCKOUT_MINUTES": "there is no lockout any more; see LOGIN_MAX_DELAY_SECONDS",
}
MIB = 1024 * 1024
MAX_AUDIT_RETENTION_DAYS = 36_500  # a century: past it, a date before the epoch of anything here
# Below this, ordinary forms would be refused.
MIN_REQUEST_BYTES = 64 * 1024


class ConfigError(RuntimeError):
    """A setting is missing or wrong; the process must not start."""


def load_env_file() -> None:
    """Read the checkout's git-ignored ``.env``; real environment variables win."""
    load_dotenv(PROJECT_ROOT / ".env", override=False)


def environment() -> str:
    load_env_file()
    env = os.environ.get("DISPARO_ENV", "production").strip().lower()
    if env not in ENVIRONMENTS:
        raise ConfigError(f"DISPARO_ENV must be one of {', '.join(ENVIRONMENTS)}, not {env!r}")
    return env


def _flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ConfigError(f"{name} must be on or off, not {raw!r}")


def _int_setting(name: str, default: int, minimum: int = 1, maximum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, not {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be at most {maximum}, not {value}")
    return value


def _fraction(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number from 0 to 1, not {raw!r}") from None
    # `not 0 <= value <= 1` also rejects NaN, which float() accepts.
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be a number from 0 to 1, not {raw!r}")
    return value


# Replies that mean "stop messaging me", Portuguese and English.
DEFAULT_OPT_OUT_KEYWORDS = "STOP,SAIR,PARAR,PARE,CANCELAR,DESCADASTRAR,UNSUBSCRIBE"


def _words(name: str, default: str) -> frozenset[str]:
    """A comma-separated list, compared lowercased and trimmed."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        raw = default
    words = frozenset(w.strip().lower() for w in raw.split(",") if w.strip())
    if not words:
        raise ConfigError(f"{name} must list at least one word, not {raw!r}")
    return words


def normalise_database_url(url: str) -> str:
    """Return a libpq URL (``postgresql://``) from any spelling platforms hand out."""
    url = url.strip()
    for prefix in ("postgres://", "postgresql+psycopg://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    if not url.startswith("postgresql://"):
        raise ConfigError("DATABASE_URL must be a postgres:// or postgresql:// URL")
    return url


def sqlalchemy_url(url: str) -> str:
    """The same database for SQLAlchemy, on the psycopg 3 driver."""
    return "postgresql+psycopg://" + normalise_database_url(url)[len("postgresql://") :]


@cache
def database_url() -> str:
    """The one database of this process: ``DATABASE_URL``, else the embedded server.

    Production without ``DATABASE_URL`` refuses to start rather than guess (libpq's
    defaults could reach another server than the web process uses).
    """
    env = environment()
    raw = os.environ.get("DATABASE_URL", "")
    if raw.strip():
        return normalise_database_url(raw)
    if env == "production":
        raise ConfigError(
            "DATABASE_URL is not set. Production needs a PostgreSQL URL; "
            "set DISPARO_ENV=development to use the embedded database."
        )
    from campaigns import devdb  # imported only here: production never needs it

    return devdb.url()


def _secret_key(env: str) -> str:
    key = os.environ.get("SECRET_KEY", "").strip()
    if key:
        return key
    if env == "production":
        raise ConfigError("SECRET_KEY is not set. Production needs a long random SECRET_KEY.")
    # Development: a random secret generated once and kept under instance/, so
    # sessions survive restarts and every process of the checkout shares it.
    path = INSTANCE_PATH / "secret_key"
    INSTANCE_PATH.mkdir(exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


@dataclass(frozen=True)
class Settings:
    env: str
    secret_key: str
    mocks: bool
    app_base_url: str
    erp_base_url: str | None
    whatsapp_api_base_url: str
    whatsapp_app_secret: str | None
    whatsapp_app_id: str | None
    webhook_verify_token: str | None
    notification_webhook_url: str | None
    notification_webhook_secret: str
    metrics_token: str | None
    proxy_count: int
    login_free_failures: int
    login_max_delay_seconds: int
    stalled_worker_seconds: int
    sending_lease_seconds: int
    calls_in_flight: int
    throttle_deadline_minutes: int
    marketing_limit_retry_hours: int
    pair_limit_retry_seconds: int
    messaging_limit_margin_percent: int
    undeliverable_days: int
    contact_history_days: int
    auto_pause_failure_rate: float
    auto_pause_min_outcomes: int
    opt_out_keywords: frozenset[str]
    mock_erp_customers: int
    mock_erp_latency_ms: int
    mock_erp_failure_rate: float
    mock_template_approval_seconds: int
    mock_template_reject_marker: str
    mock_whatsapp_latency_ms: int
    mock_whatsapp_throttle_rate: float
    mock_whatsapp_transient_rate: float
    mock_whatsapp_permanent_rate: float
    mock_whatsapp_marketing_limit_rate: float
    mock_whatsapp_pair_limit_rate: float
    mock_whatsapp_throughput_cap: int
    mock_whatsapp_webhooks: bool
    mock_whatsapp_read_rate: float
    mock_whatsapp_webhook_delay_ms: int
    mock_whatsapp_url: str | None
    display_timezone: str
    default_locale: str
    phone_default_region: str
    max_request_bytes: int
    max_upload_bytes: int
    audience_upload_max_mb: int
    audit_retention_days: int
    data_retention_days: int
    phone_hash_key: bytes
    db_pool_size: int | None = None  # None: the process's own default (sqlalchemy_pool)
    db_max_overflow: int | None = None

    def flask_config(self) -> dict[str, Any]:
        return {
            "DISPARO_ENV": self.env,
            "SECRET_KEY": self.secret_key,
            "SQLALCHEMY_DATABASE_URI": sqlalchemy_url(database_url()),
            "SQLALCHEMY_ENGINE_OPTIONS": {
                "pool_pre_ping": True,
                # The web's and the CLI's pool; a worker sizes its own (jobs/context.py).
                "pool_size": self.db_pool_size if self.db_pool_size is not None else 5,
                "max_overflow": self.db_max_overflow if self.db_max_overflow is not None else 10,
                # pg_stat_activity then counts connections per process (README, Deploying).
                "connect_args": {"application_name": application_name()},
            },
            "SESSION_COOKIE_SECURE": self.env == "production",
            "SESSION_COOKIE_HTTPONLY": True,
            "SESSION_COOKIE_SAMESITE": "Lax",
            "REMEMBER_COOKIE_SECURE": self.env == "production",
            "MOCKS_ENABLED": self.mocks,
            "APP_BASE_URL": self.app_base_url,
            "ERP_BASE_URL": self.erp_base_url,
            "WHATSAPP_API_BASE_URL": self.whatsapp_api_base_url,
            "WHATSAPP_APP_SECRET": self.whatsapp_app_secret,
            "WHATSAPP_APP_ID": self.whatsapp_app_id,
            "WEBHOOK_VERIFY_TOKEN": self.webhook_verify_token,
            "NOTIFICATION_WEBHOOK_URL": self.notification_webhook_url,
            "NOTIFICATION_WEBHOOK_SECRET": self.notification_webhook_secret,
            "METRICS_TOKEN": self.metrics_token,
            "PROXY_COUNT": self.proxy_count,
            "LOGIN_FREE_FAILURES": self.login_free_failures,
            "LOGIN_MAX_DELAY_SECONDS": self.login_max_delay_seconds,
            "STALLED_WORKER_SECONDS": self.stalled_worker_seconds,
            "SENDING_LEASE_SECONDS": self.sending_lease_seconds,
            "WHATSAPP_CALLS_IN_FLIGHT": self.calls_in_flight,
            "THROTTLE_DEADLINE_MINUTES": self.throttle_deadline_minutes,
            "MARKETING_LIMIT_RETRY_HOURS": self.marketing_limit_retry_hours,
            "PAIR_LIMIT_RETRY_SECONDS": self.pair_limit_retry_seconds,
            "MESSAGING_LIMIT_MARGIN_PERCENT": self.messaging_limit_margin_percent,
            "UNDELIVERABLE_DAYS": self.undeliverable_days,
            "CONTACT_HISTORY_DAYS": self.contact_history_days,
            "AUTO_PAUSE_FAILURE_RATE": self.auto_pause_failure_rate,
            "AUTO_PAUSE_MIN_OUTCOMES": self.auto_pause_min_outcomes,
            "OPT_OUT_KEYWORDS": self.opt_out_keywords,
            "MOCK_ERP_CUSTOMERS": self.mock_erp_customers,
            "MOCK_ERP_LATENCY_MS": self.mock_erp_latency_ms,
            "MOCK_ERP_FAILURE_RATE": self.mock_erp_failure_rate,
            "MOCK_TEMPLATE_APPROVAL_SECONDS": self.mock_template_approval_seconds,
            "MOCK_TEMPLATE_REJECT_MARKER": self.mock_template_reject_marker,
            "MOCK_WHATSAPP_LATENCY_MS": self.mock_whatsapp_latency_ms,
            "MOCK_WHATSAPP_THROTTLE_RATE": self.mock_whatsapp_throttle_rate,
            "MOCK_WHATSAPP_TRANSIENT_RATE": self.mock_whatsapp_transient_rate,
            "MOCK_WHATSAPP_PERMANENT_RATE": self.mock_whatsapp_permanent_rate,
            "MOCK_WHATSAPP_MARKETING_LIMIT_RATE": self.mock_whatsapp_marketing_limit_rate,
            "MOCK_WHATSAPP_PAIR_LIMIT_RATE": self.mock_whatsapp_pair_limit_rate,
            "MOCK_WHATSAPP_THROUGHPUT_CAP": self.mock_whatsapp_throughput_cap,
            "MOCK_WHATSAPP_WEBHOOKS": self.mock_whatsapp_webhooks,
            "MOCK_WHATSAPP_READ_RATE": self.mock_whatsapp_read_rate,
            "MOCK_WHATSAPP_WEBHOOK_DELAY_MS": self.mock_whatsapp_webhook_delay_ms,
            "MOCK_WHATSAPP_URL": self.mock_whatsapp_url,
            "DISPLAY_TIMEZONE": self.display_timezone,
            "DEFAULT_LOCALE": self.default_locale,
            "PHONE_DEFAULT_REGION": self.phone_default_region,
            # A body over the limit is a 413 before it is read (campaigns/edge.py):
            # MAX_UPLOAD_BYTES for a view that takes a file, else MAX_REQUEST_BYTES,
            # which also bounds each form field held in memory.
            "MAX_CONTENT_LENGTH": self.max_request_bytes,
            "MAX_FORM_MEMORY_SIZE": self.max_request_bytes,
            "MAX_REQUEST_BYTES": self.max_request_bytes,
            "MAX_UPLOAD_BYTES": self.max_upload_bytes,
            # A CSV audience's own limit (campaigns/audiences.py), in MB (10^6 bytes).
            "AUDIENCE_UPLOAD_MAX_MB": self.audience_upload_max_mb,
            "AUDIT_RETENTION_DAYS": self.audit_retention_days,
            "DATA_RETENTION_DAYS": self.data_retention_days,
            "PHONE_HASH_KEY": self.phone_hash_key,
            # werkzeug's default; the test suite sets a cheap one (scrypt costs ~85 ms a hash).
            "PASSWORD_HASH_METHOD": "scrypt",
            # The CSRF token lives as long as the session, so a page left open
            # for hours (a campaign being watched) can still pause it.
            "WTF_CSRF_TIME_LIMIT": None,
            "WTF_CSRF_HEADERS": ["X-CSRFToken"],
        }


def mocks_enabled() -> bool:
    """``DISPARO_MOCKS``: on by default in development, never in production.

    Called by ``create_app`` and on importing ``jobs`` (every worker), so a production
    process with the mocks switched on stops before it serves or runs anything.
    """
    env = environment()
    mocks = _flag("DISPARO_MOCKS", default=env == "development")
    if mocks and env == "production":
        raise ConfigError(
            "DISPARO_MOCKS is on, and production never runs the mock ERP and WhatsApp "
            "(a mock sender would report fake sends as real). Unset DISPARO_MOCKS, "
            "or set DISPARO_ENV=development."
        )
    return mocks


LOG_FORMATS = ("text", "json")


def log_format() -> str:
    """``LOG_FORMAT``: ``text`` (the default, one readable line) or ``json`` (one JSON
    object a line, docs/logging.md).

    Read on its own, not through :func:`load_settings`, because every process configures
    its logging before anything else: gunicorn's config file, a worker's import of
    ``jobs`` and Alembic's ``env.py`` call it as well as ``create_app``.
    """
    load_env_file()
    raw = os.environ.get("LOG_FORMAT", "").strip().lower() or "text"
    if raw not in LOG_FORMATS:
        raise ConfigError(f"LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, not {raw!r}")
    return raw


@dataclass(frozen=True)
class SentrySettings:
    dsn: str
    environment: str
    traces_sample_rate: float


def sentry_settings() -> SentrySettings | None:
    """Error reporting (campaigns/error_reporting.py): ``SENTRY_DSN`` turns it on, unset
    it stays off; ``SENTRY_ENVIRONMENT`` defaults to ``DISPARO_ENV``, and
    ``SENTRY_TRACES_SAMPLE_RATE`` (0 to 1) to 0, no performance traces."""
    env = environment()
    dsn = os.environ.get("SENTRY_DSN", "").strip()
    if not dsn:
        return None
    from sentry_sdk.utils import BadDsn, Dsn  # the SDK's own parser: what init would accept

    try:
        Dsn(dsn)
    except BadDsn:  # the message never repeats the DSN, which holds the project's key
        raise ConfigError(
            "SENTRY_DSN is not a Sentry DSN (https://<key>@<host>/<project id>); "
            "copy it from the project's Client Keys page, or unset it"
        ) from None
    return SentrySettings(
        dsn=dsn,
        environment=os.environ.get("SENTRY_ENVIRONMENT", "").strip() or env,
        traces_sample_rate=_fraction("SENTRY_TRACES_SAMPLE_RATE", 0.0),
    )


def _require_production_settings() -> None:
    """Name every missing required setting at once, rather than one per restart."""
    missing = [name for name in REQUIRED_IN_PRODUCTION if not os.environ.get(name, "").strip()]
    if not missing:
        return
    verb = "is" if len(missing) == 1 else "are"
    message = (
        f"Production needs {', '.join(missing)}, which {verb} not set (README, Configuration)."
    )
    if ENCRYPTION_KEY in missing:
        message += f" Generate {ENCRYPTION_KEY} with: {GENERATE_ENCRYPTION_KEY}"
    raise ConfigError(message)


def _derived_key(secret_key: str, purpose: str) -> bytes:
    """32 bytes of key for one purpose, derived from a secret (HKDF-SHA256, info ``disparo
    <purpose>``): SECRET_KEY's, or an encryption secret's."""
    hkdf = HKDF(algorithm=SHA256(), length=32, salt=None, info=f"disparo {purpose}".encode())
    return hkdf.derive(secret_key.encode())


def encryption_keys() -> list[str]:
    """``DISPARO_ENCRYPTION_KEY``'s Fernet keys, the one that encrypts first.

    Several comma-separated keys rotate: the first encrypts, every one decrypts
    (``flask secrets rotate`` re-encrypts with the first). Each entry is a Fernet key,
    used as it is, or a random secret of at least 32 characters, from which its Fernet
    key is derived (:func:`fernet_key_from_secret`), so a platform's generated secret
    serves as it comes. Production requires it; development derives a fixed key of its
    own from its SECRET_KEY, which no production process ever uses (production never
    reaches this fallback).
    """
    env = environment()
    raw = os.environ.get(ENCRYPTION_KEY, "").strip()
    if not raw:
        if env == "production":
            raise ConfigError(
                f"{ENCRYPTION_KEY} is not set. Production needs it to encrypt senders' "
                f"secrets; generate one with: {GENERATE_ENCRYPTION_KEY}"
            )
        derived = _derived_key(_secret_key(env), "development encryption key")
        return [base64.urlsafe_b64encode(derived).decode()]
    entries = [entry.strip() for entry in raw.split(",")]
    keys = []
    for position, entry in enumerate(entries, start=1):
        if _is_fernet_key(entry):
            keys.append(entry)
        elif len(entry) >= MIN_ENCRYPTION_SECRET_LENGTH:
            keys.append(fernet_key_from_secret(entry))
        else:  # the message never repeats the value
            which = f"key {position} of {len(entries)}" if len(entries) > 1 else "its value"
            raise ConfigError(
                f"{ENCRYPTION_KEY} is not valid: {which} is neither a Fernet key nor a random "
                f"secret of at least {MIN_ENCRYPTION_SECRET_LENGTH} characters. "
                f"Generate one with: {GENERATE_ENCRYPTION_KEY}"
            )
    return keys


def _is_fernet_key(value: str) -> bool:
    """32 url-safe base64-encoded bytes, as ``Fernet.generate_key()`` makes them."""
    try:
        Fernet(value)
    except (ValueError, binascii.Error):
        return False
    return True


def fernet_key_from_secret(secret: str) -> str:
    """The Fernet key of a ``DISPARO_ENCRYPTION_KEY`` entry that is not one itself.

    HKDF-SHA256 (RFC 5869) over the secret's UTF-8 bytes, no salt, info ``disparo
    encryption key``, 32 bytes, url-safe base64: the same secret always gives the same
    key, in every process. HKDF, not a password hash, because the secret is random
    (a platform's generator, ``secrets.token_urlsafe``), never a word someone chose.
    """
    return base64.urlsafe_b64encode(_derived_key(secret, "encryption key")).decode()


def _notification_webhook_secret(secret_key: str) -> str:
    """The outgoing webhooks' Standard Webhooks secret (``whsec_`` and base64).

    Unset, one is derived from SECRET_KEY: every notification is signed, though a
    receiver can only check it against a secret it was given, so set it to verify.
    """
    raw = os.environ.get("NOTIFICATION_WEBHOOK_SECRET", "").strip()
    if not raw:
        key = _derived_key(secret_key, "notification webhook secret")
        return WEBHOOK_SECRET_PREFIX + base64.b64encode(key).decode()
    low, high = WEBHOOK_SECRET_BYTES
    try:
        size = len(base64.b64decode(raw.removeprefix(WEBHOOK_SECRET_PREFIX), validate=True))
    except binascii.Error:
        size = 0
    if not raw.startswith(WEBHOOK_SECRET_PREFIX) or not low <= size <= high:
        raise ConfigError(
            f"NOTIFICATION_WEBHOOK_SECRET must be {WEBHOOK_SECRET_PREFIX} followed by {low} "
            f"to {high} base64-encoded random bytes; generate one with: python -c "
            f'"import base64, os; print({WEBHOOK_SECRET_PREFIX!r} + '
            f'base64.b64encode(os.urandom(32)).decode())"'
        )
    return raw


MIN_PHONE_HASH_KEY_LENGTH = 32


# A bearer token guessed one request at a time: 16 random characters are out of reach.
MIN_METRICS_TOKEN = 32


def _metrics_token() -> str | None:
    """The scraper's bearer token for /metrics (besides an admin's API token); None: unset."""
    raw = os.environ.get("METRICS_TOKEN", "").strip()
    if raw and len(raw) < MIN_METRICS_TOKEN:
        raise ConfigError(
            f"METRICS_TOKEN must have at least {MIN_METRICS_TOKEN} characters; generate one with:"
            ' python -c "import secrets; print(secrets.token_urlsafe(32))"'
        )
    return raw or None


def _phone_hash_key(secret_key: str) -> bytes:
    """The key of the opt-outs kept as a hash after an erasure (services/suppressions.py).

    Unset, it is derived from SECRET_KEY. Changing it (or SECRET_KEY, when derived)
    loses the match: numbers kept only as a hash are no longer recognised.
    """
    raw = os.environ.get("PHONE_HASH_KEY", "").strip()
    if not raw:
        return _derived_key(secret_key, "phone hash")
    if len(raw) < MIN_PHONE_HASH_KEY_LENGTH:
        raise ConfigError(
            f"PHONE_HASH_KEY must be at least {MIN_PHONE_HASH_KEY_LENGTH} random characters; "
            'generate one with: python -c "import secrets; print(secrets.token_urlsafe(32))"'
        )
    return raw.encode()


def load_settings() -> Settings:
    """Read every setting once, raising :class:`ConfigError` on the first bad one."""
    env = environment()
    if env == "production":
        _require_production_settings()
    for name, instead in RETIRED_SETTINGS.items():
        if os.environ.get(name, "").strip():
            logger.warning("%s is no longer read: %s", name, instead)
    mocks = mocks_enabled()
    secret_key = _secret_key(env)
    encryption_keys()  # validated here, so a bad key stops the app at startup
    base = os.environ.get("APP_BASE_URL", "").strip().rstrip("/")
    if not base:
        # Never this process's own PORT: honcho gives every process another one.
        base = "http://127.0.0.1:5000"
    erp = os.environ.get("ERP_BASE_URL", "").strip().rstrip("/") or None
    if erp is None and mocks:
        erp = f"{base}/mock/erp"
    whatsapp = os.environ.get("WHATSAPP_API_BASE_URL", "").strip().rstrip("/")
    if not whatsapp:
        whatsapp = "https://graph.facebook.com/v23.0"
    # A request body's limit; a view that takes a file has MAX_UPLOAD_BYTES instead.
    max_request = _int_setting("MAX_REQUEST_BYTES", MIB, minimum=MIN_REQUEST_BYTES)
    # The connection settings, checked here too, so a bad one stops the web app at startup.
    db_pool_size, db_max_overflow = db_pool()
    queue_pool()
    worker_concurrency()
    ops_workers()
    web_threads()
    data_retention_days, undeliverable_days = _retention_days()
    return Settings(
        env=env,
        secret_key=secret_key,
        mocks=mocks,
        app_base_url=base,
        erp_base_url=erp,
        whatsapp_api_base_url=whatsapp,
        whatsapp_app_secret=os.environ.get("WHATSAPP_APP_SECRET") or None,
        # The Meta app whose resumable upload carries a media header's sample for review.
        whatsapp_app_id=os.environ.get("WHATSAPP_APP_ID", "").strip() or None,
        webhook_verify_token=os.environ.get("WHATSAPP_WEBHOOK_VERIFY_TOKEN") or None,
        notification_webhook_url=os.environ.get("NOTIFICATION_WEBHOOK_URL") or None,
        notification_webhook_secret=_notification_webhook_secret(secret_key),
        metrics_token=_metrics_token(),
        # Production runs behind a platform's router (one proxy); development is reached
        # directly, where trusting X-Forwarded-For would let anyone pick an address.
        proxy_count=_int_setting(
            "PROXY_COUNT", 1 if env == "production" else 0, minimum=0, maximum=MAX_PROXIES
        ),
        login_free_failures=_int_setting("LOGIN_FREE_FAILURES", 5),
        login_max_delay_seconds=_int_setting("LOGIN_MAX_DELAY_SECONDS", 60, maximum=3600),
        # Above Procrastinate's 10 s heartbeat interval, or live workers look dead.
        stalled_worker_seconds=_int_setting("STALLED_WORKER_SECONDS", 120, minimum=15),
        sending_lease_seconds=_int_setting("SENDING_LEASE_SECONDS", 120),
        # Provider calls a worker process keeps in flight, over as many pooled connections.
        calls_in_flight=_int_setting(
            "WHATSAPP_CALLS_IN_FLIGHT", 100, minimum=1, maximum=MAX_CALLS_IN_FLIGHT
        ),
        throttle_deadline_minutes=_int_setting("THROTTLE_DEADLINE_MINUTES", 30),
        # Meta's error policies (docs/architecture.md): a message held by the per-user
        # marketing limit (131049) is tried once more this long after; one hit by the pair
        # rate limit (131056) waits this long, within THROTTLE_DEADLINE_MINUTES; a number
        # WhatsApp could not deliver to (131026) is skipped by campaigns for this long.
        marketing_limit_retry_hours=_int_setting(
            "MARKETING_LIMIT_RETRY_HOURS", 24, maximum=24 * 30
        ),
        pair_limit_retry_seconds=_int_setting("PAIR_LIMIT_RETRY_SECONDS", 60, maximum=3600),
        # The share of the portfolio's 24-hour messaging limit Disparo leaves unused
        # (replies, other tools, a test send): campaigns start at most the rest.
        messaging_limit_margin_percent=_int_setting(
            "MESSAGING_LIMIT_MARGIN_PERCENT", 10, minimum=0, maximum=90
        ),
        undeliverable_days=undeliverable_days,
        contact_history_days=_contact_history_days(data_retention_days),
        # 1 turns the failure-rate pause off: a share of failures cannot be over 1.
        auto_pause_failure_rate=_fraction("AUTO_PAUSE_FAILURE_RATE", 0.5),
        auto_pause_min_outcomes=_int_setting("AUTO_PAUSE_MIN_OUTCOMES", 20),
        opt_out_keywords=_words("OPT_OUT_KEYWORDS", DEFAULT_OPT_OUT_KEYWORDS),
        mock_erp_customers=_mock_erp_customers(),
        mock_erp_latency_ms=_int_setting("MOCK_ERP_LATENCY_MS", 0, minimum=0),
        mock_erp_failure_rate=_fraction("MOCK_ERP_FAILURE_RATE", 0.0),
        mock_template_approval_seconds=_int_setting("MOCK_TEMPLATE_APPROVAL_SECONDS", 5, minimum=0),
        mock_template_reject_marker=os.environ.get("MOCK_TEMPLATE_REJECT_MARKER") or "REJECT_ME",
        mock_whatsapp_latency_ms=_int_setting("MOCK_WHATSAPP_LATENCY_MS", 0, minimum=0),
        mock_whatsapp_throttle_rate=_fraction("MOCK_WHATSAPP_THROTTLE_RATE", 0.0),
        mock_whatsapp_transient_rate=_fraction("MOCK_WHATSAPP_TRANSIENT_RATE", 0.0),
        mock_whatsapp_permanent_rate=_fraction("MOCK_WHATSAPP_PERMANENT_RATE", 0.0),
        mock_whatsapp_marketing_limit_rate=_fraction("MOCK_WHATSAPP_MARKETING_LIMIT_RATE", 0.0),
        mock_whatsapp_pair_limit_rate=_fraction("MOCK_WHATSAPP_PAIR_LIMIT_RATE", 0.0),
        # Sends per second per phone number id; 0: no cap (mocks/whatsapp.py, ThroughputCap).
        mock_whatsapp_throughput_cap=_int_setting("MOCK_WHATSAPP_THROUGHPUT_CAP", 0, minimum=0),
        mock_whatsapp_webhooks=_flag("MOCK_WHATSAPP_WEBHOOKS", default=True),
        mock_whatsapp_read_rate=_fraction("MOCK_WHATSAPP_READ_RATE", 0.6),
        mock_whatsapp_webhook_delay_ms=_int_setting(
            "MOCK_WHATSAPP_WEBHOOK_DELAY_MS", 1000, minimum=0
        ),
        mock_whatsapp_url=_http_url("MOCK_WHATSAPP_URL"),
        display_timezone=_timezone("DISPLAY_TIMEZONE", "America/Sao_Paulo"),
        default_locale=_locale("DEFAULT_LOCALE", "pt_BR"),
        phone_default_region=_phone_region("PHONE_DEFAULT_REGION", phones.DEFAULT_REGION),
        max_request_bytes=max_request,
        # At least the request's limit: an upload is a request too.
        max_upload_bytes=_int_setting(
            "MAX_UPLOAD_BYTES", max(10 * MIB, max_request), minimum=max_request
        ),
        # A million rows of a phone and a few columns is 60-80 MB: room for that file.
        audience_upload_max_mb=_int_setting("AUDIENCE_UPLOAD_MAX_MB", 100, maximum=10_000),
        # Two years: who changed a role, a limit or the opt-out list is asked about long
        # after the fact (a complaint, a dispute, a security review), and the rows hold
        # no customer's data (phones masked), so keeping them costs little.
        audit_retention_days=_int_setting(
            "AUDIT_RETENTION_DAYS", 730, maximum=MAX_AUDIT_RETENTION_DAYS
        ),
        data_retention_days=data_retention_days,
        phone_hash_key=_phone_hash_key(secret_key),
        db_pool_size=db_pool_size,
        db_max_overflow=db_max_overflow,
    )


def _retention_days() -> tuple[int, int]:
    """DATA_RETENTION_DAYS (days after a campaign ends before its recipients' personal data
    is erased) and UNDELIVERABLE_DAYS (days a number WhatsApp could not deliver to is kept,
    as a keyed hash, for later campaigns to skip). The hash is personal data too, so it
    never outlives the retention: unset, UNDELIVERABLE_DAYS is 30 or the retention if
    shorter; set longer, the app refuses to start rather than keep it past the promise."""
    retention = _int_setting("DATA_RETENTION_DAYS", 180, maximum=36_500)
    undeliverable = _int_setting("UNDELIVERABLE_DAYS", min(30, retention), maximum=3650)
    if undeliverable > retention:
        raise ConfigError(
            f"UNDELIVERABLE_DAYS ({undeliverable}) must not be longer than"
            f" DATA_RETENTION_DAYS ({retention}): the undeliverable numbers' hashes are"
            " personal data and would outlive the retention period. Lower"
            " UNDELIVERABLE_DAYS or raise DATA_RETENTION_DAYS."
        )
    return retention, undeliverable


def _contact_history_days(retention: int) -> int:
    """CONTACT_HISTORY_DAYS: how long the contact history (campaigns/contact_history.py)
    keeps when a number was last messaged, as a keyed hash; a campaign's frequency cap is
    at most this many days. Personal data too: never longer than DATA_RETENTION_DAYS."""
    days = _int_setting("CONTACT_HISTORY_DAYS", min(90, retention), maximum=3650)
    if days > retention:
        raise ConfigError(
            f"CONTACT_HISTORY_DAYS ({days}) must not be longer than DATA_RETENTION_DAYS"
            f" ({retention}): the contact history's hashes are personal data and would"
            " outlive the retention period. Lower CONTACT_HISTORY_DAYS or raise"
            " DATA_RETENTION_DAYS."
        )
    return days


def _http_url(name: str) -> str | None:
    """An optional http(s) URL with a host, without its trailing slash."""
    raw = os.environ.get(name, "").strip().rstrip("/")
    if not raw:
        return None
    parts = urlsplit(raw)
    try:
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is not a number, or out of range
        valid = False
    if not valid:
        raise ConfigError(
            f"{name} must be an http(s) URL such as {MOCK_WHATSAPP_URL_EXAMPLE}, not {raw!r}"
        )
    return raw


def _timezone(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip() or default
    try:
        ZoneInfo(value)
        if value not in pytz.all_timezones_set:  # Flask-Babel's zones (campaigns/i18n.py)
            raise ValueError(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"{name} must be an IANA time zone such as America/Sao_Paulo, not {value!r}"
        ) from None
    return value


# The interface's languages, as Babel names them (the first is the source language):
# here, where DEFAULT_LOCALE is checked, and campaigns/i18n.py's for the rest.
LOCALES = ("en", "pt_BR")


def _locale(name: str, default: str) -> str:
    """The interface's fallback language: one the catalogues hold (campaigns/i18n.py)."""
    raw = os.environ.get(name, "").strip()
    value = raw.replace("-", "_") or default
    if value not in LOCALES:
        raise ConfigError(f"{name} must be one of {', '.join(LOCALES)}, not {raw!r}")
    return value


def _phone_region(name: str, default: str) -> str:
    """The region national numbers are read in; phonenumbers only knows upper case."""
    raw = os.environ.get(name, "").strip()
    value = raw.upper() or default
    if not phones.is_known_region(value):
        raise ConfigError(f"{name} must be a region code such as BR or US, not {raw!r}")
    return value


def _mock_erp_customers() -> int:
    value = _int_setting("MOCK_ERP_CUSTOMERS", 1_000_000)
    # Customer ids are "C" + 7 digits, so id order and string order agree.
    if value > MOCK_ERP_MAX_CUSTOMERS:
        raise ConfigError(
            f"MOCK_ERP_CUSTOMERS must be at most {MOCK_ERP_MAX_CUSTOMERS:_}, not {value:_}"
        )
    return value


# -- Database connections: every pool's size, the concurrency behind them, and the name
# each process gives its connections. Read by create_app, jobs/ (the queue's pool, the
# workers' SQLAlchemy pools) and gunicorn.conf.py; README, "Deploying", counts them.

MAX_POOL = 100  # per process; far above what any plan allows, it catches typos
MAX_CONCURRENCY = 100
MAX_WEB_THREADS = 64
# The queues the `ops` process works (jobs/ops.py); campaign-messages is `worker`'s.
# campaigns/queues.py names them too (tests/test_ops.py checks they agree).
OPS_QUEUES = (
    "campaign-scheduler",
    "campaign-sender",
    "campaign-notifications",
    "message-retry",
    "maintenance",
    "builtin",
)
# The source documents' concurrency per queue (notifications 3, retry 3, scheduler 2);
# campaign-sender 3 (two long fan-outs still leave a slot for the pumps), maintenance
# with Procrastinate's builtin queue 2 (short periodic jobs).
DEFAULT_OPS_WORKERS = (
    "campaign-scheduler:2; campaign-sender:3; campaign-notifications:3; "
    "message-retry:3; maintenance,builtin:2"
)
# What this process's connections are called in pg_stat_activity: disparo-<role>.
PROCESS_ROLES = ("web", "worker", "ops", "release", "cli", "mock")
_process_role: str | None = None


@dataclass(frozen=True)
class QueueGroup:
    """Queues one in-process worker of ``ops`` takes jobs from, at most ``concurrency``
    at once in all."""

    queues: tuple[str, ...]
    concurrency: int

    @property
    def name(self) -> str:
        return "ops-" + "+".join(self.queues)


def db_pool() -> tuple[int | None, int | None]:
    """``DB_POOL_SIZE`` and ``DB_MAX_OVERFLOW``: SQLAlchemy's pool in every process.

    Unset, each process keeps its own default: web and CLI 5 (+10 for a burst), a
    worker what its jobs can hold at once (+2), see :func:`sqlalchemy_pool`.
    """
    size = os.environ.get("DB_POOL_SIZE", "").strip()
    overflow = os.environ.get("DB_MAX_OVERFLOW", "").strip()
    return (
        _int_setting("DB_POOL_SIZE", 0, minimum=1, maximum=MAX_POOL) if size else None,
        _int_setting("DB_MAX_OVERFLOW", 0, minimum=0, maximum=MAX_POOL) if overflow else None,
    )


def sqlalchemy_pool(what: str, held_at_once: int) -> tuple[int, int]:
    """(pool_size, max_overflow) for a process whose threads can hold ``held_at_once``
    connections together; refuses settings that could leave them waiting on each other.

    A message job holds its session's connection while the rate limiter takes another
    (campaigns/ratelimit.py), so with fewer than that a pool can deadlock (every
    connection held by a job waiting for a second one) or starve a job past the pool's
    30 s timeout: the concurrency must come down with the pool, not the pool alone.
    """
    size, overflow = db_pool()
    size = held_at_once if size is None else size
    overflow = 2 if overflow is None else overflow
    if size + overflow < held_at_once:
        raise ConfigError(
            f"DB_POOL_SIZE + DB_MAX_OVERFLOW ({size} + {overflow}) is below the "
            f"{held_at_once} database connections {what} can hold at once; lower its "
            "concurrency or raise the pool (README, Deploying)"
        )
    return size, overflow


def queue_pool() -> tuple[int, int]:
    """``QUEUE_POOL_MIN_SIZE``, ``QUEUE_POOL_MAX_SIZE``: Procrastinate's pool per process
    (fetching, finishing, heartbeats; the web opens it only to defer the mocks' job)."""
    low = _int_setting("QUEUE_POOL_MIN_SIZE", 1, minimum=0, maximum=MAX_POOL)
    high = _int_setting("QUEUE_POOL_MAX_SIZE", 10, minimum=1, maximum=MAX_POOL)
    if low > high:
        raise ConfigError(
            f"QUEUE_POOL_MIN_SIZE ({low}) must be at most QUEUE_POOL_MAX_SIZE ({high})"
        )
    return low, high


def worker_concurrency() -> int:
    """``WORKER_CONCURRENCY``: message jobs the ``worker`` process runs at once."""
    return _int_setting("WORKER_CONCURRENCY", 5, maximum=MAX_CONCURRENCY)


def web_threads() -> int:
    """``WEB_THREADS``: gunicorn's threads per web process (gunicorn.conf.py)."""
    return _int_setting("WEB_THREADS", 8, maximum=MAX_WEB_THREADS)


def ops_workers() -> tuple[QueueGroup, ...]:
    """``OPS_WORKERS``: the ``ops`` process's queue groups, each with its concurrency.

    ``queue[,queue…]:n`` separated by ``;``. Each group is one Procrastinate worker
    in the process (jobs/ops.py), so a queue alone in its group runs at most n jobs
    at once; every ops queue must be in exactly one group, or its jobs would never run.
    """
    raw = os.environ.get("OPS_WORKERS", "").strip() or DEFAULT_OPS_WORKERS
    example = "campaign-sender:3; maintenance,builtin:2"
    groups: list[QueueGroup] = []
    seen: set[str] = set()
    for part in filter(None, (p.strip() for p in raw.split(";"))):
        names, colon, number = part.rpartition(":")
        queues = tuple(q.strip() for q in names.split(",") if q.strip())
        if not colon or not queues or not number.strip().isdigit():
            raise ConfigError(
                f"OPS_WORKERS must be groups of queues and their concurrency such as "
                f"{example!r}, not {part!r}"
            )
        concurrency = int(number)
        if not 1 <= concurrency <= MAX_CONCURRENCY:
            raise ConfigError(
                f"OPS_WORKERS: {names}'s concurrency must be 1 to {MAX_CONCURRENCY}, not {number}"
            )
        for queue in queues:
            if queue not in OPS_QUEUES:
                raise ConfigError(
                    f"OPS_WORKERS: {queue!r} is not an ops queue ({', '.join(OPS_QUEUES)})"
                )
            if queue in seen:
                raise ConfigError(f"OPS_WORKERS names {queue} twice")
            seen.add(queue)
        groups.append(QueueGroup(queues, concurrency))
    missing = [queue for queue in OPS_QUEUES if queue not in seen]
    if missing:
        raise ConfigError(
            f"OPS_WORKERS leaves out {', '.join(missing)}, whose jobs would never run"
        )
    return tuple(groups)


def set_process_role(role: str) -> None:
    """Name this process's connections (an entry point that knows what it is)."""
    global _process_role
    if role not in PROCESS_ROLES:
        raise ValueError(f"unknown process role {role!r}")
    _process_role = role


def process_role() -> str:
    """What this process is: set by its entry point, else read from its command line
    (gunicorn: web; ``procrastinate … worker``: worker; ``flask db upgrade``: release)."""
    if _process_role is not None:
        return _process_role
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    # `python -m x` runs x/__main__.py: the package's name is the program's.
    name = program.parent.name if program.name == "__main__.py" else program.name
    args = sys.argv[1:]
    if name == "gunicorn":
        return "web"
    if name == "procrastinate":
        return "worker" if "worker" in args else "cli"
    if name == "flask" and "db" in args and "upgrade" in args[args.index("db") :]:
        return "release"
    return "cli"


def application_name() -> str:
    """The ``application_name`` of this process's connections: ``disparo-<role>``."""
    return f"disparo-{process_role()}"
