"""A run replaces or deletes rows by masking their positions (merge on read), not by rewriting the files that hold them.

Each test builds a partition of several data files (an earlier run's), runs a TableWriter over it and reads the
table back through pyiceberg, the way every reader of hub reads it. What must hold: each id exactly once with its
newest version, no earlier data file rewritten for a changed row, a file whose rows all went dropped whole, the
next run reading positions through the masks, and a commit refused (nothing of it visible) when another commit
removed or masked rows of a file it masks since it read the partition.
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyiceberg.manifest import DataFileContent
from pyiceberg.table.snapshots import Operation

from hub.lakehouse import writer as writer_module
from hub.lakehouse.positions import partition_rows
from hub.lakehouse.rowindex import COLUMNS
from hub.lakehouse.tables import ARROW_SCHEMA, ensure_table, open_catalog
from hub.lakehouse.writer import CommitConflict, TableWriter
from hub.leakscan import run_files

UTC = dt.UTC
T0 = dt.datetime(2026, 1, 1, tzinfo=UTC)
FILES, PER_FILE = 5, 40


def _row(i: int, content: str = "c", run: str = "r0", key: str = "k1", inst: str = "a") -> dict:
    return {"id": f"id{i}", "institution": inst, "resource_type": "Observation", "resource": "{}", "content_hash": f"{content}{i}",
            "source_system": "LIS", "source_table": "lab", "source_key_hash": f"skh{i}", "run_id": run, "mapping_version": "m",
            "ruleset_version": "v", "key_id": key, "published_at": T0, "source_updated_at": T0, "source_row_hash": f"rh{i}"}


@pytest.fixture
def table(tmp_path):
    t = ensure_table(open_catalog(f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "wh"), "recognition", "Observation")
    for f in range(FILES):  # an earlier run's rows, in FILES data files
        t.append(pa.Table.from_pylist([_row(i) for i in range(f * PER_FILE, (f + 1) * PER_FILE)], schema=ARROW_SCHEMA))
    t.append(pa.Table.from_pylist([_row(i, inst="b") for i in range(1000, 1010)], schema=ARROW_SCHEMA))  # another institution
    return t


def _writer(table, run: str, key: str = "k1", **kw) -> TableWriter:
    return TableWriter(table, "a", run, lambda data, where: None, key_id=key, **kw)


def _contents(table, inst: str = "a") -> dict[str, str]:
    rows = [r for r in table.refresh().scan(selected_fields=("id", "content_hash", "institution")).to_arrow().to_pylist()
            if r["institution"] == inst]
    out = {r["id"]: r["content_hash"] for r in rows}
    assert len(out) == len(rows), "an id is published twice"
    return out


def _live_files(table, content: DataFileContent = DataFileContent.DATA) -> set[str]:
    return {f for f, c in zip(*(table.refresh().inspect.files().column(n).to_pylist() for n in ("file_path", "content")), strict=True)
            if c == content.value}


def _run_ops(table, run: str) -> list[str]:
    return [s.summary.operation for s in table.refresh().snapshots() if s.summary.additional_properties.get("hub.run-id") == run]


def _masks(table) -> list[tuple[str, int]]:
    out = []
    for path in _live_files(table, DataFileContent.POSITION_DELETES):
        with table.io.new_input(path).open() as f:
            data = pq.read_table(f)
        out += list(zip(data.column("file_path").to_pylist(), data.column("pos").to_pylist(), strict=True))
    return sorted(out)


def _change(table, run: str, changes: dict[int, str], **kw) -> TableWriter:
    w = _writer(table, run, **kw)
    for i, content in changes.items():
        w.add(_row(i, content, run=run))
    w.flush()
    return w


def test_a_changed_row_is_masked_and_no_earlier_file_is_rewritten(table):
    before, expected = _live_files(table), {**_contents(table), "id7": "n7", "id123": "n123"}
    w = _change(table, "r1", {7: "n", 123: "n"})
    w.commit()
    w.close()
    assert _contents(table) == expected
    assert _run_ops(table, "r1") == [Operation.OVERWRITE]  # one snapshot: new versions and masks of the old together
    assert before < _live_files(table)  # every earlier data file is still there, unchanged
    added = _live_files(table) - before
    assert sum(pq.read_metadata(table.io.new_input(p).open()).num_rows for p in added) == 2  # only the two new versions
    masks = _masks(table)
    assert len(masks) == 2 and len(_live_files(table, DataFileContent.POSITION_DELETES)) == len({p for p, _ in masks})
    for path, pos in masks:  # each mask names the row of the old version
        with table.io.new_input(path).open() as f:
            assert pq.read_table(f, columns=["id", "content_hash"]).slice(pos, 1).to_pylist()[0]["content_hash"] in ("c7", "c123")
    assert _contents(table, "b") == {f"id{i}": f"c{i}" for i in range(1000, 1010)}


def test_the_next_run_reads_positions_through_the_masks(table):
    _change(table, "r1", {7: "n", 8: "n"}).commit()
    located = {row["id"]: (data_file.file_path, pos) for data_file, batch, positions in partition_rows(table.refresh(), "a", COLUMNS)
               for row, pos in zip(batch.to_pylist(), positions.to_pylist(), strict=True)}
    assert len(located) == FILES * PER_FILE
    for rid, (path, pos) in located.items():  # each live row is where the index will say it is
        with table.io.new_input(path).open() as f:
            assert pq.read_table(f, columns=["id"]).column("id")[pos].as_py() == rid

    w = _writer(table, "r2")
    for i in range(FILES * PER_FILE):  # a full run that sees the same rows, and changes two again
        w.add(_row(i, {7: "m", 9: "m"}.get(i, "n" if i == 8 else "c"), run="r2"))
    w.flush()
    w.commit()
    w.close()
    assert w.unchanged == FILES * PER_FILE - 2 and w.written == 2
    expected = {f"id{i}": f"c{i}" for i in range(FILES * PER_FILE)} | {"id7": "m7", "id8": "n8", "id9": "m9"}
    assert _contents(table) == expected
    assert len(_masks(table)) == 4  # id7 twice (the first version, then r1's), id8 once, id9 once


def test_a_row_replaced_twice_in_one_run_is_published_once(table):
    w = _change(table, "r1", {7: "n"})
    w.add(_row(7, "m", run="r1"))  # a later flush of the same run changes it again: the mask names r1's own file
    w.flush()
    w.commit()
    w.close()
    assert _contents(table)["id7"] == "m7" and len(_contents(table)) == FILES * PER_FILE


def test_a_file_whose_rows_all_went_is_dropped_whole_not_masked(table):
    before = _live_files(table)
    w = _writer(table, "r1")
    seen = [f"skh{i}" for i in range(FILES * PER_FILE) if not (PER_FILE <= i < 2 * PER_FILE) and i != 0]
    gone = w.stage_deletions("lab", seen)  # the second file's rows and id0 left the source
    assert sorted(rid for rid, _ in gone) == sorted([f"id{i}" for i in range(PER_FILE, 2 * PER_FILE)] + ["id0"])
    w.commit()
    w.close()
    assert set(_contents(table)) == {f"id{i}" for i in range(FILES * PER_FILE)} - {rid for rid, _ in gone}
    assert len(before - _live_files(table)) == 1  # the second file, dropped
    assert [pos for _, pos in _masks(table)] == [0]  # id0, masked in the first
    assert _run_ops(table, "r1") == [Operation.OVERWRITE]


def test_rekeying_drops_the_old_key_files(table):
    w = _writer(table, "r1", key="k2")
    assert w.stage_rekey() == FILES * PER_FILE
    for i in range(3):
        w.add(_row(5000 + i, run="r1", key="k2"))
    w.commit()
    w.close()
    assert set(_contents(table)) == {"id5000", "id5001", "id5002"}
    assert _masks(table) == []  # the old files went whole
    assert _contents(table, "b") == {f"id{i}": f"c{i}" for i in range(1000, 1010)}


def test_a_commit_is_refused_when_another_commit_masked_the_same_file_since_the_read(table):
    before = _contents(table)
    slow = _change(table, "r1", {7: "n"})  # read the partition, staged its change of id7
    _change(table.catalog.load_table(table.name()), "r2", {8: "m"}).commit()  # another process masks a row of that file
    with pytest.raises(CommitConflict, match="run it again") as refused:
        slow.commit()
    assert "skh" not in str(refused.value) and "id7" not in str(refused.value)  # counts, never row values
    slow.close()
    assert _contents(table) == before | {"id8": "m8"}  # nothing of r1 visible, nothing lost
    again = _change(table, "r3", {7: "n"})
    again.commit()
    assert _contents(table) == before | {"id8": "m8", "id7": "n7"}


def test_a_commit_is_refused_when_the_file_it_masks_was_rewritten_since_the_read(table):
    before = _contents(table)
    slow = _change(table, "r1", {7: "n"})
    t = table.refresh()  # a compaction (or any writer) rewrites the first file meanwhile: same rows, new file
    first = next(task.file for task in t.scan().plan_files() if "id7" in pq.read_table(t.io.new_input(task.file.file_path).open(), columns=["id"]).column("id").to_pylist())
    rows = pq.read_table(t.io.new_input(first.file_path).open())
    tx = t.transaction()
    with tx.update_snapshot().overwrite() as ow:
        ow.delete_data_file(first)
        for f in writer_module._dataframe_to_data_files(table_metadata=tx.table_metadata, df=rows.select(ARROW_SCHEMA.names).cast(ARROW_SCHEMA), io=t.io):
            ow.append_data_file(f)
    tx.commit_transaction()
    with pytest.raises(CommitConflict):
        slow.commit()
    slow.close()
    assert _contents(table) == before


def test_a_concurrent_commit_on_another_partition_is_rebased_over(table, monkeypatch):
    """The catalog refuses the first attempt (another institution committed in between); pyiceberg re-plans the
    masks on the new head, their validation passes, and both commits hold."""
    real = writer_module.commit_with_retry

    def racing(t, tx, policy=writer_module.COMMIT_RETRY):
        t.catalog.load_table(t.name()).append(pa.Table.from_pylist([_row(2000, inst="b")], schema=ARROW_SCHEMA))
        return real(t, tx, policy)

    monkeypatch.setattr(writer_module, "commit_with_retry", racing)
    w = _change(table, "r1", {7: "n"})
    w.commit()
    w.close()
    assert w.retries == 1
    assert _contents(table)["id7"] == "n7" and len(_contents(table)) == FILES * PER_FILE
    assert "id2000" in _contents(table, "b")


def test_a_concurrent_mask_of_the_same_file_refuses_the_rebased_commit(table, monkeypatch):
    real = writer_module.commit_with_retry
    before = _contents(table)

    def racing(t, tx, policy=writer_module.COMMIT_RETRY):
        monkeypatch.setattr(writer_module, "commit_with_retry", real)
        _change(t.catalog.load_table(t.name()), "r2", {8: "m"}).commit()  # lands between the tx's plan and its commit
        return real(t, tx, policy)

    w = _change(table, "r1", {7: "n"})
    monkeypatch.setattr(writer_module, "commit_with_retry", racing)
    with pytest.raises(CommitConflict):
        w.commit()
    w.close()
    assert _contents(table) == before | {"id8": "m8"}


def test_a_runs_leak_check_scans_its_data_files_not_its_masks(table):
    _change(table, "r1", {7: "n"}).commit()
    files = run_files(table.refresh(), "r1")
    assert len(files) == 1 and all(pq.read_metadata(str(p)).schema.names == ARROW_SCHEMA.names for p in files)


def test_positions_count_the_rows_of_other_institutions_in_a_shared_file(tmp_path):
    """hub's tables are partitioned by institution; in a table that is not, a file mixes institutions, and a
    row's position still counts every row before it."""
    catalog = open_catalog(f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "wh")
    catalog.create_namespace("recognition")
    t = catalog.create_table("recognition.observation", schema=ARROW_SCHEMA)
    t.append(pa.Table.from_pylist([_row(i, inst="b" if i % 2 else "a") for i in range(20)], schema=ARROW_SCHEMA))
    _change(t, "r1", {6: "n"}).commit()
    assert [pos for _, pos in _masks(t)] == [6]  # id6 is the file's seventh row, after three rows of b
    assert _contents(t) == {f"id{i}": ("n" if i == 6 else "c") + str(i) for i in range(0, 20, 2)}
    assert _contents(t, "b") == {f"id{i}": f"c{i}" for i in range(1, 20, 2)}


