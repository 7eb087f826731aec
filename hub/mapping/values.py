"""Parsers for source values: dates in vendor formats, numbers, lab results, ranges, bounds.

Each parser returns a FHIR-ready value or raises ValueProblem saying what was wrong and
what was expected, in words a hospital IT person can act on (never repeating the value).
Parsers that depend on a mapping line's options (thousands separators, comparator words,
date bounds) are built once when the mapping compiles and called per row.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation


class ValueProblem(ValueError):
    """A source value that cannot become the FHIR value asked for."""

    def __init__(self, problem: str, expected: str):
        self.problem, self.expected = problem, expected
        super().__init__(f"{problem}; expected {expected}")


@dataclass(frozen=True)
class DateFormat:
    """A strptime format; ``pivot`` reads two-digit years (``%y``) as pivot .. pivot + 99.

    Python's own rule (69-99 -> 19xx, 00-68 -> 20xx) is never used: a format with ``%y``
    must say its pivot, so ``10/23/64`` is 1964 only because the mapping says so.
    """

    format: str
    pivot: int | None = None

    def __str__(self) -> str:
        return self.format if self.pivot is None else f"{self.format} (two-digit years from {self.pivot})"


Format = str | DateFormat


def _example(fmt: Format) -> str:
    return dt.datetime(2024, 3, 5, 8, 30, 0).strftime(fmt if isinstance(fmt, str) else fmt.format)


def _expected(formats: tuple[Format, ...]) -> str:
    return " or ".join(f"{f} (e.g. {_example(f)})" for f in formats)


def _strptime(text: str, fmt: Format) -> dt.datetime:
    if isinstance(fmt, str):
        fixed = _fixed_width(fmt)
        m = fixed.fullmatch(text) if fixed is not None else None
        if m is not None:
            try:
                return dt.datetime(*map(int, m.groups()))
            except ValueError:
                pass  # strptime says why (or reads the digits another way)
        return dt.datetime.strptime(text, fmt)
    parsed = dt.datetime.strptime(text, fmt.format)
    if fmt.pivot is not None:  # ValueError for 29 February of a century that is not a leap year
        parsed = parsed.replace(year=fmt.pivot + (parsed.year % 100 - fmt.pivot % 100) % 100)
    return parsed


_FIELDS = {"Y": r"([0-9]{4})", "m": r"([0-9]{2})", "d": r"([0-9]{2})", "H": r"([0-9]{2})", "M": r"([0-9]{2})", "S": r"([0-9]{2})"}


@functools.cache
def _fixed_width(fmt: str) -> re.Pattern | None:
    """For a format of %Y %m %d, optionally %H %M %S, in that order, and other characters than
    '%': the pattern of its every field written in full with ASCII digits ("2024-03-05 08:30:00").
    A text it matches parses to the same fields as strptime's: strptime tries each field's two-digit
    forms first and needs the whole text, so a text of full-width fields gives the same parse, or
    fails in datetime() as it would."""
    parts = re.split(r"(%.)", fmt)
    names = [p[1] for p in parts[1::2]]
    if names not in (list("Ymd"), list("YmdH"), list("YmdHM"), list("YmdHMS")):
        return None
    return re.compile("".join(_FIELDS[p[1]] if i % 2 else re.escape(p) for i, p in enumerate(parts)))


def parse_datetime(value: object, formats: tuple[Format, ...], tz: dt.tzinfo) -> str:
    """A FHIR dateTime with offset from a source timestamp in one of the given formats.

    tz is a fixed offset or an IANA zone (``zoneinfo.ZoneInfo``): a local time gets the
    offset in force at that instant (daylight saving included); a local time that does not
    exist (skipped when clocks go forward) is refused; an ambiguous one (clocks go back)
    is read as its first occurrence.
    """
    if isinstance(value, str):
        return _parse_datetime_text(value, formats, tz)  # cached: one order's results share their times
    return _parse_datetime(value, formats, tz)


@functools.lru_cache(maxsize=65536)
def _parse_datetime_text(value: str, formats: tuple[Format, ...], tz: dt.tzinfo) -> str:
    return _parse_datetime(value, formats, tz)


def _parse_datetime(value: object, formats: tuple[Format, ...], tz: dt.tzinfo) -> str:
    if isinstance(value, dt.datetime):
        parsed = value
    elif isinstance(value, dt.date):
        return value.isoformat()
    else:
        text = str(value).strip()
        parsed = None
        for fmt in formats:
            try:
                parsed = _strptime(text, fmt)
                break
            except ValueError:
                continue
        if parsed is None:
            raise ValueProblem("is not a date-time in the configured formats", _expected(formats))
    if parsed.tzinfo is None:
        local = parsed
        parsed = parsed.replace(tzinfo=tz)
        if not isinstance(tz, dt.timezone) and parsed.astimezone(dt.UTC).astimezone(tz).replace(tzinfo=None) != local:
            raise ValueProblem(
                f"is a local time that does not exist in {tz} (skipped when clocks went forward)",
                "a local time outside the daylight-saving gap (check the source clock)",
            )
    return parsed.isoformat(timespec="seconds")


def parse_date(value: object, formats: tuple[Format, ...]) -> str:
    """A FHIR date (YYYY-MM-DD) from a source date in one of the given formats."""
    if isinstance(value, dt.datetime):
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    text = str(value).strip()
    for fmt in formats:
        try:
            return _strptime(text, fmt).date().isoformat()
        except ValueError:
            continue
    raise ValueProblem("is not a date in the configured formats", _expected(formats))


# -- date plausibility -------------------------------------------------------------------

_RELATIVE_RE = re.compile(r"^now\s*(?:\+\s*(\d+)\s*(d|h|days?|hours?))?$")


def relative_bound(spec: str) -> dt.timedelta | None:
    """``now``, ``now+1d``, ``now + 12h`` as the margin after now; None when spec is not relative."""
    m = _RELATIVE_RE.match(spec.strip())
    if not m:
        return None
    if m.group(1) is None:
        return dt.timedelta(0)
    n = int(m.group(1))
    return dt.timedelta(days=n) if m.group(2).startswith("d") else dt.timedelta(hours=n)


@dataclass(frozen=True)
class DateBounds:
    """Plausible range of a date or dateTime line: ``not_before`` a date, ``not_after`` a date
    or now plus a margin (evaluated when the mapping compiles, i.e. once per run)."""

    not_before: dt.date | None = dt.date(1900, 1, 1)
    not_after: dt.date | dt.timedelta | None = dt.timedelta(days=1)

    def checker(self, tz: dt.tzinfo, now: dt.datetime | None = None) -> Callable[[str], None]:
        """A function raising ValueProblem for an ISO date or dateTime outside the bounds."""
        low = self.not_before.isoformat() if self.not_before else None
        if isinstance(self.not_after, dt.timedelta):
            latest = (now or dt.datetime.now(dt.UTC)) + self.not_after
            margin = self.not_after
            high_day = latest.astimezone(tz).date().isoformat()
            high_text = "now" if not margin else f"now + {_span(margin)}"
        elif self.not_after is not None:
            latest = dt.datetime.combine(self.not_after, dt.time.max, tz)
            high_day, high_text = self.not_after.isoformat(), self.not_after.isoformat()
        else:
            latest = high_day = high_text = None
        # a dateTime is compared as an instant only near the bound: offsets differ by at most a day
        near_day = (latest.astimezone(tz) - dt.timedelta(days=2)).date().isoformat() if latest is not None else None

        def check(iso: str) -> None:
            day = iso[:10]
            if low is not None and day < low:
                raise ValueProblem(f"is an implausible date, before {low}", f"a date on or after {low} (not_before: on the line changes the bound)")
            if high_day is None or day < near_day:
                return
            if (day > high_day) if len(iso) == 10 else (dt.datetime.fromisoformat(iso) > latest):
                raise ValueProblem(f"is an implausible date, after {high_text}", f"a date no later than {high_text} (not_after: on the line changes the bound)")

        return check


def _span(delta: dt.timedelta) -> str:
    if delta.seconds == 0:
        return f"{delta.days} day" + ("s" if delta.days != 1 else "")
    hours = int(delta.total_seconds() // 3600)
    return f"{hours} hour" + ("s" if hours != 1 else "")


# -- numbers -------------------------------------------------------------------------------

#: FHIR decimals are exchanged as JSON numbers; beyond 28 significant digits (Python's
#: decimal context, above any IEEE or database numeric type in use) a value cannot travel.
MAX_DIGITS = 28
#: FHIR integer: a signed 32-bit value.
INT_MIN, INT_MAX = -(2**31), 2**31 - 1

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)"
_NUMBER_RE = re.compile(rf"^{_NUMBER}$")


def _check_digits(text: str) -> None:
    whole, _, frac = text.lstrip("+-").partition(".")
    significant = len((whole + frac).lstrip("0"))
    if significant > MAX_DIGITS or len(frac) > MAX_DIGITS:
        count = f"{max(significant, len(frac)):,} digits"
        raise ValueProblem(f"has {count}, more than a FHIR decimal carries", f"at most {MAX_DIGITS} significant digits and {MAX_DIGITS} decimals")


def _grouped(thousands: str | None) -> re.Pattern | None:
    if not thousands:
        return None
    sep = re.escape(thousands)
    return re.compile(rf"^[-+]?\d{{1,3}}(?:{sep}\d{{3}})+(?:\.\d+)?$")


def decimal_parser(thousands: str | None = None) -> Callable[[object], Decimal]:
    """parse_decimal, also reading thousands separators (``25,000``) when one is given.

    Groups must be of three digits, so with ``thousands: ","`` a decimal comma (``1,2``)
    is still refused rather than read as twelve.
    """
    grouped = _grouped(thousands)
    if grouped is None:
        return parse_decimal

    def parse(value: object) -> Decimal:
        if isinstance(value, str) and thousands in value and grouped.match(value.strip()):
            value = value.strip().replace(thousands, "")
        return parse_decimal(value)

    return parse


def parse_decimal(value: object) -> Decimal:
    """A Decimal keeping the written precision ("1.50" stays 1.50), within MAX_DIGITS."""
    if isinstance(value, bool):
        raise ValueProblem("is not a number", "a decimal like 1.2")
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueProblem("is not a finite number", "a decimal like 1.2")
        _check_digits(format(value, "f"))
        return value
    if isinstance(value, int):
        _check_digits(str(abs(value)) if abs(value) < 10**(MAX_DIGITS + 1) else "1" * (MAX_DIGITS + 1))
        return Decimal(value)
    if isinstance(value, float):
        value = repr(value)
        if not _NUMBER_RE.match(value):  # nan, inf, 1e+300
            raise ValueProblem("is not a plain decimal number", "a decimal like 1.2")
    text = str(value).strip()
    if not _NUMBER_RE.match(text):
        raise ValueProblem("is not a number", "a decimal like 1.2")
    _check_digits(text)
    try:
        return Decimal(text)
    except InvalidOperation:
        raise ValueProblem("is not a number", "a decimal like 1.2") from None


_INT_RE = re.compile(r"^[-+]?\d+$")


def parse_integer(value: object) -> int:
    """A FHIR integer (signed 32-bit)."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        text = str(value).strip()
        if not _INT_RE.match(text):
            raise ValueProblem("is not a whole number", "an integer like 3")
        if len(text.lstrip("+-").lstrip("0")) > 10:
            raise ValueProblem("is a whole number too large for a FHIR integer", f"an integer from {INT_MIN} to {INT_MAX}")
        number = int(text)
    if not INT_MIN <= number <= INT_MAX:
        raise ValueProblem("is a whole number too large for a FHIR integer", f"an integer from {INT_MIN} to {INT_MAX}")
    return number


