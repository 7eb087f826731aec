"""Row positions and Iceberg position deletes: a changed row costs one delete entry, not a file rewrite.

pyiceberg (0.12) deletes copy-on-write only: replacing one row rewrites the whole data file that
held it, so 1 % of a partition's rows changed at random rewrote all of it (issue 11). Iceberg v2
has a cheaper form, which pyiceberg reads but does not write: a **position delete file** lists
(data file path, row position) pairs, and readers skip those rows (merge on read). This module
writes them:

- ``partition_rows`` reads a partition's live rows file by file, each with its data file and its
  position in that file (rows earlier masks removed are skipped, as a scan skips them), so a
  writer knows where every published row sits;
- ``write_position_deletes`` writes one delete file (Parquet, the spec's ``file_path``/``pos``
  columns, sorted) per masked data file: its path bounds name that file alone, so readers apply
  it to that file only and compaction can remove it with the file;
- ``stage_run_commit`` makes one snapshot of a run's new data files, its delete files and the data
  files it removes whole (all their rows gone), so no reader of any snapshot sees a replaced row
  twice; ``check_untouched`` (before the commit) and the snapshot's re-planning (after a
  concurrent commit) refuse it when another commit removed, or masked rows of, a file it masks
  or removes since its writer read the partition: a row is never masked in a file that is gone
  nor replaced twice. The messages name counts, never file statistics (which hold row values);
- ``compaction`` is pyiceberg's overwrite that also removes the delete files of the files a
  compaction rewrites (``masks_of``); a run removes those of the files it drops whole the same way.
"""

from __future__ import annotations

import posixpath
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.exceptions import ValidationException
from pyiceberg.expressions import AlwaysTrue, EqualTo
from pyiceberg.io.pyarrow import ArrowScan
from pyiceberg.manifest import (
    DataFile,
    DataFileContent,
    FileFormat,
    ManifestContent,
    ManifestEntry,
    ManifestEntryStatus,
    ManifestFile,
    ManifestWriterV2,
)
from pyiceberg.table import FileScanTask, Table, Transaction
from pyiceberg.table.snapshots import Operation
from pyiceberg.table.update.snapshot import _OverwriteFiles
from pyiceberg.table.update.validate import _validate_data_files_exist
from pyiceberg.typedef import EMPTY_DICT

#: The spec's reserved field ids of a position delete file's columns.
PATH_FIELD_ID, POS_FIELD_ID = 2147483546, 2147483545
DELETE_SCHEMA = pa.schema([
    pa.field("file_path", pa.string(), nullable=False, metadata={b"PARQUET:field_id": str(PATH_FIELD_ID).encode()}),
    pa.field("pos", pa.int64(), nullable=False, metadata={b"PARQUET:field_id": str(POS_FIELD_ID).encode()}),
])


def _masked(table: Table, delete_files: Iterable[DataFile], cache: dict[str, dict[str, list[int]]], path: str) -> set[int]:
    """The positions of path that delete_files mask; each delete file is read once per cache."""
    found: set[int] = set()
    for delete_file in delete_files:
        if delete_file.content != DataFileContent.POSITION_DELETES:
            raise ValueError(f"{delete_file.file_path}: only position deletes are supported, not {delete_file.content.name}")
        by_path = cache.get(delete_file.file_path)
        if by_path is None:
            with table.io.new_input(delete_file.file_path).open() as f:
                data = pq.read_table(f, columns=["file_path", "pos"]).group_by("file_path").aggregate([("pos", "list")])
            by_path = cache[delete_file.file_path] = dict(zip(data.column("file_path").to_pylist(), data.column("pos_list").to_pylist(), strict=True))
        found.update(by_path.get(path, ()))
    return found


