"""WhatsApp webhooks: verify the handshake and signature, apply statuses idempotently.

Statuses never move a message backwards (``read`` then a late ``delivered`` stays
``read``) and the same webhook delivered twice changes nothing. Opt-out replies,
the 131050 error and a marketing "stop" preference put the number on the
suppression list; a failure whose code means stop pauses its campaign, as the
same error on the send would. A failure with the per-user marketing limit (131049)
holds the message as the send does (back to retrying, tried once more
MARKETING_LIMIT_RETRY_HOURS later) while its campaign sends or is paused; held once
already, or its campaign over, it fails.

Each change of a webhook (``entry[].changes[]``) names its business number
(``value.metadata.phone_number_id``) and is applied only if the body is signed
with that sender's app secret or the global one, and only to that sender's
messages: one sender's secret cannot touch another's campaigns.

An inbound message that answers a campaign message (its ``context.id``, or a reaction's
``reaction.message_id``, is the message's wamid) is recorded as a reply to it, and a
tapped button as a click too (``answers.py``: each counted once per message, however
often Meta delivers it). One without that context is no answer: it is never guessed.

Template changes (``message_template_status_update``, ``…_quality_update``,
``template_category_update``) arrive on the WABA object without a phone number id:
``template_webhooks.py`` applies them, under the same signatures and parsing rules.
What Meta says about a number's account (``phone_number_quality_update``,
``account_update``: the number by its display digits) and about the business
portfolio (``business_capability_update``: the senders of the entry's WABA id) goes
to ``account_health.py``, as of the entry's ``time``: an older report than the one
applied (a late or replayed webhook) changes nothing.

Parsing is total: a signed body that is not JSON, or any part of the wrong shape
or type, is skipped with a warning saying where and what was wrong, and the
request is still acknowledged (Meta retries any other answer for days).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeGuard

import sqlalchemy as sa

from app import db
from campaigns import (
    account_health,
    answers,
    callback_data,
    campaign_states,
    clock,
    counters,
    encryption,
    message_states,
    phones,
    queues,
    template_webhooks,
)
from campaigns.callback_data import CallbackData
from campaigns.clock import database_now
from campaigns.models import Campaign, Message, MessageStatus, Sender
from campaigns.providers.errors import OPT_OUT_CODES, UNDELIVERABLE_CODES, ErrorKind, classify
from campaigns.services import undeliverable
from campaigns.services.suppressions import (
    lift_provider_suppression,
    suppress_message,
    suppress_quietly,
)
from campaigns.validation import identifier

logger = logging.getLogger(__name__)

WEBHOOK_STATUS = {
    "sent": MessageStatus.SENT,
    "delivered": MessageStatus.DELIVERED,
    "read": MessageStatus.READ,
    "failed": MessageStatus.FAILED,
}
# The change fields Disparo applies; they carry the business number in value.metadata.
HANDLED_FIELDS = frozenset({"messages", "user_preferences"})
# What Meta says about a number's account (campaigns/account_health.py): these name the
# number by its display number (value.display_phone_number, or value.phone_number).
ACCOUNT_FIELDS = frozenset({"phone_number_quality_update", "account_update"})
# The business portfolio's capabilities (its messaging limit), on the WABA: the senders
# with the entry's WABA id.
CAPABILITY_FIELD = "business_capability_update"
MAX_DISPLAY_DIGITS = 20  # E.164 has at most 15
MAX_CHALLENGE_DIGITS = 64  # Meta's hub.challenge is an integer of about ten digits
MAX_PHONE_NUMBER_ID = 64  # senders.phone_number_id's width
MAX_WAMID = 128  # messages.provider_message_id's width
MAX_ERROR_CODE_DIGITS = 12  # Meta's codes have up to six
MAX_TIMESTAMP_DIGITS = 12  # seconds: past year 9999 either way
MAX_LOGGED_PROBLEMS = 20  # one warning per request, however broken the body
# A status this long before a message's current call started is about an earlier call
# (the one 131049 held it for, or the one before "retry failed", replayed or late while
# the new call is in flight), not about this one: found by its callback data, as the new
# call's wamid is not recorded yet, it is ignored. The margin allows for the clocks. A
# callback data naming its attempt (callback_data.py) tells such a status apart within
# the margin too; this is the only check for the plain form of calls before the attempt.
STALE_FAILURE_SECONDS = 60


@dataclass(frozen=True)
class _MarketingLimited:
    """A failed status with the per-user marketing limit (131049), applied after the rest."""

    message_id: int
    at: datetime
    code: str
    text: str | None
    attempt: int | None  # the call its callback data names (None: the plain old form)
    wamid: str


def _utf8(text: str) -> bytes:
    # hmac.compare_digest refuses str with non-ASCII characters (TypeError); bytes of
    # any header or query value compare, and a wrong one simply does not match.
    return text.encode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class Signers:
    """Whose app secret signed a webhook's body: the global one (it covers every sender)
    and the senders whose own secret did."""

    every_sender: bool = False
    sender_ids: frozenset[int] = frozenset()

    def __bool__(self) -> bool:
        return self.every_sender or bool(self.sender_ids)

    def cover(self, sender_id: int) -> bool:
        return self.every_sender or sender_id in self.sender_ids


def _signed_with(secret: str, raw_body: bytes, given: bytes) -> bool:
    expected = hmac.new(_utf8(secret), raw_body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), given)


def signers(raw_body: bytes, header: str | None, global_secret: str | None) -> Signers:
    """Which known app secrets ``X-Hub-Signature-256`` (HMAC-SHA256 of the raw body) matches.

    Falsy when none does. Secrets are read as attributes, never compared in SQL: they
    are stored encrypted.
    """
    if not header or not header.startswith("sha256="):
        return Signers()
    given = _utf8(header.removeprefix("sha256=").strip())
    # The stored tokens, opened one by one: a secret no key opens (a key replaced instead
    # of rotated) costs its own sender its webhooks, not every sender theirs.
    stored = sa.type_coerce(Sender.app_secret, sa.Text).label("token")
    rows = db.session.execute(sa.select(Sender.id, stored).where(stored.is_not(None))).all()
    secrets = [(row.id, encryption.readable(row.token)) for row in rows]
    for sender_id, secret in secrets:
        if secret is None:
            logger.error("sender %s: no configured key opens its app secret", sender_id)
    # Every secret is compared, so timing says nothing about which one matched.
    by_sender = [(i, _signed_with(secret, raw_body, given)) for i, secret in secrets if secret]
    every_sender = _signed_with(global_secret, raw_body, given) if global_secret else False
    return Signers(every_sender, frozenset(sender_id for sender_id, ok in by_sender if ok))


def verify_token_ok(token: str | None, global_token: str | None) -> bool:
    """The GET handshake's token: the global one or a sender's."""
    if not token:
        return False
    tokens = [t for t in db.session.scalars(sa.select(Sender.webhook_verify_token)) if t]
    if global_token:
        tokens.append(global_token)
    # A list, not a generator: every token is compared, whichever matches.
    return any([hmac.compare_digest(_utf8(token), _utf8(t)) for t in tokens])


def challenge_ok(challenge: str | None) -> TypeGuard[str]:
    """Is the handshake's ``hub.challenge`` what Meta sends (ASCII digits, bounded)?

    Only such a challenge is echoed, so the endpoint never reflects arbitrary input.
    """
    return (
        challenge is not None
        and 0 < len(challenge) <= MAX_CHALLENGE_DIGITS
        and challenge.isascii()
        and challenge.isdigit()
    )


def parse(raw_body: bytes) -> Any:
    """The body as JSON, or None: not UTF-8, not JSON, or nested deeper than the parser goes."""
    try:
        return json.loads(raw_body)
    except (ValueError, RecursionError):
        return None


@dataclass
class _Skipped:
    """The parts of a webhook Disparo could not use: where, and what was wrong."""

    problems: list[str] = field(default_factory=list)

    def __call__(self, where: str, what: str) -> None:
        problem = f"{where} {what}"
        if problem not in self.problems[-2:]:  # a part two readers found wrong: said once
            self.problems.append(problem)

    def log(self) -> None:
        if not self.problems:
            return
        shown = self.problems[:MAX_LOGGED_PROBLEMS]
        more = len(self.problems) - len(shown)
        logger.warning(
            "webhook parts skipped: %s%s", "; ".join(shown), f"; and {more} more" if more else ""
        )


def _items(
    container: Mapping[str, Any], key: str, where: str, skipped: _Skipped, *, required: bool = False
) -> list[Any]:
    """A list member; absent is empty (or skipped if ``required``), anything else skipped."""
    value = container.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list):
        skipped(f"{where}.{key}", "is missing" if value is None else "is not a list")
        return []
    return value


def _text(value: Any) -> str | None:
    """Free text as it came, but what PostgreSQL refuses: NUL bytes dropped, and lone
    surrogates (JSON can escape them, UTF-8 cannot hold them) replaced."""
    if not isinstance(value, str):
        return None
    return value.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


def _digits(value: Any, max_digits: int) -> int | None:
    """A whole number >= 0 Meta sends as a number or as a string of ASCII digits."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if 0 <= value < 10**max_digits else None
    if isinstance(value, str) and 0 < len(value) <= max_digits and value.isascii():
        return int(value) if value.isdigit() else None
    return None


