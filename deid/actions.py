"""De-identification actions: what each rule does to the values it covers, with exact semantics.

An action is named in a ruleset either bare (``drop``) or with parameters
(``{date_shift: {max_days: 30, weeks: true}}``). Each is a function of the value, the
keyring and the resource's context (its patient pseudonym, its id, the element path), so
the same input and key always give the same output.

| action | what it does |
|---|---|
| keep | value unchanged |
| drop | element removed (counted) |
| redact | free text removed (counted separately from drop, as the MS anonymizer's redact) |
| pseudonymize {key} | HMAC-SHA256 under the purpose key: Identifier -> {system: urn:hub:pseudonym:<key>, value}; Reference -> Type/<hmac of id>; string -> hmac |
| encrypt {deterministic} | AES-SIV (deterministic, joinable) or AES-GCM (random nonce): "enc:<siv or gcm>:<key id>:<base64>" |
| date_shift {max_days, weeks} | every date, dateTime and instant moved by the patient's offset, in [-max_days, max_days] days (whole weeks if weeks), from a keyed hash of the patient pseudonym: one offset per patient |
| generalize {to: year} | a date to its year ("1990-03-07" -> "1990") |
| generalize {birth_year_top: 90, reference_year: 2026} | birthDate to its year; people older than 89 at the reference year all get reference_year - 90 |
| generalize {prefix: 4} | a code to its first 4 characters (an administrative division code to its prefecture) |
| generalize {round: 1} | a decimal rounded to 1 place (or to tens with -1) |
| perturb {relative: 0.05} / {absolute: 0.5} | a number plus keyed, reproducible noise, uniform in ±relative × value or ±absolute, written at the input's precision |
| scrub | a string kept with resident ID numbers (18 and 15 digits), mobile and landline numbers, however written, and the record's known identifying values replaced by [id-number], [phone], [identifier] (see hub.identifiers) |
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV

from deid.keys import PURPOSES, Keyring
from hub.identifiers import KnownValues, known_values_of, normalise_resident_id, redact_identifiers

PSEUDONYM_SYSTEM = "urn:hub:pseudonym:"
NAMES = ("keep", "drop", "redact", "pseudonymize", "encrypt", "date_shift", "generalize", "perturb", "scrub")
_DATE_RE = re.compile(r"^(\d{4})(-\d{2}(-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?([+-]\d{2}:\d{2}|Z)?)?)?)?$")


@dataclass(frozen=True)
class Action:
    name: str
    params: dict = field(default_factory=dict)

    def __hash__(self) -> int:  # params is a dict
        return hash((self.name, tuple(sorted(self.params.items()))))


@dataclass
class Context:
    """What an action may know about the resource being de-identified."""

    resource_type: str
    resource_id: str
    patient: str | None = None  # the patient's pseudonym (date shift is per patient)
    known_names: tuple[str, ...] = ()  # names from the source record, for scrub
    _known: KnownValues | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def known(self) -> KnownValues:
        """known_names prepared for the detector (once per resource, whatever its strings; a plain
        property: functools.cached_property takes a lock on every first read, one per resource here)."""
        known = self._known
        if known is None:
            known = self._known = known_values_of(self.known_names)
        return known


def parse_action(spec: Any) -> Action:
    """``drop`` or ``{generalize: {to: year}}`` -> Action; raises ValueError with what was expected."""
    if isinstance(spec, str):
        name, params = spec, {}
    elif isinstance(spec, dict) and len(spec) == 1:
        name, params = next(iter(spec.items()))
        params = dict(params or {})
    else:
        raise ValueError(f"{spec!r} is not an action; expected a name or {{name: {{parameters}}}}")
    if name not in NAMES:
        raise ValueError(f"unknown action {name!r}; expected one of {', '.join(NAMES)}")
    allowed = {
        "pseudonymize": {"key"}, "encrypt": {"deterministic"}, "date_shift": {"max_days", "weeks"},
        "generalize": {"to", "birth_year_top", "reference_year", "prefix", "round"},
        "perturb": {"relative", "absolute"},
    }.get(name, set())
    unknown = set(params) - allowed
    if unknown:
        raise ValueError(f"{name} has no parameter {sorted(unknown)[0]!r}; parameters: {', '.join(sorted(allowed)) or 'none'}")
    if name == "pseudonymize" and params.get("key", "identifier") not in PURPOSES:
        raise ValueError(f"pseudonymize key {params['key']!r} is not a key purpose; expected one of {', '.join(PURPOSES)}")
    if name == "generalize" and len(set(params) & {"to", "birth_year_top", "prefix", "round"}) != 1:
        raise ValueError("generalize takes exactly one of to: year, birth_year_top, prefix, round")
    if name == "perturb" and len(params) != 1:
        raise ValueError("perturb takes exactly one of relative, absolute")
    return Action(name, params)


# ---- value functions ---------------------------------------------------------------

def hmac_hex(key: bytes, message: str, length: int = 32) -> str:
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()[:length]


def crypto_hash(key: str, value: str) -> str:
    """The Microsoft FHIR anonymizer's cryptoHash: lower-case hex HMAC-SHA256 with the raw key."""
    return hmac.new(key.encode(), value.encode(), hashlib.sha256).hexdigest()


