"""What Disparo says happened is stored as a code and its parameters (campaigns/reasons.py)
and worded when shown: in the reader's language on the pages, in the owner's in the
notification webhook, in English (with the code) in the JSON API."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient
from flask_babel import force_locale

from app import db
from campaigns import campaign_states, notifications, reasons
from campaigns.models import (
    Campaign,
    CampaignActivity,
    CampaignStatus,
    Notification,
    Role,
    Suppression,
)
from campaigns.providers.errors import ErrorKind
from campaigns.reasons import Reason, Wording
from campaigns.services.users import create_api_token
from tests.helpers import demo_campaign, login, post_webhook, reply_webhook

PLACEHOLDER = re.compile(r"%\((\w+)\)s")
BIG = 1234567
AT = "2026-12-05T13:00:00+00:00"


def read(client: FlaskClient, url: str, language: str | None = None) -> str:
    """A page (or an htmx fragment) as a browser in ``language`` reads it."""
    headers = {"HX-Request": "true"} | ({"Accept-Language": language} if language else {})
    response = client.get(url, headers=headers)
    assert response.status_code == 200, response.status_code
    return response.get_data(as_text=True)


def sample_params(code: str) -> dict[str, Any]:
    """A value for every placeholder of the code's English: a count over a thousand, an
    ISO time, a nested reason, or a word."""
    wording = reasons.WORDINGS[code]
    params: dict[str, Any] = {}
    with force_locale("en"):
        english = str(wording.text)
    for name in PLACEHOLDER.findall(english):
        if name in wording.numbers:
            params[name] = BIG
        elif name in wording.datetimes:
            params[name] = AT
        elif name in wording.nested:
            params[name] = {
                "code": reasons.FAILURE_RATE,
                "params": {"failed": 1500, "n": 2000, "pct": 50},
            }
        else:
            params[name] = f"<{name}>"
    return params


@pytest.mark.parametrize("code", sorted(reasons.WORDINGS))
def test_every_code_renders_in_english_and_portuguese(app, code):
    params = sample_params(code)
    for locale, big in (("en", "1,234,567"), ("pt_BR", "1.234.567")):
        with force_locale(locale):
            text = reasons.render(code, params)
        assert text and reasons.MISSING not in text and "%(" not in text, (locale, text)
        for name, value in params.items():
            if name in reasons.WORDINGS[code].numbers:
                assert big in text, (locale, text)
            elif isinstance(value, str) and value != AT:
                assert value in text, (locale, text)
        if reasons.WORDINGS[code].nested:
            assert ("1,500" if locale == "en" else "1.500") in text
        if reasons.WORDINGS[code].datetimes:
            assert AT not in text  # the reader's format, not the stored ISO text


def test_every_action_is_said_of_who_did_it(app):
    for action, label in reasons.ACTIONS.items():
        for locale in ("en", "pt_BR"):
            with force_locale(locale):
                text = reasons.action_text(action, "ana@example.com")
                system = reasons.action_text(action, None)
            assert text and "%(" not in text and text != action, (action, text)
            with force_locale("en"):
                english = str(label)
            if "%(who)s" in english:
                assert "ana@example.com" in text and "Disparo" in system, (action, text)
    assert reasons.action_text("paused", "ana@example.com") == "ana@example.com paused the campaign"
    assert reasons.action_text("started", None) == "Disparo started sending"


def test_what_cannot_be_worded_falls_back_without_raising(app, monkeypatch):
    assert "no_such_code" in reasons.render("no_such_code", {"x": 1})
    assert reasons.render(None) == "" and reasons.render_or_none("") is None
    # A parameter missing, of another type, or no parameters at all: still words.
    assert reasons.render(reasons.FAILURE_RATE, {"failed": 3}) == (
        "Paused: 3 of the last ? messages failed, more than ? % allowed."
    )
    assert "abc" in reasons.render(reasons.FAILURE_RATE, {"failed": "abc", "n": 1, "pct": 2})
    assert "?" in reasons.render(reasons.FAILURE_RATE, ["not", "a", "mapping"])  # type: ignore[arg-type]
    no_code = reasons.render(reasons.WHATSAPP_STOP, {"code": None, "message": "x"})
    assert no_code == "Paused by WhatsApp's answer —: x"
    # A nested reason of an unknown code, or nested too deep.
    nested = reasons.render(
        reasons.CAMPAIGN_PAUSED, {"name": "N", "reason": {"code": "gone", "params": {}}}
    )
    assert nested.startswith("Campaign “N” was paused: ") and "gone" in nested
    deep: dict[str, Any] = {"code": reasons.TEXT, "params": {"text": "bottom"}}
    for _ in range(10):
        deep = {"code": reasons.CAMPAIGN_FAILED, "params": {"name": "N", "reason": deep}}
    assert "Campaign “N” failed" in reasons.render(deep["code"], deep["params"])
    # Words kept as they came are shown as they are, in any language.
    assert reasons.render(reasons.TEXT, {"text": "100 % <b>"}) == "100 % <b>"
    with force_locale("pt_BR"):
        assert reasons.render(reasons.TEXT, {"text": "as it was"}) == "as it was"
    # A translation that breaks its placeholders: the fallback, not a 500.
    monkeypatch.setitem(reasons.WORDINGS, reasons.SENT_NOW, Wording("%(n)d sent"))  # type: ignore[arg-type]
    assert reasons.SENT_NOW in reasons.render(reasons.SENT_NOW, {"n": "many"})
    assert reasons.action_text("no_such_action", None) == "Disparo: no_such_action"


def test_a_code_is_no_wider_than_its_columns():
    for code in [*reasons.WORDINGS, reasons.TEXT]:
        assert len(code) <= reasons.CODE_WIDTH
    with pytest.raises(ValueError):
        Reason("x" * (reasons.CODE_WIDTH + 1))


# -- stored as a code, shown in the reader's language


@pytest.fixture
def paused(app, user_factory, monkeypatch) -> Campaign:
    """A sending campaign auto-paused on 1,500 failures of the last 2,000 messages."""
    owner = user_factory(Role.SUPERVISOR)
    campaign = demo_campaign(owner.id)
    campaign.status = CampaignStatus.SENDING
    db.session.commit()
    monkeypatch.setattr(campaign_states.counters, "recent_outcomes", lambda *_: (500, 1500))
    campaign_states.pause_if_failing(campaign.id, app.config)
    db.session.commit()
    return db.session.get(Campaign, campaign.id)


def test_an_auto_pause_is_stored_as_a_code_and_shown_in_the_readers_language(
    client, login_as, paused
):
    assert paused.status is CampaignStatus.PAUSED
    assert (paused.status_reason_code, paused.status_reason_params) == (
        "failure_rate",
        {"failed": 1500, "n": 2000, "pct": 50},
    )
    activity = db.session.scalars(
        sa.select(CampaignActivity).filter_by(campaign_id=paused.id, action="paused")
    ).one()
    assert (activity.user_id, activity.detail_code) == (None, "failure_rate")

    login_as(Role.VIEWER)
    english = "Paused: 1,500 of the last 2,000 messages failed, more than 50 % allowed."
    page = read(client, f"/campaigns/{paused.id}")
    assert english in page
    assert f'Disparo paused the campaign <small class="muted">({english})</small>' in page
    # In Portuguese: Portuguese numbers (and words, once the catalogue has them).
    for url in (f"/campaigns/{paused.id}", "/campaigns/"):
        page = read(client, url, "pt-BR")
        assert "1.500" in page and "2.000" in page and "1,500" not in page, url


def test_a_whatsapp_stop_keeps_whatsapps_words_as_a_parameter(app, user_factory):
    campaign = demo_campaign(user_factory(Role.SUPERVISOR).id)
    campaign.status = CampaignStatus.SENDING
    db.session.commit()
    campaign_states.stop_for_code(
        campaign.id, 131048, "Spam rate limit hit", ErrorKind.PAUSE_CAMPAIGN
    )
    db.session.refresh(campaign)
    assert (campaign.status_reason_code, campaign.status_reason_params) == (
        "whatsapp_stop",
        {"code": 131048, "message": "Spam rate limit hit"},
    )
    assert campaign.status_reason == "Paused by WhatsApp's answer 131048: Spam rate limit hit"


class Posted:
    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []

    def __call__(self, url: str, data: bytes, headers: dict, timeout: object) -> Posted:
        self.payloads.append(json.loads(data))
        return self

    def raise_for_status(self) -> None:
        return None


def test_a_notification_is_worded_for_its_reader_and_its_webhook_for_the_owner(
    app, client, paused, monkeypatch, user_factory
):
    posted = Posted()
    monkeypatch.setattr(notifications.requests, "post", posted)
    app.config.update(NOTIFICATION_WEBHOOK_URL="http://receiver.invalid/hook", DEFAULT_LOCALE="en")
    owner = paused.owner
    owner.locale = "pt_BR"
    db.session.commit()
    notifications.deliver(paused.id, "auto_paused", first_attempt=True)

    notice = db.session.scalars(sa.select(Notification).filter_by(campaign_id=paused.id)).one()
    assert (notice.kind, notice.code) == ("auto_paused", "campaign_paused")
    assert notice.params == {
        "name": paused.name,
        "reason": {"code": "failure_rate", "params": {"failed": 1500, "n": 2000, "pct": 50}},
    }
    # The webhook speaks the owner's language (not DEFAULT_LOCALE's), with the code.
    (payload,) = posted.payloads
    assert payload["code"] == "campaign_paused"
    assert "1.500" in payload["text"] and "2.000" in payload["text"]
    assert paused.name in payload["text"] and "1,500" not in payload["text"]

    # On a page, each reader's own language: the owner's Portuguese, whatever the browser,
    login(client, owner)
    page = read(client, "/notifications/", "en")
    assert paused.name in page and "1.500" in page and "1,500" not in page
    # and an admin's English (they see everyone's notifications on the dashboard).
    client.post("/logout")
    login(client, user_factory(Role.ADMIN))
    page = read(client, "/dashboard/notifications", "en")
    assert (
        f"Campaign “{paused.name}” was paused: Paused: 1,500 of the last 2,000 messages failed,"
        " more than 50 % allowed." in page
    )


def test_the_api_gives_english_and_the_code_whatever_the_readers_language(
    app, client, paused, user_factory
):
    app.config["DEFAULT_LOCALE"] = "pt_BR"
    reader = user_factory(Role.VIEWER)
    reader.locale = "pt_BR"
    db.session.commit()
    _token, raw = create_api_token(reader.id)
    headers = {"Authorization": f"Bearer {raw}", "Accept-Language": "pt-BR"}
    english = "Paused: 1,500 of the last 2,000 messages failed, more than 50 % allowed."
    campaign = client.get(f"/api/v1/campaigns/{paused.id}", headers=headers).json
    assert (campaign["status_reason"], campaign["status_reason_code"]) == (english, "failure_rate")
    progress = client.get(f"/api/v1/campaigns/{paused.id}/progress", headers=headers).json
    assert (progress["status_reason"], progress["status_reason_code"]) == (english, "failure_rate")
    listed = client.get("/api/v1/campaigns", headers=headers).json["campaigns"]
    assert [(c["status_reason"], c["status_reason_code"]) for c in listed] == [
        (english, "failure_rate")
    ]
    # No reason: both null.
    paused.set_status_reason(None)
    db.session.commit()
    campaign = client.get(f"/api/v1/campaigns/{paused.id}", headers=headers).json
    assert (campaign["status_reason"], campaign["status_reason_code"]) == (None, None)


def test_activity_details_are_codes_worded_on_the_page(app, client, login_as):
    from campaigns.services.campaigns import duplicate_campaign

    user = login_as(Role.SUPERVISOR)
    source = demo_campaign(user.id)
    copy = duplicate_campaign(source.id, user.id)
    details = db.session.execute(
        sa.select(CampaignActivity.detail_code, CampaignActivity.detail_params)
        .where(CampaignActivity.campaign_id == copy.id)
        .order_by(CampaignActivity.id)
    ).all()
    assert [tuple(row) for row in details] == [("duplicated_from", {"id": source.id})]
    page = read(client, f"/campaigns/{copy.id}")
    assert f"{user.email} created the campaign" in page
    assert f"(duplicated from #{source.id})" in page


# -- opt-outs keep people's words, not Disparo's


def test_an_opt_out_reply_keeps_the_customers_words(app, client, login_as, campaign):
    assert post_webhook(client, reply_webhook("PARE")).json["opt_outs"] == 1
    suppression = db.session.scalars(sa.select(Suppression)).one()
    assert (suppression.reason, suppression.source) == ("PARE", "opt_out_reply")
    login_as(Role.VIEWER)
    page = read(client, "/suppressions/")
    assert "“PARE”" in page and "Replied to opt out" in page  # the source's label


def test_an_erp_failure_is_stored_as_codes_and_worded_for_each_reader(
    app, client, login_as, monkeypatch
):
    """What the ERP did wrong is a code inside the campaign's failure: a Portuguese reader
    reads it all in Portuguese, the API in English, whoever's worker failed it."""
    from campaigns import erp, fanout
    from jobs import tasks

    supervisor = login_as(Role.SUPERVISOR)
    campaign = demo_campaign(supervisor.id)
    campaign.status = CampaignStatus.SENDING
    db.session.commit()

    def refused(*args, **kwargs):
        raise erp.ErpError(reasons.Reason(reasons.ERP_REFUSED, {"status": 422}), status=422)

    monkeypatch.setattr(fanout, "load_audience", refused)

    class Context:
        class job:  # the shape of Procrastinate's JobContext.job
            id, attempts = 1, 0

    with force_locale("pt_BR"):  # a worker started in Portuguese stores no Portuguese
        tasks.fan_out(Context, campaign.id)
    db.session.refresh(campaign)
    assert campaign.status is CampaignStatus.FAILED
    assert campaign.status_reason_params == {
        "message": {"code": "erp_refused", "params": {"status": 422}}
    }
    english = "The ERP could not give the audience: The ERP refused the request (422)."
    assert reasons.render_english(campaign.status_reason_code, campaign.status_reason_params) == (
        english
    )
    page = read(client, f"/campaigns/{campaign.id}", "pt-BR")
    assert "O ERP não conseguiu fornecer o público" in page and "(422)" in page
    assert "refused the request" not in page
