from __future__ import annotations

import random

import pytest

from campaigns import phones
from campaigns.phones import is_known_region, normalise


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+55 11 98765-4321", "+5511987654321"),
        ("+55 (11) 98765-4321", "+5511987654321"),
        ("(11) 98765-4321", "+5511987654321"),
        ("11987654321", "+5511987654321"),
        ("011 98765 4321", "+5511987654321"),
        ("5511987654321", "+5511987654321"),
        ("55 11 98765-4321", "+5511987654321"),
        ("0055 11 98765 4321", "+5511987654321"),
        ("+55\u00a011\u00a098765\u20134321", "+5511987654321"),
        ("+55 11 98765 4321\n", "+5511987654321"),
        # Invisible format characters a copied number carries: the CSV export's word
        # joiner, a direction mark, a zero-width space, a byte order mark.
        ("\u2060+5511987654321", "+5511987654321"),
        ("\u200e(11) 98765\u200b-4321\ufeff", "+5511987654321"),
        ("11 3456-7890", "+551134567890"),
        ("+55 11 4000-0000", "+551140000000"),
        ("55 98765 4321", "+5555987654321"),
    ],
)
def test_brazilian_numbers_as_operators_type_them(raw, expected):
    assert normalise(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # National with a carrier (trunk) code after the 0, and its "xx" placeholder:
        # the old code refused them although its docstring promised them.
        ("0 21 11 98765-4321", "+5511987654321"),
        ("021 11 98765 4321", "+5511987654321"),
        ("0xx11 98765-4321", "+5511987654321"),
        ("0XX11 98765-4321", "+5511987654321"),
        ("(0xx11) 3456-7890", "+551134567890"),
        ("0 xx 21 98765 4321", "+5521987654321"),
        # International through a carrier, as dialled from Brazil.
        ("0021 55 11 98765 4321", "+5511987654321"),
    ],
)
def test_trunk_and_carrier_prefixes(raw, expected):
    assert normalise(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("(11) 8765-4321", "+5511987654321"),
        ("11 6876-5432", "+5511968765432"),
        ("+55 21 9876-5432", "+5521998765432"),
        ("551187654321", "+5511987654321"),
        ("0055 11 8765 4321", "+5511987654321"),
        ("0xx21 8765-4321", "+5521987654321"),
        # A landline (2-5) keeps its 8 digits.
        ("11 2345-6789", "+551123456789"),
        ("11 5234-5678", "+551152345678"),
    ],
)
def test_old_eight_digit_mobiles_get_the_ninth_digit(raw, expected):
    assert normalise(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+1 650 253 0000", "+16502530000"),
        ("+1 650 555 1234", "+16505551234"),
        ("+44 20 7946 0958", "+442079460958"),
        ("0044 20 7946 0958", "+442079460958"),
    ],
)
def test_other_countries_with_their_country_code(raw, expected):
    assert normalise(raw) == expected


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("(650) 253-0000", "US", "+16502530000"),
        ("1 650 253 0000", "US", "+16502530000"),
        ("011 44 20 7946 0958", "US", "+442079460958"),
        ("+55 11 98765-4321", "US", "+5511987654321"),
        ("+55 11 8765-4321", "US", "+5511987654321"),
        ("020 7946 0958", "GB", "+442079460958"),
        ("11 98765-4321", "br", "+5511987654321"),
    ],
)
def test_another_default_region(raw, region, expected):
    assert normalise(raw, region) == expected


@pytest.mark.parametrize(
    ("raw", "region"),
    [
        ("11 98765-4321", "US"),  # a Brazilian national number means nothing in the US
        ("(650) 253-0000", "BR"),  # nor a US one in Brazil
        ("4420 7946 0958", "BR"),  # a foreign number needs + or 00
        ("11 98765-4321", "ZZ"),  # unknown region: only +… numbers could be read
    ],
)
def test_national_numbers_belong_to_their_region(raw, region):
    assert normalise(raw, region) is None


@pytest.mark.parametrize(
    "raw",
    [
        # Numbers no Brazilian operator issues, which the old code let through.
        "1100000000",
        "11 0000-0000",
        "(10) 98765-4321",
        "(10) 3456-7890",
        "11 1234-5678",
        "+0 11 2222 3333",
    ],
)
def test_refuses_numbers_that_do_not_exist(raw):
    assert normalise(raw) is None


@pytest.mark.parametrize(
    "raw",
    [
        None,
        "",
        "   ",
        "+",
        "0",
        "00",
        "55",
        "+55",
        "12345",
        "abc",
        "()--..//",
        "+551191",
        "+55 11 9876-54321-999999",
        "+55 11 98765 432 10",
        "55+11987654321",
        "+5511987654321 ramal 12",
        # Letters are typos, never keypad digits.
        "1-800-FLOWERS",
        "+551198765OIZE",
        "11 9876A-4321",
        "\x00\x01",
        "²¹ 98765 4321",
        "9" * 1000,
        "+" + "5" * 63,
        "1 " * 40,
    ],
)
def test_rejects_what_cannot_be_a_number(raw):
    assert normalise(raw) is None


def _in_digits(text: str, zero: str) -> str:
    """The ASCII digits of ``text`` written with another script's digits."""
    return "".join(chr(ord(zero) + int(c)) if c.isdigit() else c for c in text)


@pytest.mark.parametrize(
    "raw",
    [
        _in_digits("11 98765-4321", "\uff10"),  # full-width
        _in_digits("11 98765-4321", "\u0660"),  # Arabic-Indic
        "\uff0b" + _in_digits("55 11 98765 4321", "\uff10"),  # with a full-width plus
    ],
)
def test_other_decimal_digits_count(raw):
    assert normalise(raw) == "+5511987654321"


def test_never_raises_on_any_string():
    alphabet = "0123456789+-()./ xX\u00a0\uff0b\uff11\u0661²abcé#*;,\x00\U0001f4de"
    rng = random.Random(20240611)
    for _ in range(5000):
        raw = "".join(rng.choices(alphabet, k=rng.randint(0, 40)))
        result = normalise(raw)
        assert result is None or (result.startswith("+") and result[1:].isdigit())


def test_known_regions():
    assert is_known_region("BR")
    assert is_known_region("US")
    assert not is_known_region("ZZ")
    assert not is_known_region("br")


def test_the_brazilian_shortcut_reads_numbers_as_parse_does(monkeypatch):
    """Every shape the shortcut takes, read with and without it: the same answer."""
    rng = random.Random(4321)
    samples = []
    for _ in range(3000):
        national = str(rng.randint(10, 99)) + "".join(
            rng.choices("0123456789", k=rng.choice([8, 9]))
        )
        samples += [national, "+55" + national, "0" + national, "90" + national[:10]]
    with_shortcut = [normalise(raw) for raw in samples]
    monkeypatch.setattr(phones, "_brazilian_without_prefix", lambda text, region: None)
    assert with_shortcut == [normalise(raw) for raw in samples]
    assert sum(n is not None for n in with_shortcut) > 3000  # valid ones were among them
