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
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import sqlalchemy as sa
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.expressions import EqualTo

import hub
from deid.keys import Keyring
from deid.ruleset import load_ruleset
from hub import quarantine, watermarks
from hub.lakehouse.tables import ensure_table, open_catalog, table_name
from hub.lakehouse.writer import TableWriter
from hub.leakscan import load_canaries
from hub.lineage import catalog as runcat
from hub.lineage import manifests
from hub.mapping.compile import RowProblem
from hub.mapping.run import block_select
from hub.mapping.spec import Block, Mapping, load_mapping
from hub.prepare import PreparePool, Ready, Rejected, default_workers
from hub.progress import NoProgress, Progress
from hub.region import Feed, Institution, Region
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
    manifest: tuple[int, str] | None = None  # (sequence number, hash) of the signed manifest
    deleted: dict[str, int] = field(default_factory=dict)  # rows removed because the source deleted them

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
            "manifest": {"seq": self.manifest[0], "hash": self.manifest[1]} if self.manifest else None,
            "deleted_at_source": self.deleted,
        }


def new_run_id(institution: str) -> str:
    return f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}-{institution}-{secrets.token_hex(3)}"


@dataclass
class BlockResult:
    count: BlockCount
    last_watermark: object
    seen_source_keys: set[str]


@dataclass
class BlockWork:
    """One mapping block of one feed, bound to its source."""

    feed: Feed
    mapping: Mapping
    index: int
    block: Block
    engine: sa.Engine
    schema: SourceSchema

    @property
    def block_id(self) -> str:
        b = self.block
        return f"{b.resource}:{b.table}:{b.namespace}"


def feed_blocks(inst: Institution) -> list[BlockWork]:
    """Every mapping block of every feed of an institution; patients and visits first."""
    out = []
    for feed in inst.feeds:
        mapping = load_mapping(feed.mapping)
        engine = sa.create_engine(feed.url)
        schema = SourceSchema(engine)
        out.extend(BlockWork(feed, mapping, i, b, engine, schema) for i, b in enumerate(mapping.blocks))
    out.sort(key=lambda w: RESOURCE_ORDER.index(w.block.resource) if w.block.resource in RESOURCE_ORDER else len(RESOURCE_ORDER))
    return out


