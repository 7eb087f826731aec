"""Each action's exact semantics."""

from __future__ import annotations

from decimal import Decimal

import pytest

from deid.actions import (
    Context,
    crypto_hash,
    decrypt,
    encrypt,
    generalize,
    parse_action,
    perturb,
    scrub,
    shift_date,
    shift_days,
)


def test_crypto_hash_reproduces_the_ms_anonymizer_test_vector():
    assert crypto_hash("123", "abc") == "8f16771f9f8851b26f4d460fa17de93e2711c7e51337cb8a608a0f81e1c1b6ae"


def test_deterministic_encryption_is_joinable_and_reversible(keys):
    a, b = encrypt(keys, {"deterministic": True}, "M0000001"), encrypt(keys, {"deterministic": True}, "M0000001")
    assert a == b and a.startswith(f"enc:siv:{keys.key_id}:") and "M0000001" not in a
    assert decrypt(keys, a) == "M0000001"


def test_randomised_encryption_differs_each_time_and_is_authenticated(keys):
    a, b = encrypt(keys, {"deterministic": False}, "x"), encrypt(keys, {"deterministic": False}, "x")
    assert a != b and decrypt(keys, a) == decrypt(keys, b) == "x"
    tampered = a[:-4] + ("AAAA" if not a.endswith("AAAA") else "BBBB")
    with pytest.raises(Exception):  # noqa: B017 - cryptography raises InvalidTag
        decrypt(keys, tampered)


def test_date_shift_keeps_precision_and_offset():
    assert shift_date("2024-03-05", 10) == "2024-03-15"
    assert shift_date("2024-03-05T23:30:00+08:00", 1) == "2024-03-06T23:30:00+08:00"
    assert shift_date("2024-03", 10) == "2024-03"  # month precision: kept as is
    assert shift_date("2024-12-31T00:00:00Z", 1) == "2025-01-01T00:00:00Z"


def test_shift_is_per_patient_in_range_and_weekly_when_asked(keys):
    days = {shift_days(keys, f"patient-{i}", 50) for i in range(200)}
    assert all(0 < abs(d) <= 50 for d in days) and len(days) > 30
    assert shift_days(keys, "p", 50) == shift_days(keys, "p", 50)
    assert all(shift_days(keys, f"patient-{i}", 50, weeks=True) % 7 == 0 for i in range(50))


@pytest.mark.parametrize(
    ("params", "value", "expected"),
    [
        ({"to": "year"}, "1990-03-07", "1990"),
        ({"birth_year_top": 90, "reference_year": 2026}, "1930-05-01", "1936"),
        ({"birth_year_top": 90, "reference_year": 2026}, "1950-05-01", "1950"),
        ({"prefix": 4}, "330106", "3301"),
        ({"round": 1}, Decimal("7.46"), Decimal("7.5")),
        ({"round": -1}, Decimal("137"), Decimal("140")),
    ],
)
def test_generalize(params, value, expected):
    assert generalize(params, value) == expected


def test_perturb_is_keyed_reproducible_bounded_and_keeps_precision(keys):
    values = [perturb(keys, {"relative": 0.05}, Decimal("100.0"), f"Observation/o{i}/valueQuantity.value") for i in range(100)]
    assert all(Decimal("95.0") <= v <= Decimal("105.0") for v in values)
    assert all(v.as_tuple().exponent == -1 for v in values)
    assert len(set(values)) > 20
    again = perturb(keys, {"relative": 0.05}, Decimal("100.0"), "Observation/o0/valueQuantity.value")
    assert again == values[0]


def test_scrub_replaces_ids_phones_and_known_names():
    text = "患者李娜(110101199003074610)电话13800138000，复诊"
    assert scrub(text, ("李娜",)) == "患者[identifier]([id-number])电话[phone]，复诊"


@pytest.mark.parametrize("spec", ["shred", {"generalize": {"to": "year", "prefix": 2}}, {"perturb": {}}, {"date_shift": {"days": 3}}])
def test_bad_action_specs_are_refused(spec):
    with pytest.raises(ValueError):
        parse_action(spec)


def test_date_shift_without_a_patient_is_an_error(keys):
    from deid.actions import MissingPatient, value_function

    fn = value_function(parse_action({"date_shift": {}}), keys)
    with pytest.raises(MissingPatient):
        fn("2024-03-05", Context("Observation", "o1", None), "Observation.effectiveDateTime")
