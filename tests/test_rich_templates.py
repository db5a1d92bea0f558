"""Rich templates: every header kind and button kind, from the form and the API to the
payload, checked by the mock WhatsApp the way Meta checks a send against its template."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa

from app import db
from campaigns import fanout, pump, queues, sending, template_parts
from campaigns.models import (
    Campaign,
    Message,
    MessageStatus,
    MessageTemplate,
    ParameterFormat,
    Role,
    TemplateCategory,
    TemplateStatus,
)
from campaigns.providers.base import ProviderError, SendError
from campaigns.providers.cloud_api import post_message, template_message
from campaigns.services import ServiceError
from campaigns.services.campaigns import create_campaign, send_campaign_now, template_variables_for
from campaigns.services.demo import seed_demo
from campaigns.services.templates import default_sender
from campaigns.template_parts import HeaderMedia
from campaigns.validation import Invalid, parse_campaign, parse_template
from mocks.models import MockWhatsAppMedia, MockWhatsAppMessage
from mocks.provider import MockProvider
from tests.helpers import jobs, lift_limits

LINK = "https://cdn.example.com/promo.jpg"
BASE = {
    "name": "rich",
    "language": "pt_BR",
    "category": "MARKETING",
    "parameter_format": "named",
    "body_text": "Oi {{first_name}}, veja a oferta!",
}


def _template(**fields: Any) -> MessageTemplate:
    """An approved template of the demo sender, from the form's fields plus ``fields``."""
    seed_demo()
    parsed = parse_template(BASE | fields)
    template = MessageTemplate(
        sender_id=default_sender().id, status=TemplateStatus.APPROVED, **parsed.__dict__
    )
    db.session.add(template)
    db.session.commit()
    return template


# -- the form's and the API's checks


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"header_format": "IMAGE"}, "header_media_link", "public https:// link or a file"),
        (
            {"header_format": "IMAGE", "header_media_link": "http://x.example/a.jpg"},
            "header_media_link",
            "starting with https://",
        ),
        ({"header_format": "SOUND"}, "header_format", "Choose one of"),
        ({"header_format": "TEXT"}, "header_text", "Write the header's text"),
        (
            {"header_format": "TEXT", "header_text": "{{a}} {{b}}"},
            "header_text",
            "at most one variable",
        ),
        (
            {"header_format": "LOCATION", "header_location": {"latitude": 91, "longitude": 0}},
            "header_location.latitude",
            "from -90 to 90",
        ),
        ({"buttons": "Ver | https://x.example/{{1}}/fim"}, "buttons", "very end"),
        ({"buttons": "Ligue | 12"}, "buttons", "https://"),
        ({"copy_code": "X" * 16}, "copy_code", "up to 15"),
        ({"buttons": "A | +5511987654321\nB | +5511987654322"}, "buttons", "At most 1"),
    ],
)
def test_bad_headers_and_buttons_are_refused_at_their_field(app, fields, field, message):
    with pytest.raises(Invalid) as refused:
        parse_template(BASE | fields)
    assert message in refused.value.errors[field]


def test_each_header_and_button_kind_is_read_from_the_form(app):
    fields = parse_template(
        BASE
        | {
            "header_format": "LOCATION",
            "header_location.latitude": "-23,5505",
            "header_location.longitude": "-46.6333",
            "header_location.name": "Loja Centro",
            "header_location.address": "Rua Direita, 100",
            "buttons": "Sim\nVer | https://loja.example/o/{{1}}\nLigue | +55 11 98765-4321",
            "copy_code": "SAVE30",
        }
    )
    assert fields.header_location == {
        "latitude": -23.5505,
        "longitude": -46.6333,
        "name": "Loja Centro",
        "address": "Rua Direita, 100",
    }
    assert fields.buttons == [
        {"type": "QUICK_REPLY", "text": "Sim"},
        {"type": "URL", "text": "Ver", "url": "https://loja.example/o/{{1}}"},
        {"type": "PHONE_NUMBER", "text": "Ligue", "phone_number": "+55 11 98765-4321"},
        {"type": "COPY_CODE", "example": "SAVE30"},
    ]


