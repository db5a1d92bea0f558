"""One template name in several languages: each recipient's from a customer field
(campaigns/languages.py, the fan-out's choice, the batch's send, the form, API and CSV)."""

from __future__ import annotations

import csv
import io
import re
from typing import Any

import pytest
import sqlalchemy as sa

from app import db
from campaigns import fanout, languages, providers, pump, queues, sending
from campaigns.models import (
    Campaign,
    Message,
    MessageStatus,
    MessageTemplate,
    Role,
    TemplateCategory,
    TemplateStatus,
)
from campaigns.services.campaigns import duplicate_campaign, send_campaign_now
from campaigns.services.demo import seed_demo
from campaigns.services.users import create_api_token
from mocks import erp as mock_erp
from tests.helpers import FakeProvider, jobs

PROMO_BODY = {
    "en_US": "Hi {{first_name}}! {{discount}} off this weekend in {{city}}. Coupon {{coupon}}.",
    "es": "¡Hola {{first_name}}! {{discount}} de descuento en {{city}}. Cupón {{coupon}}.",
}


def promo() -> MessageTemplate:
    seed_demo()
    return db.session.scalars(
        sa.select(MessageTemplate).filter_by(name="promo_weekend", language="pt_BR")
    ).one()


def version(
    template: MessageTemplate,
    language: str,
    body: str | None = None,
    status: TemplateStatus = TemplateStatus.APPROVED,
) -> MessageTemplate:
    """The template's name in another language on its sender."""
    other = MessageTemplate(
        sender_id=template.sender_id,
        name=template.name,
        language=language,
        category=TemplateCategory.MARKETING,
        parameter_format=template.parameter_format,
        body_text=body or PROMO_BODY.get(language) or template.body_text,
        status=status,
    )
    db.session.add(other)
    db.session.commit()
    return other


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("pt-BR", "pt_BR"),
        ("pt_br", "pt_BR"),
        ("PT", "pt"),
        (" en ", "en"),
        ("es-419", "es_419"),
        ("en_US", "en_US"),
        ("fil", "fil"),
        ("", None),
        ("   ", None),
        (None, None),
        (42, None),
        ("Portuguese", None),
        ("pt-BR-x", None),
        ("p", None),
    ],
)
def test_normalise_reads_a_customer_field_as_metas_code(value, code):
    assert languages.normalise(value) == code


def test_pick_takes_the_exact_language_then_its_base_then_the_default():
    versions: dict[str, Any] = {"pt_BR": "PT_BR", "en_US": "EN_US", "en_GB": "EN_GB", "es": "ES"}
    default: Any = "DEFAULT"
    assert languages.pick(versions, "en-gb", default) == "EN_GB"
    assert languages.pick(versions, "es", default) == "ES"
    # The one version of the same base language.
    assert languages.pick(versions, "pt", default) == "PT_BR"
    assert languages.pick(versions, "pt_PT", default) == "PT_BR"
    assert languages.pick(versions, "es_419", default) == "ES"  # the base itself
    # Two English versions and no plain "en": which one is a guess, so the default.
    assert languages.pick(versions, "en", default) == "DEFAULT"
    assert languages.pick(versions, "en_AU", default) == "DEFAULT"
    assert languages.pick(versions, "fr", default) == "DEFAULT"
    assert languages.pick(versions, "", default) == "DEFAULT"
    assert languages.pick(versions, None, default) == "DEFAULT"
    # Only one Portuguese among two: pt_PT is not "the one" when pt_BR is there too.
    both: dict[str, Any] = {"pt_BR": "PT_BR", "pt_PT": "PT_PT"}
    assert languages.pick(both, "pt_AO", default) == "DEFAULT"


def test_variants_are_the_approved_versions_with_the_same_variables(app):
    template = promo()
    english, spanish = version(template, "en_US"), version(template, "es")
    # Another variable: Meta would refuse the send (132000), so it is not used.
    version(template, "fr", body="Salut {{first_name}}, {{discount}} chez nous !")
    version(template, "de", status=TemplateStatus.PAUSED)  # not approved
    version(template, "it", status=TemplateStatus.PENDING)
    found = languages.variants(template)
    assert found == {"pt_BR": template, "en_US": english, "es": spanish}
    assert languages.also_approved_in(template.id) == ["en_US", "es"]
    assert languages.also_approved_in("nonsense") == []
    # Another name is not a version of this one.
    order = db.session.scalars(sa.select(MessageTemplate).filter_by(name="order_ready")).one()
    assert languages.variants(order) == {"pt_BR": order}


