"""The fan-out: a sending campaign's audience, read from the ERP (or its CSV file) into
``messages``.

One message row per customer, ``pending``, or ``skipped`` with the reason (an
invalid number, a duplicate, an opted-out number, a number WhatsApp could not
deliver to lately, the campaign's exclusions (exclusions.py: its frequency cap, a
number in another running campaign), a variable without a value). Both sources feed one
function (:func:`_message_rows`): a CSV audience's rows (``campaigns/audiences.py``) are
customers whose fields are the file's columns, their ref the row number.
Resumable and idempotent: the ERP cursor (a file's last row number) advances in the
same transaction as the page's rows, under the campaign's row lock, and rows are
unique per customer, so a fan-out that crashed carries on from its last page and
adds nothing twice. Once the last page is in, it defers the campaign's pump.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from app import db
from campaigns import (
    audiences,
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
    if _csv_audience(campaign_id):
        while (page := fan_out_file_page(campaign_id, config)) is not None and not page.done:
            pass
        return
    with erp.PageReader(erp.client_from_config(config), PAGE_SIZE) as pages:
        while (page := fan_out_page(campaign_id, pages, config)) is not None and not page.done:
            pass


def _csv_audience(campaign_id: int) -> bool:
    audience = db.session.scalar(
        sa.select(Campaign.audience_file_id).where(Campaign.id == campaign_id)
    )
    db.session.rollback()
    return audience is not None


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
    return _store_page(campaign, page.customers, None, page.next_cursor, config)


def fan_out_file_page(campaign_id: int, config: Mapping[str, Any]) -> FanOutPage | None:
    """Load the next rows of the campaign's CSV file into ``messages``, by row number
    after the last loaded (kept in ``erp_cursor``); None if not sending."""
    campaign = campaign_states.lock(db.session, campaign_id)
    if (
        campaign is None
        or campaign.status is not CampaignStatus.SENDING
        or campaign.audience_loaded_at
        or campaign.audience_file is None
    ):
        db.session.rollback()
        return None
    after = int(campaign.erp_cursor or 0)
    rows = audiences.page(db.session, campaign.audience_file.id, after, PAGE_SIZE)
    customers = audiences.customers(campaign.audience_file.columns, rows)
    next_cursor = str(rows[-1][0]) if len(rows) == PAGE_SIZE else None
    refs = [ref for ref, _fields in customers]
    return _store_page(campaign, [fields for _ref, fields in customers], refs, next_cursor, config)


def _store_page(
    campaign: Campaign,
    customers: list[dict[str, Any]],
    refs: list[str] | None,
    next_cursor: str | None,
    config: Mapping[str, Any],
) -> FanOutPage:
    """The page's messages, the cursor after it, and the pump once the last is in;
    committed."""
    zones: Counter[str] = Counter()
    inserted = message_states.add_new(
        db.session, campaign.id, _message_rows(campaign, customers, config, refs), zones
    )
    if campaign.send_window and (campaign.window_zones is not None or not campaign.erp_cursor):
        # What was inserted: a page stored twice (a fan-out resumed after a crash) adds
        # nothing the second time, and counts nothing. Counts dropped meanwhile (NULL
        # after the first page: message_states.forget_zone_counts) stay dropped: this
        # page's alone would be below the others' zones, and the pump counts them all.
        campaign.window_zones = dict(Counter(campaign.window_zones or {}) + zones)
    campaign.erp_cursor = next_cursor
    done = next_cursor is None
    if done:
        campaign.audience_loaded_at = database_now(db.session)
        queues.defer_pump(db.session, campaign.id)
    db.session.commit()
    skipped = inserted.count(MessageStatus.SKIPPED)
    return FanOutPage(len(inserted) - skipped, skipped, done)


def phone_field(campaign: Campaign) -> str:
    """The customer field holding the number: the CSV's phone column, or the ERP's."""
    return campaign.audience_phone_column or "phone"


def _message_rows(
    campaign: Campaign,
    customers: list[dict[str, Any]],
    config: Mapping[str, Any],
    refs: list[str] | None = None,
) -> list[dict[str, Any]]:
    """One row per customer, from either source: pending, or skipped with the reason
    (invalid, duplicate, opted out). ``refs``: each customer's ref (a CSV's row numbers);
    None: the ERP's ``id`` field."""
    region = config["PHONE_DEFAULT_REGION"]
    phone_of = phone_field(campaign)
    if refs is None:
        refs = [str(customer.get("id")) for customer in customers]
    normalised = [phones.normalise(c.get(phone_of), region) for c in customers]
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
    for ref, customer, phone in zip(refs, customers, normalised, strict=True):
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
                "customer_ref": ref[:64],
                "phone": (phone or str(customer.get(phone_of) or ""))[:32],
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
    """Each row's recipient's time zone (time_zones.py; None for a number that is not one).
    With a sending window, :func:`_store_page` counts the pending rows inserted by zone on
    the campaign (``window_zones``: the pump's and the progress's zones, without reading
    the rows)."""
    fallback = config["DISPLAY_TIMEZONE"]
    for customer, row in zip(customers, rows, strict=True):
        valid = row["error_code"] != "invalid_phone"
        phone = row["phone"] if valid else None
        row["time_zone"] = time_zones.for_recipient(
            phone, customer, campaign.time_zone_field, fallback
        )


def _template_for(
    campaign: Campaign, versions: Mapping[str, MessageTemplate], customer: Mapping[str, Any]
) -> int | None:
    """The message's template: the version in the customer's language, or None for the
    campaign's own (no language field, no such version, or the campaign's language)."""
    if not campaign.language_field:
        return None
    chosen = languages.pick(versions, customer.get(campaign.language_field), campaign.template)
    return None if chosen.id == campaign.template_id else chosen.id
