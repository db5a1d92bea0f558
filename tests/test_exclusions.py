"""Exclusions: the contact history and the frequency cap, numbers in other running
campaigns, the live count, the campaign defaults, and the history's retention and erasure.

The cap is decided at the pump's admission (contact_history.admit): the in-process tests
run the stages by hand in the order that makes the race (both campaigns loaded before
either pumps); the last test runs two capped campaigns through real workers at once.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta

import pytest
import requests
import sqlalchemy as sa

from app import db
from campaigns import campaign_defaults, contact_history, exclusions, fanout, pump, sending
from campaigns.models import (
    AuditEvent,
    Campaign,
    CampaignStatus,
    ContactHistory,
    ContactLock,
    Message,
    MessageStatus,
    Role,
    Suppression,
)
from campaigns.services import undeliverable
from campaigns.services.campaigns import (
    cancel_campaign,
    duplicate_campaign,
    pause_campaign,
    resume_campaign,
    send_campaign_now,
)
from campaigns.services.personal_data import erase_person, preview_erasure
from campaigns.services.suppressions import phone_hash
from campaigns.services.users import create_api_token
from jobs import tasks
from tests.helpers import assert_counters_match_rows, demo_campaign, lift_limits, wait_for


@pytest.fixture
def make(app, owner, live_server, monkeypatch) -> Callable[..., Campaign]:
    """A demo campaign of the first ``size`` SP customers, with these exclusions."""
    monkeypatch.setitem(app.config, "APP_BASE_URL", live_server)
    lift_limits(owner)

    def make_campaign(
        size: int, name: str, cap: int | None = None, exclude_running: bool = False
    ) -> Campaign:
        campaign = demo_campaign(owner.id, size=size, name=name)
        campaign.frequency_cap_days = cap
        campaign.exclude_running = exclude_running
        db.session.commit()
        return campaign

    return make_campaign


def _load(app, campaign: Campaign) -> None:
    send_campaign_now(campaign.id, campaign.owner_id)
    fanout.load_audience(campaign.id, app.config)


def _rows(campaign_id: int) -> dict[str, Message]:
    """The campaign's messages with a number, by number."""
    messages = db.session.scalars(
        sa.select(Message)
        .where(Message.campaign_id == campaign_id)
        .execution_options(populate_existing=True)
    )
    return {m.phone: m for m in messages if m.phone and m.phone.startswith("+")}


def _going(campaign_id: int) -> set[str]:
    """The numbers the campaign has admitted (queued) or will still try (pending)."""
    return {
        phone
        for phone, m in _rows(campaign_id).items()
        if m.status in (MessageStatus.QUEUED, MessageStatus.PENDING)
    }


def _skipped(campaign_id: int, code: str) -> set[str]:
    return {
        phone
        for phone, m in _rows(campaign_id).items()
        if m.status is MessageStatus.SKIPPED and m.error_code == code
    }


def test_the_cap_is_decided_at_admission_when_both_campaigns_loaded_first(app, make):
    first = make(10, "First")  # no cap: it still records its contacts
    second = make(20, "Second", cap=7)
    _load(app, first)
    _load(app, second)  # nothing admitted yet: the fan-out's check finds nobody
    assert not _skipped(second.id, "frequency_cap")
    shared = _going(first.id) & _going(second.id)
    assert len(shared) >= 5

    pump.pump(first.id)
    queued_first = {p for p, m in _rows(first.id).items() if m.status is MessageStatus.QUEUED}
    assert queued_first == _going(first.id) and shared <= queued_first
    history = {row.phone_hash: row for row in db.session.scalars(sa.select(ContactHistory))}
    assert {phone_hash(p) for p in queued_first} == set(history)
    assert all(row.campaign_id == first.id for row in history.values())

    pump.pump(second.id)
    # Each shared number went to the first campaign only; the second skipped it.
    assert _skipped(second.id, "frequency_cap") == shared
    rest = set(_rows(second.id)) - shared
    assert {p for p in rest if _rows(second.id)[p].status is MessageStatus.QUEUED} == (
        _going(second.id)
    )
    assert _going(second.id) and not (_going(second.id) & shared)
    assert_counters_match_rows(first.id)
    assert_counters_match_rows(second.id)


def test_the_fan_out_skips_whom_another_campaign_contacted_within_the_cap(app, make):
    first = make(6, "First")
    _load(app, first)
    pump.pump(first.id)
    contacted = _going(first.id)
    second = make(12, "Second", cap=3)
    _load(app, second)
    assert _skipped(second.id, "frequency_cap") == contacted
    assert_counters_match_rows(second.id)


