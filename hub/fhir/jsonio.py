"""Lossless JSON for FHIR resources: decimals keep their written precision (1.50 stays 1.50)."""

from __future__ import annotations

import hashlib
import json
import re
from decimal import Decimal
from typing import Any

_MARK = "\u0001dec:"
_MARK_RE = re.compile(r'"\\u0001dec:([-+0-9.eE]+)"')


def _default(obj: Any) -> Any:
    if isinstance(obj, Decimal):
        return _MARK + str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps(resource: dict, indent: int | None = None) -> str:
    """Key-sorted JSON with Decimals written exactly as their text; compact unless indent is given."""
    separators = (",", ":") if indent is None else (",", ": ")
    text = json.dumps(resource, default=_default, ensure_ascii=False, separators=separators, sort_keys=True, indent=indent)
    return _MARK_RE.sub(r"\1", text)


def loads(text: str) -> dict:
    """Parse JSON, reading every non-integer number as a Decimal."""
    return json.loads(text, parse_float=Decimal)


def content_hash(text: str) -> str:
    """SHA-256 of a resource's canonical JSON text."""
    return hashlib.sha256(text.encode()).hexdigest()
