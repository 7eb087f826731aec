"""Lakehouse maintenance: compact small files, expire old snapshots (tagged ones kept), remove orphan files.

Each is a plain function over the Iceberg catalog; ``hub lakehouse compact|expire|orphans``
and the Dagster maintenance jobs call them. Compaction and expiry are publications of kind
``maintenance`` (``hub.lakehouse.sink``): their commits carry the publication's run id and
one signed manifest records them, so ``hub audit verify`` accounts for them like any other.

**Compaction** (``compact_table``, the write itself in the sink: ``Publication.rewrite_small_files``) rewrites one partition's small data files (every run
appends at least one file per table and institution) into as few files as the table's
target size allows, sorted by (patient, effective_time) like every write. The rows do not
change: same ids, same content hashes, same lineage columns, byte for byte the same values;
only the files holding them do. It holds the institution's run lock while it works, so no
run of that institution publishes into the partition meanwhile; other institutions'
runs commit freely. Its commit is an Iceberg overwrite that names the exact files it
replaces and the partition it touched: pyiceberg re-plans it on a commit that landed first
and validates that no concurrent commit added, deleted or rewrote files in that partition
(serializable). If one did (a research release replacing the table, a writer that does not
take the lock), the compaction is not forced: the files it wrote are deleted and it starts
again from scratch on the new head (``retry_commit``), reading the rows as they now are.
So a compaction can never resurrect a row version a publish replaced, nor drop one it added.

**Expiry** (``expire_table``) removes from a table's history the snapshots older than N
days, except the last K snapshots and every snapshot a tag or branch points to (research
releases and training sets pin tags: they stay readable). pyiceberg 0.12's
``table.maintenance.expire_snapshots()`` changes **metadata only**: the snapshots leave the
metadata (and the snapshot log; the oldest kept snapshot's parent becomes null). It deletes
**no file**: not the expired snapshots' manifest lists, not their manifests, not the data
files only they read, nor older ``*.metadata.json`` files. Data files no remaining snapshot
reads become orphans, and ``hub lakehouse orphans --delete`` (``hub.lakehouse.orphans``)
removes them, as it removes files of killed runs; ``remove_orphans(..., metadata=True)``
also removes manifest lists and manifests no remaining snapshot reads. Metadata JSON files
are kept (they are the catalog's history, small, and what an operator compares against).
The expiry commit asserts that ``main`` and every tag and branch still point where they did
when it was planned: a publish, or a tag moved, that lands in between makes the catalog refuse
it, and it is planned again on the refreshed metadata. hub tags only the snapshot a
publication just made (current when the expiry plans, or newer), which is never expired.
Not guarded: a tag someone creates by hand on an *old* snapshot in the instant between the
plan and the commit (Iceberg has no requirement "no other ref exists"); pyiceberg would
drop that tag with its snapshot.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import sqlalchemy as sa
from pyiceberg.catalog import Catalog
from pyiceberg.table import Table
from pyiceberg.table.update import AssertRefSnapshotId, UpdatesAndRequirements
from pyiceberg.table.update.snapshot import ExpireSnapshots

from hub.lakehouse.orphans import (
    GRACE_SECONDS,
    Orphan,
    delete_orphans,
    find_metadata_orphans,
    find_orphans,
)
from hub.lakehouse.sink import Publication
from hub.lakehouse.writer import (
    COMMIT_RETRY,
    RetryPolicy,
    counting,
    retry_commit,
)
from hub.lineage import runrecord

#: A data file smaller than this is "small" (pyiceberg's target file size is 512 MiB; a run of a
#: community health centre writes files of a few kilobytes).
SMALL_FILE_BYTES = 32 * 1024 * 1024
#: A partition with fewer small files than this is left alone (nothing to gain).
MIN_FILES = 2
#: Snapshots younger than this many days are kept (time travel over the last week).
EXPIRE_AFTER_DAYS = 7
#: The last this many snapshots of a table are kept whatever their age.
KEEP_LAST = 10


@dataclass
class Compaction:
    """What compacting one partition did."""

    table: str
    institution: str
    files_before: int = 0  # small files rewritten
    files_after: int = 0  # files written in their place
    rows: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    snapshot_id: int | None = None
    retries: int = 0  # commits refused by the catalog, plus compactions started again from scratch
    skipped: str | None = None  # why nothing was done (too few small files, institution busy)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Expiry:
    """What expiring one table's snapshots did."""

    table: str
    expired: list[int] = field(default_factory=list)
    kept: int = 0
    tagged_kept: list[int] = field(default_factory=list)  # expired by age, kept because a tag or branch points there
    retries: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def partitions(table: Table) -> list[str]:
    """Institutions with data in the table's current snapshot."""
    if table.current_snapshot() is None:
        return []
    return sorted({str(t.file.partition[0]) for t in table.scan().plan_files()})


def compact_table(pub: Publication, engine: sa.Engine, table: Table, institution: str, *, small_bytes: int = SMALL_FILE_BYTES,
                  min_files: int = MIN_FILES, lock_wait: float = 0.0) -> Compaction:
    """Rewrite the institution's small files of table into fewer files, rows unchanged; recorded by pub.

    Holds the institution's run lock meanwhile (waits up to lock_wait seconds for a run that
    holds it, then skips the partition). A conflicting concurrent commit makes it start again
    from scratch (bounded by pub's retry policy); CommitConflict names the table when it gives up.
    """
    table = counting(table)
    out = Compaction(".".join(table.name()), institution)
    try:
        runrecord.acquire_lock(engine, institution, pub.id, lock_wait)
    except runrecord.InstitutionBusy:
        out.skipped = "a run of the institution holds its lock"
        return out
    try:
        done = pub.rewrite_small_files(table, institution, small_bytes, min_files)
    finally:
        runrecord.release_lock(engine, institution, pub.id)
    for key, value in done.items():
        setattr(out, key, value)
    return out


