"""Exclusions: the contact history and the frequency cap, numbers in other running
campaigns, the live count, the campaign defaults, and the history's retention and erasure.

The cap is decided at the pump's admission (contact_history.admit): the in-process tests
run the stages by hand in the order that makes the race (both campaigns loaded before
either pumps); the last test runs two capped campaigns through real workers at once.
"""

from __future__ import annotations

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
    Message,
    MessageStatus,
    Role,
    Suppression,
)
from campaigns.services import undeliverable
from campaigns.services.campaigns import (
    cancel_campaign,
    duplicate_campaign,
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
    # The history now says the second campaign, and remembers the contact before it.
    row = db.session.get(ContactHistory, phone_hash(sorted(contacted)[0]))
    assert row is not None and row.campaign_id == second.id
    assert row.previous_contacted_at is not None


def test_a_campaigns_own_contacts_never_hold_it_back(app, make):
    capped = make(6, "Capped", cap=30)
    _load(app, capped)
    phones = {m.id: p for p, m in _rows(capped.id).items() if m.status is MessageStatus.PENDING}
    assert contact_history.admit(db.session, capped.id, 30, phones) == set()
    # Admitted again (held back by the budget or a pause in between): still its own.
    assert contact_history.admit(db.session, capped.id, 30, phones) == set()
    # Another capped campaign is refused all of them.
    assert contact_history.admit(db.session, capped.id + 1000, 30, phones) == set(phones)
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
        row.phone_hash: row.contacted_at for row in db.session.scalars(sa.select(ContactHistory))
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

    # The ones only the cancelled campaign had contacted are gone, the earlier contacts
    # are back as they were, but for the one it called.
    after = {
        row.phone_hash: row.contacted_at
        for row in db.session.scalars(
            sa.select(ContactHistory).execution_options(populate_existing=True)
        )
    }
    kept = after.pop(called_hash)
    assert kept > before.pop(called_hash, kept - timedelta(days=1))
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
    assert len(db.session.scalars(sa.select(ContactHistory)).all()) >= 1  # the others stay


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
