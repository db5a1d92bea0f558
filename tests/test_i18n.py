"""The interface's languages: the pt_BR catalogue is complete and compiled, the reader's
language and time zone are chosen as documented, and formats follow the locale."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime
from decimal import Decimal

import flask_babel
import pytest
from babel.messages import checkers
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from flask_babel import force_locale

from app import db
from campaigns import i18n
from campaigns.models import Role, User
from tests.helpers import PASSWORD

ROOT = i18n.TRANSLATIONS.parent
PO = i18n.TRANSLATIONS / "pt_BR" / "LC_MESSAGES" / "messages.po"
MO = PO.with_suffix(".mo")


def extracted_msgids() -> set[tuple[str, str | None]]:
    """What `make messages` extracts from the code now (babel.cfg, the same keywords):
    (msgid, context) pairs."""
    with open(ROOT / "babel.cfg") as cfg:
        method_map, options_map = parse_mapping_cfg(cfg)
    keywords = {**DEFAULT_KEYWORDS, "_l": None, "N_": None, "_lp": ((1, "c"), 2)}
    found = set()
    for _file, _line, message, _comments, context in extract_from_dir(
        str(ROOT), method_map, options_map, keywords=keywords
    ):
        found.add((message if isinstance(message, str) else message[0], context))
    return found


@pytest.fixture(scope="module")
def catalogue():
    with open(PO, "rb") as po:
        return read_po(po, locale="pt_BR")


def test_every_string_in_the_code_has_a_pt_br_translation(catalogue):
    missing = []
    for msgid, context in sorted(extracted_msgids(), key=str):
        message = catalogue.get(msgid, context=context)
        strings = (message.string if message else None) or ""
        forms = strings if isinstance(strings, tuple) else (strings,)
        if message is None or message.fuzzy or not all(forms):
            missing.append(msgid)
    assert not missing, (
        f"{len(missing)} strings have no pt_BR translation: run `make messages` and translate "
        f"them in {PO.relative_to(ROOT)}: {missing[:20]}"
    )


def test_the_catalogue_passes_babels_checks_and_the_mo_is_its_compilation(catalogue):
    problems = []
    for message in catalogue:
        if not message.id:
            continue
        for check in (checkers.python_format,):
            try:
                check(catalogue, message)
            except Exception as error:  # TranslationError: placeholders differ
                problems.append(f"{message.id!r}: {error}")
    assert not problems, problems[:20]
    compiled = io.BytesIO()
    write_mo(compiled, catalogue)
    assert MO.read_bytes() == compiled.getvalue(), "messages.mo is stale: run `make messages`"


def test_placeholders_of_templates_survive_translation(catalogue):
    """Jinja's new-style gettext formats every string with %: a translation must keep the
    msgid's %(name)s placeholders and its literal %% (python_format checks plurals less)."""
    pattern = re.compile(r"%\([a-z_]+\)[sd]|%%")
    wrong = []
    for message in catalogue:
        if not message.id or not message.string:
            continue
        ids = message.id if isinstance(message.id, tuple) else (message.id,)
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        wanted = sorted(set(pattern.findall(ids[-1])))
        for string in strings:
            if sorted(set(pattern.findall(string))) != wanted and len(strings) == 1:
                wrong.append(message.id)
    assert not wrong, wrong[:20]


def sign_in(client, user: User, **headers: str) -> None:
    client.post("/login", data={"email": user.email, "password": PASSWORD}, headers=headers)


