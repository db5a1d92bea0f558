"""A template's header and buttons: the variables each takes, and what a send carries.

Meta's template has a header (text with at most one variable, an image, a video, a
document or a location), a body, a footer and buttons. The body's variables are
``rendering``'s; this module adds the others, each under a key of its own in the
campaign's variable mapping, so one mapping fills them all:

- ``header.<name>``: the text header's variable (``header.1`` in a positional template);
- ``button.<i>``: the dynamic suffix of URL button *i* (its address ends in ``{{1}}``),
  or the coupon of copy-code button *i*;
- ``payload.<i>``: the payload quick-reply button *i* sends back when tapped. Optional:
  WhatsApp sends the button's text when no payload was given.

A media header shows the template's own media: a public link Meta fetches, or a file
uploaded to Disparo that the batch sends by the media id WhatsApp's Media API gave it
(``campaigns/media.py``). A location header shows the template's location.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from campaigns import rendering
from campaigns.i18n import _
from campaigns.models import HeaderFormat, MessageTemplate, ParameterFormat

# A URL button's one variable is its address's end (Meta's rule).
DYNAMIC_URL = re.compile(r"\{\{\s*1\s*\}\}$")
COUPON_MAX_CHARS = 15  # Meta's limit on a copy-code button's code


# What a media or location header shows: given in Disparo, not reviewed by Meta (which
# keeps only a sample of the media): changing it keeps the template's approval, and a
# listing from WhatsApp leaves it as it is unless the header's kind changed.
SHOWN_IN_HEADER = ("header_media_link", "header_media_file_id", "header_location")
LOCATION_KEYS = ("latitude", "longitude", "name", "address")


is_optional = rendering.is_optional


@dataclass(frozen=True)
class Variable:
    """One value a send needs besides the recipient: its mapping key, where it goes."""

    key: str
    place: str  # body, header, button (URL suffix or coupon), payload (quick reply)

    @property
    def required(self) -> bool:
        return not is_optional(self.key)


def header_format(template: MessageTemplate) -> HeaderFormat | None:
    return HeaderFormat(template.header_format) if template.header_format else None


def header_variable(template: MessageTemplate) -> str | None:
    """The text header's variable (its name, or "1"), if it has one."""
    if header_format(template) is not HeaderFormat.TEXT:
        return None
    names = rendering.variables(template.header_text, template.parameter_format)
    return names[0] if names else None


def is_dynamic_url(button: Mapping[str, Any]) -> bool:
    return button.get("type") == "URL" and bool(DYNAMIC_URL.search(str(button.get("url", ""))))


def button_key(index: int, button: Mapping[str, Any]) -> Variable | None:
    """The variable button ``index`` takes, if any."""
    if is_dynamic_url(button) or button.get("type") == "COPY_CODE":
        return Variable(f"button.{index}", "button")
    if button.get("type") == "QUICK_REPLY":
        return Variable(f"payload.{index}", "payload")
    return None


def variables(template: MessageTemplate) -> list[Variable]:
    """Every variable a send of the template fills: header, body, then buttons in order."""
    found: list[Variable] = []
    if name := header_variable(template):
        found.append(Variable(f"header.{name}", "header"))
    found += [
        Variable(name, "body")
        for name in rendering.variables(template.body_text, template.parameter_format)
    ]
    for index, button in enumerate(template.buttons or []):
        if variable := button_key(index, button):
            found.append(variable)
    return found


def keys(template: MessageTemplate) -> list[str]:
    return [variable.key for variable in variables(template)]


def describe(template: MessageTemplate | None, key: str) -> str:
    """A variable as the campaign form names it, in the reader's language."""
    place, _dot, rest = key.partition(".")
    if template is None or not rest or place not in ("header", "button", "payload"):
        return f"{{{{{key}}}}}"
    if place == "header":
        return _("Header {{%(name)s}}") % {"name": rest}
    buttons = template.buttons or []
    index = int(rest) if rest.isdigit() else -1
    button = buttons[index] if 0 <= index < len(buttons) else {}
    text = button.get("text", "")
    if is_optional(key):
        return _("Quick reply “%(text)s”: its payload (optional)") % {"text": text}
    if button.get("type") == "COPY_CODE":
        return _("Copy-code button: the code")
    return _("Link “%(text)s”: the address's ending") % {"text": text}


@dataclass(frozen=True)
class HeaderMedia:
    """What a media header shows in a send: WhatsApp's media id, or a public link."""

    kind: HeaderFormat
    media_id: str | None = None
    link: str | None = None
    filename: str | None = None  # a document's name, shown to the recipient

    def parameter(self) -> dict[str, Any]:
        media: dict[str, Any] = {"id": self.media_id} if self.media_id else {"link": self.link}
        if self.kind is HeaderFormat.DOCUMENT and self.filename:
            media["filename"] = self.filename
        kind = self.kind.value.lower()
        return {"type": kind, kind: media}


def link_filename(link: str) -> str:
    """A document's name from its address: the path's last part."""
    return link.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or "document"


def linked_media(template: MessageTemplate) -> HeaderMedia | None:
    """The header media a send names by link, if the template's media is a link."""
    fmt = header_format(template)
    if fmt is None or not fmt.is_media or not template.header_media_link:
        return None
    return HeaderMedia(
        fmt, link=template.header_media_link, filename=link_filename(template.header_media_link)
    )


