"""Prepares ready-made FHIR resources (one JSON text each) for publication, per batch.

The counterpart of hub.prepare.Preparer for sources that send resources rather than rows
(FHIR NDJSON bulk exports): each text is parsed, checked to be a resource type hub
publishes, validated against the R4 model, given keyed ids (its own and every reference's,
under the feed's namespace), then de-identified and leak-scanned by the same Deidentifier
and Scanner a Preparer uses, with the record's known values: the resource's own
identifying leaves, and for a resource about a patient read earlier in the same run, that
patient's. The outcome per text is a prepare.Ready or a prepare.Rejected whose problems
name file, line and element, never a value.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from deid.engine import Deidentifier, UnknownModifierExtension, patient_pseudonym
from deid.keys import Keyring
from hub.fhir.check import Validator
from hub.fhir.ids import resource_id, source_key_hash
from hub.fhir.jsonio import content_hash, dump_bytes
from hub.fhir.validate import RESOURCE_MODULES
from hub.identifiers import is_valid_resident_id
from hub.lakehouse.tables import effective_time, primary_code
from hub.leakscan import Scanner
from hub.mapping.compile import RowProblem
from hub.prepare import Ready, Rejected

#: Patient identifier systems that carry a resident ID number (deid/rules/default.yaml links them).
RESIDENT_ID_SYSTEMS = ("urn:oid:2.16.156.10011.1.3", "urn:oid:2.16.840.1.113883.2.23.1.19.1")
#: A reference hub re-keys: ``Type/id``, optionally a version, optionally after a server's base URL.
_REFERENCE_RE = re.compile(r"^(?:https?://[^\s]*/)?([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?$")
_ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
#: A JSON escape of a UTF-16 surrogate: json.loads turns an unpaired one into a str no encoder accepts.
_SURROGATE_ESCAPE_RE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
#: Patients whose identifying values are kept for scrubbing their other resources, at most.
KNOWN_PATIENTS = 200_000


@dataclass
class Prepared:
    """One line's outcome: the item, its resource type (as written, when readable) and references."""

    line: int
    resource_type: str
    item: Ready | Rejected
    references: list[tuple[str, str]] = field(default_factory=list)  # (type, keyed id) of each re-keyed reference


def _lone_surrogate(node: Any, path: str) -> str | None:
    """The path below node of the first key or string holding an unpaired surrogate (None: there is none).
    Names that are not plain element names are shown as ``(name)``, never as written."""
    if isinstance(node, str):
        return path if _SURROGATE_RE.search(node) else None
    if isinstance(node, dict):
        for key, value in node.items():
            step = f".{key}" if _NAME_RE.fullmatch(key) else ".(name)"
            if _SURROGATE_RE.search(key):
                return path + step
            found = _lone_surrogate(value, path + step)
            if found is not None:
                return found
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found = _lone_surrogate(value, f"{path}[{i}]")
            if found is not None:
                return found
    return None


