"""Outcome indicators of the health service community, computed with ViewDefinitions.

Per institution and month, over the recognition zone: the share of managed diabetic
patients (an E11 diagnosis) whose latest HbA1c that month is at target (< 7 %); the share
of patients whose latest LDL-C that month is at target (< 2.6 mmol/L); and the share of
hypertensive patients (I10) at blood pressure target (< 140/90) where blood pressure is
recorded (LOINC 8480-6 systolic, 8462-4 diastolic; absent from the demo sources, so the
demo reports no denominator rather than a made-up share).
"""

from __future__ import annotations

import json

import pyarrow as pa
from pyiceberg.exceptions import NoSuchTableError

from hub.lakehouse.tables import open_catalog
from hub.region import REPO_ROOT, Region
from hub.views.runner import run_over_table

VIEWS = REPO_ROOT / "trainsets" / "views"


def _latest_per_month(rows: list[dict], loinc: str) -> dict[tuple[str, str, str], float]:
    """(institution, month, patient) -> the latest value of the item that month."""
    best: dict[tuple[str, str, str], tuple[str, float]] = {}
    for r in rows:
        if r["loinc"] != loinc or r["value"] is None or not r["time"]:
            continue
        key = (r["institution"], r["time"][:7], r["patient"])
        if key not in best or r["time"] > best[key][0]:
            best[key] = (r["time"], float(r["value"]))
    return {k: v for k, (_, v) in best.items()}


def compute(region: Region, as_of: str | None = None) -> pa.Table:
    icat = open_catalog(region.catalog_url, region.warehouse)
    zone = region.zone

    def view(name: str, table: str, extra: list[dict] | None = None, row_filter: str = "True") -> list[dict]:
        v = json.loads((VIEWS / f"{name}.json").read_text(encoding="utf-8"))
        v["select"][0]["column"] += extra or []
        t = icat.load_table(f"{zone}.{table}")
        snap = t.snapshot_by_name(as_of).snapshot_id if as_of else None
        return run_over_table(t, v, snap, row_filter).to_pylist()

    try:
        org_names = {r["id"]: r["name"] for r in run_over_table(icat.load_table(f"{zone}.organization"), {
            "resource": "Organization", "select": [{"column": [{"name": "id", "path": "getResourceKey()"}, {"name": "name", "path": "name"}]}]}).to_pylist()}
    except NoSuchTableError:
        org_names = {}
    inst_col = [{"name": "institution", "path": "performer.getReferenceKey(Organization).first()", "type": "string"}]
    labs = []
    for inst in region.institutions:  # the issuer: the performing Organization, else the publishing institution
        for r in view("labs", "observation", inst_col, f"institution == '{inst.id}'"):
            r["institution"] = org_names.get(r["institution"], r["institution"]) if r["institution"] else inst.name
            labs.append(r)
    conditions = view("conditions", "condition")
    diabetic = {r["patient"] for r in conditions if (r["code"] or "").startswith("E11")}
    hypertensive = {r["patient"] for r in conditions if (r["code"] or "").startswith("I10")}
    out = []
    for name, loinc, people, target in (
        ("diabetes: HbA1c < 7%", "4548-4", diabetic, 7.0),
        ("LDL-C < 2.6 mmol/L", "22748-8", None, 2.6),
        ("hypertension: systolic BP < 140 mmHg", "8480-6", hypertensive, 140.0),
    ):
        per: dict[tuple[str, str], list[int]] = {}
        for (inst, month, patient), value in _latest_per_month(labs, loinc).items():
            if people is not None and patient not in people:
                continue
            agg = per.setdefault((inst, month), [0, 0])
            agg[0] += value < target
            agg[1] += 1
        if not per:
            out.append({"institution": None, "month": None, "indicator": name, "numerator": 0, "denominator": 0, "share": None})
        for (inst, month), (num, den) in sorted(per.items()):
            out.append({"institution": inst, "month": month, "indicator": name, "numerator": num, "denominator": den, "share": round(num / den, 4)})
    return pa.Table.from_pylist(out)


def publish(region: Region, keys) -> int:
    """Replace the indicators.outcomes table through the sink (leak scan, manifest); returns its rows."""
    from pyiceberg.exceptions import NamespaceAlreadyExistsError, NoSuchTableError

    from hub.lakehouse.sink import Publication

    data = compute(region)
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
