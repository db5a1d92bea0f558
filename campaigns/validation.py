"""Input parsing shared by the HTML forms and the JSON API.

Each ``parse_*`` takes what the user sent (form strings or JSON values) and returns
clean values, or raises :class:`Invalid` with one message per bad field, so a form
can show each message at its field and the API can answer 422 with the same text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time
from decimal import Decimal
from enum import Enum
from typing import Any

from flask import current_app
from werkzeug.datastructures import MultiDict

from campaigns import rendering, send_windows, template_parts
from campaigns.erp import SEGMENT_KEYS
from campaigns.i18n import _, format_money, format_number, parse_amount, valid_timezone
from campaigns.models import HeaderFormat, ParameterFormat, Provider, Role, TemplateCategory
from campaigns.tracked_links import TRACK

TEMPLATE_NAME = re.compile(r"[a-z0-9_]{1,512}")
LANGUAGE = re.compile(r"[a-z]{2,3}(_[A-Z]{2})?")
URL = re.compile(r"https?://[^\s]+")
MAX_BUTTONS = 10
URL_MAX_CHARS = 2000  # Meta's limit on a URL button's address
# The largest minimum spend a segment takes (R$ 1 trillion): exact as a float.
MAX_AMOUNT = Decimal(10**12)
INTEGER_MAX = 2**31 - 1  # PostgreSQL's integer: most tables' ids
BIGINT_MAX = 2**63 - 1  # bigint: messages', notifications' and Procrastinate jobs' ids


def identifier(value: Any, max_length: int, *, number: bool = False) -> str | None:
    """An id or code as a provider sends it (Meta's are ASCII): printable ASCII of at most
    ``max_length``; with ``number``, a whole number >= 0 as its digits too (Meta sends
    some ids as JSON numbers). None for anything else."""
    if number and isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        value = str(value)
    if (
        isinstance(value, str)
        and 0 < len(value) <= max_length
        and value.isascii()
        and value.isprintable()
    ):
        return value
    return None


class Invalid(ValueError):
    """Bad input: ``errors`` maps each field to its message."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = dict(errors)


@dataclass
class Checker:
    """Collects one message per field (the first problem found is the one shown)."""

    errors: dict[str, str] = field(default_factory=dict)

    def fail(self, name: str, message: str) -> None:
        self.errors.setdefault(name, message)

    def done(self) -> None:
        if self.errors:
            raise Invalid(self.errors)


def storable(text: str) -> bool:
    """Whether PostgreSQL can store the text: no NUL byte, and valid as UTF-8.

    A JSON string such as ``"\\ud800"`` decodes to a lone surrogate, which has no
    UTF-8 form, so psycopg cannot send it; forms and query strings cannot carry one
    (werkzeug replaces undecodable bytes), but any of them can carry a NUL.
    """
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def unstorable_fields(data: Any) -> dict[str, str]:
    """Each field of a form or JSON document with text PostgreSQL cannot store, and why.

    Fields are named as the parsers below name them: keys joined by dots two levels
    deep (``segment.city``, ``variables.first_name``); a list's items, and anything
    deeper, are reported at the key that holds them. Walked without recursion, so a
    deeply nested document cannot exhaust the stack.
    """
    found: dict[str, str] = {}
    # (the field's name so far, the value, whether the name is complete)
    stack: list[tuple[tuple[str, ...], Any, bool]] = [((), data, False)]
    while stack:
        path, value, named = stack.pop()
        if isinstance(value, str):
            if not storable(value):
                found.setdefault(".".join(path) or "body", unstorable_message())
        elif isinstance(value, Mapping):
            # A form may repeat a field: every value of a MultiDict, not just its first.
            items = value.items(multi=True) if isinstance(value, MultiDict) else value.items()
            for key, item in items:
                key_path = path if named else (*path, str(key))
                if isinstance(key, str) and not storable(key):
                    found.setdefault(".".join(key_path), unstorable_message())
                stack.append((key_path, item, named or len(key_path) == 2))
        elif isinstance(value, list | tuple):
            stack.extend((path, item, bool(path)) for item in value)
    return found


def unstorable_message() -> str:
    return _("This contains a character that cannot be saved (such as a NUL byte); remove it.")


def row_id(raw: Any) -> int | None:
    """An id from a number or its digits, if an integer key can hold it; else None.

    Larger numbers never reach the database, which would refuse them as out of range.
    """
    if isinstance(raw, bool):
        return None
    try:
        value = int(raw)
    except (TypeError, ValueError, OverflowError):  # OverflowError: JSON's 1e999 is infinity
        return None
    return value if 1 <= value <= INTEGER_MAX else None


def bigint(raw: str) -> int:
    """A whole number for ``request.args.get(…, type=bigint)``, clamped to bigint's range.

    As a bound on ids (``after``, ``up_to``) a larger number means what the largest does.
    """
    return max(-BIGINT_MAX - 1, min(int(raw), BIGINT_MAX))


def _text(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name)
    return "" if value is None else str(value).strip()


def _int(
    data: Mapping[str, Any],
    name: str,
    check: Checker,
    low: int,
    high: int,
    default: int,
    field: str | None = None,
) -> int:
    """An integer in [low, high]; problems are reported at ``field`` (default: ``name``)."""
    field = field or name
    raw = data.get(name)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError, OverflowError):  # OverflowError: JSON's 1e999 is infinity
        check.fail(field, _("Enter a whole number."))
        return default
    if isinstance(raw, bool) or not low <= value <= high:
        check.fail(
            field,
            _("Enter a number from %(low)s to %(high)s.")
            % {"low": format_number(low), "high": format_number(high)},
        )
    return value


