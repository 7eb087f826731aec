"""Applies a ruleset to FHIR resources, deciding per leaf by FHIR datatype.

Rules name data elements and compile into a trie per resource type; every element takes
the rule of the deepest trie node that covers it. Deny by default: an element no rule
covers is dropped and counted under its path, so the run report shows what a ruleset does
not yet describe.

A rule decides for the leaves beneath it by their FHIR datatype (deid.datatypes):

- coded leaves (code, uri, id, numbers, booleans, dates and times) follow the rule's action;
- human-readable leaves (string, markdown, xhtml, base64Binary: ``Coding.display``,
  ``CodeableConcept.text``, ``Quantity.unit``, ``valueString``, ``Reference.display``,
  ``Annotation.text``, ``Narrative.div``) follow the rule only when a rule names that exact
  leaf (``value[x]`` does not name ``valueString``) or the rule is itself a strings action
  (scrub); otherwise the zone's strings policy (``strings:`` in the ruleset) redacts or
  scrubs them;
- structural strings (``Reference.reference``, ``Identifier.value``) follow the rule when
  it names their Reference or Identifier (or pseudonymizes, encrypts or scrubs); a Reference
  or Identifier nested under a rule written for another element (``subject.identifier``
  under a kept ``subject``, ``collection.collector`` under ``Specimen.collection``) is
  dropped whole.

A ``modifierExtension`` anywhere in a resource (kept or not) whose URL no rule names makes
the resource unpublishable: UnknownModifierExtension, which the caller turns into a
quarantined row. Dropping it would change what the resource means.

Decisions are made once per (element path, datatype, covering rule) and cached, so a
resource costs one dictionary lookup and at most one function call per leaf.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from typing import Any

from deid import actions
from deid.actions import PSEUDONYM_SYSTEM, Action, Context, pseudonym, value_function
from deid.datatypes import DATES, NUMBERS, ElementType, elements, type_name
from deid.keys import Keyring
from deid.ruleset import Rule, Ruleset
from hub.fhir.validate import model_for

#: Rules whose values identify a person: their string leaves are the record's known values.
IDENTIFYING_CATEGORY, IDENTIFYING_LEVEL = "personal attribute", 3


class UnknownModifierExtension(ValueError):
    """A resource carries a modifierExtension no rule names: refused, never trimmed."""

    def __init__(self, path: str, url: str):
        self.path, self.url = path, url
        super().__init__(f"{path}: has a modifierExtension the ruleset does not know: {url}")


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

    def subtree_rules(self) -> Iterator[Rule]:
        if self.rule is not None:
            yield self.rule
        for entries in self.children.values():
            for _, _, child in entries:
                yield from child.subtree_rules()


@dataclass
class DeidStats:
    """What de-identification removed, by resource path."""

    dropped_by_rule: Counter = field(default_factory=Counter)
    uncovered: Counter = field(default_factory=Counter)
    redacted: Counter = field(default_factory=Counter)


# decision kinds
_LEAF, _COMPLEX, _IDENTIFIER, _REMOVE = range(4)
_DYNAMIC = -1  # _Plan.fast: no fixed decision (see Deidentifier._fast)
_GONE = object()


@dataclass(eq=False)
class _Plan:
    """How the children of one element are de-identified, given the rule that covers it."""

    path: str
    model: type
    node: _Node | None  # the trie node at this element (None: below every rule's path)
    rule: Rule | None  # the rule covering this element
    named: bool  # a rule attaches at this element itself
    fields: dict[str, ElementType]
    entries: dict[str, _Entry] = field(default_factory=dict)
    identity: frozenset[str] | None = None  # see Deidentifier._identity
    memo_keys: frozenset[str] = frozenset()
    memo: dict | None = None
    fast: dict[str, tuple] = field(default_factory=dict)  # see Deidentifier._fast

    @property
    def type(self) -> str:
        return type_name(self.model)


@dataclass(eq=False)
class _Decision:
    kind: int
    path: str
    label: str  # what happens, for the ruleset report
    rule: Rule | None = None
    fn: Callable[[Any, Context, str], Any] | None = None  # _LEAF: None keeps the value
    plan: _Plan | None = None  # _COMPLEX, _IDENTIFIER (the plan of Identifier.type)
    counter: str = ""  # _REMOVE: the DeidStats counter
    node: _Node | None = None  # _REMOVE: where the modifierExtension scan starts


@dataclass(eq=False)
class _Entry:
    """One element name under a plan: a fixed decision, or one per filtered rule it matches."""

    key: str
    etype: ElementType | None
    candidates: list[tuple[str | None, str | None, _Node]]
    via_choice: bool  # matched through value[x]
    static: _Decision | None = None
    by_child: dict[int, _Decision] = field(default_factory=dict)


class Deidentifier:
    """De-identifies resources under one ruleset and zone with one keyring."""

    def __init__(self, ruleset: Ruleset, keys: Keyring):
        self.ruleset, self.keys = ruleset, keys
        self.policy = ruleset.strings
        self._structural_types = frozenset(dtype for dtype, _ in ruleset.strings.structural)
        self._tries: dict[str, _Node] = {}
        self._roots: dict[str, _Plan] = {}
        self._plans: dict[tuple, _Plan] = {}
        self._wild = [r for r in ruleset.rules if r.resource == "*"]
        self._specific = [r for r in ruleset.rules if r.resource != "*"]
        self._functions = {r.action: value_function(r.action, keys) for r in ruleset.rules}
        self._keep_rules: dict[int, Rule] = {}
        self._identifying: dict[str, frozenset[str]] = {}
        self.stats = DeidStats()

    # ---- rules ---------------------------------------------------------------------
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

    def _root(self, resource_type: str) -> _Plan:
        plan = self._roots.get(resource_type)
        if plan is None:
            model = model_for(resource_type)
            plan = self._roots[resource_type] = _Plan(resource_type, model, self._trie(resource_type), None, False, elements(model))
        return plan

    def _plan(self, path: str, model: type, node: _Node | None, rule: Rule, named: bool) -> _Plan:
        key = (path, id(node), id(rule), named)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = _Plan(path, model, node, rule, named, elements(model))
        return plan

    def _keep(self, rule: Rule) -> Rule:
        """The rule as keep: for the parts of an Identifier its pseudonym keeps (its type)."""
        if id(rule) not in self._keep_rules:
            self._keep_rules[id(rule)] = replace(rule, action=Action("keep"))
        return self._keep_rules[id(rule)]

    # ---- decisions -----------------------------------------------------------------
    def _entry(self, plan: _Plan, key: str) -> _Entry:
        candidates = _candidates(plan.node, key)
        via_choice = bool(candidates) and plan.node is not None and key not in plan.node.children
        entry = _Entry(key, plan.fields.get(key), candidates, via_choice)
        if key != "modifierExtension" and not any(f is not None for f, _, _ in entry.candidates):
            child = entry.candidates[0][2] if entry.candidates else None
            entry.static = self._decide(plan, entry, child)
        plan.entries[key] = entry
        return entry

    def _match(self, entry: _Entry, item: Any) -> tuple[str | None, _Node | None]:
        for ffield, fvalue, child in entry.candidates:
            if ffield is None:
                return None, child
            if isinstance(item, dict) and isinstance(item.get(ffield), str) and fnmatchcase(item[ffield], fvalue):
                return ffield, child
        return None, None

    def _dynamic(self, plan: _Plan, entry: _Entry, item: Any) -> _Decision:
        ffield, child = self._match(entry, item)
        if entry.key == "modifierExtension" and ffield != "url":
            raise UnknownModifierExtension(f"{plan.path}.modifierExtension", _url(item))
        decision = entry.by_child.get(id(child))
        if decision is None:
            decision = entry.by_child[id(child)] = self._decide(plan, entry, child)
        return decision

    def _decide(self, plan: _Plan, entry: _Entry, child: _Node | None) -> _Decision:
        key, etype = entry.key, entry.etype
        path = f"{plan.path}.{key}"
        exact = child is not None and child.rule is not None
        rule = child.rule if exact else plan.rule
        if rule is None:
            return _Decision(_REMOVE, path, "dropped: no rule covers it", None, counter="uncovered", node=child)
        if etype is None or etype.kind == "resource":  # primitive extensions (_x), contained resources
            return _Decision(_REMOVE, path, "dropped: not de-identified by any rule", rule, counter="uncovered", node=child)
        action = rule.action.name
        if action == "drop":
            return _Decision(_REMOVE, path, "dropped by rule", rule, counter="dropped_by_rule", node=child)
        if action == "redact":
            return _Decision(_REMOVE, path, "redacted by rule", rule, counter="redacted", node=child)
        if etype.kind == "complex":
            if etype.type in self._structural_types and not exact and action not in ("pseudonymize", "encrypt", "scrub"):
                # a Reference or Identifier inside an element a rule was written for (subject.identifier
                # under a kept subject): its value was never reviewed, so it does not pass
                return _Decision(_REMOVE, path, f"dropped: {etype.type} nested under a rule for another element",
                                 rule, counter="dropped_by_rule", node=child)
            if etype.type == "Identifier" and action == "pseudonymize":
                type_plan = self._plan(path, etype.model, None, self._keep(rule), False)
                return _Decision(_IDENTIFIER, path, f"pseudonymized ({rule.action.params['key']}; type kept)", rule, plan=type_plan)
            sub = self._plan(path, etype.model, child, rule, exact)
            return _Decision(_COMPLEX, path, _describe(rule.action), rule, plan=sub)
        return self._leaf(plan, path, key, etype, rule, exact and not (entry.via_choice and etype.human_readable))

    def _leaf(self, plan: _Plan, path: str, key: str, etype: ElementType, rule: Rule, exact: bool) -> _Decision:
        action, t = rule.action, etype.type
        structural = (plan.type, key) in self.policy.structural
        if etype.human_readable and not structural:
            if exact:
                return self._apply(path, rule, t, exact=True, structural=False)
            if action.name == "scrub":
                return _Decision(_LEAF, path, "scrubbed by rule", rule, fn=_scrub)
            chosen, context = self.policy.decide(plan.type, key, t)
            if chosen.name == "redact":
                return _Decision(_REMOVE, path, f"redacted (strings: {context})", rule, counter="redacted")
            return _Decision(_LEAF, path, f"scrubbed (strings: {context})", rule, fn=_scrub)
        if structural and not (exact or plan.named or action.name in ("pseudonymize", "encrypt", "scrub")):
            return _Decision(_REMOVE, path, "dropped: nested under a rule for another element", rule, counter="dropped_by_rule")
        return self._apply(path, rule, t, exact, structural, reference=(plan.type, key) == ("Reference", "reference"))

    def _apply(self, path: str, rule: Rule, t: str, exact: bool, structural: bool, reference: bool = False) -> _Decision:
        """A leaf under a value action: the action if it applies to the leaf's datatype, else keep."""
        action = rule.action
        name, p = action.name, action.params
        applies = {
            "keep": False,
            "pseudonymize": exact or structural,
            "encrypt": exact or structural,
            "date_shift": exact or t in DATES,
            "perturb": t in NUMBERS,
            "scrub": exact or structural,
            "generalize": exact or (t in DATES if ("to" in p or "birth_year_top" in p) else t in NUMBERS if "round" in p else t == "code"),
        }[name]
        if not applies:
            return _Decision(_LEAF, path, "kept" if name == "keep" else f"kept ({t} under {name})", rule)
        if reference and name == "pseudonymize":
            keys, purpose = self.keys, p["key"]

            def fn(v, ctx, where):
                rtype, _, rid = str(v).partition("/")
                return f"{rtype}/{pseudonym(keys, purpose, rid)}"

            return _Decision(_LEAF, path, _describe(action), rule, fn=fn)
        return _Decision(_LEAF, path, _describe(action), rule, fn=self._functions[action])

    # ---- applying ------------------------------------------------------------------
    def apply(self, resource: dict, patient: str | None = None, known_names: tuple[str, ...] = ()) -> dict:
        """A de-identified copy of resource.

        patient: its patient's pseudonym (for date shifts); known_names: the identifying
        values of its source record, scrubbed from the strings that are kept.
        Raises UnknownModifierExtension for a modifierExtension no rule names.
        """
        rtype = resource["resourceType"]
        ctx = Context(rtype, str(resource.get("id", "")), patient, tuple(known_names))
        out = self._walk(resource, self._root(rtype), ctx)
        return out if out is not resource else dict(resource)

    def _walk(self, src: dict, plan: _Plan, ctx: Context) -> dict:
        keep = plan.identity
        if keep is None:
            keep = self._identity(plan)
        if keep.issuperset(src):  # only leaves kept as they are: share the input's dict
            return src
        work = src.keys() - keep
        if not ctx.known_names and plan.memo is not None and work <= plan.memo_keys:
            try:
                memo_key = tuple(src.items())
                hit = plan.memo.get(memo_key)
            except TypeError:  # a list value: not memoized
                return self._work(src, plan, ctx, work)
            if hit is None:
                if len(plan.memo) >= 10_000:
                    plan.memo.clear()
                hit = plan.memo[memo_key] = self._work(src, plan, ctx, work)
            return hit.copy()
        return self._work(src, plan, ctx, work)

    def _work(self, src: dict, plan: _Plan, ctx: Context, work: Any) -> dict:
        out = src.copy()  # kept leaves stay in place; the rest is replaced or removed below
        fast = plan.fast
        for key in work:
            value = src[key]
            f = fast.get(key)
            if f is None:
                f = self._fast(plan, key)
            kind, fn, path, sub, entry = f
            vtype = type(value)
            r: Any = _GONE
            if kind == _LEAF and vtype is not dict and vtype is not list:
                r = value if fn is None else fn(value, ctx, path)
            elif kind == _COMPLEX and vtype is dict:
                keep = sub.identity if sub.identity is not None else self._identity(sub)
                inner = value if keep.issuperset(value) else self._walk(value, sub, ctx)  # see _walk
                if inner:
                    r = inner
            elif vtype is list:
                kept = []
                if kind == _COMPLEX:
                    keep = sub.identity if sub.identity is not None else self._identity(sub)
                    for item in value:
                        if type(item) is dict:
                            inner = item if keep.issuperset(item) else self._walk(item, sub, ctx)
                            if inner:
                                kept.append(inner)
                        else:
                            self.stats.uncovered[path] += 1
                else:
                    for item in value:
                        x = self._one(plan, entry, item, ctx)
                        if x is not _GONE:
                            kept.append(x)
                if kept:
                    r = kept
            else:
                r = self._one(plan, entry, value, ctx)
            if r is _GONE:
                del out[key]
            else:
                out[key] = r
        return out

    def _fast(self, plan: _Plan, key: str) -> tuple:
        """(kind, fn, path, sub-plan, entry) of an element name under a plan, for _work: its fixed
        decision read once (attribute reads per element and resource were a tenth of the walk);
        kind _DYNAMIC when the decision depends on the value (a filtered rule)."""
        entry = plan.entries.get(key) or self._entry(plan, key)
        d = entry.static
        f = (_DYNAMIC, None, None, None, entry) if d is None else (d.kind, d.fn, d.path, d.plan, entry)
        plan.fast[key] = f
        return f

    def _identity(self, plan: _Plan) -> frozenset[str]:
        """The element names whose values this plan keeps unchanged: primitive leaves kept as
        they are. A dict holding only these is published as it is, without walking it
        (resources are validated before de-identification, so leaves hold primitives)."""
        keep = {"resourceType"} if plan.rule is None and plan.node is not None and "." not in plan.path else set()
        for key, etype in plan.fields.items():
            if etype.kind != "primitive":
                continue
            entry = plan.entries.get(key) or self._entry(plan, key)
            d = entry.static
            if d is not None and d.kind == _LEAF and d.fn is None:
                keep.add(key)
        # Flat dicts whose other leaves are only scrubbed (codings with a display) repeat across
        # resources: their outputs are memoized by content when the record brings no known
        # values (scrubbing then depends on the string alone).
        plan.memo_keys = frozenset(
            key for key, e in plan.entries.items()
            if e.etype is not None and e.etype.kind == "primitive" and e.static is not None
            and e.static.kind == _LEAF and e.static.fn is _scrub
        )
        numeric = any(plan.fields[k].type in NUMBERS for k in keep if k in plan.fields)  # unique, costly to hash
        plan.memo = {} if plan.memo_keys and not numeric else None
        plan.identity = frozenset(keep)
        return plan.identity

    def _one(self, plan: _Plan, entry: _Entry, item: Any, ctx: Context) -> Any:
        d = entry.static or self._dynamic(plan, entry, item)
        kind = d.kind
        if kind == _LEAF:
            if isinstance(item, (dict, list)):  # not a primitive: never passed through unread
                self.stats.uncovered[d.path] += 1
                self._scan_modifiers(item, None, d.path)
                return _GONE
            return item if d.fn is None else d.fn(item, ctx, d.path)
        if kind == _COMPLEX:
            if type(item) is not dict:
                self.stats.uncovered[d.path] += 1
                return _GONE
            inner = self._walk(item, d.plan, ctx)
            return inner if inner else _GONE
        if kind == _IDENTIFIER:
            return self._pseudonymize_identifier(d, item, ctx)
        getattr(self.stats, d.counter)[d.path] += 1
        if isinstance(item, (dict, list)):
            self._scan_modifiers(item, d.node, d.path)
        return _GONE

    def _pseudonymize_identifier(self, d: _Decision, item: Any, ctx: Context) -> Any:
        if not isinstance(item, dict) or "value" not in item:
            self.stats.dropped_by_rule[d.path] += 1  # an identifier with no value: nothing to keep
            self._scan_modifiers(item, None, d.path)
            return _GONE
        purpose = d.rule.action.params["key"]
        out = {"system": PSEUDONYM_SYSTEM + purpose, "value": pseudonym(self.keys, purpose, str(item["value"]), item.get("system"))}
        if "type" in item:
            walked = self._walk({"type": item["type"]}, d.plan, ctx)
            if walked:
                out["type"] = walked["type"]
        self._scan_modifiers(item, None, d.path)
        return out

    def _scan_modifiers(self, value: Any, node: _Node | None, path: str) -> None:
        """Refuse a modifierExtension no rule names inside an element that is being removed."""
        if isinstance(value, list):
            for item in value:
                self._scan_modifiers(item, node, path)
            return
        if not isinstance(value, dict):
            return
        for key, sub in value.items():
            if not isinstance(sub, (dict, list)):
                continue
            entry = _Entry(key, None, (node.children.get(key) or []) if node is not None else [], False)
            for item in sub if isinstance(sub, list) else [sub]:
                ffield, child = self._match(entry, item)
                if key == "modifierExtension" and ffield != "url":
                    raise UnknownModifierExtension(f"{path}.modifierExtension", _url(item))
                self._scan_modifiers(item, child, f"{path}.{key}")

    # ---- known values --------------------------------------------------------------
    def identifying_values(self, resource: dict) -> tuple[str, ...]:
        """The strings a resource holds at identifying leaves: under rules for personal
        attributes of level 3 or more (names, telecom, address, identifier values).
        These are the record's known values that scrubbing removes from kept strings."""
        rtype = resource["resourceType"]
        keys = self._identifying.get(rtype)
        if keys is None:
            keys = self._identifying[rtype] = self._identifying_keys(rtype)
        if not keys:
            return ()
        found: list[str] = []
        self._collect(self._trie(rtype), self._root(rtype).model, None, resource, keys, found)
        return tuple(dict.fromkeys(found))

    def _identifying_keys(self, resource_type: str) -> frozenset[str]:
        root = self._trie(resource_type)
        return frozenset(
            name for name, entries in root.children.items()
            if any(_identifying(r) for _, _, child in entries for r in child.subtree_rules())
        )

    def _collect(self, node: _Node | None, model: type, rule: Rule | None, resource: dict, keys: Any, found: list[str]) -> None:
        fields = elements(model)
        for key in keys:
            value, etype = resource.get(key), fields.get(key)
            if value is None or etype is None or etype.kind == "resource":
                continue
            entry = _Entry(key, etype, _candidates(node, key), False)
            for item in value if isinstance(value, list) else [value]:
                _, child = self._match(entry, item)
                covering = child.rule if child is not None and child.rule is not None else rule
                if etype.kind == "complex":
                    if isinstance(item, dict):
                        self._collect(child, etype.model, covering, item, item.keys(), found)
                elif covering is not None and _identifying(covering) and etype.type in ("string", "markdown") and isinstance(item, str):
                    found.append(item)

    # ---- the ruleset report --------------------------------------------------------
    def describe(self, resource_type: str, depth: int = 2) -> list[dict]:
        """What happens to each element and leaf of a resource type in this zone.

        One row per path: {path, datatype, outcome, rule (element id or None)}. Paths under a
        filtered rule carry the filter (``identifier(system=...)``), and ``(other)`` for the
        items no filter matches. Leaves deeper than depth complex levels are not listed.
        """
        rows: list[dict] = []
        self._describe_plan(self._root(resource_type), resource_type, rows, depth, ())
        return rows

    def _describe_plan(self, plan: _Plan, shown: str, rows: list[dict], depth: int, stack: tuple[str, ...]) -> None:
        for key, etype in plan.fields.items():
            if key == "resourceType" or (stack and key in ("id", "extension", "modifierExtension")):
                continue
            entry = plan.entries.get(key) or self._entry(plan, key)
            if key == "modifierExtension":
                named = [f"{key}({f}={v})" for f, v, _ in entry.candidates if f == "url"]
                for label in named:
                    rows.append(_row(f"{shown}.{label}", etype, "follows its rule", None))
                rows.append(_row(f"{shown}.{key}", etype, "refused: resource quarantined (URL no rule names)", None))
                continue
            branches: list[tuple[str, _Decision]] = []
            if entry.static is not None:
                branches.append((key, entry.static))
            else:
                for f, v, child in entry.candidates:
                    d = entry.by_child.get(id(child)) or entry.by_child.setdefault(id(child), self._decide(plan, entry, child))
                    branches.append((f"{key}({f}={v})" if f else f"{key}(other)", d))
                if all(f is not None for f, _, _ in entry.candidates):
                    d = entry.by_child.get(id(None)) or entry.by_child.setdefault(id(None), self._decide(plan, entry, None))
                    branches.append((f"{key}(other)", d))
            for label, d in branches:
                path = f"{shown}.{label}"
                if d.kind == _COMPLEX and etype.type not in stack and len(stack) < depth:
                    self._describe_plan(d.plan, path, rows, depth, (*stack, etype.type))
                elif d.kind == _COMPLEX:
                    rows.append(_row(path, etype, f"{d.label} (its strings: by the strings policy)", d.rule))
                else:
                    rows.append(_row(path, etype, d.label, d.rule))


