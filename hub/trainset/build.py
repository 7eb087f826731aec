"""Training sets: a YAML spec -> per-split Parquet files and a datasheet, pinned to a lakehouse tag.

The spec names ViewDefinitions (each outputs a ``patient`` column), a cohort (a diagnosis
code prefix and a minimum number of results), a label (the last result of a view below a
threshold), the features and split fractions. Two shapes: ``long`` (the default: one row
per result in a window before the label time, one file per feature view) and
``per_patient`` (the ``matrix`` section: one row per patient with results aggregated per
window and pivoted by code in canonical units, demographics, medication and comorbidity
flags; the pure steps are in ``hub.trainset.features``). Times are typed Arrow timestamps
(UTC) in both. Every read is pinned to the tag's snapshot, rows are sorted, and Parquet is
written without write times, so the same spec on the same tag gives byte-identical files.
Rows are grouped by person (a Patient id at each institution resolves to one linkage
pseudonym), and a person is assigned to a split by a keyed hash of that pseudonym: never
in two splits.
Every file goes through the sink (``hub.lakehouse.sink``): leak-scanned first, renamed into
place only when all are clean, and listed with its SHA-256 in one signed manifest.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import sqlalchemy as sa

from deid.keys import Keyring
from hub.errors import NotFound
from hub.lakehouse.sink import Publication
from hub.lakehouse.tables import open_catalog
from hub.lineage import access, runrecord
from hub.region import Region
from hub.trainset import datasheet as ds
from hub.trainset.features import (
    AGGREGATES,
    LABEL_FIELDS,
    UnitTable,
    code_range,
    comorbidity_flags,
    demographics,
    load_units,
    medication_flags,
    normalise,
    patient_rows,
    schema,
    to_timestamp,
    window_features,
)
from hub.views.runner import ViewRunner, code_columns, run_over_table
from hub.yamlio import ConfigError, LineDict, load_yaml

SPLITS = ("train", "validation", "test")
SHAPES = ("long", "per_patient")


@dataclass
class Matrix:
    """The ``matrix`` section of a per-patient spec, checked."""

    results: dict
    names: dict[str, str]  # feature name -> code
    windows: list[int]
    aggregates: tuple[str, ...]
    units: UnitTable
    demographics: dict | None
    medications: dict | None
    comorbidities: dict | None


@dataclass
class Spec:
    name: str
    zone: str
    tag: str
    views: dict[str, dict]
    cohort: dict
    label: dict
    features: dict
    split: dict[str, float]
    path: Path
    digest: str
    shape: str = "long"
    matrix: Matrix | None = None


def load_spec(path: Path) -> Spec:
    """Load and check a training-set spec; errors name the file, line and field."""
    path = Path(path)
    doc = load_yaml(path)
    f = str(path)
    if not isinstance(doc, LineDict):
        raise ConfigError(f, 1, "(file)", "is not a training-set spec", "keys name, tag, views, cohort, label, features or matrix, split")
    shape = str(doc.get("shape", "long"))
    if shape not in SHAPES:
        raise ConfigError(f, doc.line_of("shape"), "shape", f"{shape!r} is not a shape", "long (one row per result) or per_patient")
    for key in ("name", "tag", "views", "cohort", "label", "features" if shape == "long" else "matrix"):
        if key not in doc:
            raise ConfigError(f, 1, key, "is missing", "see trainsets/t2dm-hba1c.yaml and trainsets/t2dm-hba1c-patient.yaml")
    digest = hashlib.sha256(path.read_bytes())
    views = {}
    for name, rel in doc["views"].items():
        vp = (path.parent / rel).resolve()
        if not vp.exists():
            raise ConfigError(f, doc["views"].line_of(name), f"views.{name}", f"{rel} not found", "a ViewDefinition JSON file relative to the spec")
        views[name] = json.loads(vp.read_text(encoding="utf-8"))
        if "patient" not in ViewRunner(views[name]).columns:  # constructing the runner validates the view
            raise ConfigError(f, doc["views"].line_of(name), f"views.{name}", "has no patient column", "a column named patient")
        digest.update(vp.read_bytes())
    split = doc.get("split") or {"train": 0.7, "validation": 0.15, "test": 0.15}
    if set(split) - set(SPLITS) or abs(sum(split.values()) - 1) > 1e-9:
        raise ConfigError(f, doc.line_of("split"), "split", f"{dict(split)}", "fractions for train, validation, test that sum to 1")
    for part, key in (("cohort", "condition"), ("cohort", "results"), ("label", "view")):
        node = doc[part][key]
        view = node["view"] if isinstance(node, dict) else node
        if view not in views:
            raise ConfigError(f, doc[part].line_of(key), f"{part}.{key}", f"view {view!r} is not declared", f"one of {', '.join(views)}")
    if "features" in doc:
        for view in doc["features"].get("views", []):
            if view not in views:
                raise ConfigError(f, doc["features"].line_of("views"), "features.views", f"view {view!r} is not declared", f"one of {', '.join(views)}")
    matrix = None
    if shape == "per_patient":
        matrix = _load_matrix(f, path, doc["matrix"], views)
        digest.update(Path(matrix.units.path).read_bytes())
    return Spec(str(doc["name"]), str(doc.get("zone", "research")), str(doc["tag"]), views, dict(doc["cohort"]),
                dict(doc["label"]), dict(doc.get("features") or {}), {k: float(v) for k, v in split.items()}, path, digest.hexdigest(),
                shape, matrix)


def _section(f: str, doc: LineDict, key: str, views: dict[str, dict], columns: dict[str, str], required: tuple[str, ...] = ()) -> dict:
    """A matrix section naming a view and its columns ({option: default column}); checks the view has them."""
    node = doc[key]
    where = f"matrix.{key}"
    if not isinstance(node, LineDict):
        raise ConfigError(f, doc.line_of(key), where, "is not a mapping", "view and column names")
    if node.get("view") not in views:
        raise ConfigError(f, node.line_of("view"), f"{where}.view", f"view {node.get('view')!r} is not declared", f"one of {', '.join(views)}")
    have = ViewRunner(views[node["view"]]).columns
    out = dict(node)
    for option, default in columns.items():
        col = node.get(option, default)
        if col is not None and col not in have:
            raise ConfigError(f, node.line_of(option), f"{where}.{option}", f"column {col!r} is not in view {node['view']}", f"one of {', '.join(have)}")
        out[option] = col
    for option in required:
        if option not in node:
            raise ConfigError(f, node.line, f"{where}.{option}", "is missing", "see trainsets/t2dm-hba1c-patient.yaml")
    return out


def _groups(f: str, node: LineDict, where: str) -> dict[str, list[str]]:
    groups = node.get("groups")
    if not isinstance(groups, LineDict) or not groups:
        raise ConfigError(f, node.line_of("groups"), f"{where}.groups", "is missing or empty", "name: [code prefix or range like I10-I15, ...]")
    out = {}
    for name, pats in groups.items():
        pats = [pats] if isinstance(pats, str) else pats
        if not re.fullmatch(r"[a-z][a-z0-9_]*", str(name)) or not isinstance(pats, list) or not pats or not all(isinstance(p, str) and p for p in pats):
            raise ConfigError(f, groups.line_of(name), f"{where}.groups.{name}", f"{pats!r}", "a lower-case name and a list of code prefixes or ranges")
        for p in pats:
            lo, sep, hi = p.partition("-")
            if sep and len(lo) == len(hi) >= 2 and "-" not in hi and code_range(p) is None:
                raise ConfigError(f, groups.line_of(name), f"{where}.groups.{name}", f"range {p!r} runs backwards", "a range low-high, e.g. I10-I15")
        out[str(name)] = [str(p) for p in pats]
    return out


def _load_matrix(f: str, path: Path, doc: Any, views: dict[str, dict]) -> Matrix:
    if not isinstance(doc, LineDict) or "results" not in doc:
        raise ConfigError(f, getattr(doc, "line", 1), "matrix.results", "is missing", "matrix: {results: ..., units: units/conversions.yaml, ...}")
    res = _section(f, doc, "results", views, {"code": "loinc", "value": "value", "unit": "unit", "time": "time"}, ("codes",))
    node = doc["results"]
    names = node["codes"]
    if not isinstance(names, LineDict) or not names:
        raise ConfigError(f, node.line_of("codes"), "matrix.results.codes", "is not a mapping", "feature name: code, e.g. hba1c: 4548-4")
    for name in names:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", str(name)):
            raise ConfigError(f, names.line_of(name), f"matrix.results.codes.{name}", "is not a column-name part", "lower-case letters, digits, _")
    windows = node.get("windows", [365])
    if not isinstance(windows, list) or not windows or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in windows) \
            or len(set(windows)) != len(windows):
        raise ConfigError(f, node.line_of("windows"), "matrix.results.windows", f"{windows!r}", "distinct positive whole numbers of days, e.g. [90, 365]")
    aggs = node.get("aggregates", list(AGGREGATES))
    if not isinstance(aggs, list) or not aggs or any(a not in AGGREGATES for a in aggs) or len(set(aggs)) != len(aggs):
        raise ConfigError(f, node.line_of("aggregates"), "matrix.results.aggregates", f"{aggs!r}", f"some of {', '.join(AGGREGATES)}")
    if "units" not in doc:
        raise ConfigError(f, doc.line, "matrix.units", "is missing", "a unit conversion table, e.g. units: units/conversions.yaml")
    up = (path.parent / str(doc["units"])).resolve()
    if not up.exists():
        raise ConfigError(f, doc.line_of("units"), "matrix.units", f"{doc['units']} not found", "a YAML file relative to the spec")
    units = load_units(up)
    for name, code in names.items():
        if str(code) not in units.canonical:
            raise ConfigError(f, names.line_of(name), f"matrix.results.codes.{name}", f"code {code} has no canonical unit in {up.name}",
                              f"a rule with code {code} in {up}")
    demo = med = dx = None
    if "demographics" in doc:
        demo = _section(f, doc, "demographics", views, {"sex": "gender", "birth_year": "birth_year"})
    if "medications" in doc:
        med = _section(f, doc, "medications", views, {"code": "code", "time": "authored", "days": "supply_days", "status": "status"})
        med["groups"] = _groups(f, doc["medications"], "matrix.medications")
        d = med.get("default_days", 30)
        if isinstance(d, bool) or not isinstance(d, int) or d <= 0:
            raise ConfigError(f, doc["medications"].line_of("default_days"), "matrix.medications.default_days", f"{d!r}", "a positive number of days")
        med["default_days"] = d
    if "comorbidities" in doc:
        dx = _section(f, doc, "comorbidities", views, {"code": "code", "time": "recorded"})
        dx["groups"] = _groups(f, doc["comorbidities"], "matrix.comorbidities")
    unknown = set(doc) - {"results", "units", "demographics", "medications", "comorbidities"}
    if unknown:
        k = sorted(unknown)[0]
        raise ConfigError(f, doc.line_of(k), f"matrix.{k}", "is not a matrix section", "results, units, demographics, medications, comorbidities")
    return Matrix(res, {str(k): str(v) for k, v in names.items()}, list(windows), tuple(aggs), units, demo, med, dx)


# ---- pure steps over view rows ----------------------------------------------------------




def cohort(spec: Spec, rows: dict[str, list[dict]]) -> set[str]:
    cond = spec.cohort["condition"]
    with_dx = {r["patient"] for r in rows[cond["view"]] if r["patient"] and str(r.get(cond.get("column", "code")) or "").startswith(cond["prefix"])}
    res = spec.cohort["results"]
    counts: dict[str, int] = {}
    for r in rows[res["view"]]:
        if r["patient"]:
            counts[r["patient"]] = counts.get(r["patient"], 0) + 1
    return {p for p in with_dx if counts.get(p, 0) >= int(res.get("min_count", 1))}


def labels(spec: Spec, rows: dict[str, list[dict]], people: set[str]) -> dict[str, dict]:
    lab = spec.label
    last: dict[str, dict] = {}
    for r in rows[lab["view"]]:
        p, t = r["patient"], to_timestamp(r.get(lab["time"]))
        if p in people and t is not None and r.get(lab["value"]) is not None and (p not in last or t > last[p]["label_time"]):
            last[p] = {"patient": p, "label_time": t, "label_value": float(r[lab["value"]]), "label": float(r[lab["value"]]) < float(lab["below"]),
                       "label_institution": r.get("_institution")}
    return last


def features(spec: Spec, rows: dict[str, list[dict]], label_rows: dict[str, dict]) -> dict[str, list[dict]]:
    window = dt.timedelta(days=int(spec.features.get("window_days", 365)))
    col = spec.features.get("time", "time")
    out = {}
    for view in spec.features["views"]:
        kept = []
        for r in rows[view]:
            lab = label_rows.get(r["patient"])
            t = to_timestamp(r.get(col))
            if lab is not None and t is not None and lab["label_time"] - window <= t < lab["label_time"]:
                kept.append(r)
        out[view] = kept
    return out


def assign_split(keys: Keyring, patient: str, fractions: dict[str, float]) -> str:
    u = int.from_bytes(hmac.new(keys.key("trainset-split"), patient.encode(), hashlib.sha256).digest()[:8], "big") / 2**64
    edge = 0.0
    for name in SPLITS:
        edge += fractions.get(name, 0.0)
        if u < edge:
            return name
    return SPLITS[-1]


# ---- the build ---------------------------------------------------------------------------

_ARROW_TYPES = {"decimal": pa.float64(), "integer": pa.int64(), "positiveInt": pa.int64(), "unsignedInt": pa.int64(),
                "integer64": pa.int64(), "boolean": pa.bool_(), "dateTime": pa.timestamp("us", tz="UTC"),
                "instant": pa.timestamp("us", tz="UTC"), "date": pa.timestamp("us", tz="UTC")}


def view_schema(view: dict) -> pa.Schema:
    """The Arrow schema of a view's rows by its column types: dates and times as UTC timestamps, numbers typed, the rest text."""
    fields: dict[str, pa.DataType] = {}

    def walk(selects: list) -> None:
        for sel in selects or []:
            for col in sel.get("column", []):
                t = _ARROW_TYPES.get(col.get("type", ""), pa.string())
                fields.setdefault(col["name"], pa.list_(t) if col.get("collection") else t)
            walk(sel.get("select", []))
            walk(sel.get("unionAll", []))

    walk(view.get("select", []))
    return pa.schema([pa.field(n, t) for n, t in fields.items()])