def _choice(data: Mapping[str, Any], name: str, enum: type[Enum], check: Checker, default=None):
    raw = _text(data, name)
    if not raw and default is not None:
        return default
    try:
        return enum(raw)
    except ValueError:
        options = ", ".join(member.value for member in enum)
        check.fail(name, _("Choose one of: %(options)s.") % {"options": options})
        return default


@dataclass(frozen=True)
class TemplateFields:
    name: str
    language: str
    category: TemplateCategory
    parameter_format: ParameterFormat
    header_format: str | None
    header_text: str | None
    header_media_link: str | None
    header_media_file_id: int | None
    header_location: dict[str, Any] | None
    body_text: str
    footer_text: str | None
    buttons: list[dict[str, str]]


PHONE_BUTTON = re.compile(r"(?:tel:)?\s*(\+?[0-9][0-9 ().-]{6,30})")
# Meta's caps on a template's buttons by kind, besides MAX_BUTTONS in all.
BUTTON_CAPS = {"URL": 2, "PHONE_NUMBER": 1, "COPY_CODE": 1}


def button_from_line(line: str) -> dict[str, str]:
    """A form line: ``Text`` (quick reply), ``Text | https://…`` (a link, its address
    ending in {{1}} when each recipient gets their own), ``Text | +55…`` (a call)."""
    text, _sep, target = (part.strip() for part in line.partition("|"))
    if not target:
        return {"type": "QUICK_REPLY", "text": text}
    if (phone := PHONE_BUTTON.fullmatch(target)) and not target.lower().startswith("http"):
        return {"type": "PHONE_NUMBER", "text": text, "phone_number": phone.group(1)}
    return {"type": "URL", "text": text, "url": target}


def _button(item: Any, check: Checker) -> dict[str, str] | None:
    """One button as Meta's JSON has it, checked; None (and a message) if it is not one."""
    kind = str(item.get("type", "")).upper() if isinstance(item, dict) else ""
    if kind == "COPY_CODE":
        code = str(item.get("example", "")).strip()
        if not code or len(code) > template_parts.COUPON_MAX_CHARS or "{{" in code:
            check.fail(
                "copy_code",
                _("Give an example code of up to %(n)d characters for the copy-code button.")
                % {"n": template_parts.COUPON_MAX_CHARS},
            )
            return None
        return {"type": kind, "example": code}
    text = str(item.get("text", "")).strip() if isinstance(item, dict) else ""
    if kind not in ("QUICK_REPLY", "URL", "PHONE_NUMBER") or not text:
        check.fail(
            "buttons",
            _("Each button needs a type (quick reply, URL, phone number or copy code) and a text."),
        )
        return None
    if len(text) > 25:
        check.fail("buttons", _("Button texts have at most 25 characters: %(t)s") % {"t": text})
        return None
    button = {"type": kind, "text": text}
    if kind == "URL":
        url = str(item.get("url", ""))
        fixed = template_parts.DYNAMIC_URL.sub("x", url)
        if len(url) > URL_MAX_CHARS:
            check.fail("buttons", _("A button's address has at most 2000 characters."))
        elif not URL.fullmatch(fixed) or not fixed.startswith("https://"):
            check.fail("buttons", _("A URL button needs an address starting with https://."))
        elif "{{" in fixed or "}}" in fixed:
            check.fail(
                "buttons",
                _("A URL button's only variable is {{1}}, at the very end of its address."),
            )
        else:
            button["url"] = url
            return button
        return None
    if kind == "PHONE_NUMBER":
        phone = PHONE_BUTTON.fullmatch(str(item.get("phone_number", "")).strip())
        if phone is None:
            check.fail("buttons", _("A call button needs a phone number such as +5511987654321."))
            return None
        button["phone_number"] = phone.group(1)
    return button


def form_buttons(lines: str, copy_code: str) -> list[dict[str, str]]:
    """The form's buttons as typed, unchecked: one per line (see button_from_line), then
    the copy-code button if its example code is given (a field of its own)."""
    buttons = [button_from_line(line) for line in lines.splitlines() if line.strip()]
    if copy_code.strip():
        buttons.append({"type": "COPY_CODE", "example": copy_code.strip()})
    return buttons


def parse_buttons(raw: Any, check: Checker, copy_code: str = "") -> list[dict[str, str]]:
    """Buttons from JSON (a list) or from the form (:func:`form_buttons`)."""
    items: list[Any]
    if raw is None or isinstance(raw, str):
        items = form_buttons(raw or "", copy_code)
    elif isinstance(raw, list):
        items = [*raw, *form_buttons("", copy_code)]
    else:
        check.fail("buttons", _("Buttons must be a list."))
        return []
    buttons = [button for item in items if (button := _button(item, check)) is not None]
    if len(items) > MAX_BUTTONS:
        check.fail("buttons", _("At most %(n)d buttons.") % {"n": MAX_BUTTONS})
    from campaigns.labels import label_for  # labels → audit → validation: read when used

    for kind, cap in BUTTON_CAPS.items():
        if sum(1 for b in buttons if b["type"] == kind) > cap:
            check.fail(
                "buttons",
                _("At most %(n)d buttons of the kind “%(kind)s”.")
                % {"n": cap, "kind": label_for("button_kind", kind)},
            )
    return buttons