class _GuardedExpiry(ExpireSnapshots):
    """An expiry the catalog applies only while main and every tag and branch point where they did when planned.

    Removing a snapshot also removes any ref to it (pyiceberg applies the removal to the
    catalog's current metadata), so without the guard a tag made meanwhile could vanish.
    """

    def __init__(self, transaction, refs: dict[str, int]):
        super().__init__(transaction)
        self._refs = refs

    def _commit(self) -> UpdatesAndRequirements:
        updates, requirements = super()._commit()
        return updates, (*requirements, *(AssertRefSnapshotId(ref=name, snapshot_id=sid) for name, sid in sorted(self._refs.items())))


def expirable(table: Table, older_than: dt.datetime, keep_last: int) -> tuple[list[int], list[int]]:
    """(snapshot ids to expire, ids old enough but kept because a tag or branch points to them)."""
    snaps = sorted(table.snapshots(), key=lambda s: (s.timestamp_ms, s.sequence_number or 0))
    keep = {s.snapshot_id for s in snaps[-keep_last:]} if keep_last > 0 else set()
    current = table.current_snapshot()
    if current is not None:
        keep.add(current.snapshot_id)
    refs = {ref.snapshot_id for ref in table.metadata.refs.values()}
    cutoff = older_than.timestamp() * 1000
    old = [s.snapshot_id for s in snaps if s.timestamp_ms < cutoff and s.snapshot_id not in keep]
    return [sid for sid in old if sid not in refs], [sid for sid in old if sid in refs]


def expire_table(pub: Publication, table: Table, *, older_than_days: float = EXPIRE_AFTER_DAYS, keep_last: int = KEEP_LAST,
                 now: dt.datetime | None = None, policy: RetryPolicy = COMMIT_RETRY) -> Expiry:
    """Expire table's snapshots older than older_than_days, keeping the last keep_last and every tagged one; recorded by pub."""
    table = counting(table)
    out = Expiry(".".join(table.name()))
    cutoff = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=older_than_days)

    def attempt(t: Table) -> list[int]:
        ids, tagged = expirable(t, cutoff, keep_last)
        out.tagged_kept = tagged
        if ids:
            refs = {name: ref.snapshot_id for name, ref in t.metadata.refs.items()}
            tx = t.transaction()
            _GuardedExpiry(tx, refs).by_ids(ids).commit()  # stages the removal into tx
            tx.commit_transaction()  # no snapshot producer: pyiceberg does not retry it, retry_commit does
        return ids

    out.expired, out.retries = retry_commit(table, attempt, policy)
    out.kept = len(table.snapshots())
    pub.record_expiry(out.table, out.expired)
    return out


def remove_orphans(catalog: Catalog, namespaces: Iterable[str], *, older_than: float = GRACE_SECONDS, metadata: bool = False,
                   delete: bool = True) -> list[Orphan]:
    """Data files (and with metadata, manifest lists and manifests) no snapshot of their table reads, older than
    older_than seconds: found, and removed when delete. Returns what was found."""
    namespaces = list(namespaces)
    found = find_orphans(catalog, namespaces, older_than=older_than)
    if metadata:
        found += find_metadata_orphans(catalog, namespaces, older_than=older_than)
    if delete:
        delete_orphans(found)
    return found


def tables_of(catalog: Catalog, names: Iterable[str] | None = None) -> list[str]:
    """The tables named, or every table of the catalog."""
    if names:
        return list(names)
    return sorted(".".join(t) for ns in catalog.list_namespaces() for t in catalog.list_tables(ns))


def compact_region(region, tables: Iterable[str] | None = None, institution: str | None = None, *,
                   small_bytes: int = SMALL_FILE_BYTES, min_files: int = MIN_FILES, lock_wait: float = 0.0,
                   policy: RetryPolicy = COMMIT_RETRY) -> tuple[list[Compaction], tuple[int, str] | None]:
    """Compact every partition (or institution's) of the tables named (default: all) as one maintenance
    publication; returns what each partition did and the manifest (seq, hash), None if nothing was rewritten."""
    from hub.lakehouse.tables import open_catalog

    icat = open_catalog(region.catalog_url, region.warehouse)
    out: list[Compaction] = []
    with Publication.open(region, None, "maintenance", policy=policy) as pub:
        for name in tables_of(icat, tables):
            table = icat.load_table(name)
            for inst in [institution] if institution else partitions(table):
                out.append(compact_table(pub, pub.engine, table, inst, small_bytes=small_bytes, min_files=min_files,
                                         lock_wait=lock_wait))
        pub.commit()
        seq = pub.finish({"maintenance": "compaction",
                          "compacted": [c.as_dict() for c in out if c.snapshot_id is not None]})
    return out, seq


def expire_region(region, tables: Iterable[str] | None = None, *, older_than_days: float = EXPIRE_AFTER_DAYS,
                  keep_last: int = KEEP_LAST, policy: RetryPolicy = COMMIT_RETRY) -> tuple[list[Expiry], tuple[int, str] | None]:
    """Expire old snapshots of the tables named (default: all) as one maintenance publication."""
    from hub.lakehouse.tables import open_catalog

    icat = open_catalog(region.catalog_url, region.warehouse)
    out: list[Expiry] = []
    with Publication.open(region, None, "maintenance", policy=policy) as pub:
        for name in tables_of(icat, tables):
            out.append(expire_table(pub, icat.load_table(name), older_than_days=older_than_days, keep_last=keep_last,
                                    policy=policy))
        pub.commit()
        seq = pub.finish({"maintenance": "expiry", "older_than_days": older_than_days, "keep_last": keep_last})
    return out, seq
