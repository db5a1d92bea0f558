"""End to end in a real browser: Playwright drives the system Chromium against a live server."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from campaigns.models import Role
from tests.helpers import PASSWORD, translate_one

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

# Under CI a missing browser is a failure, not a skip.
if CHROMIUM is None and (
    os.environ.get("DISPARO_REQUIRE_BROWSER") or os.environ.get("CI") == "true"
):
    raise RuntimeError(
        "CI (or DISPARO_REQUIRE_BROWSER) needs a browser, but no chromium is installed"
    )

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="no system Chromium (apt-get install chromium)"),
]


@contextmanager
def chromium_page(
    locale: str | None = None, expected_refusals: tuple[str, ...] = (), **context: object
) -> Iterator[object]:
    """A page in Debian's Chromium; ``locale`` sets its language (and Accept-Language),
    ``context`` any other option of Playwright's new_page (viewport, color_scheme…);
    ``expected_refusals``: texts of the CSP refusals a test wants (the policy at work)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = browser.new_page(**({"locale": locale} if locale else {}), **context)
        page.set_default_timeout(15_000)
        # Whatever a test does, the Content-Security-Policy (campaigns/security.py) must
        # refuse nothing the pages use: Chromium reports each refusal on the console.
        refused: list[str] = []
        page.on(
            "console",
            lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None,
        )
        yield page
        browser.close()
        assert [text for text in refused if not any(e in text for e in expected_refusals)] == []


@pytest.fixture
def page() -> Iterator[object]:
    with chromium_page() as opened:
        yield opened


@pytest.fixture
def page_pt_br() -> Iterator[object]:
    """A Brazilian operator's browser: pt-BR first in Accept-Language."""
    with chromium_page("pt-BR") as opened:
        yield opened


def sign_in(page, live_server: str, user) -> None:
    """Sign in through the form, as a person does, and land on the dashboard."""
    page.goto(f"{live_server}/login")
    page.fill("input[name=email]", user.email)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("h1:has-text('Dashboard')")


def fill_campaign_form(page, name: str, coupon: str, audience: int) -> None:
    """The new-campaign form for the demo's promo_weekend, as an operator fills it: SP's
    customers, at most ``audience`` of them, the two fixed values typed."""
    page.fill("input[name=name]", name)
    page.select_option("select[name=template_id]", label="promo_weekend (pt_BR)")
    page.wait_for_selector("select[name='var.first_name.source']")  # htmx swapped the mapping in
    page.select_option("select[name='var.first_name.source']", "field:first_name")
    page.select_option("select[name='var.city.source']", "field:city")
    for variable, text in (("discount", "10%"), ("coupon", coupon)):
        page.select_option(f"select[name='var.{variable}.source']", "text")
        page.fill(f"input[name='var.{variable}.text']", text)
    page.fill("input[name='segment.state']", "SP")
    page.fill("input[name='segment.max_audience']", str(audience))
    page.uncheck("input[name='segment.opted_in_only']")


def test_sign_in_see_the_dashboard_and_sign_out(app, live_server, page, user_factory):
    app.config["WTF_CSRF_ENABLED"] = True  # the real thing, as a browser meets it
    user = user_factory(Role.SUPERVISOR)

    page.goto(f"{live_server}/")
    assert page.url.startswith(f"{live_server}/login")

    page.fill("input[name=email]", user.email)
    page.fill("input[name=password]", "not the password")
    page.click("button[type=submit]")
    page.wait_for_selector("text=Wrong email or password")

    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("h1:has-text('Dashboard')")
    assert page.url == f"{live_server}/"
    assert page.evaluate("window.htmx && window.htmx.version") == "2.0.11"
    assert user.email in page.inner_text("nav")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

    page.click("nav .nav-account summary")  # the account's menu: tokens, preferences, sign out
    page.click("text=Sign out")
    page.wait_for_selector("text=You are signed out.")
    page.goto(f"{live_server}/")
    assert page.url.startswith(f"{live_server}/login")


