"""Parsers for source values: dates in vendor formats, numbers, lab results, reference ranges.

Each parser returns a FHIR-ready value or raises ValueProblem saying what was wrong and
what was expected, in words a hospital IT person can act on.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from decimal import Decimal, InvalidOperation


class ValueProblem(ValueError):
    """A source value that cannot become the FHIR value asked for."""

    def __init__(self, problem: str, expected: str):
        self.problem, self.expected = problem, expected
        super().__init__(f"{problem}; expected {expected}")


def _example(fmt: str) -> str:
    return dt.datetime(2024, 3, 5, 8, 30, 0).strftime(fmt)


def parse_datetime(value: object, formats: tuple[str, ...], tz: dt.timezone) -> str:
    """A FHIR dateTime with offset from a source timestamp in one of the given formats."""
    if isinstance(value, str):
        return _parse_datetime_text(value, formats, tz)  # cached: one order's results share their times
    return _parse_datetime(value, formats, tz)


@functools.lru_cache(maxsize=65536)
def _parse_datetime_text(value: str, formats: tuple[str, ...], tz: dt.timezone) -> str:
    return _parse_datetime(value, formats, tz)


def _parse_datetime(value: object, formats: tuple[str, ...], tz: dt.timezone) -> str:
    if isinstance(value, dt.datetime):
        parsed = value
    elif isinstance(value, dt.date):
        return value.isoformat()
    else:
        text = str(value).strip()
        parsed = None
        for fmt in formats:
            try:
                parsed = dt.datetime.strptime(text, fmt)
                break
            except ValueError:
                continue
        if parsed is None:
            raise ValueProblem(
                "is not a date-time in the configured formats",
                " or ".join(f"{f} (e.g. {_example(f)})" for f in formats),
            )
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)
    return parsed.isoformat(timespec="seconds")


def parse_date(value: object, formats: tuple[str, ...]) -> str:
    """A FHIR date (YYYY-MM-DD) from a source date in one of the given formats."""
    if isinstance(value, dt.datetime):
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    text = str(value).strip()
    for fmt in formats:
        try:
            return dt.datetime.strptime(text, fmt).date().isoformat()
        except ValueError:
            continue
    raise ValueProblem(
        "is not a date in the configured formats",
        " or ".join(f"{f} (e.g. {_example(f)})" for f in formats),
    )


_NUMBER_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)$")


def parse_decimal(value: object) -> Decimal:
    """A Decimal keeping the written precision ("1.50" stays 1.50)."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    text = str(value).strip()
    if not _NUMBER_RE.match(text):
        raise ValueProblem("is not a number", "a decimal like 1.2")
    try:
        return Decimal(text)
    except InvalidOperation:
        raise ValueProblem("is not a number", "a decimal like 1.2") from None


def parse_integer(value: object) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueProblem("is not a whole number", "an integer like 3") from None


_COMPARATOR_RE = re.compile(r"^\s*(<=|>=|<|>|≤|≥)\s*([-+]?(?:\d+\.?\d*|\.\d+))\s*$")
_COMPARATORS = {"≤": "<=", "≥": ">="}


def parse_lab_value(value: object) -> tuple[str | None, Decimal] | str:
    """A lab result as (comparator or None, Decimal) when numeric, else its stripped text."""
    if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        return (None, parse_decimal(value))
    text = str(value).strip()
    if _NUMBER_RE.match(text):
        return (None, Decimal(text))
    m = _COMPARATOR_RE.match(text)
    if m:
        return (_COMPARATORS.get(m.group(1), m.group(1)), Decimal(m.group(2)))
    return text


_RANGE_RE = re.compile(
    r"^\s*([-+]?(?:\d+\.?\d*|\.\d+))\s*(?:-|~|～|—|–|to)\s*([-+]?(?:\d+\.?\d*|\.\d+))\s*$"
)


def parse_reference_range(value: object) -> tuple[Decimal | None, Decimal | None, str]:
    """(low, high, text) from "3.9-6.1", "3.9~6.1", "<5.2", ">1.0"; text-only ranges give (None, None, text)."""
    text = str(value).strip()
    m = _RANGE_RE.match(text)
    if m:
        return Decimal(m.group(1)), Decimal(m.group(2)), text
    m = _COMPARATOR_RE.match(text)
    if m:
        op = _COMPARATORS.get(m.group(1), m.group(1))
        bound = Decimal(m.group(2))
        return (None, bound, text) if op.startswith("<") else (bound, None, text)
    return None, None, text
