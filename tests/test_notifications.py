"""Notifications: marking them read (one and all), the unread count, the page and the nav badge."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from app import db
from campaigns import queries
from campaigns.clock import database_now
from campaigns.models import Notification, Role, User
from campaigns.services import NotFound
from campaigns.services.notifications import mark_all_read, mark_read


@pytest.fixture
def notify(app):
    def make(user: User, text: str = "Something happened.", *, read: bool = False) -> Notification:
        notification = Notification(user_id=user.id, kind="completed", text=text)
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