def _timestamp(raw: Any) -> datetime | None:
    seconds = _digits(raw, MAX_TIMESTAMP_DIGITS)
    if seconds is None:
        return None
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (ValueError, OverflowError, OSError):
        return None


@dataclass(frozen=True)
class _Change:
    """One ``entry[].changes[]`` Disparo handles: where it is, its value, its senders."""

    where: str
    value: Mapping[str, Any]
    sender_ids: tuple[int, ...]
    field: str = "messages"
    at: datetime | None = None  # the entry's time: when Meta says the change happened


def _changes(payload: Any, signed: Signers, skipped: _Skipped) -> Iterator[_Change]:
    """The changes of a webhook whose sender's secret signed it, the rest skipped."""
    if not isinstance(payload, dict):
        skipped("body", "is not a JSON object")
        return
    senders_of: dict[str, list[int]] = {}  # phone number id -> sender ids, once a request
    for e, entry in enumerate(_items(payload, "entry", "body", skipped, required=True)):
        where = f"entry[{e}]"
        if not isinstance(entry, dict):
            skipped(where, "is not an object")
            continue
        at, time_ok = clock.entry_time(entry)
        if not time_ok:
            # Statuses carry their own times; what needs the entry's is skipped below.
            skipped(f"{where}.time", "is not a Unix time")
        for c, change in enumerate(_items(entry, "changes", where, skipped, required=True)):
            found = _change(change, f"{where}.changes[{c}]", signed, senders_of, skipped, entry)
            if found is None:
                continue
            if found.field in HANDLED_FIELDS:
                yield found
            elif time_ok:
                yield replace(found, at=at)


