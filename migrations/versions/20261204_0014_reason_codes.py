"""Reasons, activity details and notifications as codes with parameters, not sentences

Until now these were English sentences written by jobs (whose locale is only the
default), so a reader in another language read English. Each becomes a stable
code of ``campaigns/reasons.py`` plus its parameters (JSONB), worded when shown:

- ``campaigns.status_reason`` → ``status_reason_code`` + ``status_reason_params``
- ``campaign_activity.detail`` → ``detail_code`` + ``detail_params``
- ``notifications.text`` → ``code`` + ``params`` (``kind`` stays)

Existing rows are read back into codes with the exact English formats the code
wrote (they never changed, and no translation existed yet): a text is converted
only if the code's English rebuilt from what was read is the very same text;
anything else becomes code ``text`` with ``{"text": <old>}``, shown verbatim.

Opt-outs keep a ``reason`` column, but only people's words: a reply's opt-out
("Replied “PARE”") keeps the customer's words (``PARE``, source ``opt_out_reply``
says the rest), and WhatsApp's opt-outs that came without words ("Stopped
marketing messages", "131050") keep none (source ``provider`` says it).

Downgrade words every code back into the English the older code wrote.

Revision ID: 0014
Revises: 0012
"""

import re
from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0014"
down_revision = "0012"
branch_labels = None
depends_on = None

BATCH = 1000
TEXT = "text"

# The English each code stood for before this revision, frozen here (the catalogue
# in campaigns/reasons.py may change; this must not).
ENGLISH = {
    "failure_rate": (
        "Paused: %(failed)d of the last %(n)d messages failed, more than %(pct)d %% allowed."
    ),
    "whatsapp_stop": "Paused by WhatsApp's answer %(code)s: %(message)s",
    "template_disabled": "WhatsApp disabled the template (132016).",
    "erp_failed": "The ERP could not give the audience: %(message)s",
    "scheduled_time_reached": "scheduled time reached",
    "sent_now": "sent now",
    "scheduled_for": "%(at)s",
    "duplicated_from": "duplicated from #%(id)d",
    "duplicated_as": "as #%(id)d",
    "test_phone": "%(phone)s",
    "retried_messages": "%(n)d messages (%(codes)s)",
    "retention_reached": "retention period reached",
    "campaign_started": "Campaign “%(name)s” started sending.",
    "campaign_completed": "Campaign “%(name)s” completed: %(sent)d sent, %(failed)d failed.",
    "campaign_paused": "Campaign “%(name)s” was paused: %(reason)s",
    "campaign_failed": "Campaign “%(name)s” failed: %(reason)s",
}


def _int(text):
    return int(text)


def _whatsapp_code(text):
    return None if text == "None" else int(text)


# (pattern, code, parameter names and how each is read), tried in order with fullmatch.
REASONS = [
    (
        r"Paused: (\d+) of the last (\d+) messages failed, more than (\d+) % allowed\.",
        "failure_rate",
        (("failed", _int), ("n", _int), ("pct", _int)),
    ),
    (
        r"Paused by WhatsApp's answer (None|-?\d+): (.*)",
        "whatsapp_stop",
        (("code", _whatsapp_code), ("message", str)),
    ),
    (r"WhatsApp disabled the template \(132016\)\.", "template_disabled", ()),
    (r"The ERP could not give the audience: (.*)", "erp_failed", (("message", str),)),
]
DETAILS = [
    (r"scheduled time reached", "scheduled_time_reached", ()),
    (r"sent now", "sent_now", ()),
    (r"duplicated from #(\d+)", "duplicated_from", (("id", _int),)),
    (r"as #(\d+)", "duplicated_as", (("id", _int),)),
    (r"(\d+) messages \((.*)\)", "retried_messages", (("n", _int), ("codes", str))),
    (r"retention period reached", "retention_reached", ()),
    *REASONS,
]
NOTIFICATIONS = [
    (r"Campaign “(.*)” started sending\.", "campaign_started", (("name", str),)),
    (
        r"Campaign “(.*)” completed: (\d+) sent, (\d+) failed\.",
        "campaign_completed",
        (("name", str), ("sent", _int), ("failed", _int)),
    ),
    # The name is read up to the first closing quote that the sentence's own words
    # follow; the reason (WhatsApp's words) may hold anything.
    (r"Campaign “(.*?)” was paused: (.*)", "campaign_paused", (("name", str), ("reason", None))),
    (r"Campaign “(.*?)” failed: (.*)", "campaign_failed", (("name", str), ("reason", None))),
]


def english(code, params, depth=0):
    """The English the older code wrote for this code and parameters."""
    params = params if isinstance(params, dict) else {}
    if code == TEXT:
        return str(params.get("text", ""))
    values = dict(params)
    reason = values.get("reason")
    if isinstance(reason, dict) and depth < 3:
        values["reason"] = english(reason.get("code"), reason.get("params"), depth + 1)
    try:
        return ENGLISH[code] % values
    except (KeyError, TypeError, ValueError):  # a code this revision does not know
        return params.get("text") or str(code)


def _verbatim(text):
    return TEXT, {"text": text}


def _parse(text, patterns):
    for pattern, code, fields in patterns:
        match = re.fullmatch(pattern, text, re.DOTALL)
        if match is None:
            continue
        try:
            params = {}
            for (name, read), value in zip(fields, match.groups(), strict=True):
                if read is None:  # a reason inside the sentence
                    inner = parse_reason(value)
                    params[name] = {"code": inner[0], "params": inner[1]}
                else:
                    params[name] = read(value)
        except ValueError:
            continue
        if english(code, params) == text:  # read back exactly, or not at all
            return code, params
    return _verbatim(text)


