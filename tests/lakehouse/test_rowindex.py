"""The on-disk index of published rows (and the key set) answers batch questions as a dict of the rows would."""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hub.errors import CommandFailed
from hub.lakehouse.rowindex import COLUMNS, FILL_ROWS, KeySet, PublishedRows, from_us, to_us
from hub.lakehouse.tables import ARROW_SCHEMA, open_catalog
from hub.lakehouse.writer import TableWriter

UTC = dt.UTC
INDEX_SCHEMA = pa.schema([ARROW_SCHEMA.field(c) for c in COLUMNS])


def _batch(rows: list[tuple]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([dict(zip(COLUMNS, r, strict=True)) for r in rows], schema=INDEX_SCHEMA)


def _row(i: int, *, st: str = "lab", kid: str = "k1", rh: str | None = "rh", at: dt.datetime | None = None, skh: str | None = None) -> tuple:
    return (f"id{i}", f"ch{i}", at, skh or f"skh{i}", st, kid, rh and f"{rh}{i}")


def test_fill_streams_several_batches_and_lookup_answers_only_the_ids_held():
    index = PublishedRows()
    batches = [_batch([_row(i) for i in range(b * 700, b * 700 + 700)]) for b in range(3)]
    batches.append(_batch([_row(i) for i in range(2100, 2100 + FILL_ROWS + 5)]))  # one batch filled in two slices
    total = 2100 + FILL_ROWS + 5
    assert index.fill(iter(batches)) == total == len(index)
    got = index.lookup(["id0", "id1399", f"id{total - 1}", "nope"])
    assert set(got) == {"id0", "id1399", f"id{total - 1}"}
    assert got["id1399"] == ("ch1399", None, "skh1399", "lab", "k1", "rh1399")
    assert len(index.lookup(f"id{i}" for i in range(total))) == total  # more ids than one SQL statement takes
    index.close()


def test_datetimes_round_trip_exactly_and_compare_as_before():
    moments = [dt.datetime(2026, 3, 29, 1, 59, 59, 999_999, tzinfo=UTC), dt.datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=UTC),
               dt.datetime(2026, 3, 29, 3, 0, 0, 7, tzinfo=dt.timezone(dt.timedelta(hours=2)))]
    for m in moments:
        assert from_us(to_us(m)) == m and from_us(to_us(m)).tzinfo is not None
    assert from_us(to_us(dt.datetime(2026, 1, 1, 12))) == dt.datetime(2026, 1, 1, 12, tzinfo=UTC)  # naive: UTC, as Iceberg stores it
    index = PublishedRows()
    index.fill([_batch([_row(0, at=moments[0]), _row(1, at=moments[1])])])
    index.upsert([_row(2, at=moments[2])])
    got = index.lookup(["id0", "id1", "id2"])
    assert [got[f"id{i}"][1] for i in range(3)] == moments
    assert got["id2"][1] > moments[2] - dt.timedelta(microseconds=1)
    index.close()


def test_upsert_replaces_in_place_and_row_hashes_answers_the_last_indexed_per_key():
    index = PublishedRows()
    index.fill([_batch([_row(0), _row(1, skh="shared"), _row(2, skh="shared"), _row(3, rh=None), _row(4, st="other"),
                        _row(5, kid="k0")])])
    assert index.row_hashes("lab", "k1", ["skh0", "shared", "skh3", "skh4", "skh5", "absent"]) == {"skh0": "rh0", "shared": "rh2"}
    index.upsert([("id1", "new", None, "shared", "lab", "k1", "rh-new"), _row(6)])  # id1 keeps its place, before id2
    assert index.row_hashes("lab", "k1", ["shared"]) == {"shared": "rh2"}
    assert index.lookup(["id1"])["id1"] == ("new", None, "shared", "lab", "k1", "rh-new")
    index.delete(["id2"])
    assert index.row_hashes("lab", "k1", ["shared", "skh6"]) == {"shared": "rh-new", "skh6": "rh6"}
    assert index.has("lab", "k1", ["skh0", "skh3", "skh6", "absent"]) == {"skh0", "skh6"}
    assert len(index) == 6
    index.close()


