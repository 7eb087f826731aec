"""Runs SQL-on-FHIR v2 conformance test files and writes a report in the spec repository's format.

Each file holds resources and tests; a test has a view and either ``expect`` (rows,
compared as a multiset) or ``expectError``. The report maps each file to its tests with
``{"name": title, "result": {"passed": bool}}``, and records each test's tags, so that
shareable and experimental results can be told apart.
"""

from __future__ import annotations

from pathlib import Path

from hub.fhir.jsonio import loads
from hub.views.runner import ViewError, canonical, run_view


def run_file(path: Path) -> list[dict]:
    doc = loads(Path(path).read_text(encoding="utf-8"))  # decimals keep their precision (1.0 is not 1)
    out = []
    for test in doc["tests"]:
        passed, reason = False, ""
        try:
            rows = run_view(test["view"], doc.get("resources", []))
            if test.get("expectError"):
                reason = "expected an error"
            else:
                expected = sorted(canonical({k: _num(v) for k, v in r.items()}) for r in test.get("expect", []))
                got = sorted(canonical(r) for r in rows)
                passed = expected == got
                if passed and "expectColumns" in test and rows:
                    passed = list(rows[0].keys()) == test["expectColumns"]
                reason = "" if passed else f"expected {expected}, got {got}"
        except (ViewError, KeyError, TypeError, ValueError) as exc:
            passed = bool(test.get("expectError"))
            reason = "" if passed else f"{type(exc).__name__}: {exc}"
        out.append({"name": test["title"], "result": {"passed": passed, **({"reason": reason[:500]} if reason else {})},
                    "tags": test.get("tags", [])})
    return out


def run_folder(folder: Path) -> dict[str, dict]:
    return {p.name: {"tests": run_file(p)} for p in sorted(Path(folder).glob("*.json"))}


def summary(report: dict[str, dict]) -> dict[str, tuple[int, int]]:
    """{tag: (passed, total)} over all tests."""
    out: dict[str, list[int]] = {}
    for f in report.values():
        for t in f["tests"]:
            for tag in t["tags"] or ["untagged"]:
                agg = out.setdefault(tag, [0, 0])
                agg[0] += t["result"]["passed"]
                agg[1] += 1
    return {k: (v[0], v[1]) for k, v in out.items()}


def _num(v):
    from decimal import Decimal

    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() and "." not in str(v) else float(v)
    if isinstance(v, list):
        return [_num(x) for x in v]
    return v