def typed_rows(rows: list[dict], sch: pa.Schema) -> list[dict]:
    """View rows with the schema's columns only, timestamps parsed and decimals as floats, sorted (a stable order)."""
    stamps = {f.name for f in sch if pa.types.is_timestamp(f.type)}
    out = []
    for r in rows:
        out.append({f.name: (to_timestamp(r.get(f.name)) if f.name in stamps else
                             float(r[f.name]) if isinstance(r.get(f.name), Decimal) else r.get(f.name)) for f in sch})
    return sorted(out, key=lambda r: json.dumps(r, sort_keys=True, default=str))


def _write(pub: Publication, rows: list[dict], sch: pa.Schema, path: Path, codes: dict[str, str] | None = None) -> str:
    """Deterministic Parquet through the sink: typed rows in a fixed order, fixed writer settings; returns the file's SHA-256."""
    table = pa.Table.from_pylist(rows, schema=sch)
    return pub.write_parquet(table, path, code_columns=codes, compression="zstd", write_statistics=True).sha256


def per_patient(spec: Spec, rows: dict[str, list[dict]], label_rows: dict[str, dict]) -> tuple[pa.Schema, list[dict], dict]:
    """The per-patient table (schema, rows sorted by patient) and what the datasheet says of its results."""
    m = spec.matrix
    assert m is not None
    label_times = {p: r["label_time"] for p, r in label_rows.items()}
    res = m.results
    widest = dt.timedelta(days=max(m.windows))
    in_window = []
    for r in rows[res["view"]]:
        lt, t = label_times.get(r["patient"]), to_timestamp(r.get(res["time"]))
        if lt is not None and t is not None and lt - widest <= t < lt:
            in_window.append(r)
    values, tally = normalise(in_window, list(m.names.values()), m.units, code=res["code"], value=res["value"], unit=res["unit"], time=res["time"])
    parts = [window_features(values, label_times, m.names, m.windows, m.aggregates)]
    if m.demographics:
        d = m.demographics
        parts.insert(0, demographics(rows[d["view"]], sex=d["sex"], birth_year=d["birth_year"]))
    if m.medications:
        md = m.medications
        parts.append(medication_flags(rows[md["view"]], label_times, md["groups"], code=md["code"], time=md["time"], days=md["days"],
                                      status=md["status"], default_days=md["default_days"]))
    if m.comorbidities:
        dx = m.comorbidities
        parts.append(comorbidity_flags(rows[dx["view"]], label_times, dx["groups"], code=dx["code"], time=dx["time"]))
    sch = schema(m.names, m.windows, m.aggregates, list((m.medications or {}).get("groups", {})),
                 list((m.comorbidities or {}).get("groups", {})), m.demographics is not None)
    name_of = {c: n for n, c in m.names.items()}
    results = [{"name": name_of[code], "code": code, "unit": unit, "canonical_unit": m.units.canonical[code], "rows": t.rows,
                "converted": t.converted, "unconvertible": t.unconvertible, **ds.numbers(t.values)}
               for (code, unit), t in sorted(tally.items())]
    return sch, patient_rows(label_rows, parts, sch), {"results_by_code_and_unit": results, "windows_days": m.windows,
                                                         "aggregates": list(m.aggregates), "slope_unit": "per year (365.25 days)"}


