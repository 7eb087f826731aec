"""The one sink every output of hub goes through: leak scan, write, commit, signed manifest.

A ``Publication`` is one act of publishing: an institution run, a research release, a
training-set build, a recognition-index build, an export. Whatever it writes, it writes
through the publication, in three phases:

1. **stage**: every write is leak-scanned first (``hub.leakscan.Scanner``, with the
   workspace's canaries and the ruleset's ``leak_scan`` code-system exemptions) and then
   staged where nobody reads it yet: Iceberg upserts and table replacements in open
   transactions, files under a temporary name next to their target. A finding raises
   ``LeakBlocked`` (masked values only) before anything of the publication is visible.
2. **commit** (``commit()``): Iceberg transactions are committed (tags created after),
   files renamed into place. Other publications may commit to the same tables at the same
   time: each commit is optimistic and retried with back-off on conflict
   (``hub.lakehouse.writer.commit_with_retry``); ``commit_retries`` says how many retries
   each table took, and the manifest records them when there were any.
3. **finish** (``finish(summary)``): ONE manifest, signed with the region's signing key
   (``hub.lineage.signing``), is appended to the chain (``hub.lineage.manifests``), listing
   the Iceberg snapshots and data files, the plain files (SHA-256, bytes, rows), the rows
   written to other stores (count and digest), the exemptions the scan used, and the
   caller's summary. Nothing written, nothing appended.

Other stores (the recognition index is a SQL database) write in their own transaction:
``record_rows`` scans the rows about to be written and records them for the manifest;
a ``LeakBlocked`` raised inside the store's transaction rolls it back.

Use it as a context manager: an exception (a LeakBlocked, a crash) aborts, which drops
staged transactions and removes staged files, and no manifest is appended; leaving the
block without ``commit()`` publishes nothing either::

    with Publication.open(region, keys, "trainset") as pub:
        pub.write_parquet(rows, out / "train" / "labels.parquet")
        pub.write_text(datasheet, out / "datasheet.md")
        pub.commit()
        seq, digest = pub.finish({"trainset": "t2dm-hba1c"})
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import secrets
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa
from pyiceberg.expressions import AlwaysTrue, EqualTo
from pyiceberg.io.pyarrow import (  # _dataframe_to_data_files: how pyiceberg's own writes make data files
    ArrowScan,
    _dataframe_to_data_files,
)
from pyiceberg.table import Table, Transaction

from deid.keys import Keyring
from hub.lakehouse.positions import compaction, masks_of
from hub.lakehouse.tables import ARROW_SCHEMA
from hub.lakehouse.writer import (
    COMMIT_RETRY,
    CommitConflict,
    RetryPolicy,
    TableWriter,
    commit_with_retry,
    committed_snapshots,
    counting,
    refused_commits,
    retry_commit,
)
from hub.leakscan import Scanner, ScanResult, load_canaries, load_scan_policy
from hub.lineage import manifests
from hub.lineage.signing import Signer, load_signer

#: What a publication can be; recorded in its manifest.
KINDS = ("run", "research-release", "trainset", "recognition-index", "export", "maintenance")


def new_publication_id(kind: str) -> str:
    return f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}-{kind}-{secrets.token_hex(3)}"


@dataclass
class StagedFile:
    path: Path  # final location
    staged: Path  # where it waits until commit
    sha256: str
    bytes: int
    rows: int | None

    def entry(self) -> dict:
        return {"path": str(self.path.resolve()), "sha256": self.sha256, "bytes": self.bytes, "rows": self.rows}


@dataclass
class StoreRecord:
    """Rows a publication wrote to another store (e.g. the recognition index), for the manifest."""

    rows: int = 0
    digest: Any = field(default_factory=hashlib.sha256)

    def entry(self) -> dict:
        return {"rows": self.rows, "sha256": self.digest.hexdigest()}


class TableReplacement:
    """A whole-table replace (research releases): delete every row and append, in one transaction.

    The rows appended are kept until commit: if another writer replaced or changed the table
    meanwhile (the delete of every row then conflicts), the replacement is staged again from
    scratch on the new head and committed, so the table ends up holding exactly these rows.
    """

    def __init__(self, pub: Publication, table: Table, tag: str | None):
        self.pub, self.table, self.tag = pub, counting(table), tag
        self.rows = 0
        self.retries = 0
        self.snapshot_ids: list[int] = []
        self._data: list[pa.Table] = []
        self.tx: Transaction | None = self._begin()

    def _begin(self) -> Transaction:
        """A transaction that deletes every row. Staged on an empty table too: it then deletes nothing, but
        the delete still makes pyiceberg refuse to rebase the replacement over rows that arrive meanwhile."""
        tx = self.table.transaction()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Delete operation did not match any records")
            tx.delete(AlwaysTrue(), snapshot_properties=self.pub.props)
        return tx

    @property
    def name(self) -> str:
        return ".".join(self.table.name())

    @property
    def snapshot_id(self) -> int | None:
        """The table's snapshot after the replacement (None before commit)."""
        return self.snapshot_ids[-1] if self.snapshot_ids else None

    def append(self, data: pa.Table | list[dict], schema: pa.Schema | None = None) -> None:
        """Scan, then stage rows (visible only after the publication commits)."""
        if isinstance(data, list):
            data = pa.Table.from_pylist(data, schema=schema or ARROW_SCHEMA)
        self.pub.scan(data, self.name)
        if data.num_rows:
            self.tx.append(data, snapshot_properties=self.pub.props)
            self._data.append(data)
            self.rows += data.num_rows

    def commit(self) -> None:
        """Commit the replacement, staged again from scratch if a concurrent commit conflicts; then tag it."""
        staged, self.tx, before = self.tx, None, refused_commits(self.table)

        def attempt(table: Table) -> None:
            nonlocal staged
            tx, staged = staged or self._restage(), None
            commit_with_retry(table, tx, self.pub.policy)

        try:
            retry_commit(self.table, attempt, self.pub.policy)
            self.snapshot_ids = committed_snapshots(self.table, self.pub.id)
            if self.tag and self.snapshot_ids:
                retry_commit(self.table, lambda t: t.manage_snapshots().create_tag(self.snapshot_ids[-1], self.tag).commit(),
                             self.pub.policy)
        finally:
            self.retries += refused_commits(self.table) - before

    def _restage(self) -> Transaction:
        tx = self._begin()
        for data in self._data:
            tx.append(data, snapshot_properties=self.pub.props)
        return tx