def _coordinate(raw: Any, limit: int, name: str, check: Checker) -> float | None:
    text = str(raw if raw is not None else "").strip().replace(",", ".")
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not -limit <= value <= limit:  # NaN and infinities fail too
        check.fail(
            f"header_location.{name}",
            _("Enter a number from %(low)s to %(high)s.") % {"low": -limit, "high": limit},
        )
        return None
    return value


LOCATION_KEYS = template_parts.LOCATION_KEYS


def parse_location(raw: Any, check: Checker) -> dict[str, Any] | None:
    """A location header's place: ``{latitude, longitude, name, address}``."""
    if not isinstance(raw, Mapping):
        check.fail("header_location", _("Give the location's latitude and longitude."))
        return None
    latitude = _coordinate(raw.get("latitude"), 90, "latitude", check)
    longitude = _coordinate(raw.get("longitude"), 180, "longitude", check)
    place: dict[str, Any] = {"latitude": latitude, "longitude": longitude}
    # Meta's location parameter has all four: the place's name and address are shown.
    for key, limit in (("name", 1000), ("address", 1000)):
        text = str(raw.get(key) or "").strip()
        if not text or len(text) > limit:
            check.fail(
                f"header_location.{key}",
                _("Write it, in at most %(n)d characters.") % {"n": limit},
            )
        place[key] = text
    return place if latitude is not None and longitude is not None else None


def header_kind(data: Mapping[str, Any]) -> str:
    """The header's kind a form or the API names, as typed (upper case): a text header
    by default when only its text is given (the API's "header"); "" for none."""
    return _text(data, "header_format").upper() or ("TEXT" if _text(data, "header_text") else "")


def _header(
    data: Mapping[str, Any], fmt: ParameterFormat, check: Checker, require_media: bool
) -> tuple[str | None, str | None, str | None, int | None, dict[str, Any] | None]:
    """(format, text, media link, media file id, location) of a template's header."""
    text = _text(data, "header_text") or None
    kind = header_kind(data)
    if kind in ("", "NONE"):
        if text:
            check.fail("header_format", _("Choose the header's kind."))
        return None, None, None, None, None
    try:
        header = HeaderFormat(kind)
    except ValueError:
        options = ", ".join(member.value for member in HeaderFormat)
        check.fail("header_format", _("Choose one of: %(options)s.") % {"options": options})
        return None, None, None, None, None
    if header is HeaderFormat.TEXT:
        if not text:
            check.fail("header_text", _("Write the header's text."))
        elif len(text) > rendering.HEADER_MAX_CHARS:
            check.fail("header_text", _("The header has at most 60 characters."))
        else:
            names = [placeholder.name for placeholder in rendering.placeholders(text)]
            problems = rendering.validate(text, fmt)
            if len(names) > 1:
                check.fail("header_text", _("The header takes at most one variable."))
            elif problems:
                check.fail("header_text", problems[0])
        return header.value, text, None, None, None
    if header is HeaderFormat.LOCATION:
        raw = data.get("header_location")
        if raw is None:  # the form's fields, one per key
            raw = {key: data.get(f"header_location.{key}") for key in LOCATION_KEYS}
            if not require_media and not any(raw.values()):
                raw = None
        if raw is None and not require_media:
            return header.value, None, None, None, None  # given before a campaign uses it
        return header.value, None, None, None, parse_location(raw, check)
    link = _text(data, "header_media_link") or None
    file_id = None
    raw_file = data.get("header_media_file_id")
    if raw_file not in (None, ""):
        file_id = row_id(raw_file)
        if file_id is None:
            check.fail("header_media_file_id", _("There is no such file."))
    if link and (
        len(link) > URL_MAX_CHARS or not link.startswith("https://") or not URL.fullmatch(link)
    ):
        check.fail("header_media_link", _("Give a public address starting with https://."))
    elif link and file_id:
        check.fail("header_media_link", _("Give a link or upload a file, not both."))
    elif not link and not file_id and require_media:
        check.fail(
            "header_media_link", _("Give the header's media: a public https:// link or a file.")
        )
    return header.value, None, link, file_id, None


def parse_template(data: Mapping[str, Any], *, require_media: bool = True) -> TemplateFields:
    """A message template as the WhatsApp Cloud API accepts it.

    ``require_media`` False: a media header may come without its media (a template
    imported from WhatsApp, whose sample Meta keeps); a campaign needs it given.
    """
    check = Checker(unstorable_fields(data))
    name = _text(data, "name")
    if not TEMPLATE_NAME.fullmatch(name):
        check.fail("name", _("Use lowercase letters, digits and _ only (up to 512)."))
    language = _text(data, "language")
    if not LANGUAGE.fullmatch(language):
        check.fail("language", _("Use a language code such as pt_BR or en_US."))
    category = _choice(data, "category", TemplateCategory, check)
    fmt = _choice(data, "parameter_format", ParameterFormat, check, ParameterFormat.NAMED)
    header = _header(data, fmt or ParameterFormat.NAMED, check, require_media)
    body = _text(data, "body_text")
    footer = _text(data, "footer_text") or None
    if not body:
        check.fail("body_text", _("The body is required."))
    # Its length first: a body over the limit is refused before it is parsed.
    for problem in rendering.validate(body, fmt or ParameterFormat.NAMED):
        check.fail("body_text", problem)
    if footer and len(footer) > rendering.FOOTER_MAX_CHARS:
        check.fail("footer_text", _("The footer has at most 60 characters."))
    if footer and "{{" in footer:
        check.fail("footer_text", _("The footer cannot have variables."))
    buttons = parse_buttons(data.get("buttons"), check, _text(data, "copy_code"))
    check.done()
    return TemplateFields(name, language, category, fmt, *header, body, footer, buttons)


