from __future__ import annotations

import pytest

from campaigns.phones import normalise


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+55 11 98765-4321", "+5511987654321"),
        ("(11) 98765-4321", "+5511987654321"),
        ("011 98765 4321", "+5511987654321"),
        ("5511987654321", "+5511987654321"),
        ("0055 11 98765 4321", "+5511987654321"),
        ("+1 650 555 1234", "+16505551234"),
        ("11 3456-7890", "+551134567890"),
    ],
)
def test_normalises_to_e164(raw, expected):
    assert normalise(raw) == expected


@pytest.mark.parametrize(
    "raw", [None, "", "12345", "abc", "+0 11 2222 3333", "+55 11 9876-54321-999999"]
)
def test_rejects_what_cannot_be_a_number(raw):
    assert normalise(raw) is None
