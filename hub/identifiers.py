"""Chinese personal identifiers: resident ID numbers (GB 11643-1999) and mobile numbers.

Used to validate source values, to normalise them before pseudonymisation, and to scan
outputs for leaks.
"""

from __future__ import annotations

import datetime as dt
import re

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK_CHARS = "10X98765432"

# Token boundaries exclude ASCII letters too, so digits inside a hex pseudonym never match.
RESIDENT_ID_RE = re.compile(r"(?<![0-9A-Za-z])[1-9][0-9]{16}[0-9Xx](?![0-9A-Za-z])")
MOBILE_RE = re.compile(r"(?<![0-9A-Za-z])(?:\+86|0086)?1[3-9][0-9]{9}(?![0-9A-Za-z])")


def resident_id_check_char(first17: str) -> str:
    """Return the GB 11643 check character for the first 17 digits of a resident ID number."""
    if len(first17) != 17 or not first17.isdigit():
        raise ValueError("expected 17 digits")
    total = sum(int(d) * w for d, w in zip(first17, _WEIGHTS, strict=True))
    return _CHECK_CHARS[total % 11]


def normalise_resident_id(value: str) -> str:
    """Strip spaces and upper-case a trailing x."""
    return value.strip().replace(" ", "").upper()


def is_valid_resident_id(value: str | None) -> bool:
    """True when value is an 18-character resident ID number: a real birth date (digits 7-14,
    1900 or later) and a matching check character. The date test also keeps random 18-digit
    numbers (snapshot ids, barcodes) from passing for ID numbers in leak scans."""
    if not value:
        return False
    v = normalise_resident_id(value)
    if len(v) != 18 or not v[:17].isdigit() or v[0] == "0":
        return False
    try:
        born = dt.date(int(v[6:10]), int(v[10:12]), int(v[12:14]))
    except ValueError:
        return False
    if born.year < 1900:
        return False
    return resident_id_check_char(v[:17]) == v[17]


def find_resident_ids(text: str) -> list[str]:
    """Every substring of text that is a resident ID number with a valid check character."""
    return [m.group(0) for m in RESIDENT_ID_RE.finditer(text) if is_valid_resident_id(m.group(0))]


def find_mobile_numbers(text: str) -> list[str]:
    """Every substring of text shaped like a mainland mobile number."""
    return [m.group(0) for m in MOBILE_RE.finditer(text)]


def redact_identifiers(text: str) -> str:
    """Replace resident ID numbers and mobile numbers in text with a placeholder."""
    text = RESIDENT_ID_RE.sub(
        lambda m: "[id-number]" if is_valid_resident_id(m.group(0)) else m.group(0), text
    )
    return MOBILE_RE.sub("[phone]", text)