def test_missing_keys_is_an_anti_join_scoped_to_source_table_and_key():
    index = PublishedRows()
    index.fill([_batch([_row(i) for i in range(50)] + [_row(50, st="other"), _row(51, kid="k0")])])
    seen = KeySet()
    seen.add(f"skh{i}" for i in range(0, 50, 2))
    assert index.missing_keys("lab", "k1", seen) == [(f"id{i}", f"skh{i}") for i in range(1, 50, 2)]
    assert index.missing_keys("lab", "k1", (f"skh{i}" for i in range(50))) == []  # any iterable; asked again
    assert index.drop_other_keys("k1") == 1
    assert index.lookup(["id51"]) == {}
    seen.close()
    index.close()


def test_a_duplicate_id_in_the_partition_keeps_its_last_row():
    index = PublishedRows()
    index.fill([_batch([_row(0), ("id0", "later", None, "skh0", "lab", "k1", "rh-later")])])
    assert index.lookup(["id0"])["id0"][0] == "later" and len(index) == 1
    index.close()


def test_the_scratch_files_leave_nothing_behind_even_when_the_process_is_killed(tmp_path):
    index, keys = PublishedRows(tmp_path), KeySet(tmp_path)
    index.fill([_batch([_row(0)])])
    keys.add(["k"])
    assert os.listdir(tmp_path) == []  # unnamed once open (POSIX) ...
    assert index.lookup(["id0"]) and "k" in keys  # ... and working
    index.close()
    index.close()
    assert index.closed and not keys.closed
    del keys
    killed = subprocess.run([sys.executable, "-c", "import os, signal, sys; from hub.lakehouse.rowindex import KeySet; "
                             "k = KeySet(sys.argv[1]); k.add(['x'] * 10); os.kill(os.getpid(), signal.SIGKILL)", str(tmp_path)])
    assert killed.returncode == -signal.SIGKILL
    assert os.listdir(tmp_path) == []


def test_key_set_answers_batches_and_iterates():
    keys = KeySet()
    keys.add(f"k{i}" for i in range(25_000))
    keys.add(["k1", "k1"])
    assert len(keys) == 25_000 and "k24999" in keys and "x" not in keys
    assert keys.has(["k3", "x", "k20000"]) == {"k3", "k20000"}
    assert sorted(keys) == sorted(f"k{i}" for i in range(25_000))
    keys.close()


def test_the_writer_reads_a_partition_of_several_batches_and_decides_as_before(tmp_path):
    catalog = open_catalog(f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "wh")
    catalog.create_namespace("recognition")
    table = catalog.create_table("recognition.observation", schema=ARROW_SCHEMA)
    t0 = dt.datetime(2026, 1, 1, tzinfo=UTC)

    def full(i: int, inst: str = "a", content: str = "c", at: dt.datetime = t0, kid: str = "k1") -> dict:
        return {"id": f"id{i}", "institution": inst, "resource_type": "Observation", "resource": "{}", "content_hash": f"{content}{i}",
                "source_system": "LIS", "source_table": "lab", "source_key_hash": f"skh{i}", "run_id": "r0", "mapping_version": "m",
                "ruleset_version": "v", "key_id": kid, "published_at": t0, "source_updated_at": at, "source_row_hash": f"rh{i}"}

    for part in range(3):  # three data files: the scan comes in several batches
        table.append(pa.Table.from_pylist([full(i) for i in range(part * 400, part * 400 + 400)], schema=ARROW_SCHEMA))
    table.append(pa.Table.from_pylist([full(0, inst="b"), full(1200, kid="k0")], schema=ARROW_SCHEMA))
    assert sum(1 for _ in table.scan(selected_fields=COLUMNS).to_arrow_batch_reader()) > 1

    w = TableWriter(table, "a", "r1", lambda data, where: None, key_id="k1")
    assert w.row_hashes_for("lab", ["skh5", "skh1200", "nope"]) == {"skh5": "rh5"}
    assert w.holds("lab", ["skh1199", "skh1200"]) == {"skh1199"}
    w.add(full(1))  # unchanged
    w.add(full(2, content="new", at=t0 - dt.timedelta(microseconds=1)))  # older at the source: stale
    w.add(full(3, content="new", at=t0 + dt.timedelta(microseconds=1)))  # changed
    w.add(full(5000, content="new"))  # new
    w.flush()
    assert (w.unchanged, w.stale, w.written) == (1, 1, 2)
    assert w.row_hashes_for("lab", ["skh5000"]) == {"skh5000": "rh5000"}
    gone = w.stage_deletions("lab", [*(f"skh{i}" for i in range(1, 1200)), "skh5000"])
    assert gone == [("id0", "skh0")]
    assert w.stage_rekey() == 1
    w.commit()
    rows = table.refresh().scan(row_filter="institution == 'a'", selected_fields=("id", "content_hash")).to_arrow().to_pylist()
    by_id = {r["id"]: r["content_hash"] for r in rows}
    assert len(rows) == len(by_id) == 1200 and "id0" not in by_id and "id1200" not in by_id
    assert (by_id["id2"], by_id["id3"], by_id["id5000"]) == ("c2", "new3", "new5000")
    index = w._existing
    w.close()
    assert index.closed and w.row_hashes_for("lab", ["skh5000"]) == {"skh5000": "rh5000"}  # asked again: read again
    w.close()