def test_after_the_cap_the_number_is_messaged_again(app, make):
    first = make(6, "First")
    _load(app, first)
    pump.pump(first.id)
    contacted = _going(first.id)
    # Three days pass: a 3-day cap no longer holds them back, a 4-day one does.
    db.session.execute(
        sa.update(ContactHistory).values(
            contacted_at=ContactHistory.contacted_at - timedelta(days=3, minutes=1)
        )
    )
    db.session.commit()
    assert contact_history.contacted_within(db.session, contacted, 3) == set()
    assert contact_history.contacted_within(db.session, contacted, 4) == contacted
    second = make(6, "Second", cap=3)
    _load(app, second)
    pump.pump(second.id)
    assert not _skipped(second.id, "frequency_cap")
    assert contacted <= {p for p, m in _rows(second.id).items() if m.status is MessageStatus.QUEUED}
    # The history holds both campaigns' contacts, each at its own time.
    digest = phone_hash(sorted(contacted)[0])
    first_row = db.session.get(ContactHistory, (digest, first.id))
    second_row = db.session.get(ContactHistory, (digest, second.id))
    assert first_row is not None and second_row is not None
    assert second_row.contacted_at - first_row.contacted_at > timedelta(days=3)


def test_a_campaigns_own_contacts_never_hold_it_back(app, make):
    capped = make(6, "Capped", cap=30)
    _load(app, capped)
    phones = {m.id: p for p, m in _rows(capped.id).items() if m.status is MessageStatus.PENDING}
    assert contact_history.capped(db.session, capped.id, 30, phones) == set()
    contact_history.record(db.session, capped.id, phones)
    # Admitted again (a retry, a resume): still its own.
    assert contact_history.capped(db.session, capped.id, 30, phones) == set()
    contact_history.record(db.session, capped.id, phones)
    # Another capped campaign is refused all of them.
    assert contact_history.capped(db.session, capped.id + 1000, 30, phones) == set(phones)
    db.session.rollback()


def test_a_cancelled_campaign_gives_back_the_contacts_it_never_called(app, make):
    earlier = make(4, "Earlier")
    _load(app, earlier)
    pump.pump(earlier.id)
    old = _going(earlier.id)
    db.session.execute(
        sa.update(ContactHistory).values(
            contacted_at=ContactHistory.contacted_at - timedelta(days=10)
        )
    )
    db.session.commit()
    before = {
        (row.phone_hash, row.campaign_id): row.contacted_at
        for row in db.session.scalars(sa.select(ContactHistory))
    }

    later = make(8, "Later", cap=7)
    _load(app, later)
    pump.pump(later.id)
    assert len(db.session.scalars(sa.select(ContactHistory)).all()) > len(old)
    # One of them is called before the cancel: that contact was made, and stays.
    called = min(m.id for m in _rows(later.id).values() if m.status is MessageStatus.QUEUED)
    assert sending.send_batch(later.id, [called], app.config, retry_queue=False).sent == [called]
    called_hash = phone_hash(db.session.get(Message, called).phone)
    cancel_campaign(later.id, later.owner_id)

    # The cancelled campaign's contacts are gone but for the one it called; the earlier
    # campaign's are as they were.
    after = {
        (row.phone_hash, row.campaign_id): row.contacted_at
        for row in db.session.scalars(
            sa.select(ContactHistory).execution_options(populate_existing=True)
        )
    }
    assert after.pop((called_hash, later.id)) > max(before.values())
    assert after == before


def test_numbers_in_another_running_campaign_are_left_out(app, make):
    running = make(6, "Running")
    _load(app, running)
    in_it = _going(running.id)
    excluding = make(12, "Excluding", exclude_running=True)
    _load(app, excluding)
    assert _skipped(excluding.id, "in_other_campaign") == in_it
    assert_counters_match_rows(excluding.id)
    # Not excluding: nothing left out for it.
    plain = make(12, "Plain")
    _load(app, plain)
    assert not _skipped(plain.id, "in_other_campaign")
    # A finished campaign is no longer running: nobody is in it.
    cancel_campaign(running.id, running.owner_id)
    cancel_campaign(plain.id, plain.owner_id)
    cancel_campaign(excluding.id, excluding.owner_id)
    assert exclusions.in_other_campaign(db.session, in_it, None) == set()


