from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from babel.dates import format_datetime

from app import db
from campaigns.models import (
    Campaign,
    CampaignActivity,
    CampaignStatus,
    Message,
    MessageStatus,
    MessageTemplate,
    Role,
    TemplateStatus,
)
from campaigns.services.campaigns import allowed_actions, create_campaign, template_variables_for
from campaigns.services.demo import seed_demo
from campaigns.services.suppressions import add_suppression
from campaigns.services.templates import default_sender
from campaigns.validation import parse_campaign


@pytest.fixture
def demo(app):
    seed_demo()
    sender = default_sender()
    promo = db.session.query(MessageTemplate).filter_by(name="promo_weekend").one()
    return sender, promo


@pytest.fixture
def supervisor(login_as):
    return login_as(Role.SUPERVISOR)


def form_for(sender, template, **overrides):
    data = {
        "name": "Black Friday SP",
        "sender_id": str(sender.id),
        "template_id": str(template.id),
        "segment.state": "SP",
        "segment.tags": "vip, promo",
        "segment.min_total_spent": "100",
        "segment.opted_in_only": "on",
        "var.first_name.source": "first_name",
        "var.discount.source": "text",
        "var.discount.text": "20%",
        "var.city.source": "city",
        "var.coupon.source": "text",
        "var.coupon.text": "BF2026",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def create(client, sender, template, **overrides) -> Campaign:
    response = client.post("/campaigns/", data=form_for(sender, template, **overrides))
    assert response.status_code == 303, response.get_data(as_text=True)
    return db.session.get(Campaign, int(response.headers["Location"].rsplit("/", 1)[-1]))


def test_create_a_draft(client, demo, supervisor):
    sender, promo = demo
    campaign = create(client, sender, promo)
    assert campaign.status is CampaignStatus.DRAFT
    assert campaign.owner_id == supervisor.id
    assert campaign.segment == {
        "state": "SP",
        "tags": ["vip", "promo"],
        "min_total_spent": 100.0,
        "opted_in_only": True,
    }
    assert campaign.variable_mapping == {
        "first_name": {"field": "first_name"},
        "discount": {"text": "20%"},
        "city": {"field": "city"},
        "coupon": {"text": "BF2026"},
    }
    page = client.get(f"/campaigns/{campaign.id}").get_data(as_text=True)
    assert "Black Friday SP" in page and "created" in page


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        (
            {"var.coupon.source": None, "var.coupon.text": None},
            "variables.coupon",
            "Map {{coupon}}",
        ),
        ({"var.discount.text": ""}, "variables.discount", "Map {{discount}}"),
        ({"segment.state": "São Paulo"}, "segment.state", "two-letter"),
        ({"segment.min_total_spent": "lots"}, "segment.min_total_spent", "amount"),
        ({"segment.max_audience": "0"}, "segment.max_audience", "from 1"),
        ({"name": ""}, "name", "Give the campaign a name"),
        ({"template_id": ""}, "template_id", "approved template"),
    ],
)
def test_bad_campaign_fields_are_422_at_the_field(
    client, demo, supervisor, overrides, field, message
):
    sender, promo = demo
    response = client.post("/campaigns/", data=form_for(sender, promo, **overrides))
    assert response.status_code == 422
    body = response.get_data(as_text=True)
    assert message in body
    assert 'aria-invalid="true"' in body
    if field != "variables.coupon":
        assert "BF2026" in body  # what was typed is kept
    assert db.session.query(Campaign).count() == 0


@pytest.mark.parametrize(
    "typed", ["1.234,56", "1234,56", "1,234.56", "1234.56", "R$ 1.234,56", "R$\u00a01.234,56"]
)
def test_minimum_spent_is_typed_either_way_and_kept_a_number(client, demo, supervisor, typed):
    sender, promo = demo
    campaign = create(client, sender, promo, **{"segment.min_total_spent": typed})
    assert campaign.segment["min_total_spent"] == 1234.56
    page = client.get(f"/campaigns/{campaign.id}").get_data(as_text=True)
    assert "R$1,234.56" in page