def needs_media(template: MessageTemplate) -> bool:
    """Whether the template's header lacks what it shows (media, or a location): one
    imported from WhatsApp, which keeps only a sample of it."""
    fmt = header_format(template)
    if fmt is HeaderFormat.LOCATION:  # Meta's location parameter has all four
        place = template.header_location or {}
        return not all(place.get(key) not in (None, "") for key in LOCATION_KEYS)
    has_media = template.header_media_link or template.header_media_file_id
    return bool(fmt and fmt.is_media and not has_media)


def unready(template: MessageTemplate, mapping: Mapping[str, Any]) -> list[str]:
    """What a campaign mapping ``mapping`` lacks to send the template: the variables it
    does not map, and "header" when the header lacks what it shows; none when ready."""
    lacking = [v.key for v in variables(template) if v.required and v.key not in mapping]
    return [*lacking, "header"] if needs_media(template) else lacking


class MissingValues(Exception):
    """Values a send needs and does not have (Meta would answer 132000)."""

    def __init__(self, keys: list[str]) -> None:
        super().__init__(", ".join(keys))


def _text_parameter(template: MessageTemplate, name: str, value: str) -> dict[str, Any]:
    if template.parameter_format is ParameterFormat.NAMED:
        return {"type": "text", "parameter_name": name, "text": value}
    return {"type": "text", "text": value}


def send_components(
    template: MessageTemplate, params: Mapping[str, Any], media: HeaderMedia | None
) -> list[dict[str, Any]]:
    """The ``components`` of a send: header, body and button parameters, as Meta wants
    them; MissingValues when a required value is not there."""
    missing = [
        variable.key
        for variable in variables(template)
        if variable.required and not str(params.get(variable.key) or "").strip()
    ]
    fmt = header_format(template)
    if fmt is not None and fmt.is_media and media is None:
        missing.append("header")
    if missing:
        raise MissingValues(missing)
    components: list[dict[str, Any]] = []
    if fmt is HeaderFormat.TEXT and (name := header_variable(template)):
        text = _text_parameter(template, name, str(params[f"header.{name}"]))
        components.append({"type": "header", "parameters": [text]})
    elif fmt is not None and fmt.is_media and media is not None:
        components.append({"type": "header", "parameters": [media.parameter()]})
    elif fmt is HeaderFormat.LOCATION:
        location = dict(template.header_location or {})
        components.append(
            {"type": "header", "parameters": [{"type": "location", "location": location}]}
        )
    body = [
        _text_parameter(template, name, str(params[name]))
        for name in rendering.variables(template.body_text, template.parameter_format)
    ]
    if body:
        components.append({"type": "body", "parameters": body})
    for index, button in enumerate(template.buttons or []):
        value = str(params.get(f"button.{index}") or params.get(f"payload.{index}") or "")
        if is_dynamic_url(button):
            parameter: dict[str, Any] = {"type": "text", "text": value}
            sub_type = "url"
        elif button.get("type") == "COPY_CODE":
            parameter, sub_type = {"type": "coupon_code", "coupon_code": value}, "copy_code"
        elif button.get("type") == "QUICK_REPLY" and value.strip():
            parameter, sub_type = {"type": "payload", "payload": value}, "quick_reply"
        else:
            continue
        components.append(
            {"type": "button", "sub_type": sub_type, "index": str(index), "parameters": [parameter]}
        )
    return components


def review_components(
    template: MessageTemplate, examples: Mapping[str, str], media_handle: str | None
) -> list[dict[str, Any]]:
    """The template as Meta's ``components`` list for review, with example values
    (``examples`` by body variable name; the header's and buttons' made up here)."""
    components: list[dict[str, Any]] = []
    fmt = header_format(template)
    named = template.parameter_format is ParameterFormat.NAMED
    if fmt is HeaderFormat.TEXT:
        header: dict[str, Any] = {"type": "HEADER", "format": "TEXT", "text": template.header_text}
        if name := header_variable(template):
            sample = rendering.sample_values([name], template.parameter_format)[name]
            header["example"] = (
                {"header_text_named_params": [{"param_name": name, "example": sample}]}
                if named
                else {"header_text": [sample]}
            )
        components.append(header)
    elif fmt is not None and fmt.is_media:
        # Meta wants a sample of the media as a handle from its resumable upload.
        media: dict[str, Any] = {"type": "HEADER", "format": fmt.value}
        if media_handle:
            media["example"] = {"header_handle": [media_handle]}
        components.append(media)
    elif fmt is HeaderFormat.LOCATION:
        components.append({"type": "HEADER", "format": "LOCATION"})
    body: dict[str, Any] = {"type": "BODY", "text": template.body_text}
    names = rendering.variables(template.body_text, template.parameter_format)
    if names and named:
        body["example"] = {
            "body_text_named_params": [{"param_name": n, "example": examples[n]} for n in names]
        }
    elif names:
        body["example"] = {"body_text": [[examples[n] for n in names]]}
    components.append(body)
    if template.footer_text:
        components.append({"type": "FOOTER", "text": template.footer_text})
    if template.buttons:
        buttons = []
        for button in template.buttons:
            button = dict(button)
            if is_dynamic_url(button):
                button["example"] = [DYNAMIC_URL.sub("exemplo", button["url"])]
            buttons.append(button)
        components.append({"type": "BUTTONS", "buttons": buttons})
    return components
