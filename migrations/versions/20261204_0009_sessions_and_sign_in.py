"""Sessions that end when they should, and sign-in attempts that can be pruned

``users.session_version`` is part of every session's user id (and so of every
remember-me cookie): signing out, a password reset, a role change or disabling
the user bumps it, and every session carrying the old number stops loading its
user. It has a constant default, so adding it rewrites nothing.

``login_attempts_attempted_at_idx`` lets maintenance delete the attempts older
than 30 days without reading the whole table.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 14:00:00

"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column(
        "users", sa.Column("session_version", sa.Integer(), server_default="0", nullable=False)
    )
    op.create_index("login_attempts_attempted_at_idx", "login_attempts", ["attempted_at"])


def downgrade():
    op.drop_index("login_attempts_attempted_at_idx", table_name="login_attempts")
    op.drop_column("users", "session_version")
