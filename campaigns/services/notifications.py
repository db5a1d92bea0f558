"""A user's in-app notifications: marking them read.

The worker creates them (``campaigns.notifications.deliver``); only their recipient
marks them read, one or all at once. Marking is idempotent: a notification read
already keeps the time it was first read, taken from the database's clock.
"""

from __future__ import annotations

import sqlalchemy as sa

from app import db, rows_changed
from campaigns.i18n import _
from campaigns.models import Notification
from campaigns.services import NotFound


def mark_read(notification_id: int, user_id: int) -> bool:
    """Mark one of the user's own notifications read; whether it was unread until now.

    Someone else's notification is NotFound, as one that does not exist is: the
    two are not told apart.
    """
    marked = rows_changed(
        db.session,
        sa.update(Notification)
        .where(
            Notification.id == notification_id,
            Notification.user_id == user_id,
            Notification.read_at.is_(None),
        )
        .values(read_at=sa.func.now()),
    )
    if marked:
        db.session.commit()
        return True
    owned = db.session.scalar(
        sa.select(sa.literal(True)).where(
            Notification.id == notification_id, Notification.user_id == user_id
        )
    )
    db.session.rollback()
    if not owned:
        raise NotFound(_("There is no such notification."))
    return False


def mark_all_read(user_id: int, up_to_id: int | None = None) -> int:
    """Mark the user's unread notifications read; how many were.

    ``up_to_id`` is the newest notification the user was shown: one that arrived
    after the page was drawn stays unread rather than be cleared unseen.
    """
    query = sa.update(Notification).where(
        Notification.user_id == user_id, Notification.read_at.is_(None)
    )
    if up_to_id is not None:
        query = query.where(Notification.id <= up_to_id)
    marked = rows_changed(db.session, query.values(read_at=sa.func.now()))
    db.session.commit()
    return marked