def test_the_template_page_creates_an_image_template_and_previews_it(client, login_as, app):
    seed_demo()
    login_as(Role.SUPERVISOR)
    form = BASE | {
        "header_format": "IMAGE",
        "header_media_link": LINK,
        "buttons": "Ver oferta | https://loja.example/o/{{1}}",
    }
    preview = client.post("/templates/preview", data=form).get_data(as_text=True)
    assert "promo.jpg" in preview and "↗ Ver oferta" in preview and "button.0" in preview
    fields = client.post("/templates/header", data={"header_format": "LOCATION"})
    assert 'name="header_location.latitude"' in fields.get_data(as_text=True)
    created = client.post("/templates/", data=form)
    assert created.status_code == 303, created.get_data(as_text=True)
    template = db.session.scalar(sa.select(MessageTemplate).where(MessageTemplate.name == "rich"))
    assert template is not None
    assert (template.header_format, template.header_media_link) == ("IMAGE", LINK)
    page = client.get(f"/templates/{template.id}").get_data(as_text=True)
    assert "button.0" in page and "promo.jpg" in page
    edit = client.get(f"/templates/{template.id}/edit").get_data(as_text=True)
    assert LINK in edit and "https://loja.example/o/{{1}}" in edit


def test_the_api_writes_and_reads_the_header_and_buttons(client, token_for, app):
    seed_demo()
    headers = token_for(Role.SUPERVISOR)
    payload = {
        "name": "located",
        "language": "pt_BR",
        "category": "UTILITY",
        "header_format": "LOCATION",
        "header_location": {
            "latitude": -23.55,
            "longitude": -46.63,
            "name": "Loja Centro",
            "address": "Rua A, 1",
        },
        "body": "Sua loja {{store}} espera você.",
        "buttons": [
            {"type": "URL", "text": "Rota", "url": "https://maps.example/{{1}}"},
            {"type": "COPY_CODE", "example": "VOLTA10"},
        ],
    }
    created = client.post("/api/v1/templates", json=payload, headers=headers)
    assert created.status_code == 201, created.get_data(as_text=True)
    body = created.get_json()
    assert body["header_format"] == "LOCATION"
    assert body["header_location"] == payload["header_location"]
    assert body["variables"] == ["store", "button.0", "button.1"]
    bad = client.post(
        "/api/v1/templates",
        json=payload | {"name": "other", "header_format": "VIDEO"},
        headers=headers,
    )
    assert bad.status_code == 422
    assert "header_media_link" in bad.get_json()["error"]["fields"]


# -- the payload


def test_the_payload_carries_every_header_and_button_kind(app):
    template = _template(
        header_format="TEXT",
        header_text="Oi {{first_name}}",
        buttons="Sim\nVer | https://loja.example/o/{{1}}",
        copy_code="SAVE30",
    )
    params = {
        "header.first_name": "Ana",
        "first_name": "Ana",
        "button.1": "abc123",
        "button.2": "ANA30",
        "payload.0": "promo-42",
    }
    components = template_message(
        to="+5511987654321", template=template, params=params, callback_data="1.1"
    )["template"]["components"]
    assert components == [
        {
            "type": "header",
            "parameters": [{"type": "text", "parameter_name": "first_name", "text": "Ana"}],
        },
        {
            "type": "body",
            "parameters": [{"type": "text", "parameter_name": "first_name", "text": "Ana"}],
        },
        {
            "type": "button",
            "sub_type": "quick_reply",
            "index": "0",
            "parameters": [{"type": "payload", "payload": "promo-42"}],
        },
        {
            "type": "button",
            "sub_type": "url",
            "index": "1",
            "parameters": [{"type": "text", "text": "abc123"}],
        },
        {
            "type": "button",
            "sub_type": "copy_code",
            "index": "2",
            "parameters": [{"type": "coupon_code", "coupon_code": "ANA30"}],
        },
    ]
    # Without the optional payload, the quick reply goes with no parameter at all.
    del params["payload.0"]
    plain = template_message(
        to="+5511987654321", template=template, params=params, callback_data="1.1"
    )["template"]["components"]
    assert [c.get("sub_type") for c in plain if c["type"] == "button"] == ["url", "copy_code"]
    # A required value missing is Meta's 132000, said before any call.
    with pytest.raises(SendError) as missing:
        template_message(
            to="+5511987654321",
            template=template,
            params={"first_name": "Ana"},
            callback_data="1.1",
        )
    assert missing.value.code == 132000 and "button.1" in missing.value.message