@pytest.mark.parametrize("typed", ["lots", "1e5", "-5", "1.2.3", "12,34,5", "R$", "10000000000000"])
def test_a_minimum_spent_that_is_no_amount_is_422_at_the_field(client, demo, supervisor, typed):
    sender, promo = demo
    data = form_for(sender, promo, **{"segment.min_total_spent": typed})
    response = client.post("/campaigns/", data=data)
    assert response.status_code == 422
    body = response.get_data(as_text=True)
    assert 'aria-invalid="true" aria-describedby="segment.min_total_spent-error"' in body
    assert "Enter an amount" in body
    assert f'value="{typed}"' in body  # kept as typed
    assert db.session.query(Campaign).count() == 0


def test_the_edit_form_shows_the_minimum_spent_in_reais_and_takes_it_back(client, demo, supervisor):
    sender, promo = demo
    campaign = create(client, sender, promo, **{"segment.min_total_spent": "1234,5"})
    html = client.get(f"/campaigns/{campaign.id}/edit").get_data(as_text=True)
    assert 'name="segment.min_total_spent" value="R$1,234.50"' in html
    html = client.get(
        f"/campaigns/{campaign.id}/edit", headers={"Accept-Language": "pt-BR"}
    ).get_data(as_text=True)
    assert 'name="segment.min_total_spent" value="R$\u00a01.234,50"' in html
    data = form_for(sender, promo, **{"segment.min_total_spent": "R$\u00a01.234,50"})
    assert client.post(f"/campaigns/{campaign.id}", data=data).status_code == 303
    db.session.refresh(campaign)
    assert campaign.segment["min_total_spent"] == 1234.5


def test_a_template_not_approved_cannot_be_chosen(client, demo, supervisor):
    sender, promo = demo
    promo.status = TemplateStatus.PAUSED
    db.session.commit()
    response = client.post("/campaigns/", data=form_for(sender, promo))
    assert response.status_code == 422
    assert "approved template" in response.get_data(as_text=True)


def _selected(body: str, name: str) -> str | None:
    """The field selected in the variable's select (its option's value is "field:<name>"),
    "text", "track", or "" for "— choose —"; None without a select."""
    select = re.search(rf'<select name="var.{name}.source".*?</select>', body, re.S)
    if select is None:
        return None
    chosen = re.search(r'<option value="([^"]*)" selected', select.group(0))
    return chosen.group(1).removeprefix("field:") if chosen else ""


def test_named_variables_are_matched_to_customer_fields_of_the_same_name(client, demo, supervisor):
    _sender, promo = demo  # {{first_name}}, {{discount}}, {{city}}, {{coupon}}
    response = client.post("/campaigns/mapping", data={"template_id": str(promo.id)})
    body = response.get_data(as_text=True)
    assert [_selected(body, n) for n in ("first_name", "discount", "city", "coupon")] == [
        "first_name",
        "",
        "city",
        "",
    ]
    # What the operator chose is kept: another field, or "— choose —" on purpose.
    chosen = {"template_id": str(promo.id), "var.first_name.source": "name", "var.city.source": ""}
    body = client.post("/campaigns/mapping", data=chosen).get_data(as_text=True)
    assert (_selected(body, "first_name"), _selected(body, "city")) == ("name", "")


def test_mapping_fragment_follows_the_chosen_template(client, demo, supervisor):
    order = db.session.query(MessageTemplate).filter_by(name="order_ready").one()
    response = client.post(
        "/campaigns/mapping", data={"template_id": str(order.id)}, headers={"HX-Request": "true"}
    )
    body = response.get_data(as_text=True)
    assert 'id="campaign-mapping"' in body
    assert 'name="var.1.source"' in body and 'name="var.2.source"' in body


def test_live_audience_count_from_the_erp(client, demo, supervisor, live_server):
    sender, promo = demo
    data = form_for(sender, promo)
    response = client.post("/campaigns/audience", data=data, headers={"HX-Request": "true"})
    body = response.get_data(as_text=True)
    assert 'id="campaign-audience"' in body
    count = int(re.search(r"<strong>([\d,]+)</strong>", body).group(1).replace(",", ""))
    assert 0 < count < 1_000_000
    assert "load," not in body  # an answer must not ask again on load
    wider = client.post("/campaigns/audience", data=form_for(sender, promo, **{"segment.tags": ""}))
    wider_count = int(
        re.search(r"<strong>([\d,]+)</strong>", wider.get_data(as_text=True))
        .group(1)
        .replace(",", "")
    )
    assert wider_count > count
    bad = client.post(
        "/campaigns/audience", data=form_for(sender, promo, **{"segment.state": "XYZ"})
    )
    assert "two-letter" in bad.get_data(as_text=True)


