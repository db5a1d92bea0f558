"""A campaign's audience as the ERP sees it: live counts and dry runs (nothing is written)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from app import db
from campaigns import erp, phones, rendering
from campaigns.i18n import _
from campaigns.models import Campaign, Suppression


def count(segment: Mapping[str, Any], config: Mapping[str, Any]) -> int:
    """How many customers the ERP selects for these criteria (raises erp.ErpError)."""
    with erp.client_from_config(config) as client:
        return client.count(segment)


@dataclass(frozen=True)
class DryRunRow:
    customer_ref: str
    name: str
    phone: str | None
    params: dict[str, str]
    text: str
    skip_reason: str | None


def dry_run(campaign: Campaign, config: Mapping[str, Any], limit: int = 10) -> list[DryRunRow]:
    """The first ``limit`` messages exactly as they would be sent (real ERP data; nothing sent)."""
    template = campaign.template
    with erp.client_from_config(config) as client:
        customers = client.page(campaign.segment, None, limit).customers
    normalised = [phones.normalise(c.get("phone")) for c in customers]
    suppressed = set(
        db.session.scalars(
            sa.select(Suppression.phone).where(Suppression.phone.in_([p for p in normalised if p]))
        )
    )
    rows, seen = [], set()
    for customer, phone in zip(customers, normalised, strict=True):
        params = rendering.params_for(campaign.variable_mapping, customer)
        reason = None
        if phone is None:
            reason = _("invalid phone number")
        elif phone in suppressed:
            reason = _("opted out (suppression list)")
        elif phone in seen:
            reason = _("duplicate phone number")
        elif empty := rendering.missing_params(params):
            reason = _("no value for %(v)s") % {"v": ", ".join(empty)}
        seen.add(phone)
        rows.append(
            DryRunRow(
                customer_ref=str(customer.get("id", "")),
                name=str(customer.get("name", "")),
                phone=phone or str(customer.get("phone", "")),
                params=params,
                text=rendering.render(template.body_text, template.parameter_format, params),
                skip_reason=reason,
            )
        )
    return rows