def partition_rows(table: Table, institution: str, columns: tuple[str, ...]) -> Iterator[tuple[DataFile, pa.RecordBatch, pa.Array]]:
    """(data file, a batch of its live rows with columns, their positions in the file) for every data file of
    the institution's partition in the table's current snapshot, file by file, in file order."""
    if table.current_snapshot() is None:
        return
    tasks = table.scan(row_filter=EqualTo("institution", institution), selected_fields=columns).plan_files()
    wanted = (*columns, "institution") if "institution" not in columns else columns
    projected = table.schema().select(*wanted)
    cache: dict[str, dict[str, list[int]]] = {}
    reader = ArrowScan(table.metadata, table.io, projected, AlwaysTrue())
    for task in tasks:
        masked = _masked(table, task.delete_files, cache, task.file.file_path)
        value_set = pa.array(sorted(masked), pa.int64()) if masked else None
        start = 0  # every row of the file is read, in order (the masks are applied here, so positions stay known)
        for batch in reader.to_record_batches([FileScanTask(task.file, delete_files=set(), residual=AlwaysTrue())]):
            positions = pa.array(range(start, start + batch.num_rows), pa.int64())
            start += batch.num_rows
            keep = pc.equal(batch.column("institution"), institution)  # all of them in a table partitioned by institution
            if value_set is not None:
                keep = pc.and_(keep, pc.invert(pc.is_in(positions, value_set=value_set)))
            batch, positions = batch.filter(keep), positions.filter(keep)
            yield task.file, batch.select(list(columns)), positions
        if start != task.file.record_count:
            raise ValueError(f"{task.file.file_path}: {start} rows read, its manifest says {task.file.record_count}")


def write_position_deletes(table: Table, data_file: DataFile, positions: list[int]) -> DataFile:
    """Write one position delete file masking positions (sorted) of one data file; returns it, not yet part of the
    table (``stage_run_commit``). One delete file per data file: its path bounds name that file alone, so a
    reader applies it to that file only (a file spanning several paths is read for every file between them)."""
    if not positions:
        raise ValueError("write_position_deletes: no positions")
    # beside the data files of the partition: a killed run's delete file is an orphan of that partition too
    location = f"{posixpath.dirname(data_file.file_path)}/{uuid.uuid4()}-deletes.parquet"
    data = pa.Table.from_arrays([pa.array([data_file.file_path] * len(positions), pa.string()), pa.array(positions, pa.int64())],
                                schema=DELETE_SCHEMA)
    with table.io.new_output(location).create(overwrite=False) as fo:
        pq.write_table(data, fo, compression="zstd")
    try:
        spec_id = data_file.spec_id
    except AttributeError:  # a DataFile pyiceberg just wrote carries no spec id until read back from a manifest
        spec_id = table.metadata.default_spec_id
    path = data_file.file_path.encode()
    return DataFile.from_args(
        content=DataFileContent.POSITION_DELETES, file_path=location, file_format=FileFormat.PARQUET,
        partition=data_file.partition, record_count=len(positions), file_size_in_bytes=len(table.io.new_input(location)),
        lower_bounds={PATH_FIELD_ID: path, POS_FIELD_ID: positions[0].to_bytes(8, "little", signed=True)},
        upper_bounds={PATH_FIELD_ID: path, POS_FIELD_ID: positions[-1].to_bytes(8, "little", signed=True)},
        sort_order_id=None, spec_id=spec_id, equality_ids=None, key_metadata=None)


class _DeleteManifestWriter(ManifestWriterV2):
    """A v2 manifest of content ``deletes`` (pyiceberg writes only data manifests)."""

    def content(self) -> ManifestContent:
        return ManifestContent.DELETES

    @property
    def _meta(self) -> dict[str, str]:
        return {**super()._meta, "content": "deletes"}


def _masked_since(table: Table, head: Any, base: Any, paths: set[str]) -> set[str]:
    """Those of paths that a delete file added after snapshot base, up to head, may mask rows of (by its path
    bounds; one without bounds counts for every path). Raises ValidationException when base is not an ancestor
    of head (the history was rolled back or expired meanwhile)."""
    hit: set[str] = set()
    by_id = {s.snapshot_id: s for s in table.metadata.snapshots}
    snap = head
    while snap is not None and (base is None or snap.snapshot_id != base.snapshot_id):
        for manifest in snap.manifests(table.io):
            if manifest.content != ManifestContent.DELETES or manifest.added_snapshot_id != snap.snapshot_id:
                continue
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
                if entry.status != ManifestEntryStatus.ADDED or entry.snapshot_id != snap.snapshot_id:
                    continue
                lo, hi = (entry.data_file.lower_bounds or {}).get(PATH_FIELD_ID), (entry.data_file.upper_bounds or {}).get(PATH_FIELD_ID)
                hit |= paths if lo is None or hi is None else {p for p in paths if lo <= p.encode() <= hi}
        snap = by_id.get(snap.parent_snapshot_id) if snap.parent_snapshot_id is not None else None
    if base is not None and snap is None:
        raise ValidationException("the snapshot the rows were read from is no longer an ancestor of the table's current one")
    return hit


