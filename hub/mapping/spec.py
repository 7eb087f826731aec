"""Mapping files (``mappings/*.yaml``): load, validate, and describe a vendor schema's mapping.

A mapping file has one block per target resource and one line per target element, like
the HL7 v2-to-FHIR tables. Every problem found on load names file, line and field.
See ``docs/mapping.md`` for the language.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import typing
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub.fhir.validate import RESOURCE_MODULES, element_names, model_for
from hub.mapping.terminology import ConceptMap, load_concept_map
from hub.mapping.transforms import compile_transform
from hub.mapping.values import COMPARATOR_CODES, DateBounds, DateFormat, Format, relative_bound
from hub.yamlio import ConfigError, LineDict, load_yaml

SOURCE_KINDS = ("const", "column", "codeable", "reference", "lab_value", "reference_range", "quantity", "range", "concat", "first_of")
ELEMENT_OPTIONS = {
    "type", "format", "map", "unmapped", "default", "check", "phi", "required",
    "system", "text", "display", "key", "namespace", "unit", "unit_map", "text_map", "coding",
    "transform", "thousands", "comparators", "absent", "not_before", "not_after", "not_before_birth", "separator",
}
TYPES = ("string", "code", "integer", "decimal", "boolean", "date", "dateTime")
#: the FHIR datatype (choice suffix) a line gives, by kind or by type
KIND_DATATYPE = {"quantity": "Quantity", "range": "Range", "codeable": "CodeableConcept", "reference": "Reference"}
TYPE_DATATYPE = {"string": "String", "code": "Code", "integer": "Integer", "decimal": "Decimal", "boolean": "Boolean",
                 "date": "Date", "dateTime": "DateTime"}
#: options that only some kinds take
_ONLY = {
    "transform": ("column", "codeable", "quantity", "range", "lab_value", "concat"),
    "thousands": ("column", "quantity", "range", "lab_value"),
    "comparators": ("lab_value",), "absent": ("lab_value",), "separator": ("concat",),
    "not_before": ("column", "concat"), "not_after": ("column", "concat"), "not_before_birth": ("column", "concat"),
}
THOUSANDS = (",", " ", "'", "\u00a0")
#: http://terminology.hl7.org/CodeSystem/data-absent-reason (R4)
DATA_ABSENT_REASONS = (
    "unknown", "asked-unknown", "temp-unknown", "not-asked", "asked-declined", "masked", "not-applicable",
    "unsupported", "as-text", "error", "not-a-number", "negative-infinity", "positive-infinity", "not-performed",
    "not-permitted",
)
OBSERVATION_STATUSES = ("registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error", "unknown")
WHERE_OPS = ("eq", "ne", "lt", "le", "gt", "ge", "in", "not_in", "is_null")
#: words a `from: {query: ...}` may not contain outside quotes: it must read, and only read
#: (an identifier spelled like one of them is written in double quotes)
_QUERY_FORBIDDEN = (
    "insert", "update", "delete", "merge", "upsert", "create", "alter", "drop", "truncate", "rename", "grant",
    "revoke", "attach", "detach", "pragma", "vacuum", "reindex", "copy", "call", "exec", "execute", "into",
    "commit", "rollback", "savepoint", "prepare", "outfile", "dumpfile",
    "nextval", "setval", "set_config", "pg_sleep", "sleep", "benchmark", "pg_terminate_backend", "pg_cancel_backend",
    "lo_import", "lo_export", "lo_unlink", "dblink", "dblink_exec", "pg_read_file", "pg_read_binary_file", "pg_ls_dir",
    "load_extension", "pg_advisory_lock", "pg_advisory_xact_lock", "get_lock", "sys_exec", "xp_cmdshell",
)
_QUERY_STRIP = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|`[^`]*`")
_QUERY_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
UNMAPPED = ("quarantine", "keep", "default")
CHECKS = ("gb11643",)
INSTITUTION = "$institution"
_COLUMN_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
_PATH_RE = re.compile(r"^[a-z][A-Za-z]*(\[\d+\]|\[x\])?(\.[a-z][A-Za-z]*(\[\d+\]|\[x\])?)*$")
_TZ_RE = re.compile(r"^[+-]\d{2}:\d{2}$")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Join:
    table: str
    on: tuple[tuple[str, str], ...]  # (left qualified column, right column)
    alias: str | None = None  # to join one lookup table several times
    where: tuple[tuple[str, object], ...] = ()  # constant filters on the joined table

    @property
    def name(self) -> str:
        return self.alias or self.table


@dataclass(frozen=True)
class Unpivot:
    """A wide table read as one row per non-empty cell of the listed columns."""

    columns: tuple[str, ...]
    item: str = "item"  # produced column holding the source column's name
    value: str = "value"  # produced column holding the cell's value (as text)


@dataclass(frozen=True)
class ColumnRef:
    """A column on the right-hand side of a ``where:`` comparison."""

    name: str


@dataclass(frozen=True)
class Condition:
    """One ``where:`` condition: column op value (value a constant, a tuple for in/not_in, or a ColumnRef)."""

    column: str
    op: str  # one of WHERE_OPS
    value: object


@dataclass(frozen=True)
class Occurrence:
    """Keys rows of a table without a primary key: the n-th row (1, 2, ...) with the block's
    natural key, in ``order_by`` order, numbered in a column named ``name``."""

    order_by: tuple[str, ...]
    name: str = "occurrence"

    @property
    def ties(self) -> str:
        """Produced column: how many rows share the natural key and the order_by values."""
        return f"{self.name}_ties"


@dataclass(frozen=True)
class Element:
    path: str
    kind: str
    source: Any
    options: dict[str, Any]
    line: int


@dataclass(frozen=True)
class Watermark:
    """How to pull a table incrementally: rows whose column passed the last published value."""

    column: str
    kind: str  # timestamp: an update time, re-read from the last value (>=); key: a growing key (>)


@dataclass(frozen=True)
class Block:
    resource: str
    table: str
    key: tuple[str, ...]
    key_is_identifier: bool
    joins: tuple[Join, ...]
    namespace: str
    id_key: tuple[str, ...]
    elements: tuple[Element, ...]
    line: int
    watermark: Watermark | None = None
    unpivot: Unpivot | None = None
    #: qualified source columns whose values quarantine reasons, row labels and the unmapped
    #: summary may show (codes and keys); every other column's value is withheld
    safe_columns: frozenset[str] = frozenset()
    #: conditions (ANDed) a source row must meet to be read at all
    where: tuple[Condition, ...] = ()
    #: a read-only SELECT the block reads instead of a table; ``table`` is then its name
    query: str | None = None
    occurrence: Occurrence | None = None


@dataclass
class Mapping:
    """A validated mapping file."""

    name: str
    version: str
    system: str
    path: Path
    timezone: dt.tzinfo  # a fixed offset (datetime.timezone) or an IANA zone (zoneinfo.ZoneInfo)
    datetime_formats: tuple[Format, ...]
    date_formats: tuple[Format, ...]
    terminology: dict[str, ConceptMap]
    blocks: list[Block]
    content_hash: str = field(default="")
    #: plausible dates for date and dateTime lines that set no bounds of their own
    date_bounds: DateBounds = field(default_factory=DateBounds)

    @property
    def label(self) -> str:
        """Version label recorded in lineage: name, declared version and content hash prefix."""
        return f"{self.name}@{self.version}+{self.content_hash[:8]}"


def _err(path: Path, node: LineDict | None, key: str, fld: str, problem: str, expected: str = "") -> ConfigError:
    line = node.line_of(key) if isinstance(node, LineDict) else 0
    return ConfigError(str(path), line, fld, problem, expected)


def _need(path: Path, node: Any, key: str, fld: str, kind: type | tuple[type, ...], expected: str) -> Any:
    if not isinstance(node, dict) or key not in node:
        raise _err(path, node, key, fld, "is missing", expected)
    value = node[key]
    if not isinstance(value, kind):
        raise _err(path, node, key, fld, f"is a {type(value).__name__}", expected)
    return value


def _check_path_in_model(path: Path, node: LineDict, key: str, resource: str, element_path: str) -> None:
    names = element_names(resource)
    first = element_path.split(".")[0].split("[")[0]
    if first == "value" and element_path.startswith("value[x]"):
        if not any(name.startswith("value") for name in names):
            raise _err(path, node, key, f"{resource}.{element_path}", f"{resource} has no value[x]", "an element of the resource")
        return
    if first not in names:
        raise _err(
            path, node, key, f"{resource}.{element_path}",
            f"{resource} has no element {first!r}", f"an element of FHIR R4 {resource}",
        )


def _inner_model(annotation: Any) -> type | None:
    """The FHIR datatype model inside a field annotation (Optional[List[abc.DosageType]] -> Dosage)."""
    stack = [annotation]
    while stack:
        t = stack.pop()
        if hasattr(t, "get_model_klass"):
            return t.get_model_klass()
        stack.extend(typing.get_args(t))
    return None


def _model_fields(resource: str, parents: list[str]) -> frozenset[str] | None:
    """Element names (FHIR JSON spelling) of the datatype at resource.parents; None when not resolvable."""
    model: Any = model_for(resource)
    for name in parents:
        fields = {(f.alias or n): f for n, f in model.model_fields.items()}
        if name not in fields or (model := _inner_model(fields[name].annotation)) is None:
            return None
    return frozenset((f.alias or n) for n, f in model.model_fields.items() if not n.endswith("__ext"))


def _parse_formats(path: Path, node: LineDict, key: str, fld: str, value: Any) -> tuple[Format, ...]:
    """Date formats: strings, or {format: "%m/%d/%y", pivot: 1930} where a format has two-digit years."""
    expected = 'a list of strptime formats, e.g. ["%Y-%m-%d", {format: "%m/%d/%y", pivot: 1930}]'
    items = [value] if isinstance(value, str | dict) else value
    if not isinstance(items, list) or not items:
        raise _err(path, node, key, fld, "is not a list of formats", expected)
    out: list[Format] = []
    for item in items:
        pivot = None
        if isinstance(item, dict):
            extra = set(item) - {"format", "pivot"}
            if extra or not isinstance(item.get("format"), str):
                raise _err(path, node, key, fld, f"{dict(item)!r} is not a format", "{format: <strptime format>, pivot: <year>}")
            fmt, pivot = item["format"], item.get("pivot")
            if not isinstance(pivot, int) or isinstance(pivot, bool) or not 1800 <= pivot <= 2100:
                raise _err(path, node, key, fld, f"pivot {pivot!r} of {fmt!r} is not a year", "a year from 1800 to 2100: two-digit years are read as pivot .. pivot + 99")
        elif isinstance(item, str):
            fmt = item
        else:
            raise _err(path, node, key, fld, f"{item!r} is not a format", expected)
        two_digit = "%y" in fmt.replace("%%", "")
        if two_digit and pivot is None:
            raise _err(path, node, key, fld, f"{fmt!r} reads two-digit years (%y) but gives no pivot",
                       f'{{format: "{fmt}", pivot: <year>}}: e.g. pivot 1930 reads 64 as 1964 and 23 as 2023')
        if pivot is not None and not two_digit:
            raise _err(path, node, key, fld, f"{fmt!r} has a pivot but no two-digit year (%y)", "a pivot only on formats with %y")
        try:
            sample = dt.datetime(2024, 3, 5, 8, 30, 0, tzinfo=dt.timezone(dt.timedelta(hours=8)) if "%z" in fmt else None)
            dt.datetime.strptime(sample.strftime(fmt), fmt)
        except ValueError as exc:
            raise _err(path, node, key, fld, f"{fmt!r} is not a date format ({exc})", "strptime directives like %Y-%m-%d %H:%M:%S") from None
        out.append(DateFormat(fmt, pivot) if pivot is not None else fmt)
    return tuple(out)


def _parse_bounds(path: Path, node: LineDict, fld: str, base: DateBounds) -> DateBounds:
    """not_before / not_after of a line (or of the file's date_bounds), over base's."""
    not_before, not_after = base.not_before, base.not_after
    if "not_before" in node:
        v = node["not_before"]
        if v is not None:
            v = _as_date(v)
            if v is None:
                raise _err(path, node, "not_before", f"{fld}.not_before", "is not a date", "a date like 1900-01-01, or null for no lower bound")
        not_before = v
    if "not_after" in node:
        v = node["not_after"]
        if v is not None:
            margin = relative_bound(v) if isinstance(v, str) else None
            v = margin if margin is not None else _as_date(v)
            if v is None:
                raise _err(path, node, "not_after", f"{fld}.not_after", "is not a date or now plus a margin",
                           "a date like 2100-01-01, now, now+1d, now+12h, or null for no upper bound")
        not_after = v
    return DateBounds(not_before, not_after)


def _as_date(value: Any) -> dt.date | None:
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            return None
    return None


def _parse_absent(path: Path, spec: LineDict, fld: str, resource: str) -> dict[str, tuple[str, str | None]]:
    """absent: {text: reason} or {text: {reason: r, status: s}} -> {casefolded text: (reason, status)}."""
    table = spec["absent"]
    expected = "{HOLD: temp-unknown, NotDone: {reason: not-performed, status: cancelled}} (data-absent-reason codes)"
    if not isinstance(table, dict) or not table:
        raise _err(path, spec, "absent", f"{fld}.absent", "is not a map of texts", expected)
    out: dict[str, tuple[str, str | None]] = {}
    for text, target in table.items():
        reason, status = (target, None) if not isinstance(target, dict) else (target.get("reason", "unknown"), target.get("status"))
        if isinstance(target, dict) and set(target) - {"reason", "status"}:
            raise _err(path, spec, "absent", f"{fld}.absent.{text}", f"unknown option {sorted(set(target) - {'reason', 'status'})[0]!r}", "reason: and status:")
        if reason not in DATA_ABSENT_REASONS:
            raise _err(path, spec, "absent", f"{fld}.absent.{text}", f"{reason!r} is not a data-absent-reason code", f"one of {', '.join(DATA_ABSENT_REASONS)}")
        if status is not None and (not isinstance(status, str) or (resource == "Observation" and status not in OBSERVATION_STATUSES)):
            raise _err(path, spec, "absent", f"{fld}.absent.{text}.status", f"{status!r} is not a status", f"one of {', '.join(OBSERVATION_STATUSES)}")
        out[str(text).strip()] = (reason, status)
        out.setdefault(str(text).strip().casefold(), (reason, status))
    return out


def _parse_source(path: Path, spec: LineDict, target: str, fld: str, line: int, resource: str,
                  bounds: DateBounds, alternative: bool = False) -> Element:
    """One source (a line, or one alternative of a first_of line) with its options, validated."""
    kinds = [k for k in SOURCE_KINDS if k in spec]
    if len(kinds) != 1:
        raise _err(path, spec, kinds[1] if len(kinds) > 1 else "", fld, f"names {len(kinds)} sources", f"exactly one of {', '.join(SOURCE_KINDS)}")
    kind = kinds[0]
    options = {k: v for k, v in spec.items() if k != kind}
    unknown = set(options) - ELEMENT_OPTIONS
    if unknown:
        raise _err(path, spec, sorted(unknown)[0], fld, f"unknown option {sorted(unknown)[0]!r}", f"one of {', '.join(sorted(ELEMENT_OPTIONS))}")
    for opt, kinds_ok in _ONLY.items():
        if opt in options and kind not in kinds_ok:
            raise _err(path, spec, opt, fld, f"{opt} does not apply to a {kind} line", f"{opt} on a {' or '.join(kinds_ok)} line")
    if options.get("type", "string") not in TYPES:
        raise _err(path, spec, "type", fld, f"unknown type {options['type']!r}", f"one of {', '.join(TYPES)}")
    if options.get("unmapped", "quarantine") not in UNMAPPED:
        raise _err(path, spec, "unmapped", fld, f"unknown behaviour {options['unmapped']!r}", f"one of {', '.join(UNMAPPED)}")
    if options.get("unmapped") == "default" and "default" not in options:
        raise _err(path, spec, "unmapped", fld, "says default but gives no default", "a default: value")
    if options.get("required", False) not in (True, False) and not (kind == "codeable" and options["required"] == "code"):
        raise _err(path, spec, "required", fld, f"{options['required']!r} is not true or false", "true, false, or code (on a codeable line: a text alone does not do)")
    if "coding" in options:
        c = options["coding"]
        if kind != "codeable" or not isinstance(c, dict) or not isinstance(c.get("system"), str) or not isinstance(c.get("code"), str):
            raise _err(path, spec, "coding", fld, "is not a coding from columns", "on a codeable line: coding: {system: <URI>, code: <column>, display: <column>}")
    if options.get("check") is not None and options["check"] not in CHECKS:
        raise _err(path, spec, "check", fld, f"unknown check {options['check']!r}", f"one of {', '.join(CHECKS)}")
    if kind == "reference":
        if spec["reference"] not in RESOURCE_MODULES:
            raise _err(path, spec, "reference", fld, f"unknown resource type {spec['reference']!r}", "a resource type hub maps")
        if not isinstance(options.get("key"), list) or not options["key"]:
            raise _err(path, spec, "reference", fld, "has no key", "key: [column, ...] naming the referenced row")
    if "format" in options:
        options["format"] = _parse_formats(path, spec, "format", f"{fld}.format", options["format"])
    if "transform" in options:
        def fail(i: int, sub: str, problem: str, expected: str) -> ConfigError:
            where = f"{fld}.transform" + (f"[{i}]" if i >= 0 else "") + (f".{sub}" if sub else "")
            return _err(path, spec, "transform", where, problem, expected)
        options["transform"] = compile_transform(options["transform"], fail)
    if "thousands" in options and options["thousands"] not in THOUSANDS:
        raise _err(path, spec, "thousands", f"{fld}.thousands", f"{options['thousands']!r} is not a thousands separator",
                   "one of ',', ' ', \"'\" (groups of three digits: 25,000)")
    if "comparators" in options:
        words = options["comparators"]
        if not isinstance(words, dict) or not all(isinstance(w, str) and w.strip() and op in COMPARATOR_CODES for w, op in words.items()):
            raise _err(path, spec, "comparators", f"{fld}.comparators", "is not a map of words to comparators",
                       f"{{word: comparator}} with comparators {', '.join(COMPARATOR_CODES)}, e.g. {{ABOVE: '>'}}")
    if "absent" in options:
        options["absent"] = _parse_absent(path, spec, fld, resource)
    dated = kind in ("column", "concat") and options.get("type") in ("date", "dateTime")
    for opt in ("not_before", "not_after", "not_before_birth"):
        if opt in options and not dated:
            raise _err(path, spec, opt, fld, f"{opt} applies to date and dateTime lines", "type: date or type: dateTime on this line")
    if dated:
        options["bounds"] = _parse_bounds(path, spec, fld, bounds)
    birth = options.get("not_before_birth")
    if birth is False:
        del options["not_before_birth"]
    elif birth is not None and birth is not True and not (isinstance(birth, str) and _COLUMN_RE.match(birth)):
        raise _err(path, spec, "not_before_birth", f"{fld}.not_before_birth", f"{birth!r} is not true or a column",
                   "true (the published patient's birth date) or a column holding the birth date (e.g. patient.birth_date)")
    source = spec[kind]
    if kind == "concat":
        if not isinstance(source, list) or len(source) < 2 or not all(isinstance(c, str) and _COLUMN_RE.match(c) for c in source):
            raise _err(path, spec, "concat", fld, "is not a list of columns", "two or more columns: [sample_date, sample_time]")
        if not isinstance(options.get("separator", " "), str):
            raise _err(path, spec, "separator", fld, "is not text", "separator: ' '")
        source = tuple(source)
    if kind in ("column", "codeable", "quantity", "range", "lab_value", "reference_range") and not (isinstance(source, str) and _COLUMN_RE.match(source)):
        raise _err(path, spec, kind, fld, f"{source!r} is not a column", "a column name, or table.column for a joined table")
    if kind == "first_of":
        if alternative:
            raise _err(path, spec, "first_of", fld, "nests first_of", "alternatives that are single sources")
        extra = set(options) - {"required", "phi"}
        if extra:
            raise _err(path, spec, sorted(extra)[0], fld, f"{sorted(extra)[0]} on a first_of line",
                       "options inside each alternative (only required and phi on the first_of line)")
        if not isinstance(source, list) or len(source) < 2 or not all(isinstance(a, dict) for a in source):
            raise _err(path, spec, "first_of", fld, "is not a list of alternatives", "two or more sources tried in order: [{quantity: dose}, {range: dose}]")
        source = tuple(_parse_source(path, a, target, f"{fld}.first_of[{i}]", getattr(a, "line", line) or line, resource, bounds, True)
                       for i, a in enumerate(source))
        if any(a.options.get("phi") for a in source):  # one identifying alternative makes the line identifying
            options["phi"] = True
    return Element(path=target, kind=kind, source=source, options=options, line=line)


def _check_choice(path: Path, elements: LineDict, target: str, fld: str, resource: str, el: Element) -> None:
    """A [x] element: each source's datatype must be one of the choice's types in FHIR R4."""
    parts = [p.split("[")[0] for p in target.split(".")]
    names = _model_fields(resource, parts[:-1])
    for alt in (el.source if el.kind == "first_of" else (el,)):
        if alt.kind == "lab_value":
            suffixes: tuple[str, ...] = ("Quantity", "CodeableConcept", "String")
        elif alt.kind in KIND_DATATYPE:
            suffixes = (KIND_DATATYPE[alt.kind],)
        elif alt.kind in ("column", "concat"):
            suffixes = (TYPE_DATATYPE[alt.options.get("type", "string")],)
        else:
            raise _err(path, elements, target, fld, f"{alt.kind} cannot fill a choice element",
                       "lab_value, quantity, range, codeable, or a column with a type")
        for sfx in suffixes:
            if names is not None and parts[-1] + sfx not in names:
                have = sorted(n for n in names if n.startswith(parts[-1]) and n[len(parts[-1]):][:1].isupper())
                raise _err(path, elements, target, fld, f"a {alt.kind} line gives {parts[-1]}{sfx}, which FHIR R4 does not have here",
                           f"a source giving one of {', '.join(have)}")
    if any(a.options.get("absent") for a in (el.source if el.kind == "first_of" else (el,))):
        if names is not None and "dataAbsentReason" not in names:
            raise _err(path, elements, target, fld, "has absent: but no dataAbsentReason beside it", "absent: on an Observation value[x]")


def _parse_element(path: Path, elements: LineDict, target: str, resource: str, bounds: DateBounds) -> Element:
    spec = elements[target]
    fld = f"{resource}.{target}"
    line = elements.line_of(target)
    if not isinstance(target, str) or not _PATH_RE.match(target):
        raise _err(path, elements, target, fld, "is not an element path", "a path like code.coding[0].system or value[x]")
    _check_path_in_model(path, elements, target, resource, target)
    if not isinstance(spec, dict):
        spec = LineDict(const=spec)
        spec.line, spec.key_lines = line, {}
    el = _parse_source(path, spec, target, fld, line, resource, bounds)
    if target.endswith("[x]"):
        _check_choice(path, elements, target, fld, resource, el)
    elif el.kind == "lab_value" or (el.kind == "first_of" and any(a.kind == "lab_value" for a in el.source)):
        raise _err(path, elements, target, fld, "lab_value fills a choice element", "a path ending in value[x]")
    return el


def _parse_where(path: Path, node: LineDict, resource: str, names: list[str]) -> tuple[Condition, ...]:
    """where: {column: value | [values] | null | {op: value, ...}} -> conditions, ANDed."""
    where = node.get("where")
    if where is None:
        return ()
    fld = f"{resource}.where"
    expected = "{column: value, column: [v1, v2], column: null, column: {ne: X, not_in: [...], is_null: false, ge: {column: other}}}"
    if not isinstance(where, dict) or not where:
        raise _err(path, node, "where", fld, "is not a map of conditions", expected)
    out: list[Condition] = []

    def check_column(column: Any, key: str) -> str:
        if not isinstance(column, str) or not _COLUMN_RE.match(column):
            raise _err(path, where, key, f"{fld}.{key}", f"{column!r} is not a column", "a column, or table.column of a joined table")
        if "." in column and column.split(".")[0] not in names:
            raise _err(path, where, key, f"{fld}.{key}", f"{column!r} names a table the block does not read", f"a column of {', '.join(names)}")
        return column

    def scalar(value: Any) -> bool:
        return isinstance(value, str | int | float | bool | dt.date)

    for column, cond in where.items():
        check_column(column, column)
        ops = cond if isinstance(cond, dict) else (
            {"is_null": True} if cond is None else {"in": cond} if isinstance(cond, list) else {"eq": cond})
        for op, value in ops.items():
            f = f"{fld}.{column}.{op}"
            if op not in WHERE_OPS:
                raise _err(path, where, column, f, f"unknown condition {op!r}", f"one of {', '.join(WHERE_OPS)}")
            if op == "is_null":
                if not isinstance(value, bool):
                    raise _err(path, where, column, f, "is not true or false", "is_null: true (keep rows where it is NULL) or false")
            elif op in ("in", "not_in"):
                if not isinstance(value, list) or not value or not all(scalar(v) for v in value):
                    raise _err(path, where, column, f, "is not a list of values", f"{op}: [A, B]")
                value = tuple(value)
            elif isinstance(value, dict):
                if set(value) != {"column"}:
                    raise _err(path, where, column, f, "is not a value or {column: <column>}", "a constant, or {column: other_column}")
                value = ColumnRef(check_column(value["column"], column))
            elif not scalar(value):
                raise _err(path, where, column, f, f"{value!r} is not a value", "a constant (text, number, date), or {column: other_column}")
            out.append(Condition(column, op, value))
    return tuple(out)


def check_query(sql: str) -> str | None:
    """Why sql is not a single read-only SELECT (None when it is). A guard against mistakes, not a
    sandbox: the source account should be read-only as well."""
    text = _QUERY_STRIP.sub(" ", sql)
    if "'" in text or '"' in text:
        return "has an unterminated quote"
    if ";" in text:
        return "has a semicolon (one statement only, without a trailing ;)"
    if "--" in text or "/*" in text:
        return "has a comment"
    words = [w.lower() for w in _QUERY_WORD.findall(text)]
    if not words or words[0] not in ("select", "with"):
        return "does not start with SELECT or WITH"
    bad = sorted({w for w in words if w in _QUERY_FORBIDDEN})
    if bad:
        return f"uses {', '.join(w.upper() for w in bad)}, which a read-only query may not"
    return None


def _parse_from(path: Path, node: LineDict, resource: str) -> tuple[str, str | None]:
    """(table name, query or None) from `from: table` or `from: {query: "SELECT ...", as: name}`."""
    src = node.get("from")
    if isinstance(src, str):
        return src, None
    expected = 'a table name, or {query: "SELECT ...", as: <name>}'
    if not isinstance(src, dict):
        raise _err(path, node, "from", f"{resource}.from", "is missing" if src is None else "is not a table or a query", expected)
    if set(src) != {"query", "as"} or not isinstance(src["query"], str) or not isinstance(src["as"], str):
        raise _err(path, node, "from", f"{resource}.from", "is not a query with a name", expected)
    if not _NAME_RE.match(src["as"]):
        raise _err(path, src, "as", f"{resource}.from.as", f"{src['as']!r} is not a name", "a name like lab_results (columns are named as.column)")
    problem = check_query(src["query"])
    if problem:
        raise _err(path, src, "query", f"{resource}.from.query", problem, "a single read-only SELECT (or WITH ... SELECT) statement")
    return src["as"], src["query"].strip()


def _parse_occurrence(path: Path, node: LineDict, resource: str, key: list) -> Occurrence | None:
    occ = node.get("occurrence")
    if occ is None:
        return None
    fld = f"{resource}.occurrence"
    if not isinstance(occ, dict) or set(occ) - {"order_by", "as"}:
        raise _err(path, node, "occurrence", fld, "is not an occurrence", "{order_by: [column, ...], as: occurrence}")
    order_by, name = occ.get("order_by"), occ.get("as", "occurrence")
    if not isinstance(order_by, list) or not order_by or not all(isinstance(c, str) and _NAME_RE.match(c) for c in order_by):
        raise _err(path, occ, "order_by", f"{fld}.order_by", "is not a list of columns of the block's table",
                   "[column, ...]: the order that numbers rows sharing a natural key (e.g. [charttime])")
    if not isinstance(name, str) or not _NAME_RE.match(name) or name in key:
        raise _err(path, occ, "as", f"{fld}.as", f"{name!r} is not a new column name", "a name not among the key columns, like occurrence")
    return Occurrence(tuple(order_by), name)


def _parse_block(path: Path, node: LineDict, terminology: dict[str, ConceptMap], bounds: DateBounds) -> Block:
    resource = _need(path, node, "resource", "resource", str, "a FHIR resource type")
    if resource not in RESOURCE_MODULES:
        raise _err(path, node, "resource", "resource", f"{resource!r} is not a type hub maps", ", ".join(RESOURCE_MODULES))
    table, query = _parse_from(path, node, resource)
    key = _need(path, node, "key", f"{resource}.key", list, "a list of key columns")
    joins = []
    for j in node.get("join") or []:
        jt = _need(path, j, "table", f"{resource}.join.table", str, "a table name")
        if isinstance(j, dict) and True in j:  # YAML 1.1 reads a bare `on` key as boolean true
            j["on"] = j.pop(True)
            j.key_lines["on"] = j.key_lines.pop(True, j.line)
        on = _need(path, j, "on", f"{resource}.join.on", dict, "{left_column: right_column}")
        where = j.get("where") or {}
        if not isinstance(where, dict):
            raise _err(path, j, "where", f"{resource}.join.where", "is not a mapping", "{column: constant}")
        alias = j.get("as")
        if alias is not None and (not isinstance(alias, str) or not _NAME_RE.match(alias)):
            raise _err(path, j, "as", f"{resource}.join.as", f"{alias!r} is not a name", "a name like sex_dict")
        joins.append(Join(jt, tuple((k if "." in k else f"{table}.{k}", v) for k, v in on.items()), alias, tuple(where.items())))
    names = [table] + [j.name for j in joins]
    if len(set(names)) != len(names):
        raise _err(path, node, "join", f"{resource}.join", "joins the same table twice without distinct `as` names", "as: <alias> on repeated tables")
    unpivot = None
    if node.get("unpivot") is not None:
        u = node["unpivot"]
        if not isinstance(u, dict) or not isinstance(u.get("columns"), list) or not u["columns"]:
            raise _err(path, node, "unpivot", f"{resource}.unpivot", "has no columns", "{columns: [wide column, ...], item: item, value: value}")
        unpivot = Unpivot(tuple(u["columns"]), u.get("item", "item"), u.get("value", "value"))
    occurrence = _parse_occurrence(path, node, resource, key)
    if occurrence is not None:
        key = [*key, occurrence.name]
    id_spec = node.get("id") or {}
    namespace = id_spec.get("namespace", resource.lower())
    id_key = tuple(id_spec.get("key", key))
    watermark = None
    if node.get("watermark") is not None:
        wm = node["watermark"]
        if not isinstance(wm, dict) or not isinstance(wm.get("column"), str) or "." in wm["column"]:
            raise _err(path, node, "watermark", f"{resource}.watermark", "is not a watermark", "{column: <column of the block's table>, kind: timestamp|key}")
        if wm.get("kind", "timestamp") not in ("timestamp", "key"):
            raise _err(path, wm, "kind", f"{resource}.watermark.kind", f"unknown kind {wm['kind']!r}", "timestamp (an update time) or key (a growing key)")
        watermark = Watermark(wm["column"], wm.get("kind", "timestamp"))
    where = _parse_where(path, node, resource, names)
    elements_node = _need(path, node, "elements", f"{resource}.elements", dict, "element lines")
    elements = [_parse_element(path, elements_node, t, resource, bounds) for t in elements_node]
    for el in elements:
        for alt in (el.source if el.kind == "first_of" else (el,)):
            for opt in ("map", "unit_map", "text_map"):
                name = alt.options.get(opt)
                if name is not None and name not in terminology:
                    raise ConfigError(str(path), el.line, f"{resource}.{el.path}", f"{opt} {name!r} is not declared under terminology", f"one of {', '.join(terminology) or '(none declared)'}")
    key_is_identifier = bool(node.get("key_is_identifier", False))
    safe = _safe_columns(path, node, resource, table, names, key, key_is_identifier, id_key, watermark, elements)
    return Block(
        resource=resource, table=table, key=tuple(key),
        key_is_identifier=key_is_identifier, joins=tuple(joins),
        namespace=namespace, id_key=id_key, elements=tuple(elements), line=node.line, watermark=watermark,
        unpivot=unpivot, safe_columns=safe, where=where, query=query, occurrence=occurrence,
    )


def element_columns(el: Element) -> list[str]:
    """The source columns an element line reads, as the mapping names them."""
    if el.kind == "first_of":
        return [c for alt in el.source for c in element_columns(alt)]
    cols = [el.source] if el.kind in ("column", "codeable", "lab_value", "reference_range", "quantity", "range") else []
    if el.kind == "concat":
        cols += list(el.source)
    if isinstance(el.options.get("not_before_birth"), str):
        cols.append(el.options["not_before_birth"])
    if el.kind == "reference":
        cols += [c for c in el.options.get("key", []) if c != INSTITUTION]
    cols += [el.options[o] for o in ("text", "unit") if isinstance(el.options.get(o), str)]
    coding = el.options.get("coding")
    if isinstance(coding, dict):
        cols += [coding[o] for o in ("code", "display") if isinstance(coding.get(o), str)]
    return cols


def _safe_columns(path: Path, node: LineDict, resource: str, table: str, names: list[str], key: list, key_is_identifier: bool,
                  id_key: tuple, watermark: Watermark | None, elements: list[Element]) -> frozenset[str]:
    """The block's ``safe_columns``, qualified: columns the block reads, none of them identifying."""
    declared = node.get("safe_columns")
    if declared is None:
        return frozenset()
    fld = f"{resource}.safe_columns"

    def qualify(column: str) -> str:
        return column if "." in column else f"{table}.{column}"

    if not isinstance(declared, list) or not all(isinstance(c, str) and _COLUMN_RE.match(c) for c in declared):
        raise _err(path, node, "safe_columns", fld, "is not a list of column names",
                   "[column, table.column, ...]: columns whose values reasons may show (codes, keys)")
    used = {qualify(c) for c in [*key, *id_key, *([watermark.column] if watermark else [])] if c != INSTITUTION}
    identifying: dict[str, str] = {qualify(c): "a key_is_identifier key" for c in key} if key_is_identifier else {}
    if resource == "Patient":  # Patient ids are keyed by the MRN
        identifying.update({qualify(c): "the Patient id key (an MRN)" for c in id_key if c != INSTITUTION})
    for el in elements:
        if el.kind == "reference" and el.source == "Patient":
            identifying.update({qualify(c): f"a Patient reference key (line {el.line}), an MRN" for c in element_columns(el)})
        used.update(qualify(c) for c in element_columns(el))
        if el.options.get("phi") or el.options.get("check"):
            identifying.update({qualify(c): f"identifying (line {el.line}: {resource}.{el.path} is "
                                f"{'phi' if el.options.get('phi') else 'checked as an ID number'})" for c in element_columns(el)})
    for column in declared:
        q = qualify(column)
        if q.split(".")[0] not in names:
            raise _err(path, node, "safe_columns", fld, f"{column!r} names a table the block does not read",
                       f"a column of {', '.join(names)}")
        if q not in used:
            raise _err(path, node, "safe_columns", fld, f"{column!r} is not read by this block",
                       "a column the block's key or elements read")
        if q in identifying:
            raise _err(path, node, "safe_columns", fld, f"{column!r} is {identifying[q]}",
                       "only columns holding codes or non-identifying keys")
    return frozenset(qualify(c) for c in declared)


def load_mapping(path: Path) -> Mapping:
    """Load and validate a mapping file and the terminology files it names."""
    path = Path(path)
    doc = load_yaml(path)
    if not isinstance(doc, LineDict):
        raise ConfigError(str(path), 1, "(file)", "is not a mapping document", "keys mapping, system, resources")
    name = _need(path, doc, "mapping", "mapping", str, "the mapping's name")
    system = _need(path, doc, "system", "system", str, "HIS or LIS")
    tz = _parse_timezone(path, doc)
    datetime_formats = _parse_formats(path, doc, "datetime_formats", "datetime_formats", doc["datetime_formats"]) if doc.get("datetime_formats") else ("%Y-%m-%d %H:%M:%S",)
    date_formats = _parse_formats(path, doc, "date_formats", "date_formats", doc["date_formats"]) if doc.get("date_formats") else ("%Y-%m-%d",)
    bounds = DateBounds()
    if doc.get("date_bounds") is not None:
        if not isinstance(doc["date_bounds"], dict) or set(doc["date_bounds"]) - {"not_before", "not_after"}:
            raise _err(path, doc, "date_bounds", "date_bounds", "is not a pair of bounds", "{not_before: 1900-01-01, not_after: now+1d}")
        bounds = _parse_bounds(path, doc["date_bounds"], "date_bounds", bounds)
    terminology = {}
    for tname, tpath in (doc.get("terminology") or {}).items():
        full = (path.parent / tpath).resolve()
        if not full.exists():
            raise _err(path, doc.get("terminology"), tname, f"terminology.{tname}", f"file {tpath} not found", "a ConceptMap JSON file relative to the mapping")
        terminology[tname] = load_concept_map(full)
    resources = _need(path, doc, "resources", "resources", list, "a list of resource blocks")
    blocks = [_parse_block(path, b, terminology, bounds) for b in resources]
    seen: dict[tuple[str, str], int] = {}
    for b in blocks:
        if (b.resource, b.namespace) in seen:
            raise ConfigError(str(path), b.line, f"{b.resource}.id.namespace", f"namespace {b.namespace!r} already used by the block at line {seen[(b.resource, b.namespace)]}", "a distinct id namespace per block of the same resource type")
        seen[(b.resource, b.namespace)] = b.line
    digest = hashlib.sha256(path.read_bytes())
    for cm in terminology.values():
        digest.update(Path(cm.path).read_bytes())
    return Mapping(
        name=name, version=str(doc.get("version", "0")), system=system, path=path, timezone=tz,
        datetime_formats=datetime_formats, date_formats=date_formats,
        terminology=terminology, blocks=blocks, content_hash=digest.hexdigest(), date_bounds=bounds,
    )


def _parse_timezone(path: Path, doc: LineDict) -> dt.tzinfo:
    """timezone: a fixed offset (+08:00) or an IANA name (Asia/Shanghai, America/New_York)."""
    text = str(doc.get("timezone", "+08:00")).strip()
    if _TZ_RE.match(text):
        sign = -1 if text[0] == "-" else 1
        return dt.timezone(sign * dt.timedelta(hours=int(text[1:3]), minutes=int(text[4:6])))
    try:
        if "/" in text or text == "UTC":
            return zoneinfo.ZoneInfo(text)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        pass
    raise _err(path, doc, "timezone", "timezone", f"{text!r} is neither an offset nor a time zone name",
               "an offset like +08:00 or an IANA time zone name like Asia/Shanghai or America/New_York")
