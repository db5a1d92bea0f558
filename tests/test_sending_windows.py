"""Sending windows in each recipient's time zone: the zones (Brazil by area code, other
countries by phonenumbers, a customer field), the window's arithmetic, the pump queuing
only the open zones' messages in id order across them, the progress's waiting count and
ETA, the API and the form, and two concurrent campaigns with a real worker."""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import phonenumbers
import pytest
import sqlalchemy as sa
from phonenumbers import timezone as phone_timezones

from app import db
from campaigns import (
    campaign_states,
    counters,
    erp,
    fanout,
    maintenance,
    message_states,
    preflight,
    pump,
    queues,
    send_windows,
    sending,
)
from campaigns import time_zones as tz
from campaigns.clock import database_now
from campaigns.models import Campaign, CampaignStatus, Message, MessageStatus, MessageTemplate, Role
from campaigns.progress import get_progress
from campaigns.send_windows import Window
from campaigns.services import campaign_defaults, personal_data
from campaigns.services.campaigns import (
    change_send_window,
    create_campaign,
    duplicate_campaign,
    pause_campaign,
    resume_campaign,
    send_campaign_now,
    template_variables_for,
)
from campaigns.services.demo import seed_demo
from campaigns.services.templates import default_sender
from campaigns.validation import Checker, Invalid, parse_campaign, parse_send_window
from tests.helpers import (
    assert_counters_match_rows,
    counted_statements,
    csrf_token_from,
    jobs,
    lift_limits,
    wait_for,
)

SP, MANAUS, RIO_BRANCO = tz.SAO_PAULO, tz.MANAUS, tz.RIO_BRANCO
ALL_DAYS = [0, 1, 2, 3, 4, 5, 6]
S = MessageStatus

# -- the zones


def test_every_brazilian_ddd_in_use_has_its_states_zone():
    in_use = [
        *range(11, 20),
        *(21, 22, 24, 27, 28, 31, 32, 33, 34, 35, 37, 38),
        *range(41, 50),
        *(51, 53, 54, 55),
        *range(61, 70),
        *(71, 73, 74, 75, 77, 79),
        *range(81, 90),
        *range(91, 100),
    ]
    assert sorted(int(ddd) for ddd in tz.BRAZIL_DDD) == in_use
    assert set(tz.BRAZIL_DDD.values()) == {SP, MANAUS, RIO_BRANCO}
    by_zone = {zone: {d for d, z in tz.BRAZIL_DDD.items() if z == zone} for zone in (MANAUS,)}
    # -4: AM (92, 97), RR (95), RO (69), MT (65, 66), MS (67); -5: AC (68)
    assert by_zone[MANAUS] == {"65", "66", "67", "69", "92", "95", "97"}
    assert tz.BRAZIL_DDD["68"] == RIO_BRANCO


@pytest.mark.parametrize(
    ("phone", "zone"),
    [
        ("+5511987650001", SP),
        ("+5521987650001", SP),
        ("+5581987650001", SP),  # Recife, not Fernando de Noronha
        ("+5592987650001", MANAUS),
        ("+5565987650001", MANAUS),
        ("+5568987650001", RIO_BRANCO),
        ("+5597987650001", MANAUS),  # spans -4 and -5: most of it keeps Manaus time
        ("+5520987650001", SP),  # no such DDD: Brasília time
    ],
)
def test_a_brazilian_number_takes_its_ddds_zone(phone, zone):
    assert tz.from_number(phone, "Europe/Lisbon") == zone


def test_phonenumbers_own_data_would_put_recife_in_noronha():
    # Why Brazil has a table of its own: the library's answer for DDD 81 is an hour off.
    number = phonenumbers.parse("+5581987650001")
    assert phone_timezones.time_zones_for_number(number) == (tz.NORONHA,)


@pytest.mark.parametrize(
    ("phone", "zone"),
    [
        ("+12125550100", "America/New_York"),
        ("+14155550100", "America/Los_Angeles"),
        ("+525512345678", "America/Mexico_City"),
        ("+8613800138000", "Asia/Shanghai"),
        ("+80012345678", "America/Recife"),  # no zone: the fallback
        ("+999", "America/Recife"),  # not a number
    ],
)
def test_other_countries_by_phonenumbers_and_a_fallback(phone, zone):
    assert tz.from_number(phone, "America/Recife") == zone


@pytest.mark.parametrize(
    ("phone", "zone"),
    [
        ("+34612345678", "Europe/Madrid"),  # not Atlantic/Canary
        ("+351912345678", "Europe/Lisbon"),  # not Atlantic/Azores
        ("+593991234567", "America/Guayaquil"),  # not Pacific/Galapagos
        ("+79161234567", "Europe/Moscow"),  # a Moscow mobile, not Asia/Krasnoyarsk
        ("+77011234567", "Asia/Almaty"),  # Kazakhstan's, not Asia/Krasnoyarsk
        ("+19075551234", "America/Anchorage"),  # Alaska, not America/Adak
        ("+61412345678", "Australia/Sydney"),  # not Lord Howe Island (MAIN_ZONES)
        ("+447400123456", "Europe/London"),
    ],
)
def test_a_country_of_several_zones_takes_its_main_zone(phone, zone):
    candidates = phone_timezones.time_zones_for_number(phonenumbers.parse(phone))
    assert len(candidates) > 1 and zone in candidates  # phonenumbers does not say
    assert tz.from_number(phone, SP) == zone