def test_the_count_says_what_each_exclusion_removes(app, make):
    running = make(6, "Running")
    _load(app, running)
    pump.pump(running.id)
    going = sorted(_going(running.id))
    opted, unreachable = "+5511900000001", "+5511900000002"
    db.session.add(Suppression(phone=opted, source="manual", reason="test"))
    undeliverable.remember(db.session, unreachable)
    db.session.commit()
    numbers = [*going, opted, unreachable, None, going[0], "+5511900000003"]
    counts = exclusions.count(numbers, 7, True, None)
    assert counts.total == len(numbers)
    assert (counts.invalid, counts.duplicate) == (1, 1)
    assert (counts.suppressed, counts.undeliverable) == (1, 1)
    # Contacted by the running campaign: within the cap first, so not counted twice.
    assert (counts.frequency_cap, counts.in_other_campaign) == (len(going), 0)
    assert counts.remaining == 1
    # Off: not applied (None), and the numbers remain.
    off = exclusions.count(numbers, None, False, None)
    assert (off.frequency_cap, off.in_other_campaign) == (None, None)
    assert off.remaining == len(going) + 1
    # Without the cap, the running campaign's numbers are in another running campaign,
    # unless it is the campaign asking.
    assert exclusions.count(numbers, None, True, None).in_other_campaign == len(going)
    assert exclusions.count(numbers, None, True, running.id).in_other_campaign == 0


def test_an_erp_segment_is_counted_exactly_when_sampled_whole_else_estimated(
    app, make, monkeypatch
):
    segment = {"state": "SP", "max_audience": 30, "opted_in_only": False}
    exact = exclusions.estimate(segment, 7, True, None, app.config)
    assert not exact.estimated and exact.total == exact.sampled == 30
    monkeypatch.setattr(exclusions, "SAMPLE_PAGES", 1)
    monkeypatch.setattr(exclusions, "SAMPLE_PAGE_SIZE", 10)
    guess = exclusions.estimate(segment, 7, True, None, app.config)
    assert guess.estimated and (guess.total, guess.sampled) == (30, 10)
    assert guess.remaining <= guess.total


def test_the_form_shows_the_live_count(app, client, login_as, make):
    login_as(Role.SUPERVISOR)
    form = client.get("/campaigns/new").get_data(as_text=True)
    assert 'name="frequency_cap_days"' in form and 'name="exclude_running"' in form
    assert 'id="campaign-exclusion-count"' in form
    answer = client.post(
        "/campaigns/exclusions",
        data={
            "segment.state": "SP",
            "segment.max_audience": "20",
            "frequency_cap_days": "7",
            "exclude_running": "on",
        },
    )
    assert answer.status_code == 200
    html = answer.get_data(as_text=True)
    assert 'id="exclusion-remaining"' in html and "Messaged within the frequency cap" in html
    assert "no cap" not in html
    bad = client.post("/campaigns/exclusions", data={"frequency_cap_days": "100000"})
    assert bad.status_code == 200 and "form-error" in bad.get_data(as_text=True)


def test_the_campaign_form_and_page_keep_the_exclusions(app, client, login_as, make):
    login_as(Role.SUPERVISOR)
    campaign = make(5, "Shown", cap=14, exclude_running=True)
    page = client.get(f"/campaigns/{campaign.id}").get_data(as_text=True)
    assert "last 14 days" in page and "Numbers in other running campaigns left out" in page
    edit = client.get(f"/campaigns/{campaign.id}/edit").get_data(as_text=True)
    assert 'value="14"' in edit
    copy = duplicate_campaign(campaign.id, campaign.owner_id)
    assert (copy.frequency_cap_days, copy.exclude_running) == (14, True)


@pytest.fixture
def api(app, user_factory) -> dict[str, str]:
    user = user_factory(Role.SUPERVISOR)
    _token, raw = create_api_token(user.id)
    return {"Authorization": f"Bearer {raw}"}


def _payload(campaign: Campaign) -> dict:
    return {
        "name": "By API",
        "sender_id": campaign.sender_id,
        "template_id": campaign.template_id,
        "segment": {"state": "SP", "max_audience": 10, "opted_in_only": False},
        "variables": campaign.variable_mapping,
    }


