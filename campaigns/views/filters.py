"""Jinja globals and filters shared by every page."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from flask import Flask, current_app

from campaigns import models


def local_datetime(value: datetime | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    """A UTC timestamp shown in the operator's time zone."""
    if value is None:
        return ""
    zone = ZoneInfo(current_app.config["DISPLAY_TIMEZONE"])
    return value.astimezone(zone).strftime(fmt)


def init_app(app: Flask) -> None:
    app.jinja_env.filters["datetime"] = local_datetime
    app.jinja_env.globals.update(
        Role=models.Role,
        TemplateStatus=models.TemplateStatus,
        TemplateCategory=models.TemplateCategory,
        CampaignStatus=models.CampaignStatus,
        Provider=models.Provider,
    )