def test_without_the_countrys_zones_the_middle_one_or_the_first_of_equal_hours():
    # UK mobiles: London, Guernsey, Jersey, Isle of Man keep the same hours: the first.
    uk = list(phone_timezones.time_zones_for_number(phonenumbers.parse("+447911123456")))
    assert tz.representative(uk) == uk[0]
    # Russian mobiles span Kaliningrad's to Kamchatka's hours: one in the middle, neither end.
    candidates = list(phone_timezones.time_zones_for_number(phonenumbers.parse("+79161234567")))
    middle = tz.representative(candidates)
    assert middle in candidates
    offsets = sorted(
        datetime(2026, 1, 15, tzinfo=UTC).astimezone(ZoneInfo(z)).utcoffset() for z in candidates
    )
    mine = datetime(2026, 1, 15, tzinfo=UTC).astimezone(ZoneInfo(middle)).utcoffset()
    assert offsets[0] < mine < offsets[-1]
    # A region the tz database does not list: the same rule.
    assert tz.representative(candidates, "XX") == middle


def test_the_zone_names_read_from_customer_data_are_not_all_kept_in_memory():
    tz._loads.cache_clear()
    for i in range(3000):
        assert not tz.is_zone(f"Nowhere/Place_{i}")
    assert tz.is_zone("America/Manaus")
    assert tz._loads.cache_info().currsize <= 1024
    assert not tz.is_zone("America/" + "x" * 5000)  # refused before it is looked up
    assert not tz.is_zone("localtime") and not tz.is_zone("/etc/localtime")


def test_a_customer_field_naming_a_zone_wins_and_a_bad_one_falls_back_to_the_number():
    customer = {"city": " America/Rio_Branco ", "state": "Mars/Olympus", "name": "localtime"}
    assert tz.for_recipient("+5511987650001", customer, "city", SP) == RIO_BRANCO
    assert tz.for_recipient("+5592987650001", customer, "state", SP) == MANAUS
    assert tz.for_recipient("+5592987650001", customer, "name", SP) == MANAUS
    assert tz.for_recipient("+5592987650001", {"city": 3}, "city", SP) == MANAUS
    assert tz.for_recipient(None, customer, None, SP) is None
    for bad in ("../../etc/passwd", "/etc/localtime", "", "x" * 80):
        assert not tz.is_zone(bad)


# -- the window's arithmetic

BUSINESS = Window(time(9), time(20), frozenset(range(6)))  # 09:00-20:00, Monday to Saturday


def _at(zone: str, *args: int) -> datetime:
    return datetime(*args, tzinfo=ZoneInfo(zone)).astimezone(UTC)


def test_open_from_start_to_end_on_its_days_in_the_zones_local_time():
    # Friday 4 December 2026; Saturday 5th; Sunday 6th
    assert send_windows.is_open(BUSINESS, SP, _at(SP, 2026, 12, 5, 9, 0))  # start included
    assert not send_windows.is_open(BUSINESS, SP, _at(SP, 2026, 12, 5, 8, 59))
    assert send_windows.is_open(BUSINESS, SP, _at(SP, 2026, 12, 5, 19, 59))
    assert not send_windows.is_open(BUSINESS, SP, _at(SP, 2026, 12, 5, 20, 0))  # end excluded
    assert send_windows.is_open(BUSINESS, SP, _at(SP, 2026, 12, 4, 12, 0))
    assert not send_windows.is_open(BUSINESS, SP, _at(SP, 2026, 12, 6, 12, 0))  # Sunday
    # The same instant: 09:30 in São Paulo is 08:30 in Manaus, closed there.
    instant = _at(SP, 2026, 12, 4, 9, 30)
    assert send_windows.open_zones(BUSINESS, [SP, MANAUS, RIO_BRANCO], instant) == [SP]
    assert send_windows.next_open(BUSINESS, MANAUS, instant) == _at(MANAUS, 2026, 12, 4, 9, 0)
    assert send_windows.next_close(BUSINESS, SP, instant) == _at(SP, 2026, 12, 4, 20, 0)
    assert send_windows.next_close(BUSINESS, MANAUS, instant) is None
    # Saturday evening: next Monday 09:00 (Sunday is not a day of the window)
    saturday_night = _at(SP, 2026, 12, 5, 21, 0)
    assert send_windows.next_open(BUSINESS, SP, saturday_night) == _at(SP, 2026, 12, 7, 9, 0)
    assert send_windows.first_opening(BUSINESS, [SP, MANAUS], saturday_night) == _at(
        SP, 2026, 12, 7, 9, 0
    )


def test_a_window_crossing_midnight_belongs_to_the_day_it_opens():
    friday_night = Window(time(22), time(6), frozenset({4}))  # Friday 22:00 to Saturday 06:00
    assert friday_night.crosses_midnight
    assert send_windows.is_open(friday_night, SP, _at(SP, 2026, 12, 4, 23, 0))
    assert send_windows.is_open(friday_night, SP, _at(SP, 2026, 12, 5, 5, 59))
    assert not send_windows.is_open(friday_night, SP, _at(SP, 2026, 12, 5, 6, 0))
    assert not send_windows.is_open(friday_night, SP, _at(SP, 2026, 12, 5, 23, 0))  # Saturday's
    assert not send_windows.is_open(friday_night, SP, _at(SP, 2026, 12, 4, 1, 0))  # Thursday's
    assert send_windows.next_open(friday_night, SP, _at(SP, 2026, 12, 5, 7, 0)) == _at(
        SP, 2026, 12, 11, 22, 0
    )