@pytest.mark.parametrize(
    ("media", "expected"),
    [
        (HeaderMedia(template_parts.HeaderFormat.IMAGE, media_id="77"), {"id": "77"}),
        (HeaderMedia(template_parts.HeaderFormat.VIDEO, link=LINK), {"link": LINK}),
        (
            HeaderMedia(template_parts.HeaderFormat.DOCUMENT, link=LINK, filename="promo.pdf"),
            {"link": LINK, "filename": "promo.pdf"},
        ),
    ],
)
def test_a_media_header_goes_by_id_or_link(media, expected):
    kind = media.kind.value.lower()
    assert media.parameter() == {"type": kind, kind: expected}


# -- through the mock WhatsApp: Meta's checks of a send against its template


def _send(mock_app, template: MessageTemplate, params: dict[str, str], media=None):
    provider = MockProvider(default_sender(), mock_app.config)
    return provider.send_template(
        to="+5511987654321",
        template=template,
        params=params,
        callback_data="1.1",
        header_media=media,
    )


@pytest.fixture
def mock_app(app, live_server):
    app.config.update(APP_BASE_URL=live_server, MOCK_WHATSAPP_WEBHOOKS=False)
    app.config.pop("MOCK_WHATSAPP_URL", None)
    return app


def test_the_mock_accepts_each_header_kind_sent_as_the_template_has_it(mock_app):
    db.session.add(MockWhatsAppMedia(id="900", phone_number_id="x", mime_type="video/mp4", size=9))
    db.session.commit()
    cases = [
        ({"header_format": "IMAGE", "header_media_link": LINK}, None),
        ({"header_format": "VIDEO", "header_media_link": LINK}, "900"),
        ({"header_format": "DOCUMENT", "header_media_link": "https://x.example/a.pdf"}, None),
        (
            {
                "header_format": "LOCATION",
                "header_location": {"latitude": 1, "longitude": 2, "name": "A", "address": "B"},
            },
            None,
        ),
        ({"header_format": "TEXT", "header_text": "Oi {{first_name}}"}, None),
    ]
    for number, (fields, media_id) in enumerate(cases):
        template = _template(**fields, name=f"kind_{number}")
        fmt = template_parts.header_format(template)
        media = (
            HeaderMedia(fmt, media_id=media_id)
            if media_id and fmt
            else template_parts.linked_media(template)
        )
        params = {"first_name": "Ana", "header.first_name": "Ana"}
        assert _send(mock_app, template, params, media).provider_message_id.startswith("wamid.")
    assert db.session.query(MockWhatsAppMessage).count() == len(cases)


