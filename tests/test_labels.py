"""Words, not codes: every enum value and code a page shows has a translatable label
(campaigns/labels.py), and the numbers on a page are written the reader's way."""

from __future__ import annotations

import re

import pytest
from procrastinate.jobs import Status as JobStatus

from app import db
from campaigns import audit, counters, erp, validation
from campaigns.errors import MESSAGES
from campaigns.labels import ENUM_KINDS, KINDS, audit_value, label, label_for, segment_facts
from campaigns.models import CampaignStatus, Role
from campaigns.providers import errors
from campaigns.queues import KNOWN_QUEUES
from campaigns.services.senders import SECRET_SETTINGS
from campaigns.services.suppressions import SUPPRESSION_SOURCES
from campaigns.services.users import update_user
from campaigns.validation import UserLimits
from tests.helpers import browser, demo_campaign, login

PT_BR = {"Accept-Language": "pt-BR,pt;q=0.9"}


@pytest.mark.parametrize("enum_class", list(ENUM_KINDS), ids=lambda e: e.__name__)
def test_every_member_of_every_enum_shown_has_a_label(enum_class):
    """A member added without a label fails here, rather than shows raw on a page."""
    table = KINDS[ENUM_KINDS[enum_class]]
    for member in enum_class:
        assert member in table, f"{enum_class.__name__}.{member.name} has no label"
        assert label(member) not in ("", member.value), member


@pytest.mark.parametrize(
    ("kind", "codes"),
    [
        ("job_status", [status.value for status in JobStatus]),
        ("audit_action", audit.ACTIONS),
        # Every key audit.record takes (it refuses any other), and the secrets the
        # credentials_* details name.
        ("audit_detail", sorted(audit.DETAIL_KEYS)),
        ("audit_detail", SECRET_SETTINGS),
        ("segment_key", erp.SEGMENT_KEYS),
        ("customer_field", validation.CUSTOMER_FIELDS),
        ("suppression_source", SUPPRESSION_SOURCES),
        # Disparo's own error codes: the explanations keyed by a word, not Meta's number.
        ("error_code", [code for code in errors.EXPLANATIONS if not code.isdigit()]),
    ],
)
def test_every_code_of_each_kind_has_a_label(kind, codes):
    missing = [code for code in codes if code not in KINDS[kind]]
    assert not missing, f"{kind} without a label: {missing}"
    assert all(label_for(kind, code) != code for code in codes)


def test_the_account_healths_and_erasures_details_are_worded_in_portuguese(app):
    with app.test_request_context(headers=PT_BR):
        words = {
            key: label_for("audit_detail", key)
            for key in (
                "messaging_limit",
                "messaging_limit_overridden",
                "business_id",
                "undeliverable_deleted",
            )
        }
    assert words == {
        "messaging_limit": "Limite de mensagens (usuários por dia)",
        "messaging_limit_overridden": "Limite de mensagens definido por um administrador",
        "business_id": "ID do portfólio empresarial",
        "undeliverable_deleted": "Registro de número sem entrega apagado",
    }


def test_labels_are_lazy_so_each_reader_gets_their_language():
    """Made at import, they must not be frozen in the language of whoever imported them."""
    for kind, table in KINDS.items():
        for code, text in table.items():
            assert not isinstance(text, str), (kind, code)
    assert not isinstance(errors.EXPLANATIONS["131026"], str)
    assert not any(isinstance(text, str) for text in MESSAGES.values())


def test_an_unknown_value_is_shown_as_it_is_and_nothing_raises(app):
    assert label("nope", "job_status") == "nope"
    assert label("sending", "no_such_kind") == "sending"
    assert label("sending") == "sending"  # a plain string without a kind: as it is
    assert label(["a", "b"], "role") == "['a', 'b']"  # unhashable, from a JSON column
    assert label({"a": 1}, "audit_action") == "{'a': 1}"
    assert label(None) == "—"
    assert label(True) == "Yes" and label(False) == "No"
    assert label(42, "job_status") == "42"
    assert label(CampaignStatus.SENDING) == "Sending"
    assert label("sending", "campaign_status") == "Sending"
    assert label_for("job_status", "todo") == "To do"