def test_the_settings_defaults_fill_new_campaigns(app, client, login_as, make, api):
    source = make(3, "Source")
    login_as(Role.ADMIN)
    page = client.get("/settings/").get_data(as_text=True)
    assert 'id="campaign-defaults"' in page
    assert campaign_defaults.defaults(db.session) == campaign_defaults.Defaults()  # shipped off
    saved = client.post(
        "/settings/campaign-defaults",
        data={
            "frequency_cap_days": "5",
            "exclude_running": "on",
            "window_start": "09:00",
            "window_end": "20:00",
            "window_days": ["0", "1", "2", "3", "4", "5"],
        },
    )
    assert saved.status_code == 303, saved.get_data(as_text=True)
    db.session.rollback()
    stored = campaign_defaults.defaults(db.session)
    assert stored.frequency_cap_days == 5 and stored.exclude_running
    assert stored.send_window == {"start": "09:00", "end": "20:00", "days": [0, 1, 2, 3, 4, 5]}
    event = db.session.scalars(
        sa.select(AuditEvent).where(AuditEvent.action == "campaign_defaults.update")
    ).one()
    assert event.details["frequency_cap_days"] == {"before": None, "after": 5}
    assert "Campaign defaults changed" in client.get("/audit/").get_data(as_text=True)

    # The form is filled from them...
    form = client.get("/campaigns/new").get_data(as_text=True)
    assert 'name="frequency_cap_days" value="5"' in form
    # ...and the API's create takes them for a field left out, not for one sent.
    made = client.post("/api/v1/campaigns", json=_payload(source), headers=api)
    assert made.status_code == 201, made.json
    assert (made.json["frequency_cap_days"], made.json["exclude_running"]) == (5, True)
    off = client.post(
        "/api/v1/campaigns",
        json=_payload(source) | {"frequency_cap_days": None, "exclude_running": False},
        headers=api,
    )
    assert (off.json["frequency_cap_days"], off.json["exclude_running"]) == (None, False)

    # Bad input: the fields' messages, nothing changed.
    bad = client.post(
        "/settings/campaign-defaults",
        # A window may cross midnight (20:00-09:00), but not close when it opens.
        data={"frequency_cap_days": "0", "window_start": "09:00", "window_end": "09:00"},
    )
    assert bad.status_code == 422
    html = bad.get_data(as_text=True)
    assert 'id="frequency_cap_days-error"' in html and 'id="window_end-error"' in html
    assert 'id="window_days-error"' in html
    db.session.rollback()
    assert campaign_defaults.defaults(db.session) == stored


def test_the_api_validates_and_counts_the_exclusions(app, client, make, api):
    source = make(3, "Source")
    too_long = client.post(
        "/api/v1/campaigns",
        json=_payload(source) | {"frequency_cap_days": 1000, "exclude_running": "maybe"},
        headers=api,
    )
    assert too_long.status_code == 422
    assert set(too_long.json["error"]["fields"]) == {"frequency_cap_days", "exclude_running"}
    made = client.post(
        "/api/v1/campaigns", json=_payload(source) | {"frequency_cap_days": 3}, headers=api
    ).json
    patched = client.patch(
        f"/api/v1/campaigns/{made['id']}", json={"exclude_running": True}, headers=api
    ).json
    assert (patched["frequency_cap_days"], patched["exclude_running"]) == (3, True)
    counted = client.get(f"/api/v1/campaigns/{made['id']}/exclusions", headers=api)
    assert counted.status_code == 200
    assert counted.json["erp_error"] is None
    assert counted.json["exclusions"]["total"] == 10
    assert counted.json["exclusions"]["frequency_cap"] == 0


def test_the_history_is_kept_for_contact_history_days_then_deleted(app, make):
    first = make(4, "First")
    _load(app, first)
    pump.pump(first.id)
    rows = db.session.scalars(sa.select(ContactHistory)).all()
    assert rows and all(len(row.phone_hash) == 64 and "+" not in row.phone_hash for row in rows)
    days = app.config["CONTACT_HISTORY_DAYS"]
    tasks.reconcile(timestamp=int(time.time()))
    assert len(db.session.scalars(sa.select(ContactHistory)).all()) == len(rows)
    db.session.execute(
        sa.update(ContactHistory).values(contacted_at=sa.func.now() - timedelta(days=days))
    )
    db.session.commit()
    tasks.reconcile(timestamp=int(time.time()))
    assert db.session.scalars(sa.select(ContactHistory)).all() == []
    # The numbers' lock rows go once none was taken in the days either.
    assert db.session.scalars(sa.select(ContactLock)).all()
    db.session.execute(
        sa.update(ContactLock).values(locked_at=sa.func.now() - timedelta(days=days))
    )
    db.session.commit()
    tasks.reconcile(timestamp=int(time.time()))
    assert db.session.scalars(sa.select(ContactLock)).all() == []


def test_a_persons_erasure_deletes_their_contact(app, make):
    first = make(4, "First")
    _load(app, first)
    pump.pump(first.id)
    phone = sorted(_going(first.id))[0]
    assert contact_history.is_remembered(db.session, phone)
    assert preview_erasure(phone).contacted
    report = erase_person(phone, None)
    assert report.contacted and report.details()["contact_history_deleted"] is True
    assert not contact_history.is_remembered(db.session, phone)
    assert db.session.get(ContactLock, phone_hash(phone)) is None
    assert len(db.session.scalars(sa.select(ContactHistory)).all()) >= 1  # the others stay
    assert len(db.session.scalars(sa.select(ContactLock)).all()) >= 1


