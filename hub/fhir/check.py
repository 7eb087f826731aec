"""Fast structural validation of FHIR R4 resource dicts, with fhir.resources as the oracle.

Validating each built dict with the pydantic models of ``fhir.resources`` costs ~150 µs
per Observation, more than mapping and de-identification together. This module checks the
same rules with plain Python over the R4B models' own metadata (read once per model):

- every key is an element of its type (``_x`` primitive extensions included), no other;
- cardinality: lists where the element repeats, a single value where it does not; no null
  inside a list of complex values;
- required elements present (a required primitive may be replaced by its ``_x`` extension);
- at most one type of a choice element (``value[x]``), and one when the choice is required;
- primitive values by their FHIR type: string, code, id, uri, boolean, integer (32-bit),
  positiveInt, unsignedInt, decimal, date, dateTime and instant by the spec's regular
  expressions and calendar.

It is stricter than the pydantic models in a few ways, on purpose: hub publishes the dict
as built, not the model's re-serialisation, so ``"5"`` for an integer, ``"1.5"`` (a
string) for a decimal or ``"true"`` for a boolean would be published as invalid FHIR JSON
even though the models would coerce them; likewise an explicit null for a required
element, a ``resourceType`` inside a datatype, and a python attribute name (``class_``,
``status__ext``) where FHIR JSON has ``class`` or ``_status``, all of which the models let
through. Everything else gives the same verdict as
``fhir.resources`` (tests/fhir/test_fhir_check.py compares the two on the demo's resources and
on thousands of mutations of them).

Where it cannot decide as the models would (rare types such as time, url, uuid, oid,
base64Binary, integer64, a leap second), it says so by returning None, and the caller asks
the oracle. ``Validator`` adds a sampled oracle run in production: a configurable share of
resources is also validated by ``fhir.resources``, and a disagreement quarantines the row.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache, lru_cache
from typing import Any

from deid.datatypes import datatype_model
from hub.fhir.validate import model_for, validation_problems

_CODE = re.compile(r"[^\s]+(\s[^\s]+)*")
_ID = re.compile(r"[A-Za-z0-9\-.]+")
_DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_YEAR = r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)"
_TZ = r"(Z|([+\-])((0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
_DATE = re.compile(_YEAR + r"(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1]))?)?")
_DATETIME = re.compile(
    _YEAR + r"(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?"
    + _TZ + r")?)?)?")
_INSTANT = re.compile(
    _YEAR + r"-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?" + _TZ)
_INT32 = (-(2**31), 2**31 - 1)

class Defer(Exception):
    """A value only the oracle can judge."""


# ---- per-model plans, built once --------------------------------------------------------

@dataclass
class Element:
    name: str
    kind: str  # "primitive", "complex", "resource", or "extension" (a primitive's ``_x`` sibling)
    type: str
    is_list: bool
    model: type | None = None  # of a complex element
    choice: str | None = None  # the choice group (``value`` of ``value[x]``) it belongs to
    _plan: Plan | None = None

    def plan(self) -> Plan:
        """The plan of a complex element's type (resolved on first use: types nest recursively)."""
        if self._plan is None:
            self._plan = plan(self.model)
        return self._plan


@dataclass
class Plan:
    name: str
    elements: dict[str, Element]
    required: list[tuple[str, str | None]]  # (element, its _x key when a primitive) that must be present
    choice_names: dict[str, tuple[str, ...]] = field(default_factory=dict)  # choice group -> its element names
    required_choices: tuple[str, ...] = ()  # groups one element of which must be present
    is_resource: bool = False
    fast: dict[str, tuple[int, Any, str | None]] | None = None  # see _fast_table

    @property
    def required_names(self) -> tuple[str, ...]:
        return self._required_names

    def __post_init__(self) -> None:
        self._required_names = tuple(name for name, _ in self.required)


