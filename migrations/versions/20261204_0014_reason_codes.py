"""Reasons, activity details and notifications as codes with parameters, not sentences

Until now these were English sentences written by jobs (whose locale is only the
default), so a reader in another language read English. Each becomes a stable
code of ``campaigns/reasons.py`` plus its parameters (JSONB), worded when shown:

- ``campaigns.status_reason`` → ``status_reason_code`` + ``status_reason_params``
- ``campaign_activity.detail`` → ``detail_code`` + ``detail_params``
- ``notifications.text`` → ``code`` + ``params`` (``kind`` stays)

Existing rows are read back into codes with the exact formats the older code
wrote: its English (unchanged since the first release) and the pt_BR catalogue's
words for it (a job whose locale was Portuguese wrote those). A text is converted
only if the code's words rebuilt from what was read are the very same text;
anything else becomes code ``text`` with ``{"text": <old>}``, shown verbatim.

Opt-outs keep a ``reason`` column, but only people's words: a reply's opt-out
("Replied “PARE”") keeps the customer's words (``PARE``, source ``opt_out_reply``
says the rest), and WhatsApp's opt-outs that came without words ("Stopped
marketing messages", "131050") keep none (source ``provider`` says it).

Downgrade words every code back into the English the older code wrote (a row read
from Portuguese comes back in English).

Revision ID: 0014
Revises: 0013
"""

import re
from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

BATCH = 1000
TEXT = "text"

# What the older code wrote for each code, frozen here (the catalogue in
# campaigns/reasons.py may change; this must not): the English msgids, and the pt_BR
# catalogue's words for them, which a job wrote when its locale was Portuguese.
ENGLISH = {
    "failure_rate": (
        "Paused: %(failed)d of the last %(n)d messages failed, more than %(pct)d %% allowed."
    ),
    "whatsapp_stop": "Paused by WhatsApp's answer %(code)s: %(message)s",
    "template_disabled": "WhatsApp disabled the template (132016).",
    "erp_failed": "The ERP could not give the audience: %(message)s",
    "scheduled_time_reached": "scheduled time reached",
    "sent_now": "sent now",
    "duplicated_from": "duplicated from #%(id)d",
    "duplicated_as": "as #%(id)d",
    "retried_messages": "%(n)d messages (%(codes)s)",
    "retention_reached": "retention period reached",
    "campaign_started": "Campaign “%(name)s” started sending.",
    "campaign_completed": "Campaign “%(name)s” completed: %(sent)d sent, %(failed)d failed.",
    "campaign_paused": "Campaign “%(name)s” was paused: %(reason)s",
    "campaign_failed": "Campaign “%(name)s” failed: %(reason)s",
}
PORTUGUESE = {
    "failure_rate": (
        "Pausada: %(failed)d das últimas %(n)d mensagens falharam, mais que os %(pct)d %%"
        " permitidos."
    ),
    "whatsapp_stop": "Pausada pela resposta %(code)s do WhatsApp: %(message)s",
    "template_disabled": "O WhatsApp desativou o modelo (132016).",
    "erp_failed": "O ERP não conseguiu fornecer o público: %(message)s",
    "scheduled_time_reached": "horário agendado atingido",
    "sent_now": "enviada agora",
    "duplicated_from": "duplicada da #%(id)d",
    "duplicated_as": "como #%(id)d",
    "retried_messages": "%(n)d mensagens (%(codes)s)",
    "retention_reached": "período de retenção atingido",
    "campaign_started": "A campanha “%(name)s” começou a ser enviada.",
    "campaign_completed": "Campanha “%(name)s” concluída: %(sent)d enviadas, %(failed)d com falha.",
    "campaign_paused": "A campanha “%(name)s” foi pausada: %(reason)s",
    "campaign_failed": "A campanha “%(name)s” falhou: %(reason)s",
}
# Which codes each column held, in the order they are tried.
# Codes no older row holds (what the code words since this revision), in English for a
# downgrade only: what the older columns would have said.
LATER = {
    "sender_without_access_token": "This sender has no access token.",
    "sender_without_phone_number_id": "This sender has no phone number id.",
    "erp_audience_failed": "The ERP could not give the audience: %(message)s",
    "erp_timeout": "The ERP did not answer in time (%(url)s).",
    "erp_unreachable": "Could not reach the ERP at %(url)s: %(error)s",
    "erp_refused": "The ERP refused the request (%(status)s).",
    "erp_failed_status": "The ERP failed (%(status)s).",
    "erp_failed_said": "The ERP failed (%(status)s): %(message)s",
    "erp_not_json": "The ERP answered with something that is not JSON.",
    "erp_no_count": "The ERP's count answer has no count.",
    "erp_no_customers": "The ERP's page has no list of customers.",
    "erp_bad_cursor": "The ERP's next cursor is not a string.",
    "erp_same_cursor": "The ERP returned the same cursor twice.",
    "template_deleted": "The template was deleted in WhatsApp Manager.",
    "template_unready": (
        "The template changed since the campaign was scheduled and now needs %(needs)s:"
        " duplicate the campaign and give it."
    ),
    "erp_no_tags": "The ERP's tags answer has no list of tags.",
    "campaign_paused_by_hand": (
        "Campaign “%(name)s” was paused by an operator; it sends again once resumed."
    ),
    "campaign_cancelled": "Campaign “%(name)s” was cancelled: %(sent)s sent, %(cancelled)s not sent.",
    "template_approved": (
        "Template “%(name)s” (%(language)s) was approved: campaigns can use it now."
    ),
    "template_rejected": "Template “%(name)s” (%(language)s) was rejected.",
    "template_rejected_why": "Template “%(name)s” (%(language)s) was rejected: %(reason)s",
    "command_line": "from the command line (%(actor)s)",
    "account_quality_dropped": (
        "Sender “%(name)s”: WhatsApp lowered its quality rating from %(before)s to"
        " %(quality)s; its messaging limit may drop if this goes on."
    ),
    "template_paused": "WhatsApp paused the template. Resume once it is approved again.",
    "template_quality_red": (
        "Template “%(name)s” (%(language)s) dropped to low quality (red): WhatsApp may pause it."
    ),
    "run_of": "a run of the repeating campaign #%(id)s",
    "run_made": "run %(number)s, campaign #%(id)s",
    "run_skipped": "the run due %(at)s: run %(number)s (campaign #%(id)s) had not finished",
    "recurring_run_skipped": (
        "Repeating campaign “%(name)s” skipped its run due %(at)s: the previous run"
        " had not finished."
    ),
}

