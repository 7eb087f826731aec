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
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from hub.demo.generator import generate_region
from hub.lakehouse import writer as writer_module
from hub.lakehouse.rowindex import PublishedRows
from hub.lakehouse.tables import ARROW_SCHEMA, ensure_table, open_catalog
from hub.lakehouse.writer import CommitConflict, TableWriter
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


@pytest.mark.parametrize("seed", range(4))
def test_many_runs_of_random_changes_match_a_model(table, tmp_path, seed):
    """Runs of random replacements, deletions (a full pull that no longer sees some keys) and new rows, some
    failing before their commit, some after a commit made outside hub, against a dict of what must be published.
    Whatever the kept index reuses, drops or masks, the table must equal the model after every run."""
    import random

    rng = random.Random(seed)
    kept = tmp_path / "a.sqlite"
    model = {f"id{i}": f"c{i}" for i in range(FILES * PER_FILE)}
    next_id, reused = 10_000, 0
    for run in range(12):
        w = TableWriter(table.catalog.load_table(table.name()), "a", f"r{run}", lambda data, where: None, key_id="k1",
                        kept_index=kept)
        live = sorted(model)
        changes = {rid: f"v{run}x" for rid in rng.sample(live, rng.randint(0, 6))}
        for _ in range(rng.randint(0, 3)):
            changes[f"id{next_id}"] = f"v{run}x"
            next_id += 1
        for rid, content in changes.items():
            w.add(_row(int(rid[2:]), content, run=f"r{run}"))
        w.flush()
        reused += w.index_reused
        gone = set()
        if rng.random() < 0.4:  # a full pull: some keys no longer at the source (a whole file's, now and then)
            gone = set(rng.sample(live, rng.randint(0, 4)))
            if rng.random() < 0.3:
                gone |= {f"id{i}" for i in range(PER_FILE)} & set(live)
            gone -= set(changes)
            seen = [f"skh{r[2:]}" for r in (set(model) | set(changes)) - gone]
            w.stage_deletions("lab", seen)
        if rng.random() < 0.15:  # the run fails before its commit: nothing of it counts
            w.close()
        else:
            w.commit()
            w.close()
            model.update({rid: f"{content}{rid[2:]}" for rid, content in changes.items()})
            for rid in gone:
                model.pop(rid, None)
        if rng.random() < 0.1:  # a commit made outside hub: the kept index is not current any more
            table.catalog.load_table(table.name()).append(
                pa.Table.from_pylist([_row(next_id, "out")], schema=ARROW_SCHEMA))
            model[f"id{next_id}"] = f"out{next_id}"
            next_id += 1
        assert _contents(table) == model, f"run {run}"
    assert reused >= 3  # the kept index was trusted in several of the runs


@pytest.mark.parametrize("meanwhile", ["append outside hub", "rollback", "another writer of the institution"])
def test_a_commit_that_landed_over_something_unseen_is_not_stamped(table, tmp_path, meanwhile):
    """pyiceberg rebases a commit over whatever landed after the run read its partition: the run's index then
    misses it, so the commit must not stamp it as current (the next run reads the partition again)."""
    kept = tmp_path / "a.sqlite"
    _run(table, kept, "r1", {500: "c"})
    before_r1 = table.refresh().snapshots()[-2].snapshot_id
    w = _run(table, kept, "r2", {7: "n"}, commit=False)  # read (the kept index), staged
    assert w.index_reused
    t = table.catalog.load_table(table.name())
    if meanwhile == "append outside hub":
        t.append(pa.Table.from_pylist([_row(600, "x")], schema=ARROW_SCHEMA))
    elif meanwhile == "rollback":
        t.manage_snapshots().rollback_to_snapshot(before_r1).commit()  # id500 is no longer published
    else:
        _run(t, None, "r-other", {601: "x"})
    try:
        w.commit()  # rebased over the append or the other writer; refused after the rollback (its read is gone)
    except CommitConflict:
        assert meanwhile == "rollback"
    w.close()
    r3 = _run(table, kept, "r3", {7: "n", 500: "c", 600: "x", 601: "x"})  # the source still has them all
    assert not r3.index_reused
    assert _contents(table) == _expected({7: "n"}) | {"id500": "c500", "id600": "x600", "id601": "x601"}


def test_a_run_that_changes_nothing_on_an_empty_table_stamps_nothing(tmp_path):
    t = ensure_table(open_catalog(f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "wh"), "recognition", "Observation")
    w = TableWriter(t, "a", "r0", lambda data, where: None, key_id="k1", kept_index=tmp_path / "a.sqlite")
    assert w.row_hashes_for("lab", ["skh1"]) == {}
    w.commit()
    w.close()
    index = PublishedRows(keep=tmp_path / "a.sqlite")
    assert index.stamp is None  # "the table was empty" is not a state a later run may trust
    index.close()


def test_a_rowindex_folder_that_cannot_be_written_falls_back_to_a_scratch_index(table, tmp_path):
    (tmp_path / "not-a-folder").write_text("")
    w = _run(table, tmp_path / "not-a-folder" / "a.sqlite", "r1", {7: "n"})
    assert not w.index_reused and _contents(table) == _expected({7: "n"})


def test_the_kept_file_is_readable_by_its_owner_only(table, tmp_path):
    _run(table, tmp_path / "a.sqlite", "r1", {7: "n"})
    assert (tmp_path / "a.sqlite").stat().st_mode & 0o777 == 0o600


def test_a_file_dropped_whole_takes_its_masks_along(table, tmp_path):
    kept = tmp_path / "a.sqlite"
    _run(table, kept, "r1", {0: "n"})  # masks id0 in the first file
    w = TableWriter(table.catalog.load_table(table.name()), "a", "r2", lambda data, where: None, key_id="k1", kept_index=kept)
    w.stage_deletions("lab", [f"skh{i}" for i in range(FILES * PER_FILE) if not 1 <= i < PER_FILE])  # the rest of it
    w.commit()
    w.close()
    files = table.refresh().inspect.files()
    live = {p for p, c in zip(files.column("file_path").to_pylist(), files.column("content").to_pylist(), strict=True) if c == 0}
    for path, content in zip(files.column("file_path").to_pylist(), files.column("content").to_pylist(), strict=True):
        if content == 1:  # every mask left names a data file still in the table
            data = pq.read_table(table.io.new_input(path).open())
            assert set(data.column("file_path").to_pylist()) <= live
    summary = table.current_snapshot().summary
    rows = table.scan().to_arrow().num_rows
    assert int(summary["total-records"]) - int(summary["total-position-deletes"]) == rows
