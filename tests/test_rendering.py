from __future__ import annotations

import pytest

from campaigns import rendering
from campaigns.models import ParameterFormat

NAMED = ParameterFormat.NAMED
POSITIONAL = ParameterFormat.POSITIONAL


def test_named_variables_in_order_of_appearance():
    text = "Hi {{first_name}}, {{ discount }} off in {{city}}. Bye {{first_name}}"
    assert rendering.variables(text, NAMED) == ["first_name", "discount", "city"]


def test_positional_variables():
    assert rendering.variables("Oi {{1}}, pedido {{2}}", POSITIONAL) == ["1", "2"]


@pytest.mark.parametrize(
    ("text", "fmt", "message"),
    [
        ("Hi {{First}}", NAMED, "not a valid name"),
        ("Hi {{first-name}}", NAMED, "not a valid name"),
        ("Hi {{name}} {{name}}", NAMED, "more than once"),
        ("Hi {{name}", NAMED, "not closed"),
        ("Hi {{1}} {{3}}", POSITIONAL, "missing: {{2}}"),
        ("Hi {{2}}", POSITIONAL, "missing: {{1}}"),
        ("Hi {{2}} {{1}}", POSITIONAL, "in order"),
        ("Hi {{1}} {{1}}", POSITIONAL, "more than once"),
        ("Hi {{name}}", POSITIONAL, "not a position"),
        ("Hi {{0}}", POSITIONAL, "not a position"),
    ],
)
def test_invalid_placeholders_are_explained(text, fmt, message):
    errors = rendering.validate(text, fmt)
    assert errors, text
    assert any(message in error for error in errors), errors


@pytest.mark.parametrize(
    ("text", "fmt"),
    [("Hi {{first_name}} {{coupon_2}}", NAMED), ("{{1}} {{2}} {{3}}", POSITIONAL), ("none", NAMED)],
)
def test_valid_placeholders(text, fmt):
    assert rendering.validate(text, fmt) == []


def test_render_fills_values_and_marks_missing_ones():
    text = "Hi {{first_name}}, use {{coupon}}"
    assert rendering.render(text, NAMED, {"first_name": "Ana"}) == "Hi Ana, use [coupon]"
    assert rendering.render("{{1}}-{{2}}", POSITIONAL, {"1": "a", "2": 3}) == "a-3"


def test_sample_values_know_customer_fields():
    samples = rendering.sample_values(["first_name", "order_code"], NAMED)
    assert samples == {"first_name": "Maria", "order_code": "order code"}


class CountingText(str):
    """A text that adds up the characters its searches pass over: the scanner's work."""

    scanned = 0

    def find(self, sub, start=0, end=None):  # type: ignore[override]
        end = len(self) if end is None else end
        found = super().find(sub, start, end)
        self.scanned += (found + len(sub) if found != -1 else end) - start
        return found


PATHOLOGICAL = {
    "unclosed": lambda n: "{{" * n,
    "unclosed with names": lambda n: "{{a" * n,
    "one line each": lambda n: "{{\n" * n,
    "empty variables": lambda n: "{{}}" * n,
    "nested": lambda n: "{" * n + "}" * n,
    "closed at the end": lambda n: "{{" * n + "}}",
}


@pytest.mark.parametrize("make", PATHOLOGICAL.values(), ids=PATHOLOGICAL.keys())
def test_finding_placeholders_is_linear_in_the_text(make):
    """The old lazy regex took quadratic time on these ("{{" * 10000: over a second)."""
    work = {}
    for n in (2_500, 10_000):
        text = CountingText(make(n))
        list(rendering.placeholders(text))
        assert text.scanned <= 3 * len(text) + 3
        work[n] = text.scanned
    assert work[10_000] <= 4 * work[2_500] + 8


def test_placeholders_are_what_the_lazy_pattern_found():
    import re

    pattern = re.compile(r"\{\{(.*?)\}\}")
    for text in ("{{{1}}}", "a {{b}} {{c\n}} {{d}}", "{{ x }}}}{{y", "}}{{", "{{a}}{{b}}"):
        found = [(p.start, p.end, p.name) for p in rendering.placeholders(text)]
        assert found == [(m.start(), m.end(), m.group(1).strip()) for m in pattern.finditer(text)]


def test_a_body_over_the_limit_is_refused_before_it_is_parsed(monkeypatch):
    def no_parsing(text):
        raise AssertionError("parsed an over-length body")

    monkeypatch.setattr(rendering, "placeholders", no_parsing)
    errors = rendering.validate("{{" * 10_000, NAMED)
    assert errors == ["The body has at most 1024 characters (20000 now)."]
