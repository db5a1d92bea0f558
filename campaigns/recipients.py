"""A campaign's recipients: keyset pages with a filter and a search, the CSV export (with what
each one answered), and the failed and skipped ones grouped by error code. Reads only."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import aliased

from app import db
from campaigns import counters, csvfiles, labels
from campaigns.i18n import N_, _
from campaigns.models import Campaign, Message, MessageStatus, MessageTemplate
from campaigns.providers import errors
from campaigns.queries import enum_member
from campaigns.search import MAX_SEARCH_CHARS, contains_folded, fold

RECIPIENTS_PER_PAGE = 50


# customer_data keeps the ERP fields the template's variables use; the first present is the name.
NAME_FIELDS = ("name", "first_name")


RECIPIENT_CSV_COLUMNS = (
    "customer_ref",
    "name",
    "phone",
    "status",
    "error_code",
    "error_message",
    "sent_at",
    "delivered_at",
    "read_at",
    "failed_at",
    "provider_message_id",
    # Added last (columns keep their places for the spreadsheets that read them): what
    # Disparo says a code means, in the reader's language, beside WhatsApp's own text.
    "error_explanation",
    # The language of the template the recipient gets (campaigns/languages.py).
    "language",
    # What the recipient answered (answers.py): their latest reply and their first reply's
    # time, the button they tapped and their first click's time.
    "reply_text",
    "replied_at",
    "clicked_button",
    "clicked_at",
)


def recipient_csv_header(zone: str) -> list[str]:
    """RECIPIENT_CSV_COLUMNS as the reader reads them; the times' headers name their zone."""
    return [
        _("Customer ref"),
        _("Name"),
        _("Phone"),
        _("Status"),
        _("Error code"),
        _("Error message"),
        _("Sent at (%(zone)s)") % {"zone": zone},
        _("Delivered at (%(zone)s)") % {"zone": zone},
        _("Read at (%(zone)s)") % {"zone": zone},
        _("Failed at (%(zone)s)") % {"zone": zone},
        _("WhatsApp message ID"),
        _("What the error means"),
        _("Language"),
        _("Reply"),
        _("Replied at (%(zone)s)") % {"zone": zone},
        _("Button tapped"),
        _("Tapped at (%(zone)s)") % {"zone": zone},
    ]


# The phone cell of a recipient whose personal data was erased (translated when written).
ERASED_MARK = N_("erased")

CSV_FETCH_ROWS = 2000  # rows per round trip of the export's server-side cursor


# The status filter's one choice that is no status: the recipients who replied (answers.py).
REPLIED = "replied"


@dataclass(frozen=True)
class RecipientFilters:
    status: MessageStatus | None = None
    # Any digits of a phone, or part of a customer's name or ref, accents and case aside.
    q: str | None = None
    replied: bool = False  # only those who answered (status=replied): any status

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> RecipientFilters:
        q = (args.get("q") or "")[:MAX_SEARCH_CHARS].strip()
        return cls(
            status=enum_member(MessageStatus, args.get("status")),
            q=q if fold(q) else None,  # an accent alone is nothing to search for
            replied=args.get("status") == REPLIED,
        )

    @property
    def status_arg(self) -> str | None:
        """The status filter as its query-string value (a "load more" link's)."""
        return REPLIED if self.replied else self.status.value if self.status else None

    @property
    def narrowed(self) -> bool:
        """Some rows are left out: by their status, or for not having answered."""
        return self.status is not None or self.replied


@dataclass(frozen=True)
class RecipientPage:
    messages: list[Message]
    next_after: int | None  # the last id shown, when more rows follow it
    total: int | None  # rows in the status filter (from the counters); None on later pages
    # of those, the rows the search finds (MATCHES_COUNTED + 1: more); None without one
    matching: int | None = None
    # The language of each template the messages get, by template id; None: the campaign's.
    languages: dict[int | None, str] = field(default_factory=dict)

    def language(self, message: Message) -> str | None:
        """The language of the template the recipient gets (its own version, or the
        campaign's)."""
        return self.languages.get(message.template_id) or self.languages.get(None)

    @property
    def matching_capped(self) -> bool:
        return self.matching is not None and self.matching > MATCHES_COUNTED

    @property
    def matches_counted(self) -> int:
        return MATCHES_COUNTED


def _recipient_name() -> sa.ColumnElement[str]:
    return sa.func.coalesce(*(Message.customer_data[field].astext for field in NAME_FIELDS))


