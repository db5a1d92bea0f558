"""What a new campaign starts with: the admin's campaign defaults (Settings page).

One row (``campaign_defaults``, id 1, migration 0031): a frequency cap, whether numbers in
other running campaigns are left out, and a sending window (``{"start": "09:00", "end":
"20:00", "days": [0, ..., 6]}``, 0 Monday, each recipient's local time; None: any time).
Shipped with everything off, so an upgrade changes nothing. The campaign form is filled
from them, and the API's create takes them for a field its body leaves out (an explicit
null or false stays off): :func:`fill`. Written by ``services/campaign_defaults.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import current_app

from app import AnySession
from campaigns.models import CampaignDefaults

ROW_ID = 1


@dataclass(frozen=True)
class Defaults:
    frequency_cap_days: int | None = None
    exclude_running: bool = False
    send_window: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "frequency_cap_days": self.frequency_cap_days,
            "exclude_running": self.exclude_running,
            "send_window": self.send_window,
        }


def defaults(session: AnySession) -> Defaults:
    """The campaign defaults now (none stored: everything off). A stored cap longer than
    CONTACT_HISTORY_DAYS (lowered since it was saved) reads as that limit: a campaign
    cannot have a longer one, and a create that leaves the field out must not be refused
    for it."""
    row = session.get(CampaignDefaults, ROW_ID)
    if row is None:
        return Defaults()
    cap = row.frequency_cap_days
    if cap is not None:
        cap = min(cap, int(current_app.config["CONTACT_HISTORY_DAYS"]))
    return Defaults(
        cap,
        row.exclude_running,
        dict(row.send_window) if row.send_window else None,
    )


def fill(data: Mapping[str, Any], session: AnySession) -> dict[str, Any]:
    """A create request's body with the defaults in the fields it leaves out (present,
    even as null or false, a field stays as sent)."""
    return defaults(session).as_dict() | dict(data)
