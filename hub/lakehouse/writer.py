"""Versioned, idempotent upsert of resource rows: one atomic Iceberg commit per table per run.

A row is identified by its resource id. Before its first write in a run, the writer reads
(id, content_hash, source_updated_at, source_key_hash, source_table, key_id, source_row_hash) of
the institution's partition once, file by file, with each row's data file and position, into a
temporary on-disk index (``hub.lakehouse.rowindex.PublishedRows``), which it then asks a batch
at a time: a run's memory does not grow with the rows of the partition. ``close()`` removes that
index. Data files are written as rows come (memory stays bounded) and committed together by
``commit()``, in one snapshot per table per run (an append per flush would re-read the
transaction's growing metadata each time): the run's data files and, for the rows it replaced
or deleted, **masks by position** (``hub.lakehouse.positions``: a position delete file per data
file holding such rows, merge on read) instead of rewriting the files that hold them; a data
file all of whose rows the run removed is dropped whole. So a run that changes 1 % of a
partition writes 1 % of it again, not all of it. The index can be **kept** between runs
(``kept_index``): stamped with the snapshot the run committed, and reused by the next run while
every commit since is another institution's, so that run does not read the partition either.

- a new id is appended; an unchanged one (same content hash) is skipped;
- a changed one replaces the old version under the same id, unless the old version is
  newer at the source (``source_updated_at``): an older version never overwrites a newer;
- on a full pull, rows whose source key no longer exists at the source are deleted
  (``stage_deletions``), and the caller records them as deletions.

**Concurrent commits.** Runs of different institutions commit to the same table at once
(Dagster partitions on several workers). A commit is optimistic: pyiceberg (0.12) catches the
catalog's ``CommitFailedException``, refreshes the table, re-plans the run's staged snapshot
on top of the new head, reusing the data files already written, validates that the concurrent
commits neither removed nor masked rows of the data files the run masks or removes
(``hub.lakehouse.positions``), and commits again, with
jittered exponential back-off. ``RetryPolicy`` bounds that (attempts, waits, total time);
``commit_with_retry`` counts the retries (``TableWriter.retries``) and, after the last
attempt, raises ``CommitConflict`` naming the table. Metadata-only changes (tags, snapshot
expiry) are not re-planned by pyiceberg: ``retry_commit`` re-runs them on refreshed metadata.
A run never loses or duplicates a row: the run lock keeps other writers out of its
partition, so a re-planned commit applies exactly the changes the run staged.

**Runs sharing a partition.** Windowed runs (``hub.pipeline.run_institution(window=...)``,
a backfill by day) of one institution run at once, each under its own day lock, so another
run may publish rows into the partition after this writer read it (``_existing``). Such a
writer is made with ``shared_partition=True``: it records the table's snapshot when it reads
the partition and, at commit (``check_shared``, the caller holding the institution's run
lock so no run of it commits meanwhile), reads the ids of the data files ADDED by the runs of
the same institution committed since (append and overwrite snapshots). An id this run would add or replace that
one of them added raises ``CommitConflict`` before anything is committed: appending it
would leave the id twice (a source row whose time moved from one window into another while
both ran). Run again, the run sees the row as published and upserts it. Files only rewritten
(compaction) hold rows that were published before, which this run either read or finds in a
run's snapshot since; they are not read. A shared partition's index is never kept.

Every staged batch is leak-scanned first (by the ``scan`` the publication hands in): rows
carrying an identifier are never written. A resource text added with ``text_scanned`` has
already passed the same scanner with its record's known values (the pipeline's workers scan
each row: Scanner.record), so the batch scan skips that one column for that row; every
other column, and every text not so marked, is scanned here. A TableWriter is made by the sink
(``hub.lakehouse.sink.Publication.table_writer``), which also records the manifest.
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.exceptions import CommitFailedException, ValidationException
from pyiceberg.expressions import EqualTo
from pyiceberg.io.pyarrow import _check_pyarrow_schema_compatible, _dataframe_to_data_files
from pyiceberg.manifest import DataFile, ManifestContent, ManifestEntryStatus
from pyiceberg.table import Table, TableProperties, Transaction
from pyiceberg.table.snapshots import Operation

from hub.errors import CommandFailed
from hub.lakehouse.positions import (
    check_untouched,
    masks_of,
    partition_rows,
    stage_run_commit,
    write_position_deletes,
)
from hub.lakehouse.rowindex import COLUMNS, LOCATION, Busy, KeySet, PublishedRows
from hub.lakehouse.tables import ARROW_SCHEMA
from hub.memory import release_freed_memory

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard a commit tries when other writers commit to the same table: bounded, with jittered back-off."""

    attempts: int = 10  # commits tried in all, the first included
    min_wait_ms: int = 50  # wait before the first retry; doubles each retry ...
    max_wait_ms: int = 5000  # ... up to this, plus up to 10% jitter (pyiceberg's) or 50% (retry_commit's)
    total_ms: int = 10 * 60 * 1000  # no retry starts after this long

    def wait_s(self, retry: int) -> float:
        """Seconds to sleep before retry number retry (1-based): exponential, capped, jittered."""
        base = min(self.min_wait_ms * 2 ** (retry - 1), self.max_wait_ms)
        return (base + random.uniform(0, 0.5 * base)) / 1000

    def properties(self) -> dict[str, str]:
        """The same policy as pyiceberg's table properties (commit.retry.*)."""
        return {TableProperties.COMMIT_NUM_RETRIES: str(self.attempts - 1),
                TableProperties.COMMIT_MIN_RETRY_WAIT_MS: str(self.min_wait_ms),
                TableProperties.COMMIT_MAX_RETRY_WAIT_MS: str(self.max_wait_ms),
                TableProperties.COMMIT_TOTAL_RETRY_TIME_MS: str(self.total_ms)}


