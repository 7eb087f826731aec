"""The main job for one institution: extract -> map -> validate -> de-identify -> publish.

Runs every mapping block of every feed of the institution, batch by batch. Each source
row ends up either published (upserted into the zone's Iceberg table) or quarantined
(encrypted, with a reason in clear); the counts are recorded per run and checked:
rows read = published + quarantined.

A windowed run (``window=(start, end)``, one day of a backfill) pulls only the blocks with a
time column (a ``timestamp`` watermark), each for the rows whose time is in [start, end),
after a regular run of just the institution's REFERENCED blocks (its patients). It
holds the lock ``<institution>@<start day>``, so days of one institution run at once (two
runs of one day never do); it leaves watermarks, file feeds, deletion detection and orphan
removal to the institution's regular run, and lists what it did not pull in the report
(``outside_window``). Its writers share the institution's partition with the other days:
each commit is checked, under the institution's regular run lock, against rows other runs
published meanwhile (``TableWriter.check_shared``), so no id is ever appended twice.
"""

from __future__ import annotations

import datetime as dt
import functools
import gc
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import sqlalchemy as sa
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.expressions import EqualTo

import hub
from deid.keys import Keyring
from deid.ruleset import load_ruleset
from hub import quarantine, watermarks
from hub.errors import CommandFailed
from hub.fhir.validate import RESOURCE_MODULES
from hub.lakehouse.rowindex import KeySet
from hub.lakehouse.sink import Publication
from hub.lakehouse.tables import ensure_table, open_catalog, table_name
from hub.lakehouse.writer import TableWriter
from hub.lineage import runrecord
from hub.lineage.schema import deletions, run_locks
from hub.mapping.compile import RowProblem, before_birth
from hub.mapping.run import block_select, has_time_column
from hub.mapping.spec import Block, Mapping, load_mapping
from hub.prepare import (
    Mark,
    PreparedBatch,
    PreparePool,
    Ready,
    Rejected,
    Task,
    default_workers,
    identity_conflict,
)
from hub.progress import NoProgress, Progress
from hub.region import Feed, Institution, Region
from hub.runreport import BlockCount, RunReport
from hub.sources.screen import RowScreen, storable, tolerant_engine
from hub.sources.sql import SourceSchema, block_source, iter_batches

#: Below this many source rows a run stays in one process (a pool costs more than it saves).
PARALLEL_FROM_ROWS = 50_000
#: Blocks run in this order so referenced patients and visits are known before their results.
RESOURCE_ORDER = ("Organization", "Patient", "Encounter")
#: Rows a table writer buffers before it stages them as a data file: the pipeline's memory ceiling is set by
#: this (a flush holds its rows as dicts, then as Arrow, while they are scanned and written). 20,000 lab
#: results peak at ~630 MiB in the parent where 50,000 peaked at ~880, at the same speed (docs/performance.md).
FLUSH_ROWS = 20_000
#: Under the workspace: each table writer's index of published rows, kept between runs (hub.lakehouse.rowindex):
#: ~0.5 KB per published row; removing it costs the next run one read of each partition.
ROW_INDEX_DIR = "rowindex"
#: A windowed run waits this long for the institution's regular run lock before it commits.
WINDOW_COMMIT_WAIT = 3600.0
#: What other resources refer to: a windowed run first brings these up to date with a regular run
#: restricted to them (incremental: after the first day, it finds little or nothing new).
REFERENCED = frozenset({"Organization", "Patient"})


def new_run_id(institution: str) -> str:
    return f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}-{institution}-{secrets.token_hex(3)}"