def test_a_version_on_another_sender_of_the_same_account_counts(app):
    template = promo()
    other_sender = type(template.sender)(
        name="Loja Norte",
        provider=template.sender.provider,
        phone_number_id="100000000000002",
        waba_id=template.sender.waba_id,
    )
    db.session.add(other_sender)
    db.session.flush()
    spanish = MessageTemplate(
        sender_id=other_sender.id,
        name=template.name,
        language="es",
        category=TemplateCategory.MARKETING,
        parameter_format=template.parameter_format,
        body_text=PROMO_BODY["es"],
        status=TemplateStatus.APPROVED,
    )
    db.session.add(spanish)
    db.session.commit()
    assert languages.variants(template)["es"] == spanish


class RecordingProvider(FakeProvider):
    """The fake provider, also keeping each call's template (name, language) by phone."""

    def __init__(self) -> None:
        super().__init__()
        self.templates: dict[str, tuple[str, str]] = {}

    def send_template(self, *, to, template, params, callback_data, header_media=None):
        with self._lock:
            self.templates[to] = (template.name, template.language)
        return super().send_template(
            to=to,
            template=template,
            params=params,
            callback_data=callback_data,
            header_media=header_media,
        )


@pytest.fixture
def recording(monkeypatch) -> RecordingProvider:
    provider = RecordingProvider()
    monkeypatch.setattr(providers, "for_sender", lambda sender, config: provider)
    return provider


def _expected(message: Message, by_language: dict[str, MessageTemplate]) -> int | None:
    """The template id the fan-out should give: the customer's version, NULL for pt_BR."""
    chosen = by_language.get(message.customer_data.get("language") or "")
    return chosen.id if chosen is not None and chosen.language != "pt_BR" else None


def test_fan_out_gives_each_message_its_language_version_and_the_batch_sends_it(
    app, campaign, recording
):
    template = campaign.template
    english, spanish = version(template, "en_US"), version(template, "es")
    campaign.language_field = "language"
    db.session.commit()
    send_campaign_now(campaign.id, campaign.owner_id)
    fanout.load_audience(campaign.id, app.config)
    pending = db.session.scalars(
        sa.select(Message)
        .where(Message.campaign_id == campaign.id, Message.status == MessageStatus.PENDING)
        .order_by(Message.id)
    ).all()
    by_language = {"en_US": english, "es": spanish, "pt_BR": template}
    spoken = {m.customer_data.get("language") for m in pending}
    # The mock ERP's customers: mostly pt_BR, some en_US and es, a few without one.
    assert {"pt_BR", "en_US", "es", ""} <= spoken
    assert [m.template_id for m in pending] == [_expected(m, by_language) for m in pending]

    # Spanish paused since the fan-out: its recipients get the campaign's template.
    spanish.status = TemplateStatus.PAUSED
    db.session.commit()
    pump.pump(campaign.id)
    ids = [i for j in jobs(queues.SEND_TASK) for i in j["args"]["message_ids"]]
    report = sending.send_batch(campaign.id, ids, app.config, retry_queue=False)
    assert sorted(report.sent) == sorted(ids)
    sent = {m.phone: m for m in pending if m.id in ids}
    assert set(recording.templates) == set(sent)
    for phone, message in sent.items():
        language = message.customer_data.get("language")
        want = "en_US" if language == "en_US" else "pt_BR"
        assert recording.templates[phone] == ("promo_weekend", want), language


def test_without_a_language_field_everyone_gets_the_campaigns_template(app, campaign):
    version(campaign.template, "en_US")
    send_campaign_now(campaign.id, campaign.owner_id)
    fanout.load_audience(campaign.id, app.config)
    assert (
        db.session.scalar(
            sa.select(sa.func.count()).where(
                Message.campaign_id == campaign.id, Message.template_id.is_not(None)
            )
        )
        == 0
    )


def test_the_mock_erp_gives_each_customer_a_language():
    found = {mock_erp.customer(n)["language"] for n in range(1, 400)}
    assert found == {"pt_BR", "en_US", "es", ""}


@pytest.fixture
def headers(app, user_factory):
    seed_demo()
    _token, raw = create_api_token(user_factory(Role.SUPERVISOR).id)
    return {"Authorization": f"Bearer {raw}"}