def test_the_browser_language_decides_until_the_user_chooses(client, user_factory):
    user = user_factory(Role.VIEWER)
    sign_in(client, user)
    page = client.get("/", headers={"Accept-Language": "pt-BR,pt;q=0.9,en;q=0.5"})
    html = page.get_data(as_text=True)
    assert '<html lang="pt-BR"' in html
    assert "Painel" in html and ">Dashboard<" not in html
    page = client.get("/", headers={"Accept-Language": "en-US,en;q=0.9"})
    assert '<html lang="en"' in page.get_data(as_text=True)
    # Portuguese of Portugal reads Brazilian Portuguese better than English.
    page = client.get("/", headers={"Accept-Language": "pt-PT"})
    assert '<html lang="pt-BR"' in page.get_data(as_text=True)

    response = client.post("/me/preferences", data={"locale": "en", "timezone": "America/Manaus"})
    assert response.status_code in (302, 303)
    db.session.refresh(user)
    assert (user.locale, user.timezone) == ("en", "America/Manaus")
    page = client.get("/", headers={"Accept-Language": "pt-BR"}).get_data(as_text=True)
    assert '<html lang="en"' in page and "America/Manaus" in page

    client.post("/me/preferences", data={"locale": "", "timezone": ""})
    db.session.refresh(user)
    assert (user.locale, user.timezone) == (None, None)


def test_without_a_header_or_a_choice_the_default_locale_applies(app, client, user_factory):
    user = user_factory(Role.VIEWER)
    sign_in(client, user)
    assert '<html lang="en"' in client.get("/").get_data(as_text=True)
    app.config["DEFAULT_LOCALE"] = "pt_BR"
    assert '<html lang="pt-BR"' in client.get("/").get_data(as_text=True)


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"locale": "fr", "timezone": ""}, "locale"),
        ({"locale": "", "timezone": "Mars/Base"}, "timezone"),
        # Files the system's tzdata has but Flask-Babel's pytz refuses on every page.
        ({"locale": "", "timezone": "posix/America/Sao_Paulo"}, "timezone"),
        ({"locale": "", "timezone": "localtime"}, "timezone"),
    ],
)
def test_a_choice_not_offered_is_refused_at_its_field(client, user_factory, form, field):
    user = user_factory(Role.VIEWER)
    sign_in(client, user)
    response = client.post("/me/preferences", data=form)
    assert response.status_code == 422
    assert f'aria-describedby="{field}-error"' in response.get_data(as_text=True)
    db.session.refresh(user)
    assert (user.locale, user.timezone) == (None, None)


def test_the_api_speaks_english_whatever_the_users_language(client, user_factory, token_for):
    headers = token_for(Role.VIEWER)
    user = db.session.scalar(db.select(User).order_by(User.id.desc()))
    user.locale = "pt_BR"
    db.session.commit()
    body = client.get("/api/v1/campaigns/999999", headers=headers).get_json()
    assert body["error"]["code"] == "not_found"
    english = body["error"]["message"]
    translated = client.get(
        "/api/v1/campaigns/999999", headers={**headers, "Accept-Language": "pt-BR"}
    ).get_json()
    assert translated["error"]["code"] == "not_found"  # codes never change
    assert translated["error"]["message"] != english  # the message follows the header


def test_times_are_shown_in_the_users_zone_and_format(app, client, user_factory):
    user = user_factory(Role.VIEWER)
    user.locale, user.timezone = "pt_BR", "America/Rio_Branco"
    db.session.commit()
    with app.test_request_context(), force_locale("pt_BR"):
        from flask_login import login_user

        login_user(user)
        moment = datetime(2026, 12, 4, 17, 30, tzinfo=UTC)
        assert i18n.format_datetime(moment) == "04/12/2026 12:30"  # UTC-5
        assert i18n.input_datetime(moment) == "2026-12-04T12:30"
        assert i18n.format_number(1_000_000) == "1.000.000"
        assert i18n.format_percent(98.5) == "98,5\u00a0%"
        assert i18n.format_money(Decimal("1234.56")) == "R$\u00a01.234,56"


@pytest.mark.parametrize(
    ("typed", "amount"),
    [
        ("1.234,56", "1234.56"),
        ("1234,56", "1234.56"),
        ("1,234.56", "1234.56"),
        ("1234.56", "1234.56"),
        ("R$ 1.234,56", "1234.56"),
        ("150", "150"),
        ("0,5", "0.5"),
        ("1.234", "1234"),
        ("1.234.567,8", "1234567.8"),
    ],
)
def test_amounts_are_read_in_either_convention(typed, amount):
    assert i18n.parse_amount(typed) == Decimal(amount)


