"""Lakehouse: tags pin what they tagged, schema evolves without rewriting, readers agree."""

from __future__ import annotations

import datetime as dt
import pickle

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import sqlalchemy as sa

from hub.lakehouse.snapshots import history, read, tag_zone
from hub.lakehouse.tables import ARROW_SCHEMA, SCHEMA, ensure_table, open_catalog
from hub.pipeline import run_institution
from tests.conftest import publish_region

pytestmark = pytest.mark.slow


@pytest.fixture()
def region(tmp_path, keys):
    return publish_region(tmp_path, keys, 15)[0]


def test_a_tagged_snapshot_reads_the_same_rows_after_later_publishes(region, keys):
    catalog = open_catalog(region.catalog_url, region.warehouse)
    tagged = tag_zone(catalog, "recognition", "release-2026-11")
    assert "recognition.observation" in tagged
    before = read(catalog, "recognition.observation", "release-2026-11")

    lis = sa.create_engine(next(f.url for f in region.institution("city-first").feeds if f.name == "lis"))
    with lis.begin() as conn:
        conn.execute(sa.text("UPDATE lab_result SET result_value = '9.99', updated_at = '2026-03-01 00:00:00' WHERE result_id IN (20, 21)"))
    run_institution(region, "city-first", keys)

    current = read(catalog, "recognition.observation")
    again = read(catalog, "recognition.observation", "release-2026-11")
    assert sorted(again["content_hash"].to_pylist()) == sorted(before["content_hash"].to_pylist())
    assert sorted(current["content_hash"].to_pylist()) != sorted(before["content_hash"].to_pylist())
    assert any("release-2026-11" in h["tags"] for h in history(catalog, "recognition.observation"))
    with pytest.raises(ValueError, match="immutable"):
        tag_zone(catalog, "recognition", "release-2026-11")


def test_a_new_key_column_evolves_the_table_without_rewriting(tmp_path):
    from pyiceberg.schema import Schema

    catalog = open_catalog(f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "wh")
    catalog.create_namespace("recognition")
    old_schema = Schema(*[f for f in SCHEMA.fields if f.name != "code"])  # a table from before `code` existed
    table = catalog.create_table("recognition.observation", schema=old_schema)
    table.append(_old_rows())
    files_before = {t.file.file_path for t in table.scan().plan_files()}

    evolved = ensure_table(catalog, "recognition", "Observation")
    assert "code" in {f.name for f in evolved.schema().fields}
    assert {t.file.file_path for t in evolved.scan().plan_files()} == files_before  # nothing rewritten
    assert evolved.scan().to_arrow()["code"].to_pylist() == [None]


