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

A quality drop to YELLOW or RED tells the owners of the sender's unfinished campaigns,
or the admins when there are none (``notifications.record_quality_drop``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

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
_TIER = re.compile(r"TIER_(\d{1,9})(K?)")
# The quality update webhook's events that say what the quality became.
QUALITY_EVENTS = {"FLAGGED": "RED", "UNFLAGGED": "GREEN"}
# ...and the one that says Meta raised the number's throughput (to 1,000 msg/s).
THROUGHPUT_UP = "THROUGHPUT_UPGRADE"


@dataclass(frozen=True)
class AccountReport:
    """What one read or webhook said; None: it said nothing about that."""

    quality_rating: str | None = None
    messaging_limit_tier: str | None = None  # normalised: TIER_2K, TIER_UNLIMITED…
    throughput_per_second: int | None = None
    display_phone_number: str | None = None

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


def portfolio(session: AnySession, sender: Sender) -> list[Sender]:
    """The senders sharing this one's business portfolio (itself alone without one),
    locked in id order so concurrent reports apply one after the other. FOR NO KEY
    UPDATE, as campaign_states.lock does: rows referencing a sender (campaigns,
    templates) can still be inserted meanwhile."""
    query = sa.select(Sender).order_by(Sender.id).with_for_update(key_share=True)
    if sender.business_id:
        query = query.where(Sender.business_id == sender.business_id)
    else:
        query = query.where(Sender.id == sender.id)
    return list(session.scalars(query))


def apply_report(session: AnySession, sender: Sender, report: AccountReport) -> None:
    """Apply what Meta said about ``sender`` (the caller commits)."""
    now = datetime.now(UTC)
    if report.messaging_limit_tier is not None:
        for member in portfolio(session, sender):
            if member.messaging_limit_reported != report.messaging_limit_tier:
                # Meta changed its mind: its new value replaces any override.
                member.messaging_limit_reported = report.messaging_limit_tier
                member.messaging_limit = tier_limit(report.messaging_limit_tier)
                member.messaging_limit_overridden = False
            elif not member.messaging_limit_overridden:
                member.messaging_limit = tier_limit(report.messaging_limit_tier)
            member.account_read_at = now
    if report.quality_rating is not None:
        before = sender.quality_rating
        sender.quality_rating = report.quality_rating
        if _QUALITY_RANK[report.quality_rating] > _QUALITY_RANK.get(before or "GREEN", 0):
            notifications.record_quality_drop(session, sender, before)
    if report.throughput_per_second is not None:
        sender.throughput_per_second = report.throughput_per_second
    if report.display_phone_number and not sender.display_phone_number:
        sender.display_phone_number = report.display_phone_number[:32]
    if report:
        sender.account_read_at = now


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