@pytest.mark.parametrize("typed", ["", "abc", "1,2,3,4", "12.34.5", "R$", "1e400", "NaN", "--1"])
def test_what_is_not_an_amount_is_refused(typed):
    with pytest.raises(ValueError):
        i18n.parse_amount(typed)


@pytest.mark.parametrize("typed", ["\u0663", "1\u0660\u0660", "\u0967\u0968,50"])
def test_an_amount_has_ascii_digits_only(typed):
    # Decimal() and Babel read Arabic-Indic and Devanagari digits as numbers.
    with pytest.raises(ValueError):
        i18n.parse_amount(typed)


# Every page an operator reaches from the nav, read in Portuguese: no English word left.
PAGES = [
    "/",
    "/campaigns/",
    "/campaigns/new",
    "/campaigns/{campaign}",
    "/templates/",
    "/templates/new",
    "/templates/{template}",
    "/senders/",
    "/senders/new",
    "/senders/{sender}/edit",
    "/suppressions/",
    "/notifications/",
    "/users/",
    "/users/{user}",
    "/users/personal-data",
    "/queue/",
    "/audit/",
    "/me/tokens",
    "/me/preferences",
    "/this-page-does-not-exist",
]


def test_no_english_is_left_on_the_pages_read_in_portuguese(app, client, login_as):
    from tests.helpers import demo_campaign, english_only_words, english_words_in, visible_text

    admin = login_as(Role.ADMIN)
    campaign = demo_campaign(admin.id, size=5, name="Natal")
    template, sender = campaign.template, campaign.sender
    vocabulary = english_only_words()
    left = {}
    client.post("/logout", headers={"Accept-Language": "pt-BR"})
    for url in ("/login", "/login?next=/campaigns/"):
        response = client.get(url, headers={"Accept-Language": "pt-BR"})
        words = english_words_in(visible_text(response.get_data(as_text=True)), vocabulary)
        if words:
            left[url] = sorted(words)
    login_as(Role.ADMIN)  # another admin: the pages name this one
    for path in PAGES:
        url = path.format(
            campaign=campaign.id, template=template.id, sender=sender.id, user=admin.id
        )
        response = client.get(url, headers={"Accept-Language": "pt-BR"})
        assert response.status_code in (200, 404), url
        words = english_words_in(visible_text(response.get_data(as_text=True)), vocabulary)
        if words:
            left[url] = sorted(words)
    assert not left, left


def test_the_cli_speaks_the_shells_language(app, runner, monkeypatch):
    monkeypatch.setenv("LANG", "pt_BR.UTF-8")
    result = runner.invoke(args=["data", "erase", "not a phone"])
    assert result.exit_code != 0
    monkeypatch.setenv("LANG", "en_US.UTF-8")
    flask_babel.refresh()  # a new command is a new process: nothing cached
    english = runner.invoke(args=["data", "erase", "not a phone"])
    assert english.output != result.output and english.exit_code == result.exit_code


def test_a_stored_zone_no_longer_known_falls_back_to_the_default(client, user_factory):
    user = user_factory(Role.VIEWER)
    sign_in(client, user)
    user.timezone = "posix/America/Sao_Paulo"  # stored by an older version, say
    db.session.commit()
    page = client.get("/")
    assert page.status_code == 200 and "America/Sao_Paulo" in page.get_data(as_text=True)


def test_a_language_refused_with_q0_is_not_chosen(client, user_factory):
    user = user_factory(Role.VIEWER)
    sign_in(client, user)
    page = client.get("/", headers={"Accept-Language": "pt;q=0, fr"})
    assert '<html lang="en"' in page.get_data(as_text=True)  # DEFAULT_LOCALE here
