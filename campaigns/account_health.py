"""What Meta says about a sender's account: quality rating, messaging limit, throughput.

Read from the Graph API (``GET /{phone-number-id}``) when a sender is connected and
periodically, and received at once in the ``phone_number_quality_update`` and
``account_update`` webhooks; all three arrive here as an :class:`AccountReport`.

The messaging limit (unique users per moving 24 h) is set per business portfolio
since October 2025, so a report of it applies to every sender with the same
``business_id`` (a sender without one is its own portfolio). An admin may override
the effective limit (:func:`override_messaging_limit`); the override holds until Meta
reports a value different from its previous report, which is kept apart
(``messaging_limit_reported``) for that comparison. Quality and throughput belong to
the phone number, so they apply to the reporting sender only.

A sender whose ``business_id`` changes leaves its old portfolio's limit, report and
override behind and takes the new one's (:func:`join_portfolio`).

The override holds against the *portfolio's* previous report (the last one applied to
any member), so a member never read before does not lose it on its first read; a first
report ever for the portfolio is no change either (the admin's value holds over it).

Meta's webhooks arrive late, out of order or again: each report carries the time of its
event (a webhook's ``entry[].time``, a Graph API read's own time, both in whole seconds)
and each fact keeps the time of the report that set it (``quality_rating_at``,
``throughput_at``, ``messaging_limit_at``, the last the portfolio's): an older report
does not overwrite it. The ``business_capability_update`` webhook brings the portfolio's
messaging limit alone (:func:`from_capability`).

A quality drop to YELLOW or RED tells the owners of the sender's unfinished campaigns,
or the admins when there are none (``notifications.record_quality_drop``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import sqlalchemy as sa

from app import AnySession
from campaigns import notifications
from campaigns.models import Sender

logger = logging.getLogger(__name__)

QUALITY_RATINGS = ("GREEN", "YELLOW", "RED", "UNKNOWN")
# Worse is higher; UNKNOWN (or never read) counts as GREEN, so a first RED is a drop.
_QUALITY_RANK = {"GREEN": 0, "UNKNOWN": 0, "YELLOW": 1, "RED": 2}
# The phone number's throughput level (Graph API ``throughput.level``) in messages per
# second: 80 by default, up to 1,000 once Meta upgrades the number.
THROUGHPUT_LEVELS = {"STANDARD": 80, "HIGH": 1000}
UNLIMITED = "TIER_UNLIMITED"
_TIER = re.compile(r"TIER_([0-9]{1,9})(K?)")
# A limit as a number in text: ASCII digits, bounded (int() takes "²", "٣" and 5,000
# digits, or refuses them with a ValueError; neither is a value Meta gives).
_LIMIT_NUMBER = re.compile(r"-?[0-9]{1,10}")
# The quality update webhook's events that say what the quality became.
QUALITY_EVENTS = {"FLAGGED": "RED", "UNFLAGGED": "GREEN"}
# ...and the one that says Meta raised the number's throughput (to 1,000 msg/s).
THROUGHPUT_UP = "THROUGHPUT_UPGRADE"
# The business_capability_update webhook's limit, newest name first.
CAPABILITY_LIMITS = ("max_daily_conversations_per_business", "max_daily_conversation_per_phone")


@dataclass(frozen=True)
class AccountReport:
    """What one read or webhook said; None: it said nothing about that."""

    quality_rating: str | None = None
    messaging_limit_tier: str | None = None  # normalised: TIER_2K, TIER_UNLIMITED…
    throughput_per_second: int | None = None
    display_phone_number: str | None = None
    at: datetime | None = None  # when Meta said it (whole seconds); None: now

    def __bool__(self) -> bool:
        return any(
            v is not None
            for v in (self.quality_rating, self.messaging_limit_tier, self.throughput_per_second)
        )


def quality(value: Any) -> str | None:
    """Meta's quality rating, upper case, or None if it is not one."""
    if isinstance(value, str) and value.strip().upper() in QUALITY_RATINGS:
        return value.strip().upper()
    return None


def tier(value: Any) -> str | None:
    """A messaging-limit tier as Meta names it (``TIER_2K``, ``TIER_250``,
    ``TIER_UNLIMITED``; also ``UNLIMITED``), normalised; None if it is none."""
    if not isinstance(value, str):
        return None
    text = value.strip().upper()
    if text in ("UNLIMITED", UNLIMITED):
        return UNLIMITED
    match = _TIER.fullmatch(text)
    if match is None:
        return None
    return f"TIER_{int(match[1])}{match[2]}"


def tier_limit(normalised: str) -> int | None:
    """Unique users a day for a normalised tier; None: unlimited."""
    if normalised == UNLIMITED:
        return None
    match = _TIER.fullmatch(normalised)
    assert match is not None  # normalised by tier()
    return int(match[1]) * (1000 if match[2] else 1)


