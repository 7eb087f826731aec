"""Tracing a published row: back to its source and run, forward to the releases that contain it.

The chain, as plain data: the row's zone, table and lineage columns; its run (times,
status, counts for its source table); its mapping (is the file today the one that made the
row?) and ruleset; the signed manifest that recorded the data file holding it (and whether
that file still verifies); and the research releases whose tagged snapshot holds its
research twin. Given a candidate source key, the keyed source-key hash can be checked
without the hub ever storing source keys.
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.expressions import EqualTo

from deid.actions import pseudonym
from deid.keys import Keyring
from hub.errors import NotFound
from hub.fhir.ids import source_key_hash
from hub.lakehouse.tables import open_catalog
from hub.lineage import access, runrecord
from hub.lineage.manifests import file_sha256, local_path, manifests
from hub.mapping.spec import load_mapping
from hub.region import Region


def trace(region: Region, keys: Keyring, reference: str, source_key: list[str] | None = None) -> dict:
    """The lineage chain of ``Type/id`` (recognition or research zone)."""
    rtype, _, rid = reference.partition("/")
    icat = open_catalog(region.catalog_url, region.warehouse)
    engine = runrecord.connect(region.catalog_url)
    for zone in (region.zone, "research"):
        try:
            table = icat.load_table(f"{zone}.{rtype.lower()}")
        except NoSuchTableError:
            continue
        rows = table.scan(row_filter=EqualTo("id", rid)).to_arrow().to_pylist()
        if rows:
            break
    else:
        raise NotFound(f"{reference} is not published in {region.zone} or research")
    row = rows[0]
    out: dict = {
        "resource": reference, "zone": zone, "table": f"{zone}.{rtype.lower()}",
        "row": {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items() if k != "resource"},
    }
    with engine.connect() as conn:
        run = conn.execute(sa.select(runrecord.runs).where(runrecord.runs.c.run_id == row["run_id"])).first()
        counts = conn.execute(sa.select(runrecord.run_counts).where(
            runrecord.run_counts.c.run_id == row["run_id"], runrecord.run_counts.c.source_table == row["source_table"],
            runrecord.run_counts.c.resource_type == rtype)).first()
        recorded = list(conn.execute(sa.select(manifests).where(manifests.c.run_id == row["run_id"])))
    if run is not None:
        out["run"] = {"run_id": run.run_id, "started_at": run.started_at.isoformat(), "finished_at": run.finished_at.isoformat() if run.finished_at else None,
                      "status": run.status, "code_version": run.code_version, "ruleset": run.ruleset, "key_id": run.key_id}
    if counts is not None:
        out["counts"] = {"feed": counts.feed, "rows_read": counts.rows_read, "published": counts.published, "quarantined": counts.quarantined}
        out["mapping"] = _mapping_state(region, row["institution"], counts.feed, row["mapping_version"])
    files = {t.file.file_path for t in table.scan(row_filter=EqualTo("id", rid)).plan_files()}
    for m in recorded:
        body = json.loads(m.body)
        for f in body["tables"].get(out["table"], {}).get("files", []):
            if f["path"] in files:
                now = file_sha256(local_path(f["path"])) if local_path(f["path"]).exists() else None
                out["manifest"] = {"seq": m.seq, "hash": m.hash, "signed_with_key": m.key_id, "data_file": f["path"],
                                   "data_file_intact": now == f["sha256"]}
    file_feeds = {f.kind for i in region.institutions if i.id == row["institution"] for f in i.feeds} & {"ndjson", "hl7v2"}
    if zone == region.zone and file_feeds:
        from hub.sources.ndjson import line_of

        # NDJSON: file and line; HL7 v2: file and message number (its "line"); keyed line hash, run
        found = line_of(engine, row["institution"], rid)
        if found is not None or str(row["source_system"]).startswith("ndjson:"):
            out["source_line"] = found
    if source_key is not None and zone == region.zone:
        system = row["source_system"]
        out["source_key_matches"] = source_key_hash(keys, row["institution"], system, row["source_table"], source_key) == row["source_key_hash"]
    if zone == region.zone:
        out["research_releases"] = _releases_containing(icat, engine, rtype, pseudonym(keys, "research-id", rid))
        if row.get("patient"):
            out["training_sets"] = _trainsets_containing(engine, out["research_releases"], pseudonym(keys, "research-linkage", row["patient"]))
    access.record(engine, "lineage-trace", "audit: trace a published row", {"table": out["table"], "resource": reference, "rows": 1})
    return out


def _mapping_state(region: Region, institution: str, feed: str, label: str) -> dict:
    try:
        f = next(f for f in region.institution(institution).feeds if f.name == feed)
    except (KeyError, StopIteration):
        return {"recorded": label, "current": None, "file": None, "unchanged": False}
    if f.mapping is None:  # a file feed (NDJSON): resources arrive made, there is no mapping
        return {"recorded": label, "current": None, "file": None, "unchanged": None}
    current = load_mapping(f.mapping).label
    return {"recorded": label, "current": current, "file": str(f.mapping), "unchanged": current == label}


def _trainsets_containing(engine, releases: list[str], research_patient: str) -> list[dict]:
    """Training sets built on those releases whose labels include the row's patient (by its research pseudonym)."""
    from pathlib import Path

    import pyarrow.parquet as pq

    found = []
    for e in access.entries(engine, action="trainset-build"):
        what = e["what"]
        if what.get("tag") not in releases or what.get("zone") != "research" or not what.get("out"):
            continue
        for split in ("train", "validation", "test"):
            labels = Path(what["out"]) / split / "labels.parquet"
            if labels.exists() and research_patient in set(pq.read_table(labels, columns=["patient"])["patient"].to_pylist()):
                found.append({"trainset": what["trainset"], "tag": what["tag"], "split": split, "out": what["out"]})
    return found


def _releases_containing(icat, engine, rtype: str, research_id: str) -> list[str]:
    from hub.research import releases

    with engine.connect() as conn:
        names = [r.name for r in conn.execute(sa.select(releases.c.name).where(releases.c.status == "published").order_by(releases.c.created_at))]
    try:
        table = icat.load_table(f"research.{rtype.lower()}")
    except NoSuchTableError:
        return []
    found = []
    for name in names:
        ref = table.snapshot_by_name(name)
        if ref is not None and table.scan(snapshot_id=ref.snapshot_id, row_filter=EqualTo("id", research_id)).to_arrow().num_rows:
            found.append(name)
    return found
