"""Templates keep the quality WhatsApp reports for them

``message_templates.quality_rating``: GREEN, YELLOW, RED or UNKNOWN as the last
``message_template_quality_update`` webhook said, NULL until one arrives (Meta does
not rate a template before it has been sent enough).

Revision ID: 0017
Revises: 0016
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("message_templates", sa.Column("quality_rating", sa.String(16), nullable=True))
    op.create_check_constraint(
        op.f("message_templates_quality_rating_check"),
        "message_templates",
        "quality_rating IN ('GREEN', 'YELLOW', 'RED', 'UNKNOWN')",
    )


def downgrade():
    op.drop_constraint(
        op.f("message_templates_quality_rating_check"), "message_templates", type_="check"
    )
    op.drop_column("message_templates", "quality_rating")
