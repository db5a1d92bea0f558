"""The campaign page's pre-flight check: the panel (fetched after the page), the
confirmation checkbox that Send now and Schedule post, and what a refusal says."""

from __future__ import annotations

import html as html_text
import re

import pytest

from app import db
from campaigns.models import Campaign, CampaignStatus, Role
from campaigns.services.templates import default_sender
from tests.helpers import demo_campaign, lift_limits

CONFIRM = "I have read the warnings and want to go ahead"


@pytest.fixture
def draft(app, owner, live_server, monkeypatch) -> Campaign:
    """A draft for 30 SP customers; the demo sender in portfolio 77, Meta's limit 20: a
    budget of 18 a day (the 10 % margin), so 18 today and the remaining 12 a day later."""
    monkeypatch.setitem(app.config, "APP_BASE_URL", live_server)
    lift_limits(owner)
    sender = default_sender()
    sender.business_id, sender.messaging_limit = "77", 20
    db.session.commit()
    return demo_campaign(owner.id, size=30, name="Preflight")


def panel(client, campaign_id: int, **headers: str) -> str:
    response = client.get(f"/campaigns/{campaign_id}/preflight", headers=headers)
    assert response.status_code == 200
    return response.get_data(as_text=True)


def flashes(client, campaign_id: int) -> str:
    page = client.get(f"/campaigns/{campaign_id}").get_data(as_text=True)
    found = re.findall(r'<article class="flash[^"]*"[^>]*>(.*?)</article>', page, re.S)
    return html_text.unescape(" ".join(found))


def text_of(html: str) -> str:
    return " ".join(html_text.unescape(re.sub(r"<[^>]+>", " ", html)).split())


def test_the_page_fetches_the_check_after_it_is_drawn(client, login_as, draft):
    login_as(Role.SUPERVISOR)
    page = client.get(f"/campaigns/{draft.id}").get_data(as_text=True)
    section = re.search(r'<section id="campaign-\d+-preflight"[^>]*>', page).group(0)
    assert f'hx-get="/campaigns/{draft.id}/preflight"' in section
    assert 'hx-trigger="load"' in section
    # The controls are there before the check, its confirmation's place empty.
    assert f'id="campaign-{draft.id}-send-now"' in page
    assert re.search(rf'<div id="campaign-{draft.id}-gate" class="preflight-gate"></div>', page)


def test_the_panel_shows_the_figures_and_the_warning_to_confirm(client, login_as, draft):
    login_as(Role.SUPERVISOR)
    html = panel(client, draft.id)
    text = text_of(html)
    assert "Pre-flight check" in text
    assert "30 recipients (estimate)" in text
    assert "18 of 18 recipients left" in text and "WhatsApp's limit 20" in text
    # The wave line in words, the later wave's time in the reader's zone.
    assert re.search(r"2 days: 18 today, the remaining 12 from \d+/\d+/\d+, \d+:\d\d", text)
    assert re.search(r"Estimated duration 1 day \d+ h", text)
    assert re.search(r"Estimated cost \$\d+\.\d\d", text)  # Meta's rate for Brazil
    assert "To confirm before it goes:" in text and "2 days in all" in text
    assert "The estimate is Meta's list price" in text  # a note
    assert "Checked at" in text and "Check again" in text
    assert f'hx-get="/campaigns/{draft.id}/preflight"' in html
    # Out of band: the checkbox by the buttons, which both forms post when ticked.
    gate = re.search(rf'<div id="campaign-{draft.id}-gate"[^>]*>.*?</div>', html, re.S).group(0)
    assert 'hx-swap-oob="true"' in gate and CONFIRM in gate
    assert f'id="campaign-{draft.id}-confirm" name="confirm" value="budget_overrun"' in gate
    page = client.get(f"/campaigns/{draft.id}").get_data(as_text=True)
    assert page.count(f'hx-include="#campaign-{draft.id}-confirm"') == 2  # send now, schedule


def test_send_now_waits_for_the_confirmation_then_starts(client, login_as, draft):
    login_as(Role.SUPERVISOR)
    response = client.post(f"/campaigns/{draft.id}/send-now")
    assert response.status_code == 303
    assert db.session.get(Campaign, draft.id).status is CampaignStatus.DRAFT
    said = flashes(client, draft.id)
    assert "the pre-flight check has warnings to confirm first" in said
    assert f"Tick “{CONFIRM}”" in said and "the remaining 12" in said
    assert CONFIRM in panel(client, draft.id)  # the checkbox, where the flash says

    client.post(f"/campaigns/{draft.id}/send-now", data={"confirm": "0"})
    assert db.session.get(Campaign, draft.id).status is CampaignStatus.DRAFT
    # The tick confirms the warnings the panel showed, not one found since.
    sender = default_sender()
    sender.quality_rating = "RED"
    db.session.commit()
    client.post(f"/campaigns/{draft.id}/send-now", data={"confirm": "budget_overrun"})
    assert db.session.get(Campaign, draft.id).status is CampaignStatus.DRAFT
    assert "quality RED" in flashes(client, draft.id)
    sender.quality_rating = "GREEN"
    db.session.commit()
    response = client.post(f"/campaigns/{draft.id}/send-now", data={"confirm": "budget_overrun"})
    assert response.status_code == 303
    db.session.expire_all()
    assert db.session.get(Campaign, draft.id).status is CampaignStatus.SENDING
    assert "Sending started" in flashes(client, draft.id)


