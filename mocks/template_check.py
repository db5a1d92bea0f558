"""The mock WhatsApp's check of a send against the template it names, as Meta checks it.

Meta refuses a template message whose parameters do not fit the approved template: a
header of the wrong kind (an image where the template has a video, a text where it
has an image) or a button parameter of the wrong kind is **132012** ("Parameter
format does not match format in the created template"); a parameter the template
needs and the send lacks, or one it does not take, is **132000** ("Number of
parameters does not match the expected number of params"); a media id the Media API
never gave is **131053** (media upload error). The template's definition is Meta's
``components`` list: Disparo's own submitted templates (as ``template_components``
writes them for review) or those made "in WhatsApp Manager" (``mocks/waba_templates.py``).

:class:`TemplateBook` finds a definition by phone number id, name and language and
keeps it for a few seconds (the asyncio mock process asks it from a thread: a lookup
reads the database). A template the mock knows nothing of is not checked: tests and
benchmarks send templates they never submitted, and Meta's own 132001 for those would
stop them all.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from app import AnySession
from campaigns import rendering, template_parts
from campaigns.models import MessageTemplate, Sender
from campaigns.providers.base import template_components
from mocks.models import MockWhatsAppMedia, MockWhatsAppTemplate

FORMAT_MISMATCH = (132012, 400, "Parameter format does not match format in the created template")
COUNT_MISMATCH = (132000, 400, "Number of parameters does not match the expected number of params")
MEDIA_ERROR = (131053, 400, "Media upload error")
BOOK_SECONDS = 5.0  # how long the asyncio process keeps a definition (or its absence)

Definition = list[dict[str, Any]]  # Meta's components


class Refused(Exception):
    """What Meta would answer instead: (code, HTTP status, title) and the details."""

    def __init__(self, error: tuple[int, int, str], details: str) -> None:
        super().__init__(details)
        self.error, self.details = error, details


def _names(text: Any) -> list[str]:
    return [p.name for p in rendering.placeholders(text)] if isinstance(text, str) else []


def _check_names(where: str, parameters: list[Any], names: list[str]) -> None:
    """A named template's parameters must name its variables (any order, Meta says)."""
    if not names or all(name.isdigit() for name in names):
        return  # positional: by order
    given = [p.get("parameter_name") for p in parameters if isinstance(p, dict)]
    if sorted(str(n) for n in given) != sorted(names):
        raise Refused(
            FORMAT_MISMATCH,
            f"{where}: parameter names {given} do not match the template's {names}",
        )


@dataclass(frozen=True)
class _Expected:
    """What a definition asks of a send: the header's kind and variables, the body's
    variable count, and each button index's sub_type (for those that take one)."""

    header: str | None  # TEXT, IMAGE, VIDEO, DOCUMENT, LOCATION
    header_names: list[str]
    body_names: list[str]  # as the text writes them: "first_name", or "1", "2"…
    buttons: dict[int, str]  # index → "url" / "copy_code" (needed), "quick_reply" (may)

    @classmethod
    def of(cls, definition: Definition) -> _Expected:
        header, header_names, body_names, buttons = None, [], [], {}
        for component in definition:
            kind = str(component.get("type", "")).upper()
            if kind == "HEADER":
                header = str(component.get("format", "TEXT")).upper()
                header_names = _names(component.get("text"))
            elif kind == "BODY":
                body_names = _names(component.get("text"))
            elif kind == "BUTTONS":
                for index, button in enumerate(component.get("buttons") or []):
                    button_type = str(button.get("type", "")).upper()
                    if button_type == "URL" and "{{" in str(button.get("url", "")):
                        buttons[index] = "url"
                    elif button_type == "COPY_CODE":
                        buttons[index] = "copy_code"
                    elif button_type == "QUICK_REPLY":
                        buttons[index] = "quick_reply"
        return cls(header, header_names, body_names, buttons)


def _parameters(component: dict[str, Any]) -> list[Any]:
    parameters = component.get("parameters", [])
    return parameters if isinstance(parameters, list) else []


