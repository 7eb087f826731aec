"""Loads and validates a guideline indicator configuration (indicators/*.yaml).

The file holds the thresholds, the guideline each comes from, the managed populations
(ICD-10 prefixes), the ASCVD prefixes that lower the LDL-C target, and the LOINC codes and
UCUM units of the measurements. Every problem is a ConfigError naming file, line and field,
raised on load, before any data is read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from hub.region import REPO_ROOT
from hub.yamlio import ConfigError, LineDict, load_yaml

DEFAULT_CONFIG = REPO_ROOT / "indicators" / "cn-t2dm-2020.yaml"
_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_ICD10 = re.compile(r"[A-Z][0-9]{2}(\.[0-9A-Za-z]{1,4})?")
_LOINC = re.compile(r"[0-9]{1,7}-[0-9]")
_BP = ("systolic", "diastolic")


@dataclass(frozen=True)
class Population:
    id: str
    title: str
    icd10: tuple[str, ...]  # code prefixes


@dataclass(frozen=True)
class Measurement:
    id: str
    title: str
    loinc: str
    unit: str  # the UCUM code a value must carry to count
    systolic: str | None = None  # blood pressure: component LOINC codes
    diastolic: str | None = None

    @property
    def is_bp(self) -> bool:
        return self.systolic is not None


@dataclass(frozen=True)
class Indicator:
    id: str
    title: str
    population: str
    source: str
    measurement: str | None = None
    below: float | None = None  # a lab value strictly below it is at target
    below_with_ascvd: float | None = None
    below_bp: tuple[float, float] | None = None  # (systolic, diastolic): both strictly below
    all_of: tuple[str, ...] = ()


@dataclass(frozen=True)
class IndicatorConfig:
    path: Path
    config: str
    version: str
    title: str
    sources: dict[str, str]
    populations: dict[str, Population]
    ascvd: tuple[str, ...]
    measurements: dict[str, Measurement]
    indicators: tuple[Indicator, ...]

    @property
    def label(self) -> str:
        """``config@version``, as written into every output row and report."""
        return f"{self.config}@{self.version}"


class _Reader:
    def __init__(self, path: Path):
        self.file = str(path)

    def fail(self, node: dict, key: str, field: str, problem: str, expected: str = "") -> ConfigError:
        line = node.line_of(key) if isinstance(node, LineDict) else 0
        return ConfigError(self.file, line, field, problem, expected)

    def mapping(self, node: object, key: str, field: str, parent: dict) -> LineDict:
        if not isinstance(node, dict):
            raise self.fail(parent, key, field, f"is {type(node).__name__}", "a mapping")
        return node  # type: ignore[return-value]

    def keys(self, node: dict, field: str, allowed: set[str], required: set[str]) -> None:
        for k in node:
            if k not in allowed:
                raise self.fail(node, k, f"{field}.{k}", "is not a known field", "one of " + ", ".join(sorted(allowed)))
        for k in sorted(required - node.keys()):
            raise self.fail(node, k, f"{field}.{k}", "is missing", "a value")

    def text(self, node: dict, key: str, field: str, pattern: re.Pattern | None = None, expected: str = "text") -> str:
        v = node.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and pattern is None:
            v = str(v)
        if not isinstance(v, str) or not v.strip():
            raise self.fail(node, key, field, f"is {v!r}", expected)
        if pattern is not None and not pattern.fullmatch(v):
            raise self.fail(node, key, field, f"{v!r} is not valid", expected)
        return v

    def number(self, node: dict, key: str, field: str) -> float:
        v = node.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise self.fail(node, key, field, f"is {v!r}", "a positive number")
        return float(v)

    def prefixes(self, node: dict, key: str, field: str) -> tuple[str, ...]:
        v = node.get(key)
        if not isinstance(v, list) or not v:
            raise self.fail(node, key, field, f"is {v!r}", "a non-empty list of ICD-10 code prefixes like E11")
        for code in v:
            if not isinstance(code, str) or not _ICD10.fullmatch(code):
                raise self.fail(node, key, field, f"{code!r} is not an ICD-10 code prefix", "a prefix like E11 or I63")
        return tuple(v)


def load_config(path: Path | str = DEFAULT_CONFIG) -> IndicatorConfig:
    """Read and validate an indicator configuration; raises ConfigError (file, line, field)."""
    path = Path(path)
    r = _Reader(path)
    doc = load_yaml(path)
    if not isinstance(doc, LineDict):
        raise ConfigError(str(path), 1, "(document)", "is not a mapping", "config, version, populations, indicators ...")
    r.keys(doc, "", {"config", "version", "title", "sources", "populations", "ascvd", "measurements", "indicators"},
           {"config", "version", "sources", "populations", "measurements", "indicators"})
    config = r.text(doc, "config", "config", _ID, "a lower-case id like cn-t2dm-2020")
    version = r.text(doc, "version", "version", None, "a version text like \"2020.1\"")
    title = str(doc.get("title") or config)
    sources_node = r.mapping(doc["sources"], "sources", "sources", doc)
    sources = {str(k): r.text(sources_node, k, f"sources.{k}", None, "the guideline's citation") for k in sources_node}
    pops_node = r.mapping(doc["populations"], "populations", "populations", doc)
    populations = {}
    for pid, node in pops_node.items():
        node = r.mapping(node, pid, f"populations.{pid}", pops_node)
        r.keys(node, f"populations.{pid}", {"title", "icd10"}, {"icd10"})
        populations[pid] = Population(pid, str(node.get("title") or pid), r.prefixes(node, "icd10", f"populations.{pid}.icd10"))
    ascvd: tuple[str, ...] = ()
    if "ascvd" in doc:
        node = r.mapping(doc["ascvd"], "ascvd", "ascvd", doc)
        r.keys(node, "ascvd", {"icd10"}, {"icd10"})
        ascvd = r.prefixes(node, "icd10", "ascvd.icd10")
    meas_node = r.mapping(doc["measurements"], "measurements", "measurements", doc)
    measurements = {}
    for mid, node in meas_node.items():
        node = r.mapping(node, mid, f"measurements.{mid}", meas_node)
        r.keys(node, f"measurements.{mid}", {"loinc", "unit", "title", "systolic", "diastolic"}, {"loinc", "unit"})
        f = f"measurements.{mid}"
        parts = [r.text(node, k, f"{f}.{k}", _LOINC, "a LOINC code like 8480-6") if k in node else None for k in _BP]
        if (parts[0] is None) != (parts[1] is None):
            missing = "diastolic" if parts[1] is None else "systolic"
            raise r.fail(node, "loinc", f"{f}.{missing}", "is missing", "both systolic and diastolic component codes, or neither")
        measurements[mid] = Measurement(mid, str(node.get("title") or mid), r.text(node, "loinc", f"{f}.loinc", _LOINC, "a LOINC code like 4548-4"),
                                        r.text(node, "unit", f"{f}.unit", None, "a UCUM code like mmol/L"), parts[0], parts[1])
    if not isinstance(doc["indicators"], list) or not doc["indicators"]:
        raise r.fail(doc, "indicators", "indicators", f"is {doc['indicators']!r}", "a list of indicators")
    indicators: list[Indicator] = []
    for i, node in enumerate(doc["indicators"]):
        f = f"indicators[{i}]"
        node = r.mapping(node, "indicators", f, doc)
        r.keys(node, f, {"id", "title", "population", "measurement", "below", "below_with_ascvd", "all_of", "source"},
               {"id", "population", "source"})
        iid = r.text(node, "id", f"{f}.id", _ID, "a lower-case id like t2dm-hba1c")
        if iid in {x.id for x in indicators}:
            raise r.fail(node, "id", f"{f}.id", f"{iid!r} is used twice", "a unique id")
        pop = r.text(node, "population", f"{f}.population")
        if pop not in populations:
            raise r.fail(node, "population", f"{f}.population", f"{pop!r} is not defined", "one of " + ", ".join(populations))
        src = r.text(node, "source", f"{f}.source")
        if src not in sources:
            raise r.fail(node, "source", f"{f}.source", f"{src!r} is not in sources", "one of " + ", ".join(sources))
        title_i = str(node.get("title") or iid)
        if "all_of" in node:
            if "measurement" in node or "below" in node:
                raise r.fail(node, "all_of", f"{f}.all_of", "is given with measurement/below", "either all_of or measurement with below")
            parts = node["all_of"]
            known = {x.id: x for x in indicators}
            if not isinstance(parts, list) or len(parts) < 2:
                raise r.fail(node, "all_of", f"{f}.all_of", f"is {parts!r}", "a list of at least two indicator ids defined above")
            for p in parts:
                if p not in known or known[p].all_of:
                    raise r.fail(node, "all_of", f"{f}.all_of", f"{p!r} is not a single indicator defined above", "ids of indicators listed before this one")
                if known[p].population != pop:
                    raise r.fail(node, "all_of", f"{f}.all_of", f"{p!r} has population {known[p].population!r}, not {pop!r}", "indicators of the same population")
            indicators.append(Indicator(iid, title_i, pop, src, all_of=tuple(parts)))
            continue
        for k in ("measurement", "below"):
            if k not in node:
                raise r.fail(node, "id", f"{f}.{k}", "is missing", "measurement and below (or all_of)")
        mid = r.text(node, "measurement", f"{f}.measurement")
        if mid not in measurements:
            raise r.fail(node, "measurement", f"{f}.measurement", f"{mid!r} is not defined", "one of " + ", ".join(measurements))
        m = measurements[mid]
        if m.is_bp:
            below = r.mapping(node["below"], "below", f"{f}.below", node)
            r.keys(below, f"{f}.below", set(_BP), set(_BP))
            if "below_with_ascvd" in node:
                raise r.fail(node, "below_with_ascvd", f"{f}.below_with_ascvd", "is given for blood pressure", "it only on a lab measurement")
            indicators.append(Indicator(iid, title_i, pop, src, mid, below_bp=(r.number(below, "systolic", f"{f}.below.systolic"),
                                                                               r.number(below, "diastolic", f"{f}.below.diastolic"))))
            continue
        below_v = r.number(node, "below", f"{f}.below")
        with_ascvd = r.number(node, "below_with_ascvd", f"{f}.below_with_ascvd") if "below_with_ascvd" in node else None
        if with_ascvd is not None and not ascvd:
            raise r.fail(node, "below_with_ascvd", f"{f}.below_with_ascvd", "is given but the file defines no ascvd codes", "an ascvd: {icd10: [...]} section")
        indicators.append(Indicator(iid, title_i, pop, src, mid, below=below_v, below_with_ascvd=with_ascvd))
    return IndicatorConfig(path, config, version, title, sources, populations, ascvd, measurements, tuple(indicators))