_TRUE = frozenset({"1", "true", "t", "y", "yes", "是"})
_FALSE = frozenset({"0", "false", "f", "n", "no", "否"})


def parse_boolean(value: object) -> bool:
    """A FHIR boolean from 1/0, true/false, y/n, yes/no, 是/否 (anything else is refused)."""
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueProblem("is not a yes/no value", "1/0, true/false, y/n, yes/no or 是/否")


# -- lab results ---------------------------------------------------------------------------

#: Comparator words every lab_value line reads; a line's ``comparators:`` option adds more.
COMPARATOR_WORDS = {
    "<": "<", ">": ">", "<=": "<=", ">=": ">=", "≤": "<=", "≥": ">=", "＜": "<", "＞": ">", "≦": "<=", "≧": ">=",
    "less than": "<", "greater than": ">", "less than or equal to": "<=", "greater than or equal to": ">=",
    "小于": "<", "大于": ">", "小于等于": "<=", "大于等于": ">=", "低于": "<", "高于": ">",
    "不大于": "<=", "不小于": ">=", "不高于": "<=", "不低于": ">=",
}
COMPARATOR_CODES = ("<", "<=", ">=", ">")


class LabValueParser:
    """Reads a lab result as (comparator or None, Decimal) when numeric, else its stripped text.

    ``5.6`` -> (None, 5.6); ``<0.01``, ``GREATER THAN 2000``, ``大于2000`` -> ('<' | '>', n);
    anything else (``1+``, ``阴性``) is returned as text. Built once per mapping line.
    """

    def __init__(self, thousands: str | None = None, comparators: dict[str, str] | None = None):
        words = {**COMPARATOR_WORDS, **{k.casefold(): v for k, v in (comparators or {}).items()}}
        self._words = {w.casefold(): op for w, op in words.items()}
        alternation = "|".join(re.escape(w) for w in sorted(self._words, key=len, reverse=True))
        number = _NUMBER if not thousands else rf"(?:[-+]?\d{{1,3}}(?:{re.escape(thousands)}\d{{3}})+(?:\.\d+)?|{_NUMBER})"
        self._comparator = re.compile(rf"^\s*({alternation})\s*({number})\s*$", re.IGNORECASE)
        self._decimal = decimal_parser(thousands)

    def __call__(self, value: object) -> tuple[str | None, Decimal] | str:
        if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
            return (None, parse_decimal(value))
        text = str(value).strip()
        if _NUMBER_RE.match(text):
            _check_digits(text)
            return (None, Decimal(text))
        m = self._comparator.match(text)
        if m:
            return (self._words[m.group(1).casefold()], self._decimal(m.group(2)))
        if self._decimal is not parse_decimal:
            try:
                return (None, self._decimal(text))
            except ValueProblem:
                pass
        return text