def _change(
    change: Any,
    where: str,
    signed: Signers,
    senders_of: dict[str, list[int]],
    skipped: _Skipped,
    entry: Mapping[str, Any],
) -> _Change | None:
    if not isinstance(change, dict):
        skipped(where, "is not an object")
        return None
    if not isinstance(change.get("field"), str):
        skipped(f"{where}.field", "is not text")
        return None
    field_name = change["field"]
    if (
        field_name not in HANDLED_FIELDS
        and field_name not in ACCOUNT_FIELDS
        and field_name != CAPABILITY_FIELD
    ):
        return None  # templates' changes: template_webhooks.py; the rest not Disparo's to apply
    value = change.get("value")
    if not isinstance(value, dict):
        skipped(f"{where}.value", "is not an object")
        return None
    if field_name == CAPABILITY_FIELD:
        return _capability_change(entry, value, where, signed, senders_of, skipped)
    metadata = value.get("metadata")
    number_id = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
    if field_name in ACCOUNT_FIELDS and number_id is None:
        return _account_change(value, where, field_name, signed, senders_of, skipped)
    if not isinstance(number_id, str) or _digits(number_id, MAX_PHONE_NUMBER_ID) is None:
        skipped(f"{where}.value.metadata.phone_number_id", "is not a phone number id")
        return None
    query = sa.select(Sender.id).where(Sender.phone_number_id == number_id)
    named, change = f"phone number id {number_id}", (where, value, field_name)
    return _signed_change(named, number_id, query, change, signed, senders_of, skipped)


