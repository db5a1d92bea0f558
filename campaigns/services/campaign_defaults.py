"""The campaign defaults (admins only, enforced by the view): a frequency cap, the
exclusion of numbers in running campaigns and a sending window, which new campaigns
start with (campaigns/campaign_defaults.py reads them). Each change is audited in its
own commit."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.dialects.postgresql import insert as pg_insert

from app import db
from campaigns import audit
from campaigns.campaign_defaults import ROW_ID, Defaults, defaults
from campaigns.models import CampaignDefaults
from campaigns.validation import Checker, parse_flag, parse_frequency_cap, parse_send_window


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


# The Settings form's window fields, and the campaign window's keys they are read as.
WINDOW_FIELDS = {"start": "window_start", "end": "window_end", "days": "window_days"}


def _window(form: Mapping[str, Any], check: Checker) -> dict[str, Any] | None:
    """The default window, read as a campaign's is (validation.parse_send_window: it may
    cross midnight); its problems reported at the Settings form's fields."""
    getlist = getattr(form, "getlist", None)
    raw_days = getlist("window_days") if getlist is not None else form.get("window_days") or []
    raw = {key: form.get(name) or "" for key, name in WINDOW_FIELDS.items() if key != "days"}
    if not (raw["start"].strip() or raw["end"].strip() or raw_days):
        return None
    window_check = Checker()
    window = parse_send_window({**raw, "days": list(raw_days)}, window_check)
    for key, message in window_check.errors.items():
        check.fail(WINDOW_FIELDS.get(key.removeprefix("send_window."), "window_start"), message)
    return window


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