def test_segment_facts_in_words_and_local_formats(app):
    facts = segment_facts(
        {
            "opted_in_only": False,
            "max_audience": 1234,
            "city": "Campinas",
            "tags": ["vip", "promo"],
            "min_total_spent": 1500.5,
            "last_purchase_within_days": 30,
        }
    )
    assert facts == [
        ("City", "Campinas"),
        ("Tags (any of)", "vip, promo"),
        ("Minimum total spent", "R$1,500.50"),
        ("Last purchase", "within the last 30 days"),
        ("At most (pilot wave)", "1,234"),
        ("Only customers who opted in", "No"),
    ]
    # Whatever an old row holds, the page is drawn: unknown keys last, as stored.
    odd = segment_facts(
        {"zeta": {"a": 1}, "min_total_spent": "lots", "max_audience": 10**30, "tags": "x"}
    )
    assert [criterion for criterion, _value in odd] == [
        "Tags (any of)",
        "Minimum total spent",
        "At most (pilot wave)",
        "zeta",
    ]
    assert dict(odd)["Minimum total spent"] == "lots"
    assert segment_facts(None) == [] and segment_facts(["not", "a", "mapping"]) == []


def test_audit_values_in_words(app):
    assert audit_value("supervisor", "role") == "Supervisor"
    assert audit_value("cloud_api", "provider") == "WhatsApp Cloud API"
    assert audit_value("opt_out_reply", "source") == "Replied to opt out"
    assert audit_value(["access_token", "app_secret"], "credentials_replaced") == (
        "Access token, App secret"
    )
    assert audit_value(12000, "numbers") == "12,000"
    assert audit_value(106540352242922, "phone_number_id") == "106540352242922"  # an id
    assert audit_value(True, "opt_out_kept_as_hash") == "Yes"
    assert audit_value(None, "waba_id") == "—"
    assert audit_value({"odd": 1}, "whatever") == "{'odd': 1}"


def _campaign(app, user_factory, status: CampaignStatus, total: int = 0):
    campaign = demo_campaign(user_factory(Role.SUPERVISOR).id, name="Labels")
    campaign.status = status
    campaign.segment = {"state": "SP", "max_audience": 1234, "opted_in_only": True}
    counters.ensure_rows(db.session, campaign.id)
    counters.apply(db.session, campaign.id, {"total": total, "pending": total})
    db.session.commit()
    return campaign


@pytest.mark.parametrize(
    ("status", "word"),
    [(CampaignStatus.SCHEDULED, "Scheduled"), (CampaignStatus.SENDING, "Sending")],
)
def test_pages_show_the_status_word_not_its_value(
    client, app, login_as, user_factory, status, word
):
    campaign = _campaign(app, user_factory, status)
    login_as(Role.VIEWER)
    listing = client.get("/campaigns/").get_data(as_text=True)
    assert f'<span class="badge badge-{status.value}">{word}</span>' in listing
    assert f">{status.value}<" not in listing
    assert f'<option value="{status.value}" >{word}</option>' in listing  # the filter
    page = client.get(f"/campaigns/{campaign.id}").get_data(as_text=True)
    assert f'<small class="badge badge-{status.value}">{word}</small>' in page
    assert f">{status.value}<" not in page
    # The nav names the reader's role by its word.
    assert "· Viewer</li>" in page


def test_the_campaign_page_writes_numbers_the_readers_way(app, user_factory):
    campaign = _campaign(app, user_factory, CampaignStatus.SENDING, total=1234)
    # A client whose requests each have their own context, as under a real server (the
    # locale is cached per context), and a user with no language of their own: the
    # browser's Accept-Language chooses.
    reader = browser(app)
    login(reader, user_factory(Role.VIEWER))
    english = reader.get(f"/campaigns/{campaign.id}").get_data(as_text=True)
    assert "<small>Total</small><strong>1,234</strong>" in english
    assert "0 of 1,234 messages" in english
    assert "At most (pilot wave): 1,234" in english  # the audience in words
    assert "Only customers who opted in: Yes" in english
    assert "<code>max_audience</code>" not in english
    portuguese = reader.get(f"/campaigns/{campaign.id}", headers=PT_BR).get_data(as_text=True)
    assert '<html lang="pt-BR"' in portuguese
    assert "<small>Total</small><strong>1.234</strong>" in portuguese
    assert "1,234" not in portuguese