# A sender's settings other than its secrets, which are write-only.
SENDER_SETTINGS = (
    "name",
    "provider",
    "phone_number_id",
    "display_phone_number",
    "waba_id",
    "business_id",
    "rate_limit_per_minute",
    "min_interval_ms",
    "webhook_verify_token",
)


@dataclass(frozen=True)
class SenderFields:
    name: str
    provider: Provider
    phone_number_id: str | None
    display_phone_number: str | None
    waba_id: str | None
    business_id: str | None
    rate_limit_per_minute: int
    min_interval_ms: int
    webhook_verify_token: str | None
    # Write-only secrets: None means "leave as it is".
    access_token: str | None
    app_secret: str | None


def parse_sender(data: Mapping[str, Any]) -> SenderFields:
    """A WhatsApp sender; secrets left blank keep their stored value."""
    check = Checker(unstorable_fields(data))
    name = _text(data, "name")
    if not name or len(name) > 100:
        check.fail("name", _("Give the sender a name (up to 100 characters)."))
    provider = _choice(data, "provider", Provider, check, None)
    phone_number_id = _text(data, "phone_number_id") or None
    if phone_number_id and not phone_number_id.isdigit():
        check.fail("phone_number_id", _("The phone number id is the number Meta shows (digits)."))
    waba_id = _text(data, "waba_id") or None
    if waba_id and not waba_id.isdigit():
        check.fail("waba_id", _("The WABA id is the number Meta shows (digits)."))
    business_id = _text(data, "business_id") or None
    if business_id and (not business_id.isascii() or not business_id.isdigit()):
        check.fail("business_id", _("The business id is the number Meta shows (digits)."))
    elif business_id and len(business_id) > 64:
        check.fail("business_id", _("The business id is the number Meta shows (digits)."))
    if provider is Provider.CLOUD_API and not phone_number_id:
        check.fail("phone_number_id", _("The Cloud API needs the phone number id."))
    rate = _int(data, "rate_limit_per_minute", check, 1, 1_000_000, 20)
    gap = _int(data, "min_interval_ms", check, 0, 3_600_000, 1000)
    check.done()
    return SenderFields(
        name=name,
        provider=provider,
        phone_number_id=phone_number_id,
        display_phone_number=_text(data, "display_phone_number") or None,
        waba_id=waba_id,
        business_id=business_id,
        rate_limit_per_minute=rate,
        min_interval_ms=gap,
        webhook_verify_token=_text(data, "webhook_verify_token") or None,
        access_token=_text(data, "access_token") or None,
        app_secret=_text(data, "app_secret") or None,
    )


def parse_messaging_limit(data: Mapping[str, Any]) -> int | None:
    """An admin's messaging limit for a sender's portfolio: unique users a day, a whole
    number from 0 (JSON's, not text), or null for unlimited."""
    raw = data.get("messaging_limit")
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= BIGINT_MAX:
        raise Invalid(
            {
                "messaging_limit": _(
                    "The messaging limit is a whole number of users a day from 0, or null"
                    " for unlimited."
                )
            }
        )
    return raw


def parse_limit_overridden(data: Mapping[str, Any]) -> bool | None:
    """Whether the API asks for the portfolio's messaging limit to be an admin's (true)
    or Meta's again (false); None when the body does not say."""
    if "messaging_limit_overridden" not in data:
        return None
    raw = data["messaging_limit_overridden"]
    if not isinstance(raw, bool):
        raise Invalid(
            {
                "messaging_limit_overridden": _(
                    "Send false to use Meta's messaging limit again, or true to keep the override."
                )
            }
        )
    return raw


# ASCII digits only: \d takes any script's, which int() reads too.
_WHOLE_NUMBER = re.compile(r"[0-9]+|[0-9]{1,3}(?:([.,])[0-9]{3})(?:\1[0-9]{3})*")


def parse_messaging_limit_form(form: Mapping[str, Any]) -> int | None:
    """The sender page's messaging limit: "unlimited" ticked (None), or a whole number of
    users a day from 0, typed with or without thousands separators (2000, 2,000, 2.000)."""
    if form.get("unlimited"):
        return None
    raw = str(form.get("messaging_limit") or "").strip().replace(" ", "")
    digits = re.sub(r"[.,]", "", raw).lstrip("0") or "0"
    # Bounded before int(): past 4,300 digits int() raises rather than reads.
    if _WHOLE_NUMBER.fullmatch(raw) and len(digits) <= len(str(BIGINT_MAX)):
        if (value := int(digits)) <= BIGINT_MAX:
            return value
    raise Invalid(
        {"messaging_limit": _("Enter the users a day as a whole number from 0, or tick Unlimited.")}
    )


@dataclass(frozen=True)
class UserLimits:
    campaign_rate_limit_per_minute: int | None
    api_rate_limit_per_minute: int | None
    role: Role | None


def parse_user_changes(data: Mapping[str, Any]) -> UserLimits:
    """The admin-editable parts of a user; absent keys stay as they are."""
    check = Checker(unstorable_fields(data))
    campaign = api = None
    if "campaign_rate_limit_per_minute" in data:
        campaign = _int(data, "campaign_rate_limit_per_minute", check, 1, 1_000_000, 100)
    if "api_rate_limit_per_minute" in data:
        api = _int(data, "api_rate_limit_per_minute", check, 1, 1_000_000, 1000)
    role = _choice(data, "role", Role, check, None) if data.get("role") else None
    check.done()
    return UserLimits(campaign, api, role)