def test_masks_of_the_same_row_are_caught_however_many_commits_land_after_them(table):
    """Two writers replace id7; other commits land after the first one's masks and before the second commits:
    the second is still refused (its window is checked whole, not by the newest snapshot only)."""
    slow = _change(table, "r1", {7: "slow"})
    other = table.catalog.load_table(table.name())
    _change(other, "r2", {7: "fast"}).commit()
    other.refresh().append(pa.Table.from_pylist([_row(3000, inst="b")], schema=ARROW_SCHEMA))
    with pytest.raises(CommitConflict) as refused:
        slow.commit()
    assert "id7" not in str(refused.value)
    assert _contents(table)["id7"] == "fast7" and len(_contents(table)) == FILES * PER_FILE


def test_a_deletion_racing_a_replacement_of_the_same_row_is_refused(table):
    slow = _writer(table, "r1")
    slow.stage_deletions("lab", [f"skh{i}" for i in range(FILES * PER_FILE) if i != 7])  # id7 left the source
    _change(table.catalog.load_table(table.name()), "r2", {7: "fast"}).commit()
    with pytest.raises(CommitConflict):
        slow.commit()
    assert _contents(table)["id7"] == "fast7"


def test_an_id_published_twice_is_published_once_after_the_next_run(table):
    table.append(pa.Table.from_pylist([_row(7, "dup")], schema=ARROW_SCHEMA))  # a duplicate, however it came
    w = _change(table, "r1", {8: "n"})
    w.commit()
    w.close()
    assert _contents(table)["id7"] in ("c7", "dup7") and _contents(table)["id8"] == "n8"  # each once (_contents checks)


def test_every_snapshot_of_a_run_shows_each_id_once(table):
    w = _change(table, "r1", {7: "n", 8: "n"})
    w.stage_deletions("lab", [f"skh{i}" for i in range(FILES * PER_FILE) if i != 9])
    w.commit()
    for snap in table.refresh().snapshots():
        ids = table.scan(snapshot_id=snap.snapshot_id, selected_fields=("id",)).to_arrow().column("id").to_pylist()
        assert len(ids) == len(set(ids)), snap.summary


def test_a_file_of_an_unpartitioned_table_is_masked_not_dropped_when_it_holds_other_rows(tmp_path):
    catalog = open_catalog(f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "wh")
    catalog.create_namespace("recognition")
    t = catalog.create_table("recognition.observation", schema=ARROW_SCHEMA)
    t.append(pa.Table.from_pylist([_row(i, inst="b" if i % 2 else "a") for i in range(6)], schema=ARROW_SCHEMA))
    w = _writer(t, "r1")
    w.stage_deletions("lab", [])  # every row of a went
    w.commit()
    assert _contents(t) == {} and _contents(t, "b") == {f"id{i}": f"c{i}" for i in (1, 3, 5)}