def test_a_zone_with_daylight_saving_keeps_its_local_hours():
    york = "America/New_York"
    office = Window(time(9), time(17), frozenset(range(5)))
    # Winter: UTC-5, 09:00 is 14:00 UTC; summer: UTC-4, 13:00 UTC.
    assert not send_windows.is_open(office, york, datetime(2026, 1, 14, 13, 30, tzinfo=UTC))
    assert send_windows.is_open(office, york, datetime(2026, 1, 14, 14, 0, tzinfo=UTC))
    assert send_windows.is_open(office, york, datetime(2026, 7, 15, 13, 30, tzinfo=UTC))
    assert not send_windows.is_open(office, york, datetime(2026, 7, 15, 21, 0, tzinfo=UTC))
    # Across the spring change (Sunday 8 March 2026): Friday 17:00 EST to Monday 09:00 EDT.
    friday_close = datetime(2026, 3, 6, 22, 0, tzinfo=UTC)
    assert send_windows.next_open(office, york, friday_close) == datetime(
        2026, 3, 9, 13, 0, tzinfo=UTC
    )
    # A window opening in the skipped hour (02:30 that Sunday) opens once it is past.
    night = Window(time(2, 30), time(5), frozenset({6}))
    opens = send_windows.next_open(night, york, datetime(2026, 3, 8, 5, 0, tzinfo=UTC))
    assert opens is not None and opens.astimezone(ZoneInfo(york)).hour == 3


def test_the_drain_waits_for_each_zones_window():
    at = _at(SP, 2026, 12, 4, 9, 0)  # Friday: São Paulo open, Manaus an hour to go
    assert send_windows.drain_seconds(BUSINESS, {SP: 60}, at, 1.0) == 60
    assert send_windows.drain_seconds(BUSINESS, {MANAUS: 60}, at, 1.0) == 3600 + 60
    # Both: São Paulo's first, then Manaus's once it opens.
    assert send_windows.drain_seconds(BUSINESS, {SP: 60, MANAUS: 60}, at, 1.0) == 3600 + 60
    # More than a day's window: the rest waits for the next one (Saturday 09:00).
    day = 11 * 3600
    assert send_windows.drain_seconds(BUSINESS, {SP: day + 60}, at, 1.0) == 24 * 3600 + 60
    assert send_windows.drain_seconds(BUSINESS, {}, at, 1.0) == 0
    assert send_windows.drain_seconds(BUSINESS, {SP: 5}, at, 0) is None


# -- validation


def _window(**kw: Any) -> dict[str, Any] | None:
    check = Checker()
    window = parse_send_window(kw or None, check)
    if check.errors:
        raise Invalid(check.errors)
    return window


def test_the_window_is_checked_field_by_field():
    assert _window(start="09:00", end="20:00", days=[5, 0, 0]) == {
        "start": "09:00",
        "end": "20:00",
        "days": [0, 5],
    }
    assert _window(start="22:00", end="06:00", days="4") == {
        "start": "22:00",
        "end": "06:00",
        "days": [4],
    }
    assert _window() is None
    cases = [
        ({"start": "9:00", "end": "20:00", "days": [0]}, "send_window.start"),
        ({"start": "09:00", "end": "24:01", "days": [0]}, "send_window.end"),
        ({"start": "09:00", "end": "09:00", "days": [0]}, "send_window.end"),
        ({"start": "09:00", "end": "20:00", "days": []}, "send_window.days"),
        ({"start": "09:00", "end": "20:00", "days": [7]}, "send_window.days"),
        ({"start": "09:00", "end": "20:00", "days": [True]}, "send_window.days"),
        ({"start": "09:00", "end": "20:00"}, "send_window.days"),
    ]
    for raw, field in cases:
        with pytest.raises(Invalid) as refused:
            _window(**raw)
        assert field in refused.value.errors, raw
    check = Checker()
    parse_send_window("09-20", check)
    assert "send_window" in check.errors


@pytest.mark.parametrize("day", ["²", "①", "٣", "3.0", "07", 3.0, None, "-1"])
def test_a_day_that_is_not_a_digit_0_to_6_is_a_field_error(app, day):
    with pytest.raises(Invalid) as refused:
        _window(start="09:00", end="20:00", days=[day])
    assert "send_window.days" in refused.value.errors
    with pytest.raises(Invalid) as refused:
        _window(start="09:00", end="20:00", days=f"1,{day}")
    assert "send_window.days" in refused.value.errors
    form = {"window_start": "09:00", "window_end": "20:00", "window_days": ["1", str(day)]}
    with pytest.raises(Invalid) as refused:
        campaign_defaults.parse_defaults(form)
    assert "window_days" in refused.value.errors


def test_a_window_may_end_at_24_00_the_end_of_the_day(app):
    whole = _window(start="00:00", end="24:00", days=[0, 2])
    assert whole == {"start": "00:00", "end": "24:00", "days": [0, 2]}
    assert _window(start="18:00", end=" 24:00 ", days=[4])["end"] == "24:00"
    for bad in ("24:01", "24:30", "25:00"):
        with pytest.raises(Invalid) as refused:
            _window(start="00:00", end=bad, days=[0])
        assert "send_window.end" in refused.value.errors
    with pytest.raises(Invalid) as refused:
        _window(start="24:00", end="20:00", days=[0])  # only an end
    assert "send_window.start" in refused.value.errors
    window = Window.of(whole)
    assert window is not None and window.as_json() == whole
    # Monday 2026-01-05 and Wednesday: open all day, to the last second; Tuesday closed.
    assert send_windows.is_open(window, SP, _at(SP, 2026, 1, 5, 0, 0))
    assert send_windows.is_open(window, SP, _at(SP, 2026, 1, 5, 23, 59, 59))
    assert not send_windows.is_open(window, SP, _at(SP, 2026, 1, 6, 0, 0))
    assert send_windows.next_close(window, SP, _at(SP, 2026, 1, 5, 12)) == _at(SP, 2026, 1, 6)
    assert send_windows.next_open(window, SP, _at(SP, 2026, 1, 6, 12)) == _at(SP, 2026, 1, 7)
    evening = Window.of({"start": "18:00", "end": "24:00", "days": [4]})
    assert evening is not None
    assert send_windows.is_open(evening, SP, _at(SP, 2026, 1, 9, 23, 59))
    assert not send_windows.is_open(evening, SP, _at(SP, 2026, 1, 10, 0, 0))
    assert not send_windows.is_open(evening, SP, _at(SP, 2026, 1, 9, 17, 59))