class InstitutionRun:
    """State of one run for one institution: writers, patient index, counts, quarantine.

    ``publish(work, batches)`` is the single place where prepared rows become published or
    quarantined rows; the main job and quarantine replay both go through it.
    """

    def __init__(self, region: Region, institution_id: str, keys: Keyring, *, progress: Progress | None = None,
                 flush_rows: int = 50_000, workers: int = 1):
        self.region, self.keys = region, keys
        self.inst = region.institution(institution_id)
        self.progress = progress or NoProgress()
        self.flush_rows = flush_rows
        self.ruleset = load_ruleset(region.ruleset, region.zone)
        self.engine = runcat.connect(region.catalog_url)
        self.icat = open_catalog(region.catalog_url, region.warehouse)
        self.run_id = new_run_id(self.inst.id)
        self.report = RunReport(self.run_id, self.inst.id, keys.key_id, self.ruleset.label, warehouse=str(region.warehouse))
        self.writers: dict[str, TableWriter] = {}
        self.canaries = load_canaries(region.workspace)
        self.patients = _load_patient_index(self.icat, region.zone, self.inst.id)
        self.pool = PreparePool(self.inst.id, keys, self.ruleset, workers)
        runcat.start_run(self.engine, self.run_id, self.inst.id, keys.key_id, self.ruleset.label, hub.__version__)

    def writer(self, resource_type: str) -> TableWriter:
        if resource_type not in self.writers:
            table = ensure_table(self.icat, self.region.zone, resource_type)
            self.writers[resource_type] = TableWriter(table, self.inst.id, self.run_id, self.canaries, self.keys.key_id)
        return self.writers[resource_type]

    def publish(self, work: BlockWork, batches: Iterable[list[tuple]]) -> BlockResult:
        """Prepare, then stage for publication or quarantine every row of batches.

        Nothing is visible until commit(). Returns the block's counts, the last watermark
        value read and the source-key hashes seen (for deletion detection on full pulls).
        """
        block, mapping = work.block, work.mapping
        compiled = self.pool.local.compiled(str(mapping.path), work.index)
        count = BlockCount(work.feed.name, mapping.label, block.table, block.resource)
        self.report.counts.append(count)
        subject_el = next((e for e in block.elements if e.path == "subject"), None)
        w = self.writer(block.resource)
        before_w, before_u = w.written, w.unchanged
        wm_index = compiled.columns.index(compiled.qualify(block.watermark.column)) if block.watermark else None
        last_wm = None
        seen: set[str] = set()
        reopened = quarantine.has_open(self.engine, self.inst.id, block.table, block.resource)
        for batch in self.pool.map(str(mapping.path), work.index, batches):
            self.report.uncovered.update(batch.uncovered)
            self.report.dropped_by_rule.update(batch.dropped_by_rule)
            rejected: list[quarantine.QuarantinedRow] = []
            published_hashes: list[str] = []
            now = dt.datetime.now(dt.UTC)
            for row, item in zip(batch.rows, batch.items, strict=True):
                count.rows_read += 1
                seen.add(item.source_key_hash)
                if isinstance(item, Ready):
                    if block.resource == "Patient":
                        self.patients[item.id] = item.pseudonym
                        pseudonym = item.pseudonym
                    else:
                        pseudonym = self.patients.get(item.patient_ref) if item.patient_ref else None
                        if item.patient_ref and pseudonym is None:
                            item = Rejected([_missing_patient(mapping.path.name, block.resource, subject_el)], False, compiled.row_label(row), item.source_key_hash)
                if isinstance(item, Rejected):
                    count.quarantined += 1
                    count.failed_validation += item.failed_validation
                    for p in item.problems:
                        self.report.causes[f"{p.element}: {p.problem}"] += 1
                    rejected.append(quarantine.QuarantinedRow(
                        feed=work.feed.name, mapping=mapping.label, source_table=block.table,
                        resource_type=block.resource, source_key_hash=item.source_key_hash,
                        cause=f"{item.problems[0].element}: {item.problems[0].problem}",
                        reason=" | ".join(p.reason(item.label) for p in item.problems),
                        row=dict(zip(compiled.columns, row, strict=True)),
                    ))
                    continue
                w.add({
                    "id": item.id, "institution": self.inst.id, "resource_type": block.resource,
                    "patient": pseudonym, "code": item.code, "effective_time": item.effective_time,
                    "resource": item.text, "content_hash": item.hash,
                    "source_system": mapping.system, "source_table": block.table,
                    "source_key_hash": item.source_key_hash, "run_id": self.run_id, "mapping_version": mapping.label,
                    "ruleset_version": self.ruleset.label, "key_id": self.keys.key_id, "published_at": now,
                    "source_updated_at": item.source_updated_at,
                })
                count.published += 1
                published_hashes.append(item.source_key_hash)
            quarantine.store(self.engine, self.keys, self.run_id, self.inst.id, rejected)
            if reopened and published_hashes:
                quarantine.resolve_published(self.engine, self.inst.id, block.table, block.resource, published_hashes, self.run_id)
            if wm_index is not None:  # rows come in watermark order; NULLs sort first or last by database
                last_wm = next((r[wm_index] for r in reversed(batch.rows) if r[wm_index] is not None), last_wm)
            self.progress.advance(len(batch.rows))
            if w.pending >= self.flush_rows:
                w.flush()
        before_s = w.stale
        w.flush()
        count.written, count.unchanged = w.written - before_w, w.unchanged - before_u + (w.stale - before_s)
        if count.rows_read != count.published + count.quarantined:
            raise AssertionError(f"{block.table}: rows read {count.rows_read} != published {count.published} + quarantined {count.quarantined}")
        return BlockResult(count, last_wm, seen)

    def commit(self) -> None:
        """Commit every table's staged changes (one atomic commit per table for the run)."""
        for w in self.writers.values():
            w.commit()

    def finish(self, status: str) -> RunReport:
        self.pool.close()
        for rtype, w in self.writers.items():
            if w.snapshot_ids:
                self.report.snapshots[rtype] = w.snapshot_ids[-1]
        counts = [_count_row(self.inst.id, c) for c in self.report.counts]
        if status == "succeeded" and self.report.snapshots:
            tables = {".".join(w.table.name()): w.table for w in self.writers.values() if w.snapshot_ids}
            summary = {"institution": self.inst.id, "ruleset": self.ruleset.label, "code_version": hub.__version__, "counts": counts}
            self.report.manifest = manifests.append(self.engine, self.keys, self.run_id, tables, summary)
        runcat.finish_run(self.engine, self.run_id, status, counts, self.report.as_dict())
        return self.report