def _recipients_where(campaign_id: int, filters: RecipientFilters) -> list[sa.ColumnElement[bool]]:
    conditions = [Message.campaign_id == campaign_id]
    if filters.status:
        conditions.append(Message.status == filters.status)
    if filters.replied:  # migration 0028's partial index: the answered rows alone
        conditions.append(Message.replied_at.is_not(None))
    if filters.q:
        # "Vitoria" finds Vitória, "c0000042" finds C0000042 (campaigns/search.py).
        matches = [
            contains_folded(_recipient_name(), filters.q),
            contains_folded(Message.customer_ref, filters.q),
        ]
        if digits := re.sub(r"\D", "", filters.q):
            # Phones are kept as +<digits>, so "(11) 98765" finds +5511987654321.
            matches.append(Message.phone.contains(digits))
        conditions.append(sa.or_(*matches))
    return conditions


def rows_in_status(
    totals: Mapping[str, int], status: MessageStatus | None, *, replied: bool = False
) -> int:
    """Messages now in ``status``, from the counters (whose sent ⊇ delivered ⊇ read); with
    ``replied``, the messages answered (whatever their status)."""
    if replied:
        return totals["replied"]
    if status is None:
        return totals["total"]
    if status is MessageStatus.SENT:
        return totals["sent"] - totals["delivered"]
    if status is MessageStatus.DELIVERED:
        return totals["delivered"] - totals["read"]
    return totals[status.value]


def recipient_page(
    campaign_id: int,
    filters: RecipientFilters,
    after: int | None = None,
    per_page: int = RECIPIENTS_PER_PAGE,
) -> RecipientPage:
    """The campaign's messages after id ``after``, in id order (the order they are sent).

    Keyset, not OFFSET: a deep page costs what the first does, and rows the fan-out
    adds meanwhile (under the campaign's lock, so always with higher ids) neither
    repeat a row nor push one out of view. The first page also says how many rows
    there are: the status filter's from the counters, and with a search how many of
    them it finds.
    """
    where = _recipients_where(campaign_id, filters)
    messages, next_after = _after(where, after, per_page)
    languages = _template_languages(campaign_id, messages)
    if after is not None:  # "load more": the first page said how many
        return RecipientPage(messages, next_after, None, languages=languages)
    totals = counters.totals(db.session, campaign_id)
    total = rows_in_status(totals, filters.status, replied=filters.replied)
    matching = _matching(where) if filters.q else None
    return RecipientPage(messages, next_after, total, matching, languages)


def _template_languages(campaign_id: int, messages: list[Message]) -> dict[int | None, str]:
    """The language of the campaign's template (key None) and of the messages' own
    versions (by id), in one statement; none for no messages."""
    if not messages:
        return {}
    ids = sorted({m.template_id for m in messages if m.template_id is not None})
    own = sa.select(Campaign.template_id).where(Campaign.id == campaign_id).scalar_subquery()
    rows = db.session.execute(
        sa.select(MessageTemplate.id, MessageTemplate.language, MessageTemplate.id == own).where(
            sa.or_(MessageTemplate.id == own, MessageTemplate.id.in_(ids))
        )
    )
    found: dict[int | None, str] = {}
    for template_id, language, is_own in rows:
        found[template_id] = language
        if is_own:
            found[None] = language
    return found


def _after(
    where: list[sa.ColumnElement[bool]], after: int | None, per_page: int
) -> tuple[list[Message], int | None]:
    """Up to ``per_page`` messages matching ``where`` after id ``after``, in id order, and
    the last one's id when more follow. With ``campaign_id`` (and ``status``) equal, a
    range scan of migration 0006's (campaign_id, id) or (campaign_id, status, id) index:
    a page deep in a million-message campaign costs what the first does."""
    query = sa.select(Message).where(*where).order_by(Message.id).limit(per_page + 1)
    if after is not None:
        query = query.where(Message.id > after)
    messages = list(db.session.scalars(query))
    more = len(messages) > per_page
    messages = messages[:per_page]
    return messages, messages[-1].id if more else None


def messages_after(
    campaign_id: int, status: MessageStatus | None, after: int | None, limit: int
) -> tuple[list[Message], int | None]:
    """The API's page of a campaign's messages (in ``status`` if given) after id ``after``,
    in id order, and the last one's id when more follow. Erased rows are listed too."""
    return _after(_recipients_where(campaign_id, RecipientFilters(status=status)), after, limit)


# A search's count stops here ("1,000+"): counting every match of a common term (a digit,
# "a") would read the whole campaign on each keystroke, where the page itself stops at
# its first 50 in id order.
MATCHES_COUNTED = 1000