# -- the campaign and its messages


def _fields(size: int, window: dict[str, Any] | None, name: str = "Windows", **kw: Any):
    """The whole country's first ``size`` customers (São Paulo's and Manaus's zones, and
    others), on the demo sender and promo template."""
    seed_demo()
    template = db.session.query(MessageTemplate).filter_by(name="promo_weekend").one()
    return parse_campaign(
        {
            "name": name,
            "sender_id": default_sender().id,
            "template_id": template.id,
            "segment": {"max_audience": size, "opted_in_only": False},
            "variables": {
                "first_name": {"field": "first_name"},
                "discount": {"text": "10%"},
                "city": {"field": "city"},
                "coupon": {"text": "X1"},
            },
            "send_window": window,
            **kw,
        },
        template_variables_for(template.id),
    )


def _open_in(zone: str, now: datetime) -> dict[str, Any]:
    """A window open in ``zone`` for half an hour either side of ``now``, every day: closed
    in a zone an hour behind or ahead, whose next opening is then 30 minutes or a day off."""
    local = now.astimezone(ZoneInfo(zone))
    return {
        "start": (local - timedelta(minutes=30)).strftime("%H:%M"),
        "end": (local + timedelta(minutes=30)).strftime("%H:%M"),
        "days": ALL_DAYS,
    }


def _zones(campaign_id: int, status: MessageStatus | None = None) -> dict[str | None, int]:
    query = sa.select(Message.time_zone, sa.func.count()).where(Message.campaign_id == campaign_id)
    if status is not None:
        query = query.where(Message.status == status)
    return dict(db.session.execute(query.group_by(Message.time_zone)).all())


@pytest.fixture
def loaded(app, owner, live_server) -> Campaign:
    """A sending campaign of 200 customers over Brazil, loaded, open in São Paulo's zone
    now and closed in Manaus's (an hour behind), its limits lifted."""
    lift_limits(owner)
    now = database_now(db.session)
    campaign = create_campaign(_fields(200, _open_in(SP, now)), owner.id)
    send_campaign_now(campaign.id, owner.id)
    fanout.load_audience(campaign.id, app.config)
    return db.session.get(Campaign, campaign.id, populate_existing=True)


def test_the_fan_out_gives_every_recipient_a_zone_and_counts_the_pending(app, loaded):
    zones = _zones(loaded.id)
    assert zones.get(SP) and zones.get(MANAUS)
    pending = _zones(loaded.id, S.PENDING)
    assert None not in pending  # every valid number has its zone
    assert loaded.window_zones == {zone: n for zone, n in pending.items()}
    # Its rows: Manaus's numbers, São Paulo's in SP's zone.
    for message in db.session.scalars(sa.select(Message).filter_by(campaign_id=loaded.id)):
        if message.status is not S.SKIPPED:
            assert message.time_zone == tz.from_number(message.phone, "x")


def test_the_pump_queues_only_the_open_zones(app, loaded):
    pending = _zones(loaded.id, S.PENDING)
    assert pump.pump(loaded.id) is True
    queued = _zones(loaded.id, S.QUEUED)
    assert set(queued) == {SP}, queued
    assert _zones(loaded.id, S.PENDING)[MANAUS] == pending[MANAUS]
    campaign = db.session.get(Campaign, loaded.id, populate_existing=True)
    assert campaign.window_zones == {
        zone: n for zone, n in _zones(loaded.id, S.PENDING).items() if n
    }
    assert_counters_match_rows(loaded.id)


def test_the_open_zones_are_taken_in_id_order_across_them(app, loaded):
    order = list(
        db.session.execute(
            sa.select(Message.id, Message.time_zone)
            .where(Message.campaign_id == loaded.id, Message.status == S.PENDING)
            .order_by(Message.id)
        )
    )
    both = [row.id for row in order if row.time_zone in (SP, MANAUS)][:30]
    ids, zone_of = message_states.queue_next_in_zones(db.session, loaded.id, 30, [SP, MANAUS])
    assert ids == both
    taken = Counter(zone_of[message_id] for message_id in ids)
    assert taken[SP] and taken[MANAUS]  # interleaved, not one zone after the other
    only_manaus = [row.id for row in order if row.time_zone == MANAUS and row.id not in ids][:5]
    ids, zone_of = message_states.queue_next_in_zones(db.session, loaded.id, 5, [MANAUS])
    assert (ids, set(zone_of.values())) == (only_manaus, {MANAUS})
    db.session.commit()
    assert_counters_match_rows(loaded.id)


def test_with_only_closed_zones_left_the_pump_comes_back_when_one_opens(app, loaded):
    campaign = db.session.get(Campaign, loaded.id)
    # Only Manaus's messages left (the others cancelled), its window 30 minutes away.
    cancelled = db.session.execute(
        sa.update(Message)
        .where(Message.campaign_id == loaded.id, Message.time_zone != MANAUS)
        .where(Message.status == S.PENDING)
        .values(status=S.CANCELLED)
    ).rowcount
    counters.apply(db.session, loaded.id, {"pending": -cancelled, "cancelled": cancelled})
    db.session.execute(sa.text("DELETE FROM procrastinate_jobs WHERE task_name = 'campaigns.pump'"))
    db.session.commit()  # not by the pump: it finds its counts off the counter, recounts
    now = database_now(db.session)
    assert pump.pump(loaded.id) is True
    assert not _zones(loaded.id, S.QUEUED)
    campaign = db.session.get(Campaign, loaded.id, populate_existing=True)
    assert set(campaign.window_zones) == {MANAUS}
    # Manaus opens in 30 minutes: the pump comes back in HELD_INTERVAL_SECONDS, not 2 s.
    next_run = jobs(queues.PUMP_TASK)[-1]["scheduled_at"]
    wait = (next_run - now).total_seconds()
    assert pump.HELD_INTERVAL_SECONDS - 10 < wait <= pump.HELD_INTERVAL_SECONDS + 1
    # The window widened: the pump is brought forward and takes them.
    change_send_window(loaded.id, None, loaded.owner_id)
    assert jobs(queues.PUMP_TASK)[-1]["scheduled_at"] <= database_now(db.session)
    assert pump.pump(loaded.id) is True
    assert set(_zones(loaded.id, S.QUEUED)) == {MANAUS}