def test_the_erp_counts_a_brazilian_amount_as_the_same_number(
    client, demo, supervisor, live_server
):
    sender, promo = demo

    def count(spent: str) -> int:
        data = form_for(sender, promo, **{"segment.min_total_spent": spent})
        body = client.post("/campaigns/audience", data=data).get_data(as_text=True)
        return int(re.search(r"<strong>([\d,]+)</strong>", body).group(1).replace(",", ""))

    assert count("R$ 1.234,56") == count("1234.56") < count("0")


def _tag_boxes(html: str) -> dict[str, bool]:
    """The form's tag checkboxes: value → ticked."""
    boxes = re.findall(
        r'<input class="segment-field" type="checkbox" name="segment.tags"[^>]*>', html
    )
    return {re.search(r'value="([^"]*)"', box).group(1): " checked" in box for box in boxes}


def test_tags_are_ticked_from_the_erps_list(client, demo, supervisor, live_server):
    sender, promo = demo
    html = client.get("/campaigns/new").get_data(as_text=True)
    assert _tag_boxes(html) == dict.fromkeys(
        ["vip", "newsletter", "churn-risk", "b2b", "promo"], False
    )
    assert 'name="segment.tags" value=' in html and "comma-separated" not in html

    # Ticked boxes come as one value each, are saved as a list and come back ticked,
    # with a saved tag the ERP no longer knows still shown (ticked, and said so).
    data = form_for(sender, promo, **{"segment.tags": None})
    response = client.post("/campaigns/", data=data | {"segment.tags": ["vip", "b2b"]})
    assert response.status_code == 303, response.get_data(as_text=True)
    campaign = db.session.query(Campaign).one()
    assert campaign.segment["tags"] == ["vip", "b2b"]
    campaign.segment = campaign.segment | {"tags": ["vip", "gold"]}
    db.session.commit()
    html = client.get(f"/campaigns/{campaign.id}/edit").get_data(as_text=True)
    boxes = _tag_boxes(html)
    assert boxes["vip"] and boxes["gold"] and not boxes["b2b"]
    assert "not in the ERP's list" in html


def test_without_the_erps_list_tags_are_typed(app, client, demo, supervisor):
    app.config["ERP_BASE_URL"] = "http://127.0.0.1:9/mock/erp"
    html = client.get("/campaigns/new").get_data(as_text=True)
    assert _tag_boxes(html) == {}
    assert re.search(r'<input name="segment.tags" value=""[^>]*class="segment-field"', html)
    assert "list of tags could not be read" in html


def test_an_unknown_tag_is_a_field_problem_not_an_outage(client, demo, supervisor, live_server):
    sender, promo = demo
    data = form_for(sender, promo, **{"segment.tags": "vip, gold"})
    body = client.post("/campaigns/audience", data=data).get_data(as_text=True)
    assert "did not answer" not in body
    assert "The ERP does not accept these criteria; check them:" in body
    assert re.search(r"<li><strong>Tags</strong>: unknown tag gold; known tags: vip,", body)
    dry = demo_campaign_with(client, sender, promo, data)
    body = client.get(f"/campaigns/{dry}/dry-run").get_data(as_text=True)
    assert "did not answer" not in body and "Tags: unknown tag gold" in body


def demo_campaign_with(client, sender, promo, data) -> int:
    response = client.post("/campaigns/", data=data)
    assert response.status_code == 303, response.get_data(as_text=True)
    return int(response.headers["Location"].rsplit("/", 1)[-1])


def test_the_count_follows_typing_ticking_and_pasting(client, demo, supervisor):
    html = client.get("/campaigns/new").get_data(as_text=True)
    trigger = re.search(r'<div id="campaign-audience"[^>]*hx-trigger="([^"]*)"', html).group(1)
    for event in ("load,", "input changed ", "change ", "paste "):
        assert event in trigger
    assert trigger.count("from:.segment-field") == 3
    assert 'hx-sync="this:replace"' in html
    # Placeholders read as examples, not as values already typed.
    assert 'placeholder="e.g. SP"' in html


