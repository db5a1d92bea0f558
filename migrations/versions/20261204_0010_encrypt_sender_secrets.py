"""Encrypt senders' access tokens and app secrets at rest

The columns stay TEXT; their values become Fernet tokens under the first key of
DISPARO_ENCRYPTION_KEY, through the same key loading the app uses
(campaigns.encryption, from campaigns.config.encryption_keys), so what this
writes the app reads. A value some configured key already opens is left alone:
the release phase may run after code that writes encrypted values, and running
the upgrade twice changes nothing.

Downgrade decrypts every value back to plaintext; one that no configured key
opens stops it (the old code would send a token as a password).

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

from campaigns import encryption

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# Frozen here, as this revision found the schema.
SENDERS = sa.table(
    "senders",
    sa.column("id"),
    sa.column("access_token", sa.Text),
    sa.column("app_secret", sa.Text),
)
COLUMNS = ("access_token", "app_secret")


def _rewrite(change):
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(SENDERS.c.id, *(SENDERS.c[c] for c in COLUMNS)).with_for_update()
    ).all()
    for row in rows:
        values = {}
        for column in COLUMNS:
            value = getattr(row, column)
            if value is not None and (new := change(value)) != value:
                values[column] = new
        if values:
            connection.execute(sa.update(SENDERS).where(SENDERS.c.id == row.id).values(values))


def upgrade():
    _rewrite(lambda value: value if encryption.is_encrypted(value) else encryption.encrypt(value))


def downgrade():
    _rewrite(encryption.decrypt)
