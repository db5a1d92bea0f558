"""Personal data (LGPD): retention erases recipients' data after their campaign ends,
and one person's data is erased on request (CLI and admin page), an opt-out kept
as a hash."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from flask_migrate import downgrade

from app import db
from campaigns import campaign_states, config, counters, fanout, message_states
from campaigns.clock import database_now
from campaigns.config import ConfigError
from campaigns.models import (
    AuditEvent,
    Campaign,
    CampaignActivity,
    CampaignStatus,
    Message,
    MessageStatus,
    Role,
    Suppression,
)
from campaigns.reasons import TEST_PHONE, Reason
from campaigns.services import ServiceError, personal_data
from campaigns.services.suppressions import is_suppressed, phone_hash, suppress_quietly
from tests.helpers import assert_counters_match_rows, demo_campaign, demo_campaign_at, make_app

S = MessageStatus
ANA = "+5511987650001"
BIA = "+5511987650002"


def _campaign(owner_id: int, numbers: list[str], name: str = "LGPD") -> Campaign:
    """A sending campaign whose messages for ``numbers`` are queued, with names and variables."""
    campaign = demo_campaign(owner_id, name=name)
    campaign_states.start(db.session, campaign)
    rows: list[dict[str, Any]] = [
        {
            "campaign_id": campaign.id,
            "customer_ref": f"c{i}",
            "phone": phone,
            "customer_data": {"first_name": f"Person {i}"},
            "params": {"first_name": f"Person {i}", "coupon": "X1"},
            "status": "pending",
            "error_code": None,
            "error_text": None,
        }
        for i, phone in enumerate(numbers)
    ]
    message_states.add_new(db.session, campaign.id, rows)
    campaign.audience_loaded_at = database_now(db.session)
    message_states.queue_next(db.session, campaign.id, len(numbers))
    db.session.commit()
    return campaign


def _message(campaign_id: int, phone: str) -> Message:
    return db.session.scalars(
        sa.select(Message).where(Message.campaign_id == campaign_id, Message.phone == phone)
    ).one()


def _ended(owner_id: int, numbers: list[str], days_ago: int, **kw: Any) -> Campaign:
    """A campaign that sent its first message, failed its second (text echoing the number)
    and ended ``days_ago``."""
    campaign = _campaign(owner_id, numbers, **kw)
    ids = sorted(
        m.id for m in db.session.scalars(sa.select(Message).filter_by(campaign_id=campaign.id))
    )
    message_states.claim(db.session, campaign.id, ids, S.QUEUED)
    message_states.record_sent(db.session, campaign.id, [(ids[0], f"wamid.{campaign.id}")])
    for message_id in ids[1:]:
        message_states.fail(
            db.session, message_id, [S.SENDING], "131026", f"{numbers[1]} unreachable"
        )
    campaign.status = CampaignStatus.COMPLETED
    campaign.completed_at = database_now(db.session) - timedelta(days=days_ago)
    db.session.commit()
    return campaign


def _personal(campaign_id: int) -> list[tuple[Any, ...]]:
    return [
        tuple(row)
        for row in db.session.execute(
            sa.select(
                Message.phone,
                Message.customer_ref,
                Message.customer_data,
                Message.params,
                Message.error_text,
            ).where(Message.campaign_id == campaign_id)
        )
    ]


def _kept(campaign_id: int) -> list[tuple[Any, ...]]:
    return [
        tuple(row)
        for row in db.session.execute(
            sa.select(Message.id, Message.status, Message.error_code, Message.sent_at)
            .where(Message.campaign_id == campaign_id)
            .order_by(Message.id)
        )
    ]


ERASED = (None, None, {}, None, None)

# -- retention


def test_retention_erases_only_campaigns_ended_past_the_window(app, owner):
    old = _ended(owner.id, [ANA, BIA], days_ago=181, name="old")
    recent = _ended(owner.id, [ANA, BIA], days_ago=10, name="recent")
    running = _campaign(owner.id, [ANA, BIA], name="running")
    running.started_at = database_now(db.session) - timedelta(days=400)
    cancelled = _campaign(owner.id, [ANA], name="cancelled")
    cancelled.status = CampaignStatus.CANCELLED
    cancelled.completed_at = database_now(db.session) - timedelta(days=300)
    message_states.cancel_unsent(db.session, cancelled.id)
    db.session.commit()
    before = {c.id: (_kept(c.id), counters.totals(db.session, c.id)) for c in (old, cancelled)}

    run = personal_data.erase_expired(180)

    assert sorted(run.campaigns_erased) == sorted([old.id, cancelled.id])
    for campaign in (old, cancelled):
        db.session.refresh(campaign)
        assert campaign.data_erased_at is not None
        assert all(row == ERASED for row in _personal(campaign.id))
        # statuses, codes, times and counters are what reports and progress read
        assert (_kept(campaign.id), counters.totals(db.session, campaign.id)) == before[campaign.id]
        assert_counters_match_rows(campaign.id)
    for campaign in (recent, running):
        db.session.refresh(campaign)
        assert campaign.data_erased_at is None
        assert {row[0] for row in _personal(campaign.id)} == {ANA, BIA}
    # a second run finds nothing left to do
    assert personal_data.erase_expired(180).messages == 0


def test_retention_goes_in_batches_and_finishes_over_later_runs(app, owner):
    numbers = [f"+55119876500{i:02d}" for i in range(5)]
    campaign = _ended(owner.id, numbers, days_ago=200)

    first = personal_data.erase_expired(180, batch_rows=2, max_batches=2)
    assert (first.batches, first.messages, first.campaigns_erased) == (2, 4, [])
    db.session.refresh(campaign)
    assert campaign.data_erased_at is None
    assert sum(row == ERASED for row in _personal(campaign.id)) == 4

    second = personal_data.erase_expired(180, batch_rows=2, max_batches=2)
    assert (second.messages, second.campaigns_erased) == (1, [campaign.id])
    assert all(row == ERASED for row in _personal(campaign.id))


def test_an_erased_campaign_still_shows_its_page_progress_and_export(app, client, login_as):
    user = login_as(Role.SUPERVISOR)
    campaign = _ended(user.id, [ANA, BIA], days_ago=365)
    db.session.execute(
        sa.update(Message).where(Message.status == S.FAILED).values(error_code="131000")
    )
    test_send = CampaignActivity(
        campaign_id=campaign.id,
        action="test_sent",
        detail_code=TEST_PHONE,
        detail_params={"phone": ANA[:-4] + "****"},
    )
    db.session.add(test_send)
    db.session.commit()
    personal_data.erase_expired(180)

    page = client.get(f"/campaigns/{campaign.id}")
    assert page.status_code == 200 and b"under the retention policy" in page.data
    assert b"personal data erased" in client.get(f"/campaigns/{campaign.id}/recipients").data
    progress = client.get(f"/campaigns/{campaign.id}/progress")
    assert progress.status_code == 286 and b'-bar" value="2"' in progress.data  # 2 of 2 done
    errors = client.get(f"/campaigns/{campaign.id}/errors")
    assert errors.status_code == 200 and b"131000" in errors.data
    assert b"/retry-failed" not in errors.data  # retryable, but there is no number to send to
    export = client.get(f"/campaigns/{campaign.id}/recipients.csv").get_data(as_text=True)
    lines = export.strip().splitlines()
    assert len(lines) == 3 and ",erased,Sent," in lines[1] and ",erased,Failed,131000," in lines[2]
    assert ANA not in export and BIA not in export and "Person" not in export
    db.session.refresh(test_send)
    assert test_send.detail is None


# -- one person's erasure


def test_erasure_removes_the_number_from_every_store_and_cancels_what_waits(app, owner):
    old = _ended(owner.id, [BIA, ANA], days_ago=3)  # ANA's message failed here
    sending = _campaign(owner.id, [ANA, BIA], name="sending")  # both queued
    suppress_quietly(db.session, ANA, "Replied “PARE”", "opt_out_reply")
    campaign_states.record_activity(
        db.session, old.id, owner.id, "test_sent", Reason(TEST_PHONE, {"phone": ANA[:-4] + "****"})
    )
    db.session.commit()
    ana_queued = _message(sending.id, ANA).id

    report = personal_data.erase_person("(11) 98765-0001", owner)

    assert (report.messages, report.campaigns, report.waiting, report.activity) == (2, 2, 1, 1)
    assert report.opt_out and ANA not in str(report.details())
    assert report.details()["phone_last4"] == "0001"
    assert db.session.scalar(sa.select(sa.func.count()).where(Message.phone == ANA)) == 0
    cancelled = db.session.get(Message, ana_queued)
    assert (cancelled.status, cancelled.error_code) == (S.CANCELLED, "erased")
    assert (cancelled.customer_data, cancelled.params, cancelled.customer_ref) == ({}, None, None)
    for campaign in (old, sending):
        assert_counters_match_rows(campaign.id)
    # the queued job for it sends nothing; Bia's goes on
    claimed = message_states.claim(
        db.session, sending.id, [ana_queued, _message(sending.id, BIA).id], S.QUEUED
    )
    assert [c.phone for c in claimed] == [BIA]
    db.session.commit()
    # the opt-out stands, as a hash only, reason and all personal text gone
    suppression = db.session.scalars(sa.select(Suppression)).one()
    assert (suppression.phone, suppression.phone_hash, suppression.reason) == (
        None,
        phone_hash(ANA),
        "",
    )
    assert suppression.source == "opt_out_reply"
    test_send = db.session.scalars(sa.select(CampaignActivity).filter_by(action="test_sent")).one()
    assert (test_send.detail_code, test_send.detail_params) == (None, None)
    assert BIA in {row[0] for row in _personal(sending.id)}
    # the request is in the audit trail, without the number
    event = db.session.scalars(sa.select(AuditEvent).filter_by(action="data.erase")).one()
    assert (event.actor_id, event.target_label) == (owner.id, "…0001")
    assert event.details["messages"] == 2 and ANA not in str(event.details)


def test_a_later_campaign_skips_a_number_whose_opt_out_is_kept_as_a_hash(app, owner):
    suppress_quietly(db.session, ANA, "STOP", "opt_out_reply")
    db.session.commit()
    personal_data.erase_person(ANA, None)
    assert db.session.scalar(sa.select(Suppression.phone)) is None

    assert is_suppressed([ANA, BIA]) == {ANA}
    later = demo_campaign(owner.id, name="later")
    customers = [{"id": 1, "phone": "11 98765-0001", "first_name": "A", "city": "SP"}]
    (row,) = fanout._message_rows(later, customers, app.config)
    assert (row["status"], row["error_code"]) == ("skipped", "suppressed")
    # WhatsApp reporting the opt-out again does not store the number in the clear
    assert suppress_quietly(db.session, ANA, "131050", "provider") is False
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Suppression)) == 1


def test_a_message_in_its_call_when_erased_is_cancelled_at_its_next_claim(app, owner):
    campaign = _campaign(owner.id, [ANA])
    message_id = _message(campaign.id, ANA).id
    message_states.claim(db.session, campaign.id, [message_id], S.QUEUED)
    db.session.commit()

    report = personal_data.erase_person(ANA, None)
    assert (report.in_call, report.waiting) == (1, 0)
    assert db.session.get(Message, message_id).status is S.SENDING  # its call's outcome stands
    # the call failed transiently: back to wait, and never called again
    message_states.requeue(db.session, campaign.id, [(message_id, None, "timeout")], S.RETRYING)
    assert message_states.claim(db.session, campaign.id, [message_id], S.RETRYING) == []
    db.session.commit()
    message = db.session.get(Message, message_id)
    assert (message.status, message.error_code) == (S.CANCELLED, "erased")
    assert_counters_match_rows(campaign.id)


def test_retry_failed_never_reopens_an_erased_message(app, owner):
    campaign = _ended(owner.id, [BIA, ANA], days_ago=1)
    db.session.execute(sa.update(Message).values(error_code="131000"))  # retryable
    db.session.commit()
    personal_data.erase_person(ANA, None)
    assert message_states.reopen_failed(db.session, campaign.id, ["131000"]) == 0


def test_erasing_a_number_nothing_holds_is_a_clear_empty_result(app):
    report = personal_data.erase_person("+55 11 98765-0009", None)
    assert report.nothing_stored and report.phone_tail == "0009"


@pytest.mark.parametrize("raw", ["", "not a phone", "+55 11 98765\x000001", "1" * 500])
def test_a_phone_that_is_not_one_is_a_field_error(app, raw):
    with pytest.raises(ServiceError) as refused:
        personal_data.erase_person(raw, None)
    assert refused.value.field == "phone"


# -- the command and the page


def test_flask_data_erase(app, owner, runner):
    campaign = _campaign(owner.id, [ANA, BIA])

    nothing = runner.invoke(args=["data", "erase", "+5511987650009"])
    assert nothing.exit_code == 0 and "Nothing is stored" in nothing.output
    refused = runner.invoke(args=["data", "erase", "garbage"])
    assert refused.exit_code == 2 and "PHONE" in refused.output
    declined = runner.invoke(args=["data", "erase", ANA], input="n\n")
    assert declined.exit_code == 1 and "1 not sent yet" in declined.output
    assert ANA in {row[0] for row in _personal(campaign.id)}

    done = runner.invoke(args=["data", "erase", ANA, "--yes"])
    assert done.exit_code == 0, done.output
    assert "Erased: 1 messages (1 cancelled)" in done.output and ANA not in done.output
    assert {row[0] for row in _personal(campaign.id)} == {None, BIA}


@pytest.mark.parametrize("role", [Role.VIEWER, Role.SUPERVISOR])
def test_the_erasure_page_is_for_admins_only(client, login_as, role):
    login_as(role)
    assert client.get("/users/personal-data").status_code == 403
    assert client.post("/users/personal-data/preview", data={"phone": ANA}).status_code == 403
    assert client.post("/users/personal-data/erase", data={"phone": ANA}).status_code == 403


def test_an_admin_previews_confirms_and_sees_the_result(app, client, login_as):
    admin = login_as(Role.ADMIN)
    campaign = _campaign(admin.id, [ANA, BIA])

    assert client.get("/users/personal-data").status_code == 200
    preview = client.post("/users/personal-data/preview", data={"phone": "(11) 98765-0001"})
    assert preview.status_code == 200
    assert b"hx-confirm" in preview.data and b"1 in 1 campaigns" in preview.data
    assert ANA in {row[0] for row in _personal(campaign.id)}  # a preview changes nothing

    erased = client.post(
        "/users/personal-data/erase",
        data={"phone": "(11) 98765-0001"},
        headers={"HX-Request": "true"},
    )
    assert erased.status_code == 200 and erased.headers["HX-Retarget"] == "body"
    assert b"Erased the number ending 0001" in erased.data
    assert {row[0] for row in _personal(campaign.id)} == {None, BIA}

    again = client.post("/users/personal-data/preview", data={"phone": ANA})
    assert b"Nothing is stored" in again.data


@pytest.mark.parametrize("raw", ["garbage", "+55 11 98765\x000001"])
def test_the_erasure_page_puts_a_bad_number_at_its_field(client, login_as, raw):
    login_as(Role.ADMIN)
    for url in ("/users/personal-data/preview", "/users/personal-data/erase"):
        response = client.post(url, data={"phone": raw})
        assert response.status_code == 422
        assert b'class="field-error" id="phone-error"' in response.data


# -- settings


def test_the_retention_and_hash_key_settings(monkeypatch, tmp_path):
    monkeypatch.setattr(config, "load_env_file", lambda: None)
    monkeypatch.setattr(config, "INSTANCE_PATH", tmp_path)
    monkeypatch.setenv("DISPARO_ENV", "development")
    monkeypatch.setenv("SECRET_KEY", "s" * 40)
    for name in ("DATA_RETENTION_DAYS", "PHONE_HASH_KEY"):
        monkeypatch.delenv(name, raising=False)
    default = config.load_settings()
    assert default.data_retention_days == 180
    assert default.phone_hash_key == config.load_settings().phone_hash_key  # stable
    monkeypatch.setenv("SECRET_KEY", "t" * 40)
    assert config.load_settings().phone_hash_key != default.phone_hash_key
    monkeypatch.setenv("PHONE_HASH_KEY", "k" * 32)
    monkeypatch.setenv("DATA_RETENTION_DAYS", "30")
    chosen = config.load_settings()
    assert (chosen.phone_hash_key, chosen.data_retention_days) == (b"k" * 32, 30)
    for name, value in (("PHONE_HASH_KEY", "short"), ("DATA_RETENTION_DAYS", "0")):
        monkeypatch.setenv(name, value)
        with pytest.raises(ConfigError, match=name):
            config.load_settings()
        monkeypatch.setenv(name, {"PHONE_HASH_KEY": "k" * 32, "DATA_RETENTION_DAYS": "30"}[name])


# -- the migration


def test_0012_downgrade_keeps_erased_rows_valid_and_drops_hash_only_opt_outs(empty_database_url):
    app = make_app(empty_database_url)
    with app.app_context():
        # The rows are made with today's models, then the schema goes back to 0012.
        _owner_id, campaign_id = demo_campaign_at("0012")
        with psycopg.connect(empty_database_url) as conn:
            conn.execute(
                "INSERT INTO suppressions (phone, phone_hash, reason, source) VALUES"
                " (NULL, repeat('a', 64), '', 'manual'), ('+5511987650001', NULL, 'x', 'manual')"
            )
            conn.execute(
                "INSERT INTO messages (id, campaign_id, phone, customer_ref, status) VALUES"
                "  (7, %(c)s, NULL, NULL, 'sent'), (8, %(c)s, NULL, NULL, 'sent')",
                {"c": campaign_id},
            )
        downgrade(revision="0010")
        with psycopg.connect(empty_database_url) as conn:
            assert conn.execute("SELECT phone FROM suppressions").fetchall() == [
                ("+5511987650001",)
            ]
            assert conn.execute(
                "SELECT phone, customer_ref FROM messages ORDER BY id"
            ).fetchall() == [("erased-7", "erased-7"), ("erased-8", "erased-8")]
        db.session.remove()
        db.engine.dispose()  # the scratch database is dropped after the test
