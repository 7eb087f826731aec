"""The datasheet of a training set: what is in it, in numbers and words (JSON and Markdown).

Summaries never mix codes or units: long-format features are summarised per code and unit,
per-patient results per code and source unit (with what was converted to the canonical
unit and what could not be), and every per-patient column has its missingness (the share
of patients with no value). Class balance is given per split, and the label in words.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pyarrow as pa

from hub.views.runner import code_columns

_SYSTEM_NAMES = {"http://loinc.org": "LOINC", "http://snomed.info/sct": "SNOMED CT", "http://hl7.org/fhir/sid/icd-10": "ICD-10"}


def _r(v: float | None) -> float | None:
    return None if v is None else round(float(v), 4)


def numbers(values: list[float]) -> dict[str, float | None]:
    """mean, min and max of values (rounded to 4 decimals); None when there are none."""
    vals = [float(v) for v in values if v is not None]
    return {"mean": _r(sum(vals) / len(vals)) if vals else None, "min": _r(min(vals)) if vals else None,
            "max": _r(max(vals)) if vals else None}


def class_balance(label_rows: list[dict]) -> dict[str, Any]:
    """patients, labels_true, labels_false and label_rate (share true; None with no patient)."""
    true = sum(1 for r in label_rows if r["label"])
    n = len(label_rows)
    return {"patients": n, "labels_true": true, "labels_false": n - true, "label_rate": _r(true / n) if n else None}


def label_words(label: dict) -> str:
    """The label in words: the spec's ``definition``, else one built from its code, display and unit.

    e.g. "last HbA1c (LOINC 4548-4) of the patient is < 7.0 %".
    """
    if label.get("definition"):
        return str(label["definition"])
    what = label.get("display") or f"`{label['value']}` of view `{label['view']}`"
    code = label.get("code")
    if code:
        system = _SYSTEM_NAMES.get(str(label.get("system", "")), label.get("system") or "code")
        what = f"{what} ({system} {code})"
    unit = f" {label['unit']}" if label.get("unit") else ""
    return f"last {what} of the patient is < {label['below']}{unit} (true) or not (false)"


def long_summary(rows: list[dict], view: dict, features: dict) -> dict[str, Any]:
    """rows and patients of a long-format feature view, with value numbers per code and unit."""
    code_col = features.get("code") or next(iter(code_columns(view)), None) or next(
        (c["name"] for s in view.get("select", []) for c in s.get("column", []) if c.get("type") == "code"), None)
    unit_col, value_col = features.get("unit", "unit"), features.get("value", "value")
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        key = (str(r.get(code_col)) if code_col and r.get(code_col) is not None else "(none)",
               str(r.get(unit_col)) if r.get(unit_col) is not None else "(none)")
        groups.setdefault(key, []).append(r)
    by = [{"code": c, "unit": u, "rows": len(rs), "patients": len({r["patient"] for r in rs}),
           **numbers([r[value_col] for r in rs if isinstance(r.get(value_col), int | float | Decimal) and not isinstance(r[value_col], bool)])}
          for (c, u), rs in sorted(groups.items())]
    return {"rows": len(rows), "patients": len({r["patient"] for r in rows}), "code_column": code_col, "by_code_and_unit": by}


def column_summaries(rows: list[dict], sch: pa.Schema) -> dict[str, dict[str, Any]]:
    """Per column of the per-patient table: missing share, and numbers, true counts or value counts by type."""
    n = len(rows)
    out = {}
    for f in sch:
        if f.name in ("patient", "label_time", "label_value", "label"):
            continue
        vals = [r[f.name] for r in rows if r.get(f.name) is not None]
        entry: dict[str, Any] = {"missing_share": _r((n - len(vals)) / n) if n else None, "present": len(vals)}
        if pa.types.is_boolean(f.type):
            entry["true"] = sum(1 for v in vals if v)
        elif pa.types.is_integer(f.type) or pa.types.is_floating(f.type):
            entry.update(numbers(vals))
        else:
            counts: dict[str, int] = {}
            for v in vals:
                counts[str(v)] = counts.get(str(v), 0) + 1
            entry["values"] = dict(sorted(counts.items()))
        out[f.name] = entry
    return out


def markdown(s: dict) -> str:
    """The datasheet as Markdown."""
    rows_cols = sorted({k for c in s["splits"].values() for k in c if k.endswith("_rows")})
    lines = [f"# Datasheet: {s['name']}", "", f"- shape `{s['shape']}`, zone `{s['zone']}`, pinned to tag `{s['tag']}`",
             f"- spec SHA-256 `{s['spec_sha256']}`", f"- cohort: {s['cohort_patients']} patients, {s['labelled_patients']} labelled",
             f"- label: {s['label']['definition']} (view `{s['label']['view']}`; {s['label']['time']})", f"- split: {s['split_rule']}", "",
             "## Class balance per split", "",
             "| " + " | ".join(["split", "patients", "label true", "label false", "rate", *rows_cols]) + " |",
             "|---|---|---|---|---|" + "---|" * len(rows_cols)]
    for name, c in list(s["splits"].items()) + [("all", s["class_balance"])]:
        rate = "-" if c["label_rate"] is None else f"{c['label_rate']:.1%}"
        cells = [name, c["patients"], c["labels_true"], c["labels_false"], rate, *(c.get(k, "") for k in rows_cols)]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    for view, f in s["features"].items():
        lines += ["", f"## Feature view `{view}` (long): {f['rows']} rows, {f['patients']} patients", "",
                  "| code | unit | rows | patients | mean | min | max |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {b['code']} | {b['unit']} | {b['rows']} | {b['patients']} | {b['mean']} | {b['min']} | {b['max']} |" for b in f["by_code_and_unit"]]
    if "matrix" in s:
        m = s["matrix"]
        lines += ["", "## Results by code and unit (per-patient table)", "",
                  f"Windows (days before the label time): {', '.join(map(str, m['windows_days']))}; aggregates: "
                  f"{', '.join(m['aggregates'])}; slope {m['slope_unit']}. Values in a unit the conversion table cannot "
                  "convert are counted here and left out.", "",
                  "| name | code | unit | canonical unit | rows | converted | unconvertible | mean | min | max |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {b['name']} | {b['code']} | {b['unit']} | {b['canonical_unit']} | {b['rows']} | {b['converted']} | "
                  f"{b['unconvertible']} | {b['mean']} | {b['min']} | {b['max']} |" for b in m["results_by_code_and_unit"]]
        lines += ["", "## Columns (per-patient table)", "", "| column | missing | present | summary |", "|---|---|---|---|"]
        for col, c in m["columns"].items():
            if "true" in c:
                summary = f"true {c['true']}"
            elif "values" in c:
                summary = ", ".join(f"{k}: {v}" for k, v in c["values"].items())
            else:
                summary = f"mean {c['mean']}, min {c['min']}, max {c['max']}"
            miss = "-" if c["missing_share"] is None else f"{c['missing_share']:.1%}"
            lines.append(f"| `{col}` | {miss} | {c['present']} | {summary} |")
    lines += ["", "## Snapshots", ""] + [f"- `{t}` @ {sid}" for t, sid in s["snapshots"].items()]
    lines += ["", "## Lineage", ""] + [f"- {k}: {', '.join(v)}" for k, v in s["lineage"].items()]
    if s["risk_report"]:
        r = s["risk_report"]
        lines += ["", "## Risk report of the release", "", f"- k = {r['k_required']} over {', '.join(r['quasi_identifiers'])}: {r['reason']}"]
    lines += ["", "## Files", ""] + [f"- `{f}` sha256 `{h}`" for f, h in s["files_sha256"].items()]
    return "\n".join(lines) + "\n"
