from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
import sqlalchemy as sa

from app import db
from campaigns import pricing
from campaigns.models import AuditEvent, Message, MessageRate, MessageStatus, Role
from campaigns.models import TemplateCategory as C
from campaigns.pricing import CostEstimate
from campaigns.services.pricing import add_rate, change_rate, delete_rate
from campaigns.validation import Invalid
from tests.helpers import demo_campaign

SEEDED = {C.MARKETING: Decimal("0.0625"), C.UTILITY: Decimal("0.0068")}
BRAZIL_FROM = date(2026, 10, 1)


def rate(category: C, country: str, amount: str, day: date, currency: str = "USD") -> None:
    db.session.add(
        MessageRate(
            category=category,
            country=country,
            currency=currency,
            amount=Decimal(amount),
            effective_from=day,
        )
    )
    db.session.commit()


@pytest.fixture
def admin(login_as):
    return login_as(Role.ADMIN)


# --- the estimate ---------------------------------------------------------------------


def test_the_migration_seeds_brazils_rates(app):
    seeded = {
        (r.category, r.country, r.currency, r.effective_from): r.amount
        for r in pricing.rates(db.session)
    }
    assert seeded == {
        (C.MARKETING, "BR", "USD", BRAZIL_FROM): Decimal("0.0625"),
        (C.UTILITY, "BR", "USD", BRAZIL_FROM): Decimal("0.0068"),
        (C.AUTHENTICATION, "BR", "USD", BRAZIL_FROM): Decimal("0.0068"),
    }


def test_the_rate_in_force_is_the_latest_begun_by_the_day(app):
    rate(C.MARKETING, "BR", "0.0500", date(2026, 1, 1))
    rate(C.MARKETING, "BR", "0.0900", date(2027, 1, 1))  # not yet in force
    on = date(2026, 12, 5)
    assert pricing.estimate(db.session, C.MARKETING, {"BR": 1000}, on=on) == CostEstimate(
        "USD", Decimal("62.50"), 1000, 0, ()
    )
    assert pricing.estimate(db.session, C.MARKETING, {"BR": 1000}, on=date(2026, 9, 30)).amount == (
        Decimal("50.00")
    )
    assert pricing.estimate(db.session, C.MARKETING, {"BR": 1000}, on=date(2027, 1, 1)).amount == (
        Decimal("90.00")
    )
    # Before any rate began, Brazil is unpriced.
    before = pricing.estimate(db.session, C.MARKETING, {"BR": 10}, on=date(2025, 12, 31))
    assert before == CostEstimate("USD", Decimal("0.00"), 0, 10, ("BR",))


def test_countries_without_a_rate_are_counted_apart(app):
    rate(C.UTILITY, "US", "0.0040", date(2026, 1, 1))
    got = pricing.estimate(
        db.session, C.UTILITY, {"BR": 3, "us": 2, "PT": 4, "ZZ": 1, "AR": 0}, on=date(2026, 12, 5)
    )
    assert got == CostEstimate("USD", Decimal("0.03"), 5, 5, ("PT", "ZZ"))


def test_the_amount_is_rounded_half_up_to_cents(app):
    rate(C.AUTHENTICATION, "MX", "0.005", date(2026, 1, 1))
    on = date(2026, 12, 5)
    # 0.005 x 1 = 0.005 → 0.01 (half up, not to even); 0.0068 x 3 + 0.005 x 1 = 0.0254 → 0.03
    assert pricing.estimate(db.session, C.AUTHENTICATION, {"MX": 1}, on=on).amount == Decimal(
        "0.01"
    )
    assert pricing.estimate(db.session, C.AUTHENTICATION, {"BR": 3, "MX": 1}, on=on).amount == (
        Decimal("0.03")
    )


def test_without_rates_the_estimate_is_unpriced_in_usd(app):
    db.session.execute(sa.delete(MessageRate))
    db.session.commit()
    got = pricing.estimate(db.session, C.MARKETING, {"BR": 7})
    assert got == CostEstimate("USD", Decimal("0.00"), 0, 7, ("BR",))
    assert pricing.estimate(db.session, C.MARKETING, {}) == CostEstimate(
        "USD", Decimal("0.00"), 0, 0, ()
    )


def test_the_default_day_is_the_databases_today(app):
    today = pricing.today(db.session)
    rate(C.MARKETING, "CO", "0.0100", today)
    assert pricing.estimate(db.session, C.MARKETING, {"CO": 100}).amount == Decimal("1.00")
    db.session.execute(sa.update(MessageRate).values(effective_from=date(9999, 1, 1)))
    db.session.commit()
    assert pricing.estimate(db.session, C.MARKETING, {"CO": 100}).unpriced == 100


# --- the audience by country ----------------------------------------------------------