def run_institution(
    region: Region,
    institution_id: str,
    keys: Keyring,
    *,
    progress: Progress | None = None,
    batch_size: int = 5000,
    flush_rows: int = 50_000,
    workers: int | None = None,
    full: bool = False,
) -> RunReport:
    """Pull every feed of one institution and publish it to the region's zone.

    Blocks with a watermark pull only rows past it unless full is true. workers: processes
    for the per-row work; None means one per core when there are at least
    PARALLEL_FROM_ROWS rows to read, else in-process.
    """
    catalog_engine = runcat.connect(region.catalog_url)
    inst = region.institution(institution_id)
    plans = []
    for work in feed_blocks(inst):
        since = None if full else watermarks.get(catalog_engine, inst.id, work.feed.name, work.block_id)
        with work.engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(work.schema.table(work.block.table))).scalar_one()
        plans.append((work, since, total))
    if workers is None:
        workers = default_workers() if sum(p[2] for p in plans) >= PARALLEL_FROM_ROWS else 1
    run = InstitutionRun(region, institution_id, keys, progress=progress, flush_rows=flush_rows, workers=workers)
    status = "failed"
    try:
        advances, deletions = [], []
        for work, since, total in plans:
            run.progress.start(f"{inst.id} {work.feed.name} {work.block.table} → {work.block.resource}", total)
            compiled = run.pool.local.compiled(str(work.mapping.path), work.index)
            select = block_select(compiled, work.schema, since, incremental=not full)
            result = run.publish(work, iter_batches(work.engine, select, batch_size))
            if work.block.watermark is not None and result.last_watermark is not None:
                advances.append((work, result.last_watermark))
            if full:  # a complete pull: what is no longer at the source was deleted there
                gone = run.writer(work.block.resource).stage_deletions(work.block.table, result.seen_source_keys)
                deletions.extend((work, rid, skh) for rid, skh in gone)
        run.commit()
        record_deletions(run.engine, run.run_id, inst.id, deletions)
        for work, value in advances:  # only after the commit: a crash before here re-reads, never skips
            watermarks.advance(run.engine, inst.id, work.feed.name, work.block_id, work.block.watermark.kind, value, run.run_id)
        run.report.deleted = dict(Counter(w.block.resource for w, _, _ in deletions))
        status = "succeeded"
    finally:
        report = run.finish(status)
    return report


deletions = sa.Table(
    "hub_deletions", runcat.metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(80), nullable=False, index=True),
    sa.Column("institution", sa.String(64), nullable=False),
    sa.Column("resource_type", sa.String(64), nullable=False),
    sa.Column("resource_id", sa.String(64), nullable=False, index=True),
    sa.Column("source_table", sa.String(128), nullable=False),
    sa.Column("source_key_hash", sa.String(64), nullable=False),
    sa.Column("detected_at", sa.DateTime(timezone=True), nullable=False),
)


def record_deletions(engine: sa.Engine, run_id: str, institution: str, gone: list) -> None:
    """Record rows deleted at the source (found missing by a full pull) and removed from the lakehouse."""
    if gone:
        now = dt.datetime.now(dt.UTC)
        with engine.begin() as conn:
            conn.execute(deletions.insert(), [{
                "run_id": run_id, "institution": institution, "resource_type": w.block.resource, "resource_id": rid,
                "source_table": w.block.table, "source_key_hash": skh, "detected_at": now,
            } for w, rid, skh in gone])


def _count_row(institution: str, c: BlockCount) -> dict:
    """A BlockCount as a hub_run_counts row (the columns the table has)."""
    return {"institution": institution, **{k: v for k, v in asdict(c).items() if k in runcat.run_counts.c}}


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


def repseudonymize(region: Region, institution_id: str, keys: Keyring, **kwargs) -> tuple[RunReport, int]:
    """Re-publish an institution under the current key, then remove its rows made with other keys.

    Returns the run report and the number of old rows removed. Earlier snapshots and tags
    (research releases) stay readable through time travel.
    """
    from pyiceberg.expressions import And, NotEqualTo

    report = run_institution(region, institution_id, keys, full=True, **kwargs)
    icat = open_catalog(region.catalog_url, region.warehouse)
    removed = 0
    for name in icat.list_tables(region.zone):
        table = icat.load_table(name)
        stale = And(EqualTo("institution", institution_id), NotEqualTo("key_id", keys.key_id))
        n = table.scan(row_filter=stale, selected_fields=("id",)).to_arrow().num_rows
        if n:
            table.delete(stale, snapshot_properties={"hub.run-id": report.run_id, "hub.rekey": keys.key_id})
            removed += n
    return report, removed