def _check_untouched(table: Table, head: Any, base: Any, files: set[DataFile]) -> None:
    """Raise ValidationException (naming counts, never values) if a commit after base, up to head, removed one of
    files or masked rows of one: the rows a commit masks must be where its writer read them."""
    if not files or head is None or (base is not None and head.snapshot_id == base.snapshot_id):
        return
    try:
        _validate_data_files_exist(table, head, files, base)
    except ValidationException:
        raise ValidationException(f"{len(files)} data file(s) whose rows this commit masks or removes: "
                                  "at least one was removed by another commit meanwhile") from None
    masked = _masked_since(table, head, base, {f.file_path for f in files})
    if masked:
        raise ValidationException(f"rows of {len(masked)} data file(s) this commit masks or removes were masked by "
                                  "another commit meanwhile")


def check_untouched(table: Table, read_at: int | None, files: set[DataFile]) -> None:
    """``_check_untouched`` from snapshot read_at (when a writer read the partition) to the catalog's current
    metadata (a commit landing after this check is caught by the commit's own re-planning)."""
    if not files or read_at is None:
        return
    fresh = table.catalog.load_table(table.name())
    base = fresh.snapshot_by_id(read_at)
    if base is None:
        raise ValidationException("the snapshot the rows were read from is no longer in the table's history")
    _check_untouched(fresh, fresh.current_snapshot(), base, files)


def _carried(entry: ManifestEntry, status: ManifestEntryStatus, snapshot_id: int | None) -> ManifestEntry:
    """entry with a new status (and the snapshot that gives it), keeping its file and sequence numbers."""
    return ManifestEntry.from_args(status=status, snapshot_id=snapshot_id, sequence_number=entry.sequence_number,
                                   file_sequence_number=entry.file_sequence_number, data_file=entry.data_file)


class _Changes(_OverwriteFiles):
    """pyiceberg's overwrite that also adds and removes position delete files, each in a manifest of content
    ``deletes`` (pyiceberg would write their entries into data manifests, or leave them out)."""

    def __init__(self, transaction: Transaction, io: Any, snapshot_properties: dict[str, str]):
        super().__init__(Operation.OVERWRITE, transaction, io, snapshot_properties=snapshot_properties)
        self._delete_files: list[DataFile] = []
        self._removed_deletes: list[DataFile] = []

    def add_delete_file(self, delete_file: DataFile) -> _Changes:
        self._delete_files.append(delete_file)
        return self

    def remove_delete_file(self, delete_file: DataFile) -> _Changes:
        self._removed_deletes.append(delete_file)
        return self

    def _writer(self, spec_id: int, content: ManifestContent) -> Any:
        if content == ManifestContent.DELETES:
            return _DeleteManifestWriter(spec=self.spec(spec_id), schema=self.schema(), output_file=self.new_manifest_output(),
                                         snapshot_id=self._snapshot_id, avro_compression=self._compression)
        return self.new_manifest_writer(self.spec(spec_id))

    def _existing_manifests(self) -> list[ManifestFile]:
        removed = {f.file_path for f in self._deleted_data_files} | {f.file_path for f in self._removed_deletes}
        snapshot = self._transaction.table_metadata.snapshot_by_name(name=self._target_branch)
        out: list[ManifestFile] = []
        for manifest in snapshot.manifests(io=self._io) if snapshot else []:
            if not (manifest.has_added_files() or manifest.has_existing_files()):
                continue  # only entries of files removed before: the history, not this snapshot's files
            if not removed or not self._build_manifest_evaluator(manifest.partition_spec_id)(manifest):
                out.append(manifest)
                continue
            entries = manifest.fetch_manifest_entry(io=self._io, discard_deleted=True)
            kept = [e for e in entries if e.data_file.file_path not in removed]
            if len(kept) == len(entries):
                out.append(manifest)
            elif kept:
                with self._writer(manifest.partition_spec_id, manifest.content) as writer:
                    for e in kept:
                        writer.add_entry(_carried(e, ManifestEntryStatus.EXISTING, e.snapshot_id))
                out.append(writer.to_manifest_file())
        return out

    def _manifests(self) -> list[ManifestFile]:
        manifests = super()._manifests()  # added data files, removed data files, and _existing_manifests above
        spec_id = self._transaction.table_metadata.default_spec_id
        if self._delete_files:
            with self._writer(spec_id, ManifestContent.DELETES) as writer:
                for delete_file in self._delete_files:
                    writer.add(ManifestEntry.from_args(status=ManifestEntryStatus.ADDED, snapshot_id=self._snapshot_id,
                                                       sequence_number=None, file_sequence_number=None, data_file=delete_file))
            manifests.append(writer.to_manifest_file())
        if self._removed_deletes:
            removed = {f.file_path for f in self._removed_deletes}
            snapshot = self._transaction.table_metadata.snapshot_by_name(name=self._target_branch)
            entries = [e for m in snapshot.manifests(io=self._io) if m.content == ManifestContent.DELETES
                       for e in m.fetch_manifest_entry(io=self._io, discard_deleted=True) if e.data_file.file_path in removed]
            if len(entries) != len(removed):
                raise ValidationException(f"{len(removed) - len(entries)} position delete file(s) to remove are not in the table")
            with self._writer(spec_id, ManifestContent.DELETES) as writer:
                for e in entries:
                    writer.add_entry(_carried(e, ManifestEntryStatus.DELETED, self._snapshot_id))
            manifests.append(writer.to_manifest_file())
        return manifests

    def _summary(self, snapshot_properties: dict[str, str] = EMPTY_DICT) -> Any:
        added, removed = self._added_data_files, self._deleted_data_files  # the summary counts delete files by content
        self._added_data_files, self._deleted_data_files = [*added, *self._delete_files], {*removed, *self._removed_deletes}
        try:
            return super()._summary(snapshot_properties)
        finally:
            self._added_data_files, self._deleted_data_files = added, removed


