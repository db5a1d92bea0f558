"""Jinja globals and filters shared by every page."""

from __future__ import annotations

import logging

from flask import Flask
from flask_login import current_user
from sqlalchemy.exc import SQLAlchemyError

from campaigns import htmx, labels, models, queries
from campaigns.i18n import _, ngettext
from campaigns.providers import errors

logger = logging.getLogger(__name__)


def duration(seconds: float | None) -> str:
    """A span of time as people say it: "45 s", "3 min 05 s", "2 h 07 min", "2 days 3 h"."""
    if seconds is None:
        return ""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours >= 24:  # a campaign carried over the budget's days (waves.py)
        days, hours = divmod(hours, 24)
        return ngettext("%(num)d day %(h)d h", "%(num)d days %(h)d h", days, h=hours)
    if hours:
        return _("%(h)d h %(m)02d min") % {"h": hours, "m": minutes}
    if minutes:
        return _("%(m)d min %(s)02d s") % {"m": minutes, "s": secs}
    return _("%(s)d s") % {"s": secs}


def unread_notifications() -> queries.UnreadNotifications:
    """The signed-in user's unread notifications, for the nav's badge.

    A function the template calls rather than a context processor: only a response
    that draws the nav queries it, never the API or a fragment. A view that has the
    figure already passes it to its template as ``unread``, and the nav uses that.
    """
    if not current_user.is_authenticated:
        return queries.NO_UNREAD
    try:
        return queries.unread_notifications(current_user.id)
    except SQLAlchemyError:
        # The error page of a failed transaction draws the nav too: no badge, not a 500.
        logger.warning("unread notifications not counted", exc_info=True)
        return queries.NO_UNREAD


def init_app(app: Flask) -> None:
    app.jinja_env.filters["duration"] = duration
    # {{ status|label }}, {{ code|label("job_status") }}: words, never the raw value.
    app.jinja_env.filters["label"] = labels.label
    app.jinja_env.filters["audit_value"] = labels.audit_value
    app.jinja_env.globals.update(
        Role=models.Role,
        TemplateStatus=models.TemplateStatus,
        TemplateCategory=models.TemplateCategory,
        HeaderFormat=models.HeaderFormat,
        CampaignStatus=models.CampaignStatus,
        Provider=models.Provider,
        CAMPAIGN_CHANGED=htmx.CAMPAIGN_CHANGED,
        unread_notifications=unread_notifications,
        label=labels.label,
        label_for=labels.label_for,
        explain=labels.explain,
        error_detail=errors.detail,
        segment_facts=labels.segment_facts,
    )
