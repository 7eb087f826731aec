"""GB 11643 resident ID numbers and mobile numbers."""

from __future__ import annotations

import pytest

from hub.identifiers import (
    find_mobile_numbers,
    find_resident_ids,
    is_valid_resident_id,
    redact_identifiers,
    resident_id_check_char,
)


@pytest.mark.parametrize("number", ["110101199003074610", "11010119900307002X", "11010119900307002x"])
def test_valid_check_digits(number):
    assert is_valid_resident_id(number)


@pytest.mark.parametrize("number", ["110101199003074611", "11010119900307002Y", "1101011990030746", "", None, "A10101199003074610"])
def test_invalid_numbers(number):
    assert not is_valid_resident_id(number)


def test_a_random_number_with_a_matching_check_digit_but_no_real_birth_date_is_not_an_id():
    first17 = "39936931392054492"  # a snapshot id, not a date in digits 7-14
    assert not is_valid_resident_id(first17 + resident_id_check_char(first17))


def test_check_char_computation():
    assert resident_id_check_char("11010119900307461") == "0"
    assert resident_id_check_char("11010119900307002") == "X"


def test_find_in_text_only_valid_numbers():
    text = "患者身份证110101199003074610，另一号码110101199003074611"
    assert find_resident_ids(text) == ["110101199003074610"]


def test_mobile_numbers_with_prefixes():
    assert find_mobile_numbers("电话13800138000或+8613900139000，座机057187654321") == ["13800138000", "+8613900139000"]


def test_redaction():
    assert redact_identifiers("id 110101199003074610 tel 13800138000") == "id [id-number] tel [phone]"