def test_a_campaign_goes_out_live_on_its_page(app, live_server, page, user_factory, start_worker):
    """Create a campaign in the form, send it now, watch it reach 100 % without reloading."""
    from app import db
    from campaigns.services.demo import seed_demo
    from campaigns.services.templates import default_sender

    app.config["WTF_CSRF_ENABLED"] = True
    seed_demo()
    sender = default_sender()
    sender.min_interval_ms = 200  # a few seconds of live progress, not a minute
    db.session.commit()
    user = user_factory(Role.SUPERVISOR)
    start_worker()
    # The page's timers on a clock the test can run ahead (it flows as usual until then).
    page.clock.install()

    sign_in(page, live_server, user)

    page.goto(f"{live_server}/campaigns/new")
    fill_campaign_form(page, "Browser run", "WEB", 6)
    # The owner's cap and the sender's limits show by the sender, before anything is sent.
    hint = page.inner_text("label:has(select[name=sender_id]) small")
    assert "Your campaigns send at most 100 messages a minute" in hint
    option = page.inner_text("select[name=sender_id] option")
    assert option.endswith(f"({sender.rate_limit_per_minute}/min, at least 200 ms apart)")
    page.click("button:has-text('Save draft')")
    page.wait_for_selector("h1:has-text('Browser run')")
    # One of the six has opted out: the fan-out skips it, and the Errors section must say so.
    from campaigns.models import Campaign
    from campaigns.services.campaigns import dry_run
    from campaigns.services.suppressions import add_suppression

    drafted = db.session.query(Campaign).filter_by(name="Browser run").one()
    add_suppression(dry_run(drafted, app.config, 6)[-1].phone, "asked us to stop", "manual", None)
    page.reload()
    page.wait_for_selector("[id$='-errors']:has-text('No message has failed')")
    page.wait_for_selector("text=No recipients yet: they are loaded when the campaign starts.")
    # The pre-flight check, fetched after the page: an unlimited portfolio, nothing to confirm.
    preflight = "section[id$='-preflight']"
    page.wait_for_selector(f"{preflight}:has-text('Checked at')")
    assert "Nothing stops this campaign" in page.inner_text(preflight)
    assert page.locator("input[name=confirm]").count() == 0
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator(preflight).screenshot(path=str(ARTIFACTS / "campaign-preflight.png"))

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button:has-text('Send now')")
    page.wait_for_selector(".badge-sending")
    assert "Sending started" in page.inner_text("#flashes")  # the action says what it did
    page.evaluate("window.sameDocument = true")  # gone if anything reloads the page
    progress = "section[id$='-progress']"
    assert page.get_attribute(progress, "hx-trigger") == "every 2s"
    # The ETA from the start: from the limits (the sender's rate binds), before any rate.
    page.wait_for_selector("[id$='-pace']:has-text('The ETA is estimated from the limits')")
    assert "limited by the sender's" in page.inner_text("[id$='-pace']")
    assert page.inner_text("[id$='-eta']") not in ("", "—")
    # Still sending, the other sections follow without a reload: the skip, the recipients.
    # (:has-text ignores case, so "Skipped" alone also matches the empty state's "been
    # skipped": wait for that sentence to go, then read the section.)
    page.wait_for_selector("[id$='-errors']:not(:has-text('No message has failed'))")
    assert "No message has failed" not in page.inner_text("[id$='-errors']")
    assert "Skipped" in page.inner_text("[id$='-errors']")
    page.wait_for_selector("[id$='-recipient-count']:has-text('6 recipients')")
    page.wait_for_selector("[id$='-recipient-table'] tbody tr:nth-child(6)")
    assert page.locator(".badge-sending").count() > 0, "too late: the campaign had finished"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "campaign-progress-sending.png"), full_page=True)
    assert page.evaluate("window.sameDocument") is True

    page.wait_for_selector("[id$='-percent']:has-text('100 %')", timeout=60_000)
    # Waits are selectors, not wait_for_function: it polls with eval, which the CSP refuses.
    page.wait_for_selector("section[id$='-progress']:not([hx-trigger])")
    assert page.evaluate("window.sameDocument") is True
    assert page.inner_text("[id$='-status']") == "Completed"  # the badge, out of band
    # Said out loud, from the live region outside the polled section.
    assert page.inner_text("[id$='-announce']") == "Campaign completed"
    assert page.locator("button:has-text('Pause')").count() == 0  # so are the buttons
    # The recipients were drawn before the fan-out; they are fetched again once it is done.
    page.wait_for_selector("[id$='-recipient-table'] tbody tr:nth-child(6)")
    assert "No recipients yet" not in page.inner_text("[id$='-recipients']")

    # Sixteen seconds of the page's time at once: the receipts poll (every 15 s) goes, which
    # shows the pollers ran; no progress poll (every 2 s) may.
    page.evaluate(
        "window.polled = [];"
        " document.body.addEventListener('htmx:beforeRequest',"
        " (event) => window.polled.push(event.detail.requestConfig.path))"
    )
    page.clock.run_for(16_000)
    polled = page.evaluate("window.polled")
    assert [path for path in polled if "/progress" not in path] != []
    assert [path for path in polled if "/progress" in path] == []
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "campaign-progress.png"), full_page=True)


def solid_png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A PNG of one colour: what an operator uploads as the header's image."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