def check(
    components: list[Any], definition: Definition, media_known: Callable[[str], bool]
) -> None:
    """Refused if the send's components do not fit the definition (see the docstring)."""
    expected = _Expected.of(definition)
    sent: dict[str, list[dict[str, Any]]] = {}
    for component in components:
        if isinstance(component, dict):
            sent.setdefault(str(component.get("type", "")).lower(), []).append(component)
    _check_header(sent.get("header", []), expected, media_known)
    body = [p for c in sent.get("body", []) for p in _parameters(c)]
    if len(body) != len(expected.body_names):
        raise Refused(
            COUNT_MISMATCH,
            f"body: number of localizable_params ({len(body)}) does not match the expected"
            f" number of params ({len(expected.body_names)})",
        )
    _check_names("body", body, expected.body_names)
    _check_buttons(sent.get("button", []), expected)


def _check_header(
    headers: list[dict[str, Any]], expected: _Expected, media_known: Callable[[str], bool]
) -> None:
    parameters = [p for c in headers for p in _parameters(c)]
    wanted = 0 if expected.header in (None, "TEXT") else 1
    if expected.header == "TEXT":
        wanted = len(expected.header_names)
    if len(parameters) != wanted:
        raise Refused(
            COUNT_MISMATCH,
            f"header: number of parameters ({len(parameters)}) does not match the expected"
            f" number of params ({wanted})",
        )
    if not parameters or expected.header is None:
        return
    if expected.header == "TEXT":
        _check_names("header", parameters, expected.header_names)
    parameter = parameters[0] if isinstance(parameters[0], dict) else {}
    kind = str(parameter.get("type", "")).lower()
    if kind != expected.header.lower():
        raise Refused(
            FORMAT_MISMATCH,
            f"header: Format mismatch, expected {expected.header}, received {kind.upper() or '?'}",
        )
    if kind in ("image", "video", "document"):
        media = parameter.get(kind)
        media = media if isinstance(media, dict) else {}
        media_id, link = media.get("id"), media.get("link")
        if isinstance(media_id, str) and media_id:
            if not media_known(media_id):
                raise Refused(MEDIA_ERROR, f"header: media id {media_id} was never uploaded")
        elif not (isinstance(link, str) and link.startswith("https://")):
            raise Refused(COUNT_MISMATCH, f"header: the {kind} needs an id or an https link")
    elif kind == "location":
        place = parameter.get("location")
        if not isinstance(place, dict) or not all(
            place.get(key) not in (None, "") for key in template_parts.LOCATION_KEYS
        ):
            raise Refused(
                COUNT_MISMATCH, "header: the location needs its latitude, longitude, name, address"
            )