CUSTOMER_FIELDS = (
    "first_name",
    "name",
    "phone",
    "email",
    "city",
    "state",
    "tags",
    "total_spent",
    "last_purchase_at",
    "id",
    "language",
)


def _amount(value: Any) -> Decimal | None:
    """A finite amount: a JSON number, or text as a person types it in either convention
    (``1.234,56``, ``1,234.56``, ``R$ 150``); None when it is not one."""
    if isinstance(value, bool):  # before int: bool is an int
        return None
    if isinstance(value, int | float):
        amount = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    elif isinstance(value, str):
        try:
            amount = parse_amount(value)
        except ValueError:
            return None
    else:
        return None
    return amount if amount.is_finite() else None


def parse_segment(raw: Any, check: Checker) -> dict[str, Any]:
    """ERP segment criteria: only the keys the ERP understands, each checked."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        check.fail("segment", _("The segment must be an object of criteria."))
        return {}
    known = SEGMENT_KEYS
    for key in raw:
        if key not in known:
            check.fail(
                f"segment.{key}",
                _("Unknown criterion; use one of: %(k)s.") % {"k": ", ".join(sorted(known))},
            )
    segment: dict[str, Any] = {}
    for key in ("city", "state"):
        value = _text(raw, key)
        if value:
            segment[key] = value
    if segment.get("state") and not re.fullmatch(r"[A-Za-z]{2}", segment["state"]):
        check.fail("segment.state", _("Use the two-letter state code, e.g. SP."))
    tags = raw.get("tags")
    if isinstance(tags, str):
        tags = [tag.strip() for tag in tags.split(",")]
    if tags:
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            check.fail("segment.tags", _("Tags are a list of words."))
        else:
            segment["tags"] = [t.strip() for t in tags if t.strip()]
    spent = raw.get("min_total_spent")
    if not (spent is None or (isinstance(spent, str) and not spent.strip())):
        amount = _amount(spent)
        if amount is None or amount < 0:
            check.fail(
                "segment.min_total_spent",
                _("Enter an amount of zero or more, like 1,234.56 or R$ 150."),
            )
        elif amount > MAX_AMOUNT:
            check.fail(
                "segment.min_total_spent",
                _("Enter an amount up to %(max)s.") % {"max": format_money(MAX_AMOUNT)},
            )
        else:
            # Stored as a JSON number; the ERP client sends it as plain digits ("1234.56").
            segment["min_total_spent"] = float(amount)
    for key, low, high in (("last_purchase_within_days", 1, 3650), ("max_audience", 1, 10_000_000)):
        if raw.get(key) not in (None, ""):
            segment[key] = _int(raw, key, check, low, high, 0, field=f"segment.{key}")
    opted = raw.get("opted_in_only", True)
    if isinstance(opted, str):
        opted = opted.strip().lower() in ("on", "true", "1", "yes")
    if not isinstance(opted, bool):
        check.fail("segment.opted_in_only", _("Say true or false."))
    segment["opted_in_only"] = bool(opted)
    return segment


def parse_mapping(
    raw: Any, variables: list[str], check: Checker, *, any_field: bool = False
) -> dict[str, dict[str, str]]:
    """Each template variable → ``{"field": customer field}`` or ``{"text": fixed text}``.
    ``any_field``: a CSV audience's column, checked against its file by the service."""
    if not isinstance(raw, Mapping):
        check.fail("variables", _("Map each variable to a customer field or a fixed text."))
        return {}
    mapping: dict[str, dict[str, str]] = {}
    for name in raw:
        if name not in variables:
            check.fail(
                f"variables.{name}", _("The template has no variable {{%(n)s}}.") % {"n": name}
            )
    for name in variables:
        item = raw.get(name)
        key = f"variables.{name}"
        if template_parts.is_optional(name) and not (
            isinstance(item, Mapping) and (item.get("field") or item.get("text"))
        ):
            continue  # a quick reply's payload: WhatsApp sends the button's text without one
        if isinstance(item, Mapping) and item.get(TRACK) and name.startswith("button."):
            address = str(item[TRACK]).strip()
            fits = len(address) <= URL_MAX_CHARS and URL.fullmatch(address)
            if not fits or not address.startswith("https://"):
                check.fail(key, _("Give the address the link leads to, starting with https://."))
            else:
                mapping[name] = {TRACK: address}
            continue
        if not isinstance(item, Mapping) or not (item.get("field") or item.get("text")):
            check.fail(key, _("Map {{%(n)s}} to a customer field or a fixed text.") % {"n": name})
        elif item.get("field"):
            if any_field and isinstance(item["field"], str) and len(item["field"]) <= 200:
                mapping[name] = {"field": item["field"]}
            elif item["field"] not in CUSTOMER_FIELDS:
                check.fail(
                    key,
                    _("Unknown customer field; use one of: %(f)s.")
                    % {"f": ", ".join(CUSTOMER_FIELDS)},
                )
            else:
                mapping[name] = {"field": str(item["field"])}
        else:
            text = str(item["text"]).strip()
            if not text or len(text) > 1024:
                check.fail(key, _("Write the fixed text (up to 1024 characters)."))
            else:
                mapping[name] = {"text": text}
    return mapping