def pseudonym(keys: Keyring, purpose: str, value: str, system: str | None = None) -> str:
    """The keyed pseudonym of a value; resident ID numbers (linkage purposes) are normalised first."""
    if purpose in ("patient-linkage",):
        return keys.hmac_hex(purpose, normalise_resident_id(value))
    if purpose in ("research-linkage", "research-id"):
        return keys.hmac_hex(purpose, value.strip())
    return keys.hmac_hex(purpose, f"{system or ''}|{value.strip()}")


def pseudonymize(keys: Keyring, params: dict, value: Any) -> Any:
    purpose = params.get("key", "identifier")
    if isinstance(value, dict) and "reference" in value:
        rtype, _, rid = str(value["reference"]).partition("/")
        return {**{k: v for k, v in value.items() if k != "display"}, "reference": f"{rtype}/{pseudonym(keys, purpose, rid)}"}
    if isinstance(value, dict) and "value" in value:
        out = {"system": PSEUDONYM_SYSTEM + purpose, "value": pseudonym(keys, purpose, str(value["value"]), value.get("system"))}
        if "type" in value:
            out["type"] = value["type"]
        return out
    return pseudonym(keys, purpose, str(value))


def encrypt(keys: Keyring, params: dict, value: Any) -> Any:
    """Encrypt a string (or an Identifier's value); deterministic AES-SIV or randomised AES-GCM."""
    def seal(text: str) -> str:
        data = text.encode()
        if params.get("deterministic", True):
            blob = AESSIV(keys.key("encryption", 64)).encrypt(data, None)
            return f"enc:siv:{keys.key_id}:{base64.urlsafe_b64encode(blob).decode()}"
        nonce = os.urandom(12)
        blob = nonce + AESGCM(keys.key("encryption")).encrypt(nonce, data, None)
        return f"enc:gcm:{keys.key_id}:{base64.urlsafe_b64encode(blob).decode()}"

    if isinstance(value, dict) and "value" in value:
        return {**value, "value": seal(str(value["value"]))}
    return seal(str(value))


def decrypt(keys: Keyring, token: str, key_file=None) -> str:
    """Open a value made by encrypt (authorised use only), with a retired key if it was sealed under one."""
    _, mode, key_id, b64 = token.split(":", 3)
    if key_id != keys.key_id:
        from deid.keys import keyring_for

        keys = keyring_for(key_file, key_id)
    blob = base64.urlsafe_b64decode(b64)
    if mode == "siv":
        return AESSIV(keys.key("encryption", 64)).decrypt(blob, None).decode()
    return AESGCM(keys.key("encryption")).decrypt(blob[:12], blob[12:], None).decode()