_DEFAULT_LAB = LabValueParser()


def parse_lab_value(value: object) -> tuple[str | None, Decimal] | str:
    """A lab result as (comparator or None, Decimal) when numeric, else its stripped text."""
    return _DEFAULT_LAB(value)


_RANGE_SEP = r"\s*(?:-|~|～|—|–|to|至)\s*"
_RANGE_RE = re.compile(rf"^\s*({_NUMBER}){_RANGE_SEP}({_NUMBER})\s*$")
_COMPARATOR_RE = re.compile(rf"^\s*(<=|>=|<|>|≤|≥)\s*({_NUMBER})\s*$")
_COMPARATORS = {"≤": "<=", "≥": ">="}


def range_parser(thousands: str | None = None) -> Callable[[object], tuple[Decimal, Decimal]]:
    """(low, high) from ``325-650``, ``325~650``, ``325 to 650`` (``1,000-2,000`` with thousands)."""
    number = _NUMBER if not thousands else rf"[-+]?\d{{1,3}}(?:{re.escape(thousands)}\d{{3}})+(?:\.\d+)?|{_NUMBER}"
    pattern = re.compile(rf"^\s*({number}){_RANGE_SEP}({number})\s*$")
    parse = decimal_parser(thousands)

    def read(value: object) -> tuple[Decimal, Decimal]:
        m = pattern.match(str(value))
        if not m:
            raise ValueProblem("is not a range", "two numbers like 325-650 or 3.9~6.1")
        low, high = parse(m.group(1)), parse(m.group(2))
        if low > high:
            raise ValueProblem("is a range whose low end is above its high end", "low-high, like 325-650")
        return low, high

    return read


def parse_reference_range(value: object) -> tuple[Decimal | None, Decimal | None, str]:
    """(low, high, text) from "3.9-6.1", "3.9~6.1", "<5.2", ">1.0"; text-only ranges give (None, None, text)."""
    text = str(value).strip()
    m = _RANGE_RE.match(text)
    if m:
        _check_digits(m.group(1))
        _check_digits(m.group(2))
        return Decimal(m.group(1)), Decimal(m.group(2)), text
    m = _COMPARATOR_RE.match(text)
    if m:
        op = _COMPARATORS.get(m.group(1), m.group(1))
        _check_digits(m.group(2))
        bound = Decimal(m.group(2))
        return (None, bound, text) if op.startswith("<") else (bound, None, text)
    return None, None, text
