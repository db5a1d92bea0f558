"""Exclusions: who of an audience a campaign leaves out, and the live count of them.

A recipient is left out (skipped with its code) when their number is on the opt-out list
(``suppressed``), WhatsApp could not deliver to it lately (``undeliverable``), another
campaign contacted it within the campaign's frequency cap (``frequency_cap``; the pump
decides it for good, ``contact_history.capped``: this module's check at the fan-out only
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
API); :func:`estimate` does it for an ERP segment from a sample of its first pages, and
:func:`of_file` for a CSV audience from its rows (whole up to FILE_SAMPLE_ROWS).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from flask import current_app

from app import AnySession, db
from campaigns import audiences, contact_history, counters, erp, phones
from campaigns.models import Campaign, CampaignStatus, MessageStatus
from campaigns.providers.errors import (
    FREQUENCY_CAP_CODE,
    IN_OTHER_CAMPAIGN_CODE,
    UNDELIVERABLE_CODE,
)
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
# An ERP segment's estimate reads at most this many pages, and starts none once this many
# seconds have passed.
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


@dataclass(frozen=True)
class _Sample:
    numbers: tuple[str | None, ...]  # normalised; None: not a number
    total: int  # the segment's customers (the ERP's count unless sampled whole)
    whole: bool


# A segment's sample, kept briefly in this process: the form asks again on every change
# of the cap or the checkbox, and only the database counts need running again. A dozen
# lines rather than a cache library for one bounded dict.
SAMPLE_CACHE_SECONDS = 60.0
SAMPLE_CACHE_SIZE = 32
_samples: dict[str, tuple[float, _Sample]] = {}
_samples_lock = threading.Lock()


def _sample_key(segment: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    return json.dumps(
        [
            str(config.get("ERP_BASE_URL")),
            config["PHONE_DEFAULT_REGION"],
            SAMPLE_PAGES,
            SAMPLE_PAGE_SIZE,
            segment,
        ],
        sort_keys=True,
        default=str,
    )


def _cached_sample(key: str) -> _Sample | None:
    with _samples_lock:
        found = _samples.get(key)
        if found is None or found[0] <= time.monotonic():
            _samples.pop(key, None)
            return None
        return found[1]


def _keep_sample(key: str, sample: _Sample) -> None:
    with _samples_lock:
        now = time.monotonic()
        for old in [k for k, (expires, _) in _samples.items() if expires <= now]:
            del _samples[old]
        while len(_samples) >= SAMPLE_CACHE_SIZE:
            del _samples[min(_samples, key=lambda k: _samples[k][0])]  # the oldest
        _samples[key] = (now + SAMPLE_CACHE_SECONDS, sample)


def clear_sample_cache() -> None:
    with _samples_lock:
        _samples.clear()


def _read_sample(
    segment: Mapping[str, Any], config: Mapping[str, Any], timeout: tuple[float, float]
) -> _Sample:
    """The segment's first pages (SAMPLE_PAGES at most; none started once SAMPLE_SECONDS
    have passed), their numbers normalised. Raises erp.ErpError."""
    region = config["PHONE_DEFAULT_REGION"]
    numbers: list[str | None] = []
    deadline = time.monotonic() + SAMPLE_SECONDS
    with erp.client_from_config(config, timeout=timeout) as client:
        cursor: str | None = None
        whole = False
        for index in range(SAMPLE_PAGES):
            if index and time.monotonic() >= deadline:
                break
            page = client.page(segment, cursor, SAMPLE_PAGE_SIZE)
            numbers.extend(phones.normalise(c.get("phone"), region) for c in page.customers)
            cursor = page.next_cursor
            if cursor is None:
                whole = True
                break
        total = len(numbers) if whole else client.count(segment)
    return _Sample(tuple(numbers), total, whole)


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
    whole segment (the ERP gives counts, not the exclusions). The sample is kept
    SAMPLE_CACHE_SECONDS, so asking again with another cap reads no ERP page. Raises
    erp.ErpError."""
    key = _sample_key(segment, config)
    sample = _cached_sample(key)
    if sample is None:
        sample = _read_sample(segment, config, timeout)
        _keep_sample(key, sample)
    counted = count(list(sample.numbers), cap_days, exclude_running, exclude_campaign_id)
    if sample.whole or not sample.numbers:
        return Counts(**(counted.as_dict() | {"sampled": len(sample.numbers)}))
    return scaled(counted, sample.total)


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