def test_an_image_template_with_a_link_per_customer_is_made_and_sent(
    app, live_server, page, user_factory, start_worker, tmp_path
):
    """A template with an uploaded image header and a link button whose ending is each
    customer's own, made in the form, approved, then sent to a few customers: the mock
    WhatsApp checks every send against the template as Meta would."""
    from app import db
    from campaigns.models import Campaign, MessageTemplate, TemplateStatus
    from campaigns.services.demo import seed_demo
    from mocks.models import MockWhatsAppMedia, MockWhatsAppMessage

    app.config["WTF_CSRF_ENABLED"] = True
    app.config["MOCK_TEMPLATE_APPROVAL_SECONDS"] = 0
    seed_demo()
    user = user_factory(Role.SUPERVISOR)
    # The worker's review check asks the mock too: its approval as immediate as the page's.
    start_worker(env={"MOCK_TEMPLATE_APPROVAL_SECONDS": "0"})
    sign_in(page, live_server, user)

    page.goto(f"{live_server}/templates/new")
    page.fill("input[name=name]", "oferta_com_imagem")
    page.fill("textarea[name=body_text]", "Oi {{first_name}}, a oferta da semana chegou!")
    page.select_option("select[name=header_format]", "IMAGE")
    page.wait_for_selector("#header-fields input[type=file]")  # htmx swapped the fields in
    image = tmp_path / "oferta.png"
    image.write_bytes(solid_png(320, 160, (37, 99, 235)))
    page.set_input_files("#header-fields input[type=file]", str(image))
    page.wait_for_selector("#header-fields input[name=header_media_file_id]", state="attached")
    page.wait_for_selector("#template-preview img.bubble-media")  # the preview has it too
    page.fill(
        "textarea[name=buttons]", "Ver oferta | https://loja.example.com/oferta/{{1}}\nNão quero"
    )
    page.press("textarea[name=buttons]", "Tab")  # left: the preview follows
    page.wait_for_selector("#template-preview .bubble-button:has-text('Ver oferta')")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "template-image-form.png"), full_page=True)
    page.click("button:has-text('Save draft')")
    page.wait_for_selector("h1:has-text('oferta_com_imagem')")
    page.click("button:has-text('Submit for review')")
    page.click("button:has-text('Sync status')")
    page.wait_for_selector(".badge-approved")
    page.screenshot(path=str(ARTIFACTS / "template-image-approved.png"), full_page=True)
    template = db.session.query(MessageTemplate).filter_by(name="oferta_com_imagem").one()
    assert (template.status, template.header_format) == (TemplateStatus.APPROVED, "IMAGE")

    page.goto(f"{live_server}/campaigns/new")
    page.fill("input[name=name]", "Oferta com imagem")
    page.select_option("select[name=template_id]", label="oferta_com_imagem (pt_BR)")
    page.wait_for_selector("select[name='var.button.0.source']")
    page.select_option("select[name='var.first_name.source']", "field:first_name")
    page.select_option("select[name='var.button.0.source']", "field:id")  # the customer's own offer
    page.fill("input[name='segment.state']", "SP")
    page.fill("input[name='segment.max_audience']", "4")
    page.uncheck("input[name='segment.opted_in_only']")
    page.click("button:has-text('Save draft')")
    page.wait_for_selector("h1:has-text('Oferta com imagem')")
    page.wait_for_selector("section[id$='-preflight']:has-text('Checked at')")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button:has-text('Send now')")
    page.wait_for_selector("[id$='-percent']:has-text('100 %')", timeout=60_000)
    page.wait_for_selector("[id$='-status']:has-text('Completed')")
    page.screenshot(path=str(ARTIFACTS / "campaign-image-sent.png"), full_page=True)
    db.session.expire_all()
    campaign = db.session.query(Campaign).filter_by(name="Oferta com imagem").one()
    sent = db.session.query(MockWhatsAppMessage).filter_by(template_name="oferta_com_imagem")
    assert sent.count() == 4, campaign.status_reason
    # The image went up to WhatsApp's Media API once, and every send named its id.
    assert db.session.query(MockWhatsAppMedia).count() == 1


