"""The audit trail: each administrative action writes exactly one row, with its actor,
target and details (never a secret or a full phone number), in the action's own
transaction; admins alone read it, on a page and through the API; old rows are pruned."""

from __future__ import annotations

import io
import json
import re
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from app import db
from campaigns import audit
from campaigns.models import ApiToken, AuditEvent, Role, Sender, Suppression, User
from campaigns.services.users import create_api_token

PHONE = "+5511987654321"
SENDER = {
    "name": "Loja Centro",
    "provider": "cloud_api",
    "phone_number_id": "106540352242922",
    "display_phone_number": "+55 11 4000-1234",
    "waba_id": "102290129340398",
    "access_token": "EAAG-secret-token",
    "app_secret": "app-secret-value",
    "webhook_verify_token": "verify-me",
    "rate_limit_per_minute": "60",
    "min_interval_ms": "500",
}
SECRETS = ("EAAG-secret-token", "app-secret-value", "verify-me", "new-token-value")


def last_id() -> int:
    return db.session.scalar(sa.select(sa.func.coalesce(sa.func.max(AuditEvent.id), 0)))


def since(mark: int) -> list[AuditEvent]:
    """The events recorded after ``mark`` (see last_id), oldest first."""
    db.session.rollback()  # see what the requests committed
    return list(
        db.session.scalars(
            sa.select(AuditEvent).where(AuditEvent.id > mark).order_by(AuditEvent.id)
        )
    )


def one(mark: int, action: str) -> AuditEvent:
    events = since(mark)
    assert [e.action for e in events] == [action], [(e.action, e.details) for e in events]
    return events[0]


def written(event: AuditEvent) -> str:
    """Everything the row holds, as text, to look for what must not be there."""
    return json.dumps([event.actor_email, event.target_label, event.details])


def assert_no_full_phone(event: AuditEvent) -> None:
    digits = re.sub(r"\D", "", written(event))
    assert "5511987654321" not in digits and "551140001234" not in digits, written(event)


@pytest.fixture
def admin(login_as) -> User:
    return login_as(Role.ADMIN)


@pytest.fixture
def api_admin(user_factory) -> tuple[User, dict[str, str]]:
    user = user_factory(Role.ADMIN)
    _token, raw = create_api_token(user.id)
    return user, {"Authorization": f"Bearer {raw}"}


def by(event: AuditEvent, user: User) -> None:
    assert (event.actor_id, event.actor_email) == (user.id, user.email)
    assert event.client_address == "127.0.0.1"


# --- users ---------------------------------------------------------------------------


def test_creating_a_user_is_recorded_without_its_password(client, admin):
    mark = last_id()
    response = client.post("/users/", data={"email": "new@example.com", "role": "supervisor"})
    password = re.search(r"shown once: (\S+)<", response.get_data(as_text=True)).group(1)
    event = one(mark, "user.create")
    by(event, admin)
    created = db.session.query(User).filter_by(email="new@example.com").one()
    assert (event.target_type, event.target_id, event.target_label) == (
        "user",
        created.id,
        "new@example.com",
    )
    assert event.details == {"role": "supervisor"}
    assert password not in written(event)


def test_a_refused_user_creation_records_nothing(client, admin):
    mark = last_id()
    assert client.post("/users/", data={"email": admin.email}).status_code == 422
    assert client.post("/users/", data={"email": "not-an-email"}).status_code == 422
    assert since(mark) == []


def test_a_role_change_and_a_limit_change_are_one_row_each(client, admin, user_factory):
    user = user_factory(Role.VIEWER)
    mark = last_id()
    response = client.post(
        f"/users/{user.id}",
        data={
            "role": "supervisor",
            "campaign_rate_limit_per_minute": "50",
            "api_rate_limit_per_minute": str(user.api_rate_limit_per_minute),
        },
    )
    assert response.status_code == 303
    role, limits = since(mark)
    assert role.action == "user.role_change"
    assert role.details == {"role": {"before": "viewer", "after": "supervisor"}}
    assert limits.action == "settings.change"
    # Only what changed: the API limit was sent as it was.
    assert limits.details == {"campaign_rate_limit_per_minute": {"before": 100, "after": 50}}
    for event in (role, limits):
        by(event, admin)
        assert (event.target_type, event.target_id, event.target_label) == (
            "user",
            user.id,
            user.email,
        )
    mark = last_id()
    client.post(f"/users/{user.id}", data={"role": "supervisor"})  # nothing changes
    assert since(mark) == []


