"""Notifications: marking them read (one and all), the unread count, the page and the nav badge."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from app import db
from campaigns import counters, notifications, queries
from campaigns.clock import database_now
from campaigns.models import (
    Campaign,
    CampaignStatus,
    MessageTemplate,
    Notification,
    Role,
    TemplateStatus,
    User,
)
from campaigns.providers.base import TemplateStatusReport
from campaigns.queues import NOTIFY_TASK
from campaigns.services import NotFound
from campaigns.services.campaigns import cancel_campaign, pause_campaign
from campaigns.services.demo import seed_demo
from campaigns.services.notifications import mark_all_read, mark_read
from campaigns.services.templates import submit_template, sync_template_status
from campaigns.services.users import create_api_token
from mocks.provider import MockProvider
from tests.helpers import counted_statements, csrf_token_from, demo_campaign, jobs


@pytest.fixture
def notify(app):
    def make(user: User, text: str = "Something happened.", *, read: bool = False) -> Notification:
        notification = Notification(
            user_id=user.id, kind="completed", code="text", params={"text": text}
        )
        if read:
            notification.read_at = sa.func.now()
        db.session.add(notification)
        db.session.commit()
        return notification

    return make


def read_at(notification: Notification):
    return db.session.scalar(
        sa.select(Notification.read_at).where(Notification.id == notification.id)
    )


# -- the service


def test_mark_read_marks_the_users_own_with_the_databases_clock(user_factory, notify):
    user = user_factory()
    notification, other = notify(user), notify(user)
    before = database_now(db.session)
    db.session.rollback()

    assert mark_read(notification.id, user.id) is True

    first = read_at(notification)
    assert first is not None and first >= before
    assert first <= database_now(db.session)
    assert read_at(other) is None


def test_mark_read_again_changes_nothing(user_factory, notify):
    user = user_factory()
    notification = notify(user)
    assert mark_read(notification.id, user.id) is True
    first = read_at(notification)

    assert mark_read(notification.id, user.id) is False
    assert read_at(notification) == first


def test_someone_elses_or_an_unknown_notification_is_not_found(user_factory, notify):
    owner, admin = user_factory(), user_factory(Role.ADMIN)
    notification = notify(owner)
    with pytest.raises(NotFound):
        mark_read(notification.id, admin.id)  # not even an admin marks another's inbox
    with pytest.raises(NotFound):
        mark_read(notification.id + 1000, owner.id)
    assert read_at(notification) is None


def test_mark_all_read_marks_only_the_users_unread_and_says_how_many(user_factory, notify):
    user, other = user_factory(), user_factory()
    already = notify(user, read=True)
    first_read = read_at(already)
    mine = [notify(user) for _ in range(3)]
    theirs = notify(other)

    assert mark_all_read(user.id) == 3
    assert all(read_at(n) is not None for n in mine)
    assert read_at(already) == first_read
    assert read_at(theirs) is None
    assert mark_all_read(user.id) == 0


def test_mark_all_read_leaves_what_arrived_after_the_page_was_drawn(user_factory, notify):
    user = user_factory()
    seen = notify(user)
    newest_shown = queries.unread_notifications(user.id).newest_id
    arrived_since = notify(user)

    assert mark_all_read(user.id, up_to_id=newest_shown) == 1
    assert read_at(seen) is not None
    assert read_at(arrived_since) is None


# -- the queries


def test_the_unread_count_is_the_users_own_even_for_an_admin(user_factory, notify):
    admin, other = user_factory(Role.ADMIN), user_factory()
    assert queries.unread_notifications(admin.id) == queries.NO_UNREAD
    notify(admin)
    newest = notify(admin)
    notify(admin, read=True)
    notify(other)

    assert queries.unread_notifications(admin.id) == queries.UnreadNotifications(2, newest.id)
    mark_read(newest.id, admin.id)
    assert queries.unread_notifications(admin.id).count == 1


def test_the_list_is_the_users_own_newest_first_and_can_keep_to_the_unread(
    user_factory, notify, monkeypatch
):
    user, other = user_factory(), user_factory()
    old = notify(user, "old")
    read = notify(user, "read", read=True)
    new = notify(user, "new")
    notify(other, "theirs")

    listed = queries.list_notifications(user.id)
    assert [n.id for n in listed.notifications] == [new.id, read.id, old.id]
    unread = queries.list_notifications(user.id, unread_only=True)
    assert [n.id for n in unread.notifications] == [new.id, old.id]

    monkeypatch.setattr(queries, "NOTIFICATIONS_PER_PAGE", 2)
    second = queries.list_notifications(user.id, page=2)
    assert (second.page, second.pages, second.total) == (2, 2, 3)
    assert [n.id for n in second.notifications] == [old.id]


# -- marking through the views

HTMX = {"HX-Request": "true"}
FROM_DASHBOARD = HTMX | {"HX-Target": "dashboard-notifications"}
FROM_PAGE = HTMX | {"HX-Target": "notification-list"}
BADGE = re.compile(r'<span id="nav-unread"([^>]*)>(.*?)</span>\s*</span>', re.S)


def badge(body: str) -> tuple[bool, str, str] | None:
    """The nav badge in a response: (hidden, shown figure, label), or None without one."""
    found = BADGE.findall(body)
    if not found:
        return None
    assert len(found) == 1, "one badge, or htmx swaps into the wrong one"
    attributes, inner = found[0]
    figure, label = re.findall(r">([^<]*)<", f">{inner}<")[1::2]
    return "hidden" in attributes.split(), figure.strip(), label.strip()


def test_a_plain_form_marks_one_read_and_goes_back_to_next(client, login_as, notify):
    user = login_as(Role.VIEWER)
    notification = notify(user)
    response = client.post(f"/notifications/{notification.id}/read?next=/campaigns/?page=2")
    assert response.status_code == 303
    assert response.headers["Location"] == "/campaigns/?page=2"
    assert read_at(notification) is not None

    again = client.post(f"/notifications/{notification.id}/read?next=/")
    assert again.status_code == 303  # marking a read one again is no error


@pytest.mark.parametrize("next_url", ["https://evil.example.com/", "//evil.example.com", None])
def test_next_never_leads_off_site(client, login_as, notify, next_url):
    notification = notify(login_as(Role.VIEWER))
    query = {"next": next_url} if next_url else {}
    response = client.post(f"/notifications/{notification.id}/read", query_string=query)
    assert response.headers["Location"] == "/"
    response = client.post("/notifications/read-all", query_string=query)
    assert response.headers["Location"] == "/"


def test_someone_elses_notification_is_404_and_stays_unread(client, login_as, notify, user_factory):
    login_as(Role.ADMIN)
    theirs = notify(user_factory())
    for headers in ({}, FROM_DASHBOARD):
        assert client.post(f"/notifications/{theirs.id}/read", headers=headers).status_code == 404
    assert client.post(f"/notifications/{theirs.id + 1000}/read").status_code == 404
    assert read_at(theirs) is None


def test_htmx_from_the_dashboard_gets_the_list_and_the_badge_out_of_band(client, login_as, notify):
    user = login_as(Role.VIEWER)
    first, second = notify(user, "First."), notify(user, "Second.")
    response = client.post(f"/notifications/{first.id}/read?next=/", headers=FROM_DASHBOARD)
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert body.lstrip().startswith('<section id="dashboard-notifications"')
    assert "<nav>" not in body
    assert 'id="nav-unread" class="badge badge-unread" hx-swap-oob="true"' in body
    assert badge(body) == (False, "1", "1 unread notification")
    assert 'class="notification-completed unread"' not in item(body, first)
    assert f'action="/notifications/{second.id}/read?next=/"' in item(body, second)

    response = client.post(f"/notifications/{second.id}/read?next=/", headers=FROM_DASHBOARD)
    body = response.get_data(as_text=True)
    assert badge(body) == (True, "0", "0 unread notifications")
    assert "Mark all as read" not in body and "Mark as read" not in body


def test_htmx_from_the_page_gets_the_list_it_was_on(client, login_as, notify, monkeypatch):
    monkeypatch.setattr(queries, "NOTIFICATIONS_PER_PAGE", 2)
    user = login_as(Role.VIEWER)
    oldest, old, new, newest = (notify(user, f"N{i}.") for i in range(4))
    notify(user, "Read.", read=True)
    next_url = "/notifications/?unread=1&page=2"  # the unread ones, second page: old, oldest
    response = client.post(
        f"/notifications/{old.id}/read", query_string={"next": next_url}, headers=FROM_PAGE
    )
    body = response.get_data(as_text=True)
    assert body.lstrip().startswith('<section id="notification-list"')
    assert badge(body) == (False, "3", "3 unread notifications")
    # Three unread left: the second page of two holds the oldest only.
    assert f'id="notification-{oldest.id}"' in body
    assert (
        f'id="notification-{new.id}"' not in body and f'id="notification-{newest.id}"' not in body
    )
    assert "Page 2 of 2" in body
    assert "next=/notifications/?unread%3D1%26page%3D2" in body  # its buttons keep the place


def test_mark_all_from_a_plain_form_says_how_many(client, login_as, notify, user_factory):
    user = login_as(Role.ADMIN)
    mine = [notify(user) for _ in range(2)]
    theirs = notify(user_factory())
    response = client.post("/notifications/read-all?next=/notifications/")
    assert response.status_code == 303
    assert response.headers["Location"] == "/notifications/"
    assert all(read_at(n) is not None for n in mine)
    assert read_at(theirs) is None  # an admin's "all" is their own
    assert "2 notifications marked as read." in client.get("/notifications/").get_data(as_text=True)


def test_mark_all_keeps_what_arrived_after_the_list_was_drawn(client, login_as, notify):
    user = login_as(Role.VIEWER)
    shown = notify(user)
    body = client.get("/dashboard/notifications", headers=HTMX).get_data(as_text=True)
    assert f'name="up_to" value="{shown.id}"' in body
    arrived = notify(user, "Arrived since.")

    response = client.post(
        "/notifications/read-all?next=/", data={"up_to": shown.id}, headers=FROM_DASHBOARD
    )
    body = response.get_data(as_text=True)
    assert read_at(shown) is not None and read_at(arrived) is None
    assert badge(body) == (False, "1", "1 unread notification")
    assert f'name="up_to" value="{arrived.id}"' in body  # the button now covers it


def test_marking_needs_the_csrf_token(app, client, login_as, notify):
    user = login_as(Role.VIEWER)
    first, second, third = notify(user), notify(user), notify(user)
    app.config["WTF_CSRF_ENABLED"] = True
    try:
        assert client.post(f"/notifications/{first.id}/read").status_code == 400
        assert client.post("/notifications/read-all").status_code == 400
        assert read_at(first) is None

        page = client.get("/notifications/").data
        token = csrf_token_from(page)
        response = client.post(f"/notifications/{first.id}/read", data={"csrf_token": token})
        assert response.status_code == 303
        # htmx sends it in the header from <body hx-headers>.
        headers = FROM_PAGE | {"X-CSRFToken": token}
        response = client.post(f"/notifications/{second.id}/read", headers=headers)
        assert response.status_code == 200
        assert read_at(second) is not None and read_at(third) is None
    finally:
        app.config["WTF_CSRF_ENABLED"] = False


def test_marking_needs_a_signed_in_user(client, notify, user_factory):
    notification = notify(user_factory())
    response = client.post(f"/notifications/{notification.id}/read")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    assert client.post("/notifications/read-all", headers=HTMX).status_code == 401
    assert read_at(notification) is None


def item(body: str, notification: Notification) -> str:
    match = re.search(rf'<li id="notification-{notification.id}".*?</li>', body, re.S)
    assert match, f"notification {notification.id} not listed"
    return match.group(0)


# -- the lists


def test_the_dashboard_marks_only_the_users_own_unread(client, login_as, notify, user_factory):
    admin = login_as(Role.ADMIN)
    mine, read = notify(admin, "Mine."), notify(admin, "Read.", read=True)
    theirs = notify(user_factory(), "Theirs.")
    body = client.get("/dashboard/notifications", headers=HTMX).get_data(as_text=True)
    assert 'class="notification-completed unread"' in item(body, mine)
    assert "Unread:" in item(body, mine)
    assert "Mark as read" in item(body, mine)
    for other in (read, theirs):  # an admin sees everyone's, marks only their own
        assert "unread" not in item(body, other) and "Mark as read" not in item(body, other)
    assert body.count("Mark all as read") == 1
    assert badge(body) == (False, "1", "1 unread notification")


def test_the_page_lists_the_users_own_with_an_unread_filter(
    client, login_as, notify, user_factory, monkeypatch
):
    monkeypatch.setattr(queries, "NOTIFICATIONS_PER_PAGE", 2)
    user = login_as(Role.ADMIN)
    old, read, new = notify(user, "Old."), notify(user, "Read.", read=True), notify(user, "New.")
    theirs = notify(user_factory(), "Theirs.")

    body = client.get("/notifications/").get_data(as_text=True)
    assert f'id="notification-{new.id}"' in body and f'id="notification-{read.id}"' in body
    assert f'id="notification-{old.id}"' not in body  # on page 2
    assert f'id="notification-{theirs.id}"' not in body  # the page is the admin's own inbox
    assert "Page 1 of 2" in body and 'href="/notifications/?page=2"' in body
    assert "Unread (2)" in body

    body = client.get("/notifications/?unread=1").get_data(as_text=True)
    assert f'id="notification-{old.id}"' in body and f'id="notification-{new.id}"' in body
    assert f'id="notification-{read.id}"' not in body
    assert 'aria-current="page">Unread' in body

    client.post("/notifications/read-all")
    body = client.get("/notifications/?unread=1").get_data(as_text=True)
    assert "Nothing unread." in body and "Mark all as read" not in body
    assert client.get("/notifications").status_code == 308  # the slash-less address works too


def test_the_dashboard_links_to_the_page_for_older_unread_ones(
    client, login_as, notify, monkeypatch
):
    user = login_as(Role.VIEWER)
    older = notify(user, "Older.")
    for n in range(queries.RECENT_NOTIFICATIONS):
        notify(user, f"Newer {n}.", read=True)
    body = client.get("/").get_data(as_text=True)
    assert f'id="notification-{older.id}"' not in body  # not among the 10 recent
    assert badge(body) == (False, "1", "1 unread notification")
    assert "Mark all as read" in body  # the count covers it
    assert 'href="/notifications/">All my notifications' in body
    assert f'id="notification-{older.id}"' in client.get("/notifications/?unread=1").get_data(
        as_text=True
    )


# -- the nav badge


def test_the_nav_shows_the_users_own_unread_count_and_hides_it_at_zero(
    client, login_as, notify, user_factory
):
    admin = login_as(Role.ADMIN)
    notify(user_factory())  # someone else's: not in the admin's badge
    body = client.get("/campaigns/").get_data(as_text=True)
    assert badge(body) == (True, "0", "0 unread notifications")

    for _ in range(3):
        notify(admin)
    notify(admin, read=True)
    body = client.get("/campaigns/").get_data(as_text=True)
    assert badge(body) == (False, "3", "3 unread notifications")
    link = '<a href="/notifications/" class="nav-notifications">Notifications<span id="nav-unread"'
    assert link in body

    for _ in range(97):
        notify(admin)
    assert badge(client.get("/templates/").get_data(as_text=True)) == (
        False,
        "99+",
        "100 unread notifications",
    )


def test_the_dashboard_draws_one_badge_and_its_poll_brings_it_along(client, login_as, notify):
    user = login_as(Role.VIEWER)
    body = client.get("/").get_data(as_text=True)
    assert badge(body) == (True, "0", "0 unread notifications")
    assert "hx-swap-oob" not in body  # a whole page: the nav's own badge, nothing out of band

    notify(user)
    body = client.get("/dashboard/notifications", headers=HTMX).get_data(as_text=True)
    assert 'hx-trigger="every 10s"' in body
    assert 'id="nav-unread" class="badge badge-unread" hx-swap-oob="true"' in body
    assert badge(body) == (False, "1", "1 unread notification")


@pytest.fixture
def badge_counts(monkeypatch) -> list[int]:
    """Every time the unread count is read, the user it was read for."""
    calls: list[int] = []
    real = queries.unread_notifications

    def counting(user_id: int) -> queries.UnreadNotifications:
        calls.append(user_id)
        return real(user_id)

    monkeypatch.setattr(queries, "unread_notifications", counting)
    return calls


def test_the_badge_is_counted_only_for_responses_that_draw_the_nav(
    client, login_as, notify, badge_counts
):
    user = login_as(Role.SUPERVISOR)
    notify(user)
    _token, raw = create_api_token(user.id)
    api = {"Authorization": f"Bearer {raw}"}

    with counted_statements() as statements:
        assert client.get("/api/v1/me", headers=api).status_code == 200
        assert client.get("/api/v1/campaigns", headers=api).status_code == 200
    assert badge_counts == []
    assert not [s for s in statements if "notifications" in s]
    for fragment in ("/dashboard/limits", "/dashboard/queues", "/campaigns/rows"):
        assert client.get(fragment, headers=HTMX).status_code in (200, 286), fragment
    assert badge_counts == []

    client.get("/campaigns/")
    assert badge_counts == [user.id]
    badge_counts.clear()
    client.get("/")  # the dashboard's list and the nav share one count
    assert badge_counts == [user.id]


def test_a_failing_count_leaves_the_page_without_a_badge(client, login_as, monkeypatch):
    login_as(Role.VIEWER)

    def broken(user_id: int):
        raise OperationalError("SELECT count(*)", {}, Exception("connection lost"))

    monkeypatch.setattr(queries, "unread_notifications", broken)
    response = client.get("/campaigns/")
    assert response.status_code == 200
    assert badge(response.get_data(as_text=True)) == (True, "0", "0 unread notifications")


# -- what the notices cover: an operator's pause, a cancel, a template's review


@pytest.fixture
def sending(app, user_factory) -> Campaign:
    """A campaign marked as sending (nothing loaded), its owner a supervisor."""
    campaign = demo_campaign(user_factory(Role.SUPERVISOR).id, name="Natal")
    campaign.status = CampaignStatus.SENDING
    db.session.commit()
    return campaign


def _notices(campaign_id: int) -> list[tuple[str, str]]:
    return [
        (n.kind, n.text)
        for n in db.session.scalars(
            sa.select(Notification).filter_by(campaign_id=campaign_id).order_by(Notification.id)
        )
    ]


def test_an_operators_pause_and_a_cancel_tell_the_owner(sending, user_factory):
    admin = user_factory(Role.ADMIN)
    pause_campaign(sending.id, admin.id)
    assert {"campaign_id": sending.id, "kind": "paused"} in [
        job["args"] for job in jobs(NOTIFY_TASK)
    ]
    notifications.deliver(sending.id, "paused", first_attempt=True)
    cancel_campaign(sending.id, admin.id)
    assert {"campaign_id": sending.id, "kind": "cancelled"} in [
        job["args"] for job in jobs(NOTIFY_TASK)
    ]
    notifications.deliver(sending.id, "cancelled", first_attempt=True)

    owner_id = sending.owner_id
    assert {n.user_id for n in db.session.scalars(sa.select(Notification))} == {owner_id}
    assert _notices(sending.id) == [
        ("paused", "Campaign “Natal” was paused by an operator; it sends again once resumed."),
        ("cancelled", "Campaign “Natal” was cancelled: 0 sent, 0 not sent."),
    ]


def test_a_cancelled_notice_counts_what_was_sent_and_what_was_not(sending):
    counters.ensure_rows(db.session, sending.id)
    db.session.execute(
        sa.text(
            "UPDATE campaign_counters SET sent = 1200, cancelled = 3400"
            " WHERE campaign_id = :c AND shard = 0"
        ),
        {"c": sending.id},
    )
    db.session.commit()
    notifications.deliver(sending.id, "cancelled", first_attempt=True)
    assert _notices(sending.id) == [
        ("cancelled", "Campaign “Natal” was cancelled: 1,200 sent, 3,400 not sent.")
    ]


@pytest.fixture
def reviewed(app, client, login_as):
    """A supervisor's template, submitted to the mock: (its creator, the template)."""
    seed_demo()
    creator = login_as(Role.SUPERVISOR)

    def make(body: str = "Oi {{first_name}}!") -> MessageTemplate:
        response = client.post(
            "/templates/",
            data={
                "name": f"promo_{len(body)}",
                "language": "pt_BR",
                "category": "MARKETING",
                "parameter_format": "named",
                "body_text": body,
            },
        )
        assert response.status_code == 303, response.get_data(as_text=True)
        template = db.session.get(
            MessageTemplate, int(response.headers["Location"].rsplit("/")[-1])
        )
        submit_template(template.id)
        return template

    return creator, make


