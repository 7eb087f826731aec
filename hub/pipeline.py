"""The main job for one institution: extract -> map -> validate -> de-identify -> publish.

Runs every mapping block of every feed of the institution, batch by batch. Each source
row ends up either published (upserted into the zone's Iceberg table) or quarantined
(encrypted, with a reason in clear); the counts are recorded per run and checked:
rows read = published + quarantined.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections import Counter
from dataclasses import dataclass, field

import sqlalchemy as sa
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.expressions import EqualTo

import hub
from deid.keys import Keyring
from deid.ruleset import load_ruleset
from hub import quarantine
from hub.lakehouse.tables import ensure_table, open_catalog, table_name
from hub.lakehouse.writer import TableWriter
from hub.lineage import catalog as runcat
from hub.mapping.compile import RowProblem
from hub.mapping.run import block_select
from hub.mapping.spec import load_mapping
from hub.prepare import PreparePool, Ready, Rejected, default_workers
from hub.progress import NoProgress, Progress
from hub.region import Region
from hub.sources.sql import SourceSchema, iter_batches

#: Below this many source rows a run stays in one process (a pool costs more than it saves).
PARALLEL_FROM_ROWS = 50_000
#: Blocks run in this order so referenced patients and visits are known before their results.
RESOURCE_ORDER = ("Organization", "Patient", "Encounter")


@dataclass
class BlockCount:
    feed: str
    mapping: str
    source_table: str
    resource_type: str
    rows_read: int = 0
    published: int = 0
    quarantined: int = 0
    failed_validation: int = 0
    written: int = 0
    unchanged: int = 0


@dataclass
class RunReport:
    """What one run did for one institution; safe to print and to attach as metadata."""

    run_id: str
    institution: str
    key_id: str
    ruleset: str
    counts: list[BlockCount] = field(default_factory=list)
    causes: Counter = field(default_factory=Counter)
    uncovered: Counter = field(default_factory=Counter)
    dropped_by_rule: Counter = field(default_factory=Counter)
    snapshots: dict[str, int] = field(default_factory=dict)
    warehouse: str = ""

    def by_resource(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for c in self.counts:
            agg = out.setdefault(c.resource_type, {"read": 0, "published": 0, "quarantined": 0, "failed_validation": 0, "written": 0, "unchanged": 0})
            agg["read"] += c.rows_read
            agg["published"] += c.published
            agg["quarantined"] += c.quarantined
            agg["failed_validation"] += c.failed_validation
            agg["written"] += c.written
            agg["unchanged"] += c.unchanged
        return out

    def as_dict(self) -> dict:
        return {
            "run_id": self.run_id, "institution": self.institution, "key_id": self.key_id,
            "ruleset": self.ruleset, "by_resource": self.by_resource(),
            "counts": [c.__dict__ for c in self.counts],
            "quarantine_causes": dict(self.causes.most_common()),
            "uncovered_elements_dropped": dict(self.uncovered.most_common()),
            "elements_dropped_by_rule": dict(self.dropped_by_rule.most_common()),
            "snapshots": self.snapshots, "warehouse": self.warehouse,
        }


def new_run_id(institution: str) -> str:
    return f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}-{institution}-{secrets.token_hex(3)}"


def run_institution(
    region: Region,
    institution_id: str,
    keys: Keyring,
    *,
    progress: Progress | None = None,
    batch_size: int = 5000,
    flush_rows: int = 50_000,
    workers: int | None = None,
) -> RunReport:
    """Pull every feed of one institution and publish it to the region's zone.

    workers: processes for the per-row work; None means one per core when the institution
    has at least PARALLEL_FROM_ROWS source rows, else in-process.
    """
    progress = progress or NoProgress()
    inst = region.institution(institution_id)
    ruleset = load_ruleset(region.ruleset, region.zone)
    engine = runcat.connect(region.catalog_url)
    icat = open_catalog(region.catalog_url, region.warehouse)
    run_id = new_run_id(inst.id)
    report = RunReport(run_id, inst.id, keys.key_id, ruleset.label, warehouse=str(region.warehouse))
    runcat.start_run(engine, run_id, inst.id, keys.key_id, ruleset.label, hub.__version__)

    writers: dict[str, TableWriter] = {}

    def writer(resource_type: str) -> TableWriter:
        if resource_type not in writers:
            table = ensure_table(icat, region.zone, resource_type)
            writers[resource_type] = TableWriter(table, inst.id, run_id, flush_rows)
        return writers[resource_type]

    patients = _load_patient_index(icat, region.zone, inst.id)
    work = []
    for feed in inst.feeds:
        mapping = load_mapping(feed.mapping)
        src_engine = sa.create_engine(feed.url)
        schema = SourceSchema(src_engine)
        for index, block in enumerate(mapping.blocks):
            with src_engine.connect() as conn:
                total = conn.execute(sa.select(sa.func.count()).select_from(schema.table(block.table))).scalar_one()
            work.append((feed, mapping, index, block, src_engine, schema, total))
    work.sort(key=lambda w: RESOURCE_ORDER.index(w[3].resource) if w[3].resource in RESOURCE_ORDER else len(RESOURCE_ORDER))
    if workers is None:
        workers = default_workers() if sum(w[-1] for w in work) >= PARALLEL_FROM_ROWS else 1

    status = "failed"
    pool = PreparePool(inst.id, keys, ruleset, workers)
    try:
        for feed, mapping, index, block, src_engine, schema, total in work:
            compiled = pool.local.compiled(str(mapping.path), index)
            count = BlockCount(feed.name, mapping.label, block.table, block.resource)
            report.counts.append(count)
            progress.start(f"{inst.id} {feed.name} {block.table} → {block.resource}", total)
            subject_el = next((e for e in block.elements if e.path == "subject"), None)
            w = writer(block.resource)
            source = iter_batches(src_engine, block_select(compiled, schema), batch_size)
            for batch in pool.map(str(mapping.path), index, source):
                report.uncovered.update(batch.uncovered)
                report.dropped_by_rule.update(batch.dropped_by_rule)
                rejected: list[quarantine.QuarantinedRow] = []
                now = dt.datetime.now(dt.UTC)
                for row, item in zip(batch.rows, batch.items, strict=True):
                    count.rows_read += 1
                    if isinstance(item, Ready):
                        if block.resource == "Patient":
                            patients[item.id] = item.pseudonym
                            pseudonym = item.pseudonym
                        else:
                            pseudonym = patients.get(item.patient_ref) if item.patient_ref else None
                            if item.patient_ref and pseudonym is None:
                                item = Rejected([_missing_patient(mapping.path.name, block.resource, subject_el)], False, compiled.row_label(row), item.source_key_hash)
                    if isinstance(item, Rejected):
                        count.quarantined += 1
                        count.failed_validation += item.failed_validation
                        for p in item.problems:
                            report.causes[f"{p.element}: {p.problem}"] += 1
                        rejected.append(quarantine.QuarantinedRow(
                            feed=feed.name, mapping=mapping.label, source_table=block.table,
                            resource_type=block.resource, source_key_hash=item.source_key_hash,
                            cause=f"{item.problems[0].element}: {item.problems[0].problem}",
                            reason=" | ".join(p.reason(item.label) for p in item.problems),
                            row=dict(zip(compiled.columns, row, strict=True)),
                        ))
                        continue
                    w.add({
                        "id": item.id, "institution": inst.id, "resource_type": block.resource,
                        "patient": pseudonym, "code": item.code, "effective_time": item.effective_time,
                        "resource": item.text, "content_hash": item.hash,
                        "source_system": mapping.system, "source_table": block.table,
                        "source_key_hash": item.source_key_hash, "run_id": run_id, "mapping_version": mapping.label,
                        "ruleset_version": ruleset.label, "key_id": keys.key_id, "published_at": now,
                    })
                    count.published += 1
                quarantine.store(engine, keys, run_id, inst.id, rejected)
                progress.advance(len(batch.rows))
            before_w, before_u = w.written, w.unchanged
            w.flush()
            count.written, count.unchanged = w.written - before_w, w.unchanged - before_u
            if count.rows_read != count.published + count.quarantined:
                raise AssertionError(f"{block.table}: rows read {count.rows_read} != published {count.published} + quarantined {count.quarantined}")
        for rtype, w in writers.items():
            w.flush()
            if w.snapshot_ids:
                report.snapshots[rtype] = w.snapshot_ids[-1]
        status = "succeeded"
    finally:
        pool.close()
        runcat.finish_run(engine, run_id, status, [_count_row(inst.id, c) for c in report.counts], report.as_dict())
    return report


def _count_row(institution: str, c: BlockCount) -> dict:
    return {
        "institution": institution, "feed": c.feed, "mapping": c.mapping, "source_table": c.source_table,
        "resource_type": c.resource_type, "rows_read": c.rows_read, "published": c.published,
        "quarantined": c.quarantined, "written": c.written, "unchanged": c.unchanged,
    }


def _missing_patient(file: str, resource_type: str, subject_el) -> RowProblem:
    cols = ", ".join(subject_el.options.get("key", [])) if subject_el else None
    line = subject_el.line if subject_el else 0
    return RowProblem(
        f"{file}:{line}", f"{resource_type}.subject", cols,
        "refers to a patient this institution has not published (unknown or quarantined patient)",
        "the key of a patient present in the institution's patient table", None,
    )


def _load_patient_index(icat, zone: str, institution: str) -> dict[str, str | None]:
    """Patient resource id -> linkage pseudonym for patients already published."""
    try:
        table = icat.load_table(table_name(zone, "Patient"))
    except NoSuchTableError:
        return {}
    data = table.scan(row_filter=EqualTo("institution", institution), selected_fields=("id", "patient")).to_arrow()
    return dict(zip(data.column("id").to_pylist(), data.column("patient").to_pylist(), strict=True))