def _check_buttons(buttons: list[dict[str, Any]], expected: _Expected) -> None:
    given: dict[int, dict[str, Any]] = {}
    for button in buttons:
        try:
            index = int(button.get("index"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise Refused(COUNT_MISMATCH, "button: index is missing or not a number") from None
        given[index] = button
    for index, sub_type in expected.buttons.items():
        found = given.pop(index, None)
        if found is None:
            if sub_type == "quick_reply":
                continue  # a payload is optional
            raise Refused(
                COUNT_MISMATCH, f"button at index {index}: the {sub_type} parameter is missing"
            )
        button = found
        if str(button.get("sub_type", "")).lower() != sub_type:
            raise Refused(
                FORMAT_MISMATCH,
                f"button at index {index}: sub_type {button.get('sub_type')!r},"
                f" expected {sub_type}",
            )
        parameters = _parameters(button)
        wanted = {"url": "text", "copy_code": "coupon_code", "quick_reply": "payload"}[sub_type]
        if len(parameters) != 1 or not isinstance(parameters[0], dict):
            raise Refused(COUNT_MISMATCH, f"button at index {index}: one parameter expected")
        parameter = parameters[0]
        value = parameter.get(wanted)
        if parameter.get("type") != wanted or not isinstance(value, str) or not value.strip():
            raise Refused(
                FORMAT_MISMATCH, f"button at index {index}: a non-empty {wanted} parameter expected"
            )
    if given:
        index = min(given)
        raise Refused(COUNT_MISMATCH, f"button at index {index}: the template takes no parameter")


def definition_of(
    session: AnySession, phone_number_id: str, name: str, language: str
) -> Definition | None:
    """The components of the template a send names, as "Meta" has it: one made in the
    mock's WhatsApp Manager for the number's WABA first, else the one Disparo submitted
    for a sender of that WABA (the mock keeps no copy of those); None if unknown."""
    waba = sa.select(Sender.waba_id).where(Sender.phone_number_id == phone_number_id)
    made_here = session.scalar(
        sa.select(MockWhatsAppTemplate.components).where(
            MockWhatsAppTemplate.waba_id.in_(waba),
            MockWhatsAppTemplate.name == name,
            MockWhatsAppTemplate.language == language,
        )
    )
    if isinstance(made_here, list):
        return list(made_here)
    same_waba = sa.or_(
        Sender.phone_number_id == phone_number_id, Sender.waba_id.in_(waba.scalar_subquery())
    )
    template = session.scalar(
        sa.select(MessageTemplate)
        .join(Sender, Sender.id == MessageTemplate.sender_id)
        .where(same_waba, MessageTemplate.name == name, MessageTemplate.language == language)
        .order_by(Sender.phone_number_id != phone_number_id)  # the number's own first
        .limit(1)
    )
    if template is None:
        return None
    fmt = template.parameter_format
    examples = rendering.sample_values(rendering.variables(template.body_text, fmt), fmt)
    return template_components(template, examples)


def media_exists(session: AnySession, media_id: str) -> bool:
    found = session.scalar(sa.select(MockWhatsAppMedia.id).where(MockWhatsAppMedia.id == media_id))
    return found is not None


class TemplateBook:
    """Definitions by (phone number id, name, language), each kept ``seconds``, and the
    media ids known to exist. Thread-safe; reads the database in a session
    ``session_scope()`` opens (a context manager). The web port keeps nothing (0 s): a
    test that edits a template sends the edited one at once."""

    def __init__(
        self,
        session_scope: Callable[[], AbstractContextManager[AnySession]],
        seconds: float = BOOK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._scope = session_scope
        self._seconds = seconds
        self._clock = clock
        self._kept: dict[tuple[str, str, str], tuple[float, Definition | None]] = {}
        self._media: set[str] = set()  # an id, once known, stays so (the mock deletes none)
        self._lock = threading.Lock()

    def lookup(self, phone_number_id: str, name: str, language: str) -> Definition | None:
        key = (phone_number_id, name, language)
        now = self._clock()
        with self._lock:
            kept = self._kept.get(key)
        if kept is not None and now - kept[0] < self._seconds:
            return kept[1]
        with self._scope() as session:
            definition = definition_of(session, phone_number_id, name, language)
        with self._lock:
            if len(self._kept) > 10_000:
                self._kept.clear()
            self._kept[key] = (now, definition)
        return definition

    def media_known(self, media_id: str) -> bool:
        with self._lock:
            if media_id in self._media:
                return True
        with self._scope() as session:
            known = media_exists(session, media_id)
        if known:
            with self._lock:
                self._media.add(media_id)
        return known

    def prepare(self, phone_number_id: str, payload: Any) -> None:
        """Read ahead what checking ``payload`` needs (its template, its media ids), so
        the check itself finds them kept: for a caller that must not wait on Postgres."""
        template = payload.get("template") if isinstance(payload, dict) else None
        if not isinstance(template, dict):
            return
        language = template.get("language")
        code = language.get("code") if isinstance(language, dict) else None
        name = template.get("name")
        if isinstance(name, str) and isinstance(code, str):
            self.lookup(phone_number_id, name.strip(), code.strip())
        for component in template.get("components") or []:
            for parameter in _parameters(component) if isinstance(component, dict) else []:
                kind = parameter.get("type") if isinstance(parameter, dict) else None
                media = parameter.get(kind) if isinstance(kind, str) else None
                if isinstance(media, dict) and isinstance(media.get("id"), str):
                    self.media_known(media["id"])
