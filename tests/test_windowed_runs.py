"""Runs by day (windowed runs): a backfill of one institution fans out over days that run at once.

A day pulls only the blocks with a time column, rows of that day; the regular run afterwards
pulls the rest, and the tables end as one regular run leaves them. Runs of one institution that
would both append the same id (a row whose time moved between two windows) cannot both commit.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
import shutil
import sqlite3
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from deid.keys import Keyring
from hub.demo.generator import generate_region
from hub.lakehouse.tables import open_catalog
from hub.lakehouse.writer import CommitConflict
from hub.lineage import runrecord
from hub.lineage.audit import verify_region
from hub.mapping.run import has_time_column
from hub.pipeline import feed_blocks, run_institution
from hub.region import load_region
from tests.conftest import TEST_MASTER_KEY

INST = "city-first"


def _days(region, institution: str) -> list[str]:
    """Every day on which a block with a time column has rows (the demo writes times as text, ISO-like)."""
    days: set[str] = set()
    for work in feed_blocks(region.institution(institution)):
        if has_time_column(work.block):
            with work.engine.connect() as conn:
                sql = f'SELECT DISTINCT "{work.block.watermark.column}" FROM "{work.block.table}"'
                days |= {v[:10] for (v,) in conn.exec_driver_sql(sql) if v}
    return sorted(days)


def _window(day: str) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime.fromisoformat(day)
    return start, start + dt.timedelta(days=1)


def _run_day(args: tuple[str, str]) -> tuple[str, int, int, int]:
    """One windowed run in its own process: (day, rows read, published, quarantined)."""
    workspace, day = args
    report = run_institution(load_region(Path(workspace)), INST, Keyring(TEST_MASTER_KEY), window=_window(day))
    return day, sum(c.rows_read for c in report.counts), sum(c.published for c in report.counts), sum(c.quarantined for c in report.counts)


def _published(region, institution: str) -> dict[str, list[tuple[str, str]]]:
    """Per table, the institution's (id, content_hash) pairs, sorted (duplicates kept)."""
    icat = open_catalog(region.catalog_url, region.warehouse)
    out = {}
    for ident in icat.list_tables(region.zone):
        rows = icat.load_table(ident).scan(selected_fields=("id", "content_hash", "institution")).to_arrow().to_pylist()
        out[ident[-1]] = sorted((r["id"], r["content_hash"]) for r in rows if r["institution"] == institution)
    return out


def _overlapping(region) -> int:
    """Pairs of the institution's windowed runs that were running at the same time."""
    import json

    from hub.lineage import runrecord

    with runrecord.connect(region.catalog_url).connect() as conn:
        rows = conn.execute(sa.select(runrecord.runs.c.started_at, runrecord.runs.c.finished_at, runrecord.runs.c.report)
                            .where(runrecord.runs.c.institution == INST)).all()
    spans = [(r.started_at, r.finished_at) for r in rows if json.loads(r.report).get("window")]
    return sum(1 for i, a in enumerate(spans) for b in spans[i + 1:] if a[0] < b[1] and b[0] < a[1])


def _missing_patient_rows(engine) -> int:
    from hub.lineage.schema import quarantine

    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(quarantine)
                            .where(quarantine.c.reason.contains("has not published"))).scalar_one()


def _written(report) -> int:
    return sum(c.written for c in report.counts)


