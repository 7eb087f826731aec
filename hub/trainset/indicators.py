"""Guideline indicators of the health service community per institution and month.

The thresholds come from a versioned configuration file (indicators/cn-t2dm-2020.yaml, read
by hub.trainset.indicator_config): HbA1c < 7 %, blood pressure < 130/80 mmHg for diabetic and
< 140/90 mmHg for hypertensive patients (systolic AND diastolic), LDL-C < 2.6 mmol/L (< 1.8
with ASCVD), and all three together for diabetic patients.

Rules, per institution and calendar month (the local month of the recorded time):

- managed population: patients with a diagnosis of the indicator's population (ICD-10
  prefix) recorded by the institution no later than the month's end, and at least one visit
  (Encounter) at the institution that month;
- denominator: managed patients with a measurement recorded by the institution that month
  (final, amended or corrected; in the configured UCUM unit); the latest one counts;
  managed patients without one are reported as ``not_measured``;
- numerator: those whose latest measurement is strictly below the threshold (blood pressure:
  both components); "all three": measured for, and at target on, every part.

``compute_rows`` is plain Python over plain rows (the golden tests call it directly);
``compute`` reads those rows from the lakehouse with ViewDefinitions (trainsets/views/);
``hub.trainset.measure_report`` turns the rows into FHIR MeasureReports.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa

from hub.region import REPO_ROOT, Region
from hub.trainset.indicator_config import DEFAULT_CONFIG, Indicator, IndicatorConfig, load_config

VIEWS = REPO_ROOT / "trainsets" / "views"
COUNTED_STATUS = frozenset({"final", "amended", "corrected"})
#: the columns of every output row, in order
COLUMNS = ("config", "config_version", "indicator", "title", "institution", "institution_name", "month",
           "managed", "not_measured", "denominator", "numerator", "share")
_SCHEMA = pa.schema([(c, pa.int64() if c in ("managed", "not_measured", "denominator", "numerator")
                      else pa.float64() if c == "share" else pa.string()) for c in COLUMNS])


def _instant(text: str) -> tuple:
    """An ordering key for a recorded time: the instant when it parses, else the text."""
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        return (1, text)
    return (0, t.timestamp() if t.tzinfo else t.replace(tzinfo=dt.UTC).timestamp(), text)


def _month(text: str | None) -> str | None:
    return text[:7] if isinstance(text, str) and len(text) >= 7 and text[4] == "-" else None


def _below(value: float, comparator: str | None, threshold: float) -> bool | None:
    """Is the value strictly below the threshold? None when a comparator makes it undecidable."""
    if not comparator:
        return value < threshold
    if comparator == "<":
        return True if value <= threshold else None
    if comparator == "<=":
        return True if value < threshold else None
    if comparator in (">", ">="):
        return False if value >= threshold else None
    return None


class _Diagnoses:
    """Per (institution, patient): the ICD-10 codes with the month each was recorded (None: undated)."""

    def __init__(self, conditions: Iterable[dict]):
        self.by: dict[tuple[str, str], list[tuple[str, str | None]]] = {}
        for c in conditions:
            if c.get("patient") and c.get("code"):
                self.by.setdefault((c["institution"], c["patient"]), []).append((c["code"], _month(c.get("recorded"))))

    def has(self, inst: str, patient: str, prefixes: tuple[str, ...], month: str) -> bool:
        return any(code.startswith(prefixes) and (m is None or m <= month) for code, m in self.by.get((inst, patient), ()))


def _latest(rows: Iterable[dict], select) -> dict[tuple[str, str, str], dict]:
    """(institution, month, patient) -> the latest selected row of that month."""
    best: dict[tuple[str, str, str], tuple[tuple, dict]] = {}
    for r in rows:
        month = _month(r.get("time"))
        if not month or not r.get("patient") or not select(r):
            continue
        key = (r["institution"], month, r["patient"])
        order = (_instant(r["time"]), json.dumps(r, sort_keys=True, default=str))
        if key not in best or order > best[key][0]:
            best[key] = (order, r)
    return {k: r for k, (_, r) in best.items()}


def compute_rows(config: IndicatorConfig, *, conditions: Iterable[dict], encounters: Iterable[dict],
                 labs: Iterable[dict] = (), blood_pressure: Iterable[dict] = (),
                 institution_names: dict[str, str] | None = None) -> list[dict]:
    """The indicator rows (COLUMNS) from plain rows, each carrying ``institution`` (an id):

    conditions: patient, code (ICD-10), recorded (dateTime text or None);
    encounters: patient, start (dateTime text);
    labs: patient, loinc, value, unit (UCUM code), comparator, status, time;
    blood_pressure: patient, systolic, diastolic, systolic_unit, diastolic_unit, status, time.
    """
    names = institution_names or {}
    dx = _Diagnoses(conditions)
    visited: dict[tuple[str, str], set[str]] = {}
    for e in encounters:
        month = _month(e.get("start"))
        if month and e.get("patient"):
            visited.setdefault((e["institution"], month), set()).add(e["patient"])
    labs, blood_pressure = list(labs), list(blood_pressure)
    latest: dict[str, dict[tuple[str, str, str], dict]] = {}
    for m in config.measurements.values():
        if m.is_bp:
            latest[m.id] = _latest(blood_pressure, lambda r, m=m: (
                r.get("status") in COUNTED_STATUS and r.get("systolic") is not None and r.get("diastolic") is not None
                and r.get("systolic_unit") == m.unit and r.get("diastolic_unit") == m.unit))
        else:
            latest[m.id] = _latest(labs, lambda r, m=m: (
                r.get("loinc") == m.loinc and r.get("status") in COUNTED_STATUS and r.get("value") is not None
                and r.get("unit") == m.unit))

    def at_target(ind: Indicator, key: tuple[str, str, str]) -> bool | None:
        """True/False for a measured patient; None when not measured (or undecidable)."""
        if ind.all_of:
            verdicts = [at_target(by_id[p], key) for p in ind.all_of]
            return None if None in verdicts else all(verdicts)
        r = latest[ind.measurement].get(key)
        if r is None:
            return None
        if ind.below_bp is not None:
            return float(r["systolic"]) < ind.below_bp[0] and float(r["diastolic"]) < ind.below_bp[1]
        threshold = ind.below
        if ind.below_with_ascvd is not None and dx.has(key[0], key[2], config.ascvd, key[1]):
            threshold = ind.below_with_ascvd
        return _below(float(r["value"]), r.get("comparator"), threshold)

    by_id = {i.id: i for i in config.indicators}
    out = []
    for ind in config.indicators:
        prefixes = config.populations[ind.population].icd10
        for (inst, month), patients in sorted(visited.items()):
            managed = sorted(p for p in patients if dx.has(inst, p, prefixes, month))
            if not managed:
                continue
            verdicts = [at_target(ind, (inst, month, p)) for p in managed]
            den = sum(v is not None for v in verdicts)
            num = sum(v is True for v in verdicts)
            out.append({
                "config": config.config, "config_version": config.version, "indicator": ind.id, "title": ind.title,
                "institution": inst, "institution_name": names.get(inst, inst), "month": month,
                "managed": len(managed), "not_measured": len(managed) - den, "denominator": den, "numerator": num,
                "share": round(num / den, 4) if den else None,
            })
    return out


def to_table(rows: list[dict]) -> pa.Table:
    """The rows as an Arrow table with a fixed schema (also when there are none)."""
    return pa.Table.from_pylist(rows, schema=_SCHEMA)


def read_rows(region: Region, as_of: str | None = None) -> dict[str, list[dict]]:
    """The plain rows compute_rows needs, read from the region's zone with the views in trainsets/views/."""
    from pyiceberg.exceptions import NoSuchTableError

    from hub.lakehouse.tables import open_catalog
    from hub.views.runner import run_over_table

    icat = open_catalog(region.catalog_url, region.warehouse)
    out: dict[str, list[dict]] = {}
    for key, view_name, table_name in (("conditions", "conditions", "condition"), ("encounters", "encounters", "encounter"),
                                       ("labs", "indicator_labs", "observation"), ("blood_pressure", "blood_pressure", "observation")):
        view = json.loads((VIEWS / f"{view_name}.json").read_text(encoding="utf-8"))
        rows: list[dict] = []
        try:
            table = icat.load_table(f"{region.zone}.{table_name}")
        except NoSuchTableError:
            out[key] = rows
            continue
        snap = table.snapshot_by_name(as_of).snapshot_id if as_of else None
        for inst in region.institutions:  # the institution that recorded (published) the row
            for r in run_over_table(table, view, snap, f"institution == '{inst.id}'").to_pylist():
                r["institution"] = inst.id
                rows.append(r)
        out[key] = rows
    return out


