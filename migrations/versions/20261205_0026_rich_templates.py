"""Rich templates: a header of any kind Meta allows, and the media files headers show

``message_templates`` gains ``header_format`` (TEXT, IMAGE, VIDEO, DOCUMENT, LOCATION;
NULL: no header; existing text headers become TEXT), a media header's
``header_media_link`` (a public https address Meta fetches) or ``header_media_file_id``
(a file uploaded to Disparo), and a location header's ``header_location``.

``media_files`` keeps an uploaded file in Postgres, in ``media_file_chunks`` of at most
1 MiB: the one store a web process and a worker on other machines share (a
Heroku-style deploy has no shared disk), written and read a chunk at a time.
``media_uploads`` remembers the media id WhatsApp's Media API gave a file for a
sender, so a campaign uploads it once and reuses the id (``campaigns/media.py``).

``mock_whatsapp_media``: what the mock WhatsApp's Media API accepted (empty unless the
mocks run), so a send naming a media id the mock never gave is refused as Meta would.

Revision ID: 0026
Revises: 0025
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "media_files",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("content_type", sa.String(127), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("created_by_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint(
            "kind IN ('IMAGE', 'VIDEO', 'DOCUMENT')", name=op.f("media_files_kind_check")
        ),
        sa.CheckConstraint("size >= 0", name=op.f("media_files_size_check")),
    )
    op.create_table(
        "media_file_chunks",
        sa.Column(
            "media_file_id",
            sa.BigInteger(),
            sa.ForeignKey("media_files.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("seq", sa.Integer(), primary_key=True),
        sa.Column("data", sa.LargeBinary(), nullable=False),
    )
    op.create_table(
        "media_uploads",
        sa.Column(
            "media_file_id",
            sa.BigInteger(),
            sa.ForeignKey("media_files.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "sender_id",
            sa.Integer(),
            sa.ForeignKey("senders.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("provider_media_id", sa.String(128), nullable=False),
        sa.Column(
            "uploaded_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    )
    op.add_column("message_templates", sa.Column("header_format", sa.String(16)))
    op.add_column("message_templates", sa.Column("header_media_link", sa.Text()))
    op.add_column(
        "message_templates",
        sa.Column(
            "header_media_file_id",
            sa.BigInteger(),
            sa.ForeignKey("media_files.id", ondelete="RESTRICT"),
        ),
    )
    op.add_column("message_templates", sa.Column("header_location", postgresql.JSONB()))
    op.create_check_constraint(
        op.f("message_templates_header_format_check"),
        "message_templates",
        "header_format IN ('TEXT', 'IMAGE', 'VIDEO', 'DOCUMENT', 'LOCATION')",
    )
    op.create_index(
        "message_templates_header_media_file_idx",
        "message_templates",
        ["header_media_file_id"],
        postgresql_where=sa.text("header_media_file_id IS NOT NULL"),
    )
    op.execute("UPDATE message_templates SET header_format = 'TEXT' WHERE header_text IS NOT NULL")
    op.create_table(
        "mock_whatsapp_media",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("phone_number_id", sa.String(64), nullable=False),
        sa.Column("mime_type", sa.String(127), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    )


def downgrade() -> None:
    op.drop_table("mock_whatsapp_media")
    op.drop_index("message_templates_header_media_file_idx", table_name="message_templates")
    op.drop_constraint(
        op.f("message_templates_header_format_check"), "message_templates", type_="check"
    )
    for column in ("header_location", "header_media_file_id", "header_media_link", "header_format"):
        op.drop_column("message_templates", column)
    op.drop_table("media_uploads")
    op.drop_table("media_file_chunks")
    op.drop_table("media_files")
