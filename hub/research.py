"""Research releases: the research zone, built from the recognition zone behind a risk gate.

A release reads every recognition-zone table, applies the ruleset's research actions (ids
and pseudonyms re-keyed with research keys, dates shifted per patient, birth dates to year
with top-coding, identifiers and free text dropped), measures k-anonymity over the
quasi-identifiers of the people in it, and then either publishes all research tables
(one atomic overwrite per table, tagged with the release name) or refuses and writes
nothing. The risk report is stored with the release either way.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from dataclasses import dataclass

import pyarrow as pa
import sqlalchemy as sa
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.expressions import AlwaysTrue

from deid.actions import pseudonym
from deid.engine import Deidentifier
from deid.keys import Keyring
from deid.risk import RiskGateFailed, RiskReport, band_year, enforce_k
from deid.ruleset import load_ruleset
from hub.fhir.jsonio import content_hash, dumps, loads
from hub.fhir.validate import RESOURCE_MODULES
from hub.lakehouse.tables import (
    ARROW_SCHEMA,
    effective_time,
    ensure_table,
    open_catalog,
    primary_code,
    table_name,
)
from hub.lineage import access, manifests
from hub.lineage.catalog import connect as connect_catalog
from hub.lineage.catalog import metadata
from hub.region import Region

QUASI_IDENTIFIERS = ["birth_year", "gender"]
CST = dt.timezone(dt.timedelta(hours=8))

releases = sa.Table(
    "hub_releases", metadata,
    sa.Column("release_id", sa.String(80), primary_key=True),
    sa.Column("name", sa.String(120), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # published | refused
    sa.Column("k", sa.Integer, nullable=False),
    sa.Column("ruleset", sa.String(128), nullable=False),
    sa.Column("key_id", sa.String(32), nullable=False),
    sa.Column("risk_report", sa.Text, nullable=False),
    sa.Column("snapshots", sa.Text),
)


@dataclass
class Release:
    release_id: str
    name: str
    status: str
    report: RiskReport
    rows: dict[str, int]
    snapshots: dict[str, int]


def build_release(region: Region, keys: Keyring, *, name: str | None = None, k: int = 5, max_suppression: float = 0.05,
                  purpose: str = "research release") -> Release:
    """Build, gate and (if it passes) publish a research release from the recognition zone.

    The read of the recognition zone is written to the access log with its purpose.
    """
    release_id = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}-research-{secrets.token_hex(3)}"
    name = name or release_id
    ruleset = load_ruleset(region.ruleset, "research")
    deid = Deidentifier(ruleset, keys)
    icat = open_catalog(region.catalog_url, region.warehouse)
    engine = connect_catalog(region.catalog_url)

    def source_rows(rtype: str):
        try:
            table = icat.load_table(table_name(region.zone, rtype))
        except NoSuchTableError:
            return
        for batch in table.scan(selected_fields=("resource", "patient", "institution", "source_system", "source_table", "source_key_hash", "mapping_version")).to_arrow_batch_reader():
            yield from batch.to_pylist()

    # pass 1: the people in the release and their quasi-identifiers
    people: dict[str, tuple] = {}
    research_of: dict[str, str] = {}  # recognition pseudonym -> research pseudonym
    for row in source_rows("Patient"):
        out = deid.apply(loads(row["resource"]), patient=row["patient"])
        person = pseudonym(keys, "research-linkage", row["patient"])  # as in the identifier, also for MRN-only people
        research_of[row["patient"]] = person
        people.setdefault(person, (out.get("birthDate"), out.get("gender")))  # first record of a person wins
    try:
        band, suppressed, report = enforce_k(people, k, QUASI_IDENTIFIERS, max_suppression)
    except RiskGateFailed as exc:
        _record(engine, release_id, name, "refused", k, ruleset.label, keys.key_id, exc.report, {})
        access.record(engine, "research-release", purpose, {"release": name, "read": "recognition.patient", "people": len(people)}, "refused")
        return Release(release_id, name, "refused", exc.report, {}, {})

    # pass 2: every table, atomically replaced and tagged
    now = dt.datetime.now(dt.UTC)
    rows_written: dict[str, int] = {}
    snapshots: dict[str, int] = {}
    for rtype in RESOURCE_MODULES:
        target = ensure_table(icat, "research", rtype)
        count = 0
        with target.transaction() as tx:
            if target.current_snapshot() is not None:
                tx.delete(AlwaysTrue(), snapshot_properties={"hub.run-id": release_id})
            chunk: list[dict] = []
            for row in source_rows(rtype):
                if row["patient"] is not None and research_of.get(row["patient"]) in suppressed:
                    continue
                out = deid.apply(loads(row["resource"]), patient=row["patient"])
                if rtype == "Patient" and "birthDate" in out:
                    out["birthDate"] = band_year(out["birthDate"], band)
                text = dumps(out)
                chunk.append({
                    "id": out["id"], "institution": row["institution"], "resource_type": rtype,
                    "patient": pseudonym(keys, "research-linkage", row["patient"]) if row["patient"] else None,
                    "code": primary_code(out), "effective_time": effective_time(out, CST), "resource": text,
                    "content_hash": content_hash(text), "source_system": row["source_system"], "source_table": row["source_table"],
                    "source_key_hash": pseudonym(keys, "research-id", row["source_key_hash"]), "run_id": release_id,
                    "mapping_version": row["mapping_version"], "ruleset_version": ruleset.label, "key_id": keys.key_id,
                    "published_at": now,
                })
                if len(chunk) >= 50_000:
                    tx.append(pa.Table.from_pylist(chunk, schema=ARROW_SCHEMA), snapshot_properties={"hub.run-id": release_id})
                    count += len(chunk)
                    chunk = []
            if chunk:
                tx.append(pa.Table.from_pylist(chunk, schema=ARROW_SCHEMA), snapshot_properties={"hub.run-id": release_id})
                count += len(chunk)
        snap = target.current_snapshot()
        if snap is not None:
            target.manage_snapshots().create_tag(snap.snapshot_id, name).commit()
            snapshots[rtype] = snap.snapshot_id
        rows_written[rtype] = count
    tables = {f"research.{t.lower()}": icat.load_table(f"research.{t.lower()}") for t in snapshots}
    manifests.append(engine, keys, release_id, tables, {"release": name, "k": k, "ruleset": ruleset.label, "rows": rows_written})
    _record(engine, release_id, name, "published", k, ruleset.label, keys.key_id, report, snapshots)
    access.record(engine, "research-release", purpose, {"release": name, "read": f"{region.zone}.*", "rows": rows_written, "snapshots": snapshots})
    return Release(release_id, name, "published", report, rows_written, snapshots)


def _record(engine, release_id, name, status, k, ruleset, key_id, report: RiskReport, snapshots: dict) -> None:
    with engine.begin() as conn:
        conn.execute(releases.insert().values(
            release_id=release_id, name=name, created_at=dt.datetime.now(dt.UTC), status=status, k=k,
            ruleset=ruleset, key_id=key_id, risk_report=json.dumps(report.as_dict(), ensure_ascii=False),
            snapshots=json.dumps(snapshots),
        ))