def test_a_csv_audience_is_uploaded_mapped_and_sent(
    app, live_server, page, user_factory, start_worker
):
    """The campaign form's audience from a spreadsheet: upload a CSV (Excel's, in
    Portuguese), see its first rows, pick the phone column, map a variable to a column,
    send, and see it complete, the bad row and the repeat skipped."""
    from app import db
    from campaigns.models import Campaign, Message, MessageStatus
    from campaigns.services.demo import seed_demo
    from mocks.models import MockWhatsAppMessage

    app.config["WTF_CSRF_ENABLED"] = True
    seed_demo()
    user = user_factory(Role.SUPERVISOR)
    start_worker()
    sign_in(page, live_server, user)

    rows = [
        ("11 98765-4301", "Ana", "Campinas", "ANA10"),
        ("(21) 99876-5402", "João", "Niterói", "JOAO5"),
        ("12345", "Zé", "Santos", "ZE1"),  # not a number: skipped
        ("+55 31 98888-7703", "Conceição", "Belo Horizonte", "CON7"),
        ("11987654301", "Ana de novo", "Campinas", "ANA11"),  # a repeat: skipped
        ("(51) 97777-6604", "Luís", "Porto Alegre", "LU3"),
        ("92 99666-5505", "Bia", "Manaus", "BIA2"),
    ]
    text = "Celular;Nome;Cidade;Cupom\r\n" + "".join(";".join(r) + "\r\n" for r in rows)
    page.goto(f"{live_server}/campaigns/new")
    page.fill("input[name=name]", "Planilha de clientes")
    page.select_option("select[name=template_id]", label="promo_weekend (pt_BR)")
    page.wait_for_selector("select[name='var.first_name.source']")
    page.check("#audience-source-csv")
    assert page.is_hidden("input[name='segment.state']")  # the ERP's criteria step aside
    page.set_input_files(
        "#audience-file-input",
        files=[
            {
                "name": "clientes.csv",
                "mimeType": "text/csv",
                "buffer": text.encode("cp1252"),  # as Excel in Portuguese saves it
            }
        ],
    )
    page.wait_for_selector("#audience-preview tbody tr:nth-child(5)")
    facts = page.inner_text("#audience-file-facts")
    assert "clientes.csv" in facts and "7 rows" in facts and "4 columns" in facts
    assert "Conceição" in page.inner_text("#audience-preview")  # Windows-1252, read right
    assert page.locator("#audience-preview tbody tr").count() == 5
    # The mapping redrew with the file's columns; the phone column was guessed.
    page.wait_for_selector(
        "select[name='var.first_name.source'] option[value='field:Nome']", state="attached"
    )
    assert page.input_value("#audience-phone-column") == "Celular"
    # So did the time zone's choice: the file's columns, no longer the ERP's fields.
    page.wait_for_selector("select[name=time_zone_field] option[value='Cidade']", state="attached")
    assert "customer:" not in (page.text_content("#campaign-time-zone") or "")
    page.select_option("#audience-phone-column", "")
    page.select_option("#audience-phone-column", "Celular")  # picked by the operator
    page.select_option("select[name='var.first_name.source']", "field:Nome")
    page.select_option("select[name='var.city.source']", "field:Cidade")
    page.select_option("select[name='var.coupon.source']", "field:Cupom")
    page.select_option("select[name='var.discount.source']", "text")
    page.fill("input[name='var.discount.text']", "15%")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "campaign-csv-audience-form.png"), full_page=True)
    page.click("button:has-text('Save draft')")
    page.wait_for_selector("h1:has-text('Planilha de clientes')")
    assert "the CSV file clientes.csv: 7 rows" in page.inner_text("#campaign-audience-file")
    page.wait_for_selector("section[id$='-preflight']:has-text('Checked at')")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button:has-text('Send now')")
    page.wait_for_selector("[id$='-percent']:has-text('100 %')", timeout=60_000)
    page.wait_for_selector("[id$='-status']:has-text('Completed')")
    page.screenshot(path=str(ARTIFACTS / "campaign-csv-audience-sent.png"), full_page=True)

    db.session.expire_all()
    campaign = db.session.query(Campaign).filter_by(name="Planilha de clientes").one()
    messages = db.session.query(Message).filter_by(campaign_id=campaign.id).all()
    skipped = sorted(m.error_code for m in messages if m.status is MessageStatus.SKIPPED)
    assert skipped == ["duplicate", "invalid_phone"]
    sent = db.session.query(MockWhatsAppMessage).filter_by(template_name="promo_weekend")
    assert sent.count() == 5
    first = next(m for m in messages if m.customer_ref == "2")
    assert first.params == {
        "first_name": "João",
        "discount": "15%",
        "city": "Niterói",
        "coupon": "JOAO5",
    }


def test_a_campaign_over_the_budget_goes_once_its_warning_is_confirmed(
    app, live_server, page, user_factory
):
    """The pre-flight panel tells the waves before anything is sent; Send now without the
    checkbox ticked is refused and says why, ticked it starts."""
    from app import db
    from campaigns.models import Campaign, CampaignStatus
    from campaigns.services.templates import default_sender
    from tests.helpers import demo_campaign, lift_limits

    app.config["WTF_CSRF_ENABLED"] = True
    user = user_factory(Role.SUPERVISOR)
    lift_limits(user)
    sender = default_sender()
    sender.business_id, sender.messaging_limit = "77", 1  # less the margin: no budget
    db.session.commit()
    campaign = demo_campaign(user.id, size=30, name="Over the budget")
    sign_in(page, live_server, user)
    page.goto(f"{live_server}/campaigns/{campaign.id}")
    preflight = "section[id$='-preflight']"
    # Blocked: the reason, and neither Send now nor Schedule can be pressed.
    page.wait_for_selector(f"{preflight}:has-text('cannot be sent or scheduled')")
    assert page.locator("button:has-text('Send now')").is_disabled()
    assert page.locator("button:has-text('Schedule')").is_disabled()
    assert "allows no recipient at all" in page.inner_text("[id$='-gate']")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "campaign-preflight-blocked.png"), full_page=True)

    sender.messaging_limit = 20  # a budget of 18 a day: checked again, it may go, confirmed
    db.session.commit()
    page.fill("input[name=scheduled_at]", "2099-01-01T09:00")
    page.click("button:has-text('Check again')")
    page.wait_for_selector(f"{preflight}:has-text('To confirm before it goes')")
    assert page.locator("button:has-text('Send now')").is_enabled()
    assert page.input_value("input[name=scheduled_at]") == "2099-01-01T09:00"  # kept
    panel = page.inner_text(preflight)
    assert "To confirm before it goes" in panel and "18 today, the remaining 12" in panel
    confirm = page.get_by_label("I have read the warnings and want to go ahead")
    assert confirm.is_visible() and not confirm.is_checked()
    page.screenshot(path=str(ARTIFACTS / "campaign-preflight-confirm.png"), full_page=True)

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button:has-text('Send now')")
    page.wait_for_selector("#flashes .flash-error:has-text('warnings to confirm first')")
    assert db.session.get(Campaign, campaign.id).status is CampaignStatus.DRAFT
    page.wait_for_selector(f"{preflight}:has-text('Checked at')")  # drawn again, checkbox too

    confirm.check()
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button:has-text('Send now')")
    page.wait_for_selector(".badge-sending")
    assert "Sending started" in page.inner_text("#flashes")
    db.session.expire_all()
    assert db.session.get(Campaign, campaign.id).status is CampaignStatus.SENDING