def test_caps_are_bounded_by_the_history_days(app, monkeypatch):
    from campaigns.validation import Checker, parse_frequency_cap

    monkeypatch.setitem(app.config, "CONTACT_HISTORY_DAYS", 30)
    check = Checker()
    assert parse_frequency_cap("30", check) == 30 and not check.errors
    assert parse_frequency_cap("31", check) is None and "frequency_cap_days" in check.errors


def _history() -> sa.Select:
    return sa.select(ContactHistory).execution_options(populate_existing=True)


def _mock_log(live_server: str) -> list[dict]:
    return requests.get(f"{live_server}/mock/whatsapp/log?limit=100000", timeout=10).json()


def test_two_capped_campaigns_with_real_workers_send_each_shared_person_one_message(
    app, live_server, make, start_worker
):
    """Both load their audiences before either sends; then real workers send both at
    once. Each shared recipient gets exactly one message (the other campaign skips it
    with frequency_cap); those not shared get theirs."""
    one = make(40, "One", cap=7)
    two = make(80, "Two", cap=7)
    _load(app, one)
    _load(app, two)
    shared = _going(one.id) & _going(two.id)
    only_two = _going(two.id) - shared
    assert len(shared) >= 20 and only_two
    # Both pumps are due: workers start them together.
    for campaign in (one, two):
        pump_waiting = db.session.scalar(
            sa.text(
                "SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'campaigns.pump'"
                " AND status = 'todo' AND (args->>'campaign_id')::int = :id"
            ),
            {"id": campaign.id},
        )
        assert pump_waiting == 1
    start_worker("a")
    start_worker("b")

    def done() -> bool:
        return all(
            db.session.get(Campaign, c.id, populate_existing=True).status
            is CampaignStatus.COMPLETED
            for c in (one, two)
        )

    wait_for(done, 120, "both campaigns completed")
    by_phone: Counter[str] = Counter(entry["to"] for entry in _mock_log(live_server))
    sent_to = {f"+{to.lstrip('+')}" for to in by_phone}
    assert max(by_phone.values()) == 1  # nobody got two messages
    assert shared <= sent_to and only_two <= sent_to
    skipped = _skipped(one.id, "frequency_cap") | _skipped(two.id, "frequency_cap")
    # Each shared person: one campaign sent, the other skipped with the cap.
    for phone in shared:
        statuses = {_rows(c.id)[phone].status for c in (one, two)}
        assert MessageStatus.SKIPPED in statuses and len(statuses) == 2, phone
    assert skipped == shared
    assert_counters_match_rows(one.id)
    assert_counters_match_rows(two.id)


def test_the_preflight_check_says_what_the_exclusions_leave_out(app, client, make, api):
    running = make(6, "Running")
    _load(app, running)
    capped = make(12, "Capped", cap=7, exclude_running=True)
    answer = client.get(f"/api/v1/campaigns/{capped.id}/preflight", headers=api)
    assert answer.status_code == 200
    (note,) = [w for w in answer.json["warnings"] if w["code"] == "exclusions"]
    going = len(_going(running.id))
    assert f"{going} in another running campaign" in note["message"]
    # A campaign without exclusions of its own: no note (and no extra ERP read).
    plain = make(12, "Plain")
    answer = client.get(f"/api/v1/campaigns/{plain.id}/preflight", headers=api)
    assert not [w for w in answer.json["warnings"] if w["code"].startswith("exclusions")]


# -- the review's defects, each with the test that failed before its fix


def _history_of(phones: set[str]) -> set[tuple[str, int]]:
    """(number's hash, campaign) of every contact recorded for these numbers."""
    hashes = {phone_hash(p) for p in phones}
    return {
        (row.phone_hash, row.campaign_id)
        for row in db.session.scalars(_history())
        if row.phone_hash in hashes
    }


def test_a_paused_campaign_resumes_after_another_gave_its_contacts_back(app, make):
    capped = make(8, "Capped", cap=30)
    _load(app, capped)
    pump.pump(capped.id)
    mine = _going(capped.id)
    pause_campaign(capped.id, capped.owner_id)
    # Paused before any call: its contacts are given back (they may never happen).
    assert _history_of(mine) == set()
    other = make(8, "Other")
    _load(app, other)
    pump.pump(other.id)
    cancel_campaign(other.id, other.owner_id)
    assert _history_of(mine) == set()
    resume_campaign(capped.id, capped.owner_id)
    pump.pump(capped.id)
    assert not _skipped(capped.id, "frequency_cap")
    assert {p for p, m in _rows(capped.id).items() if m.status is MessageStatus.QUEUED} == mine
    assert _history_of(mine) == {(phone_hash(p), capped.id) for p in mine}
    assert_counters_match_rows(capped.id)


