"""The frequency cap and the sending windows together, across two campaigns sending at
once through real workers: the same people in both, each in São Paulo's zone (open now)
or Manaus's (an hour behind: closed). The open zone's people get exactly one message
between the two campaigns; the closed zone's get none until their window opens, and then
exactly one too."""

from __future__ import annotations

from collections import Counter

import requests
import sqlalchemy as sa

from app import db
from campaigns.clock import database_now
from campaigns.models import Campaign, CampaignStatus, Message, MessageStatus
from campaigns.services.campaigns import change_send_window, create_campaign, send_campaign_now
from tests.helpers import assert_counters_match_rows, lift_limits, wait_for
from tests.test_sending_windows import ALL_DAYS, MANAUS, SP, _fields, _open_in

S = MessageStatus
ON_THEIR_WAY = (S.PENDING, S.QUEUED, S.SENDING, S.RETRYING)
SENT = (S.SENT, S.DELIVERED, S.READ)


def _by_zone(campaign_id: int) -> dict[tuple[str | None, MessageStatus], set[str]]:
    """The campaign's numbers by (zone, status)."""
    rows = db.session.execute(
        sa.select(Message.time_zone, Message.status, Message.phone).where(
            Message.campaign_id == campaign_id
        )
    )
    found: dict[tuple[str | None, MessageStatus], set[str]] = {}
    for zone, status, phone in rows:
        found.setdefault((zone, status), set()).add(phone)
    return found


def _numbers(found: dict, zone: str, statuses: tuple[MessageStatus, ...]) -> set[str]:
    return set().union(*(found.get((zone, status), set()) for status in statuses))


def _sent_to(live_server: str) -> Counter[str]:
    log = requests.get(f"{live_server}/mock/whatsapp/log?limit=100000", timeout=10).json()
    return Counter(f"+{entry['to'].lstrip('+')}" for entry in log)


def test_the_cap_and_the_windows_hold_across_two_campaigns_sending_at_once(
    app, owner, live_server, start_worker
):
    lift_limits(owner)
    window = _open_in(SP, database_now(db.session))
    first = create_campaign(_fields(120, window, "First", frequency_cap_days=7), owner.id)
    second = create_campaign(_fields(120, window, "Second", frequency_cap_days=7), owner.id)
    start_worker("a")
    start_worker("b")
    send_campaign_now(first.id, owner.id)
    send_campaign_now(second.id, owner.id)

    def settled() -> bool:
        """São Paulo's people all dealt with in both campaigns; Manaus's all waiting."""
        for campaign in (first, second):
            found = _by_zone(campaign.id)
            if _numbers(found, SP, ON_THEIR_WAY) or not found.get((MANAUS, S.PENDING)):
                return False
            if _numbers(found, MANAUS, (S.QUEUED, S.SENDING, S.RETRYING, *SENT)):
                return False
        return True

    wait_for(settled, 120, "São Paulo's zone sent, Manaus's waiting")
    one, two = _by_zone(first.id), _by_zone(second.id)
    east = _numbers(one, SP, (S.PENDING, S.SKIPPED, *SENT)) & _numbers(two, SP, (S.SKIPPED, *SENT))
    assert len(east) >= 20  # the same people in both campaigns
    # Each of them: one campaign sent, the other skipped with the cap.
    for phone in east:
        outcomes = sorted(
            "sent" if phone in _numbers(found, SP, SENT) else "skipped" for found in (one, two)
        )
        assert outcomes == ["sent", "skipped"], phone
    # Nobody in the closed zone got anything; they wait in both campaigns, still sending.
    west = _numbers(one, MANAUS, (S.PENDING,))
    assert west and west == _numbers(two, MANAUS, (S.PENDING,))
    sent = _sent_to(live_server)
    assert not west & set(sent)
    assert max(sent.values()) == 1
    for campaign in (first, second):
        status = db.session.get(Campaign, campaign.id, populate_existing=True).status
        assert status is CampaignStatus.SENDING

    # Their window opens (all day now): Manaus's people get exactly one message too.
    for campaign in (first, second):
        change_send_window(
            campaign.id, {"start": "00:00", "end": "23:59", "days": ALL_DAYS}, owner.id
        )

    def completed() -> bool:
        return all(
            db.session.get(Campaign, c.id, populate_existing=True).status
            is CampaignStatus.COMPLETED
            for c in (first, second)
        )

    wait_for(completed, 120, "both campaigns completed")
    sent = _sent_to(live_server)
    assert max(sent.values()) == 1
    assert west <= set(sent)
    capped = {
        phone
        for campaign in (first, second)
        for phone in db.session.scalars(
            sa.select(Message.phone).where(
                Message.campaign_id == campaign.id, Message.error_code == "frequency_cap"
            )
        )
    }
    assert (east | west) <= capped
    for campaign in (first, second):
        assert_counters_match_rows(campaign.id)