def test_the_mock_refuses_what_does_not_fit_the_template_as_meta_does(mock_app):
    image = _template(header_format="IMAGE", header_media_link=LINK, name="with_image")
    video = HeaderMedia(template_parts.HeaderFormat.VIDEO, link=LINK)
    with pytest.raises(SendError) as wrong_kind:
        _send(mock_app, image, {"first_name": "Ana"}, video)
    assert wrong_kind.value.code == 132012
    unknown = HeaderMedia(template_parts.HeaderFormat.IMAGE, media_id="never-uploaded")
    with pytest.raises(SendError) as never:
        _send(mock_app, image, {"first_name": "Ana"}, unknown)
    assert never.value.code == 131053

    # Disparo's own check says 132000 before a call; the mock says it too when the
    # template it knows asks for more than the send gives (an edit since the send was built).
    linked = _template(buttons="Ver | https://loja.example/o/{{1}}", name="with_link")
    payload = template_message(
        to="+5511987654321",
        template=linked,
        params={"first_name": "Ana", "button.0": "abc"},
        callback_data="1.1",
    )
    payload["template"]["components"] = payload["template"]["components"][:1]  # no button
    with pytest.raises(SendError) as missing:
        post_message(
            MockProvider(default_sender(), mock_app.config).base_url,
            default_sender().phone_number_id or "",
            None,
            payload,
        )
    assert missing.value.code == 132000

    # A named template's parameters must name its variables.
    payload = template_message(
        to="+5511987654321",
        template=linked,
        params={"first_name": "Ana", "button.0": "abc"},
        callback_data="1.1",
    )
    payload["template"]["components"][0]["parameters"][0]["parameter_name"] = "name"
    with pytest.raises(SendError) as misnamed:
        post_message(
            MockProvider(default_sender(), mock_app.config).base_url,
            default_sender().phone_number_id or "",
            None,
            payload,
        )
    assert misnamed.value.code == 132012


def test_a_campaign_sends_an_image_header_and_a_link_per_customer(app, owner, live_server):
    app.config.update(APP_BASE_URL=live_server, MOCK_WHATSAPP_WEBHOOKS=False)
    app.config.pop("MOCK_WHATSAPP_URL", None)
    lift_limits(owner)
    template = _template(
        header_format="IMAGE",
        header_media_link=LINK,
        buttons="Ver oferta | https://loja.example/c/{{1}}\nNão quero",
        name="image_link",
    )
    fields = parse_campaign(
        {
            "name": "Rich",
            "sender_id": default_sender().id,
            "template_id": template.id,
            "segment": {"state": "SP", "max_audience": 5, "opted_in_only": False},
            "variables": {
                "first_name": {"field": "first_name"},
                "button.0": {"field": "id"},
                "payload.1": {"text": "no-thanks"},
            },
        },
        template_variables_for(template.id),
    )
    campaign = create_campaign(fields, owner.id)
    send_campaign_now(campaign.id, owner.id)
    fanout.load_audience(campaign.id, app.config)
    pump.pump(campaign.id)
    ids = [i for j in jobs(queues.SEND_TASK) for i in j["args"]["message_ids"]]
    report = sending.send_batch(campaign.id, ids, app.config, retry_queue=False)
    assert sorted(report.sent) == sorted(ids) and not report.failed
    statuses = db.session.scalars(
        sa.select(Message.status).where(Message.campaign_id == campaign.id)
    ).all()
    assert set(statuses) == {MessageStatus.SENT}
    assert db.session.query(MockWhatsAppMessage).count() == len(ids)


def _imported_image(fmt: ParameterFormat, body: str) -> MessageTemplate:
    """An approved image template as imported from WhatsApp: without its image."""
    seed_demo()
    imported = MessageTemplate(
        sender_id=default_sender().id,
        status=TemplateStatus.APPROVED,
        provider_template_id="7000000000000042",
        name="imported_image",
        language="pt_BR",
        category=TemplateCategory.MARKETING,
        parameter_format=fmt,
        header_format="IMAGE",
        body_text=body,
    )
    db.session.add(imported)
    db.session.commit()
    return imported


def test_a_campaign_needs_the_media_its_template_shows(app, owner):
    imported = _imported_image(ParameterFormat.POSITIONAL, "Oi")
    fields = parse_campaign(
        {
            "name": "No media",
            "sender_id": default_sender().id,
            "template_id": imported.id,
            "segment": {"state": "SP", "opted_in_only": False},
            "variables": {},
        },
        template_variables_for(imported.id),
    )
    with pytest.raises(ServiceError) as refused:
        create_campaign(fields, owner.id)
    assert "edit it to give a link or a file" in refused.value.message
    assert db.session.query(Campaign).count() == 0