def test_two_cancelled_campaigns_leave_the_real_contact_as_it_was(app, make):
    first = make(4, "First")
    _load(app, first)
    pump.pump(first.id)  # admitted, on its way: a contact
    numbers = _going(first.id)
    before = {row.phone_hash: row.contacted_at for row in db.session.scalars(_history())}
    for name in ("Second", "Third"):
        later = make(4, name)
        _load(app, later)
        pump.pump(later.id)
    for campaign in db.session.scalars(
        sa.select(Campaign).where(Campaign.name.in_(["Second", "Third"])).order_by(Campaign.id)
    ).all():
        cancel_campaign(campaign.id, campaign.owner_id)
    # Only the first campaign's contacts are left, at their time: neither cancelled
    # campaign's contact stays, and the first's is not lost.
    assert _history_of(numbers) == {(phone_hash(p), first.id) for p in numbers}
    after = {row.phone_hash: row.contacted_at for row in db.session.scalars(_history())}
    assert after == before
    # A capped campaign is refused them: the first campaign's contact holds.
    capped = make(4, "Capped", cap=7)
    _load(app, capped)
    assert _skipped(capped.id, "frequency_cap") == numbers


def test_a_message_the_budget_holds_back_contacts_no_one(app, make):
    from campaigns.services.templates import default_sender

    sender = default_sender()
    sender.business_id, sender.messaging_limit = "88", 4  # 3 new recipients a day (margin)
    db.session.commit()
    capped = make(10, "Budgeted")
    send_campaign_now(capped.id, capped.owner_id, confirm=True)  # beyond the budget
    fanout.load_audience(capped.id, app.config)
    pump.pump(capped.id)
    queued = {p for p, m in _rows(capped.id).items() if m.status is MessageStatus.QUEUED}
    waiting = {p for p, m in _rows(capped.id).items() if m.status is MessageStatus.PENDING}
    assert queued and waiting
    # Recorded: the admitted only. The ones the budget holds back block nobody.
    assert _history_of(queued | waiting) == {(phone_hash(p), capped.id) for p in queued}
    assert contact_history.contacted_within(db.session, waiting, 30) == set()


def test_a_held_messages_retry_is_capped_and_recorded(app, make, monkeypatch):
    held_campaign = make(4, "Held", cap=30)
    _load(app, held_campaign)
    pump.pump(held_campaign.id)
    ids = sorted(m.id for m in _rows(held_campaign.id).values() if m.status is MessageStatus.QUEUED)
    monkeypatch.setitem(app.config, "MOCK_WHATSAPP_MARKETING_LIMIT_RATE", 1.0)
    report = sending.send_batch(held_campaign.id, ids, app.config, retry_queue=False)
    monkeypatch.setitem(app.config, "MOCK_WHATSAPP_MARKETING_LIMIT_RATE", 0.0)
    assert sorted(report.marketing_held) == ids
    # A day on: another campaign contacted one of the numbers meanwhile.
    db.session.execute(
        sa.update(ContactHistory).values(
            contacted_at=ContactHistory.contacted_at - timedelta(days=1)
        )
    )
    db.session.execute(
        sa.update(Message).where(Message.id.in_(ids)).values(held_until=sa.func.now())
    )
    db.session.commit()
    other = make(1, "Other")  # the same first customer
    _load(app, other)
    pump.pump(other.id)
    (taken_phone,) = _going(other.id)
    (taken_id,) = [m.id for p, m in _rows(held_campaign.id).items() if p == taken_phone]
    db.session.execute(sa.text("DELETE FROM rate_limit_buckets"))  # the retries' own limit
    db.session.commit()
    report = sending.send_batch(held_campaign.id, ids, app.config, retry_queue=True)
    went = [i for i in ids if i != taken_id]
    assert sorted(report.sent) == went and report.failed == [taken_id]
    taken = db.session.get(Message, taken_id, populate_existing=True)
    assert (taken.status, taken.error_code) == (MessageStatus.FAILED, "frequency_cap")
    # The retries that went are contacts again, now; the refused one's is not renewed.
    rows = {
        row.phone_hash: row.contacted_at
        for row in db.session.scalars(
            _history().where(ContactHistory.campaign_id == held_campaign.id)
        )
    }
    now = db.session.scalar(sa.select(sa.func.now()))
    for message_id in went:
        assert now - rows[phone_hash(db.session.get(Message, message_id).phone)] < timedelta(
            hours=1
        )
    assert now - rows[phone_hash(taken_phone)] > timedelta(hours=23)
    assert_counters_match_rows(held_campaign.id)