def test_a_cancelled_campaign_shows_what_went_and_what_was_cancelled(
    app, live_server, page, user_factory, start_worker
):
    """Cancel while it sends: the page says what was sent and what was cancelled, never
    "100 % done"; before that, a poll that fails says the figures may be stale, and retries."""
    from campaigns.services.templates import default_sender
    from tests.helpers import demo_campaign

    app.config["WTF_CSRF_ENABLED"] = True
    user = user_factory(Role.SUPERVISOR)
    campaign = demo_campaign(user.id, size=30, name="To be cancelled")
    default_sender().min_interval_ms = 200  # 20/min binds: one message every 3 s
    from app import db

    db.session.commit()
    start_worker()
    sign_in(page, live_server, user)
    page.goto(f"{live_server}/campaigns/{campaign.id}")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button:has-text('Send now')")
    page.wait_for_selector(".badge-sending")
    from playwright.sync_api import expect

    sent_figure = page.locator("section[id$='-progress'] .stats > div:nth-child(3) strong")
    expect(sent_figure).not_to_have_text("0", timeout=30_000)  # one went out

    # The progress poll fails (the network is gone): the figures stay, marked stale...
    note = "section[id$='-progress'] .stale-note"
    page.route("**/progress?*", lambda route: route.abort())
    page.wait_for_selector(note, state="visible")
    assert "Figures may be out of date" in page.inner_text(note)
    page.unroute("**/progress?*")
    # ...until the next poll succeeds, which it retries by itself.
    page.wait_for_selector(note, state="hidden")
    assert page.get_attribute("section[id$='-progress']", "hx-trigger") == "every 2s"

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button:has-text('Cancel campaign')")
    page.wait_for_selector("[id$='-cancelled-summary']")
    flash = page.inner_text("#flashes")
    summary = page.inner_text("[id$='-cancelled-summary']")
    sent, cancelled = (int(n) for n in re.findall(r"(\d+) (?:sent|cancelled)", summary))
    assert summary == f"Cancelled: {sent} sent, {cancelled} cancelled"
    assert f"Cancelled: {sent} sent, {cancelled} cancelled." in flash
    assert sent >= 1 and cancelled >= 1
    percent = page.inner_text("[id$='-percent']")
    assert percent != "100 %" and percent.endswith("%")
    bar = page.locator("[id$='-bar']")
    assert int(bar.get_attribute("value")) < int(bar.get_attribute("max")) == 30
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "campaign-cancelled.png"), full_page=True)


def test_a_question_with_an_apostrophe_is_asked_before_posting(
    app, live_server, page, user_factory
):
    """Quoted into an inline confirm('…'), a translation's apostrophe broke the script and
    the button posted without asking; htmx's hx-confirm asks whatever the text."""
    from campaigns.services.users import create_api_token

    app.config["WTF_CSRF_ENABLED"] = True
    question = "Revoke this token? Scripts using it stop working."
    translated = "Revoke this token? Scripts using it won't work anymore."
    translate_one(app, question, translated)
    user = user_factory(Role.VIEWER)
    create_api_token(user.id, "ERP sync")
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)

    sign_in(page, live_server, user)
    page.goto(f"{live_server}/me/tokens")
    posts.clear()

    asked: list[str] = []

    def dismiss(dialog):
        asked.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", dismiss)
    page.click("button:has-text('Revoke')")
    # A request the page makes after the click is seen after any the click made.
    with page.expect_request(f"{live_server}/healthz"):
        page.evaluate("fetch('/healthz')")
    assert asked == [translated]
    assert posts == []

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button:has-text('Revoke')")
    page.wait_for_selector("text=Token revoked.")
    assert len(posts) == 1 and posts[0].endswith("/revoke")
    assert page.locator("button:has-text('Revoke')").count() == 0
    assert errors == []


