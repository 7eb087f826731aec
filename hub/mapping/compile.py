"""Compile a mapping block into a fast row -> FHIR resource function.

Each element line becomes one closure over pre-resolved column positions, so mapping a
batch is a loop of plain function calls. Problems are collected per row (not just the
first) as RowProblem records that quarantine stores in clear: they name the row by its
key, the element, what was wrong and what was expected, and never echo an identifying
value.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from deid.keys import Keyring
from hub.fhir.ids import key_text, resource_id
from hub.identifiers import is_valid_resident_id, redact_identifiers
from hub.mapping.spec import INSTITUTION, Block, Element, Mapping
from hub.mapping.terminology import ConceptMap
from hub.mapping.values import (
    ValueProblem,
    parse_date,
    parse_datetime,
    parse_decimal,
    parse_integer,
    parse_lab_value,
    parse_reference_range,
)

UCUM = "http://unitsofmeasure.org"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"


@dataclass(frozen=True)
class RowProblem:
    """Why one source row could not become a resource. Safe to store in clear."""

    location: str  # mapping file:line
    element: str  # e.g. Observation.effectiveDateTime
    column: str | None
    problem: str
    expected: str
    shown_value: str | None  # the offending value, only when the column is not identifying

    def reason(self, row_label: str) -> str:
        value = f"{self.shown_value!r} " if self.shown_value is not None else ""
        col = f" column {self.column}" if self.column else ""
        return (
            f"{self.location} {self.element}: row {row_label}{col}: {value}{self.problem}; "
            f"expected {self.expected}"
        )


class _Problem(Exception):
    def __init__(self, column: str | None, value: Any, problem: str, expected: str):
        self.column, self.value, self.problem, self.expected = column, value, problem, expected


_TOKEN_RE = re.compile(r"([A-Za-z]+)(?:\[(\d+|x)\])?")


def _tokens(path: str) -> list[tuple[str, int | None]]:
    out = []
    for part in path.split("."):
        m = _TOKEN_RE.fullmatch(part)
        assert m, part
        idx = m.group(2)
        out.append((m.group(1), None if idx in (None, "x") else int(idx)))
    return out


def _set(resource: dict, tokens: list[tuple[str, int | None]], value: Any) -> None:
    node: Any = resource
    for depth, (name, idx) in enumerate(tokens):
        last = depth == len(tokens) - 1
        if idx is None:
            if last:
                node[name] = value
                return
            node = node.setdefault(name, {})
        else:
            seq = node.setdefault(name, [])
            while len(seq) <= idx:
                seq.append({})
            if last:
                seq[idx] = value
                return
            node = seq[idx]


def _anchor(el: Element) -> str | None:
    """The path up to the first list index (``identifier[0]``), or None if the path has none."""
    m = re.match(r"^[A-Za-z]+\[\d+\]", el.path)
    return m.group(0) if m else None


def _prune(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _prune(v) for k, v in node.items()}
        return {k: v for k, v in out.items() if v not in (None, {}, [], "")}
    if isinstance(node, list):
        out = [_prune(v) for v in node]
        return [v for v in out if v not in (None, {}, [], "")]
    return node


def _coding(system: str, code: str, display: str | None) -> dict[str, str]:
    return {"system": system, "code": code, "display": display} if display else {"system": system, "code": code}


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


class CompiledBlock:
    """A mapping block bound to an institution, its keys and the source column order."""

    def __init__(self, mapping: Mapping, block: Block, institution: str, keys: Keyring):
        self.mapping, self.block, self.institution, self.keys = mapping, block, institution, keys
        self.columns: list[str] = []
        self._index: dict[str, int] = {}
        #: (terminology name, local value) -> times seen without a mapping, whatever the unmapped behaviour
        self.unmapped: Counter[tuple[str, str]] = Counter()
        for col in block.key:
            self._col(col)
        for col in block.id_key:
            if col != INSTITUTION:
                self._col(col)
        self.watermark = self._col(block.watermark.column) if block.watermark else None
        self._id_getters = [self._key_getter(c) for c in block.id_key]
        self._key_getters = [self._col(c) for c in block.key]
        self._elements = [(el, _tokens(el.path), self._compile(el), _anchor(el)) for el in block.elements]
        # Repeating elements fed by data (not only constants): dropped whole when no data arrives,
        # so an identifier with no value does not survive as a bare system.
        self._data_anchors = {a: _tokens(a) for el, _, _, a in self._elements if a and el.kind != "const"}

    # -- columns ---------------------------------------------------------------
    def qualify(self, column: str) -> str:
        return column if "." in column else f"{self.block.table}.{column}"

    def _col(self, column: str) -> Callable[[Sequence[Any]], Any]:
        q = self.qualify(column)
        if q not in self._index:
            self._index[q] = len(self.columns)
            self.columns.append(q)
        i = self._index[q]
        return lambda row: row[i]

    def _key_getter(self, column: str) -> Callable[[Sequence[Any]], Any]:
        if column == INSTITUTION:
            inst = self.institution
            return lambda row: inst
        return self._col(column)

    # -- element compilers -----------------------------------------------------
    def _compile(self, el: Element) -> Callable[[Sequence[Any]], Any]:
        return getattr(self, f"_c_{el.kind}")(el)

    def _c_const(self, el: Element) -> Callable:
        value = el.source
        if isinstance(value, str):
            value = value.replace("{institution}", self.institution)
        return lambda row: value

    def _convert(self, el: Element, column: str) -> Callable[[Any], Any]:
        typ = el.options.get("type", "string")
        m = self.mapping
        fmt = el.options.get("format")
        if typ == "dateTime":
            formats, tz = (tuple([fmt]) if isinstance(fmt, str) else tuple(fmt or m.datetime_formats)), m.timezone
            return lambda v: parse_datetime(v, formats, tz)
        if typ == "date":
            formats = tuple([fmt]) if isinstance(fmt, str) else tuple(fmt or m.date_formats)
            return lambda v: parse_date(v, formats)
        if typ == "decimal":
            return parse_decimal
        if typ == "integer":
            return parse_integer
        if typ == "boolean":
            return lambda v: str(v).strip().lower() in ("1", "true", "y", "yes", "是")
        return lambda v: str(v).strip()

    def _mapped(self, el: Element, cmap: ConceptMap, column: str) -> Callable[[str], Any]:
        behaviour = el.options.get("unmapped", "quarantine")
        default = el.options.get("default")
        tname = el.options["map"]
        shown = "(withheld: identifying column)" if el.options.get("phi") else None
        unmapped = self.unmapped

        def lookup(code: str):
            hit = cmap.lookup(code)
            if hit is not None:
                return hit
            unmapped[(tname, shown or code)] += 1
            if behaviour == "quarantine":
                raise _Problem(column, code, f"has no mapping in {cmap.name}", f"a code listed in {cmap.path.split('/')[-1]} (or unmapped: keep/default)")
            return None if behaviour == "keep" else default

        return lookup

    def _c_column(self, el: Element) -> Callable:
        column = el.source
        get = self._col(column)
        convert = self._convert(el, column)
        check = el.options.get("check")
        cmap = self.mapping.terminology.get(el.options.get("map")) if el.options.get("map") else None
        lookup = self._mapped(el, cmap, column) if cmap else None
        keep_raw = el.options.get("unmapped") == "keep"

        def fn(row):
            raw = get(row)
            if _blank(raw):
                return None
            if check == "gb11643" and not is_valid_resident_id(str(raw)):
                raise _Problem(column, raw, "fails the GB 11643 check digit", "an 18-character resident ID number with a valid check character")
            if lookup is not None:
                hit = lookup(str(raw).strip())
                if hit is None:
                    return str(raw).strip() if keep_raw else None
                return hit.code if hasattr(hit, "code") else hit
            try:
                return convert(raw)
            except ValueProblem as p:
                raise _Problem(column, raw, p.problem, p.expected) from None

        return fn

    def _c_codeable(self, el: Element) -> Callable:
        column = el.source
        get = self._col(column)
        local_system = (el.options.get("system") or "").replace("{institution}", self.institution)
        cmap = self.mapping.terminology.get(el.options.get("map")) if el.options.get("map") else None
        lookup = self._mapped(el, cmap, column) if cmap else None
        text_get = self._col(el.options["text"]) if el.options.get("text") else None
        std = el.options.get("coding")
        std_code = self._col(std["code"]) if std else None
        std_display = self._col(std["display"]) if std and std.get("display") else None
        std_quarantine = el.options.get("unmapped", "quarantine") == "quarantine"
        unmapped = self.unmapped

        def fn(row):
            raw = get(row)
            if _blank(raw):
                return None
            code = str(raw).strip()
            codings = []
            if std_code is not None:
                sc = std_code(row)
                if _blank(sc):
                    unmapped[(std["code"], code)] += 1
                    if std_quarantine:
                        raise _Problem(column, code, f"has no standard code in {std['code']}", f"a {std['system']} code in {std['code']} for this local code (or unmapped: keep)")
                else:
                    display = std_display(row) if std_display else None
                    codings.append(_coding(std["system"], str(sc).strip(), None if _blank(display) else str(display).strip()))
            if lookup is not None:
                hit = lookup(code)
                if hit is not None and hasattr(hit, "code"):
                    codings.append(_coding(hit.system, hit.code, hit.display))
            if local_system:
                codings.append(_coding(local_system, code, cmap.source_display.get(code) if cmap else None))
            out: dict[str, Any] = {"coding": codings} if codings else {}
            if text_get is not None and not _blank(text_get(row)):
                out["text"] = str(text_get(row)).strip()
            return out or None

        return fn

    def _c_reference(self, el: Element) -> Callable:
        target = el.source
        namespace = el.options.get("namespace", target.lower())
        getters = [self._key_getter(c) for c in el.options["key"]]
        cols = ", ".join(el.options["key"])
        keys, inst = self.keys, self.institution

        def fn(row):
            values = [g(row) for g in getters]
            if any(_blank(v) for v in values):
                if el.options.get("required"):
                    raise _Problem(cols, None, f"is empty, so the {target} cannot be referenced", f"the key of an existing {target}")
                return None
            return {"reference": f"{target}/{resource_id(keys, inst, namespace, values)}"}

        return fn

    def _unit(self, el: Element) -> Callable[[Sequence[Any]], dict]:
        if not el.options.get("unit"):
            return lambda row: {}
        get = self._col(el.options["unit"])
        umap = self.mapping.terminology.get(el.options.get("unit_map")) if el.options.get("unit_map") else None
        tname, unmapped = el.options.get("unit_map"), self.unmapped

        def fn(row):
            raw = get(row)
            if _blank(raw):
                return {}
            unit = str(raw).strip()
            hit = umap.lookup(unit) if umap else None
            if hit is None:
                if umap is not None:
                    unmapped[(tname, unit)] += 1
                return {"unit": unit}
            return {"unit": unit, "system": UCUM, "code": hit.code}

        return fn

    def _c_quantity(self, el: Element) -> Callable:
        column = el.source
        get = self._col(column)
        unit = self._unit(el)

        def fn(row):
            raw = get(row)
            if _blank(raw):
                return None
            try:
                value = parse_decimal(raw)
            except ValueProblem as p:
                raise _Problem(column, raw, p.problem, p.expected) from None
            return {"value": value, **unit(row)}

        return fn

    def _c_lab_value(self, el: Element) -> Callable:
        column = el.source
        get = self._col(column)
        unit = self._unit(el)
        tmap = self.mapping.terminology.get(el.options.get("text_map")) if el.options.get("text_map") else None

        def fn(row):
            raw = get(row)
            if _blank(raw):
                return None
            parsed = parse_lab_value(raw)
            if isinstance(parsed, tuple):
                comparator, value = parsed
                q: dict[str, Any] = {"value": value, **unit(row)}
                if comparator:
                    q["comparator"] = comparator
                return ("Quantity", q)
            hit = tmap.lookup(parsed) if tmap else None
            if hit is not None:
                return ("CodeableConcept", {"coding": [_coding(hit.system, hit.code, hit.display)], "text": parsed})
            return ("String", parsed)

        return fn

    def _c_reference_range(self, el: Element) -> Callable:
        get = self._col(el.source)
        unit = self._unit(el)

        def fn(row):
            raw = get(row)
            if _blank(raw):
                return None
            low, high, text = parse_reference_range(raw)
            u = unit(row)
            out: dict[str, Any] = {"text": text}
            if low is not None:
                out["low"] = {"value": low, **u}
            if high is not None:
                out["high"] = {"value": high, **u}
            return out

        return fn

    # -- mapping a row -----------------------------------------------------------
    def source_key(self, row: Sequence[Any]) -> list[Any]:
        return [g(row) for g in self._key_getters]

    def row_label(self, row: Sequence[Any]) -> str:
        """How a quarantine reason names the row: its key columns, hashed if identifying."""
        key = self.source_key(row)
        if self.block.key_is_identifier:
            return f"{self.block.table}(key#{self.keys.hmac_hex('source-key', key_text(key), 12)})"
        return f"{self.block.table}(" + ", ".join(f"{c}={v}" for c, v in zip(self.block.key, key, strict=True)) + ")"

    def map_row(self, row: Sequence[Any]) -> tuple[dict | None, list[RowProblem]]:
        """Map one source row; return the resource, or None and the problems found."""
        resource: dict[str, Any] = {
            "resourceType": self.block.resource,
            "id": resource_id(self.keys, self.institution, self.block.namespace, [g(row) for g in self._id_getters]),
        }
        problems: list[RowProblem] = []
        loc = f"{self.mapping.path.name}"
        filled: set[str] = set()
        for el, tokens, fn, anchor in self._elements:
            try:
                value = fn(row)
            except _Problem as p:
                phi = el.options.get("phi", False)
                shown = None if phi or p.value is None else redact_identifiers(str(p.value))[:80]
                problems.append(RowProblem(f"{loc}:{el.line}", f"{self.block.resource}.{el.path}", p.column, p.problem, p.expected, shown))
                continue
            if value is None:
                if el.options.get("required"):
                    problems.append(RowProblem(f"{loc}:{el.line}", f"{self.block.resource}.{el.path}", el.source if el.kind != "const" else None, "is empty", "a value (this element is required)", None))
                continue
            if anchor and el.kind != "const":
                filled.add(anchor)
            if el.path.endswith("[x]"):
                suffix, value = value
                name, idx = tokens[-1]
                _set(resource, tokens[:-1] + [(name + suffix, idx)], value)
            else:
                _set(resource, tokens, value)
        if problems:
            return None, problems
        empty = self._data_anchors.keys() - filled
        if empty:
            for anchor in empty:
                _set(resource, self._data_anchors[anchor], None)
            resource = _prune(resource)
        return resource, []