def build(region: Region, keys: Keyring, spec_path: Path, out: Path, purpose: str = "training set") -> dict:
    """Build the training set into out/; returns the datasheet (also written as JSON and Markdown)."""
    spec = load_spec(spec_path)
    icat = open_catalog(region.catalog_url, region.warehouse)
    rows: dict[str, list[dict]] = {}
    snapshots: dict[str, int] = {}
    lineage: dict[str, set] = {"mapping_version": set(), "ruleset_version": set(), "key_id": set()}
    for name, view in spec.views.items():
        table_name = f"{spec.zone}.{view['resource'].lower()}"
        table = icat.load_table(table_name)
        ref = table.snapshot_by_name(spec.tag)
        if ref is None:
            raise NotFound(f"{table_name} has no tag {spec.tag!r}: make a research release or `hub lakehouse tag` it first")
        snapshots[table_name] = ref.snapshot_id
        rows[name] = run_over_table(table, view, ref.snapshot_id).to_pylist()
        lin = table.scan(snapshot_id=ref.snapshot_id, selected_fields=tuple(lineage)).to_arrow()
        for col in lineage:
            lineage[col].update(lin.column(col).to_pylist())
    # a view's `patient` is a Patient resource id, one per institution; a person seen at two
    # institutions has two. Resolve ids to the person (the zone's linkage pseudonym) so cohort,
    # labels, features and splits are per person, and a person is never in two splits. The
    # institution of the Patient record is kept with the row (`_institution`, never written).
    patients = icat.load_table(f"{spec.zone}.patient")
    pref = patients.snapshot_by_name(spec.tag)
    if pref is None:
        raise NotFound(f"{spec.zone}.patient has no tag {spec.tag!r}")
    snapshots[f"{spec.zone}.patient"] = pref.snapshot_id
    pt = patients.scan(snapshot_id=pref.snapshot_id, selected_fields=("id", "patient", "institution")).to_arrow()
    person = dict(zip(pt["id"].to_pylist(), pt["patient"].to_pylist(), strict=True))
    institution = dict(zip(pt["id"].to_pylist(), pt["institution"].to_pylist(), strict=True))
    for view_rows in rows.values():
        for r in view_rows:
            r["_institution"] = institution.get(r["patient"])
            r["patient"] = person.get(r["patient"], r["patient"])
    people = cohort(spec, rows)
    label_rows = labels(spec, rows, people)
    feature_rows = features(spec, rows, label_rows) if spec.features.get("views") else {}
    matrix = per_patient(spec, rows, label_rows) if spec.shape == "per_patient" else None
    split_of = {p: assign_split(keys, p, spec.split) for p in label_rows}
    engine = runrecord.connect(region.catalog_url)
    risk = None
    if spec.zone == "research":
        from hub.research import releases

        with engine.connect() as conn:
            risk = conn.execute(sa.select(releases.c.risk_report).where(releases.c.name == spec.tag, releases.c.status == "published")).scalar()
    label_schema = pa.schema(LABEL_FIELDS)
    schemas = {view: view_schema(spec.views[view]) for view in feature_rows}
    # every file goes through the sink: scanned before it is written, renamed into place only
    # when all are clean, and listed (SHA-256, rows) in one signed manifest
    with Publication.open(region, keys, "trainset", engine=engine) as pub:
        files, counts = {}, {}
        for split in SPLITS:
            members = {p for p, s in split_of.items() if s == split}
            lab = [{f.name: label_rows[p].get(f.name) for f in label_schema} for p in sorted(members)]
            files[f"{split}/labels.parquet"] = _write(pub, lab, label_schema, out / split / "labels.parquet")
            counts[split] = ds.class_balance(lab)
            if matrix is not None:
                mine = [r for r in matrix[1] if r["patient"] in members]
                files[f"{split}/patients.parquet"] = _write(pub, mine, matrix[0], out / split / "patients.parquet")
            for view, vrows in feature_rows.items():
                mine = typed_rows([r for r in vrows if r["patient"] in members], schemas[view])
                files[f"{split}/{view}.parquet"] = _write(pub, mine, schemas[view], out / split / f"{view}.parquet", code_columns(spec.views[view]))
                counts[split][f"{view}_rows"] = len(mine)
        sheet = {
            "name": spec.name, "shape": spec.shape, "spec_sha256": spec.digest, "zone": spec.zone, "tag": spec.tag, "snapshots": snapshots,
            "cohort_patients": len(people), "labelled_patients": len(label_rows), "splits": counts,
            "class_balance": ds.class_balance([label_rows[p] for p in label_rows]),
            "features": {view: ds.long_summary(vrows, spec.views[view], spec.features) for view, vrows in feature_rows.items()},
            "label": {"view": spec.label["view"], "rule": f"last {spec.label['value']} < {spec.label['below']}",
                      "definition": ds.label_words(spec.label), "time": "label_time: the time of that result, a UTC timestamp"},
            "split_rule": "keyed hash of the patient pseudonym (trainset-split key); a patient is in exactly one split",
            "risk_report": json.loads(risk) if risk else None,
            "lineage": {k: sorted(v) for k, v in lineage.items()},
            "files_sha256": files,
            "reproducibility": "the same spec on the same tag gives byte-identical Parquet files (compare files_sha256)",
        }
        if matrix is not None:
            sheet["matrix"] = {**matrix[2], "columns": ds.column_summaries(matrix[1], matrix[0])}
        pub.write_text(json.dumps(sheet, indent=2, ensure_ascii=False, sort_keys=True) + "\n", out / "datasheet.json")
        pub.write_text(ds.markdown(sheet), out / "datasheet.md")
        pub.commit()
        manifest = pub.finish({"trainset": spec.name, "spec_sha256": spec.digest, "zone": spec.zone, "tag": spec.tag,
                               "snapshots": snapshots, "out": str(Path(out).resolve())})
    access.record(engine, "trainset-build", purpose, {"trainset": spec.name, "tag": spec.tag, "snapshots": snapshots,
                  "zone": spec.zone, "out": str(Path(out).resolve()), "patients": len(label_rows), "rows": {s: c for s, c in counts.items()},
                  "manifest": manifest[0] if manifest else None})
    return sheet