# -- an uploaded header file: uploaded before anything is claimed, its failures handled


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def _image_campaign(app, owner, live_server) -> tuple[Campaign, list[int]]:
    """A sending campaign of an uploaded-image template, its messages queued."""
    import io

    from campaigns import media

    app.config.update(APP_BASE_URL=live_server, MOCK_WHATSAPP_WEBHOOKS=False)
    app.config.pop("MOCK_WHATSAPP_URL", None)
    lift_limits(owner)
    stored = media.store(io.BytesIO(PNG), "oferta.png", "IMAGE", owner.id)
    template = _template(header_format="IMAGE", header_media_file_id=stored.id, name="uploaded")
    fields = parse_campaign(
        {
            "name": "Uploaded",
            "sender_id": default_sender().id,
            "template_id": template.id,
            "segment": {"state": "SP", "max_audience": 3, "opted_in_only": False},
            "variables": {"first_name": {"field": "first_name"}},
        },
        template_variables_for(template.id),
    )
    campaign = create_campaign(fields, owner.id)
    send_campaign_now(campaign.id, owner.id)
    fanout.load_audience(campaign.id, app.config)
    pump.pump(campaign.id)
    return campaign, [i for j in jobs(queues.SEND_TASK) for i in j["args"]["message_ids"]]


def test_an_uploaded_header_goes_up_once_and_every_send_names_its_id(app, owner, live_server):
    campaign, ids = _image_campaign(app, owner, live_server)
    for half in (ids[:1], ids[1:]):
        report = sending.send_batch(campaign.id, half, app.config, retry_queue=False)
        assert sorted(report.sent) == sorted(half)
    assert db.session.query(MockWhatsAppMedia).count() == 1  # one upload, two batches


@pytest.mark.parametrize(
    ("code", "paused"), [(131000, False), (100, True)], ids=["transient", "refused"]
)
def test_an_upload_that_fails_is_a_try_spent_or_a_pause(
    app, owner, live_server, monkeypatch, code, paused
):
    """A passing trouble is a failed call for each message (a try spent: a lasting one
    ends in failed, retryable messages, never a loop); a file WhatsApp refuses pauses the
    campaign and puts its messages back to pending. Nothing is sent either way."""
    from campaigns import media
    from campaigns.models import CampaignStatus
    from campaigns.providers.base import ProviderError

    campaign, ids = _image_campaign(app, owner, live_server)

    def refuse(*_args, **_kwargs):
        raise ProviderError("Invalid parameter", code=code, http_status=400)

    monkeypatch.setattr(media, "media_id_for", refuse)
    report = sending.send_batch(campaign.id, ids, app.config, retry_queue=False)
    assert not report.sent and not report.failed
    db.session.expire_all()
    rows = db.session.scalars(sa.select(Message).where(Message.id.in_(ids))).all()
    status = db.session.get(Campaign, campaign.id).status
    if paused:
        assert status is CampaignStatus.PAUSED
        assert {row.status for row in rows} == {MessageStatus.PENDING}
    else:
        assert status is CampaignStatus.SENDING and sorted(report.retrying) == sorted(ids)
        assert {(row.status, row.tries, row.error_code) for row in rows} == {
            (MessageStatus.QUEUED, 1, "131000")
        }
    assert db.session.query(MockWhatsAppMessage).count() == 0


def test_a_sender_without_its_token_pauses_before_any_upload(app, owner, live_server):
    from campaigns import reasons
    from campaigns.models import CampaignStatus, Provider

    campaign, ids = _image_campaign(app, owner, live_server)
    sender = default_sender()
    sender.provider, sender.access_token = Provider.CLOUD_API, None
    db.session.commit()
    sending.send_batch(campaign.id, ids, app.config, retry_queue=False)
    db.session.expire_all()
    paused = db.session.get(Campaign, campaign.id)
    assert (paused.status, paused.status_reason_code) == (
        CampaignStatus.PAUSED,
        reasons.SENDER_WITHOUT_ACCESS_TOKEN,
    )