@cache
def plan(model: type) -> Plan:
    """The checking plan of a model: its elements by JSON name, required ones and choice groups."""
    from deid.datatypes import _resolve

    elements: dict[str, Element] = {}
    required: list[tuple[str, str | None]] = []
    groups: dict[str, tuple[list[str], bool]] = {}
    for name, f in model.model_fields.items():
        json_name = f.alias or name
        if name == "fhir_comments":
            continue
        if name.endswith("__ext"):
            kind, tname, sub, is_list = _resolve(f.annotation)
            elements[json_name] = Element(json_name, "extension", tname, is_list, sub)
            continue
        kind, tname, sub, is_list = _resolve(f.annotation)
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        group = extra.get("one_of_many") or None
        elements[json_name] = Element(json_name, kind, tname, is_list, sub, group)
        if f.is_required() or extra.get("element_required"):
            required.append((json_name, f"_{json_name}" if kind == "primitive" else None))
        if group:
            groups.setdefault(group, ([], bool(extra.get("one_of_many_required"))))[0].append(json_name)
    if "fhir_comments" in model.model_fields:
        elements["fhir_comments"] = Element("fhir_comments", "primitive", "string", True)
    names = {c.__name__ for c in model.__mro__}
    is_resource = "Resource" in names and "Element" not in names
    return Plan(model.__name__, elements, required, {g: tuple(n) for g, (n, _) in groups.items()},
                tuple(g for g, (_, r) in groups.items() if r), is_resource)


# ---- checking ---------------------------------------------------------------------------

def check(resource: dict) -> list[tuple[str, str]] | None:
    """(element path, problem) pairs of a resource, empty when valid; None when only the oracle can say.

    Paths and wording follow ``hub.fhir.validate.validation_problems`` (``Observation.code.coding.0.code``).
    """
    rtype = resource.get("resourceType") if isinstance(resource, dict) else None
    p = _resource_plan(rtype) if isinstance(rtype, str) else None
    if p is None:
        return None
    try:
        if _valid(p, resource):
            return []
    except Defer:
        pass  # _complex decides whether the oracle must
    out: list[tuple[str, str]] = []
    try:
        _complex(p, resource, rtype, out)
    except Defer:
        return None
    return out


@lru_cache(maxsize=256)
def _resource_plan(rtype: str) -> Plan | None:
    """The plan of a resource type's model (model_for imports its module: not per resource)."""
    try:
        model = model_for(rtype)
    except ValueError:
        return None
    return plan(model)


def _valid(p: Plan, node: dict) -> bool:
    """The common case, quickly: True when node is valid by every rule _complex applies.
    False when it is not, or when only _complex (or the oracle) can say: no paths built here."""
    table = p.fast if p.fast is not None else _fast_table(p)
    chosen = None
    for key, value in node.items():
        entry = table.get(key)
        if entry is None:
            if key == "resourceType" and p.is_resource and value == p.name:
                continue
            return False
        if value is None:
            continue
        mode, arg, choice = entry
        if choice is not None:
            if chosen is None:
                chosen = {choice}
            elif choice in chosen:
                return False
            else:
                chosen.add(choice)
        if mode == _ONE_PRIMITIVE:
            if (arg or _JUDGES[p.elements[key].type])(value):
                return False
        elif mode == _ONE_COMPLEX:
            if type(value) is not dict or not _valid(arg._plan or arg.plan(), value):
                return False
        elif mode == _PRIMITIVES:
            if type(value) is not list:
                return False
            judge = arg or _JUDGES[p.elements[key].type]
            for item in value:
                if item is not None and judge(item):
                    return False
        elif mode == _COMPLEXES:
            if type(value) is not list:
                return False
            sub = arg._plan or arg.plan()
            for item in value:
                if type(item) is not dict or not _valid(sub, item):
                    return False
        else:
            return False
    for name in p.required_names:
        if node.get(name) is None:
            return False
    if p.required_choices and (chosen is None or not chosen.issuperset(p.required_choices)):
        return False
    return True


# How _valid reads an element: one primitive, one complex value, a list of either, or anything
# else (a resource, a primitive's _x extension: left to _complex).
_ONE_PRIMITIVE, _ONE_COMPLEX, _PRIMITIVES, _COMPLEXES, _OTHER = range(5)


