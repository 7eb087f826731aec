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