def _account_change(
    value: Mapping[str, Any],
    where: str,
    field_name: str,
    signed: Signers,
    senders_of: dict[str, list[int]],
    skipped: _Skipped,
) -> _Change | None:
    """A quality or account update, for the senders whose display number it names."""
    key = "display_phone_number" if "display_phone_number" in value else "phone_number"
    raw = value.get(key)
    digits = "".join(c for c in raw if c in "0123456789") if isinstance(raw, str) else ""
    if not isinstance(raw, str) or not 0 < len(digits) <= MAX_DISPLAY_DIGITS:
        skipped(f"{where}.value.{key}", "is not a phone number")
        return None
    shown = sa.func.regexp_replace(Sender.display_phone_number, r"\D", "", "g")
    query = sa.select(Sender.id).where(shown == digits).order_by(Sender.id)
    named, change = f"phone number {digits}", (where, value, field_name)
    # Cached as "+digits": apart from the phone number ids in the same cache.
    return _signed_change(named, f"+{digits}", query, change, signed, senders_of, skipped)


def _capability_change(
    entry: Mapping[str, Any],
    value: Mapping[str, Any],
    where: str,
    signed: Signers,
    senders_of: dict[str, list[int]],
    skipped: _Skipped,
) -> _Change | None:
    """A business portfolio's capability update, for the senders of the entry's WABA."""
    waba_id = identifier(entry.get("id"), MAX_PHONE_NUMBER_ID, number=True)
    if waba_id is None:
        skipped(f"{where.rsplit('.', 1)[0]}.id", "is not a WhatsApp Business Account id")
        return None
    query = sa.select(Sender.id).where(Sender.waba_id == waba_id).order_by(Sender.id)
    named, change = f"WABA id {waba_id}", (where, value, CAPABILITY_FIELD)
    # Cached as "waba:<id>": apart from the phone number ids and display numbers.
    return _signed_change(named, f"waba:{waba_id}", query, change, signed, senders_of, skipped)


def _signed_change(
    named: str,
    cache_key: str,
    query: Any,
    change: tuple[str, Mapping[str, Any], str],
    signed: Signers,
    senders_of: dict[str, list[int]],
    skipped: _Skipped,
) -> _Change | None:
    """The change ``(where, value, field)`` for the senders ``query`` finds (read once a
    webhook per ``cache_key``) whose app secret signed the body; None, with the reason
    skipped, when no sender has the number ``named`` or none of them signed it."""
    where, value, field_name = change
    if cache_key not in senders_of:
        senders_of[cache_key] = list(db.session.scalars(query))
    if not senders_of[cache_key]:
        skipped(where, f"names {named}, which no sender has")
        return None
    allowed = tuple(sender_id for sender_id in senders_of[cache_key] if signed.cover(sender_id))
    if not allowed:
        skipped(where, f"of {named} is not signed with its app secret")
        return None
    return _Change(where, value, allowed, field_name)


def apply(payload: Any, signed: Signers, config: Mapping[str, Any]) -> dict[str, int]:
    """Apply every status, opt-out reply and marketing preference in a webhook.

    ``payload`` is the parsed body, of any shape; ``signed`` says whose secrets signed
    it. Returns what happened, for the log and the answer: ``skipped`` counts the
    parts of the wrong shape or not signed by their sender.
    """
    summary = {
        "applied": 0,
        "ignored": 0,
        "unknown": 0,
        "opt_outs": 0,
        "opt_ins": 0,
        "stale": 0,
        "replies": 0,
        "clicks": 0,
        "unattributed": 0,  # answers to a message Disparo does not know
    }
    skipped = _Skipped()
    failed_campaigns: dict[int, tuple[int | None, str]] = {}
    applied_at: list[datetime] = []  # WhatsApp's time of each status applied (its lag)
    limited: list[_MarketingLimited] = []
    answered: list[_Answer] = []
    for change in _changes(payload, signed, skipped):
        value = change.value
        at = f"{change.where}.value"
        if change.field in ACCOUNT_FIELDS or change.field == CAPABILITY_FIELD:
            if outcome := _apply_account(change, at, skipped):
                summary[outcome] += 1
            continue
        for s, status in enumerate(_items(value, "statuses", at, skipped)):
            where = f"{at}.statuses[{s}]"
            outcome = _apply_status(
                status, change.sender_ids, failed_campaigns, applied_at, limited, where, skipped
            )
            if outcome:
                summary[outcome] += 1
        for m, message in enumerate(_items(value, "messages", at, skipped)):
            where = f"{at}.messages[{m}]"
            summary["opt_outs"] += _apply_reply(message, config["OPT_OUT_KEYWORDS"], where, skipped)
            if answer := _answer(message, change.sender_ids, where, skipped):
                answered.append(answer)
        for p, preference in enumerate(_items(value, "user_preferences", at, skipped)):
            where = f"{at}.user_preferences[{p}]"
            if outcome := _apply_preference(preference, where, skipped):
                summary[outcome] += 1
    template_summary, template_stops = template_webhooks.apply(payload, signed, skipped)
    summary |= template_summary
    if limited:
        # Each hold takes its campaign's lock (shared) and then a counter shard, as a
        # batch's claim does, so it starts in a transaction of its own, holding no shard.
        db.session.commit()
        for item in limited:
            summary[_apply_marketing_limit(item, failed_campaigns, applied_at, config)] += 1
    if answered:
        # Each answer locks its message and then a counter shard: in a transaction of its
        # own, holding no shard the statuses took (a batch's claim holds its messages while
        # it waits for a shard).
        db.session.commit()
        for answer in answered:
            for outcome in _apply_answer(answer, skipped):
                summary[outcome] += 1
    skipped.log()
    summary["skipped"] = len(skipped.problems)
    counters.record_webhook_lags(db.session, applied_at)
    # What the failures say about their campaigns, once each, after the statuses are
    # committed: a pause takes the campaign's lock, which a batch's claim holds (shared)
    # while it waits for a counter shard; taken while holding the statuses' shard, the
    # two could deadlock.
    db.session.commit()
    for campaign_id, (code, text) in failed_campaigns.items():
        if kind := _stop_kind(code):
            campaign_states.stop_for_code(campaign_id, code, text, kind)
        else:
            campaign_states.pause_if_failing(campaign_id, config)
    db.session.commit()
    template_webhooks.stop_campaigns(template_stops)  # after the commit, as the stops above
    return summary