# -- a loaded audience's skips by code: the campaign's skipped rows, by the index on
# (campaign_id, status)
SKIPS_BY_CODE = sa.text(
    "SELECT coalesce(error_code, '') AS code, count(*) AS n FROM messages"
    " WHERE campaign_id = :campaign_id AND status = 'skipped' GROUP BY 1"
)


def loaded(session: AnySession, campaign: Campaign) -> Counts:
    """A loaded audience's exclusions, exact: its messages, and its skipped ones by code
    (the pump's frequency-cap skips among them). ``remaining``: the messages not skipped
    (a skip of another kind, a missing value, is left out of it but not itemised)."""
    totals = counters.totals(session, campaign.id)
    skips = {
        row.code: int(row.n) for row in session.execute(SKIPS_BY_CODE, {"campaign_id": campaign.id})
    }
    capped = skips.get(FREQUENCY_CAP_CODE, 0)
    running = skips.get(IN_OTHER_CAMPAIGN_CODE, 0)
    return Counts(
        total=totals["total"],
        invalid=skips.get("invalid_phone", 0),
        duplicate=skips.get("duplicate", 0),
        suppressed=skips.get("suppressed", 0),
        undeliverable=skips.get(UNDELIVERABLE_CODE, 0),
        frequency_cap=capped if campaign.frequency_cap_days or capped else None,
        in_other_campaign=running if campaign.exclude_running or running else None,
        remaining=totals["total"] - totals["skipped"],
    )


# A CSV audience is counted whole up to this many rows, else from its first ones, scaled
# to its row count: its numbers are normalised in Python (phonenumbers), about 20 µs each.
FILE_SAMPLE_ROWS = 20_000


def of_file(
    file_id: int,
    phone_column: str,
    cap_days: int | None,
    exclude_running: bool,
    exclude_campaign_id: int | None,
    config: Mapping[str, Any],
) -> Counts | None:
    """:func:`count` for a CSV audience: its rows' numbers in ``phone_column`` (exact up
    to FILE_SAMPLE_ROWS, else its first rows scaled to the file's row count); None when
    there is no such file or column. No ERP is asked."""
    audience = audiences.get(file_id)
    if audience is None or phone_column not in audience.columns:
        return None
    region = config["PHONE_DEFAULT_REGION"]
    # Kept like an ERP sample: the form asks again on every change of the cap or the
    # checkbox, and a file does not change after its upload (an erasure may shrink it).
    key = json.dumps(["file", file_id, phone_column, region, FILE_SAMPLE_ROWS])
    sample = _cached_sample(key)
    if sample is None:
        index = audience.columns.index(phone_column)
        rows = audiences.page(db.session, file_id, 0, FILE_SAMPLE_ROWS)
        numbers = tuple(
            phones.normalise(cells[index] if index < len(cells) else None, region)
            for _number, cells in rows
        )
        sample = _Sample(numbers, audience.row_count, len(rows) >= audience.row_count)
        _keep_sample(key, sample)
    counted = count(list(sample.numbers), cap_days, exclude_running, exclude_campaign_id)
    if sample.whole or not sample.numbers:
        return Counts(**(counted.as_dict() | {"sampled": len(sample.numbers)}))
    return scaled(counted, sample.total)


def of_campaign(
    campaign: Campaign,
    config: Mapping[str, Any],
    timeout: tuple[float, float] = erp.DEFAULT_TIMEOUT,
) -> Counts | None:
    """The campaign's exclusions: once its audience is loaded, its skips counted (exact);
    before, as its audience stands now: a CSV file's rows (never the ERP), or an ERP
    segment (estimated), read with no transaction open (the ERP may take seconds; raises
    erp.ErpError). None: its file is gone."""
    if campaign.audience_loaded_at is not None:
        return loaded(db.session, campaign)
    if campaign.audience_file_id is not None or campaign.audience_phone_column:
        if campaign.audience_file_id is None:  # a CSV audience whose file retention erased
            return None
        return of_file(
            campaign.audience_file_id,
            campaign.audience_phone_column or "",
            campaign.frequency_cap_days,
            campaign.exclude_running,
            campaign.id,
            config,
        )
    args = (campaign.segment, campaign.frequency_cap_days, campaign.exclude_running, campaign.id)
    db.session.rollback()
    return estimate(*args, config, timeout)