def test_schedule_waits_for_the_confirmation_too(client, login_as, draft):
    login_as(Role.SUPERVISOR)
    url = f"/campaigns/{draft.id}/schedule"
    client.post(url, data={"scheduled_at": "2099-01-01T09:00"})
    assert db.session.get(Campaign, draft.id).status is CampaignStatus.DRAFT
    assert "warnings to confirm first" in flashes(client, draft.id)
    client.post(url, data={"scheduled_at": "2099-01-01T09:00", "confirm": "budget_overrun"})
    db.session.expire_all()
    assert db.session.get(Campaign, draft.id).status is CampaignStatus.SCHEDULED


def test_a_blocked_campaign_says_why_and_offers_no_send(client, login_as, draft):
    sender = default_sender()
    sender.messaging_limit = 1  # less the 10 % margin: no recipient at all
    db.session.commit()
    login_as(Role.SUPERVISOR)
    html = panel(client, draft.id)
    text = text_of(html)
    reason = "allows no recipient at all"
    assert "This campaign cannot be sent or scheduled:" in text and reason in text
    assert CONFIRM not in html  # nothing to confirm: it cannot go at all
    send = re.search(rf'<span id="campaign-{draft.id}-send-now"[^>]*>.*?</span>', html, re.S)
    assert "<button" in send.group(0) and " disabled" in send.group(0)
    assert "<form" not in send.group(0)
    schedule = re.search(
        rf'<span id="campaign-{draft.id}-schedule-submit"[^>]*>.*?</span>', html, re.S
    )
    assert " disabled" in schedule.group(0)
    gate = re.search(rf'<div id="campaign-{draft.id}-gate"[^>]*>.*?</div>', html, re.S).group(0)
    assert reason in gate
    # Posted anyway (a stale page), confirmed or not: refused, and the flash says why.
    client.post(f"/campaigns/{draft.id}/send-now", data={"confirm": "1"})
    assert db.session.get(Campaign, draft.id).status is CampaignStatus.DRAFT
    said = flashes(client, draft.id)
    assert "The pre-flight check stops this campaign:" in said and reason in said


def test_a_viewer_sees_the_check_without_the_controls(client, login_as, draft):
    login_as(Role.VIEWER)
    page = client.get(f"/campaigns/{draft.id}").get_data(as_text=True)
    assert f'hx-get="/campaigns/{draft.id}/preflight"' in page
    html = panel(client, draft.id)
    assert "30 recipients (estimate)" in text_of(html)
    assert "2 days in all" in html
    assert CONFIRM not in html and "hx-swap-oob" not in html and "Send now" not in html


def test_a_started_campaign_has_no_check(client, login_as, draft):
    login_as(Role.SUPERVISOR)
    client.post(f"/campaigns/{draft.id}/send-now", data={"confirm": "budget_overrun"})
    page = client.get(f"/campaigns/{draft.id}").get_data(as_text=True)
    assert f"/campaigns/{draft.id}/preflight" not in page


def test_the_panel_in_portuguese(client, login_as, draft):
    sender = default_sender()
    sender.messaging_limit = 2_000  # a budget of 1.800: formatted the Brazilian way
    db.session.commit()
    login_as(Role.SUPERVISOR)
    text = text_of(panel(client, draft.id, **{"Accept-Language": "pt-BR"}))
    assert "Verificação antes do envio" in text
    assert "30 destinatários (estimativa)" in text
    assert "1.800 de 1.800 destinatários disponíveis" in text and "2.000" in text
    assert re.search(r"Custo estimado US\$ \d+,\d\d", text)
    assert "Verificar de novo" in text and "Pre-flight" not in text


def test_the_panel_is_only_for_a_campaign_still_to_go(client, login_as, draft):
    login_as(Role.SUPERVISOR)
    client.post(f"/campaigns/{draft.id}/send-now", data={"confirm": "budget_overrun"})
    assert db.session.get(Campaign, draft.id).status is CampaignStatus.SENDING
    assert client.get(f"/campaigns/{draft.id}/preflight").status_code == 404


def test_an_audience_the_erp_cannot_count_is_said_unknown(app, client, login_as, draft):
    app.config["ERP_BASE_URL"] = "http://127.0.0.1:9/nothing-listens-here"
    login_as(Role.SUPERVISOR)
    text = html_text.unescape(panel(client, draft.id))
    assert "unknown: the ERP could not say" in text
    assert "Nothing stops this campaign" not in text