REASON_CODES = ("failure_rate", "whatsapp_stop", "template_disabled", "erp_failed")
DETAIL_CODES = (
    "scheduled_time_reached",
    "sent_now",
    "duplicated_from",
    "duplicated_as",
    "retried_messages",
    "retention_reached",
    *REASON_CODES,
)
NOTIFICATION_CODES = ("campaign_started", "campaign_completed", "campaign_paused", "campaign_failed")
PLACEHOLDER = re.compile(r"%\((\w+)\)([sd])|%%")


def _pattern(text):
    """A format's regex: its words as they are; %(x)d a whole number, %(x)s any text
    (the shortest that lets the rest match: a name ends at the first closing quote the
    sentence's own words follow; a reason, last, may hold anything)."""
    parts, end = [], 0
    for match in PLACEHOLDER.finditer(text):
        parts.append(re.escape(text[end : match.start()]))
        name, kind = match.groups()
        if name is None:
            parts.append("%")
        else:
            parts.append(f"(?P<{name}>-?[0-9]+)" if kind == "d" else f"(?P<{name}>.*?)")
        end = match.end()
    parts.append(re.escape(text[end:]))
    return re.compile("".join(parts), re.DOTALL)


FORMATS = [
    (language, code, _pattern(text), {m[1] for m in PLACEHOLDER.finditer(text) if m[2] == "d"})
    for language, formats in (("en", ENGLISH), ("pt_BR", PORTUGUESE))
    for code, text in formats.items()
]


def worded(code, params, formats=ENGLISH, depth=0):
    """What the older code wrote for this code and parameters (English unless told)."""
    params = params if isinstance(params, dict) else {}
    if code == TEXT:
        return str(params.get("text", ""))
    if code == "scheduled_for":
        return str(params.get("at", ""))
    if code == "test_phone":
        return str(params.get("phone", ""))
    values = dict(params)
    for name, inner in params.items():  # a reason inside this one (reason, message)
        if isinstance(inner, dict) and "code" in inner and depth < 3:
            values[name] = worded(inner.get("code"), inner.get("params"), formats, depth + 1)
    try:
        return (formats.get(code) or LATER[code]) % values
    except (KeyError, TypeError, ValueError):  # a code this revision does not know
        return str(params.get("text") or code)


def _verbatim(text):
    return TEXT, {"text": text}


def _read(groups, numbers):
    params = {}
    for name, value in groups.items():
        if name == "reason":  # a reason inside the sentence (in either language)
            inner = _parse(value, REASON_CODES)
            params[name] = {"code": inner[0], "params": inner[1]}
        elif name == "code":  # WhatsApp's error code, or None when it gave none
            params[name] = None if value == "None" else int(value)
        else:
            params[name] = int(value) if name in numbers else value
    return params


def _parse(text, codes):
    """(code, params) for a sentence the older code wrote, read back only if the code's
    words rebuilt from them are the very same text; else the text kept verbatim."""
    for language, code, pattern, numbers in FORMATS:
        if code not in codes:
            continue
        match = pattern.fullmatch(text)
        if match is None:
            continue
        try:
            params = _read(match.groupdict(), numbers)
        except ValueError:  # "None" is no number, nor a code
            continue
        rebuilt = dict(params)
        if "reason" in rebuilt:  # checked on its own: its words as they were
            rebuilt["reason"] = {"code": TEXT, "params": {"text": match["reason"]}}
        if worded(code, rebuilt, ENGLISH if language == "en" else PORTUGUESE) == text:
            return code, params
    return _verbatim(text)


def parse_reason(text):
    """A campaign's status reason → (code, params)."""
    return _parse(text, REASON_CODES)


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
    return _parse(detail, DETAIL_CODES)


def parse_notification(text):
    """A notification's text → (code, params)."""
    return _parse(text, NOTIFICATION_CODES)


# Where a sentence was stored, and the code and parameters that replace it.
STORES = (
    ("campaigns", "status_reason", "status_reason_code", "status_reason_params"),
    ("campaign_activity", "detail", "detail_code", "detail_params"),
    ("notifications", "text", "code", "params"),
)


def _table(name, text, code, params, *extra):
    return sa.table(
        name,
        sa.column("id"),
        *extra,
        sa.column(text, sa.Text),
        sa.column(code, sa.String),
        sa.column(params, JSONB),
    )


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

    (reasons, activity, notifications) = STORES
    _rewrite(_table(*reasons), reasons[1], reasons[1:2], reasons[2:], parse_reason)
    _rewrite(
        _table(*activity, sa.column("action", sa.String)),
        activity[1],
        ("action", activity[1]),
        activity[2:],
        parse_detail,
    )
    _rewrite(
        _table(*notifications), notifications[1], notifications[1:2], notifications[2:],
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
        return (worded(code, params),)

    for name, text, code, params in STORES:
        _rewrite(_table(name, text, code, params), code, (code, params), (text,), back)
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

