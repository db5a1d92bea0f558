"""Template variables: find them, validate them, fill them per customer.

Named templates use ``{{first_name}}`` (lowercase letters, digits, underscore;
each name once); positional ones use ``{{1}}``…``{{n}}`` in order, each once,
as the WhatsApp Cloud API requires. Errors are sentences fit for a form field.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from campaigns.i18n import _
from campaigns.models import ParameterFormat

# Meta's limits on a template's texts, in characters.
BODY_MAX_CHARS = 1024
HEADER_MAX_CHARS = 60
FOOTER_MAX_CHARS = 60

NAMED_VARIABLE = re.compile(r"[a-z_][a-z0-9_]*")
POSITIONAL_VARIABLE = re.compile(r"[1-9][0-9]*")

# Values shown in the live preview before a campaign maps real customer fields.
SAMPLE_VALUES = {
    "first_name": "Maria",
    "name": "Maria Silva",
    "city": "São Paulo",
    "state": "SP",
    "email": "maria@example.com",
    "phone": "+5511987654321",
    "total_spent": "1.250,00",
    "discount": "15%",
    "coupon": "FIMDESEMANA",
}


@dataclass(frozen=True)
class Placeholder:
    """One ``{{…}}`` of a text: where it starts and ends, and the name inside, trimmed."""

    start: int
    end: int
    name: str


def placeholders(text: str) -> Iterator[Placeholder]:
    """Each ``{{…}}`` of a text, left to right: what ``\\{\\{(.*?)\\}\\}`` would find.

    A scanner, not that pattern: the regex tries its lazy match again from every
    ``{{``, so a line of unclosed ``{{`` took quadratic time (20,000 characters, over
    a second). Here every search starts where the one before stopped, so each
    character is looked at a bounded number of times. Like the pattern's ``.``, a
    variable never spans a line.
    """
    line_start = 0
    while line_start <= len(text):
        line_end = text.find("\n", line_start)
        if line_end == -1:
            line_end = len(text)
        at = line_start
        while (start := text.find("{{", at, line_end)) != -1:
            close = text.find("}}", start + 2, line_end)
            if close == -1:
                break  # no "{{" after this one closes on this line either
            yield Placeholder(start, close + 2, text[start + 2 : close].strip())
            at = close + 2
        line_start = line_end + 1


def variables(text: str | None, fmt: ParameterFormat) -> list[str]:
    """The variables of a text in order of appearance (invalid ones left out)."""
    pattern = NAMED_VARIABLE if fmt is ParameterFormat.NAMED else POSITIONAL_VARIABLE
    found = []
    for placeholder in placeholders(text or ""):
        name = placeholder.name
        if pattern.fullmatch(name) and name not in found:
            found.append(name)
    return found


def _fill(text: str, fill: Callable[[str], str]) -> str:
    """The text with each placeholder replaced by ``fill(name)``."""
    pieces, at = [], 0
    for placeholder in placeholders(text):
        pieces += [text[at : placeholder.start], fill(placeholder.name)]
        at = placeholder.end
    pieces.append(text[at:])
    return "".join(pieces)


def validate(text: str | None, fmt: ParameterFormat) -> list[str]:
    """Every problem with a body and its placeholders, as user-facing sentences.

    The length is checked first, and a body over Meta's limit is not parsed at all.
    """
    text = text or ""
    if len(text) > BODY_MAX_CHARS:
        return [_("The body has at most 1024 characters (%(n)d now).") % {"n": len(text)}]
    errors: list[str] = []
    leftover = _fill(text, lambda name: "")
    if "{{" in leftover or "}}" in leftover:
        errors.append(_("A variable is not closed: write it as {{name}}."))
    names = [placeholder.name for placeholder in placeholders(text)]
    seen: set[str] = set()
    for name in names:
        if fmt is ParameterFormat.NAMED and not NAMED_VARIABLE.fullmatch(name):
            errors.append(
                _("{{%(name)s}} is not a valid name: use lowercase letters, digits and _.")
                % {"name": name}
            )
        elif fmt is ParameterFormat.POSITIONAL and not POSITIONAL_VARIABLE.fullmatch(name):
            errors.append(
                _("{{%(name)s}} is not a position: positional variables are {{1}}, {{2}}…")
                % {"name": name}
            )
        elif name in seen:
            errors.append(_("{{%(name)s}} appears more than once.") % {"name": name})
        seen.add(name)
    if fmt is ParameterFormat.POSITIONAL and not errors:
        numbers = [int(name) for name in names]
        expected = list(range(1, len(numbers) + 1))
        if sorted(numbers) != expected:
            missing = sorted(set(range(1, max(numbers, default=0) + 1)) - set(numbers))
            errors.append(
                _("Positional variables must be numbered from {{1}} without gaps; missing: %(m)s.")
                % {"m": ", ".join(f"{{{{{n}}}}}" for n in missing)}
            )
        elif numbers != expected:
            errors.append(_("Positional variables must appear in order: {{1}}, then {{2}}…"))
    return errors


def render(text: str | None, fmt: ParameterFormat, values: Mapping[str, Any]) -> str:
    """Fill a text's variables; a variable without a value stays visible as [name]."""

    def fill(name: str) -> str:
        value = values.get(name)
        return f"[{name}]" if value is None or value == "" else str(value)

    return _fill(text or "", fill)


def sample_values(names: list[str], fmt: ParameterFormat) -> dict[str, str]:
    """Plausible values for a preview: known customer fields, else the variable's name."""
    if fmt is ParameterFormat.POSITIONAL:
        samples = ["Maria", "A-1042", "15%", "São Paulo", "FIMDESEMANA"]
        return {name: samples[(int(name) - 1) % len(samples)] for name in names}
    return {name: SAMPLE_VALUES.get(name, name.replace("_", " ")) for name in names}


def customer_value(customer: Mapping[str, Any], field: str) -> str:
    """A customer field as text for a message (lists joined, numbers as written)."""
    value = customer.get(field)
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    return str(value)


def params_for(
    mapping: Mapping[str, Mapping[str, str]], customer: Mapping[str, Any]
) -> dict[str, str]:
    """The value of each template variable for one customer, from the campaign's mapping."""
    params = {}
    for name, source in mapping.items():
        if "text" in source:
            params[name] = source["text"]
        elif "field" in source:
            params[name] = customer_value(customer, source["field"])
        else:  # a tracked link: its token is made at each send (campaigns/tracked_links.py)
            params[name] = source["track"]
    return params


def is_optional(key: str) -> bool:
    """Whether a campaign may leave a variable without a value: a quick reply's payload
    (campaigns/template_parts.py), which WhatsApp replaces with the button's text."""
    return key.startswith("payload.")


def missing_params(params: Mapping[str, str]) -> list[str]:
    """Variables that would go out empty (WhatsApp refuses empty parameters)."""
    return [name for name, value in params.items() if not value.strip() and not is_optional(name)]
