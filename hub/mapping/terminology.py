"""Terminology maps as FHIR ConceptMap JSON: local codes to standard codes.

A ConceptMap file maps one source system to one target system (one ``group``), e.g. a
vendor's local lab item codes to LOINC, local unit strings to UCUM, local sex codes to FHIR
``administrative-gender``. Only ``equivalent``/``equal``/``wider``/``narrower`` and
``relatedto`` targets are used; ``unmatched`` and ``disjoint`` targets mean "no mapping".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hub.yamlio import ConfigError

_USABLE = {"equivalent", "equal", "wider", "narrower", "relatedto", "specializes", "subsumes"}


@dataclass(frozen=True)
class Target:
    system: str
    code: str
    display: str | None


@dataclass(frozen=True)
class ConceptMap:
    """A loaded ConceptMap: lookup of a local code (exact, then case-insensitive)."""

    name: str
    source_system: str
    target_system: str
    entries: dict[str, Target]
    source_display: dict[str, str]
    path: str

    def lookup(self, code: str) -> Target | None:
        hit = self.entries.get(code)
        if hit is None:
            hit = self.entries.get(code.strip().casefold())
        return hit


def load_concept_map(path: Path) -> ConceptMap:
    """Load and check one ConceptMap JSON file; errors name the file and element."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(str(path), exc.lineno, "(syntax)", exc.msg, "valid JSON") from None
    if doc.get("resourceType") != "ConceptMap":
        raise ConfigError(str(path), 1, "resourceType", "is not ConceptMap", '"ConceptMap"')
    groups = doc.get("group") or []
    if len(groups) != 1:
        raise ConfigError(str(path), 1, "group", f"has {len(groups)} groups", "exactly one group")
    group = groups[0]
    for fld in ("source", "target"):
        if not group.get(fld):
            raise ConfigError(str(path), 1, f"group[0].{fld}", "is missing", "a code system URI")
    entries: dict[str, Target] = {}
    displays: dict[str, str] = {}
    for i, element in enumerate(group.get("element") or []):
        code = element.get("code")
        if not code:
            raise ConfigError(str(path), 1, f"group[0].element[{i}].code", "is missing", "a local code")
        targets = [t for t in element.get("target") or [] if t.get("equivalence", "equivalent") in _USABLE]
        if element.get("display"):
            displays[code] = element["display"]
        if not targets:
            continue
        t = targets[0]
        if not t.get("code"):
            raise ConfigError(str(path), 1, f"group[0].element[{i}].target[0].code", "is missing", "a target code")
        target = Target(group["target"], t["code"], t.get("display"))
        entries[code] = target
        entries.setdefault(code.strip().casefold(), target)
    return ConceptMap(
        name=doc.get("name") or path.stem,
        source_system=group["source"],
        target_system=group["target"],
        entries=entries,
        source_display=displays,
        path=str(path),
    )
