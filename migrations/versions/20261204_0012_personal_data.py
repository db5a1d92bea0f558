"""Personal data (LGPD): what retention and erasure leave behind

A message whose recipient's data was erased keeps its status, codes, times and
counts, and loses its phone, customer ref, customer data, variables and error
text: ``phone`` and ``customer_ref`` become nullable (NULL is "erased"; NULLs
never collide in the unique indexes that de-duplicate a campaign's rows).
``campaigns.data_erased_at`` says when the retention task finished a campaign.

An opt-out whose number was erased stays on the list as a one-way hash
(``suppressions.phone_hash``, HMAC-SHA256 of the E.164 number): ``phone`` becomes
nullable, and every row keeps one or the other.

Every change is to the catalogue only (no table is rewritten). The downgrade
cannot bring an erased number back: it gives erased message rows a placeholder
(``erased-<id>``) and deletes the opt-outs kept only as a hash, since the older
schema cannot hold them.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04 16:00:00

"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("campaigns", sa.Column("data_erased_at", sa.DateTime(timezone=True)))
    op.alter_column("messages", "phone", existing_type=sa.String(32), nullable=True)
    op.alter_column("messages", "customer_ref", existing_type=sa.String(64), nullable=True)
    op.alter_column("suppressions", "phone", existing_type=sa.String(20), nullable=True)
    op.add_column("suppressions", sa.Column("phone_hash", sa.String(64)))
    op.create_unique_constraint(op.f("suppressions_phone_hash_key"), "suppressions", ["phone_hash"])
    op.create_check_constraint(
        op.f("suppressions_phone_or_hash_check"),
        "suppressions", "phone IS NOT NULL OR phone_hash IS NOT NULL"
    )


def downgrade():
    op.execute("DELETE FROM suppressions WHERE phone IS NULL")
    op.drop_constraint(op.f("suppressions_phone_or_hash_check"), "suppressions", type_="check")
    op.drop_constraint(op.f("suppressions_phone_hash_key"), "suppressions", type_="unique")
    op.drop_column("suppressions", "phone_hash")
    op.alter_column("suppressions", "phone", existing_type=sa.String(20), nullable=False)
    op.execute(
        "UPDATE messages SET phone = coalesce(phone, 'erased-' || id),"
        " customer_ref = coalesce(customer_ref, 'erased-' || id)"
        " WHERE phone IS NULL OR customer_ref IS NULL"
    )
    op.alter_column("messages", "customer_ref", existing_type=sa.String(64), nullable=False)
    op.alter_column("messages", "phone", existing_type=sa.String(32), nullable=False)
    op.drop_column("campaigns", "data_erased_at")