def _fast_table(p: Plan) -> dict[str, tuple[int, Any, str | None]]:
    """Element name -> (mode, judge or Element, choice group), for _valid; built once per plan.
    A primitive type without a judge keeps None here, so _valid raises KeyError as it always did."""
    table = {}
    for name, el in p.elements.items():
        if el.kind == "primitive":
            entry = (_PRIMITIVES if el.is_list else _ONE_PRIMITIVE, _JUDGES.get(el.type), el.choice)
        elif el.kind == "complex":
            entry = (_COMPLEXES if el.is_list else _ONE_COMPLEX, el, el.choice)
        else:
            entry = (_OTHER, None, el.choice)
        table[name] = entry
    p.fast = table
    return table


def _complex(p: Plan, node: dict, path: str, out: list) -> None:
    elements = p.elements
    chosen: dict[str, str] | None = None  # choice group -> the one element of it present
    for key, value in node.items():
        el = elements.get(key)
        if el is None:
            if key == "resourceType" and p.is_resource:
                if value != p.name:
                    raise Defer
                continue
            out.append((f"{path}.{key}", "Extra inputs are not permitted"))
            continue
        if value is None:
            continue
        kind = el.kind
        if kind == "extension":
            raise Defer  # a primitive's _x sibling: rare, and its rules are the models' own
        if el.choice is not None:
            if chosen is None:
                chosen = {}
            if el.choice in chosen:
                if chosen[el.choice]:
                    out.append((path, f"Value error, Any of one field value is expected from this list "
                                      f"{sorted(p.choice_names[el.choice])}, but got multiple!"))
                    chosen[el.choice] = ""  # said once
            else:
                chosen[el.choice] = key
        if el.is_list:
            if type(value) is not list:
                out.append((f"{path}.{key}", "Input should be a valid list"))
            elif kind == "primitive":
                judge = _JUDGES[el.type]
                for i, item in enumerate(value):
                    if item is not None:
                        problem = judge(item)
                        if problem:
                            out.append((f"{path}.{key}.{i}", problem))
            elif None in value:
                out.append((f"{path}.{key}", f"None is not allowed as an element of {key}"))
            elif kind == "complex":
                sub = plan(el.model)
                for i, item in enumerate(value):
                    if type(item) is dict:
                        _complex(sub, item, f"{path}.{key}.{i}", out)
                    else:
                        _child(el, item, f"{path}.{key}.{i}", out)
            else:
                for i, item in enumerate(value):
                    _child(el, item, f"{path}.{key}.{i}", out)
        elif kind == "primitive":
            problem = _JUDGES[el.type](value)
            if problem:
                out.append((f"{path}.{key}", problem))
        elif kind == "complex" and type(value) is dict:
            _complex(plan(el.model), value, f"{path}.{key}", out)
        else:
            _child(el, value, f"{path}.{key}", out)
    for name, ext in p.required:
        if node.get(name) is None:
            extension = node.get(ext) if ext else None
            if not (isinstance(extension, dict) and extension.get("extension")):
                out.append((f"{path}.{name}", f"Value for the field '{name}' is required."))
    for group in p.required_choices:
        if chosen is None or group not in chosen:
            out.append((path, f"Value error, Expect any of field value from this list {sorted(p.choice_names[group])}."))


def _child(el: Element, value: object, where: str, out: list) -> None:
    if el.kind == "resource":
        if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
            raise Defer
        model = datatype_model(value["resourceType"])
        if model is None:
            raise Defer
        _complex(plan(model), value, where, out)
        return
    if type(value) is not dict:
        out.append((where, f"Value is expected from the instance of {el.type}, but got type {type(value)}"))
        return
    _complex(plan(el.model), value, where, out)


# One function per primitive type: the problem with a value, or None when it is valid.

_NOT_STRING = "Input should be a valid string"


def _string(v: object) -> str | None:
    if type(v) is not str:
        return _NOT_STRING
    return None if v else "String should match pattern '[ \\r\\n\\t\\S]+'"


