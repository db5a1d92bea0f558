"""One template name in several languages: each recipient's from a customer field

``campaigns.language_field``: the customer field that holds the recipient's language
(NULL: everyone gets the campaign's template). ``messages.template_id``: the language
version the fan-out chose for that recipient (NULL: the campaign's own template), so a
batch sends each message in its own language (``campaigns/languages.py``).

Revision ID: 0027
Revises: 0026
"""

import sqlalchemy as sa
from alembic import op

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("campaigns", sa.Column("language_field", sa.String(64), nullable=True))
    # No index: the column is read through its message, never searched by.
    op.add_column(
        "messages",
        sa.Column(
            "template_id",
            sa.Integer(),
            sa.ForeignKey("message_templates.id", name="messages_template_id_fkey"),
            nullable=True,
        ),
    )


def downgrade() -> None:
    op.drop_column("messages", "template_id")
    op.drop_column("campaigns", "language_field")