def _candidates(node: _Node | None, key: str) -> list[tuple[str | None, str | None, _Node]]:
    """The trie entries for an element name; ``valueQuantity`` falls back to ``value[x]``."""
    if node is None:
        return []
    found = node.children.get(key)
    if found is None and key.startswith("value") and key[5:6].isupper():
        found = node.children.get("value[x]")
    return found or []


def _row(path: str, etype: ElementType | None, outcome: str, rule: Rule | None) -> dict:
    return {"path": path, "datatype": etype.type if etype else "", "outcome": outcome,
            "rule": rule.element if rule is not None else None}


def _describe(action: Action) -> str:
    if action.name == "keep":
        return "kept"
    if action.name == "scrub":
        return "scrubbed by rule"
    if action.name == "pseudonymize":
        return f"pseudonymized ({action.params['key']})"
    if not action.params:
        return action.name
    return action.name + " " + ", ".join(f"{k}={v}" for k, v in action.params.items())


def _identifying(rule: Rule) -> bool:
    return rule.category == IDENTIFYING_CATEGORY and rule.level >= IDENTIFYING_LEVEL


def _url(extension: Any) -> str:
    url = extension.get("url") if isinstance(extension, dict) else None
    if not isinstance(url, str):
        return "(no url)"
    return actions.scrub(url, ())[:200]  # a URL names a definition, but never let one carry an identifier out


_SCRUBBED: dict[str, str] = {}  # scrub results for records with no known values (item names repeat)


def _scrub(value: Any, ctx: Context, path: str) -> Any:
    if not isinstance(value, str):
        return value
    if ctx.known_names:
        return actions.scrub(value, ctx.known)
    out = _SCRUBBED.get(value)
    if out is None:
        if len(_SCRUBBED) >= 200_000:
            _SCRUBBED.clear()
        out = _SCRUBBED[value] = actions.scrub(value, ())
    return out


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
