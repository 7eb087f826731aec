"""The ruleset report: what a ruleset does to every element and leaf of each published type, per zone.

Built from the engine's own decisions (Deidentifier.describe), so the report cannot disagree
with what publishing does. For each resource type it lists the elements rules cover, and
under each the leaves grouped by what happens to them in the recognition and research zones
(coded leaves following the rule, strings scrubbed or redacted by the strings policy,
structural strings dropped when nested), then the elements deny by default drops.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

from deid.engine import Deidentifier
from deid.keys import Keyring
from deid.ruleset import ZONES, Ruleset, load_ruleset
from hub.fhir.validate import RESOURCE_MODULES

UNCOVERED = "dropped: no rule covers it"
WIDTH = 100
_SPLIT = re.compile(r"\.(?![^(]*\))")  # path dots, not those inside a filter value


def _parent(path: str) -> str:
    parts = _SPLIT.split(path)
    return ".".join(parts[:-1])


def _outcome(rows: dict[str, dict], path: str) -> dict | None:
    """The row for path, or for its nearest ancestor (where the other zone stopped expanding)."""
    while path:
        if path in rows:
            return rows[path]
        path = _parent(path)
    return None


def ruleset_report(path: Path, resource_types: list[str] | None = None, depth: int = 2) -> dict:
    """The report as plain data: ruleset label, strings policy, and per resource type its elements."""
    rulesets: dict[str, Ruleset] = {z: load_ruleset(path, z) for z in ZONES}
    engines = {z: Deidentifier(r, Keyring(bytes(32))) for z, r in rulesets.items()}  # describes only: no key is used
    first = rulesets[ZONES[0]]
    strings = {
        "structural": sorted(f"{a}.{b}" for a, b in first.strings.structural),
        "policy": {ctx: {z: rulesets[z].strings.actions[ctx].name for z in ZONES} for ctx in first.strings.actions},
        "otherwise": "redact",
    }
    resources = {}
    for rtype in resource_types or list(RESOURCE_MODULES):
        by_zone = {z: {r["path"]: r for r in e.describe(rtype, depth)} for z, e in engines.items()}
        paths = sorted(set().union(*(set(rows) for rows in by_zone.values())))
        elements: dict[str, dict] = {}
        uncovered = []
        for p in paths:
            rows = {z: _outcome(by_zone[z], p) for z in ZONES}
            if any(rows[z] is None for z in ZONES):
                continue
            parts = _SPLIT.split(p)[1:]
            if len(parts) == 1 and all(rows[z]["outcome"] == UNCOVERED for z in ZONES):
                uncovered.append(parts[0])
                continue
            head, rest = parts[0], ".".join(parts[1:])
            el = elements.setdefault(head, {"element": head, "rules": {}, "leaves": []})
            for z in ZONES:
                if rows[z]["rule"]:
                    el["rules"].setdefault(rows[z]["rule"], _rule_label(rulesets[z], rows[z]["rule"]))
            el["leaves"].append({
                "leaf": rest, "datatype": rows[ZONES[0]]["datatype"],
                **{z: rows[z]["outcome"] for z in ZONES},
            })
        resources[rtype] = {"elements": list(elements.values()), "uncovered": uncovered}
    return {"ruleset": first.label, "path": str(path), "strings": strings, "resources": resources}


def _rule_label(ruleset: Ruleset, element: str) -> str:
    rule = next(r for r in ruleset.rules if r.element == element)
    name = re.split(r";| \(", rule.name)[0].strip()
    name = name if len(name) <= 48 else name[:47] + "…"
    return f"{rule.element} {name} ({rule.category}, {rule.level})"


def _wrap(text: str, indent: int) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=" " * indent, subsequent_indent=" " * (indent + 2),
                         break_on_hyphens=False)


def render_report(report: dict) -> str:
    """The report as text, at most 100 columns wide."""
    lines = [f"Ruleset {report['ruleset']} ({report['path']})", ""]
    lines.append("Strings policy: human-readable leaves under a rule that does not name that exact leaf")
    lines.append(f"  {'context':<28} {'recognition':<12} research")
    for ctx, per_zone in report["strings"]["policy"].items():
        lines.append(f"  {ctx:<28} {per_zone['recognition']:<12} {per_zone['research']}")
    lines.append(f"  {'(anything else)':<28} {'redact':<12} redact")
    lines += _wrap("Structural strings, which follow their rule like codes (dropped when nested under a rule "
                   "for another element): " + ", ".join(report["strings"]["structural"]), 2)
    for rtype, body in report["resources"].items():
        lines += ["", rtype]
        for el in body["elements"]:
            lines += _wrap(f"{el['element']} · " + "; ".join(el["rules"].values()) if el["rules"] else el["element"], 2)
            groups: dict[tuple[str, str], list[str]] = {}
            for leaf in el["leaves"]:
                groups.setdefault((leaf["recognition"], leaf["research"]), []).append(leaf["leaf"])
            for (rec, res), leaves in groups.items():
                what = f"both zones: {rec}" if rec == res else f"recognition: {rec} | research: {res}"
                named = ", ".join(x for x in leaves if x)
                lines += _wrap(f"{what}{' → ' + named if named else ''}", 4)
        if body["uncovered"]:
            lines += _wrap("dropped by deny-by-default (no rule): " + ", ".join(body["uncovered"]), 2)
    return "\n".join(lines) + "\n"
