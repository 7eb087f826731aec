"""Per-run scratch indexes kept on disk, so a run's memory does not grow with the rows it reads.

``PublishedRows`` is what a ``TableWriter`` knows of the rows published in its (table,
institution) partition: for each resource id, its content hash, source update time, source-key
hash, source table, key id and source row hash, and where it sits (its data file, as a number the
writer assigns, and its position in that file: what a position delete names). It is rebuilt from
Iceberg at the start of each run (streamed file by file into a temporary SQLite file) and asked in
batches: the ids of a flush, the source-key hashes of a batch of source rows, an anti-join for
deletion detection. It also keeps the positions the run masks until its commit writes them.

``KeySet`` is a set of strings (source-key hashes seen in a block) with the same storage.

Both are scratch by default: one temporary file each, in the system temp directory (``TMPDIR``)
unless told otherwise, with no journal and no fsync (a crash loses nothing: the next run rebuilds
them), unnamed once open and freed when closed, collected or the process ends.

A ``PublishedRows`` can also be **kept** between runs (``PublishedRows(keep=path)``): a file of the
workspace, journaled (WAL), locked by one process at a time, stamped with the table and snapshot it
reflects (``stamp``). Its writer stamps it after each commit and reuses it when no commit touched the
partition since (``hub.lakehouse.writer``), so a run that changes 1 % of a partition does not read the
other 99 % again. An unstamped file (a run that died before committing) is rebuilt. SQLite's page cache (a
few MiB each) is all they hold in memory; the file takes about 0.5 KB per published row.
Rows are kept in the order they were first indexed, like a dict's insertion order, so a
question that several rows answer (two ids with one source-key hash) gets the same answer a
dict of them would give: the last one indexed.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import functools
import os
import sqlite3
import tempfile
import weakref
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from hub.errors import CommandFailed

T = TypeVar("T")

#: The columns of the published rows the index holds, in the order of its tuples.
COLUMNS = ("id", "content_hash", "source_updated_at", "source_key_hash", "source_table", "key_id", "source_row_hash")
#: Where a row sits: its data file's number (the writer's) and its position in that file.
LOCATION = ("_file", "_pos")
#: Values per SQL statement (SQLite's limit on bound parameters is far above this).
CHUNK = 500
#: Rows turned into Python values at once while the index is filled.
FILL_ROWS = 10_000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_US = dt.timedelta(microseconds=1)

Published = tuple[str | None, dt.datetime | None, str | None, str | None, str | None, str | None]


def to_us(value: dt.datetime | None) -> int | None:
    """Microseconds since the epoch (UTC) of a datetime; a naive one is taken as UTC, as Iceberg stores it."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return (value - _EPOCH) // _US


def from_us(value: int | None) -> dt.datetime | None:
    """The UTC datetime of microseconds since the epoch (exact: timestamps are microseconds in Iceberg and Python)."""
    return None if value is None else _EPOCH + dt.timedelta(microseconds=value)


