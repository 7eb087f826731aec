"""Value parsers: vendor dates with time zone, lab values, reference ranges."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from hub.mapping.values import (
    ValueProblem,
    parse_date,
    parse_datetime,
    parse_decimal,
    parse_lab_value,
    parse_reference_range,
)

CST = dt.timezone(dt.timedelta(hours=8))


def test_local_datetime_gets_source_offset():
    assert parse_datetime("20240305083000", ("%Y%m%d%H%M%S",), CST) == "2024-03-05T08:30:00+08:00"


def test_second_format_is_tried():
    assert parse_datetime("2024-03-05 08:30", ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M"), CST) == "2024-03-05T08:30:00+08:00"


def test_unparseable_datetime_names_expected_format():
    with pytest.raises(ValueProblem) as exc:
        parse_datetime("2024-02-30 25:61:00", ("%Y-%m-%d %H:%M:%S",), CST)
    assert "e.g. 2024-03-05 08:30:00" in exc.value.expected


def test_database_datetime_objects_are_accepted():
    assert parse_datetime(dt.datetime(2024, 3, 5, 8, 30), (), CST) == "2024-03-05T08:30:00+08:00"
    assert parse_date(dt.date(1990, 3, 7), ()) == "1990-03-07"


def test_compact_birth_date():
    assert parse_date("19900307", ("%Y%m%d",)) == "1990-03-07"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("5.6", (None, Decimal("5.6"))),
        ("1.50", (None, Decimal("1.50"))),
        ("<0.01", ("<", Decimal("0.01"))),
        ("> 1000", (">", Decimal("1000"))),
        ("≤5", ("<=", Decimal("5"))),
        ("阴性", "阴性"),
        ("1+", "1+"),
        ("See comments", "See comments"),
    ],
)
def test_lab_values(raw, expected):
    assert parse_lab_value(raw) == expected


def test_decimal_keeps_written_precision():
    assert str(parse_decimal("1.50")) == "1.50"


def test_not_a_number():
    with pytest.raises(ValueProblem):
        parse_decimal("1,2")


@pytest.mark.parametrize(
    ("raw", "low", "high"),
    [("3.9-6.1", "3.9", "6.1"), ("3.9~6.1", "3.9", "6.1"), ("<5.2", None, "5.2"), (">1.0", "1.0", None), ("阴性", None, None)],
)
def test_reference_ranges(raw, low, high):
    lo, hi, text = parse_reference_range(raw)
    assert (str(lo) if lo is not None else None, str(hi) if hi is not None else None, text) == (low, high, raw)


# -- two-digit years, time zones, bounds, numbers in words (issue 13) --------------------------

def test_two_digit_year_is_read_from_the_pivot():
    from hub.mapping.values import DateFormat

    born = (DateFormat("%m/%d/%y", 1930),)
    assert parse_date("10/23/64", born) == "1964-10-23"  # Python alone: 2064
    assert parse_date("10/23/29", born) == "2029-10-23"
    assert parse_date("10/23/30", born) == "1930-10-23"
    with pytest.raises(ValueProblem):  # 1900 was not a leap year
        parse_date("02/29/00", (DateFormat("%m/%d/%y", 1850),))


def test_iana_zones_follow_daylight_saving():
    from zoneinfo import ZoneInfo

    ny, sh = ZoneInfo("America/New_York"), ZoneInfo("Asia/Shanghai")
    assert parse_datetime("2024-01-15 08:00:00", ("%Y-%m-%d %H:%M:%S",), ny) == "2024-01-15T08:00:00-05:00"
    assert parse_datetime("2024-07-15 08:00:00", ("%Y-%m-%d %H:%M:%S",), ny) == "2024-07-15T08:00:00-04:00"
    assert parse_datetime("1988-07-15 08:00:00", ("%Y-%m-%d %H:%M:%S",), sh) == "1988-07-15T08:00:00+09:00"  # China kept DST 1986-91
    assert parse_datetime("2024-07-15 08:00:00", ("%Y-%m-%d %H:%M:%S",), sh) == "2024-07-15T08:00:00+08:00"
    with pytest.raises(ValueProblem, match="does not exist"):
        parse_datetime("2024-03-10 02:30:00", ("%Y-%m-%d %H:%M:%S",), ny)
    with pytest.raises(ValueProblem, match="does not exist"):  # a database datetime object is checked too
        parse_datetime(dt.datetime(2024, 3, 10, 2, 30), (), ny)


def test_date_bounds_refuse_implausible_dates():
    from hub.mapping.values import DateBounds

    now = dt.datetime(2024, 6, 1, 12, tzinfo=dt.UTC)
    check = DateBounds().checker(CST, now)
    check("1900-01-01")
    check("2024-06-02T19:00:00+08:00")  # within a day of now
    for bad in ("1899-12-31", "9999-12-31", "2024-06-02T21:00:00+08:00", "2024-06-03"):
        with pytest.raises(ValueProblem, match="implausible"):
            check(bad)
    DateBounds(None, None).checker(CST, now)("0001-01-01")  # both bounds switched off


@pytest.mark.parametrize("raw", ["7" * 5000, "1" * 29, "0." + "0" * 28 + "1", 10**40])
def test_decimals_beyond_what_fhir_carries_are_refused(raw):
    with pytest.raises(ValueProblem, match="more than a FHIR decimal carries"):
        parse_decimal(raw)
    if isinstance(raw, str):
        with pytest.raises(ValueProblem):
            parse_lab_value(raw)


def test_decimal_at_the_limit_is_kept():
    assert str(parse_decimal("1" * 28)) == "1" * 28
    assert str(parse_decimal("0.000123")) == "0.000123"


@pytest.mark.parametrize("raw", ["2147483648", "-2147483649", "9" * 5000, 2**31])
def test_integers_beyond_32_bits_are_refused(raw):
    from hub.mapping.values import parse_integer

    with pytest.raises(ValueProblem, match="too large for a FHIR integer"):
        parse_integer(raw)


def test_thousands_separator_needs_groups_of_three():
    from hub.mapping.values import decimal_parser

    parse = decimal_parser(",")
    assert parse("25,000") == Decimal("25000") and parse("1,234,567.50") == Decimal("1234567.50")
    for bad in ("1,2", "25,00", ",000", "1,,000"):
        with pytest.raises(ValueProblem):
            parse(bad)
    with pytest.raises(ValueProblem):
        parse_decimal("25,000")  # without the option a comma is never a separator


@pytest.mark.parametrize(("raw", "expected"), [
    ("GREATER THAN 2000", (">", Decimal("2000"))), ("greater than or equal to 5", (">=", Decimal("5"))),
    ("大于2000", (">", Decimal("2000"))), ("小于0.1", ("<", Decimal("0.1"))), ("大于等于 3", (">=", Decimal("3"))),
    ("＜0.5", ("<", Decimal("0.5"))), ("大于", "大于"), ("GREATER THAN", "GREATER THAN"),
])
def test_comparator_words(raw, expected):
    assert parse_lab_value(raw) == expected


def test_a_lines_own_comparator_words_and_thousands():
    from hub.mapping.values import LabValueParser

    parse = LabValueParser(",", {"ABOVE": ">"})
    assert parse("above 1,000") == (">", Decimal("1000"))
    assert parse("12,500") == (None, Decimal("12500"))
    assert parse("1+") == "1+"


@pytest.mark.parametrize(("raw", "low", "high"), [("325-650", "325", "650"), ("325 ~ 650", "325", "650"), ("1,000-2,000", "1000", "2000"), ("0.5 to 1", "0.5", "1")])
def test_ranges(raw, low, high):
    from hub.mapping.values import range_parser

    assert tuple(map(str, range_parser(",")(raw))) == (low, high)


@pytest.mark.parametrize("raw", ["650", "650-325", "a-b", "325-650-900"])
def test_not_ranges(raw):
    from hub.mapping.values import range_parser

    with pytest.raises(ValueProblem):
        range_parser(",")(raw)


def test_boolean_refuses_what_is_neither():
    from hub.mapping.values import parse_boolean

    assert parse_boolean("是") is True and parse_boolean("N") is False
    with pytest.raises(ValueProblem):
        parse_boolean("maybe")
