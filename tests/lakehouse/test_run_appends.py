"""A run's data files are appended to a table once, at commit; rows it replaces or deletes again stay correct.

The table writer writes each flush's Parquet files at once but adds them to the run's transaction only at
commit (one append snapshot). A later flush of the same run that replaces or deletes a row in one of them
masks that row by its position in the run's own file (hub.lakehouse.positions), so it is published once.
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
from pyiceberg.table.snapshots import Operation

from hub.lakehouse.tables import ARROW_SCHEMA, open_catalog
from hub.lakehouse.writer import TableWriter

UTC = dt.UTC
T0 = dt.datetime(2026, 1, 1, tzinfo=UTC)


def _row(i: int, content: str = "c", run: str = "r0", at: dt.datetime = T0) -> dict:
    return {"id": f"id{i}", "institution": "a", "resource_type": "Observation", "resource": "{}", "content_hash": f"{content}{i}",
            "source_system": "LIS", "source_table": "lab", "source_key_hash": f"skh{i}", "run_id": run, "mapping_version": "m",
            "ruleset_version": "v", "key_id": "k1", "published_at": T0, "source_updated_at": at, "source_row_hash": f"rh{i}"}


def _table(tmp_path):
    catalog = open_catalog(f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "wh")
    catalog.create_namespace("recognition")
    table = catalog.create_table("recognition.observation", schema=ARROW_SCHEMA)
    table.append(pa.Table.from_pylist([_row(i) for i in range(10)], schema=ARROW_SCHEMA))  # an earlier run's rows
    return table


def _run_snapshots(table, run: str) -> list[str]:
    return [s.summary.operation for s in table.refresh().snapshots() if s.summary.additional_properties.get("hub.run-id") == run]


def _contents(table) -> list[tuple[str, str]]:
    rows = table.refresh().scan(selected_fields=("id", "content_hash")).to_arrow().to_pylist()
    return sorted((r["id"], r["content_hash"]) for r in rows)


def test_many_flushes_of_new_rows_make_one_append_snapshot(tmp_path):
    table = _table(tmp_path)
    w = TableWriter(table, "a", "r1", lambda data, where: None, key_id="k1")
    for flush in range(5):
        for i in range(100 + 10 * flush, 110 + 10 * flush):
            w.add(_row(i, run="r1"))
        w.flush()
    assert _run_snapshots(table, "r1") == []  # nothing is part of the table before commit
    w.commit()
    assert _run_snapshots(table, "r1") == [Operation.APPEND]
    assert _contents(table) == sorted([(f"id{i}", f"c{i}") for i in range(10)] + [(f"id{i}", f"c{i}") for i in range(100, 150)])
    w.close()


def test_a_row_written_by_an_earlier_flush_of_the_run_is_replaced_not_doubled(tmp_path):
    table = _table(tmp_path)
    w = TableWriter(table, "a", "r1", lambda data, where: None, key_id="k1")
    w.add(_row(0, "new", "r1", T0 + dt.timedelta(seconds=1)))  # replaces the earlier run's row
    w.add(_row(100, "new", "r1"))
    w.flush()
    w.add(_row(100, "newer", "r1", T0 + dt.timedelta(seconds=1)))  # replaces the row the first flush wrote
    w.add(_row(200, "new", "r1"))
    w.flush()
    w.add(_row(200, "newer", "r1", T0 + dt.timedelta(seconds=1)))
    w.flush()
    w.commit()
    expected = {f"id{i}": f"c{i}" for i in range(1, 10)} | {"id0": "new0", "id100": "newer100", "id200": "newer200"}
    assert _contents(table) == sorted(expected.items())
    w.close()


def test_a_full_pull_deletes_a_row_an_earlier_flush_of_the_run_wrote(tmp_path):
    table = _table(tmp_path)
    w = TableWriter(table, "a", "r1", lambda data, where: None, key_id="k1")
    w.add(_row(300, "new", "r1"))
    w.add(_row(301, "new", "r1"))
    w.flush()
    gone = w.stage_deletions("lab", [f"skh{i}" for i in range(10)] + ["skh301"])  # skh300 not seen at the source
    assert gone == [("id300", "skh300")]
    w.commit()
    assert _contents(table) == sorted([(f"id{i}", f"c{i}") for i in range(10)] + [("id301", "new301")])
    w.close()