def test_a_campaign_without_a_window_runs_the_statements_it_did(app, owner, live_server):
    lift_limits(owner)
    campaign = create_campaign(_fields(20, None), owner.id)
    send_campaign_now(campaign.id, owner.id)
    fanout.load_audience(campaign.id, app.config)
    campaign = db.session.get(Campaign, campaign.id, populate_existing=True)
    assert campaign.window_zones is None  # nothing counted
    assert all(_zones(campaign.id))  # the zones are set all the same
    with counted_statements() as statements:
        pump.pump(campaign.id)
    # Neither the messages' zones nor the campaign's counts are read or written.
    assert not [s for s in statements if re.search(r"\btime_zone\b|z\.zone", s)]
    assert not [s for s in statements if s.startswith("UPDATE campaigns") and "window_zones" in s]
    assert _zones(campaign.id, S.PENDING) == {}


def test_the_progress_says_how_many_wait_and_when_their_window_opens(app, loaded, client, login_as):
    pump.pump(loaded.id)
    progress = get_progress(db.session.get(Campaign, loaded.id, populate_existing=True))
    manaus = _zones(loaded.id, S.PENDING)[MANAUS]
    assert progress.waiting_for_window == manaus
    now = progress.read_at
    assert progress.next_window_at is not None
    assert now < progress.next_window_at <= now + timedelta(minutes=30)
    # The ETA waits for Manaus's window: at least until it opens.
    assert progress.eta_seconds is not None
    assert progress.eta_seconds >= (progress.next_window_at - now).total_seconds()
    body = progress.as_dict()
    assert body["waiting_for_window"] == manaus and body["next_window_at"]
    login_as(Role.VIEWER)
    page = client.get(f"/campaigns/{loaded.id}").get_data(as_text=True)
    assert f"{manaus} recipients wait for their sending window" in page
    assert "in each recipient&#39;s time zone" in page or "in each recipient's time zone" in page


def test_the_api_takes_shows_and_changes_the_window(app, client, token_for, live_server):
    headers = token_for(Role.SUPERVISOR)
    seed_demo()
    template = db.session.query(MessageTemplate).filter_by(name="promo_weekend").one()
    body = {
        "name": "API window",
        "sender_id": default_sender().id,
        "template_id": template.id,
        "segment": {"state": "SP"},
        "variables": {
            "first_name": {"field": "first_name"},
            "discount": {"text": "10%"},
            "city": {"field": "city"},
            "coupon": {"text": "X1"},
        },
        "send_window": {"start": "09:00", "end": "20:00", "days": [0, 1, 2, 3, 4, 5]},
        "time_zone_field": "city",
    }
    created = client.post("/api/v1/campaigns", json=body, headers=headers)
    assert created.status_code == 201, created.json
    assert created.json["send_window"] == body["send_window"]
    assert created.json["time_zone_field"] == "city"
    cid = created.json["id"]
    bad = client.patch(
        f"/api/v1/campaigns/{cid}",
        json={"send_window": {"start": "25:00", "end": "20:00", "days": []}},
        headers=headers,
    )
    assert bad.status_code == 422
    assert {"send_window.start", "send_window.days"} <= set(bad.json["error"]["fields"])
    superscript = client.patch(
        f"/api/v1/campaigns/{cid}",
        json={"send_window": {"start": "09:00", "end": "20:00", "days": ["²"]}},
        headers=headers,
    )
    assert superscript.status_code == 422, superscript.data
    assert "send_window.days" in superscript.json["error"]["fields"]
    whole_day = {"start": "00:00", "end": "24:00", "days": [1]}
    changed = client.patch(
        f"/api/v1/campaigns/{cid}", json={"send_window": whole_day}, headers=headers
    )
    assert changed.status_code == 200 and changed.json["send_window"] == whole_day
    changed = client.patch(f"/api/v1/campaigns/{cid}", json={"send_window": None}, headers=headers)
    assert changed.status_code == 200 and changed.json["send_window"] is None
    copy = duplicate_campaign(cid, created.json["owner_id"])
    assert copy.time_zone_field == "city" and copy.send_window is None
    # A sending campaign: its window alone may change.
    campaign = db.session.get(Campaign, cid)
    campaign_states.start(db.session, campaign)
    db.session.commit()
    window = {"start": "08:00", "end": "18:00", "days": [0]}
    changed = client.patch(
        f"/api/v1/campaigns/{cid}", json={"send_window": window}, headers=headers
    )
    assert changed.status_code == 200 and changed.json["send_window"] == window
    refused = client.patch(
        f"/api/v1/campaigns/{cid}", json={"send_window": window, "name": "x"}, headers=headers
    )
    assert refused.status_code == 409
    progress = client.get(f"/api/v1/campaigns/{cid}/progress", headers=headers)
    assert progress.status_code == 200
    assert progress.json["waiting_for_window"] == 0 and progress.json["next_window_at"] is None