def test_notifications_are_marked_read_in_place_and_the_badge_follows(
    app, live_server, page, user_factory
):
    """Mark one, then all, from the dashboard: the list and the nav's badge change in place."""
    from app import db
    from campaigns.models import Notification

    app.config["WTF_CSRF_ENABLED"] = True
    user = user_factory(Role.VIEWER)
    for text in ("Campaign “A” completed.", "Campaign “B” failed.", "Campaign “C” started."):
        db.session.add(
            Notification(user_id=user.id, kind="completed", code="text", params={"text": text})
        )
    db.session.commit()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

    sign_in(page, live_server, user)
    badge = page.locator("nav #nav-unread")
    assert badge.inner_text().split() == ["3", "3", "unread", "notifications"]
    assert page.locator("#dashboard-notifications li.unread").count() == 3
    page.evaluate("window.notReloaded = true")
    errors.clear()  # the login page's missing favicon is not this test's concern
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "notifications-unread.png"), full_page=True)

    page.locator("#dashboard-notifications li.unread button:has-text('Mark as read')").first.click()
    from playwright.sync_api import expect

    expect(page.locator("#dashboard-notifications li.unread")).to_have_count(2)
    assert badge.inner_text().split()[0] == "2"
    assert page.get_by_text("2 unread notifications").count() == 1

    page.click("#dashboard-notifications button:has-text('Mark all as read')")
    page.wait_for_selector("#dashboard-notifications li.unread", state="detached")
    assert badge.is_hidden()
    assert page.locator("#dashboard-notifications button:has-text('Mark all as read')").count() == 0
    assert page.evaluate("window.notReloaded") is True  # swapped in place
    assert page.locator("#nav-unread").count() == 1
    page.screenshot(path=str(ARTIFACTS / "notifications-read.png"), full_page=True)
    page.goto(f"{live_server}/notifications/")
    page.screenshot(path=str(ARTIFACTS / "notifications-page.png"), full_page=True)
    assert errors == []


def test_an_action_that_fails_says_so_where_the_user_is(app, live_server, page, user_factory):
    """A confirmed button whose request fails (the job is gone meanwhile) says why, in place."""
    from app import db
    from tests.helpers import defer_job

    app.config["WTF_CSRF_ENABLED"] = True
    admin = user_factory(Role.ADMIN)
    job_id = defer_job()
    sign_in(page, live_server, admin)
    page.goto(f"{live_server}/admin/queue/?status=todo")
    cancel = page.locator(f"form[action*='/jobs/{job_id}/cancel'] button")
    db.session.execute(db.text("DELETE FROM procrastinate_jobs WHERE id = :id"), {"id": job_id})
    db.session.commit()
    page.on("dialog", lambda dialog: dialog.accept())
    cancel.click()
    page.wait_for_selector("#flashes .flash-error:has-text('There is nothing here.')")
    assert page.url == f"{live_server}/admin/queue/?status=todo"  # the page stays


def test_a_brazilian_operator_meets_no_english_from_sign_in_to_the_csv(
    app, live_server, page_pt_br, user_factory, start_worker
):
    """The main flow in a pt-BR browser: every page it visits, the questions it asks and
    the CSV it exports hold no word that only the English strings use."""
    from app import db
    from campaigns.services.demo import seed_demo
    from campaigns.services.templates import default_sender
    from tests.helpers import english_only_words, english_words_in, visible_text

    page = page_pt_br
    app.config["WTF_CSRF_ENABLED"] = True
    seed_demo()
    sender = default_sender()
    sender.min_interval_ms = 200
    db.session.commit()
    user = user_factory(Role.SUPERVISOR)
    start_worker()
    vocabulary = english_only_words()
    left: dict[str, list[str]] = {}

    def check(where: str, text: str | None = None) -> None:
        words = english_words_in(
            text if text is not None else visible_text(page.content()), vocabulary
        )
        if words:
            left[where] = sorted(words)

    page.goto(f"{live_server}/login")
    check("sign-in")
    page.fill("input[name=email]", user.email)
    page.fill("input[name=password]", PASSWORD)
    page.click("button:has-text('Entrar')")
    page.wait_for_selector("h1:has-text('Painel')")
    assert page.get_attribute("html", "lang") == "pt-BR"
    check("dashboard")

    page.goto(f"{live_server}/campaigns/new")
    check("new campaign")
    fill_campaign_form(page, "Promoção de Natal", "NATAL", 6)
    check("new campaign with its variables")
    page.fill("input[name='segment.min_total_spent']", "1,00")  # typed the Brazilian way
    page.click("button:has-text('Salvar rascunho')")
    page.wait_for_selector("h1:has-text('Promoção de Natal')")
    page.wait_for_selector("[id$='-preflight']:has-text('Verificado às')")  # its check too
    check("draft")

    questions: list[str] = []

    def answer(dialog) -> None:
        questions.append(dialog.message)
        dialog.accept()

    page.once("dialog", answer)
    page.click("button:has-text('Enviar agora')")
    page.wait_for_selector("[id$='-percent']:has-text('100 %')", timeout=60_000)
    page.wait_for_selector("section[id$='-progress']:not([hx-trigger])")
    check("the send-now question", " ".join(questions))
    assert page.inner_text("[id$='-status']") == "Concluída"
    page.wait_for_selector("[id$='-recipient-table'] tbody tr:nth-child(6)")
    page.reload()  # the page as drawn once it is done: activity, errors, receipts
    check("completed campaign")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "campaign-completed-pt-BR.png"), full_page=True)

    with page.expect_download() as download:
        page.click("a:has-text('Excel em português')")
    exported = Path(download.value.path()).read_text(encoding="utf-8-sig")
    header, *rows = exported.splitlines()
    assert len(rows) == 6 and ";" in header and "," not in header
    check("CSV", exported)

    page.goto(f"{live_server}/notifications/")
    check("notifications")
    page.screenshot(path=str(ARTIFACTS / "notifications-pt-BR.png"), full_page=True)
    page.goto(f"{live_server}/templates/")
    check("templates")
    assert not left, left


