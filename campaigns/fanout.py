"""The fan-out: a sending campaign's audience, read from the ERP into ``messages``.

One message row per customer, ``pending``, or ``skipped`` with the reason (an
invalid number, a duplicate, an opted-out number, a number WhatsApp could not
deliver to lately, the campaign's exclusions (exclusions.py: its frequency cap, a
number in another running campaign), a variable without a value).
Resumable and idempotent: the ERP cursor advances in the same transaction as the
page's rows, under the campaign's row lock, and rows are unique per ERP customer,
so a fan-out that crashed carries on from its last page and adds nothing twice.
Once the last page is in, it defers the campaign's pump.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from app import db
from campaigns import (
    campaign_states,
    erp,
    exclusions,
    languages,
    message_states,
    phones,
    queues,
    rendering,
    time_zones,
)
from campaigns.clock import database_now
from campaigns.models import Campaign, CampaignStatus, MessageStatus, MessageTemplate
from campaigns.providers.errors import (
    FREQUENCY_CAP_CODE,
    IN_OTHER_CAMPAIGN_CODE,
    UNDELIVERABLE_CODE,
)
from campaigns.services import undeliverable
from campaigns.services.suppressions import is_suppressed

PAGE_SIZE = 1000  # the mock ERP's largest page; fewer round trips and commits


@dataclass(frozen=True)
class FanOutPage:
    added: int
    skipped: int
    done: bool


def load_audience(campaign_id: int, config: Mapping[str, Any]) -> None:
    """Every page left, until the audience is loaded or the campaign stops sending."""
    with erp.PageReader(erp.client_from_config(config), PAGE_SIZE) as pages:
        while (page := fan_out_page(campaign_id, pages, config)) is not None and not page.done:
            pass


# -- which of these phones the campaign already has (not skipped). One index probe per
# phone: as `phone IN (…)`, a campaign newer than the table's statistics was read
# whole on every page, so a fan-out grew quadratic (bench/README.md)
TAKEN_PHONES = sa.text(
    "SELECT p.phone FROM unnest(CAST(:phones AS text[])) AS p(phone) CROSS JOIN LATERAL"
    " (SELECT 1 FROM messages m WHERE m.campaign_id = :campaign_id AND m.phone = p.phone"
    " AND (m.status <> 'skipped' OR m.error_code = ANY(CAST(:number_codes AS text[])))"
    " LIMIT 1) AS hit"
)
# Skips that belong to the number, not the customer's record: a later customer with the
# same number is a duplicate (as exclusions.count counts it). A record skipped for its
# own data (missing_value) does not take the number: another record of it may still go.
NUMBER_CODES = (
    "suppressed",
    UNDELIVERABLE_CODE,
    FREQUENCY_CAP_CODE,
    IN_OTHER_CAMPAIGN_CODE,
)


def fan_out_page(
    campaign_id: int, pages: erp.PageReader, config: Mapping[str, Any]
) -> FanOutPage | None:
    """Load the next ERP page of the audience into ``messages``; None if not sending."""
    campaign = campaign_states.lock(db.session, campaign_id)
    if (
        campaign is None
        or campaign.status is not CampaignStatus.SENDING
        or campaign.audience_loaded_at
    ):
        db.session.rollback()
        return None
    page = pages.page(campaign.segment, campaign.erp_cursor)
    inserted = message_states.add_new(
        db.session, campaign_id, _message_rows(campaign, page.customers, config)
    )
    campaign.erp_cursor = page.next_cursor
    done = page.next_cursor is None
    if done:
        campaign.audience_loaded_at = database_now(db.session)
        queues.defer_pump(db.session, campaign_id)
    db.session.commit()
    skipped = inserted.count(MessageStatus.SKIPPED)
    return FanOutPage(len(inserted) - skipped, skipped, done)


def _message_rows(
    campaign: Campaign, customers: list[dict[str, Any]], config: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """One row per customer: pending, or skipped with the reason (invalid, duplicate, opted out)."""
    region = config["PHONE_DEFAULT_REGION"]
    normalised = [phones.normalise(c.get("phone"), region) for c in customers]
    wanted = [p for p in normalised if p]
    suppressed = is_suppressed(wanted)
    unreachable = undeliverable.recent(db.session, wanted, int(config["UNDELIVERABLE_DAYS"]))
    # The campaign's own exclusions: the frequency cap, numbers in other running campaigns.
    excluded = exclusions.fan_out_skips(db.session, campaign, wanted)
    taken = set(
        db.session.scalars(
            TAKEN_PHONES,
            {"phones": wanted, "campaign_id": campaign.id, "number_codes": list(NUMBER_CODES)},
        )
    )
    # The variables' fields, and always the name: the recipients table shows and searches
    # it; and the language's field, which chose the message's template.
    language_field = campaign.language_field
    fields = sorted(
        {m["field"] for m in campaign.variable_mapping.values() if "field" in m}
        | {"name"}
        | ({language_field} if language_field else set())
    )
    # Each recipient's language version, from the versions approved now (one read a page).
    versions = languages.variants(campaign.template) if language_field else {}
    rows = []
    for customer, phone in zip(customers, normalised, strict=True):
        params = rendering.params_for(campaign.variable_mapping, customer)
        # A skip keeps its code, worded in the reader's language when shown
        # (providers/errors.describe); only the missing variables' names are data.
        reason = code = None
        if phone is None:
            code = "invalid_phone"
        elif phone in taken:
            # Before the other reasons, as exclusions.count decides: a repeated number is
            # a duplicate, whatever its first row said.
            code = "duplicate"
        elif phone in suppressed:
            code = "suppressed"
        elif phone in unreachable:
            code = UNDELIVERABLE_CODE
        elif phone in excluded:
            code = excluded[phone]
        elif empty := rendering.missing_params(params):
            code, reason = "missing_value", ", ".join(empty)
        if phone is not None and (code is None or code in NUMBER_CODES):
            taken.add(phone)
        rows.append(
            {
                "campaign_id": campaign.id,
                "customer_ref": str(customer.get("id"))[:64],
                "phone": (phone or str(customer.get("phone") or ""))[:32],
                "customer_data": {f: customer.get(f) for f in fields},
                "params": params,
                "template_id": _template_for(campaign, versions, customer),
                "status": (MessageStatus.SKIPPED if code else MessageStatus.PENDING).value,
                "error_code": code,
                "error_text": reason,
            }
        )
    _set_time_zones(campaign, customers, rows, config)
    return rows


def _set_time_zones(
    campaign: Campaign,
    customers: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    config: Mapping[str, Any],
) -> None:
    """Each row's recipient's time zone (time_zones.py; None for a number that is not one),
    and, with a sending window, the pending rows counted by zone on the campaign
    (``window_zones``: the pump's and the progress's zones, without reading the rows).
    A page stored twice (a fan-out resumed after a crash) counts twice: the pump finds
    the sum off the campaign's pending count and counts again."""
    fallback = config["DISPLAY_TIMEZONE"]
    counts = dict(campaign.window_zones or {}) if campaign.send_window else None
    for customer, row in zip(customers, rows, strict=True):
        valid = row["error_code"] != "invalid_phone"
        phone = row["phone"] if valid else None
        row["time_zone"] = time_zones.for_recipient(
            phone, customer, campaign.time_zone_field, fallback
        )
        if counts is not None and row["status"] == MessageStatus.PENDING.value:
            key = row["time_zone"] or ""
            counts[key] = counts.get(key, 0) + 1
    if counts is not None:
        campaign.window_zones = counts


def _template_for(
    campaign: Campaign, versions: Mapping[str, MessageTemplate], customer: Mapping[str, Any]
) -> int | None:
    """The message's template: the version in the customer's language, or None for the
    campaign's own (no language field, no such version, or the campaign's language)."""
    if not campaign.language_field:
        return None
    chosen = languages.pick(versions, customer.get(campaign.language_field), campaign.template)
    return None if chosen.id == campaign.template_id else chosen.id
