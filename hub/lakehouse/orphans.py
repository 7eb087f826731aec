"""Orphan files: Parquet data files in the warehouse that no snapshot of their table references.

A run killed after writing data files but before its commit leaves them behind (a commit is
what makes files part of a table). They are invisible to every reader, but they hold
de-identified patient data and take space, so they are found and removed:

- automatically for one institution when its next run starts and finds the killed run (the
  run lock guarantees no live writer of that institution's partition at that moment);
- on demand with ``hub lakehouse orphans [--delete]`` over the whole warehouse, for files
  older than a grace period (a live run of another institution may be writing files it has
  not committed yet).

Data files under a table's ``data/`` folder are considered by ``find_orphans``. Snapshot expiry
(``hub.lakehouse.maintenance``) deletes no file: the data files only expired snapshots read
become orphans here, and ``find_metadata_orphans`` finds the Avro manifest lists and manifests
under ``metadata/`` that no remaining snapshot reads. ``*.metadata.json`` files are never
touched (they are the catalog's history).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pyiceberg.catalog import Catalog

from hub.lineage.manifests import local_path

#: hub lakehouse orphans leaves files younger than this alone (a run may be about to commit them).
GRACE_SECONDS = 3600


@dataclass(frozen=True)
class Orphan:
    table: str
    path: Path
    bytes: int


def referenced_files(table) -> set[Path]:
    """Every data file any snapshot of the table references (time travel keeps old ones alive)."""
    if table.current_snapshot() is None:
        return set()
    paths = table.inspect.all_files().column("file_path").to_pylist()
    return {local_path(p).resolve() for p in paths}


def _unreferenced(catalog: Catalog, namespaces: list[str], older_than: float, folder: str, pattern: str,
                  referenced: Callable[[object], set[Path]]) -> list[Orphan]:
    """Files matching pattern under each table's folder (``data/...`` or ``metadata``) that referenced(table)
    does not name, older than older_than seconds."""
    cutoff = time.time() - older_than
    out: list[Orphan] = []
    existing = {ns[0] for ns in catalog.list_namespaces()}
    for ns in (n for n in namespaces if n in existing):
        for ident in catalog.list_tables(ns):
            table = catalog.load_table(ident)
            base = local_path(table.location()) / folder
            if not base.is_dir():
                continue
            known = referenced(table)
            name = ".".join(ident)
            for path in sorted(base.glob(pattern)):
                stat = path.stat()
                if stat.st_mtime <= cutoff and path.resolve() not in known:
                    out.append(Orphan(name, path, stat.st_size))
    return out


def find_orphans(catalog: Catalog, namespaces: list[str], institution: str | None = None,
                 older_than: float = GRACE_SECONDS) -> list[Orphan]:
    """Unreferenced data files of every table in namespaces (only institution's partition if given)."""
    folder = f"data/institution={institution}" if institution is not None else "data"
    return _unreferenced(catalog, namespaces, older_than, folder, "**/*.parquet", referenced_files)


def referenced_metadata(table) -> set[Path]:
    """Every manifest list and manifest a remaining snapshot of the table reads."""
    out: set[Path] = set()
    for snap in table.snapshots():
        out.add(local_path(snap.manifest_list).resolve())
        out.update(local_path(mf.manifest_path).resolve() for mf in snap.manifests(table.io))
    return out


def find_metadata_orphans(catalog: Catalog, namespaces: list[str], older_than: float = GRACE_SECONDS) -> list[Orphan]:
    """Avro manifest lists and manifests under each table's metadata/ that no snapshot reads (left by expired
    snapshots, or by a commit that never landed), older than older_than seconds."""
    return _unreferenced(catalog, namespaces, older_than, "metadata", "*.avro", referenced_metadata)


def delete_orphans(orphans: list[Orphan]) -> int:
    """Remove the files; returns how many were removed."""
    removed = 0
    for o in orphans:
        try:
            o.path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed
