from __future__ import annotations

import pytest

from app import db
from campaigns import rendering
from campaigns.clock import database_now
from campaigns.models import (
    Campaign,
    CampaignStatus,
    MessageTemplate,
    Provider,
    Role,
    Sender,
    TemplateCategory,
    TemplateStatus,
)
from campaigns.providers.base import TemplateSubmission
from campaigns.providers.cloud_api import CloudApiProvider
from campaigns.queues import TEMPLATE_SYNC_TASK
from campaigns.services.demo import seed_demo
from campaigns.services.templates import default_sender, submit_template, sync_template_status
from tests.helpers import jobs

VALID = {
    "name": "promo_black_friday",
    "language": "pt_BR",
    "category": "MARKETING",
    "parameter_format": "named",
    "header_text": "Black Friday",
    "body_text": "Oi {{first_name}}, {{discount}} de desconto hoje!",
    "footer_text": "Responda SAIR para sair",
    "buttons": "Quero\nVer ofertas | https://loja.example.com/bf",
}


@pytest.fixture
def sender(app):
    seed_demo()
    return default_sender()


@pytest.fixture
def supervisor(login_as):
    return login_as(Role.SUPERVISOR)


def _template(client, **overrides) -> MessageTemplate:
    response = client.post("/templates/", data=VALID | overrides)
    assert response.status_code == 303, response.get_data(as_text=True)
    template_id = int(response.headers["Location"].rsplit("/", 1)[-1])
    return db.session.get(MessageTemplate, template_id)


def test_create_a_draft_with_buttons(client, sender, supervisor):
    template = _template(client)
    assert template.status is TemplateStatus.DRAFT
    assert template.sender_id == sender.id
    assert template.buttons == [
        {"type": "QUICK_REPLY", "text": "Quero"},
        {"type": "URL", "text": "Ver ofertas", "url": "https://loja.example.com/bf"},
    ]
    page = client.get(f"/templates/{template.id}").get_data(as_text=True)
    assert "Oi Maria, 15% de desconto hoje!" in page
    assert "Submit for review" in page


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("name", "Promo BF", "Use lowercase letters"),
        ("language", "portuguese", "language code"),
        ("category", "SPAM", "Choose one of"),
        ("body_text", "", "The body is required"),
        ("body_text", "x" * 1025, "at most 1024"),
        ("body_text", "Oi {{First}}", "not a valid name"),
        ("header_text", "Oi {{first_name}} {{city}}", "The header takes at most one variable"),
        ("buttons", "Ver | ftp://x", "https://"),
        ("buttons", "Ver | https://x.example/" + "a" * 2000, "at most 2000"),
    ],
)
def test_bad_fields_are_a_422_with_the_message_at_the_field(
    client, sender, supervisor, field, value, message
):
    response = client.post("/templates/", data=VALID | {field: value})
    assert response.status_code == 422
    body = response.get_data(as_text=True)
    assert f'id="{field}-error"' in body
    assert message in body
    # Nothing the user typed is lost.
    assert VALID["footer_text"] in body
    assert db.session.query(MessageTemplate).count() == 3  # the demo ones only


def test_positional_templates_must_number_in_order(client, sender, supervisor):
    data = VALID | {"parameter_format": "positional", "body_text": "Oi {{1}}, pedido {{3}}"}
    response = client.post("/templates/", data=data)
    assert response.status_code == 422
    assert "missing: {{2}}" in response.get_data(as_text=True)


def test_duplicate_name_and_language_in_one_account(client, sender, supervisor):
    _template(client)
    response = client.post("/templates/", data=VALID)
    assert response.status_code == 422
    assert "already has a template" in response.get_data(as_text=True)


def test_live_preview_fragment(client, sender, supervisor):
    response = client.post(
        "/templates/preview",
        data=VALID | {"body_text": "Oi {{first_name}} {{first_name}}"},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert body.lstrip().startswith('<aside id="template-preview"')
    assert 'id="template-preview"' in body
    assert "Oi Maria Maria" in body
    assert "appears more than once" in body
    assert 'hx-trigger="input changed delay:400ms' in body


@pytest.fixture
def parsed_lengths(monkeypatch) -> list[int]:
    """The length of every text the placeholder scanner is given."""
    lengths: list[int] = []
    scan = rendering.placeholders

    def counting(text):
        lengths.append(len(text))
        return scan(text)

    monkeypatch.setattr(rendering, "placeholders", counting)
    return lengths


def test_an_over_length_body_is_refused_at_its_field_and_never_parsed_whole(
    client, sender, supervisor, parsed_lengths
):
    response = client.post("/templates/", data=VALID | {"body_text": "{{" * 10_000})
    assert response.status_code == 422
    body = response.get_data(as_text=True)
    assert 'id="body_text-error"' in body
    assert "at most 1024 characters (20000 now)" in body
    # The form's preview shows what fits; nothing longer reaches the parser.
    assert max(parsed_lengths) <= rendering.BODY_MAX_CHARS


def test_the_live_preview_parses_at_most_the_limit(client, sender, supervisor, parsed_lengths):
    response = client.post(
        "/templates/preview",
        data=VALID | {"body_text": "{{first_name}} " + "{{" * 10_000},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert "at most 1024 characters (20015 now)" in body
    assert "Maria" in body  # what fits is still shown filled in
    assert parsed_lengths and max(parsed_lengths) <= rendering.BODY_MAX_CHARS


def test_the_live_preview_counts_the_body_as_it_will_be_saved(client, sender, supervisor):
    typed = "a" * rendering.BODY_MAX_CHARS + "\n"  # the trailing newline is not stored
    response = client.post(
        "/templates/preview", data=VALID | {"body_text": typed}, headers={"HX-Request": "true"}
    )
    assert "at most 1024 characters" not in response.get_data(as_text=True)
    saved = client.post("/templates/", data=VALID | {"body_text": typed})
    assert saved.status_code in (200, 302, 303)
    assert "at most 1024 characters" not in saved.get_data(as_text=True)


def test_list_filters_and_rows_fragment(client, sender, supervisor):
    _template(client)
    page = client.get("/templates/?status=draft").get_data(as_text=True)
    assert "promo_black_friday" in page and "promo_weekend" not in page
    rows = client.get("/templates/rows?q=black", headers={"HX-Request": "true"})
    body = rows.get_data(as_text=True)
    assert body.lstrip().startswith("<table")
    assert "promo_black_friday" in body and "order_ready" not in body
    assert "No template matches" in client.get("/templates/rows?q=zzz").get_data(as_text=True)
    assert "order_ready" in client.get("/templates/rows?language=pt_BR&category=UTILITY").get_data(
        as_text=True
    )


def test_submit_then_the_mock_approves(app, client, sender, supervisor):
    app.config["MOCK_TEMPLATE_APPROVAL_SECONDS"] = 0
    template = _template(client)
    response = client.post(f"/templates/{template.id}/submit")
    assert response.status_code == 303
    db.session.refresh(template)
    assert template.status is TemplateStatus.PENDING
    assert template.provider_template_id == f"mock-{template.id}"
    [job] = jobs(TEMPLATE_SYNC_TASK)
    assert job["args"] == {"template_id": template.id}
    # Submitting again is refused with the reason.
    client.post(f"/templates/{template.id}/submit")
    assert "Only draft or rejected" in client.get(f"/templates/{template.id}").get_data(
        as_text=True
    )

    sync_template_status(template.id)
    db.session.refresh(template)
    assert template.status is TemplateStatus.APPROVED
    status = client.get(f"/templates/{template.id}/status", headers={"HX-Request": "true"})
    assert status.status_code == 286  # polling stops once the review is over
    assert "hx-trigger" not in status.get_data(as_text=True)


def _sync_due_in() -> float:
    """Seconds until the template-sync job deferred with the submission is due."""
    [job] = jobs(TEMPLATE_SYNC_TASK)
    return (job["scheduled_at"] - database_now(db.session)).total_seconds()


def test_a_cloud_api_template_is_checked_on_metas_time_not_the_mocks(app, sender, monkeypatch):
    app.config["MOCK_TEMPLATE_APPROVAL_SECONDS"] = 600
    cloud = Sender(
        name="Loja (Cloud API)",
        provider=Provider.CLOUD_API,
        phone_number_id="106540352242922",
        waba_id="102290129340398",
        access_token="EAAG-token",
    )
    db.session.add(cloud)
    db.session.flush()
    template = MessageTemplate(
        sender_id=cloud.id,
        name="promo",
        language="pt_BR",
        category=TemplateCategory.MARKETING,
        body_text="Oi!",
        status=TemplateStatus.DRAFT,
    )
    db.session.add(template)
    db.session.commit()
    submitted = TemplateSubmission("1234567890", TemplateStatus.PENDING)
    monkeypatch.setattr(CloudApiProvider, "submit_template", lambda self, t, sample=None: submitted)
    submit_template(template.id)
    assert CloudApiProvider.review_check_seconds - 5 < _sync_due_in() <= 90


def test_a_mock_template_is_checked_just_after_the_mock_decides(app, client, sender, supervisor):
    app.config["MOCK_TEMPLATE_APPROVAL_SECONDS"] = 600
    submit_template(_template(client).id)
    assert 595 < _sync_due_in() <= 601


def test_pending_status_keeps_polling(client, sender, supervisor):
    template = _template(client)
    submit_template(template.id)
    response = client.get(f"/templates/{template.id}/status", headers={"HX-Request": "true"})
    assert response.status_code == 200
    assert 'hx-trigger="every 3s"' in response.get_data(as_text=True)


def test_the_mock_rejects_bodies_with_the_marker(app, client, sender, supervisor):
    template = _template(client, body_text="Oi {{first_name}} REJECT_ME")
    submit_template(template.id)
    sync_template_status(template.id)
    db.session.refresh(template)
    assert template.status is TemplateStatus.REJECTED
    assert "REJECT_ME" in template.status_reason
    assert "REJECT_ME" in client.get(f"/templates/{template.id}").get_data(as_text=True)


def test_editing_an_approved_template_returns_it_to_draft(client, sender, supervisor):
    template = db.session.query(MessageTemplate).filter_by(name="promo_weekend").one()
    response = client.post(f"/templates/{template.id}", data=VALID | {"name": "promo_weekend"})
    assert response.status_code == 303
    db.session.refresh(template)
    assert template.status is TemplateStatus.DRAFT
    assert template.provider_template_id is None


def test_a_template_in_use_by_a_scheduled_campaign_cannot_change(client, sender, supervisor):
    template = db.session.query(MessageTemplate).filter_by(name="promo_weekend").one()
    db.session.add(
        Campaign(
            name="Weekend",
            owner_id=supervisor.id,
            sender_id=sender.id,
            template_id=template.id,
            status=CampaignStatus.SCHEDULED,
        )
    )
    db.session.commit()
    response = client.post(f"/templates/{template.id}", data=VALID | {"name": "promo_weekend"})
    assert response.status_code == 422
    assert "Weekend" in response.get_data(as_text=True)
    db.session.refresh(template)
    assert template.status is TemplateStatus.APPROVED


def test_viewers_read_but_cannot_change_templates(client, sender, login_as):
    login_as(Role.VIEWER)
    assert client.get("/templates/").status_code == 200
    assert client.get("/templates/new").status_code == 403
    assert client.post("/templates/", data=VALID).status_code == 403
    template_id = db.session.query(MessageTemplate.id).first()[0]
    assert client.post(f"/templates/{template_id}/submit").status_code == 403
    assert client.get(f"/templates/{template_id}").status_code == 200


@pytest.mark.parametrize("sender_id", ["abc", "2147483648", "-1"])
def test_a_sender_id_that_is_no_sender_is_a_422_at_the_field(client, sender, supervisor, sender_id):
    # With a second sender, the form lets the user choose (and shows the message there).
    db.session.add(Sender(name="Other", provider=Provider.MOCK, phone_number_id="2"))
    db.session.commit()
    response = client.post("/templates/", data=VALID | {"sender_id": sender_id})
    assert response.status_code == 422
    assert 'id="sender_id-error"' in response.get_data(as_text=True)