def test_the_form_sets_the_window_and_keeps_any_time_by_default(app, client, login_as):
    login_as(Role.SUPERVISOR)
    seed_demo()
    page = client.get("/campaigns/new")
    html = page.get_data(as_text=True)
    assert 'name="send_window.mode" value="" checked' in html
    template = db.session.query(MessageTemplate).filter_by(name="promo_weekend").one()
    form = {
        "csrf_token": csrf_token_from(page.data),
        "name": "Form window",
        "sender_id": str(default_sender().id),
        "template_id": str(template.id),
        "segment.state": "SP",
        "var.first_name.source": "first_name",
        "var.discount.source": "text",
        "var.discount.text": "10%",
        "var.city.source": "city",
        "var.coupon.source": "text",
        "var.coupon.text": "X1",
        "send_window.mode": "window",
        "send_window.start": "09:00",
        "send_window.end": "20:00",
        "send_window.days": ["0", "2"],
    }
    refused = client.post("/campaigns/", data={**form, "send_window.days": []})
    assert refused.status_code == 422
    assert "Choose at least one day." in refused.get_data(as_text=True)
    refused = client.post("/campaigns/", data={**form, "send_window.days": ["0", "①"]})
    assert refused.status_code == 422
    assert 'id="send_window.days-error"' in refused.get_data(as_text=True)
    # The end of the day: the end field takes 24:00 (a time input could not hold it).
    whole = client.post(
        "/campaigns/", data={**form, "name": "Whole days", "send_window.end": "24:00"}
    )
    assert whole.status_code == 303, whole.get_data(as_text=True)
    whole_day = db.session.scalars(sa.select(Campaign).filter_by(name="Whole days")).one()
    assert whole_day.send_window == {"start": "09:00", "end": "24:00", "days": [0, 2]}
    edit = client.get(f"/campaigns/{whole_day.id}/edit").get_data(as_text=True)
    assert 'name="send_window.end" value="24:00"' in edit
    created = client.post("/campaigns/", data=form)
    assert created.status_code == 303, created.get_data(as_text=True)
    campaign = db.session.scalars(sa.select(Campaign).filter_by(name="Form window")).one()
    assert campaign.send_window == {"start": "09:00", "end": "20:00", "days": [0, 2]}
    shown = client.get(f"/campaigns/{campaign.id}").get_data(as_text=True)
    assert "09:00 to 20:00, Mon, Wed" in shown
    plain = client.post("/campaigns/", data={**form, "name": "Any", "send_window.mode": ""})
    assert plain.status_code == 303
    assert db.session.scalars(sa.select(Campaign).filter_by(name="Any")).one().send_window is None


WHOLE_DAY = {"start": "00:00", "end": "24:00", "days": ALL_DAYS}


def _whole_day_campaign(app, owner, size: int = 200) -> Campaign:
    lift_limits(owner)
    campaign = create_campaign(_fields(size, WHOLE_DAY), owner.id)
    send_campaign_now(campaign.id, owner.id)
    fanout.load_audience(campaign.id, app.config)
    return db.session.get(Campaign, campaign.id, populate_existing=True)


def _send_queued(campaign_id: int) -> None:
    """The queued messages sent, as their jobs would (no worker here)."""
    sent = db.session.execute(
        sa.update(Message)
        .where(Message.campaign_id == campaign_id, Message.status == S.QUEUED)
        .values(status=S.SENT)
    ).rowcount
    counters.apply(db.session, campaign_id, {"queued": -sent, "sent": sent})
    db.session.commit()


def test_a_pause_and_an_erasure_that_cancel_out_leave_no_zone_miscounted(
    app, owner, live_server, monkeypatch
):
    # A pause puts a run's queued messages back to pending (k more in their zone); an
    # erasure while paused cancels k pending in another: the sum of the zone counts is
    # still the pending count, the split is not. The campaign must still complete.
    campaign = _whole_day_campaign(app, owner)
    monkeypatch.setattr(pump, "batch_size", lambda *_: 1)
    monkeypatch.setattr(pump, "WINDOW_JOBS", 10)
    assert pump.pump(campaign.id) is True
    queued = _zones(campaign.id, S.QUEUED)
    assert sum(queued.values()) == 10
    pause_campaign(campaign.id, owner.id)
    # Ten pending people erased, of zones other than the queued ones' where possible.
    others = [MANAUS] * 7 + [SP] * 3 if SP in queued else [SP] * 7 + [MANAUS] * 3
    wanted = Counter(others)
    for zone, n in wanted.items():
        phones = db.session.scalars(
            sa.select(Message.phone)
            .where(
                Message.campaign_id == campaign.id,
                Message.status == S.PENDING,
                Message.time_zone == zone,
            )
            .order_by(Message.id.desc())
            .limit(n)
        ).all()
        assert len(phones) == n
        for phone in phones:
            personal_data.erase_person(phone, None)
    resume_campaign(campaign.id, owner.id)
    monkeypatch.setattr(pump, "WINDOW_JOBS", 1)
    for _ in range(400):
        if not pump.pump(campaign.id):
            break
        _send_queued(campaign.id)
    campaign = db.session.get(Campaign, campaign.id, populate_existing=True)
    assert _zones(campaign.id, S.PENDING) == {}
    assert campaign.status is CampaignStatus.COMPLETED, campaign.window_zones
    assert_counters_match_rows(campaign.id)