def test_a_recurring_series_runs_do_not_cap_each_other(app, owner, make):
    from campaigns import campaign_states
    from campaigns.services.campaigns import schedule_campaign

    series = make(6, "Daily", cap=1)
    series.recurrence = {"every": "daily", "at": "09:00", "time_zone": "America/Sao_Paulo"}
    db.session.commit()
    series = schedule_campaign(series.id, None, owner.id, confirm=True)
    [first_id] = campaign_states.start_due(series.scheduled_at + timedelta(seconds=1))
    fanout.load_audience(first_id, app.config)
    pump.pump(first_id)
    contacted = _going(first_id)
    assert contacted
    # Run 1 finished a day ago, less a minute: just under the 1-day cap.
    db.session.execute(
        sa.update(Campaign).where(Campaign.id == first_id).values(status=CampaignStatus.COMPLETED)
    )
    db.session.execute(
        sa.update(ContactHistory).values(
            contacted_at=ContactHistory.contacted_at - timedelta(days=1) + timedelta(minutes=1)
        )
    )
    db.session.commit()
    db.session.refresh(series)
    [second_id] = campaign_states.start_due(series.scheduled_at + timedelta(seconds=1))
    second = db.session.get(Campaign, second_id)
    assert second.recurrence_of_id == series.id and second.frequency_cap_days == 1
    fanout.load_audience(second_id, app.config)
    pump.pump(second_id)
    assert not _skipped(second_id, "frequency_cap")
    assert {p for p, m in _rows(second_id).items() if m.status is MessageStatus.QUEUED} == contacted
    # Another campaign with a cap is still held back by the runs' contacts.
    other = make(6, "Other", cap=1)
    _load(app, other)
    assert _skipped(other.id, "frequency_cap") == contacted


def test_a_stored_default_cap_above_the_history_days_reads_as_the_limit(
    app, client, make, api, monkeypatch
):
    source = make(3, "Source")
    db.session.execute(sa.update(campaign_defaults.CampaignDefaults).values(frequency_cap_days=60))
    db.session.commit()
    monkeypatch.setitem(app.config, "CONTACT_HISTORY_DAYS", 30)
    assert campaign_defaults.defaults(db.session).frequency_cap_days == 30
    made = client.post("/api/v1/campaigns", json=_payload(source), headers=api)
    assert made.status_code == 201, made.json
    assert made.json["frequency_cap_days"] == 30


def test_the_live_count_reads_the_erp_once_a_minute_and_asks_on_change(
    app, client, login_as, make, monkeypatch
):
    from campaigns import erp

    reads: list[str | None] = []
    real_page = erp.ErpClient.page

    def counted_page(self, segment, cursor, size):
        reads.append(cursor)
        return real_page(self, segment, cursor, size)

    monkeypatch.setattr(erp.ErpClient, "page", counted_page)
    segment = {"state": "SP", "max_audience": 29, "opted_in_only": False}  # no other test's
    first = exclusions.estimate(segment, 7, False, None, app.config)
    assert reads
    pages = len(reads)
    # Another cap, the checkbox: the database counts again, the ERP is not read.
    again = exclusions.estimate(segment, 3, True, None, app.config)
    assert len(reads) == pages and again.total == first.total
    # Another segment is read.
    exclusions.estimate(segment | {"max_audience": 20}, 7, False, None, app.config)
    assert len(reads) > pages
    # The deadline is looked at before each page: past it, no page after the first.
    reads.clear()
    segment = segment | {"max_audience": 28}
    monkeypatch.setattr(exclusions, "SAMPLE_PAGE_SIZE", 5)
    monkeypatch.setattr(exclusions, "SAMPLE_SECONDS", -1.0)
    cut = exclusions.estimate(segment, 7, False, None, app.config)
    assert len(reads) == 1 and cut.estimated and cut.sampled == 5
    # The form asks when the cap changes, not on every keystroke.
    login_as(Role.SUPERVISOR)
    form = client.get("/campaigns/new").get_data(as_text=True)
    (trigger,) = re.findall(r'id="campaign-exclusion-count"[^>]*hx-trigger="([^"]*)"', form)
    events = [part.strip().split()[0] for part in trigger.split(",")]
    assert "input" not in events and "keyup" not in events
    assert "change from:.exclusion-field" in trigger


def test_an_estimate_scales_each_exclusion_of_its_sample(app, make, monkeypatch):
    running = make(6, "Running")
    _load(app, running)
    pump.pump(running.id)
    segment = {"state": "SP", "max_audience": 30, "opted_in_only": False}
    monkeypatch.setattr(exclusions, "SAMPLE_PAGES", 1)
    monkeypatch.setattr(exclusions, "SAMPLE_PAGE_SIZE", 10)
    guess = exclusions.estimate(segment, 7, True, None, app.config)
    assert guess.estimated and (guess.total, guess.sampled) == (30, 10)
    # The sample (the first 10) holds the running campaign's 6: within the cap.
    assert guess.frequency_cap == round(len(_going(running.id)) * 3)
    parts = (guess.invalid, guess.duplicate, guess.suppressed, guess.undeliverable)
    assert guess.remaining == guess.total - sum(parts) - guess.frequency_cap
    assert 0 < guess.remaining < guess.total