def test_audience_count_says_when_the_erp_is_down(app, client, demo, supervisor):
    app.config["ERP_BASE_URL"] = "http://127.0.0.1:9/mock/erp"
    sender, promo = demo
    body = client.post("/campaigns/audience", data=form_for(sender, promo)).get_data(as_text=True)
    assert "The ERP did not answer" in body


def test_dry_run_renders_real_customers(client, demo, supervisor, live_server):
    sender, promo = demo
    campaign = create(client, sender, promo)
    response = client.get(f"/campaigns/{campaign.id}/dry-run?n=5", headers={"HX-Request": "true"})
    body = response.get_data(as_text=True)
    assert f'id="campaign-{campaign.id}-dry-run"' in body
    rows = re.findall(r"<tr[^>]*>\s*<td>", body)
    assert len(rows) == 5
    assert "20% de desconto" in body and "BF2026" in body
    assert "{{" not in body


def test_schedule_in_the_operators_time_zone(app, client, demo, supervisor):
    sender, promo = demo
    campaign = create(client, sender, promo)
    local = (datetime.now(UTC) + timedelta(days=1)).astimezone(
        __import__("zoneinfo").ZoneInfo(app.config["DISPLAY_TIMEZONE"])
    )
    client.post(
        f"/campaigns/{campaign.id}/schedule",
        data={"scheduled_at": local.strftime("%Y-%m-%dT%H:%M")},
    )
    db.session.refresh(campaign)
    assert campaign.status is CampaignStatus.SCHEDULED
    assert abs((campaign.scheduled_at - local.replace(second=0, microsecond=0)).total_seconds()) < 1
    page = client.get(f"/campaigns/{campaign.id}").get_data(as_text=True)
    shown = format_datetime(local, "short", locale="en")
    assert shown in page  # 12/5/26, 3:17 PM: the operator's zone, the reader's format
    assert "Reschedule" in page

    client.post(f"/campaigns/{campaign.id}/unschedule")
    db.session.refresh(campaign)
    assert campaign.status is CampaignStatus.DRAFT and campaign.scheduled_at is None
    actions = [
        a.action for a in db.session.query(CampaignActivity).filter_by(campaign_id=campaign.id)
    ]
    assert sorted(actions) == ["created", "scheduled", "unscheduled"]


def test_scheduling_in_the_past_is_refused_with_the_reason(client, demo, supervisor):
    sender, promo = demo
    campaign = create(client, sender, promo)
    client.post(f"/campaigns/{campaign.id}/schedule", data={"scheduled_at": "2020-01-01T10:00"})
    db.session.refresh(campaign)
    assert campaign.status is CampaignStatus.DRAFT
    assert "Choose a time in the future" in client.get(f"/campaigns/{campaign.id}").get_data(
        as_text=True
    )


@pytest.mark.parametrize(
    "status", [CampaignStatus.SENDING, CampaignStatus.COMPLETED, CampaignStatus.CANCELLED]
)
def test_only_draft_or_scheduled_campaigns_can_be_edited(client, demo, supervisor, status):
    sender, promo = demo
    campaign = create(client, sender, promo)
    campaign.status = status
    db.session.commit()
    response = client.post(
        f"/campaigns/{campaign.id}", data=form_for(sender, promo, name="changed")
    )
    assert response.status_code == 422
    # The status by its label, not its raw value.
    refusal = f"A campaign with status “{status.value.capitalize()}” cannot be edited"
    assert refusal in response.get_data(as_text=True)
    db.session.refresh(campaign)
    assert campaign.name == "Black Friday SP"


def test_transition_table_matches_the_rules():
    allowed = allowed_actions
    assert allowed(CampaignStatus.DRAFT) >= {"edit", "schedule", "send_now", "cancel"}
    assert "pause" in allowed(CampaignStatus.SENDING) and "edit" not in allowed(
        CampaignStatus.SENDING
    )
    assert allowed(CampaignStatus.COMPLETED) == {"test_send"}  # before a retry of its failures
    assert "resume" not in allowed(CampaignStatus.COMPLETED)
    assert allowed(CampaignStatus.PAUSED) >= {"resume", "cancel"}