def _matching(where: list[sa.ColumnElement[bool]]) -> int:
    """How many rows the search finds, up to MATCHES_COUNTED + 1 (more than the cap)."""
    found = sa.select(Message.id).where(*where).limit(MATCHES_COUNTED + 1).subquery()
    return int(db.session.scalar(sa.select(sa.func.count()).select_from(found)) or 0)


def _error_text(code: str | None, text: str | None) -> str | None:
    return errors.describe(code, text) if code or text else None


def recipient_csv_rows(campaign_id: int) -> Iterator[tuple[Any, ...]]:
    """Every message of the campaign as RECIPIENT_CSV_COLUMNS, in id order.

    A server-side cursor hands the rows over CSV_FETCH_ROWS at a time, so a
    million-recipient export never holds more than one batch in memory.
    """
    own, version = aliased(MessageTemplate), aliased(MessageTemplate)
    query = (
        sa.select(
            Message.customer_ref,
            _recipient_name(),
            # Its personal data erased (retention, or the person's request): said so.
            sa.func.coalesce(Message.phone, sa.literal(_(ERASED_MARK))),
            Message.status,
            Message.error_code,
            Message.error_text,
            Message.sent_at,
            Message.delivered_at,
            Message.read_at,
            Message.failed_at,
            Message.provider_message_id,
            sa.func.coalesce(version.language, own.language),
            Message.reply_text,
            Message.replied_at,
            Message.clicked_button,
            Message.clicked_at,
        )
        .join(Campaign, Campaign.id == Message.campaign_id)
        .join(own, own.id == Campaign.template_id)
        .outerjoin(version, version.id == Message.template_id)
        .where(Message.campaign_id == campaign_id)
        .order_by(Message.id)
        .execution_options(yield_per=CSV_FETCH_ROWS)
    )
    result = db.session.execute(query)
    status_words = {status: labels.label(status) for status in MessageStatus}
    # Each code's words once per export, not once per row of a million: as the page's
    # error breakdown words them (errors.explain), so a code without an entry of its own
    # (a permission code, an HTTP status, one Disparo does not know) and a failure
    # without a code are explained too; a row with neither has nothing to explain.
    explanations: dict[str | None, str] = {}

    def explained(code: str | None, status: MessageStatus) -> str | None:
        if not code and status is not MessageStatus.FAILED:
            return None
        if code not in explanations:
            explanations[code] = errors.explain(code)
        return explanations[code]

    try:
        for row in result:
            # Words, not codes: the status as the page shows it, Disparo's own error
            # codes worded in the reader's language (WhatsApp's text stays as it came).
            ref, name, phone = row[:3]
            yield (
                # Kept as text by a spreadsheet, not read as numbers (csvfiles.KEEP_AS_TEXT).
                None if ref is None else csvfiles.Identifier(ref),
                name,
                csvfiles.Identifier(phone),
                status_words[row.status],
                row.error_code,
                errors.describe(row.error_code, row.error_text)
                if row.error_code or row.error_text
                else None,
                *row[6:11],
                explained(row.error_code, row.status),
                *row[11:],
            )
    finally:
        result.close()  # also when the download is abandoned half-way


@dataclass(frozen=True)
class ErrorGroup:
    status: MessageStatus  # failed or skipped
    code: str | None
    count: int
    example: str | None  # one of the texts the provider (or the fan-out) gave with this code

    @property
    def explanation(self) -> str:
        return errors.explain(self.code)

    @property
    def retryable(self) -> bool:
        return self.status is MessageStatus.FAILED and errors.is_retryable(self.code)


@dataclass(frozen=True)
class ErrorBreakdown:
    groups: list[ErrorGroup]

    @property
    def retryable(self) -> int:
        """Failed messages whose error may pass: what "retry failed" can send again."""
        return sum(group.count for group in self.groups if group.retryable)


def error_breakdown(campaign_id: int) -> ErrorBreakdown:
    """Failed, then skipped, messages grouped by error code, the most frequent first."""
    count = sa.func.count()
    rows = db.session.execute(
        sa.select(Message.status, Message.error_code, count, sa.func.min(Message.error_text))
        .where(
            Message.campaign_id == campaign_id,
            Message.status.in_([MessageStatus.FAILED, MessageStatus.SKIPPED]),
        )
        .group_by(Message.status, Message.error_code)
        .order_by(Message.status, count.desc(), Message.error_code)
    )
    return ErrorBreakdown([ErrorGroup(*row) for row in rows])