@pytest.mark.slow
def test_days_run_three_at_a_time_then_the_regular_run_match_one_regular_run(tmp_path, keys):
    backfilled, plain = tmp_path / "backfilled", tmp_path / "plain"
    generate_region(backfilled, patients=8)
    shutil.copytree(backfilled, plain)  # the same sources, published in one regular run
    region = load_region(backfilled)
    days = _days(region, INST)
    assert len(days) > 6

    with mp.get_context("spawn").Pool(3) as pool:
        done = pool.map(_run_day, [(str(backfilled), d) for d in days], chunksize=1)
    assert [d for d, *_ in done] == days
    assert all(read == published + quarantined for _, read, published, quarantined in done)
    by_days = _missing_patient_rows(runrecord.connect(region.catalog_url))
    assert sum(published for _, _, published, _ in done) > 0
    assert _overlapping(region) > 0  # days of one institution ran at the same time

    after = run_institution(region, INST, keys)  # blocks without a time column; rows a day quarantined for a patient not yet published
    reference = run_institution(load_region(plain), INST, keys)
    # every day published the institution's patients first (its referenced run): the days quarantined
    # for "a patient not published" only the rows one regular run quarantines so too (the demo's orphans)
    assert by_days == _missing_patient_rows(runrecord.connect(load_region(plain).catalog_url))
    assert 0 < _written(after) < _written(reference)

    tables = _published(region, INST)
    assert tables == _published(load_region(plain), INST)
    assert sum(len(rows) for rows in tables.values()) == _written(reference)
    for name, rows in tables.items():
        assert len({rid for rid, _ in rows}) == len(rows), f"{name}: an id published twice"
    assert verify_region(region).ok


def _add_visit(db: Path, when: str) -> str:
    """A new visit of a published patient at time when; returns its visit number."""
    con = sqlite3.connect(db)
    with con:
        cols = [r[1] for r in con.execute("PRAGMA table_info(visit)")]
        row = dict(zip(cols, con.execute("SELECT * FROM visit ORDER BY visit_id LIMIT 1").fetchone(), strict=True))
        row.update(visit_id=con.execute("SELECT max(visit_id) + 1 FROM visit").fetchone()[0], visit_no="WIN-TEST-0001", updated_at=when)
        con.execute(f"INSERT INTO visit ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", [row[c] for c in cols])
    con.close()
    return row["visit_no"]


class _MoveThenPublish:
    """Progress of the first run: once it has read the new visit, the source moves the visit to
    the next day and another run, of that day, publishes it before the first run commits."""

    def __init__(self, region, keys, db: Path):
        self.region, self.keys, self.db = region, keys, db
        self.label, self.other = "", None

    def start(self, label: str, total: int) -> None:
        self.label = label

    def advance(self, n: int) -> None:
        if self.other is None and " visit " in self.label and n:
            con = sqlite3.connect(self.db)
            with con:
                con.execute("UPDATE visit SET updated_at = '2025-07-02 09:00:00' WHERE visit_no = 'WIN-TEST-0001'")
            con.close()
            self.other = run_institution(self.region, INST, self.keys, window=_window("2025-07-02"))


def _encounter_ids(region) -> list[str]:
    icat = open_catalog(region.catalog_url, region.warehouse)
    rows = icat.load_table((region.zone, "encounter")).scan(selected_fields=("id", "institution")).to_arrow().to_pylist()
    return [r["id"] for r in rows if r["institution"] == INST]


def test_two_days_that_would_append_the_same_row_cannot_both_commit(tmp_path, keys):
    generate_region(tmp_path, patients=8)
    region = load_region(tmp_path)
    run_institution(region, INST, keys)
    db = tmp_path / "sources" / f"{INST}-his.db"
    _add_visit(db, "2025-07-01 10:00:00")
    before = _encounter_ids(region)

    hook = _MoveThenPublish(region, keys, db)
    two_days = (dt.datetime(2025, 7, 1), dt.datetime(2025, 7, 3))  # starts a day earlier: its own lock, the same row
    with pytest.raises(CommitConflict, match=r"1 row\(s\) this run would publish were published by another run of city-first.*run it again"):
        run_institution(region, INST, keys, progress=hook, window=two_days)
    assert hook.other is not None
    assert Counter(c.resource_type for c in hook.other.counts if c.written)["Encounter"] == 1  # the other day won

    after = _encounter_ids(region)
    assert len(after) == len(set(after)) == len(before) + 1  # the winner's row, once

    again = run_institution(region, INST, keys, window=two_days)  # the loser again: the row is published, unchanged
    visits = next(c for c in again.counts if c.source_table == "visit")
    assert (visits.rows_read, visits.published, visits.written, visits.unchanged) == (1, 1, 0, 1)
    assert sorted(_encounter_ids(region)) == sorted(after)
    assert verify_region(region).ok


