"""What a campaign's messages will cost at Meta's rates: reads only, no commits.

Meta charges per delivered template message, by the template's category and the
recipient's country (the country of the number's calling code). The rates are
``message_rates`` rows an admin keeps on the Settings page (``services/pricing.py``):
the rate in force for a category and a country on a day is the row with the latest
``effective_from`` on or before that day, so a new rate card is entered ahead of time
and takes over on its date. All rows share one currency (the service keeps it so).

The estimate is Meta's list price for every message delivered: a provider's own fee,
Meta's volume tiers and free service windows are not in it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date
from decimal import ROUND_HALF_UP, Decimal

import phonenumbers
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import distinct_on

from app import AnySession
from campaigns import clock
from campaigns.models import IN_FLIGHT_MESSAGE_STATUSES, Message, MessageRate, TemplateCategory

DEFAULT_CURRENCY = "USD"  # Meta's own rate card's, when there is no rate to say otherwise
UNKNOWN_REGION = "ZZ"  # CLDR's unknown region: a number whose calling code is no country's
CENTS = Decimal("0.01")
# E.164 calling codes are 1 to 3 digits and prefix-free: no code starts another.
CALLING_CODE_DIGITS = 3


@dataclass(frozen=True)
class CostEstimate:
    currency: str
    amount: Decimal  # rounded to cents, half up
    priced: int  # recipients in a country with a rate in force
    unpriced: int  # recipients in a country without one (not in ``amount``)
    unpriced_countries: tuple[str, ...]  # sorted


def today(session: AnySession) -> date:
    """The date now by the database's clock, in UTC (every process agrees on it)."""
    return clock.database_now(session).astimezone(UTC).date()


def estimate(
    session: AnySession,
    category: TemplateCategory,
    recipients_by_country: Mapping[str, int],
    *,
    on: date | None = None,
) -> CostEstimate:
    """What ``recipients_by_country`` messages of ``category`` cost at the rates in force
    on ``on`` (default: today by the database's clock)."""
    counts: Counter[str] = Counter()
    for country, count in recipients_by_country.items():
        if count > 0:
            counts[country.upper()] += count
    day = on or today(session)
    in_force: dict[str, MessageRate] = {}
    if counts:
        in_force = {
            rate.country: rate
            for rate in session.scalars(
                sa.select(MessageRate)
                .where(
                    MessageRate.category == category,
                    MessageRate.country.in_(sorted(counts)),
                    MessageRate.effective_from <= day,
                )
                # Postgres keeps each country's first row: the latest begun by that day.
                .ext(distinct_on(MessageRate.country))
                .order_by(MessageRate.country, MessageRate.effective_from.desc())
            )
        }
    total = sum((counts[country] * rate.amount for country, rate in in_force.items()), Decimal(0))
    unpriced_countries = tuple(sorted(set(counts) - set(in_force)))
    if in_force:
        currency = next(iter(in_force.values())).currency
    else:
        currency = rate_currency(session) or DEFAULT_CURRENCY
    return CostEstimate(
        currency=currency,
        amount=total.quantize(CENTS, rounding=ROUND_HALF_UP),
        priced=sum(counts[country] for country in in_force),
        unpriced=sum(counts[country] for country in unpriced_countries),
        unpriced_countries=unpriced_countries,
    )


def audience_by_country(session: AnySession, campaign_id: int) -> dict[str, int]:
    """The campaign's messages still to send, counted by the recipient's country
    (ISO 3166 alpha-2; "ZZ" for a number whose calling code is no country's).

    One statement groups them by the first three digits after the ``+`` of their E.164
    number, through the (campaign, status) index, so a million rows come back as a few
    hundred groups; each prefix's calling code is then found in Python. A code shared
    by several countries (+1, +7) counts as its main country's (the US, Russia), as
    phonenumbers names it.
    """
    prefix = sa.case(
        (Message.phone.startswith("+"), sa.func.substr(Message.phone, 2, CALLING_CODE_DIGITS)),
        else_="",
    ).label("prefix")
    rows = session.execute(
        sa.select(prefix, sa.func.count())
        .where(
            Message.campaign_id == campaign_id,
            Message.status.in_(sorted(IN_FLIGHT_MESSAGE_STATUSES)),
            Message.phone.is_not(None),
        )
        .group_by(prefix)
    )
    countries: Counter[str] = Counter()
    for digits, count in rows:
        countries[region_of_prefix(digits)] += count
    return dict(countries)


def region_of_prefix(digits: str) -> str:
    """The country of a number whose digits after the ``+`` start with ``digits``."""
    for length in range(1, CALLING_CODE_DIGITS + 1):
        code = digits[:length]
        if len(code) < length or not code.isascii() or not code.isdigit():
            break
        if int(code) in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            region = phonenumbers.region_code_for_country_code(int(code))
            # Non-geographic codes (+800, +882…) are "001": no country's rate applies.
            return region if region in phonenumbers.SUPPORTED_REGIONS else UNKNOWN_REGION
    return UNKNOWN_REGION


def rates(session: AnySession) -> list[MessageRate]:
    """Every rate, for the Settings page: by country, category, newest first."""
    return list(
        session.scalars(
            sa.select(MessageRate).order_by(
                MessageRate.country, MessageRate.category, MessageRate.effective_from.desc()
            )
        )
    )


def rate_currency(session: AnySession, *, other_than: int | None = None) -> str | None:
    """The currency the rates share (other than rate ``other_than``'s), or None when
    there are none."""
    query = sa.select(MessageRate.currency).limit(1)
    if other_than is not None:
        query = query.where(MessageRate.id != other_than)
    return session.scalar(query)
