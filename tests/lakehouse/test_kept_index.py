"""The index of published rows is kept between runs, and trusted only while it provably holds the partition.

A run that changes 1 % of a partition must not read the other 99 % again (issue 11): its writer reuses the index
the previous run stamped with the snapshot it committed, while every commit since is another institution's run.
Anything else (a compaction, a commit made outside hub, a run that died before committing, a torn or foreign
file, a table dropped and made again, a second process holding the file) makes it read the partition again,
and every outcome publishes each id exactly once with its newest version.
"""

from __future__ import annotations

import multiprocessing
import os
import signal

import pyarrow as pa
import pytest
import sqlalchemy as sa

from hub.demo.generator import generate_region
from hub.lakehouse import writer as writer_module
from hub.lakehouse.rowindex import PublishedRows
from hub.lakehouse.tables import ARROW_SCHEMA, ensure_table, open_catalog
from hub.lakehouse.writer import TableWriter
from hub.pipeline import ROW_INDEX_DIR, run_institution
from hub.region import load_region
from tests.lakehouse.test_position_deletes import FILES, PER_FILE, _contents, _row


@pytest.fixture
def table(tmp_path):
    t = ensure_table(open_catalog(f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "wh"), "recognition", "Observation")
    for f in range(FILES):
        t.append(pa.Table.from_pylist([_row(i) for i in range(f * PER_FILE, (f + 1) * PER_FILE)], schema=ARROW_SCHEMA))
    return t


@pytest.fixture
def reads(monkeypatch):
    """How many times a writer read its partition from the table."""
    count = {"n": 0}
    real = writer_module.partition_rows

    def counting(*args, **kw):
        count["n"] += 1
        return real(*args, **kw)

    monkeypatch.setattr(writer_module, "partition_rows", counting)
    return count


def _run(table, kept, run: str, changes: dict[int, str], inst: str = "a", commit: bool = True) -> TableWriter:
    w = TableWriter(table.catalog.load_table(table.name()), inst, run, lambda data, where: None, key_id="k1", kept_index=kept)
    for i, content in changes.items():
        w.add(_row(i, content, run=run, inst=inst))
    w.flush()
    if commit:
        w.commit()
        w.close()
    return w


def _expected(*changes: dict[int, str]) -> dict[str, str]:
    out = {f"id{i}": f"c{i}" for i in range(FILES * PER_FILE)}
    for change in changes:
        out |= {f"id{i}": f"{c}{i}" for i, c in change.items()}
    return out


def test_the_next_run_reuses_the_index_and_reads_nothing_of_the_partition(table, tmp_path, reads):
    kept = tmp_path / "idx" / "a.sqlite"
    _run(table, kept, "r1", {7: "n"})
    assert reads["n"] == 1
    w = _run(table, kept, "r2", {8: "n", 9: "c", 7: "n"})  # one change, two rows as published
    assert reads["n"] == 1 and w.index_reused and w.unchanged == 2 and w.written == 1
    w = _run(table, kept, "r3", {7: "m"})  # the row r1 replaced, replaced again: its place came from the kept index
    assert reads["n"] == 1 and w.index_reused
    assert _contents(table) == _expected({7: "m", 8: "n"})


def test_another_institutions_runs_keep_it_current(table, tmp_path, reads):
    _run(table, tmp_path / "a.sqlite", "r1", {7: "n"})
    _run(table, tmp_path / "b.sqlite", "rb", {5000: "c"}, inst="b")  # another partition, its own index
    w = _run(table, tmp_path / "a.sqlite", "r2", {8: "n"})
    assert w.index_reused and reads["n"] == 2
    assert _contents(table) == _expected({7: "n", 8: "n"}) and _contents(table, "b") == {"id5000": "c5000"}


@pytest.mark.parametrize("outside", ["append outside hub", "another writer without the index"])
def test_a_commit_to_the_partition_it_did_not_see_makes_it_read_again(table, tmp_path, reads, outside):
    kept = tmp_path / "a.sqlite"
    _run(table, kept, "r1", {7: "n"})
    if outside == "append outside hub":
        table.catalog.load_table(table.name()).append(pa.Table.from_pylist([_row(6000, "x")], schema=ARROW_SCHEMA))
    else:
        _run(table, None, "r-other", {8: "o"})
    before = reads["n"]
    w = _run(table, kept, "r2", {7: "m"})
    assert not w.index_reused and reads["n"] == before + 1
    expected = _expected({7: "m"}) | ({"id6000": "x6000"} if outside == "append outside hub" else {"id8": "o8"})
    assert _contents(table) == expected