def parse_reason(text):
    """A campaign's status reason as the older code wrote it → (code, params)."""
    return _parse(text, REASONS)


def parse_detail(action, detail):
    """An activity entry's detail → (code, params)."""
    if action == "test_sent":
        return "test_phone", {"phone": detail}
    if action == "scheduled":
        try:
            at = datetime.fromisoformat(detail)
        except ValueError:
            at = None
        if at is not None and at.tzinfo is not None:
            return "scheduled_for", {"at": detail}
    return _parse(detail, DETAILS)


def parse_notification(text):
    """A notification's text → (code, params)."""
    return _parse(text, NOTIFICATIONS)


def _table(name, *columns):
    return sa.table(name, sa.column("id"), *columns)


def _rewrite(table, present, read, write, convert):
    """Every row of ``table`` whose ``present`` column is not NULL, in batches of ids:
    its ``write`` columns ← convert(its ``read`` columns)."""
    connection = op.get_bind()
    after = 0
    while True:
        rows = connection.execute(
            sa.select(table.c.id, *(table.c[name] for name in read))
            .where(table.c.id > after, table.c[present].isnot(None))
            .order_by(table.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        changes = []
        for row in rows:
            values = convert(*row[1:])
            changes.append({"row_id": row.id, **dict(zip(write, values, strict=True))})
        connection.execute(
            sa.update(table)
            .where(table.c.id == sa.bindparam("row_id"))
            .values({name: sa.bindparam(name) for name in write}),
            changes,
        )
        after = rows[-1].id


JSONB = postgresql.JSONB(astext_type=sa.Text())


def upgrade():
    op.add_column("campaigns", sa.Column("status_reason_code", sa.String(40)))
    op.add_column("campaigns", sa.Column("status_reason_params", JSONB))
    op.add_column("campaign_activity", sa.Column("detail_code", sa.String(40)))
    op.add_column("campaign_activity", sa.Column("detail_params", JSONB))
    op.add_column("notifications", sa.Column("code", sa.String(40)))
    op.add_column(
        "notifications",
        sa.Column("params", JSONB, server_default=sa.text("'{}'::jsonb"), nullable=False),
    )

    _rewrite(
        _table(
            "campaigns",
            sa.column("status_reason", sa.Text),
            sa.column("status_reason_code", sa.String),
            sa.column("status_reason_params", JSONB),
        ),
        "status_reason",
        ("status_reason",),
        ("status_reason_code", "status_reason_params"),
        parse_reason,
    )
    _rewrite(
        _table(
            "campaign_activity",
            sa.column("action", sa.String),
            sa.column("detail", sa.Text),
            sa.column("detail_code", sa.String),
            sa.column("detail_params", JSONB),
        ),
        "detail",
        ("action", "detail"),
        ("detail_code", "detail_params"),
        parse_detail,
    )
    _rewrite(
        _table(
            "notifications",
            sa.column("text", sa.Text),
            sa.column("code", sa.String),
            sa.column("params", JSONB),
        ),
        "text",
        ("text",),
        ("code", "params"),
        parse_notification,
    )
    op.alter_column("notifications", "code", existing_type=sa.String(40), nullable=False)
    op.drop_column("notifications", "text")
    op.drop_column("campaign_activity", "detail")
    op.drop_column("campaigns", "status_reason")

    op.execute(
        sa.text(
            "UPDATE suppressions SET reason = substring(reason FROM :words)"
            " WHERE source = 'opt_out_reply' AND reason ~ :words"
        ).bindparams(words="^Replied “(.*)”$")
    )
    op.execute(
        "UPDATE suppressions SET reason = ''"
        " WHERE source = 'provider' AND reason IN ('Stopped marketing messages', '131050')"
    )


def downgrade():
    op.add_column("campaigns", sa.Column("status_reason", sa.Text()))
    op.add_column("campaign_activity", sa.Column("detail", sa.Text()))
    op.add_column("notifications", sa.Column("text", sa.Text()))

    def back(code, params):
        return (english(code, params),)

    _rewrite(
        _table(
            "campaigns",
            sa.column("status_reason", sa.Text),
            sa.column("status_reason_code", sa.String),
            sa.column("status_reason_params", JSONB),
        ),
        "status_reason_code",
        ("status_reason_code", "status_reason_params"),
        ("status_reason",),
        back,
    )
    _rewrite(
        _table(
            "campaign_activity",
            sa.column("detail", sa.Text),
            sa.column("detail_code", sa.String),
            sa.column("detail_params", JSONB),
        ),
        "detail_code",
        ("detail_code", "detail_params"),
        ("detail",),
        back,
    )
    _rewrite(
        _table(
            "notifications",
            sa.column("text", sa.Text),
            sa.column("code", sa.String),
            sa.column("params", JSONB),
        ),
        "code",
        ("code", "params"),
        ("text",),
        back,
    )
    op.alter_column("notifications", "text", existing_type=sa.Text(), nullable=False)
    op.drop_column("notifications", "params")
    op.drop_column("notifications", "code")
    op.drop_column("campaign_activity", "detail_params")
    op.drop_column("campaign_activity", "detail_code")
    op.drop_column("campaigns", "status_reason_params")
    op.drop_column("campaigns", "status_reason_code")

    op.execute(
        "UPDATE suppressions SET reason = left('Replied “' || reason || '”', 200)"
        " WHERE source = 'opt_out_reply' AND reason <> '' AND phone IS NOT NULL"
    )
    op.execute(
        "UPDATE suppressions SET reason = 'Stopped marketing messages'"
        " WHERE source = 'provider' AND reason = '' AND phone IS NOT NULL"
    )