#: The policy every commit of hub uses unless told otherwise.
COMMIT_RETRY = RetryPolicy()


class CommitConflict(CommandFailed):
    """A commit gave up: other writers kept committing to the table, or changed what this commit replaces."""


class _CountingCatalog:
    """The table's catalog, counting the commits it refused (each is followed by a retry or by giving up)."""

    def __init__(self, catalog: Any):
        self._catalog = catalog
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._catalog, name)

    def commit_table(self, table: Table, requirements: tuple, updates: tuple) -> Any:
        try:
            return self._catalog.commit_table(table, requirements, updates)
        except CommitFailedException:
            self.refused += 1
            raise


def counting(table: Table) -> Table:
    """The same table object, its catalog wrapped to count refused commits (``refused_commits``); it
    delegates everything else, so callers holding the table see its commits as before."""
    if not isinstance(table.catalog, _CountingCatalog):
        table.catalog = _CountingCatalog(table.catalog)
    return table


def refused_commits(table: Table) -> int:
    """Commits of this (``counting``) table the catalog refused so far."""
    return table.catalog.refused if isinstance(table.catalog, _CountingCatalog) else 0


def _with_policy(table: Table, policy: RetryPolicy) -> Any:
    """Make pyiceberg's retry loop follow policy for the next commit of table, in memory only.

    pyiceberg reads ``commit.retry.*`` from the table's properties when a commit starts; a
    property the table itself sets wins. Nothing is written to the table's metadata (the
    catalog applies only the staged updates), so the recorded table state does not change.
    Returns the metadata object made (``_without_policy`` takes it back out).
    """
    props = {**policy.properties(), **table.metadata.properties}
    if props == table.metadata.properties:
        return None
    table.metadata = table.metadata.model_copy(update={"properties": props})
    return table.metadata


def _without_policy(table: Table, overlaid: Any, original: dict[str, str]) -> None:
    """Undo _with_policy if the commit did not replace the metadata (it failed before any refresh)."""
    if overlaid is not None and table.metadata is overlaid:
        table.metadata = table.metadata.model_copy(update={"properties": original})