def test_audience_by_country_counts_the_messages_still_to_send(app, owner):
    campaign = demo_campaign(owner.id)
    rows = [
        ("+5511987654321", MessageStatus.PENDING),
        ("+5521987654321", MessageStatus.QUEUED),
        ("+5531987654321", MessageStatus.SENDING),
        ("+5541987654321", MessageStatus.RETRYING),
        ("+5551987654321", MessageStatus.SENT),  # sent: no longer to send
        ("+5561987654321", MessageStatus.FAILED),
        ("+12125550100", MessageStatus.PENDING),  # +1: the US
        ("+351912345678", MessageStatus.PENDING),  # +351: Portugal (not +35, +3)
        ("+447700900123", MessageStatus.QUEUED),  # +44: the UK
        ("+80012345678", MessageStatus.PENDING),  # +800: no country's
        ("+99912345678", MessageStatus.PENDING),  # no such code
        ("11987654321", MessageStatus.PENDING),  # not E.164
        (None, MessageStatus.PENDING),  # erased
    ]
    db.session.add_all(
        Message(campaign_id=campaign.id, phone=phone, customer_ref=f"C{i}", status=status)
        for i, (phone, status) in enumerate(rows)
    )
    db.session.commit()
    assert pricing.audience_by_country(db.session, campaign.id) == {
        "BR": 4,
        "US": 1,
        "PT": 1,
        "GB": 1,
        "ZZ": 3,
    }
    assert pricing.audience_by_country(db.session, campaign.id + 1) == {}


def test_region_of_a_prefix():
    assert pricing.region_of_prefix("551") == "BR"
    assert pricing.region_of_prefix("12") == "US"
    assert pricing.region_of_prefix("7") == "RU"
    assert pricing.region_of_prefix("") == "ZZ"
    assert pricing.region_of_prefix("99") == "ZZ"
    assert pricing.region_of_prefix("\u0665\u0665\u0661") == "ZZ"  # digits, not ASCII ones


# --- the service ----------------------------------------------------------------------


def form(**changes: str) -> dict[str, str]:
    return {
        "category": "MARKETING",
        "country": "pt",
        "currency": "usd",
        "amount": "0.0500",
        "effective_from": "2026-11-01",
    } | changes


def test_add_change_and_delete_are_audited(app, user_factory):
    admin = user_factory(Role.ADMIN)
    added = add_rate(form(), admin.id)
    assert (added.country, added.currency, added.amount) == ("PT", "USD", Decimal("0.05"))
    assert added.updated_by_id == admin.id
    change_rate(added.id, form(amount="0.0625", effective_from="2026-12-01"), admin.id)
    change_rate(added.id, form(amount="0.062500", effective_from="2026-12-01"), admin.id)
    delete_rate(added.id)
    events = db.session.scalars(
        sa.select(AuditEvent)
        .where(AuditEvent.target_type == "message_rate")
        .order_by(AuditEvent.id)
    ).all()
    assert [(e.action, e.target_id) for e in events] == [
        ("message_rate.create", added.id),
        ("message_rate.update", added.id),  # the same price again is no change
        ("message_rate.delete", added.id),
    ]
    assert events[0].details == {
        "category": "MARKETING",
        "country": "PT",
        "currency": "USD",
        "amount": "0.0500",
        "effective_from": "2026-11-01",
    }
    assert events[1].details == {
        "amount": {"before": "0.050000", "after": "0.0625"},
        "effective_from": {"before": "2026-11-01", "after": "2026-12-01"},
    }
    assert events[2].details["amount"] == "0.062500"
    assert db.session.get(MessageRate, added.id) is None


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"category": "SERVICE"}, "category"),
        ({"category": ""}, "category"),
        ({"country": "XX"}, "country"),
        ({"country": "BRA"}, "country"),
        ({"currency": "US"}, "currency"),
        ({"currency": "ÜSD"}, "currency"),
        ({"currency": "ABC"}, "currency"),  # three letters, but no currency
        ({"country": "CA"}, "country"),  # +1 numbers are read as the US's
        ({"country": "KZ"}, "country"),  # +7 numbers are read as Russia's
        ({"amount": "abc"}, "amount"),
        ({"amount": "-1"}, "amount"),
        ({"amount": "100,01"}, "amount"),
        ({"amount": "0,1234567"}, "amount"),
        ({"amount": "1e3"}, "amount"),
        ({"effective_from": "05/12/2026"}, "effective_from"),
        ({"effective_from": ""}, "effective_from"),
    ],
)
def test_bad_fields_are_refused_at_their_field(app, changes, field):
    with pytest.raises(Invalid) as refused:
        add_rate(form(**changes), None)
    assert set(refused.value.errors) == {field}