class Publication:
    """One publication: everything it writes is scanned, staged, committed together and signed once."""

    def __init__(self, engine: sa.Engine, signer: Signer, kind: str, publication_id: str | None = None, *,
                 scanner: Scanner | None = None, key_id: str | None = None, policy: RetryPolicy = COMMIT_RETRY):
        """engine: the run record (manifests); signer: the manifest signing key; key_id: the
        master key the published pseudonyms were made with (recorded in the manifest);
        policy: how each Iceberg commit retries when other writers commit to the same table."""
        self.policy = policy
        if kind not in KINDS:
            raise ValueError(f"unknown publication kind {kind!r}; kinds: {', '.join(KINDS)}")
        self.engine, self.signer, self.kind, self.key_id = engine, signer, kind, key_id
        self.id = publication_id or new_publication_id(kind)
        self.scanner = scanner or Scanner()
        self.scanned = ScanResult()  # accumulated: rows scanned and exemptions used
        self.writers: list[TableWriter] = []
        self.replacements: list[TableReplacement] = []
        self.commits: list[tuple[Table, list[int], int]] = []  # (table, snapshot ids, retries) of compactions
        self.expired: dict[str, list[int]] = {}  # table -> snapshot ids expired by this publication (maintenance)
        self.files: list[StagedFile] = []
        self.stores: dict[str, StoreRecord] = {}
        self.store_states: dict[str, dict] = {}  # store -> {before, after} whole-content states (manifests.sql_state)
        self.state = "staging"  # staging | committed | finished | aborted
        self.manifest: tuple[int, str] | None = None

    @classmethod
    def open(cls, region, keys: Keyring | None, kind: str, publication_id: str | None = None, *,
             engine: sa.Engine | None = None, signer: Signer | None = None, policy: RetryPolicy = COMMIT_RETRY) -> Publication:
        """A publication for a region: its run record, signing key, canaries and the ruleset's leak_scan policy.

        keys: the master key of what is published (its key id goes into the manifest), or None.
        The signing key is loaded before anything is staged: no key, no publication.
        """
        from hub.lineage import runrecord

        signer = signer or load_signer(region)
        scanner = Scanner(load_canaries(region.workspace), load_scan_policy(region.ruleset))
        return cls(engine or runrecord.connect(region.catalog_url), signer, kind, publication_id, scanner=scanner,
                   key_id=keys.key_id if keys is not None else None, policy=policy)

    def __enter__(self) -> Publication:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or self.state == "staging":
            self.abort()

    @property
    def props(self) -> dict[str, str]:
        """Snapshot properties of every Iceberg commit of this publication (the manifest finds them by these)."""
        return {"hub.run-id": self.id, "hub.publication": self.kind}

    def _staging(self) -> None:
        if self.state != "staging":
            raise RuntimeError(f"publication {self.id} is {self.state}: nothing more can be staged")

    # ---- the scan ------------------------------------------------------------------------

    def scan(self, data: pa.Table | list[dict] | str, where: str, **kw) -> ScanResult:
        """Leak-scan what is about to be written; raises LeakBlocked (masked) on any hit.

        data: an Arrow table, row dicts, or text. kw: json_columns, token_columns,
        code_columns (see ``Scanner.columns``). Exemptions used are counted for the manifest.
        """
        if isinstance(data, str):
            result = self.scanner.text(data, where)
        elif isinstance(data, pa.Table):
            result = self.scanner.arrow(data, where, **kw)
        else:
            result = self.scanner.rows(data, where, **kw)
        self.scanned.add(ScanResult(exempted=result.exempted, rows=result.rows))
        result.raise_if_hits()
        return result

    def count_scanned(self, exempted: Counter) -> None:
        """Exemptions used by a scan made elsewhere with this publication's scanner (the workers'
        per-row scan of resource texts, which the writer then does not repeat), for the manifest."""
        self.scanned.exempted.update(exempted)

    # ---- Iceberg -------------------------------------------------------------------------

    def table_writer(self, table: Table, institution: str, key_id: str | None = None, *,
                     shared_partition: bool = False, index_dir: Path | None = None) -> TableWriter:
        """The versioned, idempotent upsert of resource rows into one table for one institution
        (shared_partition: other runs of the institution commit meanwhile; index_dir: where the index of
        published rows is kept between runs, one file per table and institution; see TableWriter)."""
        self._staging()
        kept = index_dir / ".".join(table.name()) / f"{institution}.sqlite" if index_dir is not None else None
        writer = TableWriter(table, institution, self.id, self.scan, key_id, self.policy, shared_partition=shared_partition,
                             kept_index=kept)
        self.writers.append(writer)
        return writer

    def replace_table(self, table: Table, tag: str | None = None) -> TableReplacement:
        """Replace every row of table on commit, then tag the new snapshot (research releases)."""
        self._staging()
        replacement = TableReplacement(self, table, tag)
        self.replacements.append(replacement)
        return replacement

    def rewrite_small_files(self, table: Table, institution: str, small_bytes: int, min_files: int) -> dict[str, Any]:
        """Compaction: rewrite the institution's data files of table smaller than small_bytes (at least
        min_files of them), and every data file with rows masked by position deletes (whatever their number),
        into as few files as the target size allows, sorted like every write, masked rows left out; committed now.
        The position delete files of the files it rewrites are removed with them.

        The rows are the published ones, unchanged (they passed the scan when published, so they are
        not scanned again). The overwrite names the exact files it replaces and is scoped to the
        partition: a commit that lands first is rebased over, but one that added, deleted or
        rewrote files of the partition makes it refused; then the files it wrote are deleted and it
        is planned again from scratch on the new head (``retry_commit``, bounded by the policy).
        The snapshot is recorded for the manifest. Returns what it did (files_before, files_after,
        rows, bytes_before, bytes_after, snapshot_id, retries, skipped).
        """
        self._staging()
        table = counting(table)
        before = refused_commits(table)
        props = {**self.props, "hub.maintenance": "compaction"}
        out: dict[str, Any] = {"skipped": None}

        def attempt(t: Table) -> int | None:
            tasks = [task for task in t.scan(row_filter=EqualTo("institution", institution)).plan_files()
                     if (task.file.file_size_in_bytes < small_bytes or task.delete_files)
                     and str(task.file.partition[0]) == institution] if t.current_snapshot() else []
            if len(tasks) < min_files and not any(task.delete_files for task in tasks):
                out["skipped"] = f"{len(tasks)} small file(s), fewer than {min_files}"
                return None
            data = ArrowScan(t.metadata, t.io, t.schema(), AlwaysTrue()).to_table(tasks=tasks).sort_by(
                [("patient", "ascending"), ("effective_time", "ascending")])
            tx, written = t.transaction(), []
            try:
                with compaction(tx, props) as rewrite:
                    rewrite.delete_by_predicate(EqualTo("institution", institution))  # scopes conflict checks to the partition
                    for task in tasks:
                        rewrite.delete_data_file(task.file)
                        for mask in masks_of(task):  # its masks go with it (applied in data, which skips masked rows)
                            rewrite.remove_delete_file(mask)
                    for data_file in _dataframe_to_data_files(table_metadata=tx.table_metadata, df=data, io=t.io,
                                                              write_uuid=rewrite.commit_uuid):
                        written.append(data_file)
                        rewrite.append_data_file(data_file)
                commit_with_retry(t, tx, self.policy)
            except CommitConflict:
                for data_file in written:  # the commit did not land: nobody references them
                    t.io.delete(data_file.file_path)
                raise
            out.update(skipped=None, files_before=len(tasks), files_after=len(written), rows=data.num_rows,
                       bytes_before=sum(task.file.file_size_in_bytes for task in tasks),
                       bytes_after=sum(f.file_size_in_bytes for f in written))
            return t.current_snapshot().snapshot_id

        snapshot_id, restarts = retry_commit(table, attempt, self.policy)
        out.update(snapshot_id=snapshot_id, retries=refused_commits(table) - before + restarts)
        if snapshot_id is not None:
            self.commits.append((table, [snapshot_id], out["retries"]))
        return out

    def record_expiry(self, name: str, snapshot_ids: list[int]) -> None:
        """Record snapshots this publication expired from a table's history (``hub.lakehouse.maintenance``): the
        manifest lists them under ``expired``, which is how verify tells an expiry from a rolled-back history."""
        self._staging()
        if snapshot_ids:
            self.expired[name] = sorted(set(self.expired.get(name, [])) | set(snapshot_ids))

    # ---- files ---------------------------------------------------------------------------

    def _stage(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.parent / f".{path.name}.{self.id}.staged"

    def write_parquet(self, data: pa.Table | list[dict], path: Path, *, code_columns: dict[str, str] | None = None,
                      compression: str = "zstd", **options) -> StagedFile:
        """Scan, then write a Parquet file under a staged name (renamed into place on commit).

        code_columns: {column: code system} for columns of bare codes (their exemptions apply).
        """
        self._staging()
        table = data if isinstance(data, pa.Table) else pa.Table.from_pylist(data)
        self.scan(table, str(path), code_columns=code_columns or {})
        staged = self._stage(path)
        pq.write_table(table, staged, compression=compression, **options)
        return self._add_file(path, staged, table.num_rows)

    def write_text(self, text: str, path: Path) -> StagedFile:
        """Scan, then write a text file (a datasheet, a report) under a staged name."""
        self._staging()
        self.scan(text, str(path))
        staged = self._stage(path)
        staged.write_text(text, encoding="utf-8")
        return self._add_file(path, staged, None)

    def _add_file(self, path: Path, staged: Path, rows: int | None) -> StagedFile:
        entry = StagedFile(Path(path), staged, manifests.file_sha256(staged), staged.stat().st_size, rows)
        self.files = [f for f in self.files if f.path != entry.path] + [entry]
        return entry

    # ---- other stores --------------------------------------------------------------------

    def record_rows(self, store: str, rows: list[dict], **kw) -> None:
        """Scan rows about to be written to another store (in the caller's transaction) and record them."""
        self._staging()
        if not rows:
            return
        self.scan(rows, store, **kw)
        record = self.stores.setdefault(store, StoreRecord())
        record.rows += len(rows)
        for r in rows:
            record.digest.update(json.dumps(r, sort_keys=True, ensure_ascii=False, default=str).encode())
            record.digest.update(b"\n")

    def record_store_state(self, store: str, before: dict, after: dict) -> None:
        """Record another store's whole content before and after this publication wrote it (``manifests.sql_state``,
        taken in the store's transaction): verify links each build's before to the last one's after, and
        compares the live store with the last after."""
        self._staging()
        self.store_states[store] = {"before": before, "after": after}

    # ---- commit and manifest -------------------------------------------------------------

    def commit(self) -> None:
        """Make everything staged visible: Iceberg commits (one per table), then files renamed into place."""
        self._staging()
        for w in self.writers:
            w.commit()
        for r in self.replacements:
            r.commit()
        for f in self.files:
            os.replace(f.staged, f.path)
        self.state = "committed"

    def abort(self) -> None:
        """Drop what is staged: open transactions are never committed, staged files are removed."""
        if self.state != "staging":
            return
        for f in self.files:
            f.staged.unlink(missing_ok=True)
        self.state = "aborted"

    def _snapshots(self) -> tuple[dict[str, Table], dict[str, list[int]]]:
        """Tables committed to and the snapshot ids this publication made in each.

        The ids are those its own commits made, plus any snapshot made since on top of them
        under this publication's id (a caller's roll-back after a failed check), never a
        snapshot elsewhere in the history that merely carries the id.
        """
        tables: dict[str, Table] = {}
        ids: dict[str, list[int]] = {}
        for name, table, made in [(".".join(w.table.name()), w.table, w.snapshot_ids) for w in self.writers] + \
                                 [(r.name, r.table, r.snapshot_ids) for r in self.replacements] + \
                                 [(".".join(t.name()), t, ids) for t, ids, _ in self.commits]:
            if not made:
                continue
            table.refresh()
            chain = committed_snapshots(table, self.id)
            later = chain[chain.index(made[-1]) + 1:] if made[-1] in chain else []
            tables[name] = table
            ids[name] = list(dict.fromkeys(ids.get(name, []) + made + later))
        return tables, ids

    @property
    def commit_retries(self) -> dict[str, int]:
        """Per table: commits the catalog refused because another writer committed first (each was retried)."""
        out: dict[str, int] = {}
        for name, n in [(".".join(w.table.name()), w.retries) for w in self.writers] + [(r.name, r.retries) for r in self.replacements] \
                + [(".".join(t.name()), n) for t, _, n in self.commits]:
            out[name] = out.get(name, 0) + n
        return out

    @property
    def wrote(self) -> bool:
        return bool(any(w.snapshot_ids for w in self.writers) or any(r.snapshot_ids for r in self.replacements)
                    or any(ids for _, ids, _ in self.commits) or bool(self.expired)
                    or self.files or any(s.rows for s in self.stores.values()) or bool(self.store_states))

    def finish(self, summary: dict) -> tuple[int, str] | None:
        """Append the publication's one signed manifest; returns (seq, hash), or None if nothing was written."""
        if self.state != "committed":
            raise RuntimeError(f"publication {self.id} is {self.state}: commit() before finish()")
        self.state = "finished"
        if not self.wrote:
            return None
        body = {
            "kind": self.kind, "key_id": self.key_id, **summary,
            "stores": {name: s.entry() for name, s in sorted(self.stores.items())},
            **({"store_states": self.store_states} if self.store_states else {}),
            **({"expired": dict(sorted(self.expired.items()))} if self.expired else {}),
            **({"commit_retries": {t: n for t, n in sorted(self.commit_retries.items()) if n}} if any(self.commit_retries.values()) else {}),
            "leak_scan": self.scan_report(),
        }
        tables, snapshots = self._snapshots()
        self.manifest = manifests.append(self.engine, self.signer, self.id, tables, body,
                                         [f.entry() for f in self.files], snapshots=snapshots)
        return self.manifest

    def scan_report(self) -> dict:
        """What the leak scan saw: rows scanned, the exemptions used and the policy they came from."""
        return {"rows_scanned": self.scanned.rows, "exempted": self.scanned.exemptions(),
                "policy": self.scanner.policy.source}