def commit_with_retry(table: Table, tx: Transaction, policy: RetryPolicy = COMMIT_RETRY) -> int:
    """Commit a transaction of snapshot changes, re-planned on conflict by pyiceberg; returns how many retries it took.

    table: the (``counting``) table tx was opened on. Raises CommitConflict naming the table
    when the last attempt is refused, or when a concurrent commit changed files this
    transaction deletes (then re-planning cannot help: the caller starts again from scratch).
    """
    name = ".".join(table.name())
    before, started, original = refused_commits(table), time.monotonic(), dict(table.metadata.properties)
    overlaid = _with_policy(table, policy)
    try:
        tx.commit_transaction()
    except CommitFailedException as exc:
        tries = refused_commits(table) - before
        raise CommitConflict(f"{name}: commit refused {tries} time(s) in {time.monotonic() - started:.1f}s, other writers "
                             f"kept committing to this table; nothing of this commit is visible, run it again ({exc})", 2) from exc
    except ValidationException as exc:
        raise CommitConflict(f"{name}: a concurrent commit changed data files this commit replaces; nothing of this "
                             f"commit is visible, run it again ({_plain(exc)})", 2) from exc
    finally:
        _without_policy(table, overlaid, original)
    return refused_commits(table) - before


def _plain(exc: Exception) -> str:
    """An exception's text without pyiceberg's renderings of data files (their column bounds hold row values)."""
    text = str(exc)
    return text.split("DataFile[", 1)[0].rstrip(" :[(") + (" (file details left out)" if "DataFile[" in text else "")


def retry_commit(table: Table, attempt: Callable[[Table], T], policy: RetryPolicy = COMMIT_RETRY) -> tuple[T, int]:
    """Run attempt(table) (a metadata change: a tag, a snapshot expiry, a compaction planned from scratch) until
    the catalog accepts it: on CommitFailedException or ValidationException, wait, refresh the table, run it
    again. Returns (what attempt returned, retries); raises CommitConflict naming the table after the last attempt."""
    started = time.monotonic()
    for retry in range(policy.attempts):
        try:
            return attempt(table), retry
        except (CommitFailedException, ValidationException, CommitConflict) as exc:
            spent_ms = (time.monotonic() - started) * 1000
            if retry == policy.attempts - 1 or spent_ms >= policy.total_ms:
                raise CommitConflict(f"{'.'.join(table.name())}: gave up after {retry + 1} attempt(s) in {spent_ms / 1000:.1f}s: "
                                     f"other writers kept changing this table; run it again ({exc})", 2) from exc
            time.sleep(policy.wait_s(retry + 1))
            table.refresh()
    raise AssertionError("unreachable")


_NO_TIME = dt.datetime.min.replace(tzinfo=dt.UTC)