# axe-core, vendored for the tests only (tests/vendor/README.md): the accessibility check.
AXE = Path(__file__).resolve().parent / "vendor" / "axe-4.14.1.min.js"
WIDTHS = (375, 1280)  # a phone, a laptop


def _main_pages(live_server: str, campaign_id: int, draft_id: int) -> dict[str, str]:
    return {
        "dashboard": "/",
        "campaigns": "/campaigns/",
        "campaign": f"/campaigns/{campaign_id}",
        "campaign-draft": f"/campaigns/{draft_id}",  # its pre-flight panel too
        "templates": "/templates/",
        "senders": "/senders/",
        "users": "/users/",
        "queue": "/admin/queue/",
        "audit": "/audit/",
        "notifications": "/notifications/",
    }


def _overflowing(page) -> list[str]:
    """What sticks out of the viewport sideways (empty when the page has no sideways scroll)."""
    return page.evaluate(
        """() => {
          if (document.documentElement.scrollWidth <= window.innerWidth) return [];
          const out = [];
          for (const element of document.querySelectorAll('body *')) {
            const box = element.getBoundingClientRect();
            if (box.width && box.right > window.innerWidth + 0.5 && element.checkVisibility()) {
              out.push(element.tagName.toLowerCase() + (element.id ? '#' + element.id : '')
                       + (element.className && element.className.baseVal === undefined
                          ? '.' + String(element.className).trim().split(/\\s+/).join('.') : '')
                       + ' right=' + Math.round(box.right));
            }
          }
          return [`scrollWidth ${document.documentElement.scrollWidth} > ${window.innerWidth}`,
                  ...out.slice(0, 8)];
        }"""
    )