def _find_message(wamid: str, callback: CallbackData | None) -> sa.Row[Message, int] | None:
    """The message a status is about and its sender, by wamid or else by callback data."""
    with_sender = (
        sa.select(Message, Campaign.sender_id)
        .join(Campaign, Campaign.id == Message.campaign_id)
        .limit(1)
    )
    found = db.session.execute(with_sender.where(Message.provider_message_id == wamid)).first()
    if found is None and callback is not None:
        # The status may beat our own record of the wamid (the send's commit); a message
        # with another wamid is not this status's.
        found = db.session.execute(
            with_sender.where(
                Message.id == callback.message_id, Message.provider_message_id.is_(None)
            )
        ).first()
    return found


def _error(
    status: Mapping[str, Any], where: str, skipped: _Skipped
) -> tuple[bool, int | None, str | None]:
    """A failed status's first error: (usable, code, text)."""
    errors = status.get("errors")
    if errors is None or errors == []:
        return True, None, None
    first = errors[0] if isinstance(errors, list) else None
    if not isinstance(first, dict):
        skipped(f"{where}.errors", "is not a list of objects")
        return False, None, None
    code = _digits(first.get("code"), MAX_ERROR_CODE_DIGITS)
    if code is None and first.get("code") is not None:
        skipped(f"{where}.errors[0].code", "is not a number")
        return False, None, None
    text = _text(first.get("message")) or _text(first.get("title"))
    return True, code, (text or "")[:2000] or None


