"""Exclusions: who of an audience a campaign leaves out, and the live count of them.

A recipient is left out (skipped with its code) when their number is on the opt-out list
(``suppressed``), WhatsApp could not deliver to it lately (``undeliverable``), another
campaign contacted it within the campaign's frequency cap (``frequency_cap``; the pump
decides it for good, ``contact_history.admit``: this module's check at the fan-out only
spares the pump the people already known to be within it), or, with ``exclude_running``,
it has a message in another running campaign (``in_other_campaign``).

"In another running campaign": a campaign that is sending or paused, whose message to
the number is still to go or went (pending, queued, sending, retrying, sent, delivered,
read; not skipped, cancelled or failed). Decided at the fan-out, page by page: probed per
running campaign through the (campaign_id, phone) index, one statement a page, so its
cost is the page's numbers times the running campaigns (few), never their audiences.
Two campaigns fanning out at the same moment may both keep a number (neither has it
committed yet); never both skip it. The frequency cap is the guarantee across them.

:func:`count` says, for a list of normalised numbers and the settings, how many each
exclusion removes and how many remain (the form's live count, the pre-flight check, the
API); :func:`estimate` does it for an ERP segment from a sample of its first pages.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from flask import current_app

from app import AnySession, db
from campaigns import contact_history, erp, phones
from campaigns.models import Campaign, CampaignStatus, MessageStatus
from campaigns.providers.errors import FREQUENCY_CAP_CODE, IN_OTHER_CAMPAIGN_CODE
from campaigns.services import undeliverable
from campaigns.services.suppressions import is_suppressed

RUNNING = (CampaignStatus.SENDING, CampaignStatus.PAUSED)
# A message that is still to go or went: its number is "in" its campaign.
IN_CAMPAIGN = (
    MessageStatus.PENDING,
    MessageStatus.QUEUED,
    MessageStatus.SENDING,
    MessageStatus.RETRYING,
    MessageStatus.SENT,
    MessageStatus.DELIVERED,
    MessageStatus.READ,
)
# An ERP segment's estimate reads at most this many pages, or stops after the page that
# passes this many seconds: the form asks again as the operator types.
SAMPLE_PAGES = 5
SAMPLE_PAGE_SIZE = 1000
SAMPLE_SECONDS = 3.0

# -- which of these numbers have a message still to go or gone in one of these campaigns:
# one index probe per number and campaign (messages_campaign_phone_key)
IN_CAMPAIGNS = sa.text(
    "SELECT DISTINCT p.phone FROM unnest(CAST(:phones AS text[])) AS p(phone)"
    " CROSS JOIN unnest(CAST(:campaign_ids AS integer[])) AS c(id) CROSS JOIN LATERAL"
    " (SELECT 1 FROM messages m WHERE m.campaign_id = c.id AND m.phone = p.phone"
    " AND m.status <> 'skipped' AND m.status = ANY(CAST(:statuses AS message_status[]))"
    " LIMIT 1) AS hit"
)


def running_campaigns(session: AnySession, other_than: int | None) -> list[int]:
    """The ids of the campaigns sending or paused, but ``other_than``."""
    query = sa.select(Campaign.id).where(Campaign.status.in_(RUNNING))
    if other_than is not None:
        query = query.where(Campaign.id != other_than)
    return list(session.scalars(query))


def in_other_campaign(
    session: AnySession, numbers: Collection[str], campaign_id: int | None
) -> set[str]:
    """Which of these E.164 numbers are in a running campaign other than ``campaign_id``."""
    others = running_campaigns(session, campaign_id) if numbers else []
    if not others:
        return set()
    return set(
        session.scalars(
            IN_CAMPAIGNS,
            {
                "phones": list(numbers),
                "campaign_ids": others,
                "statuses": [status.value for status in IN_CAMPAIGN],
            },
        )
    )


def fan_out_skips(
    session: AnySession, campaign: Campaign, numbers: Collection[str]
) -> dict[str, str]:
    """The fan-out's skips of this campaign's own exclusions: number -> code (the frequency
    cap as known now, and numbers in other running campaigns when it excludes them)."""
    skips: dict[str, str] = {}
    if campaign.frequency_cap_days:
        for number in contact_history.contacted_within(
            session, numbers, campaign.frequency_cap_days, campaign.id
        ):
            skips[number] = FREQUENCY_CAP_CODE
    if campaign.exclude_running:
        for number in in_other_campaign(session, set(numbers) - set(skips), campaign.id):
            skips[number] = IN_OTHER_CAMPAIGN_CODE
    return skips


@dataclass(frozen=True)
class Counts:
    """An audience's recipients and what each exclusion removes, each counted once, under
    the first that applies (the fan-out's order). ``frequency_cap`` and
    ``in_other_campaign`` are None when the campaign does not apply them. An estimate
    scales a sample of ``sampled`` customers to the segment's ``total``."""

    total: int
    invalid: int
    duplicate: int
    suppressed: int
    undeliverable: int
    frequency_cap: int | None
    in_other_campaign: int | None
    remaining: int
    estimated: bool = False
    sampled: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def removed(self) -> int:
        return self.total - self.remaining


def count(
    numbers: Sequence[str | None],
    cap_days: int | None,
    exclude_running: bool,
    exclude_campaign_id: int | None = None,
) -> Counts:
    """How many of these recipients (their numbers normalised, None: not a number) each
    exclusion removes, and how many remain, as the fan-out would decide now. Numbers in
    the campaign ``exclude_campaign_id`` itself count as in no other campaign, and its own
    contacts as none. A few statements, whatever the length (one per store)."""
    session = db.session
    seen: set[str] = set()
    invalid = duplicate = 0
    unique: list[str] = []
    for number in numbers:
        if number is None:
            invalid += 1
        elif number in seen:
            duplicate += 1
        else:
            seen.add(number)
            unique.append(number)
    days = int(current_app.config["UNDELIVERABLE_DAYS"])
    suppressed = is_suppressed(unique)
    left = [n for n in unique if n not in suppressed]
    unreachable = undeliverable.recent(session, left, days)
    left = [n for n in left if n not in unreachable]
    capped: set[str] = set()
    if cap_days:
        capped = contact_history.contacted_within(session, left, cap_days, exclude_campaign_id)
        left = [n for n in left if n not in capped]
    running: set[str] = set()
    if exclude_running:
        running = in_other_campaign(session, left, exclude_campaign_id)
        left = [n for n in left if n not in running]
    return Counts(
        total=len(numbers),
        invalid=invalid,
        duplicate=duplicate,
        suppressed=len(suppressed),
        undeliverable=len(unreachable),
        frequency_cap=len(capped) if cap_days else None,
        in_other_campaign=len(running) if exclude_running else None,
        remaining=len(left),
    )


def estimate(
    segment: Mapping[str, Any],
    cap_days: int | None,
    exclude_running: bool,
    exclude_campaign_id: int | None,
    config: Mapping[str, Any],
    timeout: tuple[float, float] = erp.DEFAULT_TIMEOUT,
) -> Counts:
    """:func:`count` for an ERP segment: its first pages (SAMPLE_PAGES, SAMPLE_SECONDS at
    most) counted and scaled to the ERP's count, an estimate unless the sample is the
    whole segment (the ERP gives counts, not the exclusions). Raises erp.ErpError."""
    region = config["PHONE_DEFAULT_REGION"]
    sample: list[str | None] = []
    deadline = time.monotonic() + SAMPLE_SECONDS
    with erp.client_from_config(config, timeout=timeout) as client:
        cursor: str | None = None
        whole = False
        for _ in range(SAMPLE_PAGES):
            page = client.page(segment, cursor, SAMPLE_PAGE_SIZE)
            sample.extend(phones.normalise(c.get("phone"), region) for c in page.customers)
            cursor = page.next_cursor
            if cursor is None:
                whole = True
                break
            if time.monotonic() > deadline:
                break
        total = len(sample) if whole else client.count(segment)
    counted = count(sample, cap_days, exclude_running, exclude_campaign_id)
    if whole or not sample:
        return Counts(**(counted.as_dict() | {"sampled": len(sample)}))
    return scaled(counted, total)


def scaled(sample: Counts, total: int) -> Counts:
    """A sample's counts scaled to an audience of ``total``: an estimate."""
    factor = total / sample.total

    def scale(value: int | None) -> int | None:
        return None if value is None else round(value * factor)

    parts = {
        name: scale(getattr(sample, name))
        for name in (
            "invalid",
            "duplicate",
            "suppressed",
            "undeliverable",
            "frequency_cap",
            "in_other_campaign",
        )
    }
    removed = sum(value or 0 for value in parts.values())
    return Counts(
        total=total,
        remaining=max(0, total - removed),
        estimated=True,
        sampled=sample.total,
        **parts,  # type: ignore[arg-type]
    )


def of_campaign(campaign: Campaign, config: Mapping[str, Any]) -> Counts:
    """The campaign's exclusions as its audience stands now (an ERP segment: estimated)."""
    return estimate(
        campaign.segment,
        campaign.frequency_cap_days,
        campaign.exclude_running,
        campaign.id,
        config,
    )