def test_the_api_records_its_token_user(client, api_admin, user_factory):
    user = user_factory(Role.VIEWER)
    admin, headers = api_admin
    mark = last_id()
    response = client.patch(
        f"/api/v1/users/{user.id}", json={"api_rate_limit_per_minute": 10}, headers=headers
    )
    assert response.status_code == 200
    event = one(mark, "settings.change")
    by(event, admin)
    assert event.details == {"api_rate_limit_per_minute": {"before": 1000, "after": 10}}


def test_a_refused_role_change_records_nothing(client, admin, api_admin):
    mark = last_id()
    assert client.post(f"/users/{admin.id}", data={"role": "viewer"}).status_code == 422
    other, headers = api_admin
    refused = client.patch(f"/api/v1/users/{other.id}", json={"role": "viewer"}, headers=headers)
    assert refused.status_code == 409
    missing = client.patch("/api/v1/users/999999", json={"role": "viewer"}, headers=headers)
    assert missing.status_code == 404
    assert since(mark) == []


def test_disabling_enabling_and_resetting_a_password(client, admin, user_factory):
    user = user_factory(Role.SUPERVISOR)
    mark = last_id()
    client.post(f"/users/{user.id}/disable")
    client.post(f"/users/{user.id}/disable")  # already disabled: nothing to record
    client.post(f"/users/{user.id}/enable")
    response = client.post(f"/users/{user.id}/reset-password")
    password = re.search(r"shown once: (\S+)<", response.get_data(as_text=True)).group(1)
    client.post(f"/users/{admin.id}/disable")  # refused: yourself
    events = since(mark)
    assert [e.action for e in events] == ["user.disable", "user.enable", "user.password_reset"]
    for event in events:
        by(event, admin)
        assert (event.target_type, event.target_id) == ("user", user.id)
        assert event.details == {}
    assert password not in written(events[-1])


# --- API tokens ----------------------------------------------------------------------


def test_api_tokens_created_and_revoked_are_recorded_without_the_token(client, login_as):
    viewer = login_as(Role.VIEWER)
    mark = last_id()
    page = client.post("/me/tokens", data={"name": "ci"}).get_data(as_text=True)
    raw = re.search(r"dsp_[\w-]+", page).group(0)
    created = one(mark, "api_token.create")
    by(created, viewer)
    token = db.session.query(ApiToken).filter_by(user_id=viewer.id).one()
    assert (created.target_type, created.target_id, created.target_label) == (
        "api_token",
        token.id,
        "ci",
    )
    assert created.details == {"user_id": viewer.id}
    mark = last_id()
    client.post(f"/me/tokens/{token.id}/revoke")
    client.post(f"/me/tokens/{token.id}/revoke")  # already revoked
    client.post("/me/tokens/999999/revoke")  # not theirs: 404
    revoked = one(mark, "api_token.revoke")
    for event in (created, revoked):
        assert raw not in written(event) and raw[:10] not in written(event)


def test_the_cli_records_itself_as_the_actor(runner):
    mark = last_id()
    result = runner.invoke(
        args=["users", "create", "bot@example.com", "--role", "admin", "--api-token"],
        input="a long enough password\n",
    )
    assert result.exit_code == 0, result.output
    raw = result.output.strip().splitlines()[-1]
    events = since(mark)
    assert [e.action for e in events] == ["user.create", "api_token.create"]
    for event in events:
        assert event.actor_id is None and event.actor_email.startswith("cli")
        assert event.client_address is None
        assert raw not in written(event) and "a long enough password" not in written(event)
    assert events[0].details == {"role": "admin"}
    mark = last_id()
    refused = runner.invoke(args=["users", "create", "BOT@example.com"], input="x" * 12 + "\n")
    assert refused.exit_code != 0
    assert since(mark) == []


# --- senders -------------------------------------------------------------------------


