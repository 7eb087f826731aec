"""Applies a ruleset to FHIR resources: deny by default, keyed pseudonyms, counted drops.

Rules compile into a trie per resource type. Walking a resource, each element takes the
action of the deepest rule that covers it; an element no rule covers is dropped and
counted under its path, so the run report shows what a ruleset does not yet describe.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from deid.actions import PSEUDONYM_SYSTEM, Context, value_function
from deid.keys import Keyring
from deid.ruleset import Rule, Ruleset


@dataclass
class _Node:
    rule: Rule | None = None
    # element name -> [(filter_field, filter_value, child)], filtered entries first
    children: dict[str, list[tuple[str | None, str | None, _Node]]] = field(default_factory=dict)

    def child(self, name: str, ffield: str | None, fvalue: str | None) -> _Node:
        entries = self.children.setdefault(name, [])
        for f, v, node in entries:
            if f == ffield and v == fvalue:
                return node
        node = _Node()
        entries.append((ffield, fvalue, node))
        entries.sort(key=lambda e: e[0] is None)
        return node


@dataclass
class DeidStats:
    """What de-identification removed, by resource path."""

    dropped_by_rule: Counter = field(default_factory=Counter)
    uncovered: Counter = field(default_factory=Counter)
    redacted: Counter = field(default_factory=Counter)

    def merge(self, other: DeidStats) -> None:
        self.dropped_by_rule.update(other.dropped_by_rule)
        self.uncovered.update(other.uncovered)
        self.redacted.update(other.redacted)


class Deidentifier:
    """De-identifies resources under one ruleset and zone with one keyring."""

    def __init__(self, ruleset: Ruleset, keys: Keyring):
        self.ruleset, self.keys = ruleset, keys
        self._tries: dict[str, _Node] = {}
        self._wild = [r for r in ruleset.rules if r.resource == "*"]
        self._specific = [r for r in ruleset.rules if r.resource != "*"]
        self._functions = {r.action: value_function(r.action, keys) for r in ruleset.rules}
        self.stats = DeidStats()

    def _trie(self, resource_type: str) -> _Node:
        if resource_type not in self._tries:
            root = _Node()
            for rule in self._wild + [r for r in self._specific if r.resource == resource_type]:
                node = root
                for seg in rule.segments:
                    node = node.child(seg.name, seg.filter_field, seg.filter_value)
                node.rule = rule
            self._tries[resource_type] = root
        return self._tries[resource_type]

    def apply(self, resource: dict, patient: str | None = None, known_names: tuple[str, ...] = ()) -> dict:
        """A de-identified copy of resource. patient: its patient's pseudonym (for date shifts)."""
        rtype = resource["resourceType"]
        out = {"resourceType": rtype}
        ctx = Context(rtype, str(resource.get("id", "")), patient, known_names)
        self._walk(resource, out, self._trie(rtype), None, rtype, ctx)
        return out

    def _lookup(self, node: _Node | None, key: str, item: Any) -> _Node | None:
        if node is None:
            return None
        entries = node.children.get(key)
        if entries is None and key.startswith("value") and key[5:6].isupper():
            entries = node.children.get("value[x]")
        for ffield, fvalue, child in entries or ():
            if ffield is None:
                return child
            if isinstance(item, dict) and isinstance(item.get(ffield), str) and fnmatchcase(item[ffield], fvalue):
                return child
        return None

    def _walk(self, src: dict, dst: dict, node: _Node | None, inherited: Rule | None, path: str, ctx: Context) -> None:
        for key, value in src.items():
            if key == "resourceType":
                continue
            sub = f"{path}.{key}"
            items = value if isinstance(value, list) else [value]
            kept = []
            for item in items:
                child = self._lookup(node, key, item)
                rule = child.rule if child is not None and child.rule is not None else inherited
                if rule is None:
                    self.stats.uncovered[sub] += 1
                    continue
                name = rule.action.name
                if name == "drop":
                    self.stats.dropped_by_rule[sub] += 1
                    continue
                if name == "redact":
                    self.stats.redacted[sub] += 1
                    continue
                if name == "pseudonymize" and isinstance(item, dict) and "value" not in item and "reference" not in item:
                    self.stats.dropped_by_rule[sub] += 1  # an identifier with no value: nothing to keep
                    continue
                if isinstance(item, dict) and child is not None and child.children:
                    inner: dict = {}
                    self._walk(item, inner, child, rule, sub, ctx)
                    if inner:
                        kept.append(self._functions[rule.action](inner, ctx, sub) if name != "keep" and child.rule is rule else inner)
                elif name == "keep":
                    kept.append(item)
                else:
                    kept.append(self._functions[rule.action](item, ctx, sub))
            if not kept:
                continue
            dst[key] = kept if isinstance(value, list) else kept[0]


def patient_pseudonym(deidentified_patient: dict) -> str | None:
    """The cross-institution linkage pseudonym of a de-identified Patient, else its first identifier pseudonym."""
    fallback = None
    for ident in deidentified_patient.get("identifier", []):
        system = ident.get("system", "")
        if system in (PSEUDONYM_SYSTEM + "patient-linkage", PSEUDONYM_SYSTEM + "research-linkage"):
            return ident["value"]
        if fallback is None and system.startswith(PSEUDONYM_SYSTEM):
            fallback = ident["value"]
    return fallback