def _apply_status(
    status: Any,
    sender_ids: Collection[int],
    failed_campaigns: dict[int, tuple[int | None, str]],
    applied_at: list[datetime],
    limited: list[_MarketingLimited],
    where: str,
    skipped: _Skipped,
) -> str | None:
    if not isinstance(status, dict):
        skipped(where, "is not an object")
        return None
    wamid = identifier(status.get("id"), MAX_WAMID)
    if wamid is None:
        skipped(f"{where}.id", f"is not a message id of at most {MAX_WAMID} characters")
        return None
    if not isinstance(status.get("status"), str):
        skipped(f"{where}.status", "is not text")
        return None
    at = _timestamp(status.get("timestamp"))
    if at is None:
        skipped(f"{where}.timestamp", "is not a Unix time")
        return None
    target = WEBHOOK_STATUS.get(status["status"])
    failed = target is MessageStatus.FAILED
    usable, code, text = _error(status, where, skipped) if failed else (True, None, None)
    if not usable:
        return None
    callback = callback_data.parse(status.get("biz_opaque_callback_data"))
    found = _find_message(wamid, callback)
    if found is not None and found.sender_id not in sender_ids:
        skipped(where, "is about a message of another sender")
        return None
    if found is None or target is None:
        logger.warning(
            "webhook status %r of message %r not applied (%s): %s",
            status["status"][:20],
            wamid,
            where,
            "no such message" if found is None else "not a status Disparo records",
        )
        return "unknown"
    message = found.Message
    attempt = None if callback is None else callback.attempt
    if _of_another_attempt(message, attempt, wamid, status["status"], where):
        return "ignored"
    if _about_an_earlier_call(message, at):
        return "ignored"
    if failed and code is not None and classify(code, None) is ErrorKind.SLOW_RETRY:
        limited.append(_MarketingLimited(message.id, at, str(code), text, attempt, wamid))
        return None  # counted once applied, after the other statuses
    moved = message_states.record_status(
        db.session,
        message,
        target,
        at,
        wamid=wamid,
        error_code=None if code is None else str(code),
        error_text=text,
    )
    if not moved:
        return "ignored"  # a duplicate, or a stage the message has already passed
    applied_at.append(at)
    if failed and code in OPT_OUT_CODES:
        # From the row too: an erased recipient's opt-out is kept only as a hash.
        suppress_message(db.session, message.id, message.phone, text or "", "provider")
    if failed and code in UNDELIVERABLE_CODES:  # WhatsApp often says so only here, later
        # From the row, not the message read above: an erasure may have committed since.
        undeliverable.remember_message(db.session, message.id)
    if failed and (message.campaign_id not in failed_campaigns or _stop_kind(code)):
        failed_campaigns[message.campaign_id] = (code, text or "")
    return "applied"


def _of_another_attempt(
    message: Message, attempt: int | None, wamid: str, status: str, where: str
) -> bool:
    """Does the status's callback data name a call other than the message's current one?

    Each call's callback data carries its attempt (``callback_data.py``): a status of an
    earlier call, replayed or late while a newer one is in flight, is dropped whatever its
    time. The plain old form (no attempt) is left to the time check.
    """
    if attempt is None or attempt == message.attempts:
        return False
    logger.info(
        "webhook status %r of message %d not applied (%s): about its call %d, not its"
        " current call %d (wamid %r)",
        status[:20],
        message.id,
        where,
        attempt,
        message.attempts,
        wamid,
    )
    return True


def _about_an_earlier_call(message: Message, at: datetime) -> bool:
    """Is a status at ``at`` about a call before the one the message is in now?"""
    return (
        message.status is MessageStatus.SENDING
        and message.sending_at is not None
        and at < message.sending_at - timedelta(seconds=STALE_FAILURE_SECONDS)
    )


def _apply_marketing_limit(
    item: _MarketingLimited,
    failed_campaigns: dict[int, tuple[int | None, str]],
    applied_at: list[datetime],
    config: Mapping[str, Any],
) -> str:
    """A failure with the per-user marketing limit: held once while its campaign sends or
    is paused, its retry job deferred with it; else failed as any failure. Commits.

    Idempotent: a replay finds the message held (retrying, nowhere a failure comes from)
    and changes nothing, or finds its retry in flight and is recognised as stale.
    """
    session = db.session
    message = session.get(Message, item.message_id, populate_existing=True)
    if message is None:  # erased meanwhile
        session.commit()
        return "unknown"
    if _of_another_attempt(message, item.attempt, item.wamid, "failed", "131049 hold"):
        session.commit()
        return "ignored"  # claimed for a newer call since the status was read
    if _about_an_earlier_call(message, item.at):
        session.commit()
        return "ignored"  # the failure of the call it was held for, replayed
    hours = float(config["MARKETING_LIMIT_RETRY_HOURS"])
    # A whole minute: the holds of a campaign's minute go in one job (queues.defer_held).
    until = queues.held_group_due(database_now(session) + timedelta(hours=hours))
    if message_states.hold_from_webhook(session, message, until, item.code, item.text):
        queues.defer_held(session, message.campaign_id, message.id, until)
        outcome = "applied"
    elif message_states.record_status(
        session,
        message,
        MessageStatus.FAILED,
        item.at,
        error_code=item.code,
        error_text=item.text,
    ):
        failed_campaigns.setdefault(message.campaign_id, (int(item.code), item.text or ""))
        outcome = "applied"
    else:
        outcome = "ignored"  # a duplicate, or a stage the message has already passed
    if outcome == "applied":
        applied_at.append(item.at)
    session.commit()
    return outcome


