"""Each user's language and time zone

``users.locale`` (``en`` or ``pt_BR``) and ``users.timezone`` (an IANA zone) stay
NULL until the user chooses in their preferences: NULL means "the browser's
Accept-Language decides" and "DISPLAY_TIMEZONE" respectively (campaigns/i18n.py).
Catalogue-only change: no table is rewritten.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04 18:30:00

"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("locale", sa.String(10), nullable=True))
    op.add_column("users", sa.Column("timezone", sa.String(64), nullable=True))


def downgrade() -> None:
    op.drop_column("users", "timezone")
    op.drop_column("users", "locale")