def test_zone_counts_follow_every_move_back_to_pending(app, owner, live_server):
    campaign = _whole_day_campaign(app, owner, 20)
    assert campaign.window_zones
    assert pump.pump(campaign.id) is True
    assert _zones(campaign.id, S.QUEUED)
    # A pause: the queued messages' zones are counted back, exactly (the page still says
    # who waits for their window).
    pause_campaign(campaign.id, owner.id)
    campaign = db.session.get(Campaign, campaign.id, populate_existing=True)
    assert campaign.window_zones == _zones(campaign.id, S.PENDING)
    assert not _zones(campaign.id, S.QUEUED)
    assert_counters_match_rows(campaign.id)
    # A retry's batch that found the campaign paused puts its messages back to pending,
    # uncounted: the resume drops the counts, and the pump counts them again.
    resume_campaign(campaign.id, owner.id)
    assert db.session.get(Campaign, campaign.id, populate_existing=True).window_zones is None
    assert pump.pump(campaign.id) is True
    campaign = db.session.get(Campaign, campaign.id, populate_existing=True)
    assert campaign.window_zones == _zones(campaign.id, S.PENDING)
    # "Retry failed": failed messages back to pending.
    message = db.session.scalars(
        sa.select(Message).where(Message.campaign_id == campaign.id, Message.status == S.QUEUED)
    ).first()
    assert message is not None
    message_states.fail(db.session, message.id, [S.QUEUED], "131000", "boom")
    db.session.commit()
    assert message_states.reopen_failed(db.session, campaign.id, ["131000"]) == 1
    db.session.commit()
    assert db.session.get(Campaign, campaign.id, populate_existing=True).window_zones is None
    assert pump.pump(campaign.id) is True
    campaign = db.session.get(Campaign, campaign.id, populate_existing=True)
    assert campaign.window_zones == _zones(campaign.id, S.PENDING)
    # A job a worker's shutdown aborted: its messages back to pending by maintenance.
    queued = db.session.scalars(
        sa.select(Message.id).where(Message.campaign_id == campaign.id, Message.status == S.QUEUED)
    ).first()
    assert queued is not None
    db.session.execute(
        sa.text(
            "UPDATE procrastinate_jobs SET status = 'aborted'"
            " WHERE task_name = :task AND args->'message_ids' @> to_jsonb(CAST(:id AS bigint))"
        ),
        {"task": queues.SEND_TASK, "id": queued},
    )
    db.session.commit()
    assert maintenance.settle_orphaned_messages() == 0
    assert db.session.get(Message, queued, populate_existing=True).status is S.PENDING
    assert db.session.get(Campaign, campaign.id, populate_existing=True).window_zones is None
    assert pump.pump(campaign.id) is True
    campaign = db.session.get(Campaign, campaign.id, populate_existing=True)
    assert campaign.window_zones == _zones(campaign.id, S.PENDING)
    assert_counters_match_rows(campaign.id)


def test_a_fan_out_page_stored_twice_counts_once(app, owner, live_server):
    campaign = _whole_day_campaign(app, owner, 30)
    counted = dict(campaign.window_zones)
    assert counted == _zones(campaign.id, S.PENDING)
    # A fan-out resumed after a crash stores its page again, the ERP's numbers changed
    # meanwhile (not the campaign's already, so not skipped as duplicates): the customers
    # are there, nothing is inserted, nothing counted.
    db.session.execute(
        sa.update(Message)
        .where(Message.campaign_id == campaign.id)
        .values(
            phone=sa.func.concat("+5511977", sa.func.lpad(sa.cast(Message.id, sa.Text), 6, "0"))
        )
    )
    campaign.erp_cursor = None
    campaign.audience_loaded_at = None
    db.session.commit()
    fanout.load_audience(campaign.id, app.config)
    campaign = db.session.get(Campaign, campaign.id, populate_existing=True)
    assert campaign.window_zones == counted


def test_counts_dropped_mid_fan_out_stay_dropped_and_a_removed_window_drops_them(
    app, owner, live_server
):
    lift_limits(owner)
    campaign = create_campaign(_fields(30, WHOLE_DAY), owner.id)
    send_campaign_now(campaign.id, owner.id)
    with erp.PageReader(erp.client_from_config(app.config), 10) as pages:
        first = fanout.fan_out_page(campaign.id, pages, app.config)
        assert first is not None and not first.done
        # "Retry failed" (say) dropped the counts: the next pages do not count their own
        # alone, which would leave the first page's zones uncounted.
        message_states.forget_zone_counts(db.session, [campaign.id])
        db.session.commit()
        while (page := fanout.fan_out_page(campaign.id, pages, app.config)) and not page.done:
            pass
    assert db.session.get(Campaign, campaign.id, populate_existing=True).window_zones is None
    assert pump.pump(campaign.id) is True
    campaign = db.session.get(Campaign, campaign.id, populate_existing=True)
    assert campaign.window_zones == _zones(campaign.id, S.PENDING)
    # The window removed: nothing keeps the counts any more; set again, they are recounted.
    change_send_window(campaign.id, None, owner.id)
    assert db.session.get(Campaign, campaign.id, populate_existing=True).window_zones is None


def test_the_pump_recounts_when_open_zones_have_fewer_than_counted(app, owner, live_server):
    # Counts off by a cause nothing told the pump about, their sum right: a zone counted
    # with messages it does not have, another without those it has.
    campaign = _whole_day_campaign(app, owner, 20)
    pending = _zones(campaign.id, S.PENDING)
    total = sum(pending.values())
    campaign.window_zones = {"Asia/Tokyo": total}
    db.session.commit()
    assert pump.pump(campaign.id) is True
    campaign = db.session.get(Campaign, campaign.id, populate_existing=True)
    assert campaign.window_zones == pending
    assert pump.pump(campaign.id) is True
    assert _zones(campaign.id, S.QUEUED)


def test_the_zone_is_erased_with_the_rest_of_a_persons_data(app, loaded):
    message = db.session.scalars(
        sa.select(Message).where(Message.campaign_id == loaded.id, Message.time_zone == MANAUS)
    ).first()
    assert message is not None
    personal_data.erase_person(message.phone, None)
    erased = db.session.get(Message, message.id, populate_existing=True)
    assert (erased.phone, erased.time_zone, erased.status) == (None, None, S.CANCELLED)