def test_duplicate_makes_an_editable_copy(client, demo, supervisor):
    sender, promo = demo
    campaign = create(client, sender, promo)
    campaign.status = CampaignStatus.COMPLETED
    db.session.commit()
    response = client.post(f"/campaigns/{campaign.id}/duplicate")
    copy = db.session.query(Campaign).filter(Campaign.id != campaign.id).one()
    assert response.headers["Location"] == f"/campaigns/{copy.id}/edit"
    assert copy.status is CampaignStatus.DRAFT
    assert copy.segment == campaign.segment and copy.variable_mapping == campaign.variable_mapping


def test_list_filters_search_pagination_and_live_rows(client, demo, supervisor):
    sender, promo = demo
    fields = parse_campaign(
        {
            "name": "x",
            "sender_id": sender.id,
            "template_id": promo.id,
            "variables": {n: {"text": "v"} for n in ("first_name", "discount", "city", "coupon")},
        },
        template_variables_for(promo.id),
    )
    for n in range(25):
        create_campaign(
            fields.__class__(**(fields.__dict__ | {"name": f"Wave {n:02d}"})), supervisor.id
        )
    first = client.get("/campaigns/").get_data(as_text=True)
    assert "Wave 24" in first and "Wave 04" not in first and "Page 1 of 2" in first
    second = client.get("/campaigns/?page=2").get_data(as_text=True)
    assert "Wave 04" in second
    rows = client.get("/campaigns/rows?q=wave 1", headers={"HX-Request": "true"}).get_data(
        as_text=True
    )
    assert rows.count("<tr id=") == 10
    assert "hx-trigger" not in rows  # nothing live, nothing to poll
    wave = db.session.query(Campaign).filter_by(name="Wave 07").one()
    wave.status = CampaignStatus.SENDING
    db.session.commit()
    live = client.get("/campaigns/rows?status=sending").get_data(as_text=True)
    assert 'hx-trigger="every 5s"' in live and "Wave 07" in live


def test_viewers_can_look_but_not_touch(client, demo, login_as):
    sender, promo = demo
    login_as(Role.VIEWER)
    assert client.get("/campaigns/").status_code == 200
    assert client.get("/campaigns/new").status_code == 403
    assert client.post("/campaigns/", data=form_for(sender, promo)).status_code == 403
    assert client.post("/campaigns/audience", data=form_for(sender, promo)).status_code == 403


def test_test_send_goes_through_the_sender(app, client, demo, supervisor, live_server):
    app.config["APP_BASE_URL"] = live_server  # where the mock WhatsApp answers
    sender, promo = demo
    campaign = create(client, sender, promo)
    response = client.post(
        f"/campaigns/{campaign.id}/test-send",
        data={"phone": "(11) 98765-4321"},
        headers={"HX-Request": "true"},
    )
    body = response.get_data(as_text=True)
    assert response.status_code == 200, body
    assert f'id="campaign-{campaign.id}-test-send"' in body
    # WhatsApp's message id is said as what it is, not as the bare jargon "wamid".
    assert re.search(r"Sent\. WhatsApp(&#39;|')s id for this message: wamid\.", body)
    import requests

    log = requests.get(f"{live_server}/mock/whatsapp/log", timeout=5).json()
    assert [(e["to"], e["message_id"]) for e in log] == [("+5511987654321", f"test-{campaign.id}")]
    bad = client.post(f"/campaigns/{campaign.id}/test-send", data={"phone": "123"})
    assert bad.status_code == 422 and "area code" in bad.get_data(as_text=True)


@pytest.mark.parametrize("status", [CampaignStatus.CANCELLED, CampaignStatus.FAILED])
def test_no_test_send_on_a_campaign_that_sends_no_more(client, demo, supervisor, status):
    sender, promo = demo
    campaign = create(client, sender, promo)
    assert "test-send" in client.get(f"/campaigns/{campaign.id}").get_data(as_text=True)
    campaign.status = status
    db.session.commit()
    page = client.get(f"/campaigns/{campaign.id}").get_data(as_text=True)
    assert "test-send" not in page and "Send a test" not in page
    assert "Duplicate" in page  # the way to try its message again
    # Posted anyway (an old page, the API's caller): refused, and nothing is sent.
    response = client.post(f"/campaigns/{campaign.id}/test-send", data={"phone": "11987654321"})
    assert response.status_code == 422
    assert "sends nothing more, so it has no test; duplicate it" in response.get_data(as_text=True)