def compute(region: Region, as_of: str | None = None, config: IndicatorConfig | Path | str = DEFAULT_CONFIG) -> pa.Table:
    """The indicators over the region's published zone (at a lakehouse tag when as_of is given)."""
    cfg = config if isinstance(config, IndicatorConfig) else load_config(config)
    rows = compute_rows(cfg, **read_rows(region, as_of), institution_names={i.id: i.name for i in region.institutions})
    return to_table(rows)


def publish(region: Region, keys, config: IndicatorConfig | Path | str = DEFAULT_CONFIG) -> int:
    """Replace the indicators.outcomes table through the sink (leak scan, manifest); returns its rows."""
    from pyiceberg.exceptions import NamespaceAlreadyExistsError, NoSuchTableError

    from hub.lakehouse.sink import Publication
    from hub.lakehouse.tables import open_catalog

    data = compute(region, config=config)
    catalog = open_catalog(region.catalog_url, region.warehouse)
    try:
        catalog.create_namespace("indicators")
    except NamespaceAlreadyExistsError:
        pass
    try:
        table = catalog.load_table("indicators.outcomes")
    except NoSuchTableError:
        table = catalog.create_table("indicators.outcomes", schema=data.schema)
    with Publication.open(region, keys, "export") as pub:
        pub.replace_table(table).append(data)
        pub.commit()
        pub.finish({"export": "indicators.outcomes", "rows": data.num_rows})
    return data.num_rows
