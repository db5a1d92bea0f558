from __future__ import annotations

import re
from html.parser import HTMLParser

from flask import render_template_string

from app import db
from campaigns import counters
from campaigns.models import CampaignStatus, Role
from campaigns.services.demo import seed_demo
from tests.helpers import demo_campaign, translate_one


class Forms(HTMLParser):
    """Each <form>'s attributes, as a browser decodes them, by action."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.by_action: dict[str, dict[str, str | None]] = {}
        self.onclicks = 0
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.onclicks += "onclick" in attributes
        if tag == "form":
            self.by_action[attributes.get("action") or ""] = attributes


def test_dashboard_shows_what_is_in_the_database(client, login_as):
    login_as(Role.VIEWER)
    seed_demo()
    response = client.get("/")
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert "Approved templates" in body
    assert ">3<" in body  # the three approved demo templates
    assert "No worker is running" in body


def test_base_layout_vendors_htmx_and_pico_and_swaps_422(client, login_as):
    login_as(Role.VIEWER)
    body = client.get("/").get_data(as_text=True)
    assert "/static/vendor/htmx-2.0.11.min.js" in body
    assert "/static/vendor/pico-2.1.1.min.css" in body
    assert '{"code":"422","swap":true}' in body
    assert "https://" not in body  # nothing from a CDN
    static = client.get("/static/vendor/htmx-2.0.11.min.js")
    assert static.status_code == 200
    static.close()


def test_not_found_is_a_friendly_page(client, login_as):
    login_as(Role.VIEWER)
    response = client.get("/no/such/page")
    assert response.status_code == 404
    assert b"There is nothing here" in response.data


def test_api_errors_are_json(client):
    response = client.get("/api/v1/nothing")
    assert response.status_code == 404
    assert response.json["error"]["code"] == "not_found"


def test_seed_demo_runs_once(app):
    first = seed_demo()
    second = seed_demo()
    assert first.created and first.admin_password
    assert not second.created and second.admin_password is None
    from campaigns.models import MessageTemplate, Sender, TemplateStatus, User

    assert db.session.query(User).filter_by(role=Role.ADMIN).count() == 1
    assert db.session.query(Sender).count() == 1
    assert db.session.query(MessageTemplate).filter_by(status=TemplateStatus.APPROVED).count() == 3


def test_a_translated_question_with_an_apostrophe_is_asked_through_hx_confirm(
    app, client, login_as
):
    """Quoted into an inline confirm('…'), the apostrophe ended the string: the script broke
    and the button posted without asking."""
    user = login_as(Role.SUPERVISOR)
    campaign = demo_campaign(user.id)
    question = "Cancel this campaign? Messages not yet sent will not be sent."
    translated = "Cancelar a campanha d'Ouro? O que não saiu não sai mais."
    translate_one(app, question, translated)
    page = client.get(f"/campaigns/{campaign.id}").get_data(as_text=True)
    forms = Forms(page)
    cancel = forms.by_action[f"/campaigns/{campaign.id}/cancel"]
    assert cancel["hx-confirm"] == translated
    assert cancel["hx-post"] == f"/campaigns/{campaign.id}/cancel"
    assert cancel["method"] == "post"  # still posts without htmx
    assert "hx-confirm" not in forms.by_action[f"/campaigns/{campaign.id}/duplicate"]
    assert forms.onclicks == 0 and "confirm(" not in page


def test_post_button_escapes_the_question_into_its_attribute(app):
    question = """Don't "stop" <now> & then"""
    with app.test_request_context("/"):
        html = render_template_string(
            '{% from "_macros.html" import post_button %}'
            '{{ post_button("/stop", "Stop", confirm=question, class="contrast") }}',
            question=question,
        )
    assert 'hx-confirm="Don&#39;t &#34;stop&#34; &lt;now&gt; &amp; then"' in html
    form = Forms(html).by_action["/stop"]
    assert form["hx-confirm"] == question and form["hx-post"] == "/stop"
    assert "onclick" not in html


