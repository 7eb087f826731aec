"""Mapping files (``mappings/*.yaml``): load, validate, and describe a vendor schema's mapping.

A mapping file has one block per target resource and one line per target element, like
the HL7 v2-to-FHIR tables. Every problem found on load names file, line and field.
See ``docs/mapping.md`` for the language.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub.fhir.validate import RESOURCE_MODULES, element_names
from hub.mapping.terminology import ConceptMap, load_concept_map
from hub.yamlio import ConfigError, LineDict, load_yaml

SOURCE_KINDS = ("const", "column", "codeable", "reference", "lab_value", "reference_range", "quantity")
ELEMENT_OPTIONS = {
    "type", "format", "map", "unmapped", "default", "check", "phi", "required",
    "system", "text", "display", "key", "namespace", "unit", "unit_map", "text_map", "coding",
}
TYPES = ("string", "code", "integer", "decimal", "boolean", "date", "dateTime")
UNMAPPED = ("quarantine", "keep", "default")
CHECKS = ("gb11643",)
INSTITUTION = "$institution"
_PATH_RE = re.compile(r"^[a-z][A-Za-z]*(\[\d+\]|\[x\])?(\.[a-z][A-Za-z]*(\[\d+\]|\[x\])?)*$")
_TZ_RE = re.compile(r"^[+-]\d{2}:\d{2}$")


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


@dataclass
class Mapping:
    """A validated mapping file."""

    name: str
    version: str
    system: str
    path: Path
    timezone: dt.timezone
    datetime_formats: tuple[str, ...]
    date_formats: tuple[str, ...]
    terminology: dict[str, ConceptMap]
    blocks: list[Block]
    content_hash: str = field(default="")

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


def _parse_element(path: Path, block_node: LineDict, elements: LineDict, target: str, resource: str) -> Element:
    spec = elements[target]
    fld = f"{resource}.{target}"
    line = elements.line_of(target)
    if not isinstance(target, str) or not _PATH_RE.match(target):
        raise _err(path, elements, target, fld, "is not an element path", "a path like code.coding[0].system or value[x]")
    _check_path_in_model(path, elements, target, resource, target)
    if not isinstance(spec, dict):
        spec = LineDict(const=spec)
        spec.line, spec.key_lines = line, {}
    kinds = [k for k in SOURCE_KINDS if k in spec]
    if len(kinds) != 1:
        raise _err(path, elements, target, fld, f"names {len(kinds)} sources", f"exactly one of {', '.join(SOURCE_KINDS)}")
    kind = kinds[0]
    options = {k: v for k, v in spec.items() if k != kind}
    unknown = set(options) - ELEMENT_OPTIONS
    if unknown:
        raise _err(path, spec, sorted(unknown)[0], fld, f"unknown option {sorted(unknown)[0]!r}", f"one of {', '.join(sorted(ELEMENT_OPTIONS))}")
    if options.get("type", "string") not in TYPES:
        raise _err(path, spec, "type", fld, f"unknown type {options['type']!r}", f"one of {', '.join(TYPES)}")
    if options.get("unmapped", "quarantine") not in UNMAPPED:
        raise _err(path, spec, "unmapped", fld, f"unknown behaviour {options['unmapped']!r}", f"one of {', '.join(UNMAPPED)}")
    if options.get("unmapped") == "default" and "default" not in options:
        raise _err(path, spec, "unmapped", fld, "says default but gives no default", "a default: value")
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
    if target.endswith("[x]") and kind != "lab_value":
        raise _err(path, elements, target, fld, f"{kind} cannot fill a choice element", "lab_value for value[x]")
    if kind == "lab_value" and not target.endswith("[x]"):
        raise _err(path, elements, target, fld, "lab_value fills a choice element", "a path ending in value[x]")
    return Element(path=target, kind=kind, source=spec[kind], options=options, line=line)


def _parse_block(path: Path, node: LineDict, terminology: dict[str, ConceptMap]) -> Block:
    resource = _need(path, node, "resource", "resource", str, "a FHIR resource type")
    if resource not in RESOURCE_MODULES:
        raise _err(path, node, "resource", "resource", f"{resource!r} is not a type hub maps", ", ".join(RESOURCE_MODULES))
    table = _need(path, node, "from", f"{resource}.from", str, "the source table name")
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
        if alias is not None and (not isinstance(alias, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", alias)):
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
    elements_node = _need(path, node, "elements", f"{resource}.elements", dict, "element lines")
    elements = [_parse_element(path, node, elements_node, t, resource) for t in elements_node]
    for el in elements:
        for opt in ("map", "unit_map", "text_map"):
            name = el.options.get(opt)
            if name is not None and name not in terminology:
                raise ConfigError(str(path), el.line, f"{resource}.{el.path}", f"{opt} {name!r} is not declared under terminology", f"one of {', '.join(terminology) or '(none declared)'}")
    return Block(
        resource=resource, table=table, key=tuple(key),
        key_is_identifier=bool(node.get("key_is_identifier", False)), joins=tuple(joins),
        namespace=namespace, id_key=id_key, elements=tuple(elements), line=node.line, watermark=watermark,
        unpivot=unpivot,
    )


def load_mapping(path: Path) -> Mapping:
    """Load and validate a mapping file and the terminology files it names."""
    path = Path(path)
    doc = load_yaml(path)
    if not isinstance(doc, LineDict):
        raise ConfigError(str(path), 1, "(file)", "is not a mapping document", "keys mapping, system, resources")
    name = _need(path, doc, "mapping", "mapping", str, "the mapping's name")
    system = _need(path, doc, "system", "system", str, "HIS or LIS")
    tz_text = str(doc.get("timezone", "+08:00"))
    if not _TZ_RE.match(tz_text):
        raise _err(path, doc, "timezone", "timezone", f"{tz_text!r} is not an offset", "an offset like +08:00")
    sign = -1 if tz_text[0] == "-" else 1
    tz = dt.timezone(sign * dt.timedelta(hours=int(tz_text[1:3]), minutes=int(tz_text[4:6])))
    terminology = {}
    for tname, tpath in (doc.get("terminology") or {}).items():
        full = (path.parent / tpath).resolve()
        if not full.exists():
            raise _err(path, doc.get("terminology"), tname, f"terminology.{tname}", f"file {tpath} not found", "a ConceptMap JSON file relative to the mapping")
        terminology[tname] = load_concept_map(full)
    resources = _need(path, doc, "resources", "resources", list, "a list of resource blocks")
    blocks = [_parse_block(path, b, terminology) for b in resources]
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
        datetime_formats=tuple(doc.get("datetime_formats") or ("%Y-%m-%d %H:%M:%S",)),
        date_formats=tuple(doc.get("date_formats") or ("%Y-%m-%d",)),
        terminology=terminology, blocks=blocks, content_hash=digest.hexdigest(),
    )
