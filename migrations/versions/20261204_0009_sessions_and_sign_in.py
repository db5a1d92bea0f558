"""Sign-in attempts that can be pruned

``login_attempts_attempted_at_idx`` lets maintenance delete the attempts older
than 30 days without reading the whole table.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 14:00:00

"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade():
    op.create_index("login_attempts_attempted_at_idx", "login_attempts", ["attempted_at"])


def downgrade():
    op.drop_index("login_attempts_attempted_at_idx", table_name="login_attempts")
