"""Message rates: an admin adds, changes and deletes what Meta charges per message
(admins only, enforced by the views). Each write is audited in its own commit.

Every rate is in one currency, so an estimate can add them up: a rate in another is
refused at its field unless it is the only rate. The writes that check it take one
advisory lock first, so two admins cannot each add a different currency at once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import date
from decimal import Decimal
from typing import Any

import phonenumbers
import sqlalchemy as sa
from babel.numbers import is_currency
from sqlalchemy.exc import IntegrityError

from app import db
from campaigns import audit, pricing
from campaigns.i18n import _, parse_amount
from campaigns.models import MessageRate, TemplateCategory
from campaigns.services import NotFound
from campaigns.validation import Checker, Invalid

logger = logging.getLogger(__name__)

CURRENCY = re.compile(r"[A-Za-z]{3}")
MAX_RATE = Decimal(100)  # per message: far above any of Meta's, well inside numeric(12, 6)
RATE_DECIMALS = 6  # the column's scale
# Key space of pg_advisory_xact_lock(int, int), apart from login_throttle's (7301, 7302)
# and the rate limiter's one-bigint locks: held by every write of a rate to its commit.
RATES_LOCK = 7303
FIELDS = ("category", "country", "currency", "amount", "effective_from")
UNIQUE_CONSTRAINT = "message_rates_category_country_effective_from_key"


@dataclass(frozen=True)
class RateFields:
    category: TemplateCategory
    country: str
    currency: str
    amount: Decimal
    effective_from: date

    @classmethod
    def of(cls, rate: MessageRate) -> RateFields:
        return cls(*(getattr(rate, name) for name in FIELDS))

    def details(self) -> dict[str, Any]:
        """The rate as audit details (JSON: the amount and date as text)."""
        return {
            "category": self.category.value,
            "country": self.country,
            "currency": self.currency,
            "amount": str(self.amount),
            "effective_from": self.effective_from.isoformat(),
        }


def parse_rate(data: Mapping[str, Any]) -> RateFields:
    """A rate from its form's fields, or :class:`Invalid` with a message per bad field
    (the currency's agreement with the other rates is checked by the writes)."""
    check = Checker()
    raw = {name: data.get(name) for name in FIELDS}
    text = {name: value.strip() if isinstance(value, str) else "" for name, value in raw.items()}

    category = None
    try:
        category = TemplateCategory(text["category"].upper())
    except ValueError:
        check.fail("category", _("Choose a category."))

    country = text["country"].upper()
    if country not in phonenumbers.SUPPORTED_REGIONS:
        check.fail("country", _("Enter a country's two-letter code (ISO 3166), such as BR."))
    elif (main := _main_region(country)) != country:
        # A calling code shared by several countries (+1, +7) is read as its main one
        # (pricing.audience_by_country): a rate for the others would never apply.
        check.fail(
            "country",
            _("Its calling code is shared and read as %(main)s's: enter the rate for %(main)s.")
            % {"main": main},
        )

    currency = text["currency"].upper()
    if not (CURRENCY.fullmatch(currency) and currency.isascii() and is_currency(currency)):
        check.fail("currency", _("Enter a currency's three-letter code (ISO 4217), such as USD."))

    amount = None
    try:
        amount = parse_amount(text["amount"], decimals=RATE_DECIMALS)
    except ValueError:
        check.fail("amount", _("Enter the price of one message, such as 0.0625."))
    else:
        if not 0 <= amount <= MAX_RATE:
            check.fail("amount", _("Enter a price from 0 to 100."))
        elif amount != amount.quantize(Decimal(1).scaleb(-RATE_DECIMALS)):
            check.fail("amount", _("Enter a price with at most 6 decimal places."))

    effective_from = None
    try:
        effective_from = date.fromisoformat(text["effective_from"])
    except ValueError:
        check.fail("effective_from", _("Enter the date the rate applies from."))

    check.done()
    assert category and amount is not None and effective_from  # checked above
    return RateFields(category, country, currency, amount, effective_from)


def add_rate(data: Mapping[str, Any], acting_user_id: int | None) -> MessageRate:
    """Add a rate from a form's fields."""
    fields = parse_rate(data)
    _lock()
    _check_currency(fields.currency, other_than=None)
    _check_unique(fields, other_than=None)
    rate = MessageRate(**asdict(fields), updated_by_id=acting_user_id)
    db.session.add(rate)
    _flush(fields)  # its id, for the audit row
    _audit("message_rate.create", rate, fields.details())
    db.session.commit()
    logger.info("added message rate %s: %s", rate.id, fields)
    return rate


def change_rate(rate_id: int, data: Mapping[str, Any], acting_user_id: int | None) -> MessageRate:
    """Change a rate from its row's form."""
    fields = parse_rate(data)
    _lock()
    rate = _rate_or_not_found(rate_id)
    _check_currency(fields.currency, other_than=rate.id)
    _check_unique(fields, other_than=rate.id)
    before = RateFields.of(rate).details()
    after = fields.details()
    changes = {
        name: audit.change(before[name], after[name])
        for name in FIELDS
        if before[name] != after[name]
        # 0.0625 and 0.062500: the same price, whatever the digits typed
        and not (name == "amount" and Decimal(before[name]) == Decimal(after[name]))
    }
    if not changes:
        db.session.rollback()
        return rate
    for name, value in asdict(fields).items():
        setattr(rate, name, value)
    rate.updated_by_id = acting_user_id
    _flush(fields)
    _audit("message_rate.update", rate, changes)
    db.session.commit()
    return rate


def delete_rate(rate_id: int) -> None:
    """Delete a rate (its country's earlier rate, if any, is then in force again)."""
    _lock()
    rate = _rate_or_not_found(rate_id)
    _audit("message_rate.delete", rate, RateFields.of(rate).details())
    db.session.delete(rate)
    db.session.commit()


def _audit(action: str, rate: MessageRate, details: dict[str, Any]) -> None:
    audit.record(
        db.session,
        action,
        target_type="message_rate",
        target_id=rate.id,
        target_label=_target_label(rate),
        details=details,
    )


def _lock() -> None:
    db.session.execute(sa.select(sa.func.pg_advisory_xact_lock(RATES_LOCK, 0)))


def _rate_or_not_found(rate_id: int) -> MessageRate:
    rate = db.session.get(MessageRate, rate_id)
    if rate is None:
        db.session.rollback()
        raise NotFound(_("There is no such rate."))
    return rate


def _main_region(country: str) -> str:
    """The country numbers of ``country``'s calling code are read as (pricing.py)."""
    return pricing.region_of_prefix(str(phonenumbers.country_code_for_region(country)))


def _check_currency(currency: str, *, other_than: int | None) -> None:
    shared = pricing.rate_currency(db.session, other_than=other_than)
    if shared is not None and shared != currency:
        db.session.rollback()
        raise Invalid(
            {
                "currency": _("All rates share one currency, %(currency)s: enter this rate in it.")
                % {"currency": shared}
            }
        )


def _check_unique(fields: RateFields, *, other_than: int | None) -> None:
    query = sa.select(MessageRate.id).where(
        MessageRate.category == fields.category,
        MessageRate.country == fields.country,
        MessageRate.effective_from == fields.effective_from,
    )
    if other_than is not None:
        query = query.where(MessageRate.id != other_than)
    if db.session.scalar(query) is not None:
        db.session.rollback()
        raise Invalid({"effective_from": _duplicate_message()})


def _flush(fields: RateFields) -> None:
    """Flush, answering the unique constraint as the field error the check gives (the
    lock makes it unlikely; a write outside this module could still race)."""
    try:
        db.session.flush()
    except IntegrityError as error:
        db.session.rollback()
        if UNIQUE_CONSTRAINT in str(error.orig):
            raise Invalid({"effective_from": _duplicate_message()}) from None
        raise


def _duplicate_message() -> str:
    return _("This category and country already have a rate from that date: change that one.")


def _target_label(rate: MessageRate) -> str:
    return f"{rate.country} {rate.category.value} {rate.effective_from.isoformat()}"