# The parts of an account webhook that say something, and what reads each.
_ACCOUNT_PARTS = {
    "quality_rating": account_health.quality,
    "max_daily_conversations_per_business": account_health.tier,
    "current_limit": account_health.tier,
    "messaging_limit_tier": account_health.tier,
}


_CAPABILITY_PARTS = dict.fromkeys(account_health.CAPABILITY_LIMITS, account_health.limit)


def _apply_account(change: _Change, where: str, skipped: _Skipped) -> str | None:
    """Apply a quality, account or capability update to its senders (a limit to their
    portfolios): "applied", "stale" if older than what they hold, None if it said
    nothing usable."""
    value = change.value
    if change.field == CAPABILITY_FIELD:
        parts: Mapping[str, Any] = _CAPABILITY_PARTS
        report = account_health.from_capability(dict(value))
    else:
        parts = _ACCOUNT_PARTS
        report = account_health.from_webhook(dict(value))
    for key, read in parts.items():
        if value.get(key) is not None and read(value[key]) is None:
            skipped(f"{where}.{key}", "is not a value Meta gives")
    if not report:
        return None  # an account event about something else (a ban review, a verification)
    # A time ahead of ours is taken as now: the periodic reads are "now" reads, and a
    # report stamped in the future would hold them off until then.
    now = account_health.whole_seconds(clock.database_now(db.session))
    report = replace(report, at=min(change.at, now) if change.at else now)
    fresh = False
    for sender_id in change.sender_ids:
        sender = db.session.get(Sender, sender_id)
        if sender is not None:
            fresh = account_health.apply_report(db.session, sender, report) or fresh
    logger.info("senders %s: %s report %s", list(change.sender_ids), change.field, report)
    return "applied" if fresh else "stale"


def _stop_kind(code: int | None) -> ErrorKind | None:
    """The pause a failure's code calls for (quality, template, account), if any."""
    kind = classify(code, None) if code is not None else None
    return kind if kind in (ErrorKind.PAUSE_CAMPAIGN, ErrorKind.PAUSE_SENDER) else None


def _wa_phone(wa_id: Any) -> str | None:
    if not isinstance(wa_id, str):
        return None
    return phones.normalise("+" + wa_id.lstrip("+"))


def _apply_reply(message: Any, keywords: Collection[str], where: str, skipped: _Skipped) -> int:
    if not isinstance(message, dict):
        skipped(where, "is not an object")
        return 0
    # A text message's text.body, or a quick-reply button's button.text.
    kind, key = ("text", "body") if "text" in message else ("button", "text")
    part = message.get(kind)
    if part is None:
        return 0  # an image, a location, a reaction: never an opt-out
    text = _text(part.get(key)) if isinstance(part, dict) else None
    if text is None:
        skipped(f"{where}.{kind}.{key}", "is not text")
        return 0
    if text.strip().lower() not in keywords:
        return 0
    phone = _wa_phone(message.get("from"))
    if phone is None:
        skipped(f"{where}.from", "is not a phone number")
        return 0
    # The reason is the customer's own words; the source says they replied.
    suppress_quietly(db.session, phone, text.strip()[:50], "opt_out_reply")
    logger.info("opt-out reply from a customer: number suppressed")
    return 1


@dataclass(frozen=True)
class _Answer:
    """An inbound message that answers a campaign message: its wamid, the words kept as the
    reply, the button tapped (a click too), when."""

    wamid: str
    text: str
    button: str | None
    at: datetime
    sender_ids: tuple[int, ...]
    where: str


def _part(message: Mapping[str, Any], kind: str, where: str, skipped: _Skipped) -> Any:
    """The object of the message's kind (``message["text"]`` for a text), or None, skipped."""
    part = message.get(kind)
    if not isinstance(part, dict):
        skipped(f"{where}.{kind}", "is not an object")
        return None
    return part


def _words(part: Mapping[str, Any], key: str, where: str, skipped: _Skipped) -> str | None:
    text = _text(part.get(key))
    if text is None:
        skipped(f"{where}.{key}", "is not text")
    return text