def test_a_day_pulls_only_blocks_with_a_time_column_and_its_counts_add_up(tmp_path, keys):
    from hub.lineage import runrecord
    from hub.lineage.schema import watermarks

    generate_region(tmp_path, patients=8)
    region = load_region(tmp_path)
    his, lis = (sqlite3.connect(tmp_path / "sources" / f"{INST}-{f}.db") for f in ("his", "lis"))
    day = max(_days(region, INST), key=lambda d: his.execute("SELECT count(*) FROM visit WHERE updated_at LIKE ?", (f"{d}%",)).fetchone()[0])

    report = run_institution(region, INST, keys, window=_window(day))

    assert report.window == (f"{day}T00:00:00", (dt.date.fromisoformat(day) + dt.timedelta(days=1)).isoformat() + "T00:00:00")
    assert report.outside_window == ["his:diagnosis", "his:prescription"]  # key watermarks or none
    pulled = {c.source_table for c in report.counts}
    assert pulled == {"visit", "vital_sign", "lab_order", "lab_result"}  # patients and the hospital: by the referenced run
    for c in report.counts:
        assert c.rows_read == c.published + c.quarantined, c
    expected = {t: con.execute(f"SELECT count(*) FROM {t} WHERE updated_at >= ? AND updated_at < ?", (day, report.window[1][:10])).fetchone()[0]
                for con, tables in ((his, ("visit", "vital_sign")), (lis, ("lab_result",))) for t in tables}
    assert {c.source_table: c.rows_read for c in report.counts if c.source_table in expected} == expected
    assert expected["visit"] > 0
    engine = runrecord.connect(region.catalog_url)
    with engine.connect() as conn:
        advanced = conn.execute(sa.select(watermarks.c.block, watermarks.c.run_id).where(watermarks.c.institution == INST)).all()
    # only the referenced run (the institution's patients, before the day) advanced watermarks: the day's blocks never do
    assert advanced and {run for _, run in advanced} == {report.referenced_run}
    assert report.referenced_run != report.run_id and runrecord.last_status(engine, INST) == "succeeded"
    assert runrecord.last_status(engine, INST) == "succeeded"
    assert runrecord.live_locks(engine, f"{INST}@") == []  # the day's lock is released


def test_backfill_days_job_runs_one_institution_day(tmp_path, keys, monkeypatch):
    from dagster import DagsterInstance, MultiPartitionKey

    from dagster_project.defs.publish.backfill import backfill_days
    from dagster_project.partitions import INSTITUTIONS
    from dagster_project.resources import HubResource

    generate_region(tmp_path, patients=8)
    region = load_region(tmp_path)
    day = next(d for d in _days(region, INST) if d >= "2024-01-01")
    monkeypatch.setenv("HUB_MASTER_KEY", keys.master.hex())
    monkeypatch.setenv("HUB_WORKSPACE", str(tmp_path))
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(INSTITUTIONS, [INST])

    result = backfill_days.execute_in_process(
        instance=instance, resources={"hub": HubResource(workspace=str(tmp_path))},
        partition_key=MultiPartitionKey({"institution": INST, "day": day}))

    assert result.success
    assert {k for k in result.dagster_run.tags if k.startswith("hub-db/")} == {f"hub-db/{INST}.his", f"hub-db/{INST}.lis"}
    mats = [e.step_materialization_data.materialization for e in result.get_asset_materialization_events()]
    assert mats and all(m.partition == INST for m in mats)
    for m in mats:
        meta = {k: v.value for k, v in m.metadata.items()}
        assert set(meta) == {"rows_read", "rows_published", "rows_quarantined", "rows_written", "rows_unchanged",
                             "window", "day", "run_id", "snapshot_id"}
        assert meta["rows_read"] == meta["rows_published"] + meta["rows_quarantined"] > 0
        assert meta["day"] == day and meta["window"].startswith(f"{day}T00:00:00")
    out = result.output_for_node("publish_day")
    assert out["outside_window"] == ["his:diagnosis", "his:prescription"]
    assert INST in out["referenced_run"] and out["referenced_run"] != out["run_id"]


