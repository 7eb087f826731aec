"""Reading the published tables with other engines: DuckDB over pyiceberg's scan, and Daft (runs on many machines).

Each engine must see exactly what pyiceberg sees: the same ids and content hashes, the
partition filter applied, and a tagged snapshot as it was (time travel). The recipes are the
ones docs/lakehouse.md, "Reading with other engines", gives.
"""

from __future__ import annotations

import duckdb
import pytest

from hub.lakehouse.snapshots import read, tag_zone
from tests.lakehouse.test_maintenance import Lake


@pytest.fixture()
def lake(tmp_path):
    lake = Lake(tmp_path)
    lake.publish("inst-a", range(6), 0)
    lake.publish("inst-b", range(4), 0)
    tag_zone(lake.icat, "recognition", "release-1")
    lake.publish("inst-a", range(3), 1)  # ids 0-2 get a second version after the tag
    return lake


def _pairs(data) -> list[tuple[str, str, str]]:
    cols = [data.column(c).to_pylist() for c in ("institution", "id", "content_hash")]
    return sorted(zip(*cols, strict=True))


def test_duckdb_reads_the_arrow_of_a_pyiceberg_scan_with_the_same_rows(lake):
    table = lake.table()
    observations = table.scan(row_filter="institution == 'inst-a'",  # noqa: F841 - the SQL below reads it by name
                              selected_fields=("institution", "id", "content_hash", "resource")).to_arrow()
    by_sql = duckdb.sql("""SELECT institution, id, content_hash,
                                  json_extract_string(resource, '$.valueQuantity.value') AS value
                           FROM observations ORDER BY id""").fetchall()  # DuckDB finds the Arrow table by its name
    assert [(i, r, h) for i, r, h, _ in by_sql] == _pairs(read(lake.icat, "recognition.observation", row_filter="institution == 'inst-a'"))
    assert [v for _, r, _, v in by_sql if r == "inst-a-0001"] == ["7.10"]  # the decimal exactly as published


def test_daft_reads_the_table_through_the_pyiceberg_catalog_with_filters_and_time_travel(lake):
    daft = pytest.importorskip("daft", reason="daft is in the dev extra (pyproject.toml)")
    table = lake.table()
    everything = daft.read_iceberg(table).select("institution", "id", "content_hash").to_arrow()
    assert _pairs(everything) == _pairs(read(lake.icat, "recognition.observation"))

    counted = (daft.read_iceberg(table).where(daft.col("institution") == "inst-b")
               .groupby("institution").agg(daft.col("id").count().alias("n")).to_pydict())
    assert counted == {"institution": ["inst-b"], "n": [4]}

    tagged = table.snapshot_by_name("release-1").snapshot_id
    as_released = daft.read_iceberg(table, snapshot_id=tagged).select("institution", "id", "content_hash").to_arrow()
    assert _pairs(as_released) == _pairs(read(lake.icat, "recognition.observation", as_of="release-1"))
    assert _pairs(as_released) != _pairs(everything)  # the later versions are not in the release
