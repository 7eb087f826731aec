"""Idempotent upsert of resource rows into an Iceberg table, one atomic commit per flush.

A row is identified by its resource id. Before the first write of a run, the writer reads
(id, content_hash) of the institution's partition once; then each flush appends only rows
that are new or whose content changed, deleting the old versions of changed rows in the
same transaction. Publishing identical data twice therefore writes nothing. Every flush is
leak-scanned first: rows carrying an identifier are never committed.
"""

from __future__ import annotations

import pyarrow as pa
from pyiceberg.expressions import And, EqualTo, In
from pyiceberg.table import Table

from hub.lakehouse.tables import ARROW_SCHEMA
from hub.leakscan import LeakBlocked, scan_arrow


class TableWriter:
    """Buffers rows for one table and institution; each flush() is one atomic upsert commit."""

    def __init__(self, table: Table, institution: str, run_id: str, canaries: frozenset[str] = frozenset()):
        self.table, self.institution, self.run_id, self.canaries = table, institution, run_id, canaries
        self._buffer: dict[str, dict] = {}
        self._existing: dict[str, str] | None = None
        self.written = 0
        self.unchanged = 0
        self.snapshot_ids: list[int] = []

    def _load_existing(self) -> dict[str, str]:
        if self._existing is None:
            scan = self.table.scan(
                row_filter=EqualTo("institution", self.institution), selected_fields=("id", "content_hash")
            ).to_arrow()
            self._existing = dict(zip(scan.column("id").to_pylist(), scan.column("content_hash").to_pylist(), strict=True))
        return self._existing

    def add(self, row: dict) -> None:
        self._buffer[row["id"]] = row

    @property
    def pending(self) -> int:
        """Rows added since the last flush (the caller decides when to commit)."""
        return len(self._buffer)

    def flush(self) -> None:
        if not self._buffer:
            return
        existing = self._load_existing()
        rows, changed = [], []
        for rid, row in self._buffer.items():
            old = existing.get(rid)
            if old == row["content_hash"]:
                self.unchanged += 1
                continue
            if old is not None:
                changed.append(rid)
            rows.append(row)
        self._buffer = {}
        if not rows:
            return
        data = pa.Table.from_pylist(rows, schema=ARROW_SCHEMA).sort_by([("patient", "ascending"), ("effective_time", "ascending")])
        hits = scan_arrow(data, ".".join(self.table.name()), self.canaries)
        if hits:
            raise LeakBlocked(hits)  # nothing of this flush is committed
        props = {"hub.run-id": self.run_id, "hub.institution": self.institution}
        with self.table.transaction() as tx:
            if changed:
                tx.delete(And(EqualTo("institution", self.institution), In("id", changed)), snapshot_properties=props)
            tx.append(data, snapshot_properties=props)
        for row in rows:
            existing[row["id"]] = row["content_hash"]
        self.written += len(rows)
        snap = self.table.current_snapshot()
        if snap is not None:
            self.snapshot_ids.append(snap.snapshot_id)