def _first_name_campaign(template: MessageTemplate, owner, name: str) -> Campaign:
    """A draft of the template for SP's customers, mapping only {{first_name}}."""
    fields = parse_campaign(
        {
            "name": name,
            "sender_id": default_sender().id,
            "template_id": template.id,
            "segment": {"state": "SP", "opted_in_only": False},
            "variables": {"first_name": {"field": "first_name"}},
        },
        template_variables_for(template.id),
    )
    return create_campaign(fields, owner.id)


def test_a_scheduled_campaign_whose_template_changed_fails_with_the_reason(app, owner):
    from datetime import timedelta

    from campaigns import campaign_states, reasons
    from campaigns.clock import database_now
    from campaigns.models import CampaignStatus
    from campaigns.services.campaigns import schedule_campaign

    template = _template(name="changes")
    campaign = _first_name_campaign(template, owner, "Changes")
    schedule_campaign(campaign.id, database_now(db.session) + timedelta(hours=1), owner.id)
    template.buttons = [{"type": "COPY_CODE", "example": "SAVE30"}]
    db.session.commit()  # as an import from WhatsApp would, before the campaign's time
    started = campaign_states.start_due(database_now(db.session) + timedelta(hours=2))
    assert started == []
    db.session.expire_all()
    failed = db.session.get(Campaign, campaign.id)
    assert (failed.status, failed.status_reason_code) == (
        CampaignStatus.FAILED,
        reasons.TEMPLATE_UNREADY,
    )
    assert "now needs button.0" in failed.status_reason


def test_a_media_error_on_send_forgets_the_upload(app, owner, live_server, monkeypatch):
    from campaigns.models import MediaUpload
    from campaigns.providers.errors import ErrorKind

    campaign, ids = _image_campaign(app, owner, live_server)
    app.config["MOCK_WHATSAPP_WEBHOOKS"] = False
    original = MockProvider.send_template

    def expired(self, **kwargs):
        raise SendError("Media download error", ErrorKind.RETRY, 131053, 400)

    monkeypatch.setattr(MockProvider, "send_template", expired)
    sending.send_batch(campaign.id, ids[:1], app.config, retry_queue=False)
    assert db.session.query(MediaUpload).count() == 0  # uploaded again next time
    monkeypatch.setattr(MockProvider, "send_template", original)
    assert sending.send_batch(campaign.id, ids[1:], app.config, retry_queue=False).sent
    assert db.session.query(MediaUpload).count() == 1


def test_giving_an_imported_header_its_media_keeps_the_template_approved(client, login_as, app):
    """Meta reviews the header's kind, not the media a send shows: an approved template
    given its image (form or API) stays approved and keeps WhatsApp's id; a change Meta
    reviews (the body) sends it back to draft."""
    imported = _imported_image(ParameterFormat.NAMED, "Oi {{first_name}}")
    login_as(Role.SUPERVISOR)
    form = BASE | {
        "name": "imported_image",
        "header_format": "IMAGE",
        "body_text": "Oi {{first_name}}",
    }
    saved = client.post(f"/templates/{imported.id}", data=form | {"header_media_link": LINK})
    assert saved.status_code == 303, saved.get_data(as_text=True)
    db.session.expire_all()
    kept = db.session.get(MessageTemplate, imported.id)
    assert (kept.status, kept.provider_template_id) == (TemplateStatus.APPROVED, "7000000000000042")
    assert kept.header_media_link == LINK and not template_parts.needs_media(kept)

    edited = form | {"header_media_link": LINK, "body_text": "Olá {{first_name}}"}
    assert client.post(f"/templates/{imported.id}", data=edited).status_code == 303
    db.session.expire_all()
    assert db.session.get(MessageTemplate, imported.id).status is TemplateStatus.DRAFT


def test_a_language_version_must_fill_each_variable_with_the_same_kind_of_thing(app):
    from campaigns import languages

    link = _template(buttons="Ver | https://loja.example/o/{{1}}", name="versions")
    coupon = _template(copy_code="SAVE30", name="versions", language="es")
    _template(buttons="Ver | https://tienda.example/o/{{1}}", name="versions", language="en")
    assert template_parts.keys(link) == template_parts.keys(coupon) == ["first_name", "button.0"]
    assert set(languages.variants(link)) == {"pt_BR", "en"}  # a coupon is not a link's ending