def _answer_words(
    message: Mapping[str, Any], kind: str, where: str, skipped: _Skipped
) -> tuple[str, str | None] | None:
    """(the reply's words, the button tapped or None) of a message of ``kind``; None when
    it is no answer Disparo keeps, or of the wrong shape (skipped)."""
    if kind in answers.MEDIA_KINDS:
        return answers.placeholder(kind), None
    if kind not in ("text", "button", "interactive"):
        return None  # an order, a system message, one WhatsApp does not support
    part = _part(message, kind, where, skipped)
    if part is None:
        return None
    if kind == "text":
        body = _words(part, "body", f"{where}.text", skipped)
        return None if body is None else (body, None)
    if kind == "button":  # a template's quick-reply button: its text (and payload)
        text = _words(part, "text", f"{where}.button", skipped)
        return None if text is None else (text, text)
    reply_kind = part.get("type")
    chosen = part.get(reply_kind) if reply_kind in ("button_reply", "list_reply") else None
    if not isinstance(chosen, dict):
        return answers.placeholder(kind), None  # a flow's answer, say: no words to keep
    title = _words(chosen, "title", f"{where}.interactive.{reply_kind}", skipped)
    if title is None:
        return None
    return title, title if reply_kind == "button_reply" else None


def _answer(
    message: Any, sender_ids: tuple[int, ...], where: str, skipped: _Skipped
) -> _Answer | None:
    """The answer an inbound message gives to a campaign message, if it names one: a reply
    (``context.id``) or a reaction (``reaction.message_id``). Never guessed from the
    number: a message without them answers nothing."""
    if not isinstance(message, dict):
        return None  # skipped by _apply_reply
    kind = message.get("type")
    if not isinstance(kind, str):
        return None  # a message without its type says nothing Disparo can keep
    if kind == "reaction":
        reaction = _part(message, kind, where, skipped)
        if reaction is None:
            return None
        raw, at_key = reaction.get("message_id"), f"{where}.reaction.message_id"
        emoji = _text(reaction.get("emoji"))
        if not emoji:
            return None  # a reaction taken back: no answer
        words: tuple[str, str | None] | None = (emoji, None)
    else:
        context = message.get("context")
        if context is None or (isinstance(context, dict) and context.get("id") is None):
            return None  # not a reply to a message (or forwarded): never guessed
        if not isinstance(context, dict):
            skipped(f"{where}.context", "is not an object")
            return None
        raw, at_key = context.get("id"), f"{where}.context.id"
        words = _answer_words(message, kind, where, skipped)
    wamid = identifier(raw, MAX_WAMID)
    if wamid is None:
        skipped(at_key, f"is not a message id of at most {MAX_WAMID} characters")
        return None
    if words is None:
        return None
    at = _timestamp(message.get("timestamp"))
    if at is None:
        skipped(f"{where}.timestamp", "is not a Unix time")
        return None
    return _Answer(wamid, words[0], words[1], at, sender_ids, where)


def _apply_answer(answer: _Answer, skipped: _Skipped) -> list[str]:
    """Record a reply (and a click) to the campaign message it names; commits. Returns the
    summary's counts it adds: replies and clicks counted, or unattributed."""
    found = answers.find_answered(db.session, answer.wamid)
    if found is None:
        db.session.commit()
        logger.info(
            "webhook answer to message %r not applied (%s): no such message",
            answer.wamid,
            answer.where,
        )
        return ["unattributed"]
    if found.sender_id not in answer.sender_ids:
        db.session.commit()
        skipped(answer.where, "answers a message of another sender")
        return []
    counted = []
    if answers.record_reply(db.session, found.id, answer.text, answer.at):
        counted.append("replies")
    if answer.button is not None and answers.record_click(
        db.session, found.id, answer.button, answer.at
    ):
        counted.append("clicks")
    db.session.commit()
    return counted


def _apply_preference(preference: Any, where: str, skipped: _Skipped) -> str | None:
    """The customer stopped (or resumed) marketing messages in WhatsApp itself."""
    if not isinstance(preference, dict):
        skipped(where, "is not an object")
        return None
    if preference.get("category") != "marketing_messages":
        return None
    phone = _wa_phone(preference.get("wa_id"))
    if phone is None:
        skipped(f"{where}.wa_id", "is not a phone number")
        return None
    if preference.get("value") == "stop":
        # WhatsApp's words, if it gave any; the source says WhatsApp reported it.
        suppress_quietly(db.session, phone, _text(preference.get("detail")) or "", "provider")
        logger.info("marketing opt-out preference from a customer: number suppressed")
        return "opt_outs"
    if preference.get("value") == "resume" and lift_provider_suppression(db.session, phone):
        logger.info("marketing opt-in preference from a customer: suppression lifted")
        return "opt_ins"
    return None