def _serious_accessibility_violations(page) -> list[str]:
    """axe-core's serious and critical findings on the page as it is now."""
    if not page.evaluate("typeof window.axe") == "object":
        page.add_script_tag(content=AXE.read_text(encoding="utf-8"))
    found = page.evaluate(
        """async () => {
          const result = await axe.run(document, {resultTypes: ['violations']});
          return result.violations
            .filter(v => v.impact === 'serious' || v.impact === 'critical')
            .map(v => `${v.id} (${v.impact}): ` + v.nodes.slice(0, 5)
                 .map(n => n.target.join(' ') + (n.failureSummary ? ' [' +
                      n.failureSummary.replace(/\\s+/g, ' ').slice(0, 160) + ']' : ''))
                 .join(' | '));
        }"""
    )
    return list(found)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_main_pages_fit_a_phone_and_pass_the_accessibility_check(
    app, live_server, user_factory, start_worker, scheme
):
    """Every main page at 375 px and 1280 px, in the operating system's light and dark
    schemes: no sideways scroll of the page (wide tables scroll in their own box), and
    no serious or critical axe-core finding. Screenshots go to test-artifacts/."""
    from app import db
    from campaigns.models import Campaign, CampaignStatus, Notification
    from campaigns.services.campaigns import send_campaign_now
    from campaigns.services.templates import default_sender
    from tests.helpers import demo_campaign, lift_limits, wait_for

    admin = user_factory(Role.ADMIN)
    lift_limits(admin)
    campaign = demo_campaign(admin.id, size=12, name="Black Friday — São Paulo, long name")
    start_worker()
    send_campaign_now(campaign.id, admin.id)
    wait_for(
        lambda: db.session.get(Campaign, campaign.id).status is CampaignStatus.COMPLETED,
        what="the campaign completed",
    )
    db.session.add(
        Notification(
            user_id=admin.id, kind="completed", code="text", params={"text": "Campaign done."}
        )
    )
    sender = default_sender()
    sender.business_id, sender.messaging_limit = "77", 10  # a warning to confirm on the draft
    db.session.commit()
    draft = demo_campaign(admin.id, size=12, name="Next week's — over the budget")
    ARTIFACTS.mkdir(exist_ok=True)
    problems: dict[str, list[str]] = {}
    suffix = "" if scheme == "light" else "-dark"
    # bypass_csp: axe-core is injected as a script the policy would refuse; the other
    # tests keep the policy on and check that nothing the pages use is refused.
    with chromium_page(color_scheme=scheme, bypass_csp=True) as page:
        sign_in(page, live_server, admin)
        for width in WIDTHS:
            page.set_viewport_size({"width": width, "height": 800})
            for name, path in _main_pages(live_server, campaign.id, draft.id).items():
                page.goto(f"{live_server}{path}")
                page.wait_for_selector("h1")
                if name == "campaign-draft":
                    page.wait_for_selector("[id$='-preflight']:has-text('Checked at')")
                page.screenshot(path=str(ARTIFACTS / f"{name}-{width}{suffix}.png"), full_page=True)
                if overflow := _overflowing(page):
                    problems[f"{name} at {width} px overflows"] = overflow
                if violations := _serious_accessibility_violations(page):
                    problems[f"{name} at {width} px, axe"] = violations
        # On the phone the links fold into "Menu", which opens over the page.
        page.set_viewport_size({"width": 375, "height": 800})
        page.goto(f"{live_server}/campaigns/")
        campaigns_link = page.locator("nav a:has-text('Campaigns')")
        assert campaigns_link.is_hidden()
        page.click("nav summary:has-text('Menu')")
        page.click("nav .nav-account summary")
        assert campaigns_link.is_visible()
        assert page.locator("nav button:has-text('Sign out')").is_visible()
        page.screenshot(path=str(ARTIFACTS / f"menu-375{suffix}.png"), full_page=True)
        if overflow := _overflowing(page):
            problems["the open menu overflows"] = overflow
        if violations := _serious_accessibility_violations(page):
            problems["the open menu, axe"] = violations
        campaigns_link.click()
        page.wait_for_selector("h1:has-text('Campaigns')")
    assert not problems, "\n".join(f"{where}: {what}" for where, what in problems.items())


def test_the_colour_scheme_follows_the_system_until_one_is_chosen(
    app, live_server, page, user_factory
):
    """No choice: no data-theme, so Pico follows the system's scheme. Dark, chosen in the
    account's menu, stays on the next pages; "As my system" gives the choice back."""
    app.config["WTF_CSRF_ENABLED"] = True
    user = user_factory(Role.VIEWER)
    page.emulate_media(color_scheme="light")
    sign_in(page, live_server, user)
    page.goto(f"{live_server}/campaigns/")
    assert page.get_attribute("html", "data-theme") is None
    background = "() => getComputedStyle(document.documentElement).backgroundColor"
    light = page.evaluate(background)
    page.emulate_media(color_scheme="dark")
    assert page.evaluate(background) != light  # the system's dark scheme, followed

    page.emulate_media(color_scheme="light")
    page.click("nav .nav-account summary")
    page.click("nav button:has-text('Dark')")
    page.wait_for_selector("html[data-theme=dark]")
    assert page.url == f"{live_server}/campaigns/"  # back where the reader was
    dark = page.evaluate(background)
    assert dark != light
    page.goto(f"{live_server}/templates/")
    assert page.get_attribute("html", "data-theme") == "dark"
    page.click("nav .nav-account summary")
    assert page.get_attribute("nav button[value=dark]", "aria-pressed") == "true"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "theme-dark-chosen.png"), full_page=True)

    page.click("nav button:has-text('As my system')")
    page.wait_for_selector("html:not([data-theme])")
    assert page.evaluate(background) == light


def test_the_api_reference_draws_under_its_policy_without_signing_in(live_server):
    """/api/docs: the vendored Redoc draws the document under the page's own policy, which
    refuses nothing it needs (chromium_page fails on any other refusal) and refuses the
    one thing that would leave the site: the bundle's credit logo from cdn.redoc.ly."""
    with chromium_page(expected_refusals=("https://cdn.redoc.ly/",)) as page:
        draw_the_api_reference(page, live_server)


def draw_the_api_reference(page, live_server: str) -> None:
    page.goto(f"{live_server}/api/docs")
    page.wait_for_selector("h1:has-text('Disparo API')")
    # Every operation is drawn (in the menu, folded under its tag until opened).
    page.wait_for_selector("text=A campaign's messages", state="attached")
    # Redoc's styles applied (styled-components' <style> elements carry the nonce).
    assert page.evaluate("document.querySelectorAll('style[nonce]').length") > 0
    page.fill("input[placeholder='Search...']", "suppress")  # the search's worker
    page.wait_for_selector("[role=search] >> text=Suppress a number")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "api-docs.png"))