def _old_rows() -> pa.Table:
    import datetime as dt

    schema = pa.schema([f for f in ARROW_SCHEMA if f.name != "code"])
    row = {"id": "a", "institution": "x", "resource_type": "Observation", "patient": None, "effective_time": None,
           "resource": "{}", "content_hash": "h", "source_system": "LIS", "source_table": "t", "source_key_hash": "k",
           "run_id": "r", "mapping_version": "m", "ruleset_version": "v", "key_id": "i",
           "published_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)}
    return pa.Table.from_pylist([row], schema=schema)


def test_readers_pyarrow_duckdb_polars_agree(region, monkeypatch):
    monkeypatch.setenv("POLARS_ICEBERG_PLANNER", "pyiceberg")
    import duckdb
    import polars as pl

    table = open_catalog(region.catalog_url, region.warehouse).load_table("recognition.observation")
    # pyarrow: the scan, filtered and projected by Iceberg
    arrow = table.scan(row_filter="code == 'http://loinc.org|4548-4'", selected_fields=("patient", "institution", "resource")).to_arrow()
    # DuckDB: SQL over the Arrow table (JSON functions on the resource column)
    hba1c = arrow  # noqa: F841 - DuckDB finds the variable by name
    by_inst = duckdb.sql(
        "SELECT institution, count(*) AS n, avg(CAST(json_extract_string(resource, '$.valueQuantity.value') AS DOUBLE)) AS mean "
        "FROM hba1c GROUP BY institution ORDER BY institution"
    ).fetchall()
    # polars: lazily over the same Iceberg table
    pl_counts = (
        pl.scan_iceberg(table).filter(pl.col("code") == "http://loinc.org|4548-4")
        .group_by("institution").agg(pl.len().alias("n")).sort("institution").collect()
    )
    assert [(i, n) for i, n, _ in by_inst] == list(zip(pl_counts["institution"].to_list(), pl_counts["n"].to_list(), strict=True))
    assert sum(n for _, n, _ in by_inst) == arrow.num_rows > 0
    assert all(5.0 < mean < 9.0 for _, _, mean in by_inst)
    assert pc.all(pc.is_valid(arrow["patient"])).as_py()


def test_tables_declare_their_sort_order(region):
    table = open_catalog(region.catalog_url, region.warehouse).load_table("recognition.patient")
    assert [table.schema().find_column_name(f.source_id) for f in table.sort_order().fields] == ["patient", "effective_time"]


def test_effective_times_of_one_offset_share_one_zone_and_keep_their_value():
    from hub.lakehouse import tables

    zone = dt.timezone(dt.timedelta(hours=8))
    a = tables.effective_time({"resourceType": "Observation", "effectiveDateTime": "2024-03-05T10:00:00+08:00"}, zone)
    b = tables.effective_time({"resourceType": "Observation", "effectiveDateTime": "2024-03-06T11:30:00+08:00"}, zone)
    utc = tables.effective_time({"resourceType": "Observation", "effectiveDateTime": "2024-03-06T11:30:00+00:00"}, zone)
    assert a.tzinfo is b.tzinfo  # pickled once in a worker's results, not once per value
    assert a == dt.datetime(2024, 3, 5, 2, 0, tzinfo=dt.UTC) and a.isoformat() == "2024-03-05T10:00:00+08:00"
    assert utc.utcoffset() == dt.timedelta(0) and utc.tzinfo is not a.tzinfo
    assert len(pickle.dumps([a, b])) < len(pickle.dumps([dt.datetime.fromisoformat("2024-03-05T10:00:00+08:00"),
                                                          dt.datetime.fromisoformat("2024-03-06T11:30:00+08:00")]))


def test_the_shared_zones_stay_bounded_whatever_offsets_the_data_holds(monkeypatch):
    from hub.lakehouse import tables

    monkeypatch.setattr(tables, "_ZONES", {})
    texts = [f"2024-01-01T00:00:00+00:{s // 60:02d}:{s % 60:02d}" for s in range(1, 2001)]  # offsets to the second
    texts += [f"2024-01-01T00:00:00{sign}{m // 60:02d}:{m % 60:02d}" for sign in "+-" for m in range(24 * 60)]
    texts += ["2024-01-01T00:00:00+05:30:15.123456", "2024-01-01T00:00:00Z", "2024-01-01T00:00:00-00:00"]
    out = [tables.parse_instant(t) for t in texts]
    plain = [dt.datetime.fromisoformat(t) for t in texts]
    assert out == plain and [v.isoformat() for v in out] == [v.isoformat() for v in plain]
    assert [v.utcoffset() for v in out] == [v.utcoffset() for v in plain]
    assert len(tables._ZONES) == 2 * 24 * 60 - 1  # whole minutes only, +00:00 once


def test_instants_at_the_ends_of_the_calendar_parse_as_fromisoformat_does():
    from hub.lakehouse import tables

    for text in ("2024-01-01T00:00:00+08:00", "0001-01-01T00:00:00+08:00", "9999-12-31T23:59:59-05:00"):
        assert tables.parse_instant(text) == dt.datetime.fromisoformat(text)
        assert tables.parse_instant(text).isoformat() == dt.datetime.fromisoformat(text).isoformat()
