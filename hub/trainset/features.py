"""Per-patient feature tables: the pure steps from view rows to one row per patient.

Every function here works on plain rows (dicts, as a ViewDefinition outputs them, with
``patient`` already resolved to the person), so the golden test needs no lakehouse:

- ``to_timestamp``: a FHIR date or dateTime -> an aware UTC ``datetime`` (typed columns);
- ``load_units``: the unit conversion table (``trainsets/units/conversions.yaml``), validated on load;
- ``normalise``: result rows -> (patient, code, time, value in the code's canonical unit),
  with a tally per code and source unit of what was converted and what could not be;
- ``aggregate``: per patient, per window before the label time, per code: last, min, max,
  mean, count and slope (least-squares slope of value against time, **per year** of
  365.25 days);
- ``demographics``, ``medication_flags``, ``comorbidity_flags``;
- ``patient_rows`` assembles them in the column order of ``columns``.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa

from hub.yamlio import ConfigError, LineDict, load_yaml

AGGREGATES = ("last", "min", "max", "mean", "count", "slope")
YEAR_DAYS = 365.25
#: MedicationRequest statuses that never make a medication active
INACTIVE_STATUSES = frozenset({"cancelled", "entered-in-error", "draft"})
_DATE_RE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")


def to_timestamp(v: Any) -> dt.datetime | None:
    """A FHIR date/dateTime/instant as an aware UTC datetime; None when empty.

    A partial date (``2024``, ``2024-03``) is the start of that period, and a date or
    dateTime without a time zone is taken as UTC.
    """
    if v is None or v == "":
        return None
    if isinstance(v, dt.datetime):
        t = v
    elif isinstance(v, dt.date):
        t = dt.datetime(v.year, v.month, v.day)
    else:
        s = str(v)
        m = _DATE_RE.match(s)
        t = dt.datetime(int(m.group(1)), int(m.group(2) or 1), int(m.group(3) or 1)) if m else dt.datetime.fromisoformat(s)
    return (t if t.tzinfo else t.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)


def slug(code: str) -> str:
    """A code as a column-name part: ``4548-4`` -> ``4548_4``."""
    return re.sub(r"[^0-9a-z]+", "_", code.lower()).strip("_")


# ---- the unit table ------------------------------------------------------------------------

@dataclass(frozen=True)
class UnitTable:
    """Per code: its canonical UCUM unit, and (factor, offset) from each other unit to it."""

    path: str
    canonical: dict[str, str]
    rules: dict[tuple[str, str], tuple[float, float]]

    def convert(self, code: str, unit: str | None, value: float) -> float | None:
        """value (in unit) in the code's canonical unit; None when the table has no way to convert it."""
        if unit is None or code not in self.canonical:
            return None
        if unit == self.canonical[code]:
            return value
        rule = self.rules.get((code, unit))
        return None if rule is None else value * rule[0] + rule[1]


def _metric_ratio(src: str, dst: str) -> float | None:
    """The factor between two metric UCUM units of one kind (mmol/L -> umol/L: 1000), else None."""
    # the evaluator's metric-prefix table: one table of prefixes in hub
    from hub.views.fhirpath import _ucum

    a, b = _ucum(src), _ucum(dst)
    if a is None or b is None or a[0] != b[0]:
        return None
    return float(a[1] / b[1])


