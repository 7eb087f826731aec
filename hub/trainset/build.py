"""Training sets: a YAML spec -> per-split Parquet files and a datasheet, pinned to a lakehouse tag.

The spec names ViewDefinitions (each outputs a ``patient`` column), a cohort (a diagnosis
code prefix and a minimum number of results), a label (the last result of a view below a
threshold), feature windows (rows before the label time) and split fractions. Every read
is pinned to the tag's snapshot, rows are sorted, and Parquet is written without
timestamps, so the same spec on the same tag gives byte-identical files. Rows are grouped
by person (a Patient id at each institution resolves to one linkage pseudonym), and a
person is assigned to a split by a keyed hash of that pseudonym: never in two splits.
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
from hub.views.runner import ViewRunner, run_over_table
from hub.yamlio import ConfigError, LineDict, load_yaml

SPLITS = ("train", "validation", "test")


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


def load_spec(path: Path) -> Spec:
    path = Path(path)
    doc = load_yaml(path)
    f = str(path)
    if not isinstance(doc, LineDict):
        raise ConfigError(f, 1, "(file)", "is not a training-set spec", "keys name, tag, views, cohort, label, features, split")
    for key in ("name", "tag", "views", "cohort", "label", "features"):
        if key not in doc:
            raise ConfigError(f, 1, key, "is missing", "see trainsets/t2dm-hba1c.yaml")
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
    return Spec(str(doc["name"]), str(doc.get("zone", "research")), str(doc["tag"]), views, dict(doc["cohort"]),
                dict(doc["label"]), dict(doc["features"]), {k: float(v) for k, v in split.items()}, path, digest.hexdigest())


# ---- pure steps over view rows ----------------------------------------------------------

def _time(v: Any) -> dt.datetime | None:
    if not v:
        return None
    t = dt.datetime.fromisoformat(str(v))
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


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
        p, t = r["patient"], _time(r.get(lab["time"]))
        if p in people and t is not None and r.get(lab["value"]) is not None and (p not in last or t > last[p]["label_time"]):
            last[p] = {"patient": p, "label_time": t, "label_value": float(r[lab["value"]]), "label": float(r[lab["value"]]) < float(lab["below"])}
    return last


def features(spec: Spec, rows: dict[str, list[dict]], label_rows: dict[str, dict]) -> dict[str, list[dict]]:
    window = dt.timedelta(days=int(spec.features.get("window_days", 365)))
    col = spec.features.get("time", "time")
    out = {}
    for view in spec.features["views"]:
        kept = []
        for r in rows[view]:
            lab = label_rows.get(r["patient"])
            t = _time(r.get(col))
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

_CODE_PATH_RE = re.compile(r"coding\.where\(\s*system\s*=\s*'([^']+)'\s*\)\.code\b")


def code_columns(view: dict) -> dict[str, str]:
    """{column: code system} for the view's columns that select a Coding's code under one system.

    The leak scan applies that system's exemptions (e.g. NDC) to those columns only.
    """
    out: dict[str, str] = {}

    def walk(selects: list) -> None:
        for sel in selects or []:
            for col in sel.get("column", []):
                m = _CODE_PATH_RE.search(col.get("path", ""))
                if m:
                    out[col["name"]] = m.group(1)
            walk(sel.get("select", []))
            walk(sel.get("unionAll", []))

    walk(view.get("select", []))
    return out


def _write(pub: Publication, table_rows: list[dict], path: Path, codes: dict[str, str] | None = None) -> str:
    """Deterministic Parquet through the sink: rows sorted, fixed writer settings; returns the file's SHA-256."""
    rows = sorted(table_rows, key=lambda r: json.dumps(r, sort_keys=True, default=str))
    rows = [{k: (float(v) if isinstance(v, Decimal) else v) for k, v in r.items()} for r in rows]
    table = pa.Table.from_pylist(rows) if rows else pa.table({"patient": pa.array([], pa.string())})
    return pub.write_parquet(table, path, code_columns=codes, compression="zstd", write_statistics=True).sha256


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
    # labels, features and splits are per person, and a person is never in two splits.
    patients = icat.load_table(f"{spec.zone}.patient")
    pref = patients.snapshot_by_name(spec.tag)
    if pref is None:
        raise NotFound(f"{spec.zone}.patient has no tag {spec.tag!r}")
    snapshots[f"{spec.zone}.patient"] = pref.snapshot_id
    pt = patients.scan(snapshot_id=pref.snapshot_id, selected_fields=("id", "patient")).to_arrow()
    person = dict(zip(pt["id"].to_pylist(), pt["patient"].to_pylist(), strict=True))
    for view_rows in rows.values():
        for r in view_rows:
            r["patient"] = person.get(r["patient"], r["patient"])
    people = cohort(spec, rows)
    label_rows = labels(spec, rows, people)
    feature_rows = features(spec, rows, label_rows)
    split_of = {p: assign_split(keys, p, spec.split) for p in label_rows}
    engine = runrecord.connect(region.catalog_url)
    risk = None
    if spec.zone == "research":
        from hub.research import releases

        with engine.connect() as conn:
            risk = conn.execute(sa.select(releases.c.risk_report).where(releases.c.name == spec.tag, releases.c.status == "published")).scalar()
    # every file goes through the sink: scanned before it is written, renamed into place only
    # when all are clean, and listed (SHA-256, rows) in one signed manifest
    with Publication.open(region, keys, "trainset", engine=engine) as pub:
        files, counts = {}, {}
        for split in SPLITS:
            members = {p for p, s in split_of.items() if s == split}
            lab = [{**label_rows[p], "label_time": label_rows[p]["label_time"].isoformat()} for p in members]
            files[f"{split}/labels.parquet"] = _write(pub, lab, out / split / "labels.parquet")
            counts[split] = {"patients": len(members), "labels_true": sum(r["label"] for r in lab)}
            for view, vrows in feature_rows.items():
                mine = [r for r in vrows if r["patient"] in members]
                files[f"{split}/{view}.parquet"] = _write(pub, mine, out / split / f"{view}.parquet", code_columns(spec.views[view]))
                counts[split][f"{view}_rows"] = len(mine)
        summaries = {}
        for view, vrows in feature_rows.items():
            numeric = [float(r["value"]) for r in vrows if r.get("value") is not None]
            summaries[view] = {"rows": len(vrows), "patients": len({r["patient"] for r in vrows}),
                               "value_mean": round(sum(numeric) / len(numeric), 4) if numeric else None,
                               "by_code": dict(sorted(_count(vrows, "loinc").items()))}
        sheet = {
            "name": spec.name, "spec_sha256": spec.digest, "zone": spec.zone, "tag": spec.tag, "snapshots": snapshots,
            "cohort_patients": len(people), "labelled_patients": len(label_rows), "splits": counts, "features": summaries,
            "label": {"view": spec.label["view"], "rule": f"last {spec.label['value']} < {spec.label['below']}"},
            "split_rule": "keyed hash of the patient pseudonym (trainset-split key); a patient is in exactly one split",
            "risk_report": json.loads(risk) if risk else None,
            "lineage": {k: sorted(v) for k, v in lineage.items()},
            "files_sha256": files,
            "reproducibility": "the same spec on the same tag gives byte-identical Parquet files (compare files_sha256)",
        }
        pub.write_text(json.dumps(sheet, indent=2, ensure_ascii=False, sort_keys=True) + "\n", out / "datasheet.json")
        pub.write_text(_markdown(sheet), out / "datasheet.md")
        pub.commit()
        manifest = pub.finish({"trainset": spec.name, "spec_sha256": spec.digest, "zone": spec.zone, "tag": spec.tag,
                               "snapshots": snapshots, "out": str(Path(out).resolve())})
    access.record(engine, "trainset-build", purpose, {"trainset": spec.name, "tag": spec.tag, "snapshots": snapshots,
                  "zone": spec.zone, "out": str(Path(out).resolve()), "patients": len(label_rows), "rows": {s: c for s, c in counts.items()},
                  "manifest": manifest[0] if manifest else None})
    return sheet