def throughput(value: Any) -> int | None:
    """Messages per second for a ``throughput`` object or level; None if unknown."""
    level = value.get("level") if isinstance(value, dict) else value
    if isinstance(level, str):
        return THROUGHPUT_LEVELS.get(level.strip().upper())
    return None


def from_graph(body: dict[str, Any]) -> AccountReport:
    """The report in a Graph API phone-number read. The portfolio's
    ``whatsapp_business_manager_messaging_limit`` wins over the deprecated
    ``messaging_limit_tier``."""
    limit = tier(body.get("whatsapp_business_manager_messaging_limit"))
    if limit is None:
        limit = tier(body.get("messaging_limit_tier"))
    display = body.get("display_phone_number")
    return AccountReport(
        quality_rating=quality(body.get("quality_rating")),
        messaging_limit_tier=limit,
        throughput_per_second=throughput(body.get("throughput")),
        display_phone_number=display if isinstance(display, str) and display else None,
    )


def from_webhook(value: dict[str, Any]) -> AccountReport:
    """The report in a ``phone_number_quality_update`` or ``account_update`` value: the
    limit from ``max_daily_conversations_per_business`` (else the older ``current_limit``
    or ``messaging_limit_tier``), the quality from ``quality_rating`` or else the event
    (FLAGGED: RED, UNFLAGGED: GREEN), the throughput from ``throughput.level`` or a
    THROUGHPUT_UPGRADE event (1,000 msg/s)."""
    limit = None
    for key in ("max_daily_conversations_per_business", "current_limit", "messaging_limit_tier"):
        if (limit := tier(value.get(key))) is not None:
            break
    rating = quality(value.get("quality_rating"))
    event = value.get("event")
    if rating is None and isinstance(event, str):
        rating = QUALITY_EVENTS.get(event.strip().upper())
    per_second = throughput(value.get("throughput"))
    if per_second is None and isinstance(event, str) and event.strip().upper() == THROUGHPUT_UP:
        per_second = THROUGHPUT_LEVELS["HIGH"]
    return AccountReport(
        quality_rating=rating,
        messaging_limit_tier=limit,
        throughput_per_second=per_second,
    )


def limit(value: Any) -> str | None:
    """A messaging limit as ``business_capability_update`` gives it, normalised: a tier
    (``TIER_2K``), or a number of users a day (2000, or "2000"; -1 is unlimited); None
    for anything else (never an error: the webhook skips it with its warning)."""
    if isinstance(value, str) and _LIMIT_NUMBER.fullmatch(value.strip()):
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        return tier(value)
    if value == -1:
        return UNLIMITED
    if not 0 < value < 10**9:
        return None
    return f"TIER_{value // 1000}K" if value % 1000 == 0 else f"TIER_{value}"


def from_capability(value: dict[str, Any]) -> AccountReport:
    """The report in a ``business_capability_update`` value: the portfolio's limit from
    ``max_daily_conversations_per_business`` (v24+), else the older
    ``max_daily_conversation_per_phone``."""
    found = None
    for key in CAPABILITY_LIMITS:
        if (found := limit(value.get(key))) is not None:
            break
    return AccountReport(messaging_limit_tier=found)


def portfolio(session: AnySession, sender: Sender) -> list[Sender]:
    """The senders sharing this one's business portfolio (itself alone without one),
    locked in id order so concurrent reports apply one after the other. FOR NO KEY
    UPDATE, as campaign_states.lock does: rows referencing a sender (campaigns,
    templates) can still be inserted meanwhile."""
    query = (
        sa.select(Sender)
        .order_by(Sender.id)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)  # the times as of the lock, not before
    )
    if sender.business_id:
        query = query.where(Sender.business_id == sender.business_id)
    else:
        query = query.where(Sender.id == sender.id)
    return list(session.scalars(query))


def whole_seconds(moment: datetime) -> datetime:
    """A time as Meta's webhooks give theirs: a read at 12:00:00.5 is not newer than a
    webhook of 12:00:00, which may have been sent later in that second."""
    return moment.replace(microsecond=0)


def _newer(at: datetime, applied: datetime | None) -> bool:
    """Is a report of ``at`` as new as the one applied (same second: the later arrival
    wins, as Meta gives no finer order)?"""
    return applied is None or at >= applied