def test_the_audit_page_shows_actions_and_details_in_words(client, app, login_as, user_factory):
    admin = login_as(Role.ADMIN)
    other = user_factory(Role.VIEWER)
    update_user(other.id, UserLimits(5000, None, Role.SUPERVISOR), admin.id)
    audit.record(db.session, "data.erase", actor=audit.SYSTEM, target_type="phone")
    db.session.commit()
    page = re.sub(r"\s+", " ", client.get("/audit/").get_data(as_text=True))
    assert "Role changed" in page and "Limits changed" in page and "User created" in page
    assert "Role: Viewer → Supervisor" in page
    assert "Campaign messages per minute: 100 → 5,000" in page
    assert "<code>role</code>" not in page
    assert "<td>System</td>" in page and "<td>Phone number</td>" in page  # not system, phone


def test_the_queue_monitor_names_job_statuses(client, app, login_as):
    login_as(Role.ADMIN)
    page = client.get("/admin/queue/").get_data(as_text=True)
    for word in ("To do", "Running", "Succeeded", "Failed", "Cancelled", "Aborted"):
        assert f"<th>{word}</th>" in page
    assert '<option value="todo" >To do</option>' in page
    assert "<th>todo</th>" not in page


def test_error_pages_use_their_own_words_for_any_status(app):
    from campaigns.errors import message_for

    assert message_for(404) == "There is nothing here."
    assert message_for(418) == message_for(400)  # a 4xx with no words of its own
    assert message_for(599) == message_for(500)


def test_every_page_draws_in_portuguese_with_words_in_its_badges(app, user_factory):
    """Each page, read in pt_BR: drawn (no 500 from a format or a label), and no badge
    or select option shows a raw value."""
    campaign = _campaign(app, user_factory, CampaignStatus.SENDING, total=1234)
    admin = user_factory(Role.ADMIN)
    update_user(user_factory(Role.VIEWER).id, UserLimits(5000, None, Role.SUPERVISOR), admin.id)
    reader = browser(app)
    login(reader, admin)
    pages = [
        "/",
        "/campaigns/",
        "/campaigns/new",
        f"/campaigns/{campaign.id}",
        f"/campaigns/{campaign.id}/errors",
        f"/campaigns/{campaign.id}/recipients",
        "/templates/",
        f"/templates/{campaign.template_id}",
        "/templates/new",
        "/senders/",
        "/senders/new",
        f"/senders/{campaign.sender_id}/edit",
        "/suppressions/",
        "/users/",
        f"/users/{admin.id}",
        "/users/personal-data",
        "/me/tokens",
        "/me/preferences",
        "/admin/queue/",
        "/audit/",
        "/notifications/",
    ]
    for url in pages:
        response = reader.get(url, headers=PT_BR)
        assert response.status_code == 200, url
        html = response.get_data(as_text=True)
        for value in re.findall(r'class="badge badge-([a-z_]+)">([^<]*)<', html):
            assert value[0] != value[1], (url, value)
        for value, text in re.findall(r'<option value="([a-z_A-Z]+)"[^>]*>([^<]*)<', html):
            # Queue names are identifiers, shown as code like task names.
            assert value != text.strip() or value in KNOWN_QUEUES, (url, value)


def test_metas_rejection_reasons_are_worded_and_an_unknown_one_shown_as_sent(app):
    from campaigns.labels import label_for

    with app.test_request_context(headers={"Accept-Language": "en"}):
        assert label_for("template_rejection", "INVALID_FORMAT").startswith("The format")
        assert label_for("template_rejection", "SOMETHING_NEW") == "SOMETHING_NEW"