def parse_language_field(raw: Any, check: Checker, *, any_field: bool = False) -> str | None:
    """The customer field holding each recipient's language (campaigns/languages.py), or
    None (absent, null or empty): the template's own language for everyone.
    ``any_field``: a CSV audience's column (at most 64 characters, the column's width),
    checked against its file by the service."""
    return _field_choice(raw, "language_field", check, any_field=any_field)


FIELD_CHOICE_MAX_CHARS = 64  # campaigns.language_field's and time_zone_field's width


def _field_choice(raw: Any, field: str, check: Checker, *, any_field: bool) -> str | None:
    """A customer field's name, or with ``any_field`` a CSV column's (its width's long)."""
    if raw is None or raw == "":
        return None
    if any_field and isinstance(raw, str):
        if len(raw) <= FIELD_CHOICE_MAX_CHARS:
            return raw
        check.fail(
            field,
            _(
                "This column's name is too long to be chosen here (at most %(n)d characters):"
                " rename it in the file and upload it again."
            )
            % {"n": FIELD_CHOICE_MAX_CHARS},
        )
        return None
    if not isinstance(raw, str) or raw not in CUSTOMER_FIELDS:
        check.fail(
            field,
            _("Unknown customer field; use one of: %(f)s.") % {"f": ", ".join(CUSTOMER_FIELDS)},
        )
        return None
    return raw


HH_MM = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")
RECURRENCE_KEYS = {
    "daily": ("every", "at", "time_zone"),
    "weekly": ("every", "at", "weekday", "time_zone"),
    "monthly": ("every", "at", "day", "time_zone"),
}
RECURRENCE_ANY_KEYS = frozenset(key for keys in RECURRENCE_KEYS.values() for key in keys)


def parse_recurrence(raw: Any, check: Checker) -> dict[str, Any] | None:
    """How a campaign repeats (campaigns/recurrence.py), or None (absent, null or ""): it
    does not. Any mapping is a rule, so a misspelt or missing ``every`` is refused rather
    than read as "does not repeat" (the form's "Does not repeat" posts no rule at all:
    :func:`recurrence_from_form`). Each problem is reported at its key
    (``recurrence.at``…)."""
    if raw is None or raw == "":
        return None
    if not isinstance(raw, Mapping):
        check.fail("recurrence", _("Say how the campaign repeats, or null."))
        return None
    every = raw.get("every")
    if not isinstance(every, str) or every not in RECURRENCE_KEYS:
        check.fail("recurrence.every", _("Choose daily, weekly or monthly."))
        every = None
    known = RECURRENCE_KEYS[every] if every is not None else RECURRENCE_ANY_KEYS
    for key in raw:
        if key in known:
            continue
        if every is not None:
            message = _("A campaign repeating %(every)s takes no %(key)s.") % {
                "every": every,
                "key": key,
            }
        else:
            message = _("There is no %(key)s in a repeat rule.") % {"key": key}
        check.fail(f"recurrence.{key}", message)
    if every is None:
        return None
    rule: dict[str, Any] = {"every": every}
    at = raw.get("at")
    if not isinstance(at, str) or not HH_MM.fullmatch(at.strip()):
        check.fail("recurrence.at", _("Enter a time of day as HH:MM, e.g. 09:00."))
    else:
        rule["at"] = at.strip()
    if every == "weekly":
        weekday = _rule_int(raw.get("weekday"), "recurrence.weekday", 0, 6, check)
        if weekday is None and "recurrence.weekday" not in check.errors:
            check.fail("recurrence.weekday", _("Choose a day of the week (0 Monday … 6 Sunday)."))
        rule["weekday"] = weekday
    if every == "monthly":
        day = _rule_int(raw.get("day"), "recurrence.day", 1, 31, check)
        if day is None and "recurrence.day" not in check.errors:
            check.fail("recurrence.day", _("Choose a day of the month, from 1 to 31."))
        rule["day"] = day
    zone = raw.get("time_zone")
    if not isinstance(zone, str) or not valid_timezone(zone.strip()):
        check.fail("recurrence.time_zone", _("Choose a known time zone, e.g. America/Sao_Paulo."))
    else:
        rule["time_zone"] = zone.strip()
    return rule


# ASCII digits only: str.isdigit and int() also take "٣" (Arabic-Indic three).
ASCII_WHOLE = re.compile(r"[0-9]+")


