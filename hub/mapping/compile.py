"""Compile a mapping block into a fast row -> FHIR resource function.

Each element line becomes one closure over pre-resolved column positions, so mapping a
batch is a loop of plain function calls. Problems are collected per row (not just the
first) as RowProblem records that quarantine stores in clear: they name the row by its
key, the element, what was wrong and what was expected.

Source values reach a reason, a row label or the unmapped-codes summary only from the
block's ``safe_columns`` (codes, keys), and even then only when short and free of anything
``hub.identifiers`` recognises; every other value is withheld (the encrypted row, opened
with ``hub quarantine show``, still has it).
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from deid.keys import Keyring
from hub.fhir.ids import key_text, resource_id
from hub.identifiers import find_identifiers, is_valid_resident_id
from hub.mapping.spec import (
    INSTITUTION,
    KIND_DATATYPE,
    TYPE_DATATYPE,
    Block,
    Element,
    Mapping,
    element_columns,
)
from hub.mapping.terminology import ConceptMap
from hub.mapping.values import (
    LabValueParser,
    ValueProblem,
    decimal_parser,
    parse_boolean,
    parse_date,
    parse_datetime,
    parse_integer,
    parse_reference_range,
    range_parser,
)

UCUM = "http://unitsofmeasure.org"
SHOW_MAX = 40  # longest source value a reason shows, even from a safe column
NOT_SAFE = "not in safe_columns"


def withheld(column: str | None, value: Any, safe: frozenset[str], phi: bool = False, known: Iterable[str] = ()) -> str | None:
    """Why a source value may not be shown (None: it may). ``column`` is qualified.

    Shown only from a declared safe column, when short, code-like (ASCII, at most
    MAX_SHOWN_DIGITS digits) and when hub.identifiers finds no
    identifier in it (any form it knows: spaced, dashed, full-width ...), nor any of the
    ``known`` identifying values of the same row (its name, when the block maps one).
    """
    if phi:
        return "identifying column"
    if column is None or column not in safe:
        return NOT_SAFE
    text = str(value)
    if len(text) > SHOW_MAX:
        return "too long to show"
    if not _CODE_LIKE.fullmatch(text) or sum(c.isdigit() for c in text) > MAX_SHOWN_DIGITS:
        return "not code-like"
    if find_identifiers(text, known):
        return "looks identifying"
    return None


#: What a shown value may look like: a code (ASCII letters, digits and the punctuation codes use).
#: Anything else (CJK text, which a name is; separators a number can hide behind) is withheld.
_CODE_LIKE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._\-/+%^]*")
#: A shown value holds at most this many digits: fewer than any phone or ID number has.
MAX_SHOWN_DIGITS = 10


@dataclass(frozen=True)
class RowProblem:
    """Why one source row could not become a resource. Safe to store in clear."""

    location: str  # mapping file:line
    element: str  # e.g. Observation.effectiveDateTime
    column: str | None
    problem: str
    expected: str
    shown_value: str | None  # the offending value, only from a safe column (see ``withheld``)
    withheld: str | None = None  # why a value there is not shown

    def reason(self, row_label: str) -> str:
        value = f"{self.shown_value!r} " if self.shown_value is not None else ""
        col = f" column {self.column}" if self.column else ""
        held = f" (value withheld: {self.withheld})" if self.withheld else ""
        return (
            f"{self.location} {self.element}: row {row_label}{col}{held}: {value}{self.problem}; "
            f"expected {self.expected}"
        )


DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
BEFORE_BIRTH_EXPECTED = "a time on or after the birth date (not_before_birth); check the year, e.g. a two-digit year's pivot"


@dataclass(frozen=True)
class _Absent:
    """A lab_value text that means "no result": dataAbsentReason instead of a value, maybe a status."""

    reason: str
    status: str | None

    @property
    def concept(self) -> dict:
        return {"coding": [{"system": DATA_ABSENT, "code": self.reason}]}


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


_EMPTY = (None, {}, [], "")


def _prune(node: Any) -> Any:
    """node without its empty values (None, {}, [], ""), at every depth, emptied containers too."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if _kept(v := _pruned(v)):
                out[k] = v
        return out
    if isinstance(node, list):
        return [v for v in map(_pruned, node) if _kept(v)]
    return node