class ResourcePreparer:
    """Prepares the lines of one feed's files under one institution, ruleset and key."""

    def __init__(self, institution: str, keys: Keyring, deid: Deidentifier, scanner: Scanner, feed: str, timezone: dt.tzinfo,
                 oracle_every: int = 100):
        """oracle_every: every n-th resource is also validated by fhir.resources (hub.fhir.check)."""
        self.institution, self.keys, self.deid, self.scanner, self.feed = institution, keys, deid, scanner, feed
        self.validator = Validator(oracle_every)
        self.exempted: Counter = Counter()  # leak-scan exemptions used by lines made Ready (see take_exempted)
        self.namespace = f"ndjson:{feed}"  # never a mapping namespace (those have no colon)
        self.system = f"ndjson:{feed}"
        self.timezone = timezone
        self.line_limit: int | None = None  # bytes; the reader sets it, and leaves out longer lines
        self._ids: dict[tuple[str, str], str] = {}
        self.patient_values: dict[str, tuple[str, ...]] = {}  # keyed Patient id -> its identifying values

    def take_exempted(self) -> Counter:
        """The exemptions counted since the last call (for the publication's manifest)."""
        out, self.exempted = self.exempted, Counter()
        return out

    def keyed_id(self, resource_type: str, source_id: str) -> str:
        key = (resource_type, source_id)
        kid = self._ids.get(key)
        if kid is None:
            if len(self._ids) >= 500_000:
                self._ids.clear()
            kid = self._ids[key] = resource_id(self.keys, self.institution, self.namespace, key)
        return kid

    def key_hash(self, file: str, key: tuple[str, ...]) -> str:
        return source_key_hash(self.keys, self.institution, self.system, file, key)

    def prepare(self, file: str, lines: list[tuple[int, str | None]], declared_type: str | None) -> list[Prepared]:
        """Prepare (line number, text) pairs of one file; text None: the line is over the size limit."""
        out = []
        for lineno, text in lines:
            out.append(self._one(file, lineno, text, declared_type))
        return out

    def _reject(self, file: str, lineno: int, rtype: str, key: tuple[str, ...], element: str, problem: str,
                expected: str, failed_validation: bool = False) -> Prepared:
        p = RowProblem(f"{file}:{lineno}", element, None, problem, expected, None)
        return Prepared(lineno, rtype, Rejected([p], failed_validation, f"line {lineno}", self.key_hash(file, key)))

    def _one(self, file: str, lineno: int, text: str | None, declared: str | None) -> Prepared:
        fallback = declared or "(unknown)"
        by_line = ("line", str(lineno))
        if text is None:  # the reader left out a line over its size limit
            limit = f"{self.line_limit:,} bytes" if self.line_limit else "the size limit for one resource"
            return self._reject(file, lineno, fallback, by_line, fallback, f"the line is longer than {limit}",
                                "one resource per line within the size limit (split the export or attach large data by URL)")
        try:
            resource = json.loads(text, parse_float=Decimal)
        except ValueError as exc:
            where = f" at character {exc.pos}" if isinstance(exc, json.JSONDecodeError) else ""
            return self._reject(file, lineno, fallback, by_line, fallback, f"is not valid JSON{where}", "one JSON object per line")
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            return self._reject(file, lineno, fallback, by_line, f"{fallback}.resourceType", "is not a FHIR resource (no resourceType)",
                                "a JSON object with resourceType")
        if _SURROGATE_ESCAPE_RE.search(text):
            where = _lone_surrogate(resource, "")
            if where is not None:
                shown = resource["resourceType"] if resource["resourceType"] in RESOURCE_MODULES else fallback
                return self._reject(file, lineno, shown, by_line, f"{shown}{where}",
                                    "holds an unpaired UTF-16 surrogate escape (\\uD800-\\uDFFF without its pair), which is not text",
                                    "surrogate escapes in pairs (one character outside the BMP), or the character itself in UTF-8")
        rtype = resource["resourceType"]
        if rtype not in RESOURCE_MODULES:
            shown = rtype if re.fullmatch(r"[A-Z][A-Za-z]{1,63}", rtype) else "(not a type name)"
            return self._reject(file, lineno, shown, by_line, "resourceType", f"{shown} is a resource type hub does not publish",
                                f"one of {', '.join(RESOURCE_MODULES)}")
        source_id = resource.get("id")
        if not isinstance(source_id, str) or not _ID_RE.match(source_id):
            return self._reject(file, lineno, rtype, by_line, f"{rtype}.id", "is missing or not a FHIR id",
                                "an id of 1-64 letters, digits, '-' and '.' (ids are re-keyed, references follow)")
        key = (rtype, source_id)
        problems = self.validator.problems(resource)
        if problems:
            return Prepared(lineno, rtype, Rejected(
                [RowProblem(f"{file}:{lineno}", el, None, msg, "a valid FHIR R4 resource", None) for el, msg in problems],
                True, f"line {lineno}", self.key_hash(file, key)))
        if rtype == "Patient":
            bad = _invalid_resident_id(resource)
            if bad is not None:
                return self._reject(file, lineno, rtype, key, "Patient.identifier", f"the identifier under {bad} is not a valid resident ID number",
                                    "a GB 11643 number whose check character is right (or the identifier under another system)")
        references: list[tuple[str, str]] = []
        resource["id"] = self.keyed_id(rtype, source_id)
        self._rekey(resource, references, top=True)
        patient_ref = None if rtype == "Patient" else _patient_ref(resource)
        own = self.deid.identifying_values(resource)
        if rtype == "Patient":
            if len(self.patient_values) < KNOWN_PATIENTS:
                self.patient_values[resource["id"]] = own
            known_values = own
        else:
            known_values = tuple(dict.fromkeys((*own, *self.patient_values.get(patient_ref or "", ()))))
        known = self.scanner.with_canaries(known_values)
        try:
            clean = self.deid.apply(resource, known_names=known)
        except UnknownModifierExtension as exc:
            return self._reject(file, lineno, rtype, key, exc.path, f"has a modifierExtension hub's ruleset does not know: {exc.url}",
                                f"no modifierExtension, or a rule for it in {self.deid.ruleset.path.name}")
        data = dump_bytes(clean)
        out = data.decode()
        found = self.scanner.record(out, known, f"{file}:{lineno}")
        if found.hits:
            return Prepared(lineno, rtype, Rejected([RowProblem(
                f"{file}:{lineno}", hit.path or rtype, None, f"the leak scan finds a {hit.kind} value here after de-identification",
                "no identifier in published data: correct the resource at the source, or declare a code system whose codes "
                f"look like identifiers under leak_scan: in {self.deid.ruleset.path.name}", None) for hit in found.hits],
                False, f"line {lineno}", self.key_hash(file, key)))
        if found.exempted:  # Counter.update is Python code, even for nothing to add
            self.exempted.update(found.exempted)
        is_patient = rtype == "Patient"
        return Prepared(lineno, rtype, Ready(
            id=clean["id"], data=data, hash=content_hash(data), code=primary_code(clean),
            effective_time=effective_time(clean, self.timezone), patient_ref=patient_ref,
            pseudonym=patient_pseudonym(clean) if is_patient else None, source_key_hash=self.key_hash(file, key),
            scanned=True,
        ), references)

    def _rekey(self, node: Any, references: list[tuple[str, str]], top: bool = False) -> None:
        """Rewrite every ``Type/id`` reference below node (contained resources and extensions too)."""
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "reference" and isinstance(v, str):
                    m = _REFERENCE_RE.match(v)
                    if m is not None:
                        kid = self.keyed_id(m.group(1), m.group(2))
                        node[k] = f"{m.group(1)}/{kid}"
                        references.append((m.group(1), kid))
                elif isinstance(v, (dict, list)):
                    self._rekey(v, references)
        elif isinstance(node, list):
            for v in node:
                self._rekey(v, references)


def _patient_ref(resource: dict) -> str | None:
    ref = resource.get("subject") or resource.get("patient") or {}
    ref = ref.get("reference", "") if isinstance(ref, dict) else ""
    return ref[len("Patient/"):] if ref.startswith("Patient/") else None


def _invalid_resident_id(patient: dict) -> str | None:
    """The system of the first resident-ID identifier whose number fails GB 11643, else None."""
    for ident in patient.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("system") in RESIDENT_ID_SYSTEMS and not is_valid_resident_id(str(ident.get("value", ""))):
            return ident["system"]
    return None