def shift_days(keys: Keyring, patient: str, max_days: int = 50, weeks: bool = False) -> int:
    """The patient's offset in days: uniform in [-max_days, max_days] (whole weeks if weeks), never 0."""
    h = int.from_bytes(hmac.new(keys.key("date-shift"), patient.encode(), hashlib.sha256).digest()[:8], "big")
    if weeks:
        span = max(1, max_days // 7)
        offset = 7 * ((h % (2 * span)) - span)
        return offset if offset != 0 else 7 * span
    offset = (h % (2 * max_days + 1)) - max_days
    return offset if offset != 0 else max_days


def shift_date(value: str, days: int) -> str:
    """Shift a FHIR date, dateTime or instant by days, keeping its precision and offset."""
    m = _DATE_RE.match(value)
    if not m or not m.group(3):
        return value  # a year or year-month: shifting would reveal nothing more precise; keep as is
    if "T" not in value:
        return (dt.date.fromisoformat(value) + dt.timedelta(days=days)).isoformat()
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    shifted = (parsed + dt.timedelta(days=days)).isoformat()
    return shifted.replace("+00:00", "Z") if value.endswith("Z") else shifted


def generalize(params: dict, value: Any) -> Any:
    if "to" in params:  # to: year
        return str(value)[:4]
    if "birth_year_top" in params:
        year = int(str(value)[:4])
        top, ref = int(params["birth_year_top"]), int(params.get("reference_year", dt.date.today().year))
        return str(ref - top) if ref - year >= top else str(year)
    if "prefix" in params:
        return str(value)[: int(params["prefix"])]
    digits = int(params["round"])
    d = Decimal(str(value))
    return d.quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_EVEN) if digits >= 0 else (d.scaleb(digits).quantize(Decimal(1)).scaleb(-digits))


def perturb(keys: Keyring, params: dict, value: Any, where: str) -> Any:
    """value + keyed noise in [-1, 1) × scale, at the input's decimal precision."""
    d = value if isinstance(value, Decimal) else Decimal(str(value))
    h = int.from_bytes(hmac.new(keys.key("perturb"), where.encode(), hashlib.sha256).digest()[:8], "big")
    u = Decimal(h) / Decimal(2**63) - 1
    scale = abs(d) * Decimal(str(params["relative"])) if "relative" in params else Decimal(str(params["absolute"]))
    out = d + u * scale
    exponent = d.as_tuple().exponent
    return out.quantize(Decimal(1).scaleb(exponent if isinstance(exponent, int) else 0))


def scrub(value: str, known_names: tuple[str, ...] | KnownValues) -> str:
    """value with resident ID numbers, phones and the record's known identifying values (names,
    ID numbers, phones, MRNs, addresses: known_names) replaced, however they are written.

    The known values are compiled once per distinct tuple (cached), and a string with fewer than
    7 digits and none of them costs one folding and two regex searches."""
    return redact_identifiers(value, known_names)


def value_function(action: Action, keys: Keyring) -> Callable[[Any, Context, str], Any]:
    """The function applying one action to one value (leaf or subtree) at a path."""
    p = action.params
    if action.name == "pseudonymize":
        return lambda v, ctx, path: pseudonymize(keys, p, v)
    if action.name == "encrypt":
        return lambda v, ctx, path: encrypt(keys, p, v)
    if action.name == "generalize":
        return lambda v, ctx, path: generalize(p, v)
    if action.name == "perturb":
        return lambda v, ctx, path: perturb(keys, p, v, f"{ctx.resource_type}/{ctx.resource_id}/{path}")
    if action.name == "scrub":
        return lambda v, ctx, path: _map_strings(v, lambda s: scrub(s, ctx.known))
    if action.name == "date_shift":
        max_days, weeks = int(p.get("max_days", 50)), bool(p.get("weeks", False))

        def fn(v, ctx, path):
            if ctx.patient is None:
                raise MissingPatient(path)
            return _map_strings(v, lambda s: shift_date(s, shift_days(keys, ctx.patient, max_days, weeks)))

        return fn
    return lambda v, ctx, path: v


class MissingPatient(ValueError):
    """date_shift needs the resource's patient; a resource without one cannot be shifted."""


def _map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {k: _map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_strings(v, fn) for v in value]
    return value