class TableWriter:
    """Stages one run's upserts for one table and institution; commit() makes them visible at once."""

    def __init__(self, table: Table, institution: str, run_id: str, scan: Callable[[pa.Table, str], object], key_id: str | None = None,
                 policy: RetryPolicy = COMMIT_RETRY, *, shared_partition: bool = False, kept_index: Path | None = None):
        """scan(data, where) raises LeakBlocked when data carries an identifier. shared_partition: other runs of
        the institution may commit to its partition while this one stages (a windowed run): commit() then
        checks for rows they added that this run would add again (``check_shared``). kept_index: a file that
        keeps the index of published rows between runs (not for a shared partition): reused while no other
        commit touched the partition, read again from the table otherwise."""
        self.table, self.institution, self.run_id, self.scan, self.key_id = counting(table), institution, run_id, scan, key_id
        self.policy = policy
        self.shared_partition = shared_partition
        self._read_at: int | None = None  # the snapshot _existing was read from (None: the table was empty)
        self._staged: KeySet | None = None  # ids of the rows this run wrote to data files (on disk, made at the first)
        self.retries = 0  # commits the catalog refused because another writer committed first (then re-planned)
        self._buffer: dict[str, dict] = {}
        self._scanned: set[str] = set()  # ids in the buffer whose resource text was scanned upstream
        self._existing: PublishedRows | None = None
        self._tx: Transaction | None = None
        self._files: list[DataFile] = []  # data files written since the last append to _tx (``_append_files``)
        self._own: dict[int, DataFile] = {}  # the index's file number -> data file, of the files this run wrote
        self.kept_index = None if shared_partition else kept_index
        self.index_reused = False  # the kept index was current: the partition was not read
        self._file_names = (uuid.uuid4(), itertools.count())  # unique data file names across this writer's flushes
        self.written = 0
        self.unchanged = 0
        self.stale = 0  # rows not applied because the published version is newer at the source
        self.snapshot_ids: list[int] = []

    @property
    def props(self) -> dict[str, str]:
        return {"hub.run-id": self.run_id, "hub.institution": self.institution}

    def _load_existing(self) -> PublishedRows:
        """The index of what is published in the partition (read once, at the first question; or the kept one,
        if it is current)."""
        if self._existing is None:
            snap = self.table.current_snapshot()
            self._read_at = snap.snapshot_id if snap is not None else None
            index = self._kept()
            if index is not None and self._current(index.stamp):
                index.set_stamp(None)  # changed from here on, until this run commits
                self._existing, self.index_reused = index, True
                return index
            if index is not None:
                index.discard()
                index = self._kept()
            if index is None:  # (an empty index is falsy: it has a length)
                index = PublishedRows()
            try:
                index.set_stamp(None)
                index.fill(self._located(index, partition_rows(self.table, self.institution, COLUMNS)))
            except BaseException:
                index.close()
                raise
            self._existing = index
        return self._existing

    def _kept(self) -> PublishedRows | None:
        """The kept index, opened (None: none is configured, or another process has it open: then a scratch one)."""
        if self.kept_index is None:
            return None
        try:
            return PublishedRows(keep=self.kept_index)
        except (Busy, OSError, sqlite3.Error):  # held by another process, or its folder cannot be written: scratch
            return None

    def _stamp(self, snapshot_id: int | None) -> str:
        return f"{self.table.metadata.table_uuid}:{snapshot_id}"

    def _current(self, stamp: str | None) -> bool:
        """Whether an index stamped so still holds the partition as the table has it: the stamp's snapshot is the
        current one or an ancestor, and every commit since is another institution's run."""
        if stamp is None or not stamp.startswith(f"{self.table.metadata.table_uuid}:"):
            return False
        snap = self.table.current_snapshot()
        return snap is not None and self._others_only(snap, stamp.rpartition(":")[2])

    def _others_only(self, snap: Any, until: str | None) -> bool:
        """Whether snap and its ancestors, down to the snapshot whose id is until (not included; None: the first
        snapshot, included), are all other institutions' runs (hub's runs write only their institution's
        partition; maintenance and commits made outside hub count as touching it), and that snapshot is reached."""
        by_id = {s.snapshot_id: s for s in self.table.metadata.snapshots}
        while snap is not None and str(snap.snapshot_id) != until:
            institution = _props(snap).get("hub.institution")
            if institution is None or institution == self.institution or "hub.maintenance" in _props(snap):
                return False
            snap = by_id.get(snap.parent_snapshot_id) if snap.parent_snapshot_id is not None else None
        return snap is not None or until is None

    @staticmethod
    def _located(index: PublishedRows, rows: Iterable[tuple[DataFile, pa.RecordBatch, Any]]) -> Iterable[pa.RecordBatch]:
        """The partition's batches with the LOCATION columns added; counts each file's live rows."""
        for data_file, batch, positions in rows:
            no = index.file_number(data_file.file_path, batch.num_rows)
            yield (batch.append_column(LOCATION[0], pa.array([no] * batch.num_rows, pa.int64()))
                        .append_column(LOCATION[1], pa.array(positions, pa.int64())))

    def _mask(self, index: PublishedRows, ids: list[str]) -> None:
        """Remember where the published versions of ids sit, to mask them at commit."""
        places = index.locate(ids)
        if len(places) != len(set(ids)):
            raise CommandFailed(f"{'.'.join(self.table.name())}: {len(set(ids)) - len(places)} published row(s) of "
                                f"{self.institution} to replace or delete have no known place in the table's files; "
                                "nothing of this run is committed", 2)
        index.mask(places.values())

    def row_hashes_for(self, source_table: str, skhs: Iterable[str]) -> dict[str, str]:
        """source-key hash -> source row hash of what this table holds from source_table under this key, for those
        of skhs: a row read again with the same hash would make the same resource, so it need not be mapped again."""
        return self._load_existing().row_hashes(source_table, self.key_id, skhs)

    def holds(self, source_table: str, skhs: Iterable[str]) -> set[str]:
        """Those of skhs that row_hashes_for answers for (versions published from source_table under this key)."""
        return self._load_existing().has(source_table, self.key_id, skhs)

    def close(self) -> None:
        """Remove the index of published rows (asked again, it is read again from the table) and the ids this
        run wrote (call it once the run has committed or given up)."""
        if self._existing is not None:
            self._existing.close()
            self._existing = None
        if self._staged is not None:
            self._staged.close()
            self._staged = None

    def _transaction(self) -> Transaction:
        if self._tx is None:
            self._tx = self.table.transaction()
        return self._tx

    def add(self, row: dict, *, text_scanned: bool = False) -> None:
        """Buffer a row. text_scanned: its resource text passed the publication's scanner already."""
        self._buffer[row["id"]] = row
        if text_scanned:
            self._scanned.add(row["id"])
        else:
            self._scanned.discard(row["id"])

    @property
    def pending(self) -> int:
        """Rows added since the last flush (the caller decides when to stage them)."""
        return len(self._buffer)

    def flush(self) -> None:
        """Stage the buffered rows into the run's transaction (visible only after commit())."""
        if not self._buffer:
            return
        index = self._load_existing()
        existing = index.lookup(self._buffer)
        rows, changed = [], []
        for rid, row in self._buffer.items():
            old = existing.get(rid)
            if old is not None and old[0] == row["content_hash"]:
                self.unchanged += 1
                continue
            if old is not None and old[1] is not None and row.get("source_updated_at") is not None and row["source_updated_at"] < old[1]:
                self.stale += 1
                continue
            if old is not None:
                changed.append(rid)
            rows.append(row)
        scanned, self._buffer, self._scanned = self._scanned, {}, set()
        if not rows:
            release_freed_memory()  # the buffer held only unchanged or stale rows: freed, give their pages back
            return
        rows.sort(key=_file_order)  # the table's sort order, in Python: Arrow's sort_by would hold a second copy
        published = [(row["id"], row["content_hash"], row.get("source_updated_at"), row["source_key_hash"], row["source_table"],
                      row["key_id"], row.get("source_row_hash")) for row in rows]
        was_scanned = [entry[0] in scanned for entry in published]
        del existing, scanned
        data = _to_arrow(rows)  # empties rows: the row dicts are most of a flush's memory
        self.scan(_unscanned(data, was_scanned), ".".join(self.table.name()))  # raises LeakBlocked: nothing of this run is committed
        if changed:
            self._mask(index, changed)
        places = self._write_files(data)
        if self._staged is None:
            self._staged = KeySet()
        self._staged.add(entry[0] for entry in published)
        index.upsert((*entry, *places[entry[0]]) for entry in published)
        self.written += len(published)
        del data, published, places
        release_freed_memory()  # the flush's rows and tables are freed: give their pages back (hub/memory.py)

    def _write_files(self, data: pa.Table) -> dict[str, tuple[int, int]]:
        """Write data as Parquet data files of the table, not yet part of it: commit() appends every file of
        the run in one snapshot (an append per flush would make each flush re-read the transaction's
        growing metadata: quadratic in the number of flushes). Returns id -> (file number, position) of
        each row, read back from the files (how pyiceberg splits and orders rows into files is its own)."""
        meta = self.table.metadata
        _check_pyarrow_schema_compatible(meta.schema(), provided_schema=data.schema, format_version=meta.format_version)
        uid, counter = self._file_names
        written = list(_dataframe_to_data_files(table_metadata=meta, df=data, io=self.table.io, write_uuid=uid, counter=counter))
        self._files += written
        places: dict[str, tuple[int, int]] = {}
        for data_file in written:
            with self.table.io.new_input(data_file.file_path).open() as f:
                ids = pq.read_table(f, columns=["id"]).column("id").to_pylist()
            no = self._existing.file_number(data_file.file_path, len(ids))
            self._own[no] = data_file
            places.update((rid, (no, pos)) for pos, rid in enumerate(ids))
        if len(places) != data.num_rows:
            raise CommandFailed(f"{'.'.join(self.table.name())}: {data.num_rows} rows written but {len(places)} found in "
                                "the files written; nothing of this run is committed", 2)
        return places

    def _written_by_run(self, ids: Iterable[str]) -> set[str]:
        """Those of ids this run wrote to a data file."""
        return self._staged.has(ids) if self._staged is not None else set()

    def _append_files(self) -> None:
        """Add the data files written so far to the run's transaction, in one append snapshot."""
        if not self._files:
            return
        files, self._files = self._files, []
        with self._transaction().update_snapshot(snapshot_properties=self.props).fast_append() as append:
            for f in files:
                append.append_data_file(f)

    def _masks(self) -> tuple[list[DataFile], list[DataFile], list[DataFile], set[DataFile]]:
        """What this run replaced or deleted, ready to commit: (position delete files written, one per data file
        with masked rows; data files to remove whole, read from the table with every row of them gone; the
        delete files of those; the table's data files these touch). Raises CommitConflict when another commit removed or masked rows of
        one of those files since this run read the partition."""
        index = self._existing
        masked = index.masked_files() if index is not None else {}
        if not masked:
            return [], [], [], set()
        name = ".".join(self.table.name())
        known = index.files_of(masked)
        tasks = self._table_files({known[no][0] for no in masked if no in known and no not in self._own})
        files = {**{no: task.file for no, task in tasks.items()}, **{no: f for no, f in self._own.items() if no in masked}}
        if len(files) != len(masked):
            index.discard()  # the index names a file the table no longer has: the next run reads the partition again
            raise CommitConflict(f"{name}: {len(masked) - len(files)} data file(s) of {self.institution} this run masks rows "
                                 "of are no longer in the table; nothing of this commit is visible, run it again", 2)
        touched = {files[no] for no in masked if no not in self._own}
        try:
            check_untouched(self.table, self._read_at, touched)
        except ValidationException as exc:
            raise CommitConflict(f"{name}: since this run read {self.institution}'s rows, {exc}; nothing of this commit is "
                                 "visible, run it again", 2) from exc
        # a file is removed whole only in a table partitioned by institution: elsewhere it may hold others' rows
        drop = {no for no, n in masked.items() if no not in self._own and n >= known[no][1]
                and len(files[no].partition) and str(files[no].partition[0]) == self.institution}
        deletes = [write_position_deletes(self.table, files[no], index.masked(no))
                   for no in sorted(set(masked) - drop, key=lambda no: files[no].file_path)]
        return deletes, [files[no] for no in sorted(drop)], [m for no in sorted(drop) for m in masks_of(tasks[no])], touched

    def _table_files(self, paths: set[str]) -> dict[int, Any]:
        """file number -> the table's scan task (data file and its masks), for those of paths in the institution's
        partition now (the manifests are read, not the files)."""
        if not paths:
            return {}
        index = self._existing
        return {index.file_number(task.file.file_path): task
                for task in self.table.scan(row_filter=EqualTo("institution", self.institution)).plan_files()
                if task.file.file_path in paths}

    def stage_deletions(self, source_table: str, seen_source_keys: Iterable[str]) -> list[tuple[str, str]]:
        """After a full pull of source_table: stage deletion of rows whose source key was not seen.

        Only rows made with this run's key count: source-key hashes are keyed, so rows from
        before a key rotation are re-keyed (hub keys repseudonymize), not deleted.
        Returns (resource id, source-key hash) of each, for the caller to record.
        """
        index = self._load_existing()
        gone = index.missing_keys(source_table, self.key_id, seen_source_keys)
        if gone:
            ids = [rid for rid, _ in gone]
            self._mask(index, ids)
            index.delete(ids)
        return gone

    def stage_rekey(self) -> int:
        """Stage deletion of the institution's rows made with a key other than this run's.

        For re-pseudonymization: the old-key rows leave in the same commit as the re-keyed
        rows arrive, so no reader ever sees a person twice or not at all. Returns how many.
        """
        index = self._load_existing()
        index.mask_other_keys(self.key_id)
        return index.drop_other_keys(self.key_id)

    def check_shared(self) -> None:
        """For a writer sharing its partition: raise CommitConflict if a run of the institution committed, since
        this one read the partition, a row with an id this run appends. The caller holds the institution's run
        lock from this check through commit(), so no such commit can land in between."""
        self.flush()
        if not self.shared_partition or self._staged is None:
            return
        name = ".".join(self.table.name())
        fresh = self.table.catalog.load_table(self.table.name())
        since, snap, by_id = [], fresh.current_snapshot(), {s.snapshot_id: s for s in fresh.metadata.snapshots}
        while snap is not None and snap.snapshot_id != self._read_at:
            since.append(snap)
            snap = by_id.get(snap.parent_snapshot_id) if snap.parent_snapshot_id is not None else None
        if snap is None and self._read_at is not None:
            raise CommitConflict(f"{name}: the snapshot this run read {self.institution}'s rows from is no longer in the "
                                 "table's history (expired meanwhile); nothing of this commit is visible, run it again", 2)
        clash = 0
        for path in added_files(fresh, [s for s in since if _props(s).get("hub.institution") == self.institution
                                        and _props(s).get("hub.run-id") != self.run_id and "hub.maintenance" not in _props(s)
                                        and s.summary is not None and s.summary.operation in (Operation.APPEND, Operation.OVERWRITE)]):
            with fresh.io.new_input(path).open() as f:
                ids = pq.read_table(f, columns=["id"]).column("id").to_pylist()
            clash += len(self._written_by_run(ids))
        if clash:
            raise CommitConflict(
                f"{name}: {clash} row(s) this run would publish were published by another run of {self.institution} "
                "while this one ran (a source row whose time moved from one window into another); nothing of this "
                "commit is visible: run it again, it then finds those rows published and updates them in place", 2)

    def commit(self) -> None:
        """Make everything staged in this run visible, atomically (after ``check_shared`` for a shared partition)."""
        self.check_shared()
        deletes, removed, removed_masks, touched = self._masks()
        if deletes or removed:  # one snapshot: no reader ever sees a replaced row twice or a deleted one missing early
            data_files, self._files = self._files, []
            stage_run_commit(self._transaction(), data_files, deletes, removed, removed_masks, touched, self.props)
        else:
            self._append_files()
        if self._tx is None:
            if self._existing is not None and self._read_at is not None:  # nothing changed: it holds what was read
                self._existing.set_stamp(self._stamp(self._read_at))
            return
        tx, self._tx, before = self._tx, None, refused_commits(self.table)
        try:
            commit_with_retry(self.table, tx, self.policy)
        finally:
            self.retries += refused_commits(self.table) - before
        ours = committed_snapshots(self.table, self.run_id)
        self.snapshot_ids += ours
        if self._existing is not None and ours:
            # the index is this run's view: it holds the table only if what the commit landed on, since this run
            # read the partition (or since the table began, if it was empty), is other institutions' runs
            # (pyiceberg rebases a commit over anything)
            first = self.table.snapshot_by_id(ours[0])
            parent = self.table.snapshot_by_id(first.parent_snapshot_id) if first.parent_snapshot_id is not None else None
            read_at = str(self._read_at) if self._read_at is not None else None
            if (parent is None and read_at is None) or (parent is not None and self._others_only(parent, read_at)):
                self._existing.committed(self._stamp(ours[-1]))


