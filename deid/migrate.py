"""Import a Microsoft FHIR anonymizer configuration into a hub ruleset, reporting what did not translate.

Translated: ``fhirPathRules`` whose path is ``Type.element...``, ``Resource.element``
(every type), ``...where(system='X')`` on a repeating element, ``nodesByType('T')`` for
the data types whose hub paths are known (HumanName, ContactPoint, Address, Identifier),
and the methods keep, redact, cryptoHash, encrypt, dateShift and perturb. Not translated,
and listed in the report: generalize (its FHIRPath cases), substitute, other FHIRPath
functions and type selectors. Semantics that differ are noted: the anonymizer applies the
first matching rule, hub the most specific; hub derives its own keys, so pseudonyms differ
from the anonymizer's unless produced with ``deid.actions.crypto_hash``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_TYPE_PATHS = {
    "HumanName": ["Patient.name"],
    "ContactPoint": ["Patient.telecom"],
    "Address": ["Patient.address", "Organization.address"],
    "Identifier": [
        "Patient.identifier", "Encounter.identifier", "ServiceRequest.identifier", "Specimen.identifier",
        "DiagnosticReport.identifier", "Organization.identifier",
    ],
}
_WHERE_RE = re.compile(r"^(?P<head>[A-Za-z.]+)\.where\((?P<field>[a-z][A-Za-z]*)\s*=\s*'(?P<value>[^']*)'\)(?P<tail>(\.[a-z][A-Za-z]*)*)$")
_PLAIN_RE = re.compile(r"^[A-Z][A-Za-z]*(\.[a-z][A-Za-z]*(\[x\])?)+$")
_NODES_RE = re.compile(r"^nodesByType\('(?P<type>[A-Za-z]+)'\)(?P<tail>(\.[a-z][A-Za-z]*)*)$")


@dataclass
class ImportReport:
    rules: list[dict] = field(default_factory=list)
    untranslated: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _action(rule: dict) -> tuple[Any, str | None]:
    method = rule.get("method")
    if method == "keep":
        return "keep", None
    if method == "redact":
        return "redact", None
    if method == "cryptoHash":
        return {"pseudonymize": {"key": "identifier"}}, None
    if method == "encrypt":
        return {"encrypt": {"deterministic": False}}, None
    if method == "dateShift":
        return {"date_shift": {"max_days": 50}}, None
    if method == "perturb":
        span = rule.get("span", 1)
        if rule.get("rangeType", "fixed") == "proportional":
            return {"perturb": {"relative": span}}, None
        return {"perturb": {"absolute": span}}, None
    return None, f"method {method!r} has no hub equivalent"


def _paths(path: str) -> tuple[list[str], str | None]:
    path = path.strip()
    if path.startswith("Resource."):
        path = "*" + path[len("Resource"):]
        return ([path], None) if re.match(r"^\*(\.[a-z][A-Za-z]*)+$", path) else ([], "unsupported path form")
    if _PLAIN_RE.match(path):
        return [path], None
    m = _WHERE_RE.match(path)
    if m:
        tail = m.group("tail")
        if tail in ("", ".value"):  # hub applies the action to the whole matching element
            return [f"{m.group('head')}({m.group('field')}={m.group('value')})"], None
        return [], "where(...) followed by a path other than .value"
    m = _NODES_RE.match(path)
    if m and m.group("type") in _TYPE_PATHS and not m.group("tail"):
        return list(_TYPE_PATHS[m.group("type")]), None
    if m:
        return [], f"type selector nodesByType('{m.group('type')}'){m.group('tail')} has no hub path list"
    return [], "unsupported FHIRPath form"


def import_anonymizer(config: dict, zones: tuple[str, ...] = ("recognition", "research")) -> ImportReport:
    """Translate an anonymizer config (parsed JSON) to ruleset rules for the given zones."""
    report = ImportReport()
    for n, rule in enumerate(config.get("fhirPathRules") or []):
        path = str(rule.get("path", ""))
        action, why = _action(rule)
        paths, why_path = _paths(path) if action is not None else ([], None)
        if action is None or not paths:
            report.untranslated.append(f"rule {n} ({path!r}, {rule.get('method')}): {why or why_path}")
            continue
        report.rules.append({
            "element": f"ms-anonymizer.{n}",
            "name": f"imported from the MS anonymizer rule {path!r} ({rule.get('method')}); review name, category and level",
            "category": "personal attribute", "level": 3,
            "paths": paths,
            "action": {zone: action for zone in zones},
        })
    params = config.get("parameters") or {}
    if any(params.get(k) for k in ("cryptoHashKey", "encryptKey", "dateShiftKey")):
        report.notes.append("keys in the anonymizer's parameters are not imported: hub derives its keys from its master key")
    report.notes.append("the anonymizer applies the first matching rule; hub applies the most specific path: check overlaps")
    return report


def as_ruleset(report: ImportReport, name: str = "imported-ms-anonymizer") -> dict:
    return {"ruleset": name, "version": "1", "rules": report.rules}