def apply_report(session: AnySession, sender: Sender, report: AccountReport) -> bool:
    """Apply what Meta said about ``sender`` (the caller commits); False if every part of
    it was older than what was already applied (a late or replayed webhook)."""
    now = datetime.now(UTC)
    at = report.at or whole_seconds(now)
    applied = stale = False
    if report.messaging_limit_tier is not None:
        if _apply_limit(portfolio(session, sender), report.messaging_limit_tier, at, now):
            applied = True
        else:
            stale = True
    if report.quality_rating is not None or report.throughput_per_second is not None:
        # Locked, and read again as locked, like the portfolio: two reports about the
        # number apply one after the other, each against the other's time.
        session.execute(
            sa.select(Sender)
            .where(Sender.id == sender.id)
            .with_for_update(key_share=True)
            .execution_options(populate_existing=True)
        )
    if report.quality_rating is not None:
        if _newer(at, sender.quality_rating_at):
            before = sender.quality_rating
            sender.quality_rating = report.quality_rating
            sender.quality_rating_at = at
            applied = True
            if _QUALITY_RANK[report.quality_rating] > _QUALITY_RANK.get(before or "GREEN", 0):
                notifications.record_quality_drop(session, sender, before)
        else:
            stale = True
    if report.throughput_per_second is not None:
        if _newer(at, sender.throughput_at):
            sender.throughput_per_second = report.throughput_per_second
            sender.throughput_at = at
            applied = True
        else:
            stale = True
    if report.display_phone_number and not sender.display_phone_number:
        sender.display_phone_number = report.display_phone_number[:32]
    if applied:
        sender.account_read_at = now
    if stale:
        logger.info(
            "sender %s: parts of an account report of %s older than those applied: ignored",
            sender.id,
            at.isoformat(),
        )
    return applied or not stale


def _last_report(members: list[Sender]) -> Sender | None:
    """The member holding the portfolio's latest limit report (reports apply to every
    member at once, so a member never read, or added since, holds none)."""
    reported = [m for m in members if m.messaging_limit_reported is not None]
    oldest = datetime.min.replace(tzinfo=UTC)
    return max(reported, key=lambda m: m.messaging_limit_at or oldest, default=None)


def _apply_limit(members: list[Sender], reported: str, at: datetime, now: datetime) -> bool:
    """Meta's limit for the portfolio ``members`` (locked); False if older than the one
    applied. The override holds unless this differs from the portfolio's previous report."""
    times = [m.messaging_limit_at for m in members if m.messaging_limit_at is not None]
    if times and at < max(times):
        return False
    last = _last_report(members)
    previous = last.messaging_limit_reported if last is not None else None
    override = next((m for m in members if m.messaging_limit_overridden), None)
    # Meta changed its mind: its new value replaces any override.
    keep_override = override is not None and (previous is None or previous == reported)
    for member in members:
        member.messaging_limit_reported = reported
        member.messaging_limit_at = at
        member.account_read_at = now
        if keep_override:
            member.messaging_limit = cast(Sender, override).messaging_limit
            member.messaging_limit_overridden = True
        else:
            member.messaging_limit = tier_limit(reported)
            member.messaging_limit_overridden = False
    return True


def join_portfolio(session: AnySession, sender: Sender) -> None:
    """The sender's ``business_id`` was set, changed or cleared (flushed): the limit it
    holds, its report, time and override, were its old portfolio's, and an override kept
    would spread to the new one at its next report. It takes the new portfolio's (the
    members' latest report and override, locked), or none while it is alone there, until
    Meta is read again."""
    others = [m for m in portfolio(session, sender) if m.id != sender.id]
    last = _last_report(others)
    override = next((m for m in others if m.messaging_limit_overridden), None)
    sender.messaging_limit_reported = last.messaging_limit_reported if last else None
    sender.messaging_limit_at = last.messaging_limit_at if last else None
    sender.messaging_limit_overridden = override is not None
    if override is not None:
        sender.messaging_limit = override.messaging_limit
    elif last is not None and last.messaging_limit_reported is not None:
        sender.messaging_limit = tier_limit(last.messaging_limit_reported)
    else:
        sender.messaging_limit = None


def override_messaging_limit(session: AnySession, sender: Sender, limit: int | None) -> list[int]:
    """Set the effective messaging limit of the sender's portfolio (None: unlimited)
    until Meta reports a new value; the ids of the senders changed (the caller audits
    and commits)."""
    changed = []
    for member in portfolio(session, sender):
        if member.messaging_limit != limit or not member.messaging_limit_overridden:
            changed.append(member.id)
        member.messaging_limit = limit
        member.messaging_limit_overridden = True
    return changed


def clear_override(session: AnySession, sender: Sender) -> list[tuple[Sender, int | None]]:
    """End the override of the sender's portfolio: every member back to Meta's last
    report (unknown if Meta never reported one). The members changed, each with its
    limit before (the caller audits and commits)."""
    members = portfolio(session, sender)
    last = _last_report(members)
    reported = last.messaging_limit_reported if last is not None else None
    meta = tier_limit(reported) if reported is not None else None
    changed = []
    for member in members:
        if not member.messaging_limit_overridden:
            continue
        changed.append((member, member.messaging_limit))
        member.messaging_limit = meta
        member.messaging_limit_overridden = False
    return changed
