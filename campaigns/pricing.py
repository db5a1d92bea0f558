"""What Meta charges for a campaign's messages (placeholder until the rates table lands:
every recipient unpriced)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from app import AnySession
from campaigns.models import TemplateCategory


@dataclass(frozen=True)
class CostEstimate:
    currency: str
    amount: Decimal
    priced: int
    unpriced: int
    unpriced_countries: tuple[str, ...]


def estimate(
    session: AnySession, category: TemplateCategory, recipients_by_country: Mapping[str, int]
) -> CostEstimate:
    counted = {country: n for country, n in recipients_by_country.items() if n}
    return CostEstimate("USD", Decimal("0.00"), 0, sum(counted.values()), tuple(sorted(counted)))


def audience_by_country(session: AnySession, campaign_id: int) -> dict[str, int]:
    return {}
