"""The campaign defaults (admins only, enforced by the view): a frequency cap, the
exclusion of numbers in running campaigns and a sending window, which new campaigns
start with (campaigns/campaign_defaults.py reads them). Each change is audited in its
own commit."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from sqlalchemy.dialects.postgresql import insert as pg_insert

from app import db
from campaigns import audit
from campaigns.campaign_defaults import ROW_ID, Defaults, defaults
from campaigns.i18n import _
from campaigns.models import CampaignDefaults
from campaigns.validation import Checker, parse_flag, parse_frequency_cap

TIME = re.compile(r"([01]\d|2[0-3]):[0-5]\d")
DAYS = range(7)  # 0 Monday ... 6 Sunday


def parse_defaults(form: Mapping[str, Any]) -> Defaults:
    """The Settings form's campaign defaults, or Invalid with a message per bad field.

    The window: ``window_start`` and ``window_end`` (HH:MM) and the ``window_days``
    ticked; all empty, no window."""
    check = Checker()
    cap = parse_frequency_cap(form.get("frequency_cap_days"), check)
    exclude_running = parse_flag(form.get("exclude_running"), check, "exclude_running")
    window = _window(form, check)
    check.done()
    return Defaults(cap, exclude_running, window)


def _window(form: Mapping[str, Any], check: Checker) -> dict[str, Any] | None:
    start = str(form.get("window_start") or "").strip()
    end = str(form.get("window_end") or "").strip()
    getlist = getattr(form, "getlist", None)
    raw_days = getlist("window_days") if getlist is not None else form.get("window_days") or []
    if not (start or end or raw_days):
        return None
    if not TIME.fullmatch(start):
        check.fail("window_start", _("Enter the time the window opens, as HH:MM."))
    if not TIME.fullmatch(end):
        check.fail("window_end", _("Enter the time the window closes, as HH:MM."))
    elif TIME.fullmatch(start) and end <= start:
        check.fail("window_end", _("The window must close after it opens, on the same day."))
    days: list[int] = []
    for raw in raw_days:
        try:
            day = int(raw)
        except (TypeError, ValueError):
            day = -1
        if day not in DAYS:
            check.fail("window_days", _("Choose days of the week."))
        elif day not in days:
            days.append(day)
    if not days:
        check.fail("window_days", _("Choose the days the window is open."))
    return {"start": start, "end": end, "days": sorted(days)}


def save_defaults(form: Mapping[str, Any], acting_user_id: int | None) -> Defaults:
    """Change the campaign defaults from the Settings form; campaigns made before keep
    their own settings."""
    after = parse_defaults(form)
    before = defaults(db.session)
    changes = {
        name: audit.change(old, new)
        for name, old, new in (
            (name, before.as_dict()[name], after.as_dict()[name]) for name in after.as_dict()
        )
        if old != new
    }
    if not changes:
        db.session.rollback()
        return after
    values = after.as_dict() | {"updated_by_id": acting_user_id}
    db.session.execute(
        pg_insert(CampaignDefaults)
        .values(id=ROW_ID, **values)
        .on_conflict_do_update(index_elements=[CampaignDefaults.id], set_=values)
    )
    audit.record(
        db.session,
        "campaign_defaults.update",
        target_type="campaign_defaults",
        details=changes,
    )
    db.session.commit()
    return after