def test_retention_erases_the_zones(app, loaded):
    campaign = db.session.get(Campaign, loaded.id)
    campaign.status = CampaignStatus.COMPLETED
    campaign.completed_at = database_now(db.session) - timedelta(days=400)
    db.session.commit()
    personal_data.erase_expired(180)
    assert _zones(loaded.id) == {None: sum(_zones(loaded.id).values())}


# -- two campaigns at once, a real worker


def _status(campaign_id: int) -> CampaignStatus:
    return db.session.scalar(sa.select(Campaign.status).where(Campaign.id == campaign_id))


SENT = (S.SENT, S.DELIVERED, S.READ)


def _sent_by_zone(campaign_id: int) -> dict[str | None, int]:
    query = (
        sa.select(Message.time_zone, sa.func.count())
        .where(Message.campaign_id == campaign_id, Message.status.in_(SENT))
        .group_by(Message.time_zone)
    )
    return dict(db.session.execute(query).all())


def test_two_concurrent_campaigns_hold_each_closed_zone_and_send_the_open_one(
    app, owner, live_server, start_worker
):
    lift_limits(owner)
    now = database_now(db.session)
    # One open in São Paulo's zone now (Manaus's an hour behind: closed for 30 minutes
    # more), the other open in Manaus's (São Paulo's past its end: closed until tomorrow).
    east = create_campaign(_fields(200, _open_in(SP, now), "East"), owner.id)
    west = create_campaign(_fields(200, _open_in(MANAUS, now), "West"), owner.id)
    start_worker()
    send_campaign_now(east.id, owner.id)
    send_campaign_now(west.id, owner.id)

    def settled(campaign_id: int, open_zone: str) -> bool:
        """The open zone's messages all went their way; the other zone's all wait."""
        in_flight = [S.PENDING, S.QUEUED, S.SENDING, S.RETRYING]
        left = dict(
            db.session.execute(
                sa.select(Message.time_zone, sa.func.count())
                .where(Message.campaign_id == campaign_id, Message.status.in_(in_flight))
                .group_by(Message.time_zone)
            ).all()
        )
        closed = ({SP, MANAUS} - {open_zone}).pop()
        return bool(
            _sent_by_zone(campaign_id).get(open_zone)
            and set(left) == {closed}
            and left[closed] == _zones(campaign_id, S.PENDING).get(closed)
        )

    wait_for(lambda: settled(east.id, SP) and settled(west.id, MANAUS), what="open zones sent")
    # The closed zones wait, pending, counted as waiting for their window, the campaigns
    # still sending.
    for campaign, closed in ((east, MANAUS), (west, SP)):
        assert _status(campaign.id) is CampaignStatus.SENDING
        assert not _sent_by_zone(campaign.id).get(closed)
        waiting = _zones(campaign.id, S.PENDING)[closed]
        assert waiting > 0
        progress = get_progress(db.session.get(Campaign, campaign.id, populate_existing=True))
        assert progress.waiting_for_window == waiting
        assert progress.next_window_at is not None and progress.next_window_at > now
        assert_counters_match_rows(campaign.id)
    # Once the window covers them, they go and each campaign completes.
    change_send_window(east.id, {"start": "00:00", "end": "23:59", "days": ALL_DAYS}, owner.id)
    change_send_window(west.id, None, owner.id)
    for campaign in (east, west):
        wait_for(lambda c=campaign: _status(c.id) is CampaignStatus.COMPLETED, what="completed")
        assert not _zones(campaign.id, S.PENDING)
        assert _sent_by_zone(campaign.id).get(MANAUS) and _sent_by_zone(campaign.id).get(SP)
        assert_counters_match_rows(campaign.id)


def test_the_preflights_duration_waits_for_the_window(app, owner, live_server):
    lift_limits(owner)
    now = database_now(db.session)
    # Open in Manaus's zone only: São Paulo's (the business's, where a campaign not yet
    # loaded is assumed to be) opened an hour and a half ago: tomorrow's, 22.5 hours away.
    campaign = create_campaign(_fields(20, _open_in(MANAUS, now)), owner.id)
    check = preflight.check(campaign, app.config)
    assert 22 * 3600 < check.duration_seconds < 23 * 3600
    plain = create_campaign(_fields(20, None, "Plain"), owner.id)
    assert preflight.check(plain, app.config).duration_seconds < 60


def test_an_open_zone_out_of_budget_waits_for_the_budget_not_every_2_s(
    app, owner, live_server, monkeypatch
):
    monkeypatch.setitem(app.config, "APP_BASE_URL", live_server)  # the mock sender's
    lift_limits(owner)
    sender = default_sender()
    sender.business_id, sender.messaging_limit = "77", 10  # a budget of 9 a day
    db.session.commit()
    now = database_now(db.session)
    campaign = create_campaign(_fields(200, _open_in(SP, now)), owner.id)
    send_campaign_now(campaign.id, owner.id, confirm=True)
    fanout.load_audience(campaign.id, app.config)
    pump.pump(campaign.id)
    assert _zones(campaign.id, S.QUEUED) == {SP: 9}
    assert _zones(campaign.id, S.PENDING)[SP] > 0
    for job in jobs(queues.SEND_TASK):
        sending.send_batch(campaign.id, job["args"]["message_ids"], app.config, retry_queue=False)
    db.session.execute(sa.text("DELETE FROM procrastinate_jobs"))
    db.session.commit()
    # São Paulo's window is open but the budget is spent; Manaus's opens in 30 minutes:
    # the pump comes back in HELD_INTERVAL_SECONDS, not every 2 s.
    pump.pump(campaign.id)
    assert not _zones(campaign.id, S.QUEUED)
    (job,) = jobs(queues.PUMP_TASK)
    wait = (job["scheduled_at"] - database_now(db.session)).total_seconds()
    assert wait > pump.HELD_INTERVAL_SECONDS - 10
