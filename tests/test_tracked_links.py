"""Tracked links: a link button sent through Disparo's /l/<token>, its clicks counted."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from app import db
from campaigns import fanout, pump, queues, sending, tracked_links
from campaigns.models import Message, MessageTemplate, TemplateStatus
from campaigns.progress import get_progress
from campaigns.services import ServiceError
from campaigns.services.campaigns import create_campaign, send_campaign_now, template_variables_for
from campaigns.services.demo import seed_demo
from campaigns.services.templates import default_sender
from campaigns.validation import Invalid, parse_campaign, parse_template
from tests.helpers import FakeProvider, jobs, lift_limits

SHOP = "https://loja.example.com/black-friday?utm_source=whatsapp"


def _template(app, url: str) -> MessageTemplate:
    seed_demo()
    fields = parse_template(
        {
            "name": "tracked",
            "language": "pt_BR",
            "category": "MARKETING",
            "body_text": "Oi {{first_name}}!",
            "buttons": f"Ver ofertas | {url}",
        }
    )
    template = MessageTemplate(
        sender_id=default_sender().id, status=TemplateStatus.APPROVED, **fields.__dict__
    )
    db.session.add(template)
    db.session.commit()
    return template


def _campaign(app, owner, template: MessageTemplate, track: str = SHOP):
    fields = parse_campaign(
        {
            "name": "Tracked",
            "sender_id": default_sender().id,
            "template_id": template.id,
            "segment": {"state": "SP", "max_audience": 3, "opted_in_only": False},
            "variables": {"first_name": {"field": "first_name"}, "button.0": {"track": track}},
        },
        template_variables_for(template.id),
    )
    return create_campaign(fields, owner.id)


def test_a_token_is_signed_and_read_back(app):
    key = app.config["SECRET_KEY"]
    token = tracked_links.token(key, 7, 123456789, 1)
    assert tracked_links.read(key, token) == (7, 123456789, 1)
    assert tracked_links.read(key, token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert tracked_links.read("another key", token) is None
    assert tracked_links.read(key, "not a token") is None


def test_a_tracked_link_needs_its_button_to_lead_to_disparo(app, owner):
    elsewhere = _template(app, "https://loja.example.com/o/{{1}}")
    with pytest.raises(ServiceError) as refused:
        _campaign(app, owner, elsewhere)
    assert "/l/{{1}}" in refused.value.message
    with pytest.raises(Invalid) as invalid:
        parse_campaign(
            {
                "name": "x",
                "sender_id": 1,
                "template_id": 1,
                "segment": {},
                "variables": {"button.0": {"track": "ftp://x"}},
            },
            ["button.0"],
        )
    assert "https://" in invalid.value.errors["variables.button.0"]


def test_each_send_carries_its_own_token_and_a_click_is_counted_once(
    app, client, owner, fake: FakeProvider, live_server
):
    lift_limits(owner)
    app.config["APP_BASE_URL"] = live_server  # the mock ERP's; deployed, it is https
    template = _template(app, "https://disparo.example.com/l/{{1}}")
    template.buttons = [{"type": "URL", "text": "Ver ofertas", "url": f"{live_server}/l/{{{{1}}}}"}]
    db.session.commit()
    campaign = _campaign(app, owner, template)
    send_campaign_now(campaign.id, owner.id)
    fanout.load_audience(campaign.id, app.config)
    pump.pump(campaign.id)
    ids = [i for j in jobs(queues.SEND_TASK) for i in j["args"]["message_ids"]]
    report = sending.send_batch(campaign.id, ids, app.config, retry_queue=False)
    assert sorted(report.sent) == sorted(ids)
    tokens = [params["button.0"] for _to, params in fake.calls]
    read = {tracked_links.read(app.config["SECRET_KEY"], t) for t in tokens}
    assert read == {(campaign.id, message_id, 0) for message_id in ids}

    first = tokens[0]
    assert client.head(f"/l/{first}").status_code == 302  # a link checker: not counted
    for _ in range(2):  # tapped twice: one recipient who clicked
        followed = client.get(f"/l/{first}")
        assert (followed.status_code, followed.headers["Location"]) == (302, SHOP)
    progress = get_progress(campaign)
    assert progress.clicked == 1
    clicked = db.session.scalars(
        sa.select(Message.clicked_button).where(Message.clicked_at.is_not(None))
    ).all()
    assert clicked == ["Ver ofertas"]
    assert client.get(f"/l/{first}x").status_code == 404
    assert client.get("/l/").status_code == 404
