"""The colour scheme: the system's, unless this browser chose light or dark (a cookie)."""

from __future__ import annotations

import re

from campaigns.models import Role


def _html_tag(client) -> str:
    page = client.get("/campaigns/").get_data(as_text=True)
    return re.search(r"<html[^>]*>", page).group(0)


def test_no_choice_leaves_the_scheme_to_the_system(client, login_as):
    login_as(Role.VIEWER)
    assert "data-theme" not in _html_tag(client)
    page = client.get("/").get_data(as_text=True)
    assert 'aria-pressed="true">As my system</button>' in page


def test_a_chosen_scheme_is_remembered_and_auto_forgets_it(client, login_as):
    login_as(Role.VIEWER)
    response = client.post("/theme", data={"theme": "dark", "next": "/campaigns/?page=2"})
    assert response.status_code == 303
    assert response.headers["Location"] == "/campaigns/?page=2"
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("theme=dark;") and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert 'data-theme="dark"' in _html_tag(client)
    assert 'value="dark" class="secondary small" aria-pressed="true"' in client.get("/").get_data(
        as_text=True
    )

    client.post("/theme", data={"theme": "light", "next": "/"})
    assert 'data-theme="light"' in _html_tag(client)

    response = client.post("/theme", data={"theme": "auto", "next": "/"})
    assert "theme=;" in response.headers["Set-Cookie"]  # deleted
    assert "data-theme" not in _html_tag(client)


def test_an_odd_scheme_or_target_is_refused_where_the_user_is(client, login_as):
    login_as(Role.VIEWER)
    response = client.post("/theme", data={"theme": "purple", "next": "/templates/"})
    assert response.status_code == 303 and response.headers["Location"] == "/templates/"
    assert "Set-Cookie" not in response.headers or "theme=" not in response.headers["Set-Cookie"]
    assert "Choose automatic, light or dark colours." in client.get("/templates/").get_data(
        as_text=True
    )
    # An off-site next is not followed; a forged cookie value never reaches the page.
    response = client.post("/theme", data={"theme": "dark", "next": "//evil.example/"})
    assert response.headers["Location"] == "/"
    client.set_cookie("theme", '"><script>alert(1)</script>')
    assert "data-theme" not in _html_tag(client)
    assert client.post("/theme", data={}).status_code == 303


def test_choosing_needs_a_signed_in_user(client):
    response = client.post("/theme", data={"theme": "dark"})
    assert response.status_code == 302 and "/login" in response.headers["Location"]