def test_the_apis_count_of_a_loaded_audience_is_its_skips(app, client, make, api, monkeypatch):
    running = make(6, "Running")
    _load(app, running)
    pump.pump(running.id)
    capped = make(12, "Capped", cap=7)
    _load(app, capped)
    pump.pump(capped.id)

    def no_erp(*args, **kwargs):
        raise AssertionError("a loaded audience's count reads no ERP")

    monkeypatch.setattr(exclusions, "estimate", no_erp)
    answer = client.get(f"/api/v1/campaigns/{capped.id}/exclusions", headers=api)
    assert answer.status_code == 200, answer.json
    counts = answer.json["exclusions"]
    assert counts["estimated"] is False and counts["total"] == 12
    assert counts["frequency_cap"] == len(_skipped(capped.id, "frequency_cap")) > 0
    skipped = [m for m in _rows(capped.id).values() if m.status is MessageStatus.SKIPPED]
    assert counts["remaining"] == 12 - len(skipped) - (12 - len(_rows(capped.id)))


def test_the_apis_estimate_holds_no_transaction_open_across_the_erp(
    app, client, make, api, monkeypatch
):
    draft = make(5, "Draft", cap=7)
    seen: list[bool] = []
    real = exclusions.estimate

    def watched(*args, **kwargs):
        seen.append(db.session().in_transaction())
        return real(*args, **kwargs)

    monkeypatch.setattr(exclusions, "estimate", watched)
    answer = client.get(f"/api/v1/campaigns/{draft.id}/exclusions", headers=api)
    assert answer.status_code == 200 and seen == [False]


def test_the_api_refuses_a_fractional_cap_and_a_non_boolean_flag(app, client, make, api):
    source = make(3, "Source")
    for body, field in (
        ({"frequency_cap_days": 1.5}, "frequency_cap_days"),
        ({"exclude_running": None}, "exclude_running"),
        ({"exclude_running": "on"}, "exclude_running"),
    ):
        answer = client.post("/api/v1/campaigns", json=_payload(source) | body, headers=api)
        assert answer.status_code == 422, (body, answer.json)
        assert set(answer.json["error"]["fields"]) == {field}
    whole = client.post(
        "/api/v1/campaigns", json=_payload(source) | {"frequency_cap_days": 2.0}, headers=api
    )
    assert whole.status_code == 201 and whole.json["frequency_cap_days"] == 2


def test_the_form_checkbox_still_sets_exclude_running(app):
    from werkzeug.datastructures import MultiDict

    from campaigns.validation import Checker, campaign_data_from_form, parse_bool

    check = Checker()
    ticked = campaign_data_from_form(MultiDict({"exclude_running": "on"}))["exclude_running"]
    unticked = campaign_data_from_form(MultiDict({}))["exclude_running"]
    assert parse_bool(ticked, check, "exclude_running") is True
    assert parse_bool(unticked, check, "exclude_running") is False
    assert not check.errors


def test_a_repeated_number_is_a_duplicate_before_any_exclusion(app, make):
    first = make(3, "First")
    _load(app, first)
    pump.pump(first.id)
    contacted = sorted(_going(first.id))[0]
    capped = make(3, "Capped", cap=7, exclude_running=True)
    customer = {"first_name": "Ana", "city": "Santos", "name": "Ana"}
    rows = fanout._message_rows(
        capped,
        [{"id": 1, "phone": contacted, **customer}, {"id": 2, "phone": contacted, **customer}],
        app.config,
    )
    assert [row["error_code"] for row in rows] == ["frequency_cap", "duplicate"]
    counts = exclusions.count([contacted, contacted], 7, True, capped.id)
    assert (counts.frequency_cap, counts.duplicate) == (1, 1)


def test_the_zone_counts_follow_the_caps_skips_in_a_window(app, make):
    first = make(10, "First")
    capped = make(20, "Windowed", cap=7)
    capped.send_window = {"start": "00:00", "end": "23:59", "days": [0, 1, 2, 3, 4, 5, 6]}
    db.session.commit()
    _load(app, first)
    _load(app, capped)
    pump.pump(first.id)
    pump.pump(capped.id)
    assert _skipped(capped.id, "frequency_cap")
    campaign = db.session.get(Campaign, capped.id, populate_existing=True)
    from campaigns import counters

    pending = counters.totals(db.session, capped.id)["pending"]
    assert sum((campaign.window_zones or {}).values()) == pending
    assert_counters_match_rows(capped.id)