def test_a_campaign_whose_template_now_needs_more_is_refused_before_it_goes(app, owner):
    template = _template(name="grows")
    campaign = _first_name_campaign(template, owner, "Grows")
    template.buttons = [{"type": "URL", "text": "Ver", "url": "https://loja.example/{{1}}"}]
    db.session.commit()  # as an import from WhatsApp would
    with pytest.raises(ServiceError) as refused:
        send_campaign_now(campaign.id, owner.id)
    assert "button.0" in refused.value.message


# -- submitting a media header for review: its sample through Meta's resumable upload


class _Graph:
    """A stand-in Graph API for a submission: the upload session, the bytes, the template."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def __call__(self, environ, start_response):
        from werkzeug.wrappers import Request, Response

        request = Request(environ)
        self.requests.append(
            {
                "path": request.path,
                "args": dict(request.args),
                "headers": dict(request.headers),
                "data": request.get_data(),
            }
        )
        answers = {
            "/v23.0/4242/uploads": {"id": "upload:MTphdHRhY2g"},
            "/v23.0/upload:MTphdHRhY2g": {"h": "4::aW1hZ2UvcG5n"},
            "/v23.0/200000000000999/message_templates": {"id": "991", "status": "PENDING"},
        }
        body = answers.get(request.path, {"error": {"message": "unknown", "code": 100}})
        status = 200 if request.path in answers else 400
        return Response(json.dumps(body), status, content_type="application/json")(
            environ, start_response
        )


def test_a_media_header_goes_for_review_with_its_sample_as_meta_asks(app, owner):
    import io

    from campaigns import media
    from campaigns.models import Provider, Sender
    from campaigns.providers.base import MediaSample
    from campaigns.providers.cloud_api import CloudApiProvider
    from tests.helpers import serving

    stored = media.store(io.BytesIO(PNG), "oferta.png", "IMAGE", owner.id)
    template = _template(header_format="IMAGE", header_media_file_id=stored.id, name="sampled")
    sample = media.review_sample(template)
    assert sample == MediaSample(PNG, "oferta.png", "image/png")
    sender = Sender(
        name="Cloud", provider=Provider.CLOUD_API, waba_id="200000000000999", access_token="T0K"
    )
    graph = _Graph()
    with serving(graph) as base:
        config = {"WHATSAPP_API_BASE_URL": f"{base}/v23.0", "WHATSAPP_APP_ID": "4242"}
        submitted = CloudApiProvider(sender, config).submit_template(template, sample)
        assert submitted.provider_template_id == "991"
        session, upload, made = graph.requests
        assert session["args"] == {
            "file_name": "oferta.png",
            "file_length": str(len(PNG)),
            "file_type": "image/png",
        }
        # (Its file_offset header: WSGI servers drop names with "_", so not seen here.)
        assert (upload["headers"]["Authorization"], upload["data"]) == ("OAuth T0K", PNG)
        header = json.loads(made["data"])["components"][0]
        assert header == {
            "type": "HEADER",
            "format": "IMAGE",
            "example": {"header_handle": ["4::aW1hZ2UvcG5n"]},
        }
        without_app = {"WHATSAPP_API_BASE_URL": f"{base}/v23.0"}
        with pytest.raises(ProviderError) as refused:
            CloudApiProvider(sender, without_app).submit_template(template, sample)
        assert "WHATSAPP_APP_ID" in refused.value.message


def test_a_header_link_meta_would_not_review_is_refused_before_submitting(app, live_server):
    from campaigns import media

    link = f"{live_server}/static/app.css"  # not an image
    template = _template(header_format="IMAGE", header_media_link=LINK, name="linked")
    template.header_media_link = link
    with pytest.raises(ServiceError) as refused:
        media.review_sample(template)
    assert "JPEG, PNG, MP4 or PDF" in refused.value.message
