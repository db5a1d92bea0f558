"""End to end in a real browser: Playwright drives the system Chromium against a live server."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from campaigns.models import Role
from tests.conftest import PASSWORD

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

if CHROMIUM is None and os.environ.get("DISPARO_REQUIRE_BROWSER"):
    raise RuntimeError("DISPARO_REQUIRE_BROWSER is set but no chromium is installed")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="no system Chromium (apt-get install chromium)"),
]


@pytest.fixture
def page() -> Iterator[object]:
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
        page = browser.new_page()
        page.set_default_timeout(15_000)
        yield page
        browser.close()


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

    page.click("text=Sign out")
    page.wait_for_selector("text=You are signed out.")
    page.goto(f"{live_server}/")
    assert page.url.startswith(f"{live_server}/login")