def load_units(path: Path) -> UnitTable:
    """Load and check a conversion table: a list of {code, from, to, factor[, offset]}.

    Checks: every field present and typed, one canonical unit (``to``) per code, no rule
    given twice, a positive factor, and, between two metric units of one kind (mg/dL and
    g/L), the factor the prefixes imply.
    """
    path = Path(path)
    f = str(path)
    doc = load_yaml(path)
    if not isinstance(doc, LineDict) or not isinstance(doc.get("units"), list):
        raise ConfigError(f, getattr(doc, "line", 1), "units", "is missing or not a list", "units: a list of {code, from, to, factor}")
    canonical: dict[str, str] = {}
    rules: dict[tuple[str, str], tuple[float, float]] = {}
    for i, row in enumerate(doc["units"]):
        where = f"units[{i}]"
        line = getattr(row, "line", doc.line_of("units"))
        if not isinstance(row, LineDict):
            raise ConfigError(f, line, where, "is not a mapping", "{code, from, to, factor}")
        unknown = set(row) - {"code", "from", "to", "factor", "offset", "note"}
        if unknown:
            raise ConfigError(f, row.line_of(sorted(unknown)[0]), f"{where}.{sorted(unknown)[0]}", "is not a field of a rule",
                              "code, from, to, factor, offset, note")
        for key in ("code", "from", "to", "factor"):
            if key not in row or row[key] in (None, ""):
                raise ConfigError(f, line, f"{where}.{key}", "is missing", "code, from, to (UCUM units) and factor")
        code, src, dst = str(row["code"]), str(row["from"]), str(row["to"])
        factor, offset = row["factor"], row.get("offset", 0)
        for key, v in (("factor", factor), ("offset", offset)):
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ConfigError(f, row.line_of(key), f"{where}.{key}", f"{v!r} is not a number", "a number, e.g. 0.0555")
        if factor <= 0:
            raise ConfigError(f, row.line_of("factor"), f"{where}.factor", f"{factor} is not positive", "a factor > 0")
        if canonical.setdefault(code, dst) != dst:
            raise ConfigError(f, row.line_of("to"), f"{where}.to", f"{dst!r} differs from {canonical[code]!r} given earlier for {code}",
                              "one canonical unit per code")
        if src == dst and (factor != 1 or offset != 0):
            raise ConfigError(f, row.line_of("factor"), f"{where}.factor", f"{src} -> {dst} with factor {factor}, offset {offset}",
                              "factor 1 and no offset from a unit to itself")
        if (code, src) in rules:
            raise ConfigError(f, line, where, f"{code} from {src!r} is given twice", "one rule per code and unit")
        implied = _metric_ratio(src, dst)
        if implied is not None and (offset != 0 or not math.isclose(factor, implied, rel_tol=1e-9)):
            raise ConfigError(f, row.line_of("factor"), f"{where}.factor", f"{src} -> {dst} with factor {factor}",
                              f"factor {implied:g} (the metric prefixes imply it) and no offset")
        rules[(code, src)] = (float(factor), float(offset))
    return UnitTable(f, canonical, rules)


# ---- results: normalise, then aggregate per window --------------------------------------------

@dataclass
class UnitTally:
    """What normalise did with the rows of one code and source unit."""

    rows: int = 0
    converted: int = 0  # rows now in the canonical unit (including those already in it)
    unconvertible: int = 0
    values: list[float] = field(default_factory=list)  # the converted values, for summaries


def normalise(rows: list[dict], codes: list[str], units: UnitTable, *, code: str = "loinc", value: str = "value",
              unit: str = "unit", time: str = "time") -> tuple[list[tuple[str, str, dt.datetime, float]], dict[tuple[str, str], UnitTally]]:
    """Result rows of the listed codes -> (patient, code, time, value in canonical unit), and a tally by (code, source unit).

    A row in a unit the table cannot convert is counted as unconvertible and left out,
    never mixed with the others; rows without a value or time are left out too.
    """
    wanted = set(codes)
    out, tally = [], {}
    for r in rows:
        c = r.get(code)
        if c not in wanted or r.get(value) is None or r.get("patient") is None:
            continue
        t = to_timestamp(r.get(time))
        if t is None:
            continue
        u = r.get(unit)
        entry = tally.setdefault((c, u if u is not None else "(none)"), UnitTally())
        entry.rows += 1
        v = units.convert(c, u, float(r[value]))
        if v is None:
            entry.unconvertible += 1
            continue
        entry.converted += 1
        entry.values.append(v)
        out.append((r["patient"], c, t, v))
    return out, tally


