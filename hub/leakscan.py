"""Leak scan: identifiers in what is about to be published, or was, or in logs.

Finds resident ID numbers (by check digit), mainland mobile numbers, and the values of
canary patients (synthetic identities planted in the source data, listed in the
workspace's ``canary.json``, which must never come out). Hits are reported masked, so a
scan report is itself safe to log.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from hub.identifiers import find_mobile_numbers, find_resident_ids


@dataclass(frozen=True)
class Hit:
    where: str  # file, or table/column
    kind: str  # resident-id | mobile | canary
    masked: str

    def __str__(self) -> str:
        return f"{self.where}: {self.kind} {self.masked}"


class LeakBlocked(RuntimeError):
    """Raised instead of publishing rows that carry an identifier."""

    def __init__(self, hits: list[Hit]):
        self.hits = hits
        super().__init__(f"publication blocked: {len(hits)} identifier(s) found, e.g. {hits[0]}")


def mask(value: str) -> str:
    return value[:3] + "*" * max(0, len(value) - 5) + value[-2:] if len(value) > 5 else "*" * len(value)


def load_canaries(workspace: Path) -> frozenset[str]:
    path = Path(workspace) / "canary.json"
    if not path.exists():
        return frozenset()
    values = json.loads(path.read_text(encoding="utf-8")).get("values", [])
    return frozenset(v for v in values if isinstance(v, str) and len(v) >= 2)


def scan_text(text: str, where: str, canaries: frozenset[str] = frozenset()) -> list[Hit]:
    hits = [Hit(where, "resident-id", mask(v)) for v in find_resident_ids(text)]
    hits += [Hit(where, "mobile", mask(v)) for v in find_mobile_numbers(text)]
    hits += [Hit(where, "canary", mask(v)) for v in canaries if v in text]
    return hits


def scan_arrow(table: pa.Table, where: str, canaries: frozenset[str] = frozenset()) -> list[Hit]:
    """Every string column of an Arrow table, joined per column."""
    hits: list[Hit] = []
    for name in table.column_names:
        column = table.column(name)
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            hits += scan_text("\n".join(v for v in column.to_pylist() if v), f"{where}.{name}", canaries)
    return hits


def scan_files(paths: list[Path], canaries: frozenset[str] = frozenset()) -> list[Hit]:
    """Parquet files by their decoded values (compression hides bytes); anything else as text."""
    hits: list[Hit] = []
    for path in paths:
        if path.suffix == ".parquet":
            hits += scan_arrow(pq.read_table(path), str(path), canaries)
        else:
            hits += scan_text(path.read_bytes().decode("utf-8", errors="ignore"), str(path), canaries)
    return hits


def published_files(table, institution: str) -> list[Path]:
    """The Parquet data files an Iceberg table currently reads for one institution (local warehouse)."""
    from urllib.parse import urlparse

    from pyiceberg.expressions import EqualTo

    files = []
    for task in table.scan(row_filter=EqualTo("institution", institution)).plan_files():
        uri = urlparse(task.file.file_path)
        files.append(Path(uri.path) if uri.scheme in ("file", "") else Path(task.file.file_path))
    return files
