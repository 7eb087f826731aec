"""Row positions and Iceberg position deletes: a changed row costs one delete entry, not a file rewrite.

pyiceberg (0.12) deletes copy-on-write only: replacing one row rewrites the whole data file that
held it, so 1 % of a partition's rows changed at random rewrote all of it (issue 11). Iceberg v2
has a cheaper form, which pyiceberg reads but does not write: a **position delete file** lists
(data file path, row position) pairs, and readers skip those rows (merge on read). This module
writes them:

- ``partition_rows`` reads a partition's live rows file by file, each with its data file and its
  position in that file (the rows earlier position deletes removed are skipped, as a scan skips
  them), so a writer knows where every published row sits;
- ``write_position_deletes`` writes one delete file (Parquet, the spec's ``file_path``/``pos``
  columns, sorted) for positions in data files of one partition;
- ``commit_position_deletes`` adds such files to a transaction as one snapshot (operation
  ``delete``, a manifest of content ``deletes``). Re-planned after a concurrent commit, it checks
  that no data file it masks rows of was removed meanwhile, and that no other commit masked rows
  of them meanwhile (a second writer replacing the same row): either raises ``ValidationException``,
  which the writer reports as a conflict, so a row is never masked in a file that is gone nor
  replaced twice.

A data file all of whose rows a run deletes is removed whole instead (``TableWriter`` does that):
masks cost every later read until compaction, and a fully masked file is only dead weight.
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
    ManifestWriter,
    ManifestWriterV2,
)
from pyiceberg.table import FileScanTask, Table, Transaction
from pyiceberg.table.snapshots import Operation
from pyiceberg.table.update.snapshot import _FastAppendFiles, _OverwriteFiles
from pyiceberg.table.update.validate import (
    _validate_data_files_exist,
    _validate_no_new_deletes_for_data_files,
)

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


def write_position_deletes(table: Table, like: DataFile, rows: Iterable[tuple[str, int]]) -> DataFile:
    """Write one position delete file masking rows ((data file path, position), sorted by both, in data
    files of like's partition); returns it, not yet part of the table (``commit_position_deletes``)."""
    paths, positions = [], []
    for path, pos in rows:
        paths.append(path)
        positions.append(pos)
    if not paths:
        raise ValueError("write_position_deletes: no rows")
    # beside the data files of the partition: a killed run's delete file is an orphan of that partition too
    location = f"{posixpath.dirname(like.file_path)}/{uuid.uuid4()}-deletes.parquet"
    data = pa.Table.from_arrays([pa.array(paths, pa.string()), pa.array(positions, pa.int64())], schema=DELETE_SCHEMA)
    output = table.io.new_output(location)
    with output.create(overwrite=False) as fo:
        pq.write_table(data, fo, compression="zstd")
    size = len(table.io.new_input(location))
    lo, hi = min(paths), max(paths)
    try:
        spec_id = like.spec_id
    except AttributeError:  # a DataFile pyiceberg just wrote carries no spec id until read back from a manifest
        spec_id = table.metadata.default_spec_id
    return DataFile.from_args(
        content=DataFileContent.POSITION_DELETES, file_path=location, file_format=FileFormat.PARQUET,
        partition=like.partition, record_count=len(paths), file_size_in_bytes=size,
        lower_bounds={PATH_FIELD_ID: lo.encode(), POS_FIELD_ID: int(min(positions)).to_bytes(8, "little", signed=True)},
        upper_bounds={PATH_FIELD_ID: hi.encode(), POS_FIELD_ID: int(max(positions)).to_bytes(8, "little", signed=True)},
        sort_order_id=None, spec_id=spec_id, equality_ids=None, key_metadata=None)


class _DeleteManifestWriter(ManifestWriterV2):
    """A v2 manifest of content ``deletes`` (pyiceberg writes only data manifests)."""

    def content(self) -> ManifestContent:
        return ManifestContent.DELETES

    @property
    def _meta(self) -> dict[str, str]:
        return {**super()._meta, "content": "deletes"}


class _PositionDeletes(_FastAppendFiles):
    """A snapshot that adds position delete files: every manifest of its parent kept, one new deletes manifest.
    masks: the data files its delete files mask rows of, that were in the table when the writer read it."""

    def __init__(self, transaction: Transaction, io: Any, masks: set[DataFile], snapshot_properties: dict[str, str]):
        super().__init__(Operation.DELETE, transaction, io, snapshot_properties=snapshot_properties)
        self._masks = masks

    def new_manifest_writer(self, spec: Any) -> ManifestWriter:
        return _DeleteManifestWriter(spec=spec, schema=self.schema(), output_file=self.new_manifest_output(),
                                     snapshot_id=self._snapshot_id, avro_compression=self._compression)

    def _validate_concurrency(self) -> None:
        window = self._commit_window
        if window is None or window.is_empty() or window.head is None or not self._masks:
            return
        table = self._transaction._table
        _validate_data_files_exist(table, window.head, self._masks, window.base)
        _validate_no_new_deletes_for_data_files(table, window.head, None, self._masks, window.base)


def commit_position_deletes(tx: Transaction, delete_files: list[DataFile], masks: set[DataFile], props: dict[str, str]) -> None:
    """Stage delete_files in tx as one snapshot (committed with the transaction). masks: the table's data files
    (as read before this transaction) whose rows they mask; files this transaction adds need no check."""
    producer = _PositionDeletes(tx, tx._table.io, masks, props)
    for f in delete_files:
        producer.append_data_file(f)
    producer.commit()


class _DropFiles(_OverwriteFiles):
    """An overwrite that only removes the named data files; validated against exactly those files."""

    def __init__(self, transaction: Transaction, io: Any, snapshot_properties: dict[str, str]):
        super().__init__(Operation.OVERWRITE, transaction, io, snapshot_properties=snapshot_properties)

    def _validate_concurrency(self) -> None:
        window = self._commit_window
        if window is None or window.is_empty() or window.head is None:
            return
        table = self._transaction._table
        _validate_data_files_exist(table, window.head, self._deleted_data_files, window.base)
        _validate_no_new_deletes_for_data_files(table, window.head, None, self._deleted_data_files, window.base)


def drop_data_files(tx: Transaction, files: list[DataFile], institution: str, props: dict[str, str]) -> None:
    """Stage the removal of whole data files (all their rows deleted) in tx as one snapshot."""
    producer = _DropFiles(tx, tx._table.io, props)
    for f in files:
        producer.delete_data_file(f)
    producer.commit()


def validate_still_there(table: Table, read_at: int | None, files: set[DataFile]) -> None:
    """Raise ValidationException if, since snapshot read_at (when a writer read the partition), a commit removed
    one of files or masked rows of it: the rows a writer is about to mask must be where it read them. Reads the
    catalog's current metadata (a commit landing after this check is caught by the commit's own re-planning)."""
    if not files or read_at is None:
        return
    table = table.catalog.load_table(table.name())
    head = table.current_snapshot()
    if not files or head is None or read_at is None or head.snapshot_id == read_at:
        return
    base = table.snapshot_by_id(read_at)
    if base is None:
        raise ValidationException(f"the snapshot {read_at} the rows were read from is no longer in the table's history")
    _validate_data_files_exist(table, head, files, base)
    _validate_no_new_deletes_for_data_files(table, head, None, files, base)