def _text(v: object) -> str | None:
    return None if type(v) is str else _NOT_STRING


def _code(v: object) -> str | None:
    if type(v) is not str:
        return _NOT_STRING
    return None if _CODE.fullmatch(v) else "String should match pattern '^[^\\s]+(\\s[^\\s]+)*$'"


def _id(v: object) -> str | None:
    if type(v) is not str:
        return _NOT_STRING
    return None if _ID.fullmatch(v) else "String should match pattern '^[A-Za-z0-9\\-.]+$'"


def _boolean(v: object) -> str | None:
    return None if type(v) is bool else "Input should be a valid boolean (a JSON true or false)"


def _integer(low: int) -> object:
    def judge(v: object) -> str | None:
        if type(v) is not int:
            return "Input should be a valid integer (a JSON number)"
        if v > _INT32[1]:
            return f"Input should be less than or equal to {_INT32[1]}"
        if v < low:
            return f"Input should be greater than or equal to {low}"
        return None
    return judge


def _decimal(v: object) -> str | None:
    t = type(v)
    if t is int:
        return None
    if t is Decimal or t is float:
        if (t is float and not math.isfinite(v)) or not _DECIMAL.fullmatch(str(v)):
            return "Value error, Decimal value string does not match spec regex."
        return None
    return "Input should be a valid decimal (a JSON number)"


def _temporal(pattern: re.Pattern, name: str) -> object:
    def judge(v: object) -> str | None:
        if type(v) is not str:
            raise Defer  # date and datetime objects: the models accept some
        return judge_text(v)

    @lru_cache(maxsize=16_384)  # a result's times are its order's and its specimen's
    def judge_text(v: str) -> str | None:
        if not pattern.fullmatch(v):
            return f"Value error, {name} value string does not match spec regex."
        if len(v) >= 10:
            try:
                dt.date(int(v[:4]), int(v[5:7]), int(v[8:10]))
            except ValueError:
                return "Input should be a valid datetime or date, day value is outside expected range"
            if len(v) > 10 and v[17:19] == "60":
                raise Defer  # a leap second
        return None
    return judge


def _defer(v: object) -> str | None:
    raise Defer


_JUDGES: dict[str, object] = {
    "string": _string, "markdown": _text, "xhtml": _text, "uri": _text, "canonical": _text,
    "code": _code, "id": _id, "boolean": _boolean,
    "integer": _integer(_INT32[0]), "unsignedInt": _integer(0), "positiveInt": _integer(1),
    "decimal": _decimal,
    "date": _temporal(_DATE, "Date"), "dateTime": _temporal(_DATETIME, "DateTime"), "instant": _temporal(_INSTANT, "Instant"),
}
for _name in ("url", "uuid", "oid", "base64Binary", "time", "integer64"):
    _JUDGES[_name] = _defer


# ---- the validator the pipeline uses ----------------------------------------------------

@dataclass
class Validator:
    """Fast checks on every resource; fhir.resources on the ones they defer and on a sample.

    oracle_every: also validate every n-th resource with fhir.resources (1 = all, 0 = only
    deferred ones). A disagreement is reported as a problem of its own, so the row is
    quarantined and counted (``disagreements``) instead of published on one opinion.
    """

    oracle_every: int = 100
    seen: int = 0
    oracle_runs: int = 0
    disagreements: int = 0

    def problems(self, resource: dict) -> list[tuple[str, str]]:
        self.seen += 1
        fast = check(resource)
        if fast is None:
            self.oracle_runs += 1
            return validation_problems(resource)
        if self.oracle_every and self.seen % self.oracle_every == 0:
            self.oracle_runs += 1
            slow = validation_problems(resource)
            if bool(slow) != bool(fast):
                self.disagreements += 1
                element = (slow or fast)[0][0]
                return [(element, "hub's fast validator and fhir.resources disagree on this resource "
                                  f"({'fhir.resources' if slow else 'hub'} rejects it); held for review")]
        return fast
