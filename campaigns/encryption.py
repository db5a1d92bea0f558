"""Secrets at rest: Fernet under ``DISPARO_ENCRYPTION_KEY``, and the column type that uses it.

Senders' access tokens and app secrets are stored encrypted (:class:`EncryptedText`)
and read back as plaintext wherever they are read — an attribute, ``select(Sender.
app_secret)``, the mock WhatsApp's own engine — since the type decrypts results
itself. The keys come from :func:`campaigns.config.encryption_keys`, the one
resolver the app, the workers and the migrations share; the first key encrypts,
every key decrypts, and :func:`rotate_stored_secrets` moves every value onto the
first.
"""

from __future__ import annotations

import functools
from typing import Any

import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from campaigns import config

# The encrypted columns, by table: what rotation (and migration 0010) rewrites.
ENCRYPTED_COLUMNS = {"senders": ("access_token", "app_secret")}


class UndecryptableSecret(config.ConfigError):
    """A stored secret no configured key opens: the key was changed without keeping the old one."""


@functools.cache
def keyring() -> MultiFernet:
    """This process's keys, read from the environment once."""
    return MultiFernet([Fernet(key) for key in config.encryption_keys()])


def encrypt(plaintext: str) -> str:
    return keyring().encrypt(plaintext.encode()).decode()


def _undecryptable() -> UndecryptableSecret:
    return UndecryptableSecret(
        f"A stored secret cannot be decrypted with any key in {config.ENCRYPTION_KEY}. "
        "Was the key replaced instead of rotated? Put the old key back after the new one."
    )


def decrypt(token: str) -> str:
    try:
        return keyring().decrypt(token.encode()).decode()
    except InvalidToken:
        raise _undecryptable() from None


def readable(token: str) -> str | None:
    """The plaintext of a stored token, or None when no configured key opens it."""
    try:
        return decrypt(token)
    except UndecryptableSecret:
        return None


def undecryptable_count(connection: sa.Connection) -> int:
    """How many stored secrets no configured key opens (the health check reports them)."""
    count = 0
    for table_name, columns in ENCRYPTED_COLUMNS.items():
        table = sa.table(table_name, *(sa.column(c, sa.Text) for c in columns))
        for row in connection.execute(sa.select(*table.c)):
            count += sum(1 for value in row if value is not None and readable(value) is None)
    return count


def is_encrypted(value: str) -> bool:
    """Whether a stored value is a token one of the configured keys opens."""
    return readable(value) is not None


class EncryptedText(sa.TypeDecorator[str]):
    """TEXT holding a Fernet token; Python sees the plaintext (None stays NULL)."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        return None if value is None else encrypt(value)

    def process_result_value(self, value: str | None, dialect: Any) -> str | None:
        return None if value is None else decrypt(value)


def rotate_stored_secrets(connection: sa.Connection) -> int:
    """Re-encrypt every stored secret with the first key; how many values were rewritten.

    Reads and writes the raw tokens (``MultiFernet.rotate`` decrypts with any key),
    row by row under ``FOR UPDATE``, in the caller's transaction.
    """
    rewritten = 0
    ring = keyring()
    for table_name, columns in ENCRYPTED_COLUMNS.items():
        table = sa.table(table_name, sa.column("id"), *(sa.column(c, sa.Text) for c in columns))
        rows = connection.execute(
            sa.select(table.c.id, *(table.c[c] for c in columns)).with_for_update()
        ).all()
        for row in rows:
            values = {c: getattr(row, c) for c in columns if getattr(row, c) is not None}
            if not values:
                continue
            try:
                rotated = {c: ring.rotate(v.encode()).decode() for c, v in values.items()}
            except InvalidToken:
                raise _undecryptable() from None
            connection.execute(sa.update(table).where(table.c.id == row.id).values(rotated))
            rewritten += len(rotated)
    return rewritten
