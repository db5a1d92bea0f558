"""Jinja globals and filters shared by every page."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from flask import Flask, current_app

from campaigns import htmx, models
from campaigns.i18n import _


def local_datetime(value: datetime | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    """A UTC timestamp shown in the operator's time zone."""
    if value is None:
        return ""
    zone = ZoneInfo(current_app.config["DISPLAY_TIMEZONE"])
    return value.astimezone(zone).strftime(fmt)


def duration(seconds: float | None) -> str:
    """A span of time as people say it: "45 s", "3 min 05 s", "2 h 07 min"."""
    if seconds is None:
        return ""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return _("%(h)d h %(m)02d min") % {"h": hours, "m": minutes}
    if minutes:
        return _("%(m)d min %(s)02d s") % {"m": minutes, "s": secs}
    return _("%(s)d s") % {"s": secs}


def init_app(app: Flask) -> None:
    app.jinja_env.filters["datetime"] = local_datetime
    app.jinja_env.filters["duration"] = duration
    app.jinja_env.globals.update(
        Role=models.Role,
        TemplateStatus=models.TemplateStatus,
        TemplateCategory=models.TemplateCategory,
        CampaignStatus=models.CampaignStatus,
        Provider=models.Provider,
        CAMPAIGN_CHANGED=htmx.CAMPAIGN_CHANGED,
    )
