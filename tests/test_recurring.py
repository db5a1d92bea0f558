"""Recurring campaigns: the rule's occurrences (campaigns/recurrence.py), the runs the
scheduler makes of a series (campaign_states.start_due, make_run), the skip while the
previous run is unfinished, and the API, form and pages.

The scheduler is called with explicit tick times rather than waiting for the clock.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from app import db
from campaigns import campaign_states, counters, notifications, queues, reasons, recurrence
from campaigns.clock import database_now
from campaigns.models import (
    Campaign,
    CampaignActivity,
    CampaignStatus,
    Message,
    MessageTemplate,
    Notification,
    Role,
)
from campaigns.services import Conflict, ServiceError
from campaigns.services.campaigns import (
    cancel_campaign,
    duplicate_campaign,
    pause_campaign,
    resume_campaign,
    schedule_campaign,
    send_campaign_now,
    unschedule_campaign,
    update_campaign,
)
from campaigns.services.demo import seed_demo
from campaigns.services.templates import default_sender
from campaigns.services.users import create_api_token
from campaigns.validation import Checker, parse_recurrence
from tests.helpers import (
    assert_counters_match_rows,
    demo_campaign,
    jobs,
    lift_limits,
    wait_for,
)

SAO_PAULO = "America/Sao_Paulo"
NEW_YORK = "America/New_York"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# -- the rule's arithmetic -----------------------------------------------------------------


def test_daily_runs_at_its_local_time_the_next_day_once_passed():
    rule = {"every": "daily", "at": "09:00", "time_zone": SAO_PAULO}  # UTC-3, no DST
    assert recurrence.next_occurrence(rule, utc(2026, 12, 5, 11, 59)) == utc(2026, 12, 5, 12)
    # Strictly after: at the occurrence itself, the next day's.
    assert recurrence.next_occurrence(rule, utc(2026, 12, 5, 12)) == utc(2026, 12, 6, 12)


def test_weekly_runs_on_its_weekday():
    monday = {"every": "weekly", "at": "09:30", "weekday": 0, "time_zone": SAO_PAULO}
    sunday = {"every": "weekly", "at": "09:30", "weekday": 6, "time_zone": SAO_PAULO}
    saturday_5th = utc(2026, 12, 5, 15)
    assert recurrence.next_occurrence(monday, saturday_5th) == utc(2026, 12, 7, 12, 30)
    assert recurrence.next_occurrence(sunday, saturday_5th) == utc(2026, 12, 6, 12, 30)
    assert recurrence.next_occurrence(monday, utc(2026, 12, 7, 12, 30)) == utc(2026, 12, 14, 12, 30)


def test_monthly_on_the_31st_runs_on_a_shorter_months_last_day():
    rule = {"every": "monthly", "at": "08:00", "day": 31, "time_zone": SAO_PAULO}
    at, seen = utc(2027, 1, 1), []
    for _ in range(5):
        at = recurrence.next_occurrence(rule, at)
        seen.append(at.astimezone(recurrence.ZoneInfo(SAO_PAULO)).date().isoformat())
    assert seen == ["2027-01-31", "2027-02-28", "2027-03-31", "2027-04-30", "2027-05-31"]
    leap = recurrence.next_occurrence(rule, utc(2028, 2, 1))
    assert leap == utc(2028, 2, 29, 11)
    fifteenth = {"every": "monthly", "at": "08:00", "day": 15, "time_zone": SAO_PAULO}
    assert recurrence.next_occurrence(fifteenth, utc(2027, 2, 16)) == utc(2027, 3, 15, 11)


def test_a_local_time_holds_across_daylight_saving_time():
    rule = {"every": "daily", "at": "09:00", "time_zone": NEW_YORK}
    # 8 March 2026: New York moves from UTC-5 to UTC-4; 09:00 stays 09:00 local.
    runs = [utc(2026, 3, 6)]
    for _ in range(3):
        runs.append(recurrence.next_occurrence(rule, runs[-1]))
    assert runs[1:] == [utc(2026, 3, 6, 14), utc(2026, 3, 7, 14), utc(2026, 3, 8, 13)]
    # 1 November 2026: back to UTC-5.
    assert recurrence.next_occurrence(rule, utc(2026, 10, 31, 13)) == utc(2026, 11, 1, 14)
    # A time the change skips runs as late as the skipped hour (02:30 -> 03:30 EDT); one it
    # repeats runs once, at its first pass.
    skipped = {"every": "daily", "at": "02:30", "time_zone": NEW_YORK}
    assert recurrence.next_occurrence(skipped, utc(2026, 3, 8, 5)) == utc(2026, 3, 8, 7, 30)
    repeated = {"every": "daily", "at": "01:30", "time_zone": NEW_YORK}
    assert recurrence.next_occurrence(repeated, utc(2026, 11, 1, 5)) == utc(2026, 11, 1, 5, 30)
    assert recurrence.next_occurrence(repeated, utc(2026, 11, 1, 5, 30)) == utc(2026, 11, 2, 6, 30)


def test_a_missed_tick_stands_for_the_latest_occurrence_and_moves_on():
    rule = {"every": "daily", "at": "09:00", "time_zone": SAO_PAULO}
    due = utc(2026, 12, 1, 12)
    tick = utc(2026, 12, 4, 13)  # three days late
    assert recurrence.latest_due(rule, due, tick) == utc(2026, 12, 4, 12)
    assert recurrence.next_occurrence(rule, tick) == utc(2026, 12, 5, 12)
    assert recurrence.latest_due(rule, due, due) == due


def test_the_run_is_named_by_its_local_date_and_fits():
    rule = {"every": "daily", "at": "23:30", "time_zone": SAO_PAULO}
    assert recurrence.run_name("Promo", rule, utc(2026, 12, 6, 2, 30)) == "Promo — 2026-12-05"
    assert len(recurrence.run_name("x" * 200, rule, utc(2026, 12, 6, 2, 30))) == 200


def test_the_rule_is_said_in_words(app):
    assert recurrence.describe(
        {"every": "weekly", "at": "09:00", "weekday": 0, "time_zone": SAO_PAULO}
    ).startswith("Every Monday at 09:00")
    assert "last day" in recurrence.describe(
        {"every": "monthly", "at": "09:00", "day": 31, "time_zone": SAO_PAULO}
    )


# -- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ("weekly", "recurrence"),
        ({"every": ["daily"], "at": "09:00", "time_zone": SAO_PAULO}, "recurrence.every"),
        ({"every": "daily", "at": ["09:00"], "time_zone": {"x": 1}}, "recurrence.at"),
        (
            {"every": "weekly", "at": "09:00", "weekday": {}, "time_zone": SAO_PAULO},
            "recurrence.weekday",
        ),
        ({"every": "yearly", "at": "09:00", "time_zone": SAO_PAULO}, "recurrence.every"),
        ({"every": "daily", "at": "9h", "time_zone": SAO_PAULO}, "recurrence.at"),
        ({"every": "daily", "at": "24:00", "time_zone": SAO_PAULO}, "recurrence.at"),
        ({"every": "daily", "time_zone": SAO_PAULO}, "recurrence.at"),
        ({"every": "weekly", "at": "09:00", "time_zone": SAO_PAULO}, "recurrence.weekday"),
        (
            {"every": "weekly", "at": "09:00", "weekday": 7, "time_zone": SAO_PAULO},
            "recurrence.weekday",
        ),
        ({"every": "monthly", "at": "09:00", "day": 0, "time_zone": SAO_PAULO}, "recurrence.day"),
        ({"every": "monthly", "at": "09:00", "day": 32, "time_zone": SAO_PAULO}, "recurrence.day"),
        ({"every": "monthly", "at": "09:00", "time_zone": SAO_PAULO}, "recurrence.day"),
        (
            {"every": "daily", "at": "09:00", "weekday": 1, "time_zone": SAO_PAULO},
            "recurrence.weekday",
        ),
        ({"every": "daily", "at": "09:00", "time_zone": "Mars/Olympus"}, "recurrence.time_zone"),
        ({"every": "daily", "at": "09:00", "time_zone": "localtime"}, "recurrence.time_zone"),
        ({"every": "daily", "at": "09:00"}, "recurrence.time_zone"),
    ],
)
def test_a_bad_rule_is_refused_at_its_key(app, raw, field):
    check = Checker()
    parse_recurrence(raw, check)
    assert field in check.errors, check.errors


def test_a_good_rule_is_kept_and_none_means_no_repeat(app):
    check = Checker()
    assert parse_recurrence(None, check) is None
    assert parse_recurrence({"every": ""}, check) is None
    weekly = {"every": "weekly", "at": "18:45", "weekday": "4", "time_zone": NEW_YORK}
    assert parse_recurrence(weekly, check) == weekly | {"weekday": 4}
    assert check.errors == {}


# -- the series and its runs ------------------------------------------------------------------


def far_from_now() -> str:
    """A local time of day six hours away: the worker's own scheduler ticks (real time)
    never reach the series while a test ticks it by hand."""
    local = datetime.now(recurrence.ZoneInfo(SAO_PAULO)) + timedelta(hours=6)
    return local.strftime("%H:%M")


def daily() -> dict[str, Any]:
    return {"every": "daily", "at": far_from_now(), "time_zone": SAO_PAULO}


def make_series(owner_id: int, size: int = 20, rule: dict[str, Any] | None = None) -> Campaign:
    """A demo campaign that repeats (daily by default), scheduled: repeating."""
    campaign = demo_campaign(owner_id, size, name="Weekly promo")
    campaign.recurrence = rule or daily()
    db.session.commit()
    return schedule_campaign(campaign.id, None, owner_id, confirm=True)


def runs_of(series_id: int) -> list[Campaign]:
    db.session.expire_all()
    return list(
        db.session.scalars(
            sa.select(Campaign)
            .where(Campaign.recurrence_of_id == series_id)
            .order_by(Campaign.run_number)
        )
    )


def status_of(campaign_id: int) -> CampaignStatus:
    return db.session.scalar(sa.select(Campaign.status).where(Campaign.id == campaign_id))


SECOND = timedelta(seconds=1)


def test_scheduling_a_series_sets_its_next_occurrence(app, owner, live_server):
    rule = daily()
    before = database_now(db.session)
    series = make_series(owner.id, rule=rule)
    assert series.status is CampaignStatus.SCHEDULED
    assert series.scheduled_at == recurrence.next_occurrence(rule, before)
    with pytest.raises(Conflict):  # a series is never sent itself
        send_campaign_now(series.id, owner.id, confirm=True)


def test_a_series_first_and_second_runs_go_out_each_with_its_own_progress(
    app, owner, live_server, start_worker
):
    lift_limits(owner)
    series = make_series(owner.id, size=30)
    first_due = series.scheduled_at
    assert first_due is not None
    start_worker()

    [first_id] = campaign_states.start_due(first_due + SECOND)
    first = db.session.get(Campaign, first_id)
    assert first is not None
    assert (first.recurrence_of_id, first.run_number, first.recurrence) == (series.id, 1, None)
    assert first.name == recurrence.run_name(series.name, series.recurrence, first_due)
    assert (first.segment, first.variable_mapping) == (series.segment, series.variable_mapping)
    db.session.refresh(series)
    assert series.status is CampaignStatus.SCHEDULED
    second_due = series.scheduled_at
    assert second_due == first_due + timedelta(days=1)  # São Paulo keeps no DST
    wait_for(lambda: status_of(first_id) is CampaignStatus.COMPLETED, what="run 1 completed")
    first_totals = counters.totals(db.session, first_id)
    assert first_totals["total"] == 30 and first_totals["sent"] > 0
    assert_counters_match_rows(first_id)

    [second_id] = campaign_states.start_due(second_due + SECOND)
    second = db.session.get(Campaign, second_id)
    assert second is not None and (second.recurrence_of_id, second.run_number) == (series.id, 2)
    wait_for(lambda: status_of(second_id) is CampaignStatus.COMPLETED, what="run 2 completed")
    second_totals = counters.totals(db.session, second_id)
    assert second_totals["total"] == 30 and second_totals["sent"] == first_totals["sent"]
    assert_counters_match_rows(second_id)
    # Each run has its own messages and counters; the series sends nothing itself.
    # (Delivered and read keep arriving from the mock's webhooks: the outcomes are compared.)
    outcomes = ("total", "sent", "failed", "skipped", "cancelled")
    after = counters.totals(db.session, first_id)
    assert {k: after[k] for k in outcomes} == {k: first_totals[k] for k in outcomes}
    assert counters.totals(db.session, series.id)["total"] == 0
    per_campaign = dict(
        db.session.execute(
            sa.select(Message.campaign_id, sa.func.count()).group_by(Message.campaign_id)
        ).all()
    )
    assert per_campaign == {first_id: 30, second_id: 30}
    db.session.refresh(series)
    assert series.status is CampaignStatus.SCHEDULED
    assert series.scheduled_at == second_due + timedelta(days=1)


def test_a_run_whose_predecessor_is_unfinished_is_skipped_and_noted(app, owner, live_server):
    series = make_series(owner.id)
    [first_id] = campaign_states.start_due(series.scheduled_at + SECOND)  # no worker: sending
    db.session.refresh(series)
    due = series.scheduled_at
    assert due is not None

    assert campaign_states.start_due(due + SECOND) == []
    db.session.refresh(series)
    assert series.scheduled_at == due + timedelta(days=1)  # moved on
    assert [run.id for run in runs_of(series.id)] == [first_id]
    skip = db.session.scalars(
        sa.select(CampaignActivity).where(
            CampaignActivity.campaign_id == series.id, CampaignActivity.action == "run_skipped"
        )
    ).one()
    assert skip.detail_code == reasons.RUN_SKIPPED
    assert skip.detail_params == {"at": due.isoformat(), "id": first_id, "number": 1}
    [notice] = [
        job["args"] for job in jobs(queues.NOTIFY_TASK) if job["args"]["kind"] == "run_skipped"
    ]
    assert notice == {
        "campaign_id": series.id,
        "kind": "run_skipped",
        "params": {"at": due.isoformat()},
    }
    notifications.deliver(series.id, "run_skipped", first_attempt=True, params=notice["params"])
    told = db.session.scalars(
        sa.select(Notification).where(Notification.kind == "run_skipped")
    ).one()
    assert told.user_id == owner.id and told.code == reasons.RECURRING_RUN_SKIPPED
    text = reasons.render_english(told.code, told.params)
    assert "Weekly promo" in text and "had not finished" in text

    # Paused is unfinished too.
    pause_campaign(first_id, owner.id)
    db.session.refresh(series)
    assert campaign_states.start_due(series.scheduled_at + SECOND) == []
    # Once it has finished, the next occurrence makes run 2.
    cancel_campaign(first_id, owner.id)
    db.session.refresh(series)
    [second_id] = campaign_states.start_due(series.scheduled_at + SECOND)
    assert [(run.id, run.run_number) for run in runs_of(series.id)] == [
        (first_id, 1),
        (second_id, 2),
    ]


def test_a_missed_tick_makes_one_run_not_a_burst(app, owner, live_server):
    series = make_series(owner.id)
    due = series.scheduled_at
    assert due is not None
    tick = due + timedelta(days=3, hours=1)  # the workers were down three days
    [run_id] = campaign_states.start_due(tick)
    assert campaign_states.start_due(tick) == []
    [run] = runs_of(series.id)
    assert run.id == run_id
    assert run.name == recurrence.run_name(series.name, series.recurrence, due + timedelta(days=3))
    db.session.refresh(series)
    assert series.scheduled_at == due + timedelta(days=4)


def test_unscheduling_or_cancelling_the_series_stops_its_runs_not_those_started(
    app, owner, live_server
):
    series = make_series(owner.id)
    far = series.scheduled_at + timedelta(days=10)
    unschedule_campaign(series.id, owner.id)
    assert campaign_states.start_due(far) == [] and runs_of(series.id) == []

    series = schedule_campaign(series.id, None, owner.id, confirm=True)
    [run_id] = campaign_states.start_due(series.scheduled_at + SECOND)
    cancel_campaign(series.id, owner.id)
    assert campaign_states.start_due(far) == []
    assert [run.id for run in runs_of(series.id)] == [run_id]
    assert status_of(run_id) is CampaignStatus.SENDING


def test_editing_the_series_changes_its_future_runs_only(app, owner, live_server):
    series = make_series(owner.id)
    [run_id] = campaign_states.start_due(series.scheduled_at + SECOND)
    run_mapping = dict(db.session.get(Campaign, run_id).variable_mapping)
    fields = campaign_fields(series)
    weekly = {"every": "weekly", "at": "07:15", "weekday": 2, "time_zone": SAO_PAULO}
    changed = update_campaign(
        series.id,
        fields.__class__(
            **{**fields.__dict__, "recurrence": weekly}
            | {"variable_mapping": fields.variable_mapping | {"discount": {"text": "20%"}}}
        ),
        owner.id,
    )
    assert changed.scheduled_at == recurrence.next_occurrence(weekly, database_now(db.session))
    assert db.session.get(Campaign, run_id).variable_mapping == run_mapping
    # A series with runs keeps repeating; a scheduled one stops only once unscheduled.
    with pytest.raises(ServiceError) as refused:
        update_campaign(
            series.id, fields.__class__(**{**fields.__dict__, "recurrence": None}), owner.id
        )
    assert refused.value.errors == {"recurrence": refused.value.errors["recurrence"]}
    db.session.rollback()
    cancel_campaign(run_id, owner.id)
    [second_id] = campaign_states.start_due(changed.scheduled_at + SECOND)
    second = db.session.get(Campaign, second_id)
    assert second is not None and second.variable_mapping["discount"] == {"text": "20%"}


def campaign_fields(campaign: Campaign):
    from campaigns.services.campaigns import _fields_of

    return _fields_of(campaign)


def test_a_run_is_made_by_the_same_copy_as_a_duplicate(app, owner, live_server):
    series = make_series(owner.id)
    series.language_field = "language"
    db.session.commit()
    copied = [
        column.key
        for column in sa.inspect(Campaign).column_attrs
        if column.key not in {"id", "name", "owner_id", "status"}
        and column.key not in _not_copied()
    ]
    [run_id] = campaign_states.start_due(series.scheduled_at + SECOND)
    run = db.session.get(Campaign, run_id)
    duplicate = duplicate_campaign(series.id, owner.id)
    for column in copied:
        expected = getattr(series, column)
        assert getattr(duplicate, column) == expected, column
        if column != "recurrence":
            assert getattr(run, column) == expected, column
    assert duplicate.recurrence == series.recurrence and run.recurrence is None
    assert duplicate.status is CampaignStatus.DRAFT and duplicate.recurrence_of_id is None
    of_run = duplicate_campaign(run_id, owner.id)
    assert (of_run.recurrence, of_run.recurrence_of_id, of_run.run_number) == (None, None, None)


def _not_copied() -> frozenset[str]:
    from campaigns.models import NOT_COPIED

    return NOT_COPIED


def test_a_run_of_a_template_that_changed_fails_and_the_series_goes_on(app, owner, live_server):
    series = make_series(owner.id)
    due = series.scheduled_at
    template = db.session.get(MessageTemplate, series.template_id)
    template.buttons = [{"type": "COPY_CODE", "example": "SAVE30"}]
    db.session.commit()  # as an import from WhatsApp would, before the run's time
    assert campaign_states.start_due(due + SECOND) == []
    [run] = runs_of(series.id)
    assert run.status is CampaignStatus.FAILED
    assert run.status_reason_code == reasons.TEMPLATE_UNREADY
    db.session.refresh(series)
    assert series.status is CampaignStatus.SCHEDULED
    assert series.scheduled_at == due + timedelta(days=1)


# -- the API -------------------------------------------------------------------------------------


@pytest.fixture
def headers(app, user_factory) -> dict[str, str]:
    seed_demo()
    _token, raw = create_api_token(user_factory(Role.SUPERVISOR).id)
    return {"Authorization": f"Bearer {raw}"}


@pytest.fixture
def payload(headers) -> dict[str, Any]:
    template = db.session.query(MessageTemplate).filter_by(name="order_ready").one()
    return {
        "name": "Pedidos da semana",
        "sender_id": default_sender().id,
        "template_id": template.id,
        "segment": {"city": "Campinas", "opted_in_only": True, "max_audience": 50},
        "variables": {"1": {"field": "first_name"}, "2": {"text": "A-1042"}},
        "recurrence": {"every": "weekly", "at": "09:00", "weekday": 0, "time_zone": SAO_PAULO},
    }


def test_the_api_creates_schedules_and_lists_a_series_runs(client, headers, payload):
    created = client.post("/api/v1/campaigns", json=payload, headers=headers)
    assert created.status_code == 201, created.json
    series = created.json
    assert series["recurrence"] == payload["recurrence"]
    assert (series["next_run_at"], series["recurrence_of_id"], series["run_number"]) == (
        None,
        None,
        None,
    )
    url = f"/api/v1/campaigns/{series['id']}"
    # Scheduling a series needs no time: it starts repeating at its next occurrence.
    scheduled = client.post(f"{url}/schedule", json={"confirm": True}, headers=headers)
    assert scheduled.status_code == 202, scheduled.json
    next_run = datetime.fromisoformat(scheduled.json["next_run_at"])
    assert scheduled.json["status"] == "scheduled"
    assert next_run == datetime.fromisoformat(scheduled.json["scheduled_at"])
    local = next_run.astimezone(recurrence.ZoneInfo(SAO_PAULO))
    assert (local.weekday(), local.strftime("%H:%M")) == (0, "09:00")
    refused = client.post(f"{url}/send-now", json={"confirm": True}, headers=headers)
    assert refused.status_code == 409

    [run_id] = campaign_states.start_due(next_run + SECOND)
    runs = client.get(f"/api/v1/campaigns?recurrence_of={series['id']}", headers=headers).json
    assert [c["id"] for c in runs["campaigns"]] == [run_id] and runs["total"] == 1
    run = runs["campaigns"][0]
    assert (run["recurrence_of_id"], run["run_number"], run["recurrence"]) == (
        series["id"],
        1,
        None,
    )
    assert run["next_run_at"] is None and run["status"] == "sending"
    by_cursor = client.get(
        f"/api/v1/campaigns?recurrence_of={series['id']}&limit=5", headers=headers
    ).json
    assert [c["id"] for c in by_cursor["campaigns"]] == [run_id]
    bad = client.get("/api/v1/campaigns?recurrence_of=abc", headers=headers)
    assert bad.status_code == 422 and "recurrence_of" in bad.json["error"]["fields"]

    # An edit moves the next run to the new rule; a series with runs keeps repeating.
    daily = {"every": "daily", "at": "18:30", "time_zone": NEW_YORK}
    changed = client.patch(url, json={"recurrence": daily}, headers=headers)
    assert changed.status_code == 200, changed.json
    assert changed.json["recurrence"] == daily
    moved = datetime.fromisoformat(changed.json["next_run_at"])
    assert moved.astimezone(recurrence.ZoneInfo(NEW_YORK)).strftime("%H:%M") == "18:30"
    stop = client.patch(url, json={"recurrence": None}, headers=headers)
    assert stop.status_code == 422 and "recurrence" in stop.json["error"]["fields"]
    copy = client.post(f"{url}/duplicate", headers=headers)
    assert copy.status_code == 201 and copy.json["recurrence"] == daily


@pytest.mark.parametrize(
    ("recurrence_given", "field"),
    [
        ({"every": "hourly", "at": "09:00", "time_zone": SAO_PAULO}, "recurrence.every"),
        ({"every": "daily", "at": "25:00", "time_zone": SAO_PAULO}, "recurrence.at"),
        (
            {"every": "weekly", "at": "09:00", "weekday": 9, "time_zone": SAO_PAULO},
            "recurrence.weekday",
        ),
        ({"every": "monthly", "at": "09:00", "day": 40, "time_zone": SAO_PAULO}, "recurrence.day"),
        ({"every": "daily", "at": "09:00", "time_zone": "Nowhere/City"}, "recurrence.time_zone"),
        ([1, 2], "recurrence"),
    ],
)
def test_the_api_refuses_a_bad_rule_with_422_at_its_field(
    client, headers, payload, recurrence_given, field
):
    response = client.post(
        "/api/v1/campaigns", json=payload | {"recurrence": recurrence_given}, headers=headers
    )
    assert response.status_code == 422
    assert field in response.json["error"]["fields"], response.json


# -- the form and the pages --------------------------------------------------------------------


def form_for(template: MessageTemplate, **repeat: str) -> dict[str, str]:
    return {
        "name": "Quarta de ofertas",
        "sender_id": str(default_sender().id),
        "template_id": str(template.id),
        "segment.state": "SP",
        "segment.opted_in_only": "on",
        "var.first_name.source": "first_name",
        "var.discount.source": "text",
        "var.discount.text": "20%",
        "var.city.source": "city",
        "var.coupon.source": "text",
        "var.coupon.text": "QUARTA",
        # The Repeat fields as the browser posts them: every field, whatever the frequency.
        "recurrence.every": "",
        "recurrence.at": "09:00",
        "recurrence.weekday": "0",
        "recurrence.day": "1",
        "recurrence.time_zone": SAO_PAULO,
    } | {f"recurrence.{key}": value for key, value in repeat.items()}


@pytest.fixture
def promo(app):
    seed_demo()
    return db.session.query(MessageTemplate).filter_by(name="promo_weekend").one()


def test_the_form_repeats_nothing_by_default_in_the_readers_zone(client, login_as, promo):
    user = login_as(Role.SUPERVISOR)
    user.timezone = NEW_YORK
    db.session.commit()
    page = client.get("/campaigns/new").get_data(as_text=True)
    assert 'id="campaign-recurrence"' in page
    # Nothing chosen: the first option, "Does not repeat".
    assert not any(f'value="{every}" selected' in page for every in recurrence.EVERY)
    assert "Does not repeat" in page and "Monday" in page
    assert f'<option value="{NEW_YORK}" selected>' in page
    response = client.post("/campaigns/", data=form_for(promo))
    assert response.status_code == 303
    made = db.session.get(Campaign, int(response.headers["Location"].rsplit("/", 1)[-1]))
    assert made is not None and made.recurrence is None


def test_the_form_makes_a_series_or_says_what_is_wrong_at_its_field(client, login_as, promo):
    login_as(Role.SUPERVISOR)
    refused = client.post("/campaigns/", data=form_for(promo, every="monthly", day="32"))
    assert refused.status_code == 422
    assert 'id="recurrence.day-error"' in refused.get_data(as_text=True)
    response = client.post("/campaigns/", data=form_for(promo, every="weekly", weekday="2"))
    assert response.status_code == 303
    series = db.session.get(Campaign, int(response.headers["Location"].rsplit("/", 1)[-1]))
    assert series is not None
    assert series.recurrence == {
        "every": "weekly",
        "at": "09:00",
        "weekday": 2,
        "time_zone": SAO_PAULO,
    }
    edit = client.get(f"/campaigns/{series.id}/edit").get_data(as_text=True)
    assert '<option value="weekly" selected>' in edit and '<option value="2" selected>' in edit


def test_the_pages_show_the_series_its_runs_and_the_run_its_series(
    client, login_as, owner, live_server
):
    login_as(Role.SUPERVISOR)
    series = make_series(owner.id)
    page = client.get(f"/campaigns/{series.id}").get_data(as_text=True)
    assert "Every day at" in page and "No run yet." in page
    assert "Send now" not in page  # a series is sent through its runs
    due = series.scheduled_at
    [first_id] = campaign_states.start_due(due + SECOND)
    db.session.refresh(series)
    campaign_states.start_due(series.scheduled_at + SECOND)  # skipped: run 1 still sends
    db.session.refresh(series)
    page = client.get(f"/campaigns/{series.id}").get_data(as_text=True)
    assert f'id="campaign-{first_id}-run"' in page
    assert f'href="/campaigns/{first_id}"' in page
    assert recurrence.run_name(series.name, series.recurrence, due) in page
    assert f'datetime="{series.scheduled_at.isoformat()}"' in page  # the next run
    assert "skipped a run of the campaign" in page  # the series' activity
    run_page = client.get(f"/campaigns/{first_id}").get_data(as_text=True)
    assert "Run 1 of the repeating campaign" in run_page
    assert f'href="/campaigns/{series.id}"' in run_page
    listed = client.get("/campaigns/").get_data(as_text=True)
    assert "badge-repeats" in listed and "run 1" in listed


def test_start_repeating_from_the_page_needs_no_time(client, login_as, owner, live_server):
    login_as(Role.SUPERVISOR)
    campaign = demo_campaign(owner.id, 20, name="Daily")
    campaign.recurrence = daily()
    db.session.commit()
    page = client.get(f"/campaigns/{campaign.id}").get_data(as_text=True)
    assert "Start repeating" in page
    before = database_now(db.session)
    response = client.post(f"/campaigns/{campaign.id}/schedule", data={"scheduled_at": ""})
    assert response.status_code in (302, 303)
    db.session.expire_all()
    series = db.session.get(Campaign, campaign.id)
    assert series is not None and series.status is CampaignStatus.SCHEDULED
    assert series.scheduled_at == recurrence.next_occurrence(series.recurrence, before)


def test_a_series_paused_with_its_template_resumes_repeating(app, owner, live_server):
    series = make_series(owner.id)
    campaign_states.pause_for_template(series.id, reasons.Reason(reasons.TEMPLATE_PAUSED))
    db.session.expire_all()
    assert db.session.get(Campaign, series.id).status is CampaignStatus.PAUSED
    resumed = resume_campaign(series.id, owner.id)
    assert resumed.status is CampaignStatus.SCHEDULED and resumed.started_at is None
    assert resumed.scheduled_at > database_now(db.session)
    assert counters.totals(db.session, series.id)["total"] == 0 and runs_of(series.id) == []