def _slope_per_year(points: list[tuple[dt.datetime, float]]) -> float | None:
    if len(points) < 2:
        return None
    t0 = points[0][0]
    xs = [(t - t0).total_seconds() / 86400 / YEAR_DAYS for t, _ in points]
    ys = [v for _, v in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


def aggregate(points: list[tuple[dt.datetime, float]], which: tuple[str, ...] = AGGREGATES) -> dict[str, float | int | None]:
    """The aggregates of one patient's values of one code in one window (points in any order).

    last: the value at the latest time (at equal times, the larger value); count: 0 when
    there is none, the others are then None; slope: per year, None with fewer than two times.
    """
    pts = sorted(points)
    vals = [v for _, v in pts]
    every = {"last": vals[-1] if vals else None, "min": min(vals) if vals else None, "max": max(vals) if vals else None,
             "mean": sum(vals) / len(vals) if vals else None, "count": len(vals), "slope": _slope_per_year(pts)}
    return {k: every[k] for k in which}


def window_features(values: list[tuple[str, str, dt.datetime, float]], label_times: dict[str, dt.datetime],
                    names: dict[str, str], windows: list[int], which: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """{patient: {column: value}} for each named code, window (days before the label time) and aggregate.

    A value is in a window when label_time - days <= time < label_time (the label result itself is never a feature).
    """
    by: dict[tuple[str, str], list[tuple[dt.datetime, float]]] = {}
    for p, c, t, v in values:
        by.setdefault((p, c), []).append((t, v))
    out: dict[str, dict[str, Any]] = {}
    for p, lt in label_times.items():
        row = out.setdefault(p, {})
        for name, c in names.items():
            pts = by.get((p, c), [])
            for w in windows:
                start = lt - dt.timedelta(days=w)
                agg = aggregate([(t, v) for t, v in pts if start <= t < lt], which)
                for k in which:
                    row[feature_column(name, c, k, w)] = agg[k]
    return out


def feature_column(name: str, code: str, agg: str, window: int) -> str:
    """``hba1c``, ``4548-4``, ``last``, 90 -> ``hba1c_4548_4_last_90d``."""
    return f"{name}_{slug(code)}_{agg}_{window}d"


# ---- demographics, medications, comorbidities ---------------------------------------------------

def _most_common(values: list) -> Any:
    counts = Counter(v for v in values if v not in (None, ""))
    return min(counts, key=lambda v: (-counts[v], str(v))) if counts else None


def demographics(rows: list[dict], *, sex: str = "gender", birth_year: str = "birth_year",
                 institution: str = "_institution") -> dict[str, dict[str, Any]]:
    """{patient: {sex, birth_year_band, n_institutions}} from Patient rows (one per Patient record).

    ``_institution`` is the institution of the row's Patient record (the build adds it from
    the zone's Patient table; a view cannot see it).

    A person has a Patient record at each institution they visited; the value most of them
    give is taken (ties: the first in sort order). birth_year_band is the year as the zone
    releases it (the research zone bands birth years and top-codes the oldest).
    """
    by: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("patient"):
            by.setdefault(r["patient"], []).append(r)
    out = {}
    for p, rs in by.items():
        year = _most_common([str(r[birth_year])[:4] if r.get(birth_year) else None for r in rs])
        out[p] = {"sex": _most_common([r.get(sex) for r in rs]), "birth_year_band": year,
                  "n_institutions": len({r[institution] for r in rs if r.get(institution)})}
    return out


def code_range(pattern: str) -> tuple[str, str] | None:
    """``I10-I15`` -> (``I10``, ``I15``): two ends of one length (>= 2), the first below the second; else None (a prefix)."""
    lo, sep, hi = pattern.partition("-")
    if sep and "-" not in hi and len(lo) == len(hi) >= 2 and lo < hi:
        return lo, hi
    return None


def matches(code: str | None, patterns: list[str]) -> bool:
    """A code in a group: a pattern is a prefix (``N18``) or an inclusive range of prefixes (``I10-I15``)."""
    if not code:
        return False
    for pat in patterns:
        rng = code_range(pat)
        if (rng[0] <= code[:len(rng[0])] <= rng[1]) if rng else code.startswith(pat):
            return True
    return False


def medication_flags(rows: list[dict], label_times: dict[str, dt.datetime], groups: dict[str, list[str]], *,
                     code: str = "code", time: str = "authored", days: str = "supply_days", status: str = "status",
                     default_days: int = 30) -> dict[str, dict[str, bool]]:
    """{patient: {med_<group>: bool}}: a prescription of the group active at the label time.

    Active: authored <= label_time < authored + supply days (default_days when the
    prescription gives none), and a status other than cancelled, entered-in-error or draft.
    """
    out = {p: {f"med_{g}": False for g in groups} for p in label_times}
    for r in rows:
        lt = label_times.get(r.get("patient"))
        t = to_timestamp(r.get(time))
        if lt is None or t is None or r.get(status) in INACTIVE_STATUSES:
            continue
        supply = r.get(days)
        if not t <= lt < t + dt.timedelta(days=float(supply) if supply is not None else default_days):
            continue
        for g, pats in groups.items():
            if matches(r.get(code), pats):
                out[r["patient"]][f"med_{g}"] = True
    return out


def comorbidity_flags(rows: list[dict], label_times: dict[str, dt.datetime], groups: dict[str, list[str]], *,
                      code: str = "code", time: str | None = "recorded") -> dict[str, dict[str, bool]]:
    """{patient: {dx_<group>: bool}}: a Condition of the group recorded at or before the label time.

    With time None every Condition counts, whenever recorded; otherwise one without a time is left out.
    """
    out = {p: {f"dx_{g}": False for g in groups} for p in label_times}
    for r in rows:
        lt = label_times.get(r.get("patient"))
        if lt is None:
            continue
        if time is not None:
            t = to_timestamp(r.get(time))
            if t is None or t > lt:
                continue
        for g, pats in groups.items():
            if matches(r.get(code), pats):
                out[r["patient"]][f"dx_{g}"] = True
    return out


# ---- the table ---------------------------------------------------------------------------------

LABEL_FIELDS = [pa.field("patient", pa.string()), pa.field("label_time", pa.timestamp("us", tz="UTC")),
                pa.field("label_value", pa.float64()), pa.field("label", pa.bool_())]
DEMOGRAPHIC_FIELDS = [pa.field("sex", pa.string()), pa.field("birth_year_band", pa.string()),
                      pa.field("label_institution", pa.string()), pa.field("n_institutions", pa.int32())]


def schema(names: dict[str, str], windows: list[int], which: tuple[str, ...], med_groups: list[str], dx_groups: list[str],
           with_demographics: bool) -> pa.Schema:
    """The per-patient table's columns, in order: label, demographics, results, medications, comorbidities."""
    fields = list(LABEL_FIELDS) + (list(DEMOGRAPHIC_FIELDS) if with_demographics else [])
    for name, c in names.items():
        for w in windows:
            fields += [pa.field(feature_column(name, c, k, w), pa.int32() if k == "count" else pa.float64()) for k in which]
    fields += [pa.field(f"med_{g}", pa.bool_()) for g in med_groups]
    fields += [pa.field(f"dx_{g}", pa.bool_()) for g in dx_groups]
    return pa.schema(fields)


def patient_rows(label_rows: dict[str, dict], parts: list[dict[str, dict[str, Any]]], sch: pa.Schema) -> list[dict]:
    """One row per labelled patient, sorted by patient: the label, then each part's columns (None where absent)."""
    out = []
    for p in sorted(label_rows):
        lab = label_rows[p]
        row = {"patient": p, "label_time": lab["label_time"], "label_value": float(lab["label_value"]), "label": bool(lab["label"]),
               "label_institution": lab.get("label_institution")}
        for part in parts:
            row.update(part.get(p, {}))
        out.append({f.name: row.get(f.name) for f in sch})
    return out


def to_float(v: Any) -> float | None:
    return float(v) if isinstance(v, Decimal | int | float) and not isinstance(v, bool) else v
