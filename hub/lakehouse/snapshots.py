"""Snapshots and tags: list a table's history, tag a release, read a table as of a snapshot or tag."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
from pyiceberg.catalog import Catalog

from hub.errors import NotFound
from hub.lakehouse.writer import retry_commit


def history(catalog: Catalog, name: str) -> list[dict]:
    """A table's snapshots, oldest first, with the run that made each and the tags on it. records: rows in the
    data files the snapshot reads; masked: those of them position deletes mask (rows replaced or deleted since,
    until a compaction rewrites their files): records - masked rows are read."""
    table = catalog.load_table(name)
    tags: dict[int, list[str]] = {}
    for ref_name, ref in table.metadata.refs.items():
        if ref.snapshot_ref_type == "tag":
            tags.setdefault(ref.snapshot_id, []).append(ref_name)
    out = []
    for s in table.snapshots():
        props = s.summary.additional_properties if s.summary else {}
        out.append({
            "snapshot_id": s.snapshot_id, "at": dt.datetime.fromtimestamp(s.timestamp_ms / 1000, dt.UTC).isoformat(),
            "operation": s.summary.operation.value if s.summary else "", "run_id": props.get("hub.run-id"),
            "records": int(props.get("total-records", 0) or s.summary.get("total-records") or 0) if s.summary else 0,
            "masked": int(props.get("total-position-deletes", 0) or 0),
            "tags": sorted(tags.get(s.snapshot_id, [])),
        })
    return out


def tag_zone(catalog: Catalog, zone: str, tag: str) -> dict[str, int]:
    """Tag the current snapshot of every table of a zone; returns {table: snapshot id}.

    A tag is a metadata-only commit: when another writer commits to the table first, it is
    made again on the refreshed metadata (``retry_commit``), still on the snapshot chosen here.
    """
    tagged = {}
    for identifier in catalog.list_tables(zone):
        table = catalog.load_table(identifier)
        snap = table.current_snapshot()
        if snap is None:
            continue
        if table.metadata.refs.get(tag) is not None:
            raise ValueError(f"tag {tag!r} already exists on {'.'.join(identifier)}; tags are immutable, choose a new name")
        retry_commit(table, lambda t, sid=snap.snapshot_id: t.manage_snapshots().create_tag(sid, tag).commit())
        tagged[".".join(identifier)] = snap.snapshot_id
    return tagged


def read(catalog: Catalog, name: str, as_of: str | int | None = None, row_filter: str = "True") -> pa.Table:
    """A table as of a tag name or snapshot id (current when as_of is None)."""
    table = catalog.load_table(name)
    if as_of is None:
        return table.scan(row_filter=row_filter).to_arrow()
    if isinstance(as_of, str) and not as_of.isdigit():
        ref = table.snapshot_by_name(as_of)
        if ref is None:
            raise NotFound(f"{name} has no tag or branch {as_of!r}")
        snapshot_id = ref.snapshot_id
    else:
        snapshot_id = int(as_of)
    return table.scan(snapshot_id=snapshot_id, row_filter=row_filter).to_arrow()