def payload(template: MessageTemplate, **changes: Any) -> dict[str, Any]:
    return {
        "name": "Promo in every language",
        "sender_id": template.sender_id,
        "template_id": template.id,
        "segment": {"state": "SP", "max_audience": 10},
        "variables": {
            "first_name": {"field": "first_name"},
            "discount": {"text": "10%"},
            "city": {"field": "city"},
            "coupon": {"text": "X1"},
        },
    } | changes


def test_the_api_takes_and_shows_the_language_field(client, headers):
    template = promo()
    created = client.post(
        "/api/v1/campaigns", json=payload(template, language_field="language"), headers=headers
    )
    assert created.status_code == 201, created.json
    assert created.json["language_field"] == "language"
    url = f"/api/v1/campaigns/{created.json['id']}"
    assert client.get(url, headers=headers).json["language_field"] == "language"
    # A change that does not name it keeps it; null clears it.
    renamed = client.patch(url, json={"name": "Renamed"}, headers=headers)
    assert renamed.json["language_field"] == "language"
    copy = duplicate_campaign(created.json["id"], template.created_by_id or 1)
    assert copy.language_field == "language"
    cleared = client.patch(url, json={"language_field": None}, headers=headers)
    assert cleared.status_code == 200 and cleared.json["language_field"] is None
    plain = client.post("/api/v1/campaigns", json=payload(template), headers=headers)
    assert plain.status_code == 201 and plain.json["language_field"] is None


@pytest.mark.parametrize("value", ["shoe_size", 5, ["language"], {"field": "language"}, True])
def test_the_api_refuses_an_unknown_language_field_at_its_field(client, headers, value):
    response = client.post(
        "/api/v1/campaigns", json=payload(promo(), language_field=value), headers=headers
    )
    assert response.status_code == 422
    assert "language_field" in response.json["error"]["fields"]


def test_the_form_offers_the_field_and_shows_the_other_languages(client, login_as):
    template = promo()
    version(template, "en_US")
    version(template, "es")
    login_as(Role.SUPERVISOR)
    form = client.get("/campaigns/new").get_data(as_text=True)
    assert 'name="language_field"' in form
    assert "— the template's language for everyone —" in form
    fragment = client.post(
        "/campaigns/languages",
        data={"template_id": str(template.id), "language_field": "language"},
        headers={"HX-Request": "true"},
    ).get_data(as_text=True)
    assert 'id="campaign-languages"' in fragment
    assert "Also approved in: en_US, es" in fragment
    assert '<option value="language" selected>' in fragment
    data = {
        "name": "Promo",
        "sender_id": str(template.sender_id),
        "template_id": str(template.id),
        "segment.state": "SP",
        "var.first_name.source": "first_name",
        "var.discount.source": "text",
        "var.discount.text": "10%",
        "var.city.source": "city",
        "var.coupon.source": "text",
        "var.coupon.text": "X1",
        "language_field": "language",
    }
    saved = client.post("/campaigns/", data=data)
    assert saved.status_code == 303, saved.get_data(as_text=True)
    campaign = db.session.scalars(sa.select(Campaign).filter_by(name="Promo")).one()
    assert campaign.language_field == "language"
    page = client.get(f"/campaigns/{campaign.id}").get_data(as_text=True)
    assert "Languages: en_US, es, pt_BR" in page
    refused = client.post("/campaigns/", data=data | {"language_field": "shoe_size"})
    assert refused.status_code == 422
    assert 'aria-describedby="language_field-error"' in refused.get_data(as_text=True)


def test_recipients_show_the_language_they_get(client, campaign, login_as):
    english = version(campaign.template, "en_US")
    for ref, template_id in (("C1", english.id), ("C2", None)):
        db.session.add(
            Message(
                campaign_id=campaign.id,
                customer_ref=ref,
                phone=f"+5511900000{ref[-1]}",
                customer_data={"name": ref},
                template_id=template_id,
            )
        )
    db.session.commit()
    login_as(Role.VIEWER)
    table = client.get(f"/campaigns/{campaign.id}/recipients").get_data(as_text=True)
    assert ">Language</th>" in table
    cells = re.sub(r"\s+", " ", table)
    assert "<td>+55119000001</td> <td>en_US</td>" in cells
    assert "<td>+55119000002</td> <td>pt_BR</td>" in cells
    body = client.get(f"/campaigns/{campaign.id}/recipients.csv").get_data().decode("utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(body)))
    assert [(r["Customer ref"], r["Language"]) for r in rows] == [("C1", "en_US"), ("C2", "pt_BR")]
