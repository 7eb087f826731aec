"""The recognition rules as data: recognised items, EQA results per lab, re-test reasons.

Three editable files in one folder (``recognition/`` by default): ``items.yaml`` (LOINC,
name, category lab|exam, validity window in days; the region's scope and mark),
``eqa.yaml`` (per institution, item and year: passed or not) and ``reasons.yaml`` (the
codes a doctor gives for re-testing). Validated on load, errors naming file, line, field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hub.region import REPO_ROOT
from hub.yamlio import ConfigError, LineDict, load_yaml

DEFAULT_DIR = REPO_ROOT / "recognition-rules"


@dataclass(frozen=True)
class Item:
    loinc: str
    name: str
    category: str
    window_days: int


@dataclass(frozen=True)
class RecognitionRules:
    scope: str
    mark: str
    items: dict[str, Item]  # by LOINC
    eqa: dict[tuple[str, str, int], bool]  # (institution, loinc, year) -> passed
    eqa_default: str  # passed | unknown
    reasons: dict[str, str]

    def eqa_passed(self, institution: str, loinc: str, year: int) -> bool | None:
        hit = self.eqa.get((institution, loinc, year))
        if hit is not None:
            return hit
        return True if self.eqa_default == "passed" else None


def load_rules(folder: Path = DEFAULT_DIR) -> RecognitionRules:
    folder = Path(folder)
    items_doc = load_yaml(folder / "items.yaml")
    f = str(folder / "items.yaml")
    if not isinstance(items_doc, LineDict) or not isinstance(items_doc.get("items"), list):
        raise ConfigError(f, 1, "items", "is missing", "a list of recognised items")
    items: dict[str, Item] = {}
    for node in items_doc["items"]:
        for fld, typ in (("loinc", str), ("name", str), ("category", str), ("window_days", int)):
            if not isinstance(node.get(fld), typ):
                raise ConfigError(f, node.line_of(fld), f"items.{fld}", f"{node.get(fld)!r} is not valid", f"a {typ.__name__}")
        if node["category"] not in ("lab", "exam"):
            raise ConfigError(f, node.line_of("category"), "items.category", f"{node['category']!r}", "lab or exam")
        if node["window_days"] <= 0:
            raise ConfigError(f, node.line_of("window_days"), "items.window_days", "must be positive", "days, e.g. 30")
        if node["loinc"] in items:
            raise ConfigError(f, node.line, "items.loinc", f"{node['loinc']} is listed twice", "each item once")
        items[node["loinc"]] = Item(node["loinc"], node["name"], node["category"], node["window_days"])
    eqa_doc = load_yaml(folder / "eqa.yaml") or LineDict()
    fe = str(folder / "eqa.yaml")
    default = eqa_doc.get("default", "passed")
    if default not in ("passed", "unknown"):
        raise ConfigError(fe, eqa_doc.line_of("default"), "default", f"{default!r}", "passed or unknown")
    eqa = {}
    for node in eqa_doc.get("results") or []:
        for fld, typ in (("institution", str), ("loinc", str), ("year", int), ("passed", bool)):
            if not isinstance(node.get(fld), typ):
                raise ConfigError(fe, node.line_of(fld), f"results.{fld}", f"{node.get(fld)!r} is not valid", f"a {typ.__name__}")
        if node["loinc"] not in items:
            raise ConfigError(fe, node.line_of("loinc"), "results.loinc", f"{node['loinc']} is not a recognised item", "a LOINC code from items.yaml")
        eqa[(node["institution"], node["loinc"], node["year"])] = node["passed"]
    reasons_doc = load_yaml(folder / "reasons.yaml") or LineDict()
    reasons = {str(k): str(v) for k, v in (reasons_doc.get("reasons") or {}).items()}
    if not reasons:
        raise ConfigError(str(folder / "reasons.yaml"), 1, "reasons", "is empty", "code: text lines")
    return RecognitionRules(str(items_doc.get("scope", "")), str(items_doc.get("mark", "HR")), items, eqa, default, reasons)