def test_an_htmx_request_that_fails_answers_with_a_flash_not_a_page(client, login_as):
    """base.html swaps any 4xx/5xx into the flash area: the answer is that flash alone."""
    login_as(Role.ADMIN)
    response = client.post("/admin/queue/jobs/999999/retry", headers={"HX-Request": "true"})
    assert response.status_code == 404
    body = response.get_data(as_text=True)
    assert body.strip() == (
        '<article class="flash flash-error" role="alert">There is nothing here.</article>'
    )
    plain = client.post("/admin/queue/jobs/999999/retry")
    assert plain.status_code == 404 and "<html" in plain.get_data(as_text=True)
    page = client.get("/").get_data(as_text=True)
    assert '"target":"#flashes","swapOverride":"innerHTML"' in page


def test_ids_larger_than_their_column_are_not_found(client, login_as):
    """PostgreSQL refuses such a number as out of range: the route must not match it."""
    login_as(Role.ADMIN)
    seed_demo()
    for path in ("/campaigns/2147483648", "/templates/99999999999999999999/edit"):
        assert client.get(path).status_code == 404
    for path in ("/notifications/9223372036854775808/read", "/admin/queue/jobs/2" + "0" * 19):
        assert client.post(path).status_code == 404
    # Up to the column's own limit, an unknown id is an ordinary 404 too.
    assert client.get("/campaigns/2147483647").status_code == 404
    assert client.post("/notifications/9223372036854775807/read").status_code == 404


def test_query_and_form_bounds_beyond_bigint_mean_the_largest(client, login_as):
    user = login_as(Role.SUPERVISOR)
    seed_demo()
    campaign = demo_campaign(user.id, 5)
    rows = client.get(f"/campaigns/{campaign.id}/recipients/rows", query_string={"after": 10**30})
    assert rows.status_code == 200
    assert client.post("/notifications/read-all", data={"up_to": "9" * 30}).status_code == 303


# -- the campaigns list: figures, and an empty state that says what to do


def test_the_campaigns_list_shows_progress_sent_and_failed(client, login_as):
    user = login_as(Role.SUPERVISOR)
    cancelled = demo_campaign(user.id, name="Cut short")
    draft = demo_campaign(user.id, name="Not yet")
    cancelled.status = CampaignStatus.CANCELLED
    counters.ensure_rows(db.session, cancelled.id)
    counters.apply(
        db.session,
        cancelled.id,
        {"total": 300, "sent": 120, "failed": 5, "skipped": 3, "cancelled": 172},
    )
    db.session.commit()

    body = client.get("/campaigns/").get_data(as_text=True)
    heads = re.findall(r"<th>([^<]*)</th>", body)
    assert heads[:5] == ["Name", "Status", "Progress", "Sent", "Failed"]

    def row(campaign_id: int) -> list[str]:
        found = re.search(rf'<tr id="campaign-{campaign_id}-row">(.*?)</tr>', body, re.S)
        return [
            " ".join(re.sub(r"<[^>]+>", " ", c).split())
            for c in re.findall(r"<td.*?</td>", found.group(1), re.S)
        ]

    # Cancelled: its bar stops at what reached an outcome, not at "100 % done".
    assert row(cancelled.id)[2:5] == ["128 of 300 172 cancelled", "120", "5"]
    assert '<progress value="128" max="300"' in body
    assert row(draft.id)[2:5] == ["—", "0", "0"]
    assert client.get("/campaigns/rows").get_data(as_text=True).count("<progress") == 1


def test_no_campaigns_yet_links_to_creating_one_and_a_search_says_no_match(client, login_as):
    login_as(Role.SUPERVISOR)
    body = client.get("/campaigns/").get_data(as_text=True)
    assert "No campaigns yet." in body and 'href="/campaigns/new"' in body
    body = client.get("/campaigns/rows?q=zzz").get_data(as_text=True)
    assert "No campaign matches." in body and "No campaigns yet." not in body


def test_no_template_yet_links_to_creating_one(client, login_as):
    login_as(Role.SUPERVISOR)
    body = client.get("/templates/").get_data(as_text=True)
    assert "No template yet." in body and 'href="/templates/new"' in body


def test_the_campaign_form_says_what_is_missing(client, login_as):
    login_as(Role.SUPERVISOR)
    body = client.get("/campaigns/new").get_data(as_text=True)
    assert 'id="empty-senders"' in body and "Ask an administrator to add one." in body
    assert 'id="empty-templates"' in body and 'href="/templates/new"' in body