_TEXT_COLUMN = ARROW_SCHEMA.get_field_index("resource")
_OTHER_COLUMNS = ARROW_SCHEMA.remove(_TEXT_COLUMN)
_MAX_OFFSET = 2**31 - 1  # a string array's 32-bit offsets


def _to_arrow(rows: list[dict], chunk: int = 4096) -> pa.Table:
    """The rows as a table of ARROW_SCHEMA, emptying the list as it goes: each slice's dicts are freed once
    converted, so the dicts and their Arrow copy are never held whole at once. A row's resource may be its
    JSON text or that text in UTF-8 (what the workers send): see _text_column."""
    rows.reverse()
    batches = []
    while rows:
        part = rows[-chunk:]
        del rows[-chunk:]
        part.reverse()
        texts = _text_column([row["resource"] for row in part])
        if texts is None:  # more text than one array holds: a smaller slice
            if len(part) == 1:
                raise CommandFailed(f"resource {part[0]['id']} is more than 2 GiB of JSON: nothing of this run is committed", 2)
            rows += reversed(part)
            chunk = max(1, len(part) // 2)
            continue
        others = pa.RecordBatch.from_pylist(part, schema=_OTHER_COLUMNS)
        columns = others.columns
        columns.insert(_TEXT_COLUMN, texts)
        batches.append(pa.RecordBatch.from_arrays(columns, schema=ARROW_SCHEMA))
    return pa.Table.from_batches(batches, schema=ARROW_SCHEMA)


def _text_column(values: list[str | bytes]) -> pa.Array | None:
    """A string array of texts or their UTF-8 bytes, built from one joined buffer and its offsets (a copy,
    and a UTF-8 check): pyarrow converts a str holding Chinese by encoding it (and keeps that encoding in
    the str), and bytes into a string array slowly. None when the texts exceed the array's 32-bit offsets."""
    if any(v is None for v in values):
        return pa.array([v.decode() if type(v) is bytes else v for v in values], pa.string())
    data = [v.encode() if type(v) is str else bytes(v) for v in values]
    offsets = list(itertools.accumulate(map(len, data), initial=0))
    if offsets[-1] > _MAX_OFFSET:
        return None
    array = pa.StringArray.from_buffers(len(data), pa.array(offsets, pa.int32()).buffers()[1], pa.py_buffer(b"".join(data)))
    array.validate(full=True)  # raises on text that is not UTF-8
    return array


def _file_order(row: dict) -> tuple:
    """Sort key of a data file's rows: patient, then effective time, nulls last (as pyarrow's sort_by with its
    defaults; stable, and str and aware datetime order agree with Arrow's UTF-8 and UTC order)."""
    patient, when = row.get("patient"), row.get("effective_time")
    return (patient is None, patient or "", when is None, when or _NO_TIME)


def _props(snap: Any) -> dict[str, str]:
    return snap.summary.additional_properties if snap.summary else {}


def added_files(table: Table, snapshots: list[Any]) -> list[str]:
    """Paths of the data files each of snapshots added (not those it only carried over)."""
    out: list[str] = []
    for snap in snapshots:
        for manifest in snap.manifests(table.io):
            if manifest.content != ManifestContent.DATA or manifest.added_snapshot_id != snap.snapshot_id:
                continue
            out += [e.data_file.file_path for e in manifest.fetch_manifest_entry(table.io, discard_deleted=True)
                    if e.status == ManifestEntryStatus.ADDED and e.snapshot_id == snap.snapshot_id]
    return out


def _unscanned(data: pa.Table, scanned: list[bool]) -> pa.Table:
    """data with the resource text of the rows scanned upstream blanked (scanned: one flag per row, in order)."""
    if not any(scanned):
        return data
    i = data.schema.get_field_index("resource")
    if all(scanned):
        return data.set_column(i, "resource", pa.nulls(data.num_rows, pa.string()))
    return data.set_column(i, "resource", pc.if_else(pa.array(scanned, pa.bool_()), pa.scalar(None, pa.string()), data.column("resource")))


def committed_snapshots(table: Table, run_id: str) -> list[int]:
    """Ids of the snapshots the commit just made (oldest first): the current snapshot and its
    ancestors while they carry run_id (one transaction commits a delete and an append as two)."""
    out: list[int] = []
    snap = table.current_snapshot()
    while snap is not None and (snap.summary.additional_properties if snap.summary else {}).get("hub.run-id") == run_id:
        out.append(snap.snapshot_id)
        snap = table.snapshot_by_id(snap.parent_snapshot_id) if snap.parent_snapshot_id is not None else None
    return out[::-1]