def test_senders_created_and_changed_are_recorded_without_secrets(client, admin):
    mark = last_id()
    assert client.post("/senders/", data=SENDER).status_code == 303
    created = one(mark, "sender.create")
    sender = db.session.query(Sender).one()
    by(created, admin)
    assert (created.target_type, created.target_id, created.target_label) == (
        "sender",
        sender.id,
        "Loja Centro",
    )
    assert created.details["rate_limit_per_minute"] == 60
    assert created.details["display_phone_number"] == "…1234"
    assert sorted(created.details["credentials_set"]) == [
        "access_token",
        "app_secret",
        "webhook_verify_token",
    ]

    mark = last_id()
    changed = SENDER | {"access_token": "new-token-value", "app_secret": "", "name": "Loja 2"}
    assert client.post(f"/senders/{sender.id}", data=changed).status_code == 303
    updated = one(mark, "sender.update")
    assert updated.details == {
        "name": {"before": "Loja Centro", "after": "Loja 2"},
        "credentials_replaced": ["access_token"],
    }

    mark = last_id()
    pace = changed | {"access_token": "", "rate_limit_per_minute": "30", "min_interval_ms": "0"}
    assert client.post(f"/senders/{sender.id}", data=pace).status_code == 303
    settings = one(mark, "settings.change")
    assert settings.details == {
        "rate_limit_per_minute": {"before": 60, "after": 30},
        "min_interval_ms": {"before": 500, "after": 0},
    }
    for event in (created, updated, settings):
        assert not any(secret in written(event) for secret in SECRETS), written(event)
        assert_no_full_phone(event)


def test_a_refused_sender_change_records_nothing(client, admin, api_admin):
    client.post("/senders/", data=SENDER)
    client.post("/senders/", data=SENDER | {"name": "Other"})
    sender = db.session.query(Sender).filter_by(name="Other").one()
    mark = last_id()
    clash = client.post(f"/senders/{sender.id}", data=SENDER | {"rate_limit_per_minute": "1"})
    assert clash.status_code == 422  # the name is another sender's
    invalid = client.post("/senders/", data=SENDER | {"name": "New", "min_interval_ms": "-1"})
    assert invalid.status_code == 422
    _admin, headers = api_admin
    assert client.patch("/api/v1/senders/999999", json={}, headers=headers).status_code == 404
    assert since(mark) == []


# --- suppressions --------------------------------------------------------------------


def test_opt_outs_added_and_removed_are_recorded_with_the_phone_masked(client, login_as):
    supervisor = login_as(Role.SUPERVISOR)
    mark = last_id()
    client.post("/suppressions/", data={"phone": PHONE, "reason": "asked"})
    client.post("/suppressions/", data={"phone": PHONE})  # already listed: nothing changes
    client.post("/suppressions/", data={"phone": "12"})  # not a number: refused
    added = one(mark, "suppression.add")
    suppression = db.session.query(Suppression).one()
    by(added, supervisor)
    assert (added.target_type, added.target_id, added.target_label) == (
        "suppression",
        suppression.id,
        "…4321",
    )
    assert added.details == {"source": "manual"}
    mark = last_id()
    client.post(f"/suppressions/{suppression.id}/remove")
    client.post(f"/suppressions/{suppression.id}/remove")  # gone already: refused
    removed = one(mark, "suppression.remove")
    assert (removed.target_id, removed.target_label) == (suppression.id, "…4321")
    for event in (added, removed):
        assert_no_full_phone(event)


def test_the_api_records_opt_outs_too(client, user_factory):
    user = user_factory(Role.SUPERVISOR)
    _token, raw = create_api_token(user.id)
    headers = {"Authorization": f"Bearer {raw}"}
    mark = last_id()
    created = client.post("/api/v1/suppressions", json={"phone": PHONE}, headers=headers)
    assert created.status_code == 201
    by(one(mark, "suppression.add"), user)
    mark = last_id()
    client.delete(f"/api/v1/suppressions/{created.json['id']}", headers=headers)
    assert client.delete("/api/v1/suppressions/999999", headers=headers).status_code == 404
    by(one(mark, "suppression.remove"), user)


def test_an_import_is_one_row_with_its_counts_and_no_numbers(client, login_as):
    supervisor = login_as(Role.SUPERVISOR)
    mark = last_id()
    csv = f"phone,reason\n{PHONE},a\n+5511912345678,b\nnot-a-number,c\n"
    response = client.post(
        "/suppressions/import", data={"file": (io.BytesIO(csv.encode()), "list.csv")}
    )
    assert response.status_code == 200
    event = one(mark, "suppression.import")
    by(event, supervisor)
    assert event.details == {"numbers": 3, "added": 2, "invalid": 1}
    assert_no_full_phone(event)
    mark = last_id()
    empty = client.post("/suppressions/import", data={"file": (io.BytesIO(b"phone\n"), "e.csv")})
    assert empty.status_code == 422
    assert since(mark) == []


# --- the record itself ---------------------------------------------------------------


def test_an_action_whose_commit_fails_leaves_no_row(app, user_factory, monkeypatch):
    from campaigns.services.users import reset_password

    user = user_factory(Role.VIEWER)
    before = user.password_hash
    mark = last_id()

    def lost(*args, **kwargs):
        raise sa.exc.OperationalError("COMMIT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(db.session, "commit", lost)
    with pytest.raises(sa.exc.OperationalError):
        reset_password(user.id)
    monkeypatch.undo()
    assert since(mark) == []  # rolled back together: neither the action nor its row
    assert db.session.get(User, user.id).password_hash == before


def test_record_refuses_secrets_and_unknown_actions(app):
    with pytest.raises(ValueError, match="secrets"):
        audit.record(db.session, "sender.update", details={"access_token": "x"})
    with pytest.raises(ValueError, match="secrets"):
        audit.record(db.session, "user.create", details={"new": {"password": "x"}})
    with pytest.raises(ValueError, match="unknown"):
        audit.record(db.session, "user.delete")
    # A key without its words on the audit page (labels.AUDIT_DETAIL) is refused too.
    with pytest.raises(ValueError, match="unknown audit details"):
        audit.record(db.session, "settings.change", details={"messaging_limit_floor": 1})
    db.session.rollback()


def test_an_erasure_can_be_recorded_with_the_phone_masked(app):
    mark = last_id()
    audit.record(
        db.session,
        "data.erase",
        target_type="phone",
        target_label=audit.mask_phone(PHONE),
        details={"messages": 3},
    )
    db.session.commit()
    event = one(mark, "data.erase")
    assert (event.actor_id, event.actor_email) == (None, "system")  # neither request nor CLI
    assert event.target_label == "…4321"
    assert_no_full_phone(event)


def test_the_actor_row_survives_its_user(app, user_factory):
    user = user_factory(Role.ADMIN)
    audit.record(db.session, "settings.change", actor=user)
    db.session.commit()
    db.session.execute(sa.delete(User).where(User.id == user.id))
    db.session.commit()
    event = db.session.scalars(sa.select(AuditEvent).order_by(AuditEvent.id.desc())).first()
    assert (event.actor_id, event.actor_email) == (None, user.email)


# --- reading it ----------------------------------------------------------------------


def fill(n: int, action: str = "settings.change", actor: str = "someone") -> None:
    for i in range(n):
        audit.record(db.session, action, actor=actor, target_type="user", target_id=i + 1)
    db.session.commit()


@pytest.mark.parametrize("role", [Role.SUPERVISOR, Role.VIEWER])
def test_only_admins_see_the_page(client, login_as, role):
    login_as(role)
    assert client.get("/audit/").status_code == 403
    assert b'href="/audit/"' not in client.get("/").data


def test_the_page_asks_anonymous_visitors_to_sign_in(client):
    response = client.get("/audit/")
    assert response.status_code == 302
    assert "/login" in response.headers["Location"]


def test_the_page_lists_newest_first_filters_and_pages(client, admin):
    fill(55)
    fill(1, action="user.disable", actor="other@example.com")
    page = client.get("/audit/")
    assert page.status_code == 200
    assert b'href="/audit/"' in page.data  # the nav link, for admins
    rows = re.findall(r'id="audit-event-(\d+)"', page.get_data(as_text=True))
    assert len(rows) == audit.EVENTS_PER_PAGE
    assert [int(r) for r in rows] == sorted((int(r) for r in rows), reverse=True)
    assert "other@example.com" in page.get_data(as_text=True)  # the newest
    older = re.search(r'href="(/audit/\?before=\d+)"', page.get_data(as_text=True)).group(1)
    rest = re.findall(r'id="audit-event-(\d+)"', client.get(older).get_data(as_text=True))
    assert len(rest) == 57 - audit.EVENTS_PER_PAGE  # 55 + 1 + the admin's own creation
    assert not set(rows) & set(rest)

    only = client.get("/audit/?action=user.disable").get_data(as_text=True)
    assert len(re.findall(r'id="audit-event-', only)) == 1
    mine = client.get("/audit/?actor=OTHER@").get_data(as_text=True)
    assert len(re.findall(r'id="audit-event-', mine)) == 1
    for odd in ("?action=nope", "?before=abc", "?before=99999999999999999999999", "?actor=%25"):
        assert client.get(f"/audit/{odd}").status_code == 200


def test_the_api_is_for_admins_only(client, user_factory):
    assert client.get("/api/v1/audit").status_code == 401
    for role in (Role.SUPERVISOR, Role.VIEWER):
        _token, raw = create_api_token(user_factory(role).id)
        response = client.get("/api/v1/audit", headers={"Authorization": f"Bearer {raw}"})
        assert response.status_code == 403
        assert response.json["error"]["code"] == "forbidden"


def test_the_api_lists_filters_and_pages(client, api_admin):
    _admin, headers = api_admin
    fill(55)
    fill(1, action="user.disable", actor="other@example.com")
    body = client.get("/api/v1/audit", headers=headers).json
    assert len(body["events"]) == audit.EVENTS_PER_PAGE
    newest = body["events"][0]
    assert newest["action"] == "user.disable" and newest["actor_email"] == "other@example.com"
    assert set(newest) == {
        "id",
        "at",
        "actor_id",
        "actor_email",
        "action",
        "target_type",
        "target_id",
        "target_label",
        "details",
        "client_address",
    }
    rest = client.get(f"/api/v1/audit?before={body['next_before']}", headers=headers).json
    assert rest["next_before"] is None
    ids = [e["id"] for e in body["events"] + rest["events"]]
    assert ids == sorted(ids, reverse=True) and len(ids) == len(set(ids))
    filtered = client.get("/api/v1/audit?action=user.disable", headers=headers).json
    assert [e["actor_email"] for e in filtered["events"]] == ["other@example.com"]
    by_actor = client.get("/api/v1/audit?actor=someone", headers=headers).json
    assert len(by_actor["events"]) == audit.EVENTS_PER_PAGE
    unknown = client.get("/api/v1/audit?action=nope", headers=headers)
    assert unknown.status_code == 422 and "action" in unknown.json["error"]["fields"]


# --- retention -----------------------------------------------------------------------


def test_maintenance_prunes_events_past_the_retention(app):
    import jobs.tasks as tasks

    fill(2)
    first, second = db.session.scalars(sa.select(AuditEvent.id).order_by(AuditEvent.id)).all()[-2:]
    now = db.session.scalar(sa.select(sa.func.now()))
    days = app.config["AUDIT_RETENTION_DAYS"]
    for event_id, age in ((first, days + 1), (second, days - 1)):
        db.session.execute(
            sa.update(AuditEvent)
            .where(AuditEvent.id == event_id)
            .values(at=now - timedelta(days=age))
        )
    db.session.commit()
    tasks.reconcile(timestamp=int(time.time()))  # the maintenance job, as its tick runs it
    db.session.rollback()
    remaining = set(db.session.scalars(sa.select(AuditEvent.id)))
    assert first not in remaining and second in remaining


def test_a_backlog_of_old_events_is_pruned_in_batches(app):
    fill(5)
    db.session.execute(sa.update(AuditEvent).values(at=sa.func.now() - timedelta(days=40)))
    db.session.commit()
    assert audit.delete_old_events(db.session, 30, batch=2) == 2
    assert audit.delete_old_events(db.session, 30, batch=2) == 2
    assert audit.delete_old_events(db.session, 30, batch=2) == 1
    db.session.commit()
    assert db.session.query(AuditEvent).count() == 0


def test_the_retention_is_two_years_unless_set(app, monkeypatch):
    from campaigns import config
    from campaigns.config import ConfigError

    assert app.config["AUDIT_RETENTION_DAYS"] == 730
    monkeypatch.setenv("AUDIT_RETENTION_DAYS", "90")
    assert config.load_settings().audit_retention_days == 90
    for bad in ("0", "two years", "99999999"):
        monkeypatch.setenv("AUDIT_RETENTION_DAYS", bad)
        with pytest.raises(ConfigError, match="AUDIT_RETENTION_DAYS"):
            config.load_settings()
