"""Templates made in WhatsApp Manager, imported through the mock WhatsApp's Graph listing:
what is created, what is updated, what is skipped and why, paging, the hourly sync
(status changes, deletions and the campaigns they stop), the API and the page."""

from __future__ import annotations

from typing import Any, cast

import pytest
import sqlalchemy as sa
from flask import Flask
from procrastinate import JobContext

from app import db
from campaigns import reasons, template_parts
from campaigns.models import (
    Campaign,
    CampaignStatus,
    MessageTemplate,
    ParameterFormat,
    Provider,
    Role,
    Sender,
    TemplateCategory,
    TemplateStatus,
)
from campaigns.providers import ProviderError, cloud_api
from campaigns.providers.cloud_api import CloudApiProvider, read_templates, template_message
from campaigns.services.campaigns import schedule_campaign
from campaigns.services.demo import seed_demo
from campaigns.services.template_import import import_templates
from campaigns.services.templates import default_sender
from jobs import tasks
from tests.helpers import demo_campaign

WABA_ID = "300000000000001"


@pytest.fixture
def mock_app(app: Flask, live_server: str) -> Flask:
    """The mock WhatsApp answers the Graph reads on the live server."""
    app.config.update(APP_BASE_URL=live_server, MOCK_WHATSAPP_URL="")
    return app


@pytest.fixture
def sender(mock_app) -> Sender:
    made = Sender(
        name="Import",
        provider=Provider.MOCK,
        phone_number_id="100000000000301",
        waba_id=WABA_ID,
        app_secret="import-app-secret",
    )
    db.session.add(made)
    db.session.commit()
    return made


def body(text: str) -> dict[str, Any]:
    return {"type": "BODY", "text": text}


def make(client, name: str, components: list[dict], *, waba_id: str = WABA_ID, **more) -> str:
    """A template made 'in WhatsApp Manager' (the mock's store); its Meta id."""
    payload = {"name": name, "language": "pt_BR", "category": "MARKETING", "components": components}
    response = client.post(f"/mock/whatsapp/{waba_id}/templates", json=payload | more)
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()["id"]


def change(client, meta_id: str, **given) -> None:
    response = client.post(f"/mock/whatsapp/{WABA_ID}/templates/{meta_id}", json=given)
    assert response.status_code == 200, response.get_data(as_text=True)


def templates_of(sender_id: int) -> dict[str, MessageTemplate]:
    db.session.expire_all()
    return {
        t.name: t
        for t in db.session.scalars(
            sa.select(MessageTemplate).where(MessageTemplate.sender_id == sender_id)
        )
    }


def counts(result) -> tuple[int, int, int, int]:
    return result.imported, result.updated, result.unchanged, len(result.skipped)


def job_context() -> JobContext:
    class Context:
        class job:  # JobContext's shape
            id = 4343

    return cast(JobContext, Context())


def test_import_creates_sendable_templates_and_a_second_import_changes_nothing(client, sender):
    promo = make(
        client,
        "promo_named",
        [
            {"type": "HEADER", "format": "TEXT", "text": "Ofertas"},
            body("Olá {{first_name}}, {{discount}} de desconto."),
            {"type": "FOOTER", "text": "Responda SAIR"},
            {
                "type": "BUTTONS",
                "buttons": [
                    {"type": "QUICK_REPLY", "text": "Quero"},
                    {"type": "URL", "text": "Loja", "url": "https://example.com/loja"},
                ],
            },
        ],
        parameter_format="NAMED",
        quality_score="GREEN",
    )
    make(
        client,
        "order_ready",
        [body("Oi {{1}}, seu pedido {{2}} está pronto.")],
        category="UTILITY",
        status="PENDING",
    )

    result = import_templates(sender.id, None)
    assert counts(result) == (2, 0, 0, 0)
    found = templates_of(sender.id)
    named = found["promo_named"]
    assert (named.status, named.category, named.parameter_format) == (
        TemplateStatus.APPROVED,
        TemplateCategory.MARKETING,
        ParameterFormat.NAMED,
    )
    assert (named.provider_template_id, named.quality_rating) == (promo, "GREEN")
    assert (named.header_text, named.footer_text) == ("Ofertas", "Responda SAIR")
    assert named.buttons == [
        {"type": "QUICK_REPLY", "text": "Quero"},
        {"type": "URL", "text": "Loja", "url": "https://example.com/loja"},
    ]
    positional = found["order_ready"]
    assert (positional.status, positional.parameter_format, positional.category) == (
        TemplateStatus.PENDING,
        ParameterFormat.POSITIONAL,
        TemplateCategory.UTILITY,
    )
    # Sendable as it is: the Cloud API payload carries its body parameters in order.
    payload = template_message(
        to="+5511999990001", template=positional, params={"1": "Ana", "2": "A-1"}, callback_data="1"
    )
    assert payload["template"]["components"][0]["parameters"] == [
        {"type": "text", "text": "Ana"},
        {"type": "text", "text": "A-1"},
    ]

    again = import_templates(sender.id, None)
    assert counts(again) == (0, 0, 2, 0)
    assert {t.id for t in templates_of(sender.id).values()} == {named.id, positional.id}


def test_templates_disparo_submitted_are_listed_and_left_alone(client, mock_app):
    """The demo's templates (submitted to the mock) appear in the WABA's listing as
    Disparo has them: an import finds nothing to change and deletes nothing."""
    seed_demo()
    demo = default_sender()
    before = {t.name: (t.status, t.body_text) for t in templates_of(demo.id).values()}
    result = import_templates(demo.id, None)
    assert counts(result) == (0, 0, 3, 0)
    after = {t.name: (t.status, t.body_text) for t in templates_of(demo.id).values()}
    assert after == before


def test_a_known_template_is_matched_by_name_and_language_and_takes_whatsapps_state(
    client, sender, supervisor_id
):
    mine = MessageTemplate(
        sender_id=sender.id,
        name="promo",
        language="pt_BR",
        category=TemplateCategory.UTILITY,
        parameter_format=ParameterFormat.POSITIONAL,
        body_text="Oi {{1}}.",
        status=TemplateStatus.PENDING,
        created_by_id=supervisor_id,
    )
    db.session.add(mine)
    db.session.commit()
    meta_id = make(client, "promo", [body("Oi {{1}}, tudo bem?")], quality_score="YELLOW")

    result = import_templates(sender.id, None)
    assert counts(result) == (0, 1, 0, 0)
    found = templates_of(sender.id)["promo"]
    assert found.id == mine.id
    assert (found.provider_template_id, found.status, found.category) == (
        meta_id,
        TemplateStatus.APPROVED,
        TemplateCategory.MARKETING,
    )
    assert (found.body_text, found.quality_rating) == ("Oi {{1}}, tudo bem?", "YELLOW")
    # Its creator is told of the approval, as a review's outcome.
    from campaigns.models import Notification

    codes = db.session.scalars(
        sa.select(Notification.code).where(Notification.user_id == supervisor_id)
    ).all()
    assert codes == [reasons.TEMPLATE_APPROVED]


@pytest.fixture
def supervisor_id(user_factory) -> int:
    return user_factory(Role.SUPERVISOR).id


def test_a_draft_being_edited_in_disparo_is_left_alone_and_said_so(client, sender):
    db.session.add(
        MessageTemplate(
            sender_id=sender.id,
            name="promo",
            language="pt_BR",
            category=TemplateCategory.MARKETING,
            body_text="Meu rascunho {{first_name}}",
            status=TemplateStatus.DRAFT,
        )
    )
    db.session.commit()
    make(client, "promo", [body("O de lá {{first_name}}")], parameter_format="NAMED")
    result = import_templates(sender.id, None)
    assert counts(result) == (0, 0, 0, 1)
    assert result.skipped[0].code == "draft"
    found = templates_of(sender.id)["promo"]
    assert (found.status, found.body_text) == (TemplateStatus.DRAFT, "Meu rascunho {{first_name}}")


UNSENDABLE = {
    "gif_header": (
        [{"type": "HEADER", "format": "GIF", "example": {"header_handle": ["h"]}}, body("Oi")],
        {},
        "header_kind",
        "Its header is GIF, a kind Disparo cannot send yet.",
    ),
    "otp_code": (
        [
            body("{{1}} é seu código."),
            {"type": "BUTTONS", "buttons": [{"type": "OTP", "otp_type": "COPY_CODE"}]},
        ],
        {"category": "AUTHENTICATION"},
        "button_kind",
        "It has a button of a kind Disparo cannot send yet: one-time password.",
    ),
    "flow_start": (
        [
            body("Oi"),
            {"type": "BUTTONS", "buttons": [{"type": "FLOW", "text": "Abrir", "flow_id": "1"}]},
        ],
        {},
        "button_kind",
        "It has a button of a kind Disparo cannot send yet: flow.",
    ),
    "carousel_promo": (
        [body("Oi"), {"type": "CAROUSEL", "cards": []}],
        {},
        "component_kind",
        "It has a part Disparo cannot send yet: carousel.",
    ),
    "deleted_one": (
        [body("Oi")],
        {"status": "DELETED"},
        "deleted",
        "WhatsApp reports it as deleted.",
    ),
    "Bad-Name": (
        [body("Oi")],
        {},
        "invalid",
        "It does not pass Disparo's template checks: Use lowercase letters, digits and _ only"
        " (up to 512).",
    ),
    "no_body": (
        [{"type": "FOOTER", "text": "só rodapé"}],
        {},
        "invalid",
        "It does not pass Disparo's template checks: The body is required.",
    ),
}


def test_templates_disparo_cannot_send_are_skipped_with_a_reason_each(client, sender):
    for name, (components, more, _code, _reason) in UNSENDABLE.items():
        make(client, name, components, **more)
    make(client, "fine", [body("Oi {{1}}")])

    result = import_templates(sender.id, None)
    assert counts(result)[:3] == (1, 0, 0)
    skipped = {s.name: (s.code, s.reason) for s in result.skipped}
    assert skipped == {name: (code, reason) for name, (_c, _m, code, reason) in UNSENDABLE.items()}
    assert set(templates_of(sender.id)) == {"fine"}
    # Skipped the second time too: never dropped silently, never half imported.
    again = import_templates(sender.id, None)
    assert counts(again) == (0, 0, 1, len(UNSENDABLE))


def test_paging_follows_the_cursor_over_several_pages(client, sender, monkeypatch):
    monkeypatch.setattr(cloud_api, "TEMPLATES_PAGE_SIZE", 2)
    for n in range(5):
        make(client, f"promo_{n}", [body(f"Oferta {n}: {{{{1}}}}")])
    calls: list[dict] = []
    from mocks.provider import MockProvider

    original = MockProvider._request

    def counting(self, method, path, **kwargs):
        calls.append(dict(kwargs["params"]))
        return original(self, method, path, **kwargs)

    monkeypatch.setattr(MockProvider, "_request", counting)
    result = import_templates(sender.id, None)
    assert counts(result) == (5, 0, 0, 0)
    assert len(calls) == 3  # 2 + 2 + 1
    assert "after" not in calls[0] and calls[1]["after"] != calls[2]["after"]
    assert all(call["limit"] == 2 for call in calls)


def test_a_listing_that_does_not_end_stops_at_the_cap_and_deletes_nothing(monkeypatch):
    monkeypatch.setattr(cloud_api, "TEMPLATES_MAX_PAGES", 3)
    pages: list[dict] = []

    def endless(method, path, params):
        pages.append(params)
        n = len(pages)
        return {
            "data": [{"id": str(n), "name": f"t{n}", "language": "en_US"}],
            "paging": {"cursors": {"after": f"c{n}"}, "next": "https://graph/next"},
        }

    sender = Sender(name="x", provider=Provider.CLOUD_API, waba_id="1")
    listing = read_templates(endless, sender)
    assert (len(listing.templates), listing.complete, len(pages)) == (3, False, 3)

    def stuck(method, path, params):
        return {"data": [], "paging": {"cursors": {"after": "same"}, "next": "https://graph/n"}}

    assert read_templates(stuck, sender).complete is False
    with pytest.raises(ProviderError):
        read_templates(lambda method, path, params: {"oops": 1}, sender)


def test_the_cloud_api_client_pages_a_graph_listing_with_its_token(
    client, sender, live_server, monkeypatch
):
    """The Cloud API provider against the mock's Graph listing: the same paging code."""
    monkeypatch.setattr(cloud_api, "TEMPLATES_PAGE_SIZE", 1)
    make(client, "one", [body("Um {{1}}")])
    make(client, "two", [body("Dois {{1}}")])
    cloud = Sender(name="cloud", provider=Provider.CLOUD_API, waba_id=WABA_ID, access_token="tkn")
    db.session.add(cloud)
    db.session.commit()
    config = {"WHATSAPP_API_BASE_URL": f"{live_server}/mock/whatsapp/v23.0"}
    provider = CloudApiProvider(cloud, config)
    listing = provider.list_templates()
    assert listing.complete
    assert [t["name"] for t in listing.templates] == ["one", "two"]
    assert set(listing.templates[0]) == set(cloud_api.TEMPLATE_FIELDS.split(","))
    # The token is sent, and checked as Graph does: another one is refused (190, 401)...
    stranger = Sender(name="x", provider=Provider.CLOUD_API, waba_id=WABA_ID, access_token="bad")
    with pytest.raises(ProviderError, match="WhatsApp answered 401") as refused:
        CloudApiProvider(stranger, config).list_templates()
    assert refused.value.code == 190
    # ... and so is none, once the WABA's senders have a token.
    base = f"/mock/whatsapp/v23.0/{WABA_ID}/message_templates"
    assert client.get(base).status_code == 401
    assert client.get(base, headers={"Authorization": "Bearer tkn"}).status_code == 200
    # Graph's errors come back as the provider's, with WhatsApp's words.
    cloud.waba_id = "not-digits"
    with pytest.raises(ProviderError, match="WhatsApp answered 400"):
        provider.list_templates()


def test_the_hourly_sync_picks_up_status_quality_and_category_changes(client, sender):
    meta_id = make(client, "promo", [body("Oi {{1}}")], category="UTILITY")
    import_templates(sender.id, None)
    # Changed in WhatsApp Manager, and the webhooks were lost.
    change(client, meta_id, status="PAUSED", quality_score="RED", category="MARKETING")

    tasks.sync_waba_templates(job_context(), 0)
    found = templates_of(sender.id)["promo"]
    assert (found.status, found.quality_rating, found.category) == (
        TemplateStatus.PAUSED,
        "RED",
        TemplateCategory.MARKETING,
    )
    # A new one made meanwhile is imported by the same run.
    make(client, "later", [body("Depois {{1}}")])
    tasks.sync_waba_templates(job_context(), 0)
    assert set(templates_of(sender.id)) == {"promo", "later"}


def test_the_sync_logs_a_sender_it_cannot_read_and_goes_on(client, sender, mock_app, caplog):
    broken = Sender(name="broken", provider=Provider.CLOUD_API, waba_id="999", access_token="tkn")
    db.session.add(broken)
    db.session.commit()
    mock_app.config["WHATSAPP_API_BASE_URL"] = "http://127.0.0.1:9"  # nobody listens
    make(client, "promo", [body("Oi {{1}}")])
    with caplog.at_level("WARNING", logger="jobs.tasks"):
        tasks.sync_waba_templates(job_context(), 0)
    assert f"job 4343: sender {broken.id}: template sync failed" in caplog.text
    assert set(templates_of(sender.id)) == {"promo"}


PROMO_BODY = (
    "Olá {{first_name}}! Neste fim de semana você tem {{discount}} de desconto "
    "na loja de {{city}}. Use o cupom {{coupon}}."
)


def _assert_failed_for_deletion(campaign_id: int) -> None:
    db.session.expire_all()
    failed = db.session.get(Campaign, campaign_id)
    assert failed is not None
    assert (failed.status, failed.status_reason_code) == (
        CampaignStatus.FAILED,
        reasons.TEMPLATE_DELETED,
    )


def _scheduled_on_an_imported_copy(client, owner) -> tuple[Campaign, Any, str]:
    """On the demo sender: "promo_copy" made in WhatsApp Manager and imported, and a demo
    campaign scheduled for tomorrow with it; (the campaign, the sender, Meta's id)."""
    from datetime import timedelta

    from campaigns.clock import database_now

    campaign = demo_campaign(owner.id)
    demo = default_sender()
    meta_id = make(
        client,
        "promo_copy",
        [body(PROMO_BODY)],
        waba_id=str(demo.waba_id),
        parameter_format="NAMED",
    )
    import_templates(demo.id, None)
    imported = templates_of(demo.id)["promo_copy"]
    db.session.execute(
        sa.update(Campaign).where(Campaign.id == campaign.id).values(template_id=imported.id)
    )
    db.session.commit()
    schedule_campaign(campaign.id, database_now(db.session) + timedelta(days=1), owner.id)
    return campaign, demo, meta_id


def test_a_template_deleted_in_whatsapp_manager_is_disabled_and_its_campaigns_fail(
    client, mock_app, owner
):
    """On the demo sender: a campaign scheduled with an imported template fails, with the
    reason, once the template is gone from the WABA; the demo's own templates stay."""
    campaign, demo, meta_id = _scheduled_on_an_imported_copy(client, owner)

    response = client.delete(f"/mock/whatsapp/{demo.waba_id}/templates/{meta_id}")
    assert response.status_code == 200
    result = import_templates(demo.id, None)
    assert counts(result) == (0, 1, 3, 0)
    gone = templates_of(demo.id)["promo_copy"]
    assert (gone.status, gone.status_reason) == (TemplateStatus.DISABLED, "DELETED")
    _assert_failed_for_deletion(campaign.id)
    assert templates_of(demo.id)["promo_weekend"].status is TemplateStatus.APPROVED
    # Nothing more happens on the next run.
    assert counts(import_templates(demo.id, None)) == (0, 0, 3, 0)


def test_a_template_webhook_from_the_mock_changes_its_listing_too(client, sender):
    meta_id = make(client, "promo", [body("Oi {{1}}")])
    import_templates(sender.id, None)
    response = client.post(f"/mock/whatsapp/templates/{meta_id}/status", json={"event": "PAUSED"})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert templates_of(sender.id)["promo"].status is TemplateStatus.PAUSED
    # The listing agrees with the webhook: the sync does not undo it.
    assert counts(import_templates(sender.id, None)) == (0, 0, 1, 0)


def test_the_mock_listing_checks_its_query(client, sender):
    make(client, "promo", [body("Oi {{1}}")])
    base = f"/mock/whatsapp/v23.0/{WABA_ID}/message_templates"
    assert client.get(f"{base}?limit=0").status_code == 400
    assert client.get(f"{base}?after=%%%").status_code == 400
    assert client.get("/mock/whatsapp/v23.0/abc/message_templates").status_code == 400
    page = client.get(f"{base}?fields=name,status").get_json()
    assert page["data"] == [{"id": page["data"][0]["id"], "name": "promo", "status": "APPROVED"}]
    assert "next" not in page["paging"]
    taken = client.post(
        f"/mock/whatsapp/{WABA_ID}/templates",
        json={"name": "promo", "language": "pt_BR", "category": "UTILITY", "components": []},
    )
    assert taken.status_code == 409
    bad = client.post(
        f"/mock/whatsapp/{WABA_ID}/templates",
        json={"name": "x", "language": "pt_BR", "category": "OTHER", "components": []},
    )
    assert bad.status_code == 400


# -- the API


def test_the_api_imports_and_answers_the_summary(client, sender, token_for):
    make(client, "fine", [body("Oi {{1}}")])
    make(client, "gif_header", UNSENDABLE["gif_header"][0], **UNSENDABLE["gif_header"][1])
    headers = token_for(Role.SUPERVISOR)
    response = client.post(f"/api/v1/senders/{sender.id}/templates/import", headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json() == {
        "imported": 1,
        "updated": 0,
        "unchanged": 0,
        "skipped": [
            {
                "name": "gif_header",
                "language": "pt_BR",
                "code": "header_kind",
                "reason": UNSENDABLE["gif_header"][3],
            }
        ],
    }
    again = client.post(f"/api/v1/senders/{sender.id}/templates/import", headers=headers)
    assert again.get_json()["unchanged"] == 1 and again.get_json()["imported"] == 0


def test_the_api_refuses_with_json_errors(client, sender, token_for, mock_app):
    supervisor = token_for(Role.SUPERVISOR)
    url = f"/api/v1/senders/{sender.id}/templates/import"
    assert client.post(url, headers=token_for(Role.VIEWER)).status_code == 403
    missing = client.post("/api/v1/senders/999999/templates/import", headers=supervisor)
    assert (missing.status_code, missing.get_json()["error"]["code"]) == (404, "not_found")

    no_waba = Sender(name="no waba", provider=Provider.MOCK, phone_number_id="100000000000302")
    db.session.add(no_waba)
    db.session.commit()
    refused = client.post(f"/api/v1/senders/{no_waba.id}/templates/import", headers=supervisor)
    assert (refused.status_code, refused.get_json()["error"]["code"]) == (409, "conflict")
    assert "WABA id" in refused.get_json()["error"]["message"]

    mock_app.config["MOCKS_ENABLED"] = False
    off = client.post(url, headers=supervisor)
    assert (off.status_code, off.get_json()["error"]["code"]) == (409, "conflict")
    mock_app.config["MOCKS_ENABLED"] = True

    mock_app.config["APP_BASE_URL"] = "http://127.0.0.1:9"  # the Graph API unreachable
    unreachable = client.post(url, headers=supervisor)
    assert unreachable.status_code == 422
    assert "could not be reached" in unreachable.get_json()["error"]["message"]


# -- the page


def test_the_page_imports_in_place_and_shows_the_summary(client, sender, login_as):
    make(client, "fine", [body("Oi {{1}}")])
    make(client, "flow_start", UNSENDABLE["flow_start"][0], **UNSENDABLE["flow_start"][1])
    login_as(Role.SUPERVISOR)
    page = client.get("/templates/").get_data(as_text=True)
    assert "Import from WhatsApp" in page and f'value="{sender.id}"' in page

    response = client.post(
        "/templates/import", data={"sender_id": sender.id}, headers={"HX-Request": "true"}
    )
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert html.startswith('<div id="import-result"')
    assert "Imported: 1. Updated: 0. Unchanged: 0. Skipped: 1." in html
    assert "flow_start" in html and "kind Disparo cannot send yet: flow" in html
    assert set(templates_of(sender.id)) == {"fine"}

    plain = client.post("/templates/import", data={"sender_id": sender.id})
    assert plain.status_code == 200
    assert "Unchanged: 1." in plain.get_data(as_text=True)

    nothing = client.post(
        "/templates/import", data={"sender_id": ""}, headers={"HX-Request": "true"}
    )
    assert nothing.status_code == 422 and "Choose a sender." in nothing.get_data(as_text=True)


def test_the_page_in_portuguese_and_for_viewers(client, sender, login_as):
    viewer = login_as(Role.VIEWER)
    assert "Import from WhatsApp" not in client.get("/templates/").get_data(as_text=True)
    assert client.post("/templates/import", data={"sender_id": sender.id}).status_code == 403
    del viewer
    login_as(Role.SUPERVISOR)
    make(client, "gif_header", UNSENDABLE["gif_header"][0], **UNSENDABLE["gif_header"][1])
    response = client.post(
        "/templates/import",
        data={"sender_id": sender.id},
        headers={"HX-Request": "true", "Accept-Language": "pt-BR"},
    )
    html = response.get_data(as_text=True)
    assert "Importados: 0" in html
    assert "Disparo cannot" not in html


# -- the listing as a picture taken at listed_at: webhooks, submissions and Meta's lag


def listing_then(monkeypatch, meanwhile) -> None:
    """The mock's listing is read, then ``meanwhile`` happens before the import applies it
    (a webhook, a submission: what another process commits during the Graph calls)."""
    from mocks.provider import MockProvider

    original = MockProvider.list_templates

    def listed(self):
        listing = original(self)
        meanwhile()
        return listing

    monkeypatch.setattr(MockProvider, "list_templates", listed)


def test_a_webhook_arriving_during_the_listing_is_not_overwritten(client, sender, monkeypatch):
    meta_id = make(client, "promo", [body("Oi {{1}}")], quality_score="GREEN")
    import_templates(sender.id, None)

    def paused_by_webhook():
        for kind, given in (
            ("status", {"event": "PAUSED"}),
            ("quality", {"new_quality_score": "RED"}),
        ):
            answer = client.post(f"/mock/whatsapp/templates/{meta_id}/{kind}", json=given)
            assert answer.status_code == 200 and answer.get_json()["posted"]

    listing_then(monkeypatch, paused_by_webhook)
    result = import_templates(sender.id, None)  # its listing still says APPROVED, GREEN
    assert counts(result) == (0, 0, 1, 0)
    found = templates_of(sender.id)["promo"]
    assert (found.status, found.quality_rating) == (TemplateStatus.PAUSED, "RED")


def test_a_replayed_webhook_older_than_the_listing_does_not_undo_the_import(client, sender):
    from tests.helpers import post_webhook

    meta_id = make(client, "promo", [body("Oi {{1}}")])
    import_templates(sender.id, None)
    change(client, meta_id, status="PAUSED")  # its webhook lost
    assert counts(import_templates(sender.id, None)) == (0, 1, 0, 0)
    assert templates_of(sender.id)["promo"].status is TemplateStatus.PAUSED
    # An APPROVED sent a minute before the listing, delivered only now.
    from campaigns.clock import database_now

    sent = int(database_now(db.session).timestamp()) - 60
    value = {
        "message_template_id": meta_id,
        "message_template_name": "promo",
        "message_template_language": "pt_BR",
        "event": "APPROVED",
        "reason": "NONE",
    }
    late = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": WABA_ID,
                "time": sent,
                "changes": [{"field": "message_template_status_update", "value": value}],
            }
        ],
    }
    answer = post_webhook(client, late, secret="import-app-secret")
    assert answer.status_code == 200 and answer.json["templates_stale"] == 1
    assert templates_of(sender.id)["promo"].status is TemplateStatus.PAUSED
    # One sent after the listing applies.
    late["entry"][0]["time"] = sent + 120
    assert post_webhook(client, late, secret="import-app-secret").json["templates_applied"] == 1
    assert templates_of(sender.id)["promo"].status is TemplateStatus.APPROVED


def _draft(sender_id: int, name: str = "mine") -> MessageTemplate:
    template = MessageTemplate(
        sender_id=sender_id,
        name=name,
        language="pt_BR",
        category=TemplateCategory.MARKETING,
        parameter_format=ParameterFormat.POSITIONAL,
        body_text="Meu {{1}}",
        status=TemplateStatus.DRAFT,
    )
    db.session.add(template)
    db.session.commit()
    return template


def test_a_template_submitted_during_the_listing_is_not_taken_for_deleted(
    client, sender, monkeypatch
):
    from campaigns.services.templates import submit_template

    draft = _draft(sender.id)
    listing_then(monkeypatch, lambda: submit_template(draft.id))
    result = import_templates(sender.id, None)
    assert counts(result) == (0, 0, 0, 0)
    mine = templates_of(sender.id)["mine"]
    assert (mine.status, mine.status_reason) == (TemplateStatus.PENDING, None)
    assert mine.provider_template_id == f"mock-{draft.id}"


def test_a_template_meta_does_not_list_yet_is_not_deleted_until_its_lag_is_past(
    client, sender, monkeypatch
):
    from campaigns.services.templates import submit_template
    from mocks import waba_templates

    mine = submit_template(_draft(sender.id).id)
    # Meta's listing lags behind its submission: it does not show it yet.
    original = waba_templates.waba_templates
    monkeypatch.setattr(
        waba_templates,
        "waba_templates",
        lambda waba_id: [row for row in original(waba_id) if row[1]["name"] != "mine"],
    )

    def submitted(minutes_ago: int) -> None:
        db.session.execute(
            sa.update(MessageTemplate)
            .where(MessageTemplate.id == mine.id)
            .values(
                submitted_at=sa.func.now() - sa.text(f"interval '{minutes_ago} minutes'"),
                updated_at=sa.func.now() - sa.text(f"interval '{minutes_ago} minutes'"),
            )
        )
        db.session.commit()

    submitted(2)
    assert counts(import_templates(sender.id, None)) == (0, 0, 0, 0)
    assert templates_of(sender.id)["mine"].status is TemplateStatus.PENDING
    submitted(60)  # long enough: it was deleted
    assert counts(import_templates(sender.id, None)) == (0, 1, 0, 0)
    gone = templates_of(sender.id)["mine"]
    assert (gone.status, gone.status_reason) == (TemplateStatus.DISABLED, "DELETED")


# -- statuses, reasons and odd JSON


def test_a_known_template_whose_content_is_skipped_still_takes_its_status(client, mock_app, owner):
    """A template Disparo has, changed in WhatsApp Manager to content Disparo cannot send,
    then paused, then deleted (as Meta lists a deleted one): its campaigns stop each time."""
    campaign, demo, meta_id = _scheduled_on_an_imported_copy(client, owner)
    with_gif = [UNSENDABLE["gif_header"][0][0], body(PROMO_BODY)]

    def waba_change(**given) -> None:
        url = f"/mock/whatsapp/{demo.waba_id}/templates/{meta_id}"
        assert client.post(url, json=given).status_code == 200

    waba_change(components=with_gif, status="PAUSED")
    result = import_templates(demo.id, None)
    assert counts(result) == (0, 1, 3, 1) and result.skipped[0].code == "header_kind"
    assert templates_of(demo.id)["promo_copy"].status is TemplateStatus.PAUSED
    db.session.expire_all()
    paused = db.session.get(Campaign, campaign.id)
    assert paused is not None
    assert (paused.status, paused.status_reason_code) == (
        CampaignStatus.PAUSED,
        reasons.TEMPLATE_PAUSED,
    )
    assert templates_of(demo.id)["promo_copy"].header_text is None  # its content left alone

    waba_change(status="DELETED")
    result = import_templates(demo.id, None)
    assert counts(result) == (0, 1, 3, 1) and result.skipped[0].code == "deleted"
    gone = templates_of(demo.id)["promo_copy"]
    assert (gone.status, gone.status_reason) == (TemplateStatus.DISABLED, "DELETED")
    _assert_failed_for_deletion(campaign.id)
    assert counts(import_templates(demo.id, None)) == (0, 0, 3, 1)


def test_archived_and_limit_exceeded_are_statuses_that_stop_sending(client, sender):
    from campaigns.services.template_import import read

    make(client, "archived_one", [body("Oi {{1}}")], status="ARCHIVED")
    make(client, "over_limit", [body("Oi {{1}}")], status="LIMIT_EXCEEDED")
    assert counts(import_templates(sender.id, None)) == (2, 0, 0, 0)
    found = templates_of(sender.id)
    assert found["archived_one"].status is TemplateStatus.DISABLED
    assert found["over_limit"].status is TemplateStatus.PAUSED
    unknown = read({"name": "x", "language": "pt_BR", "status": "SOMETHING_NEW"})
    assert (unknown.code, unknown.reason) == (
        "unknown_status",
        "WhatsApp reports it as SOMETHING_NEW, a status Disparo does not know.",
    )


def test_a_rejection_brings_its_reason_and_a_known_reason_is_never_erased(
    client, sender, monkeypatch
):
    assert "rejected_reason" in cloud_api.TEMPLATE_FIELDS.split(",")
    make(client, "refused", [body("Oi {{1}}")], status="REJECTED")
    import_templates(sender.id, None)
    refused = templates_of(sender.id)["refused"]
    assert (refused.status, refused.status_reason) == (TemplateStatus.REJECTED, "INVALID_FORMAT")

    db.session.execute(
        sa.update(MessageTemplate)
        .where(MessageTemplate.id == refused.id)
        .values(status_reason="TAG_CONTENT_MISMATCH")
    )
    db.session.commit()
    from mocks import waba_templates

    original = waba_templates._made_here
    monkeypatch.setattr(  # a listing that carries no reason
        waba_templates,
        "_made_here",
        lambda row: {k: v for k, v in original(row).items() if k != "rejected_reason"},
    )
    assert counts(import_templates(sender.id, None)) == (0, 0, 1, 0)
    assert templates_of(sender.id)["refused"].status_reason == "TAG_CONTENT_MISMATCH"


@pytest.mark.parametrize(
    "raw",
    [
        {"components": [{"type": "BUTTONS", "buttons": 5}]},
        {"components": "BODY"},
        {"components": [{"type": "BODY", "text": 5}]},
        {"components": [{"type": "BUTTONS", "buttons": [{"type": "URL", "text": ["x"]}]}]},
        {"components": [body("Oi")], "quality_score": {"score": ["GREEN"]}},
    ],
)
def test_odd_graph_json_is_a_skip_not_an_error(raw):
    from campaigns.services.template_import import Incoming, read

    template = {"name": "odd", "language": "pt_BR", "status": "APPROVED", "category": "UTILITY"}
    got = read(template | raw)
    if "quality_score" in raw:  # a rating that is not one is no news: imported without
        assert isinstance(got, Incoming) and got.standing.quality is None
    else:
        assert not isinstance(got, Incoming) and got.code == "malformed"


# -- the hourly sync's resilience, and what it repairs


def test_the_sync_logs_any_error_of_one_sender_and_goes_on(client, sender, caplog, monkeypatch):
    other = Sender(
        name="second", provider=Provider.MOCK, phone_number_id="100000000000303", waba_id="3001"
    )
    db.session.add(other)
    db.session.commit()
    make(client, "promo", [body("Oi {{1}}")], waba_id="3001")
    from campaigns.services import template_import

    real = template_import.import_templates

    def broken_for_the_first(sender_id, user_id=None):
        if sender_id == sender.id:
            raise RuntimeError("a bug")
        return real(sender_id, user_id)

    monkeypatch.setattr(template_import, "import_templates", broken_for_the_first)
    with caplog.at_level("ERROR", logger="jobs.tasks"):
        tasks.sync_waba_templates(job_context(), 0)
    assert f"job 4343: sender {sender.id}: template sync failed unexpectedly" in caplog.text
    assert "RuntimeError: a bug" in caplog.text
    assert set(templates_of(other.id)) == {"promo"}


def test_no_transaction_is_open_during_the_listing_and_the_sender_is_checked_again(
    client, sender, monkeypatch
):
    make(client, "promo", [body("Oi {{1}}")])
    seen: list[bool] = []

    def moved_meanwhile():
        seen.append(db.session().in_transaction())
        db.session.execute(
            sa.update(Sender).where(Sender.id == sender.id).values(waba_id="300000000000999")
        )
        db.session.commit()

    listing_then(monkeypatch, moved_meanwhile)
    from campaigns.services import Conflict

    with pytest.raises(Conflict, match="changed while its templates were read"):
        import_templates(sender.id, None)
    assert seen == [False]
    assert templates_of(sender.id) == {}


def test_the_import_locks_only_what_changes_and_lets_campaigns_be_created(
    app, client, sender, monkeypatch
):
    """A campaign being created holds its template's row FOR KEY SHARE (the foreign key):
    an import that changes other templates, or this one, does not wait for it."""
    import threading

    keep = make(client, "keep", [body("Oi {{1}}")])
    moved = make(client, "moved", [body("Oi {{1}}")])
    import_templates(sender.id, None)
    change(client, moved, quality_score="RED")
    change(client, keep, quality_score="YELLOW")
    kept = templates_of(sender.id)["keep"].id
    db.session.commit()
    statements: list[str] = []

    def record(conn, cursor, statement, *args):
        statements.append(statement)

    holder = db.engine.connect()
    transaction = holder.begin()
    holder.execute(
        sa.text("SELECT 1 FROM message_templates WHERE id = :id FOR KEY SHARE"), {"id": kept}
    )
    outcome: list[object] = []

    def run() -> None:
        with app.app_context():
            try:
                outcome.append(counts(import_templates(sender.id, None)))
            except BaseException as error:  # reported below
                outcome.append(error)

    sa.event.listen(db.engine, "before_cursor_execute", record)
    try:
        thread = threading.Thread(target=run)
        thread.start()
        thread.join(10)
        done = not thread.is_alive()
    finally:
        transaction.rollback()
        holder.close()
        thread.join(30)
        sa.event.remove(db.engine, "before_cursor_execute", record)
    assert done, "the import waited for a campaign's KEY SHARE lock"
    assert outcome == [(0, 2, 0, 0)]
    locks = [
        s
        for s in statements
        if s.lstrip().startswith("SELECT") and "FROM message_templates" in s and "FOR " in s
    ]
    assert len(locks) == 1 and "FOR NO KEY UPDATE" in locks[0]


def test_the_sync_stops_campaigns_a_dead_process_left_on_a_stopped_template(
    client, mock_app, owner
):
    from datetime import timedelta

    from campaigns.clock import database_now
    from campaigns.models import CampaignActivity

    campaign = demo_campaign(owner.id)
    schedule_campaign(campaign.id, database_now(db.session) + timedelta(days=1), owner.id)
    # PAUSED committed by a webhook, and the process died before it paused the campaign.
    db.session.execute(
        sa.update(MessageTemplate)
        .where(MessageTemplate.id == campaign.template_id)
        .values(status=TemplateStatus.PAUSED)
    )
    db.session.commit()
    demo = default_sender()
    tasks.sync_waba_templates(job_context(), 0)
    db.session.expire_all()
    paused = db.session.get(Campaign, campaign.id)
    assert paused is not None
    assert (paused.status, paused.status_reason_code) == (
        CampaignStatus.PAUSED,
        reasons.TEMPLATE_PAUSED,
    )

    def entries() -> int:
        return len(
            db.session.scalars(
                sa.select(CampaignActivity).where(CampaignActivity.campaign_id == campaign.id)
            ).all()
        )

    before = entries()
    import_templates(demo.id, None)  # nothing more to do
    assert entries() == before


def test_mock_senders_are_not_synced_where_mocks_are_off(client, sender, mock_app):
    from campaigns.services.template_import import connected_sender_ids

    cloud = Sender(name="cloud", provider=Provider.CLOUD_API, waba_id="4001", access_token="t")
    db.session.add(cloud)
    db.session.commit()
    assert connected_sender_ids() == [sender.id, cloud.id]
    mock_app.config["MOCKS_ENABLED"] = False
    assert connected_sender_ids() == [cloud.id]


# -- rich templates: media and location headers, variables in the header and buttons


def test_rich_templates_are_imported_and_the_operator_gives_their_media(client, sender):
    """A media header, a header variable, a link with its own ending, a call and a
    copy-code button: all imported. Meta keeps only a sample of the media, so the
    template waits for the operator's link or file, which a later listing leaves alone."""
    image = {"type": "HEADER", "format": "IMAGE", "example": {"header_handle": ["4::aW"]}}
    buttons = {
        "type": "BUTTONS",
        "buttons": [
            {"type": "URL", "text": "Ver", "url": "https://a.example/o/{{1}}", "example": ["x"]},
            {"type": "PHONE_NUMBER", "text": "Ligue", "phone_number": "+5511987654321"},
            {"type": "COPY_CODE", "text": "Copiar código", "example": ["SAVE30"]},
        ],
    }
    make(client, "with_image", [image, body("Oi {{1}}"), buttons])
    make(
        client,
        "named_header",
        [
            {"type": "HEADER", "format": "TEXT", "text": "Oi {{first_name}}"},
            body("Tudo bem, {{first_name}}?"),
        ],
        parameter_format="NAMED",
    )
    make(client, "at_the_shop", [{"type": "HEADER", "format": "LOCATION"}, body("Venha!")])

    result = import_templates(sender.id, None)
    assert counts(result) == (3, 0, 0, 0), result.skipped
    found = templates_of(sender.id)
    with_image = found["with_image"]
    assert with_image.header_format == "IMAGE" and with_image.header_media_link is None
    assert with_image.buttons == [
        {"type": "URL", "text": "Ver", "url": "https://a.example/o/{{1}}"},
        {"type": "PHONE_NUMBER", "text": "Ligue", "phone_number": "+5511987654321"},
        {"type": "COPY_CODE", "example": "SAVE30"},
    ]
    assert template_parts.needs_media(with_image)
    assert template_parts.keys(with_image) == ["1", "button.0", "button.2"]
    assert template_parts.keys(found["named_header"]) == ["header.first_name", "first_name"]
    assert template_parts.needs_media(found["at_the_shop"])

    with_image.header_media_link = "https://cdn.example/promo.jpg"
    db.session.commit()
    assert counts(import_templates(sender.id, None)) == (0, 0, 3, 0)
    db.session.expire_all()
    kept = templates_of(sender.id)["with_image"]
    assert kept.header_media_link == "https://cdn.example/promo.jpg"
    assert not template_parts.needs_media(kept)