def test_every_rate_shares_one_currency_unless_it_is_the_only_one(app):
    with pytest.raises(Invalid) as refused:
        add_rate(form(currency="BRL"), None)
    assert "USD" in refused.value.errors["currency"]
    db.session.execute(sa.delete(MessageRate).where(MessageRate.category != C.MARKETING))
    db.session.commit()
    only = db.session.scalars(sa.select(MessageRate)).one()
    changed = change_rate(only.id, form(country="BR", currency="brl", amount="0,35"), None)
    assert (changed.currency, changed.amount) == ("BRL", Decimal("0.35"))
    assert add_rate(form(currency="BRL"), None).currency == "BRL"


def test_a_duplicate_is_a_field_error(app):
    with pytest.raises(Invalid) as refused:
        add_rate(form(country="br", effective_from="2026-10-01"), None)
    assert set(refused.value.errors) == {"effective_from"}
    other = add_rate(form(), None)
    with pytest.raises(Invalid):
        change_rate(other.id, form(country="BR", effective_from="2026-10-01"), None)


# --- the Settings page ----------------------------------------------------------------


def test_an_admin_sees_the_seeded_rates(client, admin):
    page = client.get("/settings/")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert "Message rates" in text and "Brazil" in text
    assert "$0.0625" in text and "$0.0068" in text
    assert "10/1/26" in text  # the reader's date format
    pt = client.get("/settings/", headers={"Accept-Language": "pt-BR"}).get_data(as_text=True)
    assert "Tarifas de mensagens" in pt and "Brasil" in pt
    assert "US$\xa00,0625" in pt and "01/10/2026" in pt
    assert 'href="/settings/"' in client.get("/").get_data(as_text=True)


def test_adding_a_rate_in_portuguese(client, admin):
    response = client.post(
        "/settings/rates",
        data=form(country="ar", amount="0,0618", currency="USD"),
        headers={"Accept-Language": "pt-BR"},
    )
    assert response.status_code == 303
    added = db.session.scalars(sa.select(MessageRate).where(MessageRate.country == "AR")).one()
    assert added.amount == Decimal("0.0618") and added.updated_by_id == admin.id
    page = client.get("/settings/", headers={"Accept-Language": "pt-BR"}).get_data(as_text=True)
    assert "Argentina" in page and "US$\xa00,0618" in page


def test_bad_input_is_shown_at_its_field(client, admin):
    duplicate = client.post("/settings/rates", data=form(country="BR", effective_from="2026-10-01"))
    assert duplicate.status_code == 422
    assert "already have a rate from that date" in duplicate.get_data(as_text=True)
    currency = client.post("/settings/rates", data=form(currency="EUR"))
    assert currency.status_code == 422
    assert "All rates share one currency, USD" in currency.get_data(as_text=True)
    assert 'aria-invalid="true" aria-describedby="currency-error"' in currency.get_data(
        as_text=True
    )
    empty = client.post("/settings/rates", data={})
    assert empty.status_code == 422


def test_editing_and_deleting_a_rate(client, admin):
    brazil = db.session.scalars(
        sa.select(MessageRate).where(MessageRate.category == C.MARKETING)
    ).one()
    edit = client.get(f"/settings/rates/{brazil.id}", headers={"Accept-Language": "pt-BR"})
    assert edit.status_code == 200 and 'value="0,0625"' in edit.get_data(as_text=True)
    saved = client.post(f"/settings/rates/{brazil.id}", data=form(country="BR", amount="0.07"))
    assert saved.status_code == 303
    db.session.refresh(brazil)
    assert brazil.amount == Decimal("0.07") and brazil.country == "BR"
    bad = client.post(f"/settings/rates/{brazil.id}", data=form(amount="1000"))
    assert bad.status_code == 422
    deleted = client.post(f"/settings/rates/{brazil.id}/delete", headers={"HX-Request": "true"})
    assert deleted.status_code == 204 and deleted.headers["HX-Redirect"] == "/settings/"
    assert db.session.get(MessageRate, brazil.id) is None
    assert client.post(f"/settings/rates/{brazil.id}/delete").status_code == 303
    assert client.get(f"/settings/rates/{brazil.id}").status_code == 404
    assert client.post(f"/settings/rates/{brazil.id}", data=form()).status_code == 404
    page = client.get("/settings/").get_data(as_text=True)
    assert "hx-confirm" in page
    audit_page = client.get("/audit/?action=message_rate.delete").get_data(as_text=True)
    assert "Message rate deleted" in audit_page and "Price per message" in audit_page


@pytest.mark.parametrize("role", [Role.VIEWER, Role.SUPERVISOR])
def test_only_admins_reach_the_settings(client, login_as, role):
    login_as(role)
    rate_id = db.session.scalar(sa.select(MessageRate.id).limit(1))
    assert client.get("/settings/").status_code == 403
    assert client.post("/settings/rates", data=form()).status_code == 403
    assert client.post(f"/settings/rates/{rate_id}", data=form()).status_code == 403
    assert client.post(f"/settings/rates/{rate_id}/delete").status_code == 403
    assert db.session.get(MessageRate, rate_id) is not None
    assert 'href="/settings/"' not in client.get("/").get_data(as_text=True)
