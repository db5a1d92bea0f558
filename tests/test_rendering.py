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