def test_a_run_that_died_before_its_commit_leaves_it_to_be_read_again(table, tmp_path):
    kept = tmp_path / "a.sqlite"
    _run(table, kept, "r1", {7: "n"})
    ctx = multiprocessing.get_context("fork")
    flushed = ctx.Event()

    def victim():
        _run(table, kept, "dead", {8: "dead", 9: "dead"}, commit=False)  # the index now holds uncommitted places
        flushed.set()
        signal.pause()

    proc = ctx.Process(target=victim)
    proc.start()
    assert flushed.wait(60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    w = _run(table, kept, "r2", {10: "n"})
    assert not w.index_reused
    assert _contents(table) == _expected({7: "n", 10: "n"})


def test_a_torn_or_foreign_file_is_read_again(table, tmp_path):
    kept = tmp_path / "a.sqlite"
    _run(table, kept, "r1", {7: "n"})
    kept.write_bytes(b"not a database" * 100)
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"a.sqlite{suffix}").unlink(missing_ok=True)
    w = _run(table, kept, "r2", {8: "n"})
    assert not w.index_reused
    assert _contents(table) == _expected({7: "n", 8: "n"})
    assert _run(table, kept, "r3", {9: "n"}).index_reused


def test_a_table_made_again_under_the_same_name_is_read_again(table, tmp_path):
    kept = tmp_path / "a.sqlite"
    _run(table, kept, "r1", {7: "n"})
    catalog = table.catalog
    catalog.drop_table(table.name())
    fresh = ensure_table(catalog, "recognition", "Observation")
    fresh.append(pa.Table.from_pylist([_row(i) for i in range(10)], schema=ARROW_SCHEMA))
    w = _run(fresh, kept, "r2", {3: "n"})
    assert not w.index_reused
    assert _contents(fresh) == {f"id{i}": ("n" if i == 3 else "c") + str(i) for i in range(10)}


def test_a_second_process_holding_it_gets_a_scratch_index(table, tmp_path):
    kept = tmp_path / "a.sqlite"
    _run(table, kept, "r1", {7: "n"})
    ctx = multiprocessing.get_context("fork")
    holding, done = ctx.Event(), ctx.Event()

    def holder():
        index = PublishedRows(keep=kept)
        holding.set()
        done.wait(60)
        index.close()

    proc = ctx.Process(target=holder)
    proc.start()
    assert holding.wait(60)
    try:
        w = _run(table, kept, "r2", {8: "n"})
        assert not w.index_reused
    finally:
        done.set()
        proc.join(30)
    assert _contents(table) == _expected({7: "n", 8: "n"})
    assert not _run(table, kept, "r3", {9: "n"}).index_reused  # r2's commit was not recorded in the kept file
    assert _run(table, kept, "r4", {10: "n"}).index_reused


@pytest.mark.slow
def test_a_pipeline_correction_run_reads_no_partition(tmp_path, keys, reads):
    generate_region(tmp_path, patients=15)
    region = load_region(tmp_path)
    inst = "city-first"
    run_institution(region, inst, keys)
    assert (tmp_path / ROW_INDEX_DIR / "recognition.observation" / f"{inst}.sqlite").exists()
    first = reads["n"]
    lis = sa.create_engine(next(f.url for f in region.institution(inst).feeds if f.name == "lis"))
    with lis.begin() as conn:
        conn.execute(sa.text("UPDATE lab_result SET result_value = '9.99', status = 'C', updated_at = '2026-02-01 10:00:00' "
                             "WHERE result_id = (SELECT min(result_id) FROM lab_result WHERE item_code = 'GLU' AND status = 'F' AND result_id > 3)"))
    report = run_institution(region, inst, keys)
    assert report.by_resource()["Observation"]["written"] == 1
    assert reads["n"] == first  # every writer that had rows reused its kept index
    table = open_catalog(region.catalog_url, region.warehouse).load_table("recognition.observation")
    ids = table.scan(row_filter=f"institution == '{inst}'", selected_fields=("id",)).to_arrow().column("id").to_pylist()
    assert len(ids) == len(set(ids))
