"""Rulesets (``deid/rules/*.yaml``): one rule per data element, an action per zone.

Each rule names the data element (WS/T 363 identifier where one exists), its GB/T 39725
category and level, the FHIR paths it covers and the action in each zone. Paths are
``Type.element.child``; ``*`` stands for every resource type; a repeating element can be
narrowed by a child's value, ``Patient.identifier(system=urn:oid:2.16.156.10011.1.3)``
(``*`` wildcards allowed in the value); ``value[x]`` covers every ``value<Type>``.
Validated on load: unknown actions, zones, keys, resource types and elements are errors
naming file, line and field.

A top-level ``strings:`` section is the strings policy: what happens, per zone, to a
human-readable leaf (FHIR ``string``, ``markdown``, ``xhtml``, ``base64Binary``) under a
rule that does not name that exact leaf. Its ``policy`` maps a context to an action per
zone (``redact`` or ``scrub``); the most specific context decides: ``Datatype.element``
(``Reference.display``, ``Observation.valueString``), then ``Datatype`` (any string directly
in a ``HumanName``), then the primitive type (``string``). A leaf or zone the policy does
not mention is redacted, and a ruleset without the section redacts every such string.
``structural`` lists the string leaves that carry no free text (``Reference.reference``,
``Identifier.value``, the default): they follow their rule like codes. A top-level
``leak_scan:`` section belongs to hub.leakscan and is not read here.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from deid.actions import Action, parse_action
from deid.datatypes import HUMAN_READABLE, datatype_model, elements
from hub.fhir.validate import element_names, model_for
from hub.yamlio import ConfigError, LineDict, load_yaml

ZONES = ("recognition", "research")
CATEGORIES = (
    "personal attribute", "health status", "medical application",
    "medical payment", "health resource", "public health", "hub technical",
)
_SEGMENT_RE = re.compile(r"^([a-z][A-Za-z]*(?:\[x\])?)(?:\(([a-z][A-Za-z]*)=([^)]+)\))?$")
RULES_DIR = Path(__file__).parent / "rules"
TOP_LEVEL = ("ruleset", "version", "rules", "strings", "leak_scan")
STRING_ACTIONS = ("redact", "scrub")
DEFAULT_STRUCTURAL = ("Reference.reference", "Identifier.value")
_REDACT = Action("redact")


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


@dataclass(frozen=True)
class StringsPolicy:
    """The strings policy of one zone; see the module docstring."""

    #: context (``Reference.display``, ``HumanName``, ``string``) -> action in this zone
    actions: dict[str, Action] = field(default_factory=dict)
    #: (datatype, element) string leaves that follow their rule like codes
    structural: frozenset[tuple[str, str]] = frozenset(tuple(p.split(".")) for p in DEFAULT_STRUCTURAL)

    def decide(self, parent: str, element: str, primitive: str) -> tuple[Action, str]:
        """The action for a human-readable leaf and the context that chose it (``default`` if none did)."""
        for context in (f"{parent}.{element}", parent, primitive):
            action = self.actions.get(context)
            if action is not None:
                return action, context
        return _REDACT, "default"


@dataclass
class Ruleset:
    name: str
    version: str
    zone: str
    rules: list[Rule]
    path: Path
    content_hash: str
    strings: StringsPolicy = field(default_factory=StringsPolicy)

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
        _check_segments(file, line, fld, text, model, segs)
    return resource, tuple(segs)


def _check_segments(file: Path, line: int, fld: str, text: str, model: type, segs: list[Segment]) -> None:
    """Every segment of a path names an element of the datatype before it (value[x]: any choice)."""
    models = [model]
    for seg in segs:
        found = []
        for m in models:
            kinds = elements(m)
            if seg.name == "value[x]":
                found += [e for n, e in kinds.items() if n.startswith("value") and n[5:6].isupper()]
            elif seg.name in kinds:
                found.append(kinds[seg.name])
        if not found:
            where = " or ".join(sorted({m.__name__ for m in models}))
            raise ConfigError(str(file), line, fld, f"{text}: {where} has no element {seg.name!r}", f"an element of FHIR R4 {where}")
        if seg.filter_field is not None:
            if not any(e.model is not None and seg.filter_field in elements(e.model) for e in found):
                raise ConfigError(str(file), line, fld, f"{text}: {seg.name} has no element {seg.filter_field!r} to filter on", "a child element of it, e.g. system or url")
        models = [e.model for e in found if e.model is not None]
        if not models and seg is not segs[-1]:
            raise ConfigError(str(file), line, fld, f"{text}: {seg.name} is a primitive and has no children", "a path that ends at the primitive")


def load_ruleset(path: Path, zone: str) -> Ruleset:
    """Load and validate a ruleset, keeping the actions of one zone."""
    path = Path(path)
    doc = load_yaml(path)
    if not isinstance(doc, LineDict) or not isinstance(doc.get("rules"), list):
        raise ConfigError(str(path), 1, "rules", "is missing", "a list of rules")
    if zone not in ZONES:
        raise ValueError(f"unknown zone {zone!r}; zones are {', '.join(ZONES)}")
    for key in doc:
        if key not in TOP_LEVEL:
            raise ConfigError(str(path), doc.line_of(key), str(key), "is not a ruleset section", ", ".join(TOP_LEVEL))
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
        strings=_parse_strings(path, doc, zone),
    )


def _string_leaf(file: Path, line: int, fld: str, text: str, human: bool) -> tuple[str, str | None]:
    """Check ``Datatype.element`` (or a bare ``Datatype``) names string leaves; return its parts."""
    dtype, _, element = text.partition(".")
    model = datatype_model(dtype)
    if model is None:
        raise ConfigError(str(file), line, fld, f"{dtype!r} is not a FHIR R4 datatype or resource type",
                          "a datatype such as Reference or HumanName, a resource type, or one of " + ", ".join(sorted(HUMAN_READABLE)))
    kinds = elements(model)
    if not element:
        if not any(e.human_readable for e in kinds.values()):
            raise ConfigError(str(file), line, fld, f"{dtype} has no string elements", "a datatype with string elements")
        return dtype, None
    e = kinds.get(element)
    if e is None:
        raise ConfigError(str(file), line, fld, f"{dtype} has no element {element!r}", f"an element of FHIR R4 {dtype}")
    if human and not e.human_readable or not human and (e.kind, e.type) != ("primitive", "string"):
        wanted = ", ".join(sorted(HUMAN_READABLE)) if human else "string"
        raise ConfigError(str(file), line, fld, f"{dtype}.{element} is a {e.type}, not a string leaf", f"an element of type {wanted}")
    return dtype, element


def _parse_strings(file: Path, doc: LineDict, zone: str) -> StringsPolicy:
    section = doc.get("strings")
    if section is None:
        return StringsPolicy()
    if not isinstance(section, LineDict):
        raise ConfigError(str(file), doc.line_of("strings"), "strings", "is not a mapping", "strings: {policy: {...}, structural: [...]}")
    for key in section:
        if key not in ("policy", "structural"):
            raise ConfigError(str(file), section.line_of(key), f"strings.{key}", "is not a strings setting", "policy, structural")
    structural = section.get("structural", list(DEFAULT_STRUCTURAL))
    if not isinstance(structural, list):
        raise ConfigError(str(file), section.line_of("structural"), "strings.structural", "is not a list", "[Reference.reference, Identifier.value]")
    leaves = set()
    for item in structural:
        dtype, element = _string_leaf(file, section.line_of("structural"), "strings.structural", str(item), human=False)
        if element is None:
            raise ConfigError(str(file), section.line_of("structural"), "strings.structural", f"{item!r} names no element", "Datatype.element, e.g. Identifier.value")
        leaves.add((dtype, element))
    policy = section.get("policy") or LineDict()
    if not isinstance(policy, dict):
        raise ConfigError(str(file), section.line_of("policy"), "strings.policy", "is not a mapping", "context: {recognition: redact|scrub, research: redact|scrub}")
    actions: dict[str, Action] = {}
    for context, per_zone in policy.items():
        line, fld = policy.line_of(context), f"strings.policy.{context}"
        if str(context) not in HUMAN_READABLE:
            _string_leaf(file, line, fld, str(context), human=True)
        if not isinstance(per_zone, dict) or not per_zone:
            raise ConfigError(str(file), line, fld, "is not an action per zone", "{recognition: redact|scrub, research: redact|scrub}")
        for z, a in per_zone.items():
            zline = per_zone.line_of(z) if isinstance(per_zone, LineDict) else line
            if z not in ZONES:
                raise ConfigError(str(file), zline, f"{fld}.{z}", f"unknown zone {z!r}", ", ".join(ZONES))
            if a not in STRING_ACTIONS:
                raise ConfigError(str(file), zline, f"{fld}.{z}", f"{a!r} is not a strings action", " or ".join(STRING_ACTIONS))
        actions[str(context)] = Action(per_zone.get(zone, "redact"))
    return StringsPolicy(actions, frozenset(leaves))


def default_ruleset_path() -> Path:
    return RULES_DIR / "default.yaml"