def _count(rows: list[dict], col: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        if r.get(col):
            out[r[col]] = out.get(r[col], 0) + 1
    return out


def _markdown(s: dict) -> str:
    lines = [f"# Datasheet: {s['name']}", "", f"- zone `{s['zone']}`, pinned to tag `{s['tag']}`",
             f"- spec SHA-256 `{s['spec_sha256']}`", f"- cohort: {s['cohort_patients']} patients, {s['labelled_patients']} labelled",
             f"- label: {s['label']['rule']} (view `{s['label']['view']}`)", f"- split: {s['split_rule']}", "",
             "| split | patients | label true | " + " | ".join(k for k in next(iter(s["splits"].values())) if k.endswith("_rows")) + " |",
             "|---|---|---|" + "---|" * sum(1 for k in next(iter(s["splits"].values())) if k.endswith("_rows"))]
    for name, c in s["splits"].items():
        lines.append(f"| {name} | {c['patients']} | {c['labels_true']} | " + " | ".join(str(v) for k, v in c.items() if k.endswith("_rows")) + " |")
    lines += ["", "## Snapshots", ""] + [f"- `{t}` @ {sid}" for t, sid in s["snapshots"].items()]
    lines += ["", "## Lineage", ""] + [f"- {k}: {', '.join(v)}" for k, v in s["lineage"].items()]
    if s["risk_report"]:
        r = s["risk_report"]
        lines += ["", "## Risk report of the release", "", f"- k = {r['k_required']} over {', '.join(r['quasi_identifiers'])}: {r['reason']}"]
    lines += ["", "## Files", ""] + [f"- `{f}` sha256 `{h}`" for f, h in s["files_sha256"].items()]
    return "\n".join(lines) + "\n"