@dataclass
class BlockResult:
    count: BlockCount
    last_watermark: object
    seen_source_keys: KeySet  # on disk: closed when the result is dropped


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
        if feed.kind != "sql":  # file sources (hub.sources.ndjson) run after the mapped blocks
            continue
        mapping = load_mapping(feed.mapping)
        engine = tolerant_engine(feed.url)
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
                 flush_rows: int = FLUSH_ROWS, workers: int = 1, run_id: str | None = None, lock_wait: float = 0.0,
                 lock_key: str | None = None, window: tuple[dt.datetime, dt.datetime] | None = None):
        """run_id: given when the caller already holds the run lock under it; otherwise a new run
        takes the lock here (waiting up to lock_wait seconds). lock_key: the lock's key, the
        institution's id unless given (a windowed run's ``window_lock_key``). window: the run
        is windowed; its writers share the institution's partition with other runs."""
        self.region, self.keys = region, keys
        self.inst = region.institution(institution_id)
        self.progress = progress or NoProgress()
        self.flush_rows = flush_rows
        self.window = window
        self.lock_key = lock_key or self.inst.id
        self.engine = runrecord.connect(region.catalog_url)
        if run_id is None:
            run_id = new_run_id(self.inst.id)
            runrecord.acquire_lock(self.engine, self.lock_key, run_id, lock_wait)
        self.run_id = run_id
        self._beat = time.monotonic()
        try:
            self._open(region, keys, workers)
        except BaseException:
            runrecord.release_lock(self.engine, self.lock_key, self.run_id)
            raise

    def _open(self, region: Region, keys: Keyring, workers: int) -> None:
        self.ruleset = load_ruleset(region.ruleset, region.zone)
        self.icat = open_catalog(region.catalog_url, region.warehouse)
        self.report = RunReport(self.run_id, self.inst.id, keys.key_id, self.ruleset.label, warehouse=str(region.warehouse))
        self.writers: dict[str, TableWriter] = {}
        self.publication = Publication.open(region, keys, "run", self.run_id, engine=self.engine)  # scan + manifest
        self.patients = _load_patient_index(self.icat, region.zone, self.inst.id)
        self.pool = PreparePool(self.inst.id, keys, self.ruleset, workers, self.publication.scanner, region.validation_oracle_every)
        runrecord.start_run(self.engine, self.run_id, self.inst.id, keys.key_id, self.ruleset.label, hub.__version__)

    def writer(self, resource_type: str) -> TableWriter:
        if resource_type not in self.writers:
            table = ensure_table(self.icat, self.region.zone, resource_type)
            self.writers[resource_type] = self.publication.table_writer(table, self.inst.id, self.keys.key_id,
                                                                        shared_partition=self.window is not None,
                                                                        index_dir=self.region.workspace / ROW_INDEX_DIR)
        return self.writers[resource_type]

    def publish(self, work: BlockWork, batches: Iterable[list[tuple]], *, reuse_unchanged: bool = True) -> BlockResult:
        """Prepare, then stage for publication or quarantine every row of batches.

        Nothing is visible until commit(). Returns the block's counts, the last watermark
        value read and the source-key hashes seen (for deletion detection on full pulls).
        reuse_unchanged: a row whose source row hash (its values with the mapping, rules and
        key labels) equals the one its published version was made from is counted as
        published and unchanged without being mapped again (``hub publish --full`` turns
        this off and re-derives every row).
        """
        return next(self.publish_blocks([BlockJob(work, batches, reuse_unchanged)]))

    def publish_blocks(self, jobs: Iterable[BlockJob]) -> Iterator[BlockResult]:
        """publish() for several blocks in turn: one BlockResult each, in order.

        The blocks are staged one after the other, exactly as publish() stages each, but the
        worker processes do not wait for a block to end: the next block's rows are read,
        screened and sent to them while the parent stages the end of the one before and
        flushes it. A block into a resource that a block still being staged writes starts only
        once that one is staged: its unchanged rows are compared with what the table's index
        holds, which the flush updates (two blocks may make the same ids: patients by MRN from
        two feeds), and its quarantine with what that block resolves."""
        open_blocks: list[_BlockPublish] = []  # fed, not finished

        def tasks() -> Iterator[Task | Mark]:
            for job in jobs:
                if open_blocks:  # the last one is the block just fed: its end is not given back yet
                    open_blocks[:] = [b for b in open_blocks if not b.finished]
                    yield Mark(open_blocks[-1], drain=any(b.block.resource == job.work.block.resource for b in open_blocks))
                block = _BlockPublish(self, job)
                open_blocks.append(block)
                for rows, key_hashes in block.feed():
                    yield Task(block, block.mapping_path, job.work.index, rows, key_hashes)
            if open_blocks:
                yield Mark(open_blocks[-1])

        for block, batch in self.pool.map_tagged(tasks()):
            block.begin()
            if batch is None:
                yield block.finish()
            else:
                block.stage(batch)

    def commit(self) -> None:
        """Commit every table's staged changes (one atomic commit per table for the run)."""
        self.publication.commit()

    def heartbeat(self) -> None:
        """Keep the run lock visibly alive for other hosts (cheap: at most every HEARTBEAT_EVERY s)."""
        if time.monotonic() - self._beat >= runrecord.HEARTBEAT_EVERY:
            runrecord.heartbeat(self.engine, self.lock_key, self.run_id)
            self._beat = time.monotonic()

    def commit_shared(self, wait: float = WINDOW_COMMIT_WAIT) -> None:
        """A windowed run's commit: under the institution's regular run lock (waiting up to wait seconds
        for a regular run, which holds it throughout), every table is checked for rows another run
        of the institution published meanwhile, then committed. A conflict in any table commits none."""
        deadline = time.monotonic() + wait
        while True:
            try:
                found = runrecord.acquire_lock(self.engine, self.inst.id, self.run_id, min(60.0, max(0.0, deadline - time.monotonic())))
                break
            except runrecord.InstitutionBusy:
                if time.monotonic() >= deadline:
                    raise
                runrecord.heartbeat(self.engine, self.lock_key, self.run_id)  # still alive while waiting
        self.report.abandoned_runs += found
        try:
            for w in self.writers.values():
                w.check_shared()
            self.commit()
        finally:
            runrecord.release_lock(self.engine, self.inst.id, self.run_id)

    def finish(self, status: str) -> RunReport:
        try:
            self.pool.close()
            for rtype, w in self.writers.items():
                if w.snapshot_ids:
                    self.report.snapshots[rtype] = w.snapshot_ids[-1]
            counts = [_count_row(self.inst.id, c) for c in self.report.counts]
            self.report.leak_scan = self.publication.scan_report()
            self.report.commit_retries = dict(self.publication.commit_retries)
            if status == "succeeded" and self.publication.state == "committed":
                summary = {"institution": self.inst.id, "ruleset": self.ruleset.label, "code_version": hub.__version__, "counts": counts}
                self.report.manifest = self.publication.finish(summary)
            else:
                self.publication.abort()
            runrecord.finish_run(self.engine, self.run_id, status, counts, self.report.as_dict())
        finally:
            for w in self.writers.values():  # their scratch indexes of published rows
                w.close()
            runrecord.release_lock(self.engine, self.lock_key, self.run_id)
        return self.report


