"""Senders' secrets at rest: encrypted in the table, plaintext in Python, rotated by the CLI."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet

from app import db
from campaigns import config, encryption
from campaigns.models import Provider, Sender

NEW_KEY = Fernet.generate_key().decode()
OLD_KEY = Fernet.generate_key().decode()


@pytest.fixture
def use_keys(monkeypatch) -> Iterator[Callable[..., None]]:
    """Set DISPARO_ENCRYPTION_KEY for this process, as a restart with new settings would."""

    def use(*keys: str) -> None:
        monkeypatch.setenv("DISPARO_ENCRYPTION_KEY", ",".join(keys))
        encryption.keyring.cache_clear()

    yield use
    monkeypatch.delenv("DISPARO_ENCRYPTION_KEY", raising=False)
    encryption.keyring.cache_clear()


def stored(sender_id: int) -> tuple[str | None, str | None]:
    """The raw column values, as the database holds them."""
    row = db.session.execute(
        sa.text("SELECT access_token, app_secret FROM senders WHERE id = :id"), {"id": sender_id}
    ).one()
    return row.access_token, row.app_secret


def make_sender(name: str = "Loja", **secrets: str | None) -> Sender:
    sender = Sender(name=name, provider=Provider.CLOUD_API, **secrets)
    db.session.add(sender)
    db.session.commit()
    return sender


def test_secrets_are_stored_encrypted_and_read_back_as_plaintext(app):
    sender = make_sender(access_token="EAAG-token", app_secret="app-secret")
    token, secret = stored(sender.id)
    assert token is not None and secret is not None
    assert "EAAG-token" not in token and "app-secret" not in secret
    assert encryption.keyring().decrypt(token.encode()) == b"EAAG-token"

    db.session.expire_all()
    again = db.session.get(Sender, sender.id)
    assert (again.access_token, again.app_secret) == ("EAAG-token", "app-secret")
    # A column select decrypts too (the webhooks read app secrets this way).
    assert db.session.scalars(sa.select(Sender.app_secret)).all() == ["app-secret"]
    assert (
        db.session.scalar(sa.select(Sender.id).where(Sender.access_token.is_not(None))) == sender.id
    )


def test_no_secret_stays_null(app):
    sender = make_sender(access_token=None, app_secret=None)
    assert stored(sender.id) == (None, None)
    db.session.expire_all()
    assert db.session.get(Sender, sender.id).access_token is None


def test_the_same_secret_encrypts_differently_each_time(app):
    first = make_sender(access_token="same")
    second = Sender(name="Other", provider=Provider.CLOUD_API, access_token="same")
    db.session.add(second)
    db.session.commit()
    assert stored(first.id)[0] != stored(second.id)[0]


def test_rotation_re_encrypts_with_the_first_key_so_the_old_one_can_go(app, runner, use_keys):
    use_keys(OLD_KEY)
    sender = make_sender(access_token="EAAG-token", app_secret="app-secret")
    before = stored(sender.id)

    use_keys(NEW_KEY, OLD_KEY)  # the new key prepended: both still read
    db.session.expire_all()
    assert db.session.get(Sender, sender.id).access_token == "EAAG-token"
    result = runner.invoke(args=["secrets", "rotate"])
    assert result.exit_code == 0, result.output
    assert "Re-encrypted 2 stored secrets" in result.output
    after = stored(sender.id)
    assert after != before
    assert all(Fernet(NEW_KEY).decrypt(value.encode()) for value in after if value)

    use_keys(NEW_KEY)  # the old key dropped
    db.session.expire_all()
    again = db.session.get(Sender, sender.id)
    assert (again.access_token, again.app_secret) == ("EAAG-token", "app-secret")


def test_a_generated_secret_replaces_a_fernet_key_by_rotation(app, runner, use_keys):
    """app.json's generated secret (64 hex digits) as the new first key: existing secrets
    under the old Fernet key are read, re-encrypted under the secret's key, and the old
    key can go."""
    secret = "a1" * 32
    use_keys(OLD_KEY)
    sender = make_sender(access_token="EAAG-token", app_secret="app-secret")
    use_keys(secret, OLD_KEY)
    result = runner.invoke(args=["secrets", "rotate"])
    assert result.exit_code == 0, result.output
    derived = Fernet(config.fernet_key_from_secret(secret))
    assert all(derived.decrypt(value.encode()) for value in stored(sender.id) if value)
    use_keys(secret)
    db.session.expire_all()
    again = db.session.get(Sender, sender.id)
    assert (again.access_token, again.app_secret) == ("EAAG-token", "app-secret")


def test_a_secret_no_configured_key_opens_is_a_clear_error(app, use_keys):
    use_keys(OLD_KEY)
    sender = make_sender(access_token="EAAG-token")
    use_keys(NEW_KEY)  # replaced, not rotated
    db.session.expire_all()
    with pytest.raises(encryption.UndecryptableSecret, match="DISPARO_ENCRYPTION_KEY"):
        db.session.get(Sender, sender.id)
    db.session.rollback()
    with pytest.raises(encryption.UndecryptableSecret, match="Put the old key back"):
        encryption.rotate_stored_secrets(db.session.connection())


def test_a_secret_no_key_opens_costs_only_its_sender_and_turns_the_health_check_red(
    app, client, use_keys
):
    from campaigns import webhooks
    from tests.helpers import webhook_signature

    use_keys(OLD_KEY)
    make_sender(app_secret="lost-secret")
    use_keys(NEW_KEY)  # replaced, not rotated
    kept = make_sender("Loja 2", app_secret="kept-secret")
    raw = b'{"object": "whatsapp_business_account", "entry": []}'
    header = webhook_signature(raw, "kept-secret")
    assert webhooks.signers(raw, header, None).sender_ids == {kept.id}
    assert not webhooks.signers(raw, webhook_signature(raw, "lost-secret"), None)
    health = client.get("/healthz")
    assert health.status_code == 503
    assert health.json["undecryptable_secrets"] == 1
