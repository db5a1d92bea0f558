"""Tracked links: a URL button's clicks counted by Disparo itself.

WhatsApp tells a business nothing when a recipient taps a template's URL button (only
Meta's Marketing Messages API reports clicks, in aggregate or without naming the
message). So a campaign may send a link button through Disparo: the template's button
address is ``{APP_BASE_URL}/l/{{1}}``, and the campaign maps that button's variable to a
*tracked link* (``{"track": "https://shop.example/promo"}``) instead of a customer field
or a fixed text. Each send fills the variable with a token naming the campaign, the
message and the button, signed with the app's SECRET_KEY (itsdangerous, Flask's own
signer), so nobody can make one up; ``GET /l/<token>`` counts the recipient's click
(``campaigns/answers.py``) and redirects to the campaign's address. A test send's token
names no message (0): it redirects without counting.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from itsdangerous import BadSignature, URLSafeSerializer

SALT = "disparo.tracked-link"
TRACK = "track"  # the mapping source: {"track": "<https address>"}
PATH = "/l/"  # views/links.py's route


def button_address(app_base_url: str) -> str:
    """What a tracked link's button must lead to in the template."""
    return str(app_base_url).rstrip("/") + PATH + "{{1}}"


def _signer(secret_key: str | bytes) -> URLSafeSerializer:
    return URLSafeSerializer(secret_key, salt=SALT)


def is_tracking_address(url: str) -> bool:
    """Whether a link button's address is a tracked link's (some Disparo's /l/{{1}})."""
    return str(url).endswith(PATH + "{{1}}")


def leads_here(template: Any, key: str, app_base_url: str) -> bool:
    """Whether the variable ``key`` is the ending of a link button leading to this
    Disparo's tracked links (what a campaign may map to a tracked link)."""
    place, _dot, index = key.partition(".")
    buttons = template.buttons or []
    if place != "button" or not index.isdigit() or int(index) >= len(buttons):
        return False
    button = buttons[int(index)]
    return button.get("type") == "URL" and button.get("url") == button_address(app_base_url)


def token(secret_key: str | bytes, campaign_id: int, message_id: int, index: int) -> str:
    return _signer(secret_key).dumps([campaign_id, message_id, index])


def read(secret_key: str | bytes, raw: str) -> tuple[int, int, int] | None:
    """(campaign id, message id, button index) of a token, or None if it is not ours."""
    try:
        value = _signer(secret_key).loads(raw)
    except BadSignature:
        return None
    if (
        isinstance(value, list)
        and len(value) == 3
        and all(isinstance(part, int) and not isinstance(part, bool) for part in value)
    ):
        return value[0], value[1], value[2]
    return None


def tracked(mapping: Mapping[str, Any]) -> dict[int, str]:
    """The button indexes a campaign's mapping tracks, with their addresses."""
    found = {}
    for key, source in mapping.items():
        place, _dot, index = key.partition(".")
        if place == "button" and index.isdigit() and isinstance(source, Mapping):
            if address := source.get(TRACK):
                found[int(index)] = str(address)
    return found


def fill(
    params: Mapping[str, str],
    mapping: Mapping[str, Any],
    secret_key: str | bytes,
    campaign_id: int,
    message_id: int,
) -> dict[str, str]:
    """The message's values with each tracked button's ending replaced by its token."""
    filled = dict(params)
    for index in tracked(mapping):
        filled[f"button.{index}"] = token(secret_key, campaign_id, message_id, index)
    return filled
