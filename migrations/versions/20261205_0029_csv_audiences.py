"""CSV audiences: an uploaded spreadsheet as a campaign's audience

``audience_files`` holds an upload's facts (its name, header, row count, size,
delimiter and encoding); ``audience_rows`` its rows, one text[] of cells each, keyed
by (file, row number): the fan-out pages through a file by that key, and the row
number is the message's customer ref (unique per file). ``phone_tails``: the last eight
digits of each cell with at least eight, GIN-indexed, so a person's erasure finds their
rows without reading every file's. The rows are personal data:
a file no campaign uses is deleted a day after its upload, one whose campaigns'
data the retention erased goes with them, and a person's erasure deletes their rows
(services/personal_data.py).

``campaigns.audience_file_id`` (NULL: the ERP segment, as before) and
``audience_phone_column`` (the column holding the phone). An upgrade changes nothing
for existing campaigns.

Revision ID: 0029
Revises: 0028
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0029"
down_revision = "0028"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.create_table(
        "audience_files",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("columns", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("row_count", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("delimiter", sa.String(1), nullable=False),
        sa.Column("encoding", sa.String(16), nullable=False),
        sa.Column("uploaded_by_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    )
    op.create_table(
        "audience_rows",
        sa.Column(
            "file_id",
            sa.BigInteger(),
            sa.ForeignKey("audience_files.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("row_number", sa.Integer(), primary_key=True),
        sa.Column("cells", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("phone_tails", postgresql.ARRAY(sa.Integer()), nullable=False),
    )
    op.create_index(
        "audience_rows_phone_tails_idx",
        "audience_rows",
        ["phone_tails"],
        postgresql_using="gin",
    )
    # Nullable columns without a default: no table rewrite, a brief lock.
    op.add_column(
        "campaigns",
        sa.Column(
            "audience_file_id",
            sa.BigInteger(),
            sa.ForeignKey("audience_files.id"),
            nullable=True,
        ),
    )
    op.add_column("campaigns", sa.Column("audience_phone_column", sa.String(200), nullable=True))
    op.create_index("campaigns_audience_file_idx", "campaigns", ["audience_file_id"])


def downgrade() -> None:
    op.drop_index("campaigns_audience_file_idx", table_name="campaigns")
    op.drop_column("campaigns", "audience_phone_column")
    op.drop_column("campaigns", "audience_file_id")
    op.drop_table("audience_rows")
    op.drop_table("audience_files")