def _chunks(values: Iterable[Any], n: int = CHUNK) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for v in values:
        chunk.append(v)
        if len(chunk) >= n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _disk_errors(method: Callable[..., T]) -> Callable[..., T]:
    """A scratch file that cannot be written (its disk is full, say) fails the run with what to do about it."""
    @functools.wraps(method)
    def wrapper(self: _Scratch, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.OperationalError as exc:
            raise CommandFailed(f"the run's index of published rows in {os.path.dirname(self.path)} could not be written ({exc}); "
                                "free space there or point TMPDIR at a larger disk, then run again (nothing was committed)", 2) from exc
    return wrapper


def _close(conn: sqlite3.Connection, path: str, lock: int | None = None) -> None:
    conn.close()
    if lock is not None:  # a kept file: it stays, its lock goes
        os.close(lock)
        return
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class Busy(Exception):
    """A kept index is open in another process."""


class _Scratch:
    """A temporary SQLite file, removed on close() or when the object is collected. On POSIX systems its
    name is removed as soon as it is open, so even a killed run leaves nothing behind (the space is
    freed when the process ends); elsewhere the file is removed on close."""

    def __init__(self, directory: Path | str | None, prefix: str, cache_kib: int, keep: Path | None = None):
        if keep is not None:
            self._open_kept(Path(keep), cache_kib)
            return
        fd, self.path = tempfile.mkstemp(prefix=prefix, suffix=".sqlite", dir=directory)
        os.close(fd)
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            for pragma in ("journal_mode=OFF", "synchronous=OFF", "temp_store=FILE", f"cache_size=-{cache_kib}"):
                self.db.execute(f"PRAGMA {pragma}")
        except BaseException:
            if hasattr(self, "db"):
                self.db.close()
            os.unlink(self.path)
            raise
        if os.name == "posix":  # no journal is ever made, so nothing else looks for the file by its name
            os.unlink(self.path)
        self._finalizer = weakref.finalize(self, _close, self.db, self.path)

    def _open_kept(self, path: Path, cache_kib: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = str(path)
        lock = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock)
            raise Busy(self.path) from None
        try:
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))  # SQLite gives its -wal and -shm the same mode
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "temp_store=FILE", f"cache_size=-{cache_kib}"):
                self.db.execute(f"PRAGMA {pragma}")
        except BaseException:
            if hasattr(self, "db"):
                self.db.close()
            os.close(lock)
            raise
        self._finalizer = weakref.finalize(self, _close, self.db, self.path, lock)

    def close(self) -> None:
        """Remove the file, or for a kept one close it (idempotent)."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive


class PublishedRows(_Scratch):
    """The published rows of one (table, institution) partition, for one run: see the module docstring."""

    def __init__(self, directory: Path | str | None = None, cache_kib: int = 4096, *, keep: Path | None = None):
        """keep: the file of a kept index (raises Busy when another process has it open); else a scratch one."""
        try:
            super().__init__(directory, "hub-published-", cache_kib, keep)
            self._schema()
        except sqlite3.DatabaseError:
            if keep is None:
                raise
            if hasattr(self, "_finalizer"):
                self.close()
            else:  # it failed while opening: its lock is released by the failed open, the file is left to remove
                self.path = str(keep)
            self._remove_files()  # not a database any more (a torn or foreign file): start it again
            super().__init__(directory, "hub-published-", cache_kib, keep)
            self._schema()
        self._files: dict[str, int] = {}

    def _schema(self) -> None:
        self.db.execute("CREATE TABLE IF NOT EXISTS rows (id TEXT NOT NULL, content_hash TEXT, updated_us INTEGER, skh TEXT, "
                        "source_table TEXT, key_id TEXT, row_hash TEXT, file INTEGER, pos INTEGER)")
        self.db.execute("CREATE TABLE IF NOT EXISTS masked (file INTEGER NOT NULL, pos INTEGER NOT NULL, PRIMARY KEY (file, pos)) WITHOUT ROWID")
        self.db.execute("CREATE TABLE IF NOT EXISTS files (no INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, live INTEGER NOT NULL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT)")
        self._indexed = self.db.execute("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'rows_id'").fetchone() is not None

    def discard(self) -> None:
        """Close a kept index and remove its files (the next open starts empty)."""
        self.close()
        self._remove_files()

    def _remove_files(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            try:
                os.unlink(self.path + suffix)
            except FileNotFoundError:
                pass

    @property
    def stamp(self) -> str | None:
        """What the index reflects (the writer's "table uuid:snapshot id"), or None: not known (being changed)."""
        row = self.db.execute("SELECT v FROM meta WHERE k = 'stamp'").fetchone()
        return row[0] if row else None

    @_disk_errors
    def set_stamp(self, stamp: str | None) -> None:
        self.db.execute("INSERT INTO meta VALUES ('stamp', ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v", (stamp,))

    @_disk_errors
    def file_number(self, path: str, live: int = 0) -> int:
        """The number of a data file (given at its first sight, with live rows in it); adds live to its count."""
        no = self._files.get(path)
        if no is None:
            row = self.db.execute("SELECT no FROM files WHERE path = ?", (path,)).fetchone()
            no = row[0] if row else self.db.execute("INSERT INTO files (path, live) VALUES (?, 0)", (path,)).lastrowid
            self._files[path] = no
        if live:
            self.db.execute("UPDATE files SET live = live + ? WHERE no = ?", (live, no))
        return no

    def files_of(self, nos: Iterable[int]) -> dict[int, tuple[str, int]]:
        """file number -> (path, live rows when read or written) of those of nos known."""
        out: dict[int, tuple[str, int]] = {}
        for chunk in _chunks(nos):
            for no, path, live in self.db.execute(f"SELECT no, path, live FROM files WHERE no IN ({','.join('?' * len(chunk))})", chunk):
                out[no] = (path, live)
        return out

    @_disk_errors
    def committed(self, stamp: str) -> None:
        """The run's masks are committed: count them out of their files' live rows (a file left with none is
        forgotten), forget them, and stamp the index."""
        self.db.execute("BEGIN")
        self.db.execute("UPDATE files SET live = live - (SELECT count(*) FROM masked WHERE masked.file = files.no) "
                        "WHERE no IN (SELECT DISTINCT file FROM masked)")
        self.db.execute("DELETE FROM files WHERE live <= 0")
        self.db.execute("DELETE FROM masked")
        self.db.execute("INSERT INTO meta VALUES ('stamp', ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v", (stamp,))
        self.db.execute("COMMIT")
        self._files.clear()

    @_disk_errors
    def fill(self, batches: Iterable[pa.RecordBatch]) -> int:
        """Add the rows of batches (each with the COLUMNS, and the LOCATION if known) to an empty index, then
        index them; returns how many.
        Loaded before indexing (sorting once is much faster than growing a B-tree row by row). An id found
        twice (it should not be) keeps the values of its last row, as a dict filled in scan order would, and
        the places of its other rows are masked (``masked``), so the run's commit publishes it once again."""
        if self._indexed:
            raise RuntimeError("PublishedRows.fill: the index is already filled")
        n = 0
        self.db.execute("BEGIN")
        for whole in batches:
            for start in range(0, whole.num_rows, FILL_ROWS):  # a scan batch can be large: few Python objects at once
                batch = whole.slice(start, FILL_ROWS)
                cols = [batch.column(batch.schema.get_field_index(c)) for c in COLUMNS]
                cols[2] = pc.cast(cols[2], pa.int64())  # timestamp[us, UTC] -> microseconds since the epoch
                values = [c.to_pylist() for c in cols]
                for c in LOCATION:
                    i = batch.schema.get_field_index(c)
                    values.append(batch.column(i).to_pylist() if i >= 0 else [None] * batch.num_rows)
                self.db.executemany("INSERT INTO rows VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", zip(*values, strict=True))
                n += batch.num_rows
        self.db.execute("COMMIT")
        try:
            self.db.execute("CREATE UNIQUE INDEX rows_id ON rows (id)")
        except sqlite3.IntegrityError:  # an id published twice: the other copies are masked at the run's commit
            self.db.execute("INSERT OR IGNORE INTO masked SELECT file, pos FROM rows WHERE file IS NOT NULL "
                            "AND rowid NOT IN (SELECT max(rowid) FROM rows GROUP BY id)")
            self.db.execute("DELETE FROM rows WHERE rowid NOT IN (SELECT max(rowid) FROM rows GROUP BY id)")
            self.db.execute("CREATE UNIQUE INDEX rows_id ON rows (id)")
        self.db.execute("CREATE INDEX rows_key ON rows (source_table, key_id, skh)")
        self._indexed = True
        return n

    def _ready(self) -> None:
        if not self._indexed:
            self.fill(())

    def __len__(self) -> int:
        return self.db.execute("SELECT count(*) FROM rows").fetchone()[0]

    @_disk_errors
    def lookup(self, ids: Iterable[str]) -> dict[str, Published]:
        """id -> (content hash, source update time, source-key hash, source table, key id, source row hash) of each of ids held."""
        self._ready()
        out: dict[str, Published] = {}
        for chunk in _chunks(ids):
            sql = f"SELECT id, content_hash, updated_us, skh, source_table, key_id, row_hash FROM rows WHERE id IN ({','.join('?' * len(chunk))})"
            for rid, ch, us, skh, st, kid, rh in self.db.execute(sql, chunk):
                out[rid] = (ch, from_us(us), skh, st, kid, rh)
        return out

    @_disk_errors
    def upsert(self, rows: Iterable[tuple]) -> None:
        """Index rows (tuples in COLUMNS order, then optionally the LOCATION): an id held already keeps its place
        and takes the new values."""
        self._ready()
        self.db.execute("BEGIN")
        self.db.executemany(
            "INSERT INTO rows VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET content_hash = excluded.content_hash, "
            "updated_us = excluded.updated_us, skh = excluded.skh, source_table = excluded.source_table, "
            "key_id = excluded.key_id, row_hash = excluded.row_hash, file = excluded.file, pos = excluded.pos",
            ((row[0], row[1], to_us(row[2]), *row[3:7], *(row[7:9] if len(row) > 7 else (None, None))) for row in rows))
        self.db.execute("COMMIT")

    @_disk_errors
    def locate(self, ids: Iterable[str]) -> dict[str, tuple[int, int]]:
        """id -> (file number, position) of each of ids held whose place is known."""
        self._ready()
        out: dict[str, tuple[int, int]] = {}
        for chunk in _chunks(ids):
            sql = f"SELECT id, file, pos FROM rows WHERE id IN ({','.join('?' * len(chunk))}) AND file IS NOT NULL"
            for rid, file, pos in self.db.execute(sql, chunk):
                out[rid] = (file, pos)
        return out

    @_disk_errors
    def mask_other_keys(self, key_id: str | None) -> None:
        """Mask the place of every row held that was made with a key other than key_id."""
        self._ready()
        self.db.execute("INSERT OR IGNORE INTO masked SELECT file, pos FROM rows WHERE key_id IS NOT ? AND file IS NOT NULL", (key_id,))

    @_disk_errors
    def mask(self, places: Iterable[tuple[int, int]]) -> None:
        """Remember (file number, position) pairs as deleted by this run (until ``masked`` is asked at commit)."""
        self.db.execute("BEGIN")
        self.db.executemany("INSERT OR IGNORE INTO masked VALUES (?, ?)", places)
        self.db.execute("COMMIT")

    def masked_files(self) -> dict[int, int]:
        """file number -> how many of its positions this run masked."""
        return dict(self.db.execute("SELECT file, count(*) FROM masked GROUP BY file"))

    def masked(self, file: int) -> list[int]:
        """The positions of file this run masked, in order."""
        return [pos for (pos,) in self.db.execute("SELECT pos FROM masked WHERE file = ? ORDER BY pos", (file,))]


    def _by_key(self, what: str, source_table: str, key_id: str | None, skhs: Iterable[str]) -> Iterator[tuple]:
        self._ready()
        for chunk in _chunks(set(skhs)):
            yield from self.db.execute(
                f"SELECT {what} FROM rows WHERE source_table IS ? AND key_id IS ? AND skh IN ({','.join('?' * len(chunk))}) "
                "AND row_hash IS NOT NULL ORDER BY rowid", [source_table, key_id, *chunk])

    @_disk_errors
    def row_hashes(self, source_table: str, key_id: str | None, skhs: Iterable[str]) -> dict[str, str]:
        """source-key hash -> source row hash of the rows held from source_table under key_id, for those of skhs
        (rows without a source row hash are left out; of two rows with one source-key hash, the later indexed)."""
        out: dict[str, str] = {}
        for skh, rh in self._by_key("skh, row_hash", source_table, key_id, skhs):
            out[skh] = rh
        return out

    @_disk_errors
    def has(self, source_table: str, key_id: str | None, skhs: Iterable[str]) -> set[str]:
        """Those of skhs that row_hashes would answer for."""
        return {skh for (skh,) in self._by_key("skh", source_table, key_id, skhs)}

    @_disk_errors
    def missing_keys(self, source_table: str, key_id: str | None, seen: Iterable[str]) -> list[tuple[str, str | None]]:
        """(id, source-key hash) of each row held from source_table under key_id whose source-key hash is not in seen,
        in index order (an anti-join against seen, loaded into a temporary table)."""
        self._ready()
        self.db.execute("CREATE TEMP TABLE IF NOT EXISTS seen (skh TEXT PRIMARY KEY) WITHOUT ROWID")
        try:
            self.db.execute("BEGIN")
            for chunk in _chunks(seen, 10_000):
                self.db.executemany("INSERT OR IGNORE INTO seen VALUES (?)", ((s,) for s in chunk))
            self.db.execute("COMMIT")
            return self.db.execute(
                "SELECT id, skh FROM rows WHERE source_table IS ? AND key_id IS ? "
                "AND NOT EXISTS (SELECT 1 FROM seen WHERE seen.skh = rows.skh) ORDER BY rowid", (source_table, key_id)).fetchall()
        finally:
            self.db.execute("DROP TABLE temp.seen")

    @_disk_errors
    def drop_other_keys(self, key_id: str | None) -> int:
        """Remove the rows made with a key other than key_id; returns how many."""
        self._ready()
        return self.db.execute("DELETE FROM rows WHERE key_id IS NOT ?", (key_id,)).rowcount

    @_disk_errors
    def delete(self, ids: Iterable[str]) -> None:
        """Remove the rows of ids (those not held are ignored)."""
        self._ready()
        self.db.execute("BEGIN")
        for chunk in _chunks(ids):
            self.db.execute(f"DELETE FROM rows WHERE id IN ({','.join('?' * len(chunk))})", chunk)
        self.db.execute("COMMIT")


class KeySet(_Scratch):
    """A set of strings on disk, asked and grown a batch at a time (the source-key hashes a block has seen)."""

    def __init__(self, directory: Path | str | None = None, cache_kib: int = 2048):
        super().__init__(directory, "hub-keys-", cache_kib)
        self.db.execute("CREATE TABLE keys (k TEXT PRIMARY KEY) WITHOUT ROWID")

    @_disk_errors
    def has(self, keys: Iterable[str]) -> set[str]:
        """Those of keys in the set."""
        out: set[str] = set()
        for chunk in _chunks(set(keys)):
            out.update(k for (k,) in self.db.execute(f"SELECT k FROM keys WHERE k IN ({','.join('?' * len(chunk))})", chunk))
        return out

    @_disk_errors
    def add(self, keys: Iterable[str]) -> None:
        self.db.execute("BEGIN")
        self.db.executemany("INSERT OR IGNORE INTO keys VALUES (?)", ((k,) for k in keys))
        self.db.execute("COMMIT")

    def __len__(self) -> int:
        return self.db.execute("SELECT count(*) FROM keys").fetchone()[0]

    def __iter__(self) -> Iterator[str]:
        cur = self.db.execute("SELECT k FROM keys")
        while rows := cur.fetchmany(10_000):
            yield from (k for (k,) in rows)

    def __contains__(self, key: object) -> bool:
        return self.db.execute("SELECT 1 FROM keys WHERE k = ?", (key,)).fetchone() is not None
