"""Scans files for identifiers of the demo population: decoded Parquet values and raw bytes."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq


def identifiers_of(rows: dict[str, dict[str, list[dict]]]) -> set[str]:
    """Every name, ID number, phone, address and MRN in the demo source rows."""
    fields = {"name", "id_card_no", "phone", "address", "mrn", "patient_mrn", "XM", "SFZH", "LXDH", "JTZZ", "BAH"}
    found: set[str] = set()
    for by_mapping in rows.values():
        for tables in by_mapping.values():
            for table_rows in tables.values():
                for row in table_rows:
                    for k, v in row.items():
                        if k in fields and isinstance(v, str) and len(v) >= 2:
                            found.add(v)
    return found


def parquet_text(path: Path) -> str:
    """All values of a Parquet file as one string (compression hides them from a byte scan)."""
    table = pq.read_table(path)
    return "\n".join(str(v) for col in table.columns for v in col.to_pylist())


def hits(text: str, secrets: set[str]) -> list[str]:
    return sorted(s for s in secrets if s in text)