def _template_notices(user_id: int) -> list[Notification]:
    return list(
        db.session.scalars(
            sa.select(Notification).filter_by(user_id=user_id).order_by(Notification.id)
        )
    )


def test_an_approval_tells_the_creator_once_and_links_to_the_template(app, client, reviewed):
    creator, make = reviewed
    app.config["MOCK_TEMPLATE_APPROVAL_SECONDS"] = 600
    template = make()
    sync_template_status(template.id)  # still pending: nothing to tell
    assert _template_notices(creator.id) == []

    app.config["MOCK_TEMPLATE_APPROVAL_SECONDS"] = 0
    sync_template_status(template.id)
    sync_template_status(template.id)  # approved again: told once
    [notice] = _template_notices(creator.id)
    assert (notice.kind, notice.campaign_id, notice.template_id) == (
        "template_approved",
        None,
        template.id,
    )
    assert notice.text == (
        f"Template “{template.name}” (pt_BR) was approved: campaigns can use it now."
    )
    page = client.get("/notifications/").get_data(as_text=True)
    assert f'href="/templates/{template.id}"' in page
    assert "was approved: campaigns can use it now." in page


def test_a_rejection_tells_the_creator_whatsapps_reason(app, client, reviewed):
    creator, make = reviewed
    template = make("Oi {{first_name}} REJECT_ME")
    sync_template_status(template.id)
    [notice] = _template_notices(creator.id)
    assert notice.kind == "template_rejected"
    assert notice.text.startswith(
        f"Template “{template.name}” (pt_BR) was rejected: INVALID_FORMAT"
    )
    assert "REJECT_ME" in notice.text


def test_a_rejection_without_a_reason_says_only_that(app, reviewed, monkeypatch):
    creator, make = reviewed
    template = make()
    report = TemplateStatusReport(TemplateStatus.REJECTED, "NONE")
    monkeypatch.setattr(MockProvider, "template_status", lambda self, t: report)
    sync_template_status(template.id)
    [notice] = _template_notices(creator.id)
    assert notice.text == f"Template “{template.name}” (pt_BR) was rejected."