@pytest.mark.parametrize(
    "status",
    [
        CampaignStatus.DRAFT,
        CampaignStatus.SCHEDULED,
        CampaignStatus.SENDING,
        CampaignStatus.PAUSED,
        CampaignStatus.COMPLETED,  # "retry failed" may send again: test first
    ],
)
def test_a_test_send_is_offered_while_the_campaign_may_still_send(status):
    assert "test_send" in allowed_actions(status)


def test_test_send_refuses_a_number_on_the_opt_out_list(app, client, demo, supervisor, live_server):
    app.config["APP_BASE_URL"] = live_server
    sender, promo = demo
    campaign = create(client, sender, promo)
    add_suppression("+55 11 98765-4321", "asked us to stop", "manual", None)
    response = client.post(
        f"/campaigns/{campaign.id}/test-send",
        data={"phone": "(11) 98765-4321"},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 422
    assert "opt-out list" in response.get_data(as_text=True)
    import requests

    assert requests.get(f"{live_server}/mock/whatsapp/log", timeout=5).json() == []


def test_senders_page_shows_this_minutes_usage(client, demo, login_as):
    login_as(Role.ADMIN)
    body = client.get("/senders/").get_data(as_text=True)
    assert "0 of 20 used" in body


def _flashes(page: str) -> list[str]:
    return re.findall(r'<article class="flash flash-\w+" role="\w+">([^<]*)</article>', page)


def test_send_now_pause_resume_and_cancel_say_what_happened(
    app, client, login_as, fake, live_server
):
    """Each action confirms itself in a flash, through htmx (HX-Redirect) as through a form."""
    from campaigns import fanout
    from tests.helpers import demo_campaign, lift_limits

    user = login_as(Role.SUPERVISOR)
    lift_limits(user)
    campaign = demo_campaign(user.id)
    htmx = {"HX-Request": "true"}

    response = client.post(f"/campaigns/{campaign.id}/send-now", headers=htmx)
    assert response.status_code == 204
    assert response.headers["HX-Redirect"] == f"/campaigns/{campaign.id}"
    page = client.get(f"/campaigns/{campaign.id}").get_data(as_text=True)
    assert _flashes(page) == [
        "Sending started: the recipients are being loaded, then sent at the pace."
    ]
    fanout.load_audience(campaign.id, app.config)
    waiting = db.session.scalar(
        sa.select(sa.func.count())
        .select_from(Message)
        .where(Message.campaign_id == campaign.id, Message.status == MessageStatus.PENDING)
    )

    page = client.post(f"/campaigns/{campaign.id}/pause", follow_redirects=True)
    assert _flashes(page.get_data(as_text=True)) == [f"Paused — {waiting} messages wait."]
    page = client.post(f"/campaigns/{campaign.id}/resume", follow_redirects=True)
    assert _flashes(page.get_data(as_text=True)) == [f"Sending resumed — {waiting} messages to go."]
    client.post(f"/campaigns/{campaign.id}/cancel", headers=htmx)
    page = client.get(f"/campaigns/{campaign.id}").get_data(as_text=True)
    assert _flashes(page) == [f"Cancelled: 0 sent, {waiting} cancelled."]
    # A refusal still says why, and nothing claims it happened.
    page = client.post(f"/campaigns/{campaign.id}/pause", follow_redirects=True)
    flashes = _flashes(page.get_data(as_text=True))
    assert len(flashes) == 1 and "Paused" not in flashes[0]


def test_the_form_shows_the_owners_cap_and_each_senders_limits(client, demo, supervisor):
    sender, _promo = demo
    sender.rate_limit_per_minute = 80
    sender.min_interval_ms = 250
    supervisor.campaign_rate_limit_per_minute = 100
    db.session.commit()
    page = client.get("/campaigns/new").get_data(as_text=True)
    option = re.search(rf'<option value="{sender.id}"[^>]*>([^<]*)</option>', page).group(1)
    assert option == f"{sender.name} (80/min, at least 250 ms apart)"
    assert "Your campaigns send at most 100 messages a minute in all (your limit)" in page
    # Editing it says the same: the owner's cap (the reader's own here).
    campaign = create(client, sender, _promo)
    page = client.get(f"/campaigns/{campaign.id}/edit").get_data(as_text=True)
    assert "Your campaigns send at most 100 messages a minute" in page