def test_a_live_day_keeps_the_institution_runs_and_fresh_orphans(tmp_path, keys):
    """A run taking the institution's lock does not mark a running day failed, and removes only old orphan files
    while a day of the institution runs (the day's files not committed yet look like orphans)."""
    import os
    import time

    from hub.lakehouse.orphans import GRACE_SECONDS
    from hub.lineage import runrecord
    from hub.pipeline import _remove_orphans, window_lock_key

    generate_region(tmp_path, patients=8)
    region = load_region(tmp_path)
    run_institution(region, INST, keys, window=_window(_days(region, INST)[0]))  # makes the tables
    engine = runrecord.connect(region.catalog_url)
    day_lock = window_lock_key(INST, dt.datetime(2099, 1, 2))
    assert day_lock == f"{INST}@2099-01-02"
    runrecord.acquire_lock(engine, day_lock, "day-run")
    runrecord.start_run(engine, "day-run", INST, keys.key_id, "r", "v")
    folder = region.warehouse / region.zone / "patient" / "data" / f"institution={INST}"
    folder.mkdir(parents=True, exist_ok=True)
    fresh, old = folder / "fresh-uncommitted.parquet", folder / "old-uncommitted.parquet"
    for f in (fresh, old):
        f.write_bytes(b"not committed")
    os.utime(old, (time.time() - GRACE_SECONDS - 60,) * 2)

    assert runrecord.acquire_lock(engine, INST, "regular-run") == []  # the day is alive: not abandoned
    assert runrecord.last_status(engine, INST, exclude="regular-run") == "running"
    assert _remove_orphans(region, INST, engine) == 1
    assert fresh.exists() and not old.exists()
    runrecord.release_lock(engine, INST, "regular-run")

    runrecord.release_lock(engine, day_lock, "day-run")  # the day ends (here: its process would have died)
    assert runrecord.acquire_lock(engine, INST, "regular-run-2") == ["day-run"]
    assert _remove_orphans(region, INST, engine) == 1 and not fresh.exists()
    runrecord.release_lock(engine, INST, "regular-run-2")


def test_window_bounds_are_written_like_the_source_times():
    import sqlalchemy as sa

    from hub.sources.sql import window_bound
    from hub.yamlio import ConfigError

    text, stamp, day = (sa.column("t", t) for t in (sa.Text(), sa.DateTime(), sa.Date()))
    midnight, later = dt.datetime(2024, 3, 5), dt.datetime(2024, 3, 5, 8, 30)
    assert window_bound(text, midnight, "%Y%m%d%H%M%S") == "20240305"  # "20240305083000" sorts after it, "20240304..." before
    assert window_bound(text, midnight, "%Y-%m-%d %H:%M:%S") == "2024-03-05"  # so "2024-03-05 00:00" is in the day
    assert window_bound(text, later, "%Y-%m-%d %H:%M:%S") == "2024-03-05 08:30"
    assert window_bound(stamp, later, "%Y%m%d") == later
    assert window_bound(day, midnight, "%Y%m%d") == dt.date(2024, 3, 5)
    assert window_bound(day, later, "%Y%m%d") == dt.date(2024, 3, 6)
    with pytest.raises(ConfigError, match="do not sort like times"):
        window_bound(text, midnight, "%d/%m/%Y %H:%M")