def _pruned(v: Any) -> Any:
    t = type(v)
    return v if t is str or t is int or v is None else _prune(v)


def _kept(v: Any) -> bool:
    """v not in _EMPTY, decided by type where that is plain."""
    t = type(v)
    if t is str or t is dict or t is list:
        return len(v) > 0
    if t is int:
        return True
    return v not in _EMPTY


def _coding(system: str, code: str, display: str | None) -> dict[str, str]:
    return {"system": system, "code": code, "display": display} if display else {"system": system, "code": code}


#: Key values whose equality means equal key texts (hub.fhir.ids.key_text), so a memo may be keyed by them.
_TEXT_OR_INT = (str, int)


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


class CompiledBlock:
    """A mapping block bound to an institution, its keys and the source column order."""

    def __init__(self, mapping: Mapping, block: Block, institution: str, keys: Keyring, now: dt.datetime | None = None):
        """now: the instant relative date bounds (``not_after: now+1d``) count from; the compile time by default."""
        self.mapping, self.block, self.institution, self.keys = mapping, block, institution, keys
        self.now = now or dt.datetime.now(dt.UTC)
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
        # rows of a table without a primary key that tie on natural key and order: unstable numbers
        self._ties = self._col(block.occurrence.ties) if block.occurrence else None
        #: elements checked against the published patient's birth date (``not_before_birth: true``)
        self.birth_checked = tuple(
            (f"{block.resource}.{el.path}", el.line, _tokens(_concrete(el)))
            for el in block.elements if el.options.get("not_before_birth") is True
        )
        # the row's identifying values (phi lines), looked for in anything a reason would show
        # (phi lines, and the keys of references to a Patient: MRNs identify the person too)
        self._phi_getters = [(self._col(c), el.options.get("type") in ("date", "dateTime", "instant")) for el in block.elements
                             if el.options.get("phi") or (el.kind == "reference" and el.source == "Patient")
                             for c in element_columns(el)]
        # Repeating elements fed by data (not only constants): dropped whole when no data arrives,
        # so an identifier with no value does not survive as a bare system.
        self._data_anchors = {a: _tokens(a) for el, _, _, a in self._elements if a and el.kind != "const"}
        # per element, what map_row asks of it on every row: (element, tokens, function, choice
        # element ([x]), the anchor it fills, required, the key it sets when its path is one plain name)
        self._plan = [
            (el, tokens, fn, el.path.endswith("[x]"), anchor if anchor and el.kind != "const" else None,
             bool(el.options.get("required")),
             tokens[0][0] if len(tokens) == 1 and tokens[0][1] is None and not el.path.endswith("[x]") else None)
            for el, tokens, fn, anchor in self._elements
        ]

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
        fn = getattr(self, f"_c_{el.kind}")(el)
        if not el.path.endswith("[x]") or el.kind in ("lab_value", "first_of"):
            return fn
        suffix = KIND_DATATYPE.get(el.kind) or TYPE_DATATYPE[el.options.get("type", "string")]

        def typed(row):
            value = fn(row)
            return None if value is None else (suffix, value)

        return typed

    def _c_const(self, el: Element) -> Callable:
        value = el.source
        if isinstance(value, str):
            value = value.replace("{institution}", self.institution)
        return lambda row: value

    def _source(self, el: Element) -> tuple[Callable[[Sequence[Any]], Any], str]:
        """The line's raw source value per row (joined columns for concat, transformed when the
        line says so) and the column name problems cite."""
        if el.kind == "concat":
            getters, sep = [self._col(c) for c in el.source], el.options.get("separator", " ")
            column = ", ".join(el.source)

            def get(row):
                parts = [str(v).strip() for v in (g(row) for g in getters) if not _blank(v)]
                return sep.join(parts) if parts else None
        else:
            column = el.source
            get = self._col(column)
        transform = el.options.get("transform")
        if transform is None:
            return get, column

        def transformed(row):
            raw = get(row)
            if _blank(raw):
                return None
            try:
                out = transform(str(raw).strip())
            except ValueProblem as p:
                raise _Problem(column, raw, p.problem, p.expected) from None
            except (re.error, IndexError):  # a replacement template naming a group that did not take part
                raise _Problem(column, raw, "could not be transformed", "a value the line's transform steps apply to") from None
            return out if out.strip() else None

        return transformed, column

    def _convert(self, el: Element, column: str) -> Callable[[Any], Any]:
        typ = el.options.get("type", "string")
        m = self.mapping
        fmt = el.options.get("format")
        if typ == "dateTime":
            formats, tz = (fmt or m.datetime_formats), m.timezone
            return lambda v: parse_datetime(v, formats, tz)
        if typ == "date":
            formats = fmt or m.date_formats
            return lambda v: parse_date(v, formats)
        if typ == "decimal":
            return decimal_parser(el.options.get("thousands"))
        if typ == "integer":
            return parse_integer
        if typ == "boolean":
            return parse_boolean
        return lambda v: str(v).strip()

    def _date_checks(self, el: Element) -> Callable[[str, Sequence[Any]], None] | None:
        """The line's date bounds, and not_before_birth from a column, on a converted value."""
        bounds = el.options.get("bounds")
        if bounds is None:
            return None
        check = bounds.checker(self.mapping.timezone, self.now)
        birth_col = el.options.get("not_before_birth")
        if not isinstance(birth_col, str):
            return lambda value, row: check(value)
        birth_get = self._col(birth_col)
        m = self.mapping

        def born(row) -> str | None:
            raw = birth_get(row)
            if _blank(raw):
                return None
            try:
                return parse_date(raw, m.date_formats)
            except ValueProblem:
                try:
                    return parse_datetime(raw, m.datetime_formats, m.timezone)[:10]
                except ValueProblem:
                    return None  # the patient's own block quarantines an unreadable birth date

        def checks(value: str, row) -> None:
            check(value)
            birth = born(row)
            if birth is not None and value[:10] < birth:
                raise ValueProblem(f"is before the patient's birth date ({birth_col})", BEFORE_BIRTH_EXPECTED)

        return checks

    def _listed(self, column: str, phi: bool = False) -> Callable[[str], str]:
        """How the unmapped-codes summary names a value of this column: itself, or why it is withheld."""
        q, safe = self.qualify(column), self.block.safe_columns

        def name(value: str) -> str:
            why = withheld(q, value, safe, phi)
            return value if why is None else f"(value withheld: {column} {why})"

        return name

    def _mapped(self, el: Element, cmap: ConceptMap, column: str) -> Callable[[str], Any]:
        behaviour = el.options.get("unmapped", "quarantine")
        default = el.options.get("default")
        tname = el.options["map"]
        listed = self._listed(column, bool(el.options.get("phi")))
        unmapped = self.unmapped

        def lookup(code: str):
            hit = cmap.lookup(code)
            if hit is not None:
                return hit
            unmapped[(tname, listed(code))] += 1
            if behaviour == "quarantine":
                raise _Problem(column, code, f"has no mapping in {cmap.name}", f"a code listed in {cmap.path.split('/')[-1]} (or unmapped: keep/default)")
            return None if behaviour == "keep" else default

        return lookup

    def _c_column(self, el: Element) -> Callable:
        get, column = self._source(el)
        convert = self._convert(el, column)
        date_checks = self._date_checks(el)
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
                value = convert(raw)
                if date_checks is not None:
                    date_checks(value, row)
            except ValueProblem as p:
                raise _Problem(column, raw, p.problem, p.expected) from None
            return value

        return fn

    _c_concat = _c_column

    def _c_codeable(self, el: Element) -> Callable:
        get, column = self._source(el)
        local_system = (el.options.get("system") or "").replace("{institution}", self.institution)
        cmap = self.mapping.terminology.get(el.options.get("map")) if el.options.get("map") else None
        lookup = self._mapped(el, cmap, column) if cmap else None
        text_get = self._col(el.options["text"]) if el.options.get("text") else None
        std = el.options.get("coding")
        std_code = self._col(std["code"]) if std else None
        std_display = self._col(std["display"]) if std and std.get("display") else None
        std_quarantine = el.options.get("unmapped", "quarantine") == "quarantine"
        code_required = el.options.get("required") == "code"
        unmapped = self.unmapped
        listed = self._listed(column, bool(el.options.get("phi")))

        def text_of(row) -> str | None:
            if text_get is None:
                return None
            t = text_get(row)
            return None if _blank(t) else str(t).strip()

        def fn(row):
            raw = get(row)
            if _blank(raw):  # no code: the text alone still says what it was
                text = text_of(row)
                if text is not None and code_required:
                    raise _Problem(column, None, "is empty (the line has only a text)", "a code (required: code)")
                return {"text": text} if text is not None else None
            code = str(raw).strip()
            codings = []
            if std_code is not None:
                sc = std_code(row)
                if _blank(sc):
                    unmapped[(std["code"], listed(code))] += 1
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
            text = text_of(row)
            if text is not None:
                out["text"] = text
            return out or None

        return fn

    def _c_reference(self, el: Element) -> Callable:
        target = el.source
        namespace = el.options.get("namespace", target.lower())
        getters = [self._key_getter(c) for c in el.options["key"]]
        cols = ", ".join(el.options["key"])
        keys, inst = self.keys, self.institution
        memo: dict = {}  # source key -> reference: a visit's, an order's rows name the same ones
        required = el.options.get("required")

        if len(getters) == 1:  # the usual case, without the lists
            get = getters[0]

            def one(row):
                value = get(row)
                if _blank(value):
                    if required:
                        raise _Problem(cols, None, f"is empty, so the {target} cannot be referenced", f"the key of an existing {target}")
                    return None
                if type(value) not in _TEXT_OR_INT:
                    return {"reference": f"{target}/{resource_id(keys, inst, namespace, [value])}"}
                ref = memo.get(value)
                if ref is None:
                    if len(memo) >= 4096:
                        memo.clear()
                    ref = memo[value] = f"{target}/{resource_id(keys, inst, namespace, [value])}"
                return {"reference": ref}

            return one

        def fn(row):
            values = [g(row) for g in getters]
            if any(_blank(v) for v in values):
                if el.options.get("required"):
                    raise _Problem(cols, None, f"is empty, so the {target} cannot be referenced", f"the key of an existing {target}")
                return None
            if not all(type(v) in _TEXT_OR_INT for v in values):  # 1 == 1.0 == True, but their key texts differ
                return {"reference": f"{target}/{resource_id(keys, inst, namespace, values)}"}
            key = tuple(values)
            ref = memo.get(key)
            if ref is None:
                if len(memo) >= 4096:
                    memo.clear()
                ref = memo[key] = f"{target}/{resource_id(keys, inst, namespace, values)}"
            return {"reference": ref}

        return fn

    def _unit(self, el: Element) -> Callable[[Sequence[Any]], dict]:
        if not el.options.get("unit"):
            return lambda row: {}
        get = self._col(el.options["unit"])
        umap = self.mapping.terminology.get(el.options.get("unit_map")) if el.options.get("unit_map") else None
        tname, unmapped = el.options.get("unit_map"), self.unmapped
        listed = self._listed(el.options["unit"])

        def fn(row):
            raw = get(row)
            if _blank(raw):
                return {}
            unit = str(raw).strip()
            hit = umap.lookup(unit) if umap else None
            if hit is None:
                if umap is not None:
                    unmapped[(tname, listed(unit))] += 1
                return {"unit": unit}
            return {"unit": unit, "system": UCUM, "code": hit.code}

        return fn

    def _c_quantity(self, el: Element) -> Callable:
        get, column = self._source(el)
        unit = self._unit(el)
        parse = decimal_parser(el.options.get("thousands"))

        def fn(row):
            raw = get(row)
            if _blank(raw):
                return None
            try:
                value = parse(raw)
            except ValueProblem as p:
                raise _Problem(column, raw, p.problem, p.expected) from None
            return {"value": value, **unit(row)}

        return fn

    def _c_range(self, el: Element) -> Callable:
        get, column = self._source(el)
        unit = self._unit(el)
        parse = range_parser(el.options.get("thousands"))

        def fn(row):
            raw = get(row)
            if _blank(raw):
                return None
            try:
                low, high = parse(raw)
            except ValueProblem as p:
                raise _Problem(column, raw, p.problem, p.expected) from None
            u = unit(row)
            return {"low": {"value": low, **u}, "high": {"value": high, **u}}

        return fn

    def _c_lab_value(self, el: Element) -> Callable:
        get, column = self._source(el)
        unit = self._unit(el)
        tmap = self.mapping.terminology.get(el.options.get("text_map")) if el.options.get("text_map") else None
        parse = LabValueParser(el.options.get("thousands"), el.options.get("comparators"))
        absent = {text: _Absent(reason, status) for text, (reason, status) in (el.options.get("absent") or {}).items()}

        def fn(row):
            raw = get(row)
            if _blank(raw):
                return None
            if absent:
                text = str(raw).strip()
                hit = absent.get(text) or absent.get(text.casefold())
                if hit is not None:
                    return hit
            try:
                parsed = parse(raw)
            except ValueProblem as p:
                raise _Problem(column, raw, p.problem, p.expected) from None
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

    def _c_first_of(self, el: Element) -> Callable:
        alternatives = [self._compile(alt) for alt in el.source]

        def fn(row):
            problems: list[_Problem] = []
            for alt in alternatives:
                try:
                    value = alt(row)
                except _Problem as p:
                    problems.append(p)
                    continue
                if value is not None:
                    return value
            if not problems:
                return None
            if len(problems) == 1:
                raise problems[0]
            columns = list(dict.fromkeys(p.column for p in problems if p.column))
            raise _Problem(
                columns[0] if len(columns) == 1 else ", ".join(columns),
                problems[0].value if len(columns) == 1 else None,
                "fits none of the alternatives (" + "; ".join(f"{i}: {p.problem}" for i, p in enumerate(problems, 1)) + ")",
                " or ".join(dict.fromkeys(p.expected for p in problems)),
            )

        return fn

    def _c_reference_range(self, el: Element) -> Callable:
        get = self._col(el.source)
        unit = self._unit(el)
        column = el.source

        def fn(row):
            raw = get(row)
            if _blank(raw):
                return None
            try:
                low, high, text = parse_reference_range(raw)
            except ValueProblem as p:
                raise _Problem(column, raw, p.problem, p.expected) from None
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

    def known_values(self, row: Sequence[Any]) -> list[str]:
        """The row's values from identifying (phi) columns: never shown, looked for in what is."""
        return [str(v) for v in (g(row) for g, _ in self._phi_getters) if not _blank(v)]

    @property
    def dates_known(self) -> bool:
        """True when a phi line of this block is a date (a Patient's birth date)."""
        return any(is_date for _, is_date in self._phi_getters)

    def identifier_values(self, row: Sequence[Any]) -> list[str]:
        """known_values less the dates (a birth date is a quasi-identifier its rule decides on,
        published as such in the recognition zone): what must never appear in published data."""
        return [str(v) for v in (g(row) for g, is_date in self._phi_getters if not is_date) if not _blank(v)]

    def row_label(self, row: Sequence[Any]) -> str:
        """How a quarantine reason names the row: its key columns, or a keyed hash of the key
        when any key value may not be shown (identifying key, not in safe_columns, or failing
        ``withheld``'s checks)."""
        key = self.source_key(row)
        safe, known = self.block.safe_columns, self.known_values(row)
        if self.block.key_is_identifier or any(
            withheld(self.qualify(c), v, safe, known=known) for c, v in zip(self.block.key, key, strict=True)
        ):
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
        if self._ties is not None and (self._ties(row) or 1) > 1:
            occ = self.block.occurrence
            problems.append(RowProblem(
                f"{loc}:{self.block.line}", f"{self.block.resource}.id", ", ".join(self.block.key),
                f"shares its natural key and its order ({', '.join(occ.order_by)}) with another row, so its occurrence number is not stable",
                "occurrence.order_by columns that tell apart the rows sharing a natural key", None))
        filled: set[str] = set()
        status = None
        for el, tokens, fn, choice, anchor, required, name in self._plan:
            try:
                value = fn(row)
            except _Problem as p:
                why = None if p.value is None else withheld(
                    self.qualify(p.column) if p.column else None, p.value, self.block.safe_columns,
                    bool(el.options.get("phi")), self.known_values(row))
                shown = None if p.value is None or why else str(p.value)
                problems.append(RowProblem(f"{loc}:{el.line}", f"{self.block.resource}.{el.path}", p.column, p.problem, p.expected, shown, why))
                continue
            if value is None:
                if required:
                    problems.append(RowProblem(f"{loc}:{el.line}", f"{self.block.resource}.{el.path}", _cited(el), "is empty", "a value (this element is required)", None))
                continue
            if anchor is not None:
                filled.add(anchor)
            if name is not None and type(value) is not _Absent:
                resource[name] = value
            elif isinstance(value, _Absent):
                _set(resource, tokens[:-1] + [("dataAbsentReason", None)], value.concept)
                status = value.status or status
            elif choice:
                suffix, value = value
                name, idx = tokens[-1]
                _set(resource, tokens[:-1] + [(name + suffix, idx)], value)
            else:
                _set(resource, tokens, value)
        if self.birth_checked and self.block.resource == "Patient" and not problems:
            problem = before_birth(self.birth_times(resource), resource.get("birthDate"), self.mapping.timezone, loc)
            if problem is not None:
                problems.append(problem)
        if problems:
            return None, problems
        if status is not None:
            resource["status"] = status
        empty = self._data_anchors.keys() - filled
        if empty:
            for anchor in empty:
                _set(resource, self._data_anchors[anchor], None)
            resource = _prune(resource)
        return resource, []

    def birth_times(self, resource: dict) -> tuple[tuple[str, int, str], ...]:
        """(element, line, value) of the resource's ``not_before_birth: true`` elements that have a
        value. The pipeline compares them with the published patient's birth date (``before_birth``)."""
        out = []
        for element, line, tokens in self.birth_checked:
            node: Any = resource
            for name, idx in tokens:
                node = node.get(name) if isinstance(node, dict) else None
                if idx is not None:
                    node = node[idx] if isinstance(node, list) and len(node) > idx else None
            if isinstance(node, str):
                out.append((element, line, node))
        return tuple(out)


def _concrete(el: Element) -> str:
    """The element's path with a [x] choice resolved by the line's type (effective[x] -> effectiveDateTime)."""
    if not el.path.endswith("[x]"):
        return el.path
    return el.path[:-3] + TYPE_DATATYPE[el.options.get("type", "string")]


def _cited(el: Element) -> str | None:
    """The columns a problem with the line cites."""
    if el.kind in ("const", "first_of"):
        return None
    return ", ".join(el.source) if el.kind == "concat" else el.source


def _instant(value: str | dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    when = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(value)
    return when if when.tzinfo else when.replace(tzinfo=tz)


def before_birth(times: Sequence[tuple[str, int, str]], birth: str | dt.datetime | None, tz: dt.tzinfo, file: str) -> RowProblem | None:
    """The problem when any of ``birth_times`` lies before the patient's birth (a date is its
    midnight in tz); None when none does or the birth date is unknown. Names no value."""
    if birth is None or not times:
        return None
    born = _instant(birth, tz)
    for element, line, value in times:
        if _instant(value, tz) < born:
            return RowProblem(f"{file}:{line}", element, None, "is before the patient's birth date", BEFORE_BIRTH_EXPECTED, None)
    return None