@dataclass
class BlockJob:
    """A block to publish and its source rows, batch by batch (InstitutionRun.publish_blocks).

    progress: (label, total) to open the block's progress display with when its staging
    starts; None when the caller opened it already."""

    work: BlockWork
    batches: Iterable[list[tuple]]
    reuse_unchanged: bool = True
    progress: tuple[str, int] | None = None


class _BlockPublish:
    """One block of a run: its rows screened and sent to be prepared (feed), then what was
    prepared staged for publication or quarantine (stage), then its counts checked (finish).

    feed() may run ahead of stage() by a few batches, and ahead of the end of the blocks before
    (InstitutionRun.publish_blocks) when they write other resources: it touches this block's own
    state, the source, the quarantine of its table and the index of its resource's table;
    stage() and finish() run in block order."""

    def __init__(self, run: InstitutionRun, job: BlockJob):
        self.run, self.work, self.job = run, job.work, job
        work = job.work
        block, mapping = work.block, work.mapping
        self.block, self.mapping, self.mapping_path = block, mapping, str(mapping.path)
        self.compiled = compiled = run.pool.local.compiled(self.mapping_path, work.index, mapping)  # the mapping feed_blocks loaded
        self.count = BlockCount(work.feed.name, mapping.label, block.table, block.resource)
        run.report.counts.append(self.count)
        self.subject_el = next((e for e in block.elements if e.path == "subject"), None)
        self.w = run.writer(block.resource)
        self.wm_index = compiled.columns.index(compiled.qualify(block.watermark.column)) if block.watermark else None
        self.last_wm = None
        self.seen = KeySet()  # source-key hashes of the block's rows published (duplicates are quarantined; deletions on full pulls)
        self.reopened = quarantine.has_open(run.engine, run.inst.id, block.table, block.resource)
        self.screen = RowScreen(compiled, run.keys, run.inst.id, self.wm_index)
        self.row_hash_of: dict[str, str] = {}  # source-key hash -> source row hash, for the rows sent to the workers
        self.config = f"{mapping.label}|{run.ruleset.label}|{run.keys.key_id}|{hub.__version__}"
        self.screened_keys = KeySet()  # source-key hashes of the block's rows screened so far: a key read again is mapped
        self.reused = 0
        self.begun = self.finished = False
        self._advanced = 0  # rows the feed settled before staging began (shown once the block's display opens)

    def _advance(self, n: int) -> None:
        if self.begun:
            self.run.progress.advance(n)
        else:
            self._advanced += n

    def begin(self) -> None:
        """Staging starts: the writer's counts from here on are this block's (the block before it is flushed)."""
        if self.begun:
            return
        self.begun = True
        if self.job.progress is not None:
            self.run.progress.start(*self.job.progress)
        if self._advanced:
            self.run.progress.advance(self._advanced)
        self.before_w, self.before_u, self.before_s = self.w.written, self.w.unchanged, self.w.stale

    def unchanged(self, rows: list[tuple]) -> tuple[list[tuple], list[str]]:
        """The rows to map: those not published before from exactly this content and configuration,
        with their source-key hashes (the workers use them: each row is hashed once)."""
        run, block, count, w = self.run, self.block, self.count, self.w
        reuse_unchanged = self.job.reuse_unchanged
        keyed = [(row, self.screen.key_hash(row), run.keys.hmac_hex("source-key", f"{self.config}|{row!r}")) for row in rows]
        skhs = [skh for _, skh, _ in keyed]
        published_rows = w.row_hashes_for(block.table, skhs) if reuse_unchanged and keyed else {}
        before = self.screened_keys.has(skhs) if published_rows else set()
        out, out_keys, resolved, batch_keys = [], [], [], set()
        for row, skh, rh in keyed:
            if published_rows.get(skh) == rh and skh not in before and skh not in batch_keys:
                resolved.append(skh)
            else:
                self.row_hash_of[skh] = rh
                out.append(row)
                out_keys.append(skh)
            batch_keys.add(skh)
        if reuse_unchanged:  # otherwise no row is resolved here and screened_keys is never asked
            self.screened_keys.add(batch_keys)
        if resolved:
            self.reused += len(resolved)
            count.rows_read += len(resolved)
            count.published += len(resolved)
            self.seen.add(resolved)
            if self.reopened:
                quarantine.resolve_published(run.engine, run.inst.id, block.table, block.resource, resolved, run.run_id)
            self._advance(len(resolved))
        return out, out_keys

    def feed(self) -> Iterator[tuple[list[tuple], list[str]]]:
        """Rows a mapping can read go on to the workers; the others are quarantined here."""
        run, work, block, mapping, compiled, count = self.run, self.work, self.block, self.mapping, self.compiled, self.count
        wm_index = self.wm_index
        for rows in self.job.batches:
            good, bad = self.screen.split(rows)
            if wm_index is not None:  # rows come in watermark order; NULLs sort first or last by database
                self.last_wm = next((r[wm_index] for r in reversed(good) if r[wm_index] is not None), self.last_wm)
            good, good_keys = self.unchanged(good)
            if bad:
                count.rows_read += len(bad)
                count.quarantined += len(bad)
                stored = []
                for row, skh, problem in bad:
                    run.report.causes[f"{problem.element}: {problem.problem}"] += 1
                    stored.append(quarantine.QuarantinedRow(
                        feed=work.feed.name, mapping=mapping.label, source_table=block.table,
                        resource_type=block.resource, source_key_hash=skh,
                        cause=f"{problem.element}: {problem.problem}", reason=problem.reason(self.screen.label(row)),
                        row=dict(zip(compiled.columns, storable(row), strict=True)),
                    ))
                quarantine.store(run.engine, run.keys, run.run_id, run.inst.id, stored)
                self._advance(len(bad))
            yield good, good_keys

    def stage(self, batch: PreparedBatch) -> None:
        """Stage a prepared batch: each row published (buffered in the table's writer) or quarantined."""
        run, work, block, mapping, compiled, count, w = self.run, self.work, self.block, self.mapping, self.compiled, self.count, self.w
        run.report.uncovered.update(batch.uncovered)
        run.report.dropped_by_rule.update(batch.dropped_by_rule)
        run.publication.count_scanned(batch.exempted)
        rejected: list[quarantine.QuarantinedRow] = []
        published_hashes: list[str] = []
        now = dt.datetime.now(dt.UTC)
        mapping_label, ruleset_label, scanned_upstream = mapping.label, run.ruleset.label, run.pool.scans_for(run.publication)
        seen_before, batch_keys = self.seen.has(item.source_key_hash for item in batch.items), set()
        for row, item in zip(batch.rows, batch.items, strict=True):
            count.rows_read += 1
            if item.source_key_hash in seen_before or item.source_key_hash in batch_keys:
                item = Rejected([_duplicate_key(mapping.path.name, block)], False, compiled.row_label(row), item.source_key_hash)
            batch_keys.add(item.source_key_hash)
            if isinstance(item, Ready):
                if block.resource == "Patient":
                    conflict = identity_conflict(run.patients.get(item.id), item)
                    if conflict is not None:
                        item = Rejected([conflict(mapping.path.name, block)], False, compiled.row_label(row), item.source_key_hash)
                        pseudonym = None
                    else:
                        run.patients[item.id] = (item.pseudonym, item.effective_time)
                        pseudonym = item.pseudonym
                else:
                    pseudonym = run.patients.get(item.patient_ref, (None,))[0] if item.patient_ref else None
                    if item.patient_ref and pseudonym is None:
                        item = Rejected([_missing_patient(mapping.path.name, block.resource, self.subject_el)], False, compiled.row_label(row), item.source_key_hash)
                    elif item.birth_times and item.patient_ref:  # mapping lines with not_before_birth: true
                        born = run.patients.get(item.patient_ref, (None, None))[1]
                        early = before_birth(item.birth_times, born, mapping.timezone, mapping.path.name)
                        if early is not None:
                            item = Rejected([early], False, compiled.row_label(row), item.source_key_hash)
            if isinstance(item, Rejected):
                self.row_hash_of.pop(item.source_key_hash, None)
                count.quarantined += 1
                count.failed_validation += item.failed_validation
                for p in item.problems:
                    run.report.causes[f"{p.element}: {p.problem}"] += 1
                rejected.append(quarantine.QuarantinedRow(
                    feed=work.feed.name, mapping=mapping.label, source_table=block.table,
                    resource_type=block.resource, source_key_hash=item.source_key_hash,
                    cause=f"{item.problems[0].element}: {item.problems[0].problem}",
                    reason=" | ".join(p.reason(item.label) for p in item.problems),
                    row=dict(zip(compiled.columns, row, strict=True)),
                ))
                continue
            w.add({
                "id": item.id, "institution": run.inst.id, "resource_type": block.resource,
                "patient": pseudonym, "code": item.code, "effective_time": item.effective_time,
                "resource": item.data, "content_hash": item.hash,
                "source_system": mapping.system, "source_table": block.table,
                "source_key_hash": item.source_key_hash, "run_id": run.run_id, "mapping_version": mapping_label,
                "ruleset_version": ruleset_label, "key_id": run.keys.key_id, "published_at": now,
                "source_updated_at": item.source_updated_at, "source_row_hash": self.row_hash_of.pop(item.source_key_hash, None),
            }, text_scanned=item.scanned and scanned_upstream)
            count.published += 1
            published_hashes.append(item.source_key_hash)
        self.seen.add(batch_keys)
        quarantine.store(run.engine, run.keys, run.run_id, run.inst.id, rejected)
        if self.reopened and published_hashes:
            quarantine.resolve_published(run.engine, run.inst.id, block.table, block.resource, published_hashes, run.run_id)
        self._advance(len(batch.rows))
        run.heartbeat()
        if w.pending >= run.flush_rows:
            w.flush()

    def finish(self) -> BlockResult:
        """After the block's last batch: flush its rows and check its counts."""
        count, w = self.count, self.w
        self.screened_keys.close()
        w.flush()
        self.finished = True
        count.written = w.written - self.before_w
        count.unchanged = w.unchanged - self.before_u + (w.stale - self.before_s) + self.reused
        if count.rows_read != count.published + count.quarantined:
            raise AssertionError(f"{self.block.table}: rows read {count.rows_read} != published {count.published} + quarantined {count.quarantined}")
        return BlockResult(count, self.last_wm, self.seen)


_frozen_runs = 0  # runs of this process inside frozen_heap (a windowed run runs another inside it)
_frozen_by_us = False  # the heap is frozen by frozen_heap (not by the process itself)
_frozen_lock = threading.Lock()
_saved_thresholds: tuple[int, ...] | None = None  # the collector's thresholds before the outermost run raised them
RUN_GC_THRESHOLDS = (700, 10, 100)  # see frozen_heap; Python's defaults are (700, 10, 10)


def _put_thresholds_back() -> None:
    """The collector's thresholds as they were before the outermost run raised them (under _frozen_lock)."""
    global _saved_thresholds
    if _saved_thresholds is not None:
        gc.set_threshold(*_saved_thresholds)
        _saved_thresholds = None


def frozen_heap(fn):
    """Runs fn with what is alive at its start (modules, classes, the models of fhir.resources, pyiceberg
    and SQLAlchemy: ~120,000 objects) left out of the collector's full collections (gc.freeze), in this
    process and in the workers it forks meanwhile, and given back at its end (gc.unfreeze): nothing alive
    then is kept from a later collection. Full collections walked that heap again and again: ~4 % of a
    pooled run's CPU (docs/performance.md). Garbage is collected first, so none is kept for the run's
    length. A process that froze its heap itself (a server that forks its workers) is left as it is; a
    freeze an interrupted run left behind (an exception between freezing and counting) is taken back
    by the next run.

    While the outermost run lasts, the collector's thresholds are raised to at least RUN_GC_THRESHOLDS
    (and put back at its end, also after a failing or interrupted run; a threshold the process sets
    during a run is replaced then): a run's buffers of rows fill the older generations, so full
    collections came every few thousand resources (1.0 of 20 CPU-s of a 104,000-resource NDJSON
    publish), each walking everything a run holds. Only the full collections are made rarer: cyclic
    garbage is still collected young, and what reaches the old generation waits at most ten times
    as long as before."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        global _frozen_runs, _frozen_by_us, _saved_thresholds
        mine = False
        try:
            with _frozen_lock:
                if _frozen_runs == 0:
                    _put_thresholds_back()  # left raised by an interrupted run
                if _frozen_runs == 0 and _frozen_by_us:
                    gc.unfreeze()
                    _frozen_by_us = False
                if _frozen_runs > 0 or gc.get_freeze_count() == 0:
                    if _frozen_runs == 0:
                        gc.collect()
                        _frozen_by_us = True  # before freezing: an interruption in between leaves it to be taken back
                        gc.freeze()
                        _saved_thresholds = gc.get_threshold()  # before raising: see _put_thresholds_back
                        gc.set_threshold(*map(max, _saved_thresholds, RUN_GC_THRESHOLDS))
                    _frozen_runs += 1
                    mine = True
            return fn(*args, **kwargs)
        finally:
            if mine:
                with _frozen_lock:
                    _frozen_runs -= 1
                    if _frozen_runs == 0:
                        _put_thresholds_back()  # first: an interruption in between leaves it to the next run
                        gc.unfreeze()
                        _frozen_by_us = False

    return run


@frozen_heap
def run_institution(
    region: Region,
    institution_id: str,
    keys: Keyring,
    *,
    progress: Progress | None = None,
    batch_size: int = 5000,
    flush_rows: int = FLUSH_ROWS,
    workers: int | None = None,
    full: bool = False,
    lock_wait: float = 0.0,
    rekey: bool = False,
    window: tuple[dt.datetime, dt.datetime] | None = None,
    only: frozenset[str] | None = None,
) -> RunReport:
    """Pull every feed of one institution and publish it to the region's zone.

    Blocks with a watermark pull only rows past it unless full is true. workers: processes
    for the per-row work; None means one per core when there are at least
    PARALLEL_FROM_ROWS rows to read, else in-process. Holds the institution's run lock
    throughout; if another live run holds it, waits up to lock_wait seconds, then raises
    InstitutionBusy (nothing is read or written).

    Raises KeyMismatch, before anything is written, when the institution's published rows
    carry a key id other than keys' (publishing would write every row again under new ids).
    rekey (``repseudonymize``) instead re-publishes everything under keys and removes the
    old-key rows in the same commit per table.

    window: (start, end), a windowed run (module docstring): only blocks with a timestamp
    watermark, rows with start <= time < end (naive bounds: the source's local time), under
    the lock ``window_lock_key``; never advances watermarks, detects deletions or re-keys.
    Its commit waits up to WINDOW_COMMIT_WAIT seconds for a regular run of the institution,
    and raises CommitConflict (nothing committed) if another run published a row it would add.
    Before its window, it runs the institution's REFERENCED blocks (``only``), so the patients its
    rows refer to are published whatever day their own rows were last updated.

    only: resource types; a regular run of just the SQL blocks that make them (file feeds are
    not read), advancing just their watermarks.
    """
    catalog_engine = runrecord.connect(region.catalog_url)
    inst = region.institution(institution_id)
    run_id = new_run_id(inst.id)
    if window is not None and (full or rekey):
        raise ValueError("a windowed run pulls the rows of one time window: it is never a full pull nor a re-keying")
    if window is not None and not window[0] < window[1]:
        raise ValueError(f"window starts at {window[0]} but does not end after it ({window[1]})")
    if only is not None and (window is not None or rekey):
        raise ValueError("a run of some resource types only is neither windowed nor a re-keying")
    referenced = None
    if window is not None:  # the patients the window's rows refer to, published first (a regular run: the institution's lock)
        referenced = run_institution(region, institution_id, keys, progress=progress, batch_size=batch_size,
                                     flush_rows=flush_rows, workers=workers, lock_wait=WINDOW_COMMIT_WAIT, only=REFERENCED)
    lock_key = inst.id if window is None else window_lock_key(inst.id, window[0])
    abandoned = runrecord.acquire_lock(catalog_engine, lock_key, run_id, lock_wait)
    unwatermarked: dict[str, int] = {}
    outside: list[str] = []
    try:  # watermarks are read under the lock, so two runs never plan from the same one
        stale = published_key_ids(open_catalog(region.catalog_url, region.warehouse), region.zone, keys.key_id)
        if stale and not rekey:  # any institution: one region, one key, or people are counted twice
            raise KeyMismatch(_key_mismatch(region, inst.id, keys.key_id, stale))
        # a windowed run never removes orphans: other runs of the institution may be writing files they have not committed
        cleanup = window is None and (abandoned or runrecord.last_status(catalog_engine, inst.id) == "failed")
        orphans = _remove_orphans(region, inst.id, catalog_engine) if cleanup else 0
        plans = []
        for work in feed_blocks(inst):
            if only is not None and work.block.resource not in only:
                continue
            if window is not None:  # a day's rows only; the size of the source says nothing about them
                if work.block.resource in REFERENCED:
                    continue
                if has_time_column(work.block):
                    plans.append((work, None, 0))
                elif f"{work.feed.name}:{work.block.table}" not in outside:
                    outside.append(f"{work.feed.name}:{work.block.table}")
                continue
            since = None if full else watermarks.get(catalog_engine, inst.id, work.feed.name, work.block_id)
            source = block_source(work.schema, work.block, str(work.mapping.path), work.block.line)
            with work.engine.connect() as conn:
                total = conn.execute(sa.select(sa.func.count()).select_from(source)).scalar_one()
                if since is not None and work.block.watermark.column in source.c:  # rows `>= since` can never see
                    blind = conn.execute(sa.select(sa.func.count()).select_from(source)
                                         .where(source.c[work.block.watermark.column].is_(None))).scalar_one()
                    if blind:
                        unwatermarked[f"{work.feed.name}:{work.block.table}"] = blind
            plans.append((work, since, total))
        if window is not None:
            outside += [f"{feed.name}:*" for feed in inst.feeds if feed.kind != "sql"]
        if workers is None:
            workers = default_workers() if sum(p[2] for p in plans) >= PARALLEL_FROM_ROWS else 1
        run = InstitutionRun(region, institution_id, keys, progress=progress, flush_rows=flush_rows, workers=workers, run_id=run_id,
                             lock_key=lock_key, window=window)
        run.report.abandoned_runs, run.report.orphans_removed = abandoned, orphans
        run.report.unwatermarked = unwatermarked
        run.report.window = (window[0].isoformat(), window[1].isoformat()) if window is not None else None
        run.report.outside_window = outside
        run.report.referenced_run = referenced.run_id if referenced is not None else None
    except BaseException:
        runrecord.release_lock(catalog_engine, lock_key, run_id)
        raise
    status = "failed"
    try:
        advances, deletions = [], []

        def jobs() -> Iterator[BlockJob]:
            for work, since, total in plans:
                compiled = run.pool.local.compiled(str(work.mapping.path), work.index, work.mapping)
                select = block_select(compiled, work.schema, since, incremental=not full, window=window)
                yield BlockJob(work, iter_batches(work.engine, select, batch_size), not full,
                               (f"{inst.id} {work.feed.name} {work.block.table} → {work.block.resource}", total))

        for (work, _since, _total), result in zip(plans, run.publish_blocks(jobs()), strict=True):
            if window is None and work.block.watermark is not None and result.last_watermark is not None:
                advances.append((work, result.last_watermark))
            if full:  # a complete pull: what is no longer at the source was deleted there
                gone = run.writer(work.block.resource).stage_deletions(work.block.table, result.seen_source_keys)
                deletions.extend((work, rid, skh) for rid, skh in gone)
        if window is not None:  # watermarks, file feeds, re-keying and deletions are the regular run's
            run.commit_shared()
        else:
            from hub.sources import hl7v2, ndjson

            files = [feed for feed in inst.feeds if only is None]  # a run of some resource types reads no file feed
            positions = [p for feed in files if feed.kind == "ndjson" for p in ndjson.publish_feed(run, feed, full=full)]
            positions += [p for feed in files if feed.kind == "hl7v2" for p in hl7v2.publish_feed(run, feed, full=full)]
            if rekey:  # old-key rows leave in the same commit per table as the re-keyed rows arrive
                run.report.removed_old_key = {rtype: run.writer(rtype).stage_rekey() for i, rtype in stale if i == inst.id}
            run.commit()
            record_deletions(run.engine, run.run_id, inst.id, deletions)
            for work, value in advances:  # only after the commit: a crash before here re-reads, never skips
                watermarks.advance(run.engine, inst.id, work.feed.name, work.block_id, work.block.watermark.kind, value, run.run_id)
            ndjson.advance(run.engine, inst.id, positions, run.run_id)  # file positions (NDJSON, HL7 v2), likewise only after the commit
            run.report.deleted = dict(Counter(w.block.resource for w, _, _ in deletions))
        status = "succeeded"
    finally:
        report = run.finish(status)
    return report




def window_lock_key(institution: str, start: dt.datetime) -> str:
    """The run lock of a windowed run: one per institution and day the window starts on."""
    key = f"{institution}@{start:%Y-%m-%d}"
    if len(key) > run_locks.c.institution.type.length:
        raise CommandFailed(f"{institution}: the institution id is too long for a run by day (at most "
                            f"{run_locks.c.institution.type.length - 11} characters); run it without a day", 2)
    return key


def _remove_orphans(region: Region, institution: str, engine: sa.Engine) -> int:
    """Data files a killed or failed run of the institution wrote but never committed (we hold its lock).

    While a windowed run of the institution is alive, its files not committed yet look the same:
    then only files older than the orphan grace period go (the daily orphan job takes the rest).
    """
    from hub.lakehouse.orphans import GRACE_SECONDS, delete_orphans, find_orphans

    icat = open_catalog(region.catalog_url, region.warehouse)
    older_than = GRACE_SECONDS if runrecord.live_locks(engine, f"{institution}@") else 0
    return delete_orphans(find_orphans(icat, [region.zone], institution, older_than=older_than))


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
    return {"institution": institution, **{k: v for k, v in asdict(c).items() if k in runrecord.run_counts.c}}


def _missing_patient(file: str, resource_type: str, subject_el) -> RowProblem:
    cols = ", ".join(subject_el.options.get("key", [])) if subject_el else None
    line = subject_el.line if subject_el else 0
    return RowProblem(
        f"{file}:{line}", f"{resource_type}.subject", cols,
        "refers to a patient this institution has not published (unknown or quarantined patient)",
        "the key of a patient present in the institution's patient table", None,
    )


def _load_patient_index(icat, zone: str, institution: str) -> dict[str, tuple[str | None, dt.datetime | None]]:
    """Patient resource id -> (linkage pseudonym, birth date) for patients already published."""
    try:
        table = icat.load_table(table_name(zone, "Patient"))
    except NoSuchTableError:
        return {}
    cols = ("id", "patient", "effective_time")
    data = table.scan(row_filter=EqualTo("institution", institution), selected_fields=cols).to_arrow()
    ids, people, births = (data.column(c).to_pylist() for c in cols)
    return {i: (p, b) for i, p, b in zip(ids, people, births, strict=True)}


def _duplicate_key(file: str, block: Block) -> RowProblem:
    return RowProblem(f"{file}:{block.line}", f"{block.resource}.id", ", ".join(block.key),
                      "has the same source key as an earlier row of this pull (a duplicate key)",
                      "a key that is unique per row (declare a natural key plus an occurrence column for tables without one)", None)


def repseudonymize(region: Region, institution_id: str, keys: Keyring, **kwargs) -> tuple[RunReport, int]:
    """Re-publish an institution under the current key, removing its rows made with other keys.

    One run, full pull: in every table the re-keyed rows and the removal of the old-key rows
    land in the same commit. Returns the run report and the number of old rows removed.
    Earlier snapshots and tags (research releases) stay readable through time travel.
    """
    report = run_institution(region, institution_id, keys, full=True, rekey=True, **kwargs)
    return report, sum(report.removed_old_key.values())


class KeyMismatch(CommandFailed):
    """The master key is not the one an institution's published rows were made with."""


def published_key_ids(icat, zone: str, current: str | None = None) -> dict[tuple[str, str], set[str]]:
    """{(institution, resource type): key ids} of the zone's published rows, leaving out current.

    Read from the data files' partition and column statistics (a key id is shorter than
    Iceberg's 16-character bound); rows are read only for a table whose statistics do not
    settle it.
    """
    from pyiceberg.exceptions import NoSuchNamespaceError

    try:
        names = icat.list_tables(zone)
    except NoSuchNamespaceError:
        return {}
    types = {module: rtype for rtype, module in RESOURCE_MODULES.items()}
    out: dict[tuple[str, str], set[str]] = {}
    for ident in names:
        table = icat.load_table(ident)
        if table.current_snapshot() is None:
            continue
        rtype, field_id = types.get(ident[-1], ident[-1]), table.schema().find_field("key_id").field_id
        found: dict[str, set[str]] | None = {}
        for task in table.scan().plan_files():
            lo, hi = (task.file.lower_bounds or {}).get(field_id), (task.file.upper_bounds or {}).get(field_id)
            if lo is None or lo != hi or len(lo) >= 16 or task.delete_files:
                found = None
                break
            found.setdefault(task.file.partition[0], set()).add(lo.decode())
        if found is None:
            data = table.scan(selected_fields=("institution", "key_id")).to_arrow().group_by(["institution", "key_id"]).aggregate([])
            found = {}
            for inst, kid in zip(data["institution"].to_pylist(), data["key_id"].to_pylist(), strict=True):
                found.setdefault(inst, set()).add(kid)
        for inst, ids in found.items():
            ids.discard(current)
            if ids:
                out[(inst, rtype)] = ids
    return out


def _key_mismatch(region: Region, institution: str, current: str, found: dict[tuple[str, str], set[str]]) -> str:
    import os

    from deid.keys import ENV_KEY_FILE

    dirs = {region.key_file.parent / "retired"}
    if os.environ.get(ENV_KEY_FILE):
        dirs.add(Path(os.environ[ENV_KEY_FILE]).parent / "retired")
    key_ids = set().union(*found.values())
    ids, holders = ", ".join(sorted(key_ids)), sorted({i for i, _ in found})
    whose = "its published rows" if holders == [institution] else f"published rows of {', '.join(holders)}"
    if all(any((d / f"{kid}.key").exists() for d in dirs) for kid in key_ids):
        return (f"{institution}: {whose} carry key id {ids}, a retired key; the current master key is {current}. "
                f"Publishing now would write people again under new pseudonyms: run `hub keys repseudonymize "
                f"{' '.join(holders)}` first")
    return (f"{institution}: the configured master key (key id {current}) is not the one {whose} were published with "
            f"(key id {ids}); publishing would write people again under new pseudonyms. Configure the original key "
            f"(HUB_MASTER_KEY, HUB_KEY_FILE or keys/master.key); to change keys, restore it, run `hub keys rotate`, "
            f"then `hub keys repseudonymize`")