def test_a_full_disk_fails_the_run_with_what_to_do(tmp_path):
    index = PublishedRows(tmp_path)
    index.db.execute("PRAGMA max_page_count = 8")  # what a full disk looks like to SQLite
    with pytest.raises(CommandFailed, match=f"index of published rows in {tmp_path} could not be written .*full.*TMPDIR"):
        index.fill([_batch([_row(i) for i in range(2000)])])
    index.close()


def test_a_flush_writes_its_rows_in_the_order_pyarrows_sort_gives(tmp_path):
    """The writer sorts the row dicts in Python (no second Arrow copy): the file holds exactly the order of
    sort_by(patient, effective_time) with nulls last and ties in the order added, mixed timezones and scripts included."""
    catalog = open_catalog(f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "wh")
    catalog.create_namespace("recognition")
    table = catalog.create_table("recognition.observation", schema=ARROW_SCHEMA)
    rng = random.Random(7)
    t0 = dt.datetime(2026, 1, 1, tzinfo=UTC)
    east8 = dt.timezone(dt.timedelta(hours=8))
    times = [None, t0, t0.astimezone(east8), t0 + dt.timedelta(microseconds=1), (t0 - dt.timedelta(days=400)).astimezone(east8),
             dt.datetime(1900, 1, 1, tzinfo=UTC)]
    patients = [None, "", "a", "b", "B", "中文", "é", "a\U0001F600", "ab"]
    rows = [{"id": f"id{i}", "institution": "a", "resource_type": "Observation", "resource": "{}", "content_hash": f"c{i}",
             "source_system": "LIS", "source_table": "lab", "source_key_hash": f"skh{i}", "run_id": "r0", "mapping_version": "m",
             "ruleset_version": "v", "key_id": "k1", "published_at": t0, "source_updated_at": t0, "source_row_hash": f"rh{i}",
             "patient": rng.choice(patients), "effective_time": rng.choice(times)} for i in range(600)]
    w = TableWriter(table, "a", "r1", lambda data, where: None, key_id="k1")
    for row in rows:
        w.add(dict(row))
    w.flush()
    w.commit()
    (path,) = [task.file.file_path for task in table.refresh().scan().plan_files()]
    with table.io.new_input(path).open() as f:
        written = pq.read_table(f, columns=["id"]).column("id").to_pylist()
    expected = pa.Table.from_pylist(rows, schema=ARROW_SCHEMA).sort_by([("patient", "ascending"), ("effective_time", "ascending")])
    assert written == expected.column("id").to_pylist()
    w.close()