class _RunCommit(_Changes):
    """One snapshot for a run's changes to a table: its new data files, the position delete files masking the
    rows it replaced or deleted, and the data files it removed whole (with their masks); readers of any snapshot
    see each id once. Re-planned after a concurrent commit, it checks that nothing removed or masked rows of
    the files it masks or removes (``touched``) since the transaction began."""

    def __init__(self, transaction: Transaction, io: Any, touched: set[DataFile], snapshot_properties: dict[str, str]):
        super().__init__(transaction, io, snapshot_properties)
        self._touched = touched

    def _validate_concurrency(self) -> None:
        window = self._commit_window
        if window is None or window.is_empty() or window.head is None:
            return
        _check_untouched(self._transaction._table, window.head, window.base, self._touched)


def stage_run_commit(tx: Transaction, data_files: list[DataFile], delete_files: list[DataFile], removed: list[DataFile],
                     removed_masks: list[DataFile], touched: set[DataFile], props: dict[str, str]) -> None:
    """Stage a run's changes to one table in tx as one snapshot (committed with the transaction). removed_masks:
    the delete files of the removed data files. touched: the table's data files (as read before this
    transaction) that delete_files mask rows of or that are removed."""
    producer = _RunCommit(tx, tx._table.io, touched, props)
    for f in data_files:
        producer.append_data_file(f)
    for f in delete_files:
        producer.add_delete_file(f)
    for f in removed:
        producer.delete_data_file(f)
    for f in removed_masks:
        producer.remove_delete_file(f)
    producer.commit()


def compaction(tx: Transaction, props: dict[str, str]) -> _Changes:
    """An overwrite for a compaction (a context manager, like pyiceberg's): delete_data_file, append_data_file,
    delete_by_predicate as pyiceberg's, and remove_delete_file for the masks of the files it rewrites, which go
    with them: no mask outlives its file, and the snapshot's position delete count is that of the masks in force."""
    return _Changes(tx, tx._table.io, props)


def masks_of(task: Any) -> list[DataFile]:
    """The position delete files of a scan task that mask rows of its data file alone (exact path bounds)."""
    path = task.file.file_path.encode()
    return [d for d in task.delete_files
            if (d.lower_bounds or {}).get(PATH_FIELD_ID) == path and (d.upper_bounds or {}).get(PATH_FIELD_ID) == path]
