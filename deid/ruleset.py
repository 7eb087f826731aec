"""Rulesets (``deid/rules/*.yaml``): one rule per data element, an action per zone.

Each rule names the data element (WS/T 363 identifier where one exists), its GB/T 39725
category and level, the FHIR paths it covers and the action in each zone. Paths are
``Type.element.child``; ``*`` stands for every resource type; a repeating element can be
narrowed by a child's value, ``Patient.identifier(system=urn:oid:2.16.156.10011.1.3)``
(``*`` wildcards allowed in the value); ``value[x]`` covers every ``value<Type>``.
Validated on load: unknown actions, zones, keys, resource types and elements are errors
naming file, line and field.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from deid.actions import Action, parse_action
from hub.fhir.validate import element_names, model_for
from hub.yamlio import ConfigError, LineDict, load_yaml

ZONES = ("recognition", "research")
CATEGORIES = (
    "personal attribute", "health status", "medical application",
    "medical payment", "health resource", "public health", "hub technical",
)
_SEGMENT_RE = re.compile(r"^([a-z][A-Za-z]*(?:\[x\])?)(?:\(([a-z][A-Za-z]*)=([^)]+)\))?$")
RULES_DIR = Path(__file__).parent / "rules"


@dataclass(frozen=True)
class Segment:
    name: str  # element name, or "value[x]"
    filter_field: str | None
    filter_value: str | None  # fnmatch pattern


@dataclass(frozen=True)
class Rule:
    element: str
    name: str
    category: str
    level: int
    resource: str  # resource type or "*"
    segments: tuple[Segment, ...]
    action: Action
    line: int

    @property
    def path(self) -> str:
        segs = ".".join(s.name + (f"({s.filter_field}={s.filter_value})" if s.filter_field else "") for s in self.segments)
        return f"{self.resource}.{segs}"


@dataclass
class Ruleset:
    name: str
    version: str
    zone: str
    rules: list[Rule]
    path: Path
    content_hash: str

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}+{self.content_hash[:8]}"


def _parse_path(file: Path, line: int, fld: str, text: str) -> tuple[str, tuple[Segment, ...]]:
    parts = re.split(r"\.(?![^(]*\))", text)
    if len(parts) < 2:
        raise ConfigError(str(file), line, fld, f"path {text!r} names no element", "Type.element, e.g. Patient.name")
    resource, segs = parts[0], []
    if resource != "*":
        try:
            model = model_for(resource)
        except ValueError:
            raise ConfigError(str(file), line, fld, f"{resource!r} is not a FHIR R4 resource type", "a resource type or *") from None
    for part in parts[1:]:
        m = _SEGMENT_RE.match(part)
        if not m:
            raise ConfigError(str(file), line, fld, f"segment {part!r} is not an element", "element or element(child=value)")
        segs.append(Segment(m.group(1), m.group(2), m.group(3)))
    if resource != "*":
        names = element_names(model.__name__)
        first = segs[0].name
        ok = any(f.startswith("value") for f in names) if first == "value[x]" else first in names
        if not ok:
            raise ConfigError(str(file), line, fld, f"{resource} has no element {first!r}", f"an element of FHIR R4 {resource}")
    return resource, tuple(segs)


def load_ruleset(path: Path, zone: str) -> Ruleset:
    """Load and validate a ruleset, keeping the actions of one zone."""
    path = Path(path)
    doc = load_yaml(path)
    if not isinstance(doc, LineDict) or not isinstance(doc.get("rules"), list):
        raise ConfigError(str(path), 1, "rules", "is missing", "a list of rules")
    if zone not in ZONES:
        raise ValueError(f"unknown zone {zone!r}; zones are {', '.join(ZONES)}")
    rules: list[Rule] = []
    for node in doc["rules"]:
        line = node.line
        element = node.get("element")
        if not element:
            raise ConfigError(str(path), line, "element", "is missing", "a WS/T 363 identifier or a local name")
        where = f"rules[{element}]"
        category = node.get("category")
        if category not in CATEGORIES:
            raise ConfigError(str(path), node.line_of("category"), f"{where}.category", f"{category!r} is not a GB/T 39725 category", ", ".join(CATEGORIES))
        level = node.get("level")
        if level not in (1, 2, 3, 4, 5):
            raise ConfigError(str(path), node.line_of("level"), f"{where}.level", f"{level!r} is not a level", "1 to 5 (GB/T 39725)")
        actions = node.get("action")
        if not isinstance(actions, dict) or not actions:
            raise ConfigError(str(path), node.line_of("action"), f"{where}.action", "is missing", "a mapping zone: action, e.g. {recognition: keep}")
        parsed = {}
        for z, a in actions.items():
            if z not in ZONES:
                raise ConfigError(str(path), actions.line_of(z), f"{where}.action.{z}", f"unknown zone {z!r}", ", ".join(ZONES))
            if a == "pseudonymize" or (isinstance(a, dict) and "pseudonymize" in a and not (a["pseudonymize"] or {}).get("key")):
                if node.get("key") is None:  # the rule-level key names the purpose for a bare pseudonymize
                    raise ConfigError(str(path), node.line_of("action"), f"{where}.key", "is missing for pseudonymize", "key: <purpose>, e.g. patient-linkage")
                a = {"pseudonymize": {"key": node["key"]}}
            try:
                parsed[z] = parse_action(a)
            except ValueError as exc:
                raise ConfigError(str(path), actions.line_of(z), f"{where}.action.{z}", str(exc)) from None
        action = parsed.get(zone, Action("drop"))
        paths = node.get("paths")
        if not isinstance(paths, list) or not paths:
            raise ConfigError(str(path), node.line_of("paths"), f"{where}.paths", "is missing", "a list of FHIR paths")
        for p in paths:
            resource, segs = _parse_path(path, node.line_of("paths"), f"{where}.paths", str(p))
            rules.append(Rule(element, str(node.get("name", "")), category, level, resource, segs, action, line))
    return Ruleset(
        name=str(doc.get("ruleset", path.stem)), version=str(doc.get("version", "0")), zone=zone,
        rules=rules, path=path, content_hash=hashlib.sha256(path.read_bytes()).hexdigest(),
    )


def default_ruleset_path() -> Path:
    return RULES_DIR / "default.yaml"