def _rule_int(raw: Any, field: str, low: int, high: int, check: Checker) -> int | None:
    """A rule's day (weekday, day of the month): a JSON integer or the form's ASCII digits,
    in [low, high]; None when absent or empty. Unlike :func:`_int`, a fraction (2.7) is
    refused, not cut to 2: a rule runs on the day it names or not at all."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if isinstance(raw, str) and ASCII_WHOLE.fullmatch(raw.strip()):
        value = int(raw.strip())
    elif isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    else:
        check.fail(field, _("Enter a whole number."))
        return None
    if not low <= value <= high:
        check.fail(
            field,
            _("Enter a number from %(low)s to %(high)s.")
            % {"low": format_number(low), "high": format_number(high)},
        )
        return None
    return value


def parse_send_window(raw: Any, check: Checker) -> dict[str, Any] | None:
    """The sending window (campaigns/send_windows.py) as stored, or None (absent or null:
    any time). ``start`` and ``end`` are HH:MM local times, different (an ``end`` before
    ``start`` crosses midnight; ``end`` may be 24:00, the end of the day); ``days`` 0
    (Monday) to 6 (Sunday), at least one: integers, or their digit as a string (the
    form's)."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        check.fail("send_window", _("Give the window's start, end and days, or null."))
        return None
    times = {}
    for key in ("start", "end"):
        value = raw.get(key)
        text = value.strip() if isinstance(value, str) else ""
        if key == "end" and text == send_windows.END_OF_DAY:
            continue
        try:
            times[key] = send_windows.parse_hhmm(text)
        except ValueError:
            check.fail(
                f"send_window.{key}",
                _("Give a time as HH:MM, like 09:00.")
                if key == "start"
                else _("Give a time as HH:MM, like 20:00, or 24:00 for the end of the day."),
            )
    end_of_day = "send_window.end" not in check.errors and "end" not in times
    if end_of_day:
        times["end"] = time(0)
    days = raw.get("days")
    if isinstance(days, str):  # the form's checkboxes, joined
        days = [day for day in days.split(",") if day.strip()]
    chosen: set[int] = set()
    if not isinstance(days, list | tuple) or not days:
        check.fail("send_window.days", _("Choose at least one day."))
    else:
        for day in days:
            # Only ASCII digits: "²" or "①" pass str.isdigit() and then fail int().
            number = int(day) if isinstance(day, str) and DAY.fullmatch(day.strip()) else day
            if isinstance(number, bool) or not isinstance(number, int) or number not in range(7):
                check.fail("send_window.days", _("Days go from 0 (Monday) to 6 (Sunday)."))
                break
            chosen.add(number)
    if len(times) == 2 and times["start"] == times["end"] and not end_of_day:
        check.fail("send_window.end", _("The window must close at another time than it opens."))
    if len(times) < 2 or not chosen or "send_window.days" in check.errors:
        return None
    window = send_windows.Window(times["start"], times["end"], frozenset(chosen), end_of_day)
    return window.as_json()


# A window's day as the form sends it.
DAY = re.compile(r"[0-6]")


def parse_time_zone_field(raw: Any, check: Checker, *, any_field: bool = False) -> str | None:
    """The customer field naming each recipient's IANA time zone, or None (absent, null or
    empty): the zone comes from the number (campaigns/time_zones.py). ``any_field``: a CSV
    audience's column (at most 64 characters), checked against its file by the service."""
    return _field_choice(raw, "time_zone_field", check, any_field=any_field)


@dataclass(frozen=True)
class CampaignFields:
    name: str
    sender_id: int
    template_id: int
    segment: dict[str, Any]
    variable_mapping: dict[str, dict[str, str]]
    # The customer field with each recipient's language; None: the template's for everyone.
    language_field: str | None = None
    # How it repeats (campaigns/recurrence.py); None: it does not.
    recurrence: dict[str, Any] | None = None
    # The local hours and days its messages go out (send_windows.py); None: any time.
    send_window: dict[str, Any] | None = None
    # The customer field naming each recipient's time zone; None: from the number.
    time_zone_field: str | None = None
    # Exclusions (campaigns/exclusions.py): the frequency cap in days (None: none), and
    # whether numbers in other running campaigns are left out.
    frequency_cap_days: int | None = None
    exclude_running: bool = False
    # A CSV audience (campaigns/audiences.py): the file and its phone column; None: the
    # ERP segment is the audience. Its mapped fields name the file's columns.
    audience_file_id: int | None = None
    audience_phone_column: str | None = None


def parse_frequency_cap(raw: Any, check: Checker, field: str = "frequency_cap_days") -> int | None:
    """A frequency cap in days, 1 to CONTACT_HISTORY_DAYS (the contact history keeps no
    longer), or None (absent, null or empty): no cap."""
    longest = int(current_app.config["CONTACT_HISTORY_DAYS"])
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if isinstance(raw, float) and not raw.is_integer():
        # int() would take 1.5 as 1: a cap the caller did not ask for.
        check.fail(field, _("Enter a whole number."))
        return None
    value = _int({field: raw}, field, check, 1, longest, 0)
    return value if 1 <= value <= longest else None


YES_WORDS = ("on", "true", "1", "yes")
NO_WORDS = ("false", "0", "no")


def parse_flag(raw: Any, check: Checker, field: str) -> bool:
    """A yes or no: JSON's true and false, or a form's checkbox ("on", absent)."""
    if raw is None or raw == "":
        return False
    if isinstance(raw, str) and raw.strip().lower() in (*YES_WORDS, *NO_WORDS):
        return raw.strip().lower() in YES_WORDS
    if not isinstance(raw, bool):
        check.fail(field, _("Say true or false."))
        return False
    return raw


def parse_bool(raw: Any, check: Checker, field: str) -> bool:
    """JSON's true or false, as the API's schema says (the caller passes false for a field
    left out); anything else, null or "on" among them, is refused. The campaign form
    sends its checkbox as a bool (:func:`campaign_data_from_form`)."""
    if not isinstance(raw, bool):
        check.fail(field, _("Say true or false."))
        return False
    return raw


def parse_campaign(data: Mapping[str, Any], template_variables: list[str] | None) -> CampaignFields:
    """A campaign as the JSON API sends it; ``template_variables`` None = unknown template."""
    check = Checker(unstorable_fields(data))
    name = _text(data, "name")
    if not name or len(name) > 200:
        check.fail("name", _("Give the campaign a name (up to 200 characters)."))
    sender_id = _int(data, "sender_id", check, 1, INTEGER_MAX, 0)
    if not sender_id:
        check.fail("sender_id", _("Choose a sender."))
    template_id = _int(data, "template_id", check, 1, INTEGER_MAX, 0)
    if not template_id or template_variables is None:
        check.fail("template_id", _("Choose an approved template."))
    segment = parse_segment(data.get("segment"), check)
    audience_file_id, phone_column = parse_audience_file(data, check)
    # A file was given, even a bad id: the fields are its columns (only the id is wrong).
    from_file = data.get("audience_file_id") not in (None, "")
    mapping = parse_mapping(
        data.get("variables") or {}, template_variables or [], check, any_field=from_file
    )
    language_field = parse_language_field(data.get("language_field"), check, any_field=from_file)
    recurrence = parse_recurrence(data.get("recurrence"), check)
    send_window = parse_send_window(data.get("send_window"), check)
    time_zone_field = parse_time_zone_field(data.get("time_zone_field"), check, any_field=from_file)
    frequency_cap_days = parse_frequency_cap(data.get("frequency_cap_days"), check)
    exclude_running = parse_bool(data.get("exclude_running", False), check, "exclude_running")
    check.done()
    return CampaignFields(
        name,
        sender_id,
        template_id,
        segment,
        mapping,
        language_field,
        recurrence=recurrence,
        send_window=send_window,
        time_zone_field=time_zone_field,
        frequency_cap_days=frequency_cap_days,
        exclude_running=exclude_running,
        audience_file_id=audience_file_id,
        audience_phone_column=phone_column,
    )


def parse_audience_file(data: Mapping[str, Any], check: Checker) -> tuple[int | None, str | None]:
    """A CSV audience's file id and phone column, or (None, None) for the ERP segment.
    That the file exists and has the column is the service's check (it reads the file)."""
    raw = data.get("audience_file_id")
    if raw is None or raw == "":
        return None, None
    # row_id reads 1.5 as 1: an id is a whole number.
    file_id = None if isinstance(raw, float) and not raw.is_integer() else row_id(raw)
    if file_id is None:
        check.fail("audience_file_id", _("Upload a CSV file for the audience."))
        return None, None
    column = data.get("audience_phone_column")
    if not isinstance(column, str) or not column.strip() or len(column) > 200:
        check.fail("audience_phone_column", _("Choose the column that holds the phone number."))
        return file_id, None
    return file_id, column


# A field's or column's option in the form's variable selects (_mapping.html): its own
# values, "text" and "track", are the other sources. A bare name is a field too.
FIELD_OPTION = "field:"


def campaign_data_from_form(form: Mapping[str, str]) -> dict[str, Any]:
    """The campaign form's flat fields (segment.x, var.x.source/text) as the API's JSON shape."""
    segment: dict[str, str | bool] = {
        key.removeprefix("segment."): value
        for key, value in form.items()
        if key.startswith("segment.") and value != ""
    }
    segment["opted_in_only"] = form.get("segment.opted_in_only") == "on"
    # The tags come as one checkbox each (the ERP's list), or typed comma-separated.
    getlist = getattr(form, "getlist", None)
    if getlist is not None:
        tags = [tag for tag in getlist("segment.tags") if tag.strip()]
        if tags:
            segment["tags"] = ",".join(tags)
    variables: dict[str, dict[str, str]] = {}
    for key, source in form.items():
        if key.startswith("var.") and key.endswith(".source"):
            name = key[len("var.") : -len(".source")]
            if source.startswith(FIELD_OPTION):
                # _mapping.html's options: any column's name, even "text" or "track"
                variables[name] = {"field": source.removeprefix(FIELD_OPTION)}
            elif source == "text":
                variables[name] = {"text": form.get(f"var.{name}.text", "")}
            elif source == TRACK:
                variables[name] = {TRACK: form.get(f"var.{name}.text", "")}
            elif source:
                variables[name] = {"field": source}
    return {
        "name": form.get("name", ""),
        "sender_id": form.get("sender_id", ""),
        "template_id": form.get("template_id", ""),
        "segment": segment,
        "variables": variables,
        "language_field": form.get("language_field", ""),
        # A CSV file, when the form's audience is one; else the ERP segment.
        # (chosen without a file: "0", which the parser refuses, asking for one)
        "audience_file_id": (form.get("audience_file_id") or "0")
        if form.get("audience_source") == "csv"
        else None,
        "audience_phone_column": form.get("audience_phone_column", ""),
        "recurrence": recurrence_from_form(form),
        "send_window": _send_window_from_form(form),
        "time_zone_field": form.get("time_zone_field", ""),
        "frequency_cap_days": form.get("frequency_cap_days", ""),
        "exclude_running": form.get("exclude_running") == "on",
    }


def _send_window_from_form(form: Mapping[str, str]) -> dict[str, Any] | None:
    """The window's fields (templates/campaigns/_window.html) in the API's shape; None when
    "any time" is chosen."""
    if form.get("send_window.mode") != "window":
        return None
    getlist = getattr(form, "getlist", None)
    days = getlist("send_window.days") if getlist is not None else []
    return {
        "start": form.get("send_window.start", ""),
        "end": form.get("send_window.end", ""),
        "days": ",".join(days),
    }


def recurrence_from_form(form: Mapping[str, str]) -> dict[str, str] | None:
    """The form's Repeat fields (templates/campaigns/_recurrence.html) in the API's shape:
    only the day that the chosen frequency takes; None for "Does not repeat"."""
    every = form.get("recurrence.every", "")
    if not every:
        return None
    keys = RECURRENCE_KEYS.get(every, ("every", "at", "time_zone"))
    return {key: form.get(f"recurrence.{key}", "") for key in keys}
