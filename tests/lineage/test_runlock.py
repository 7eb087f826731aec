"""One run per institution at a time: a second process waits or is refused, a killed run is cleaned up.

Each test runs real processes against a real workspace (SQLite catalog, local warehouse):
two publishes at once, a holder killed with SIGKILL, a run killed after writing data files
but before its commit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest
import sqlalchemy as sa

from hub.demo.generator import generate_region
from hub.lakehouse.orphans import find_orphans
from hub.lakehouse.tables import open_catalog
from hub.lineage import runrecord
from hub.pipeline import feed_blocks, run_institution
from hub.region import load_region
from tests.conftest import TEST_MASTER_KEY

pytestmark = pytest.mark.slow
INST = "city-first"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def region(tmp_path):
    generate_region(tmp_path / "ws", patients=12)
    return load_region(tmp_path / "ws")


def _python(code: str, ws: Path) -> subprocess.Popen:
    env = {**os.environ, "HUB_MASTER_KEY": TEST_MASTER_KEY.hex(), "PYTHONPATH": str(REPO)}
    prelude = f"from pathlib import Path\nfrom hub.region import load_region\nregion = load_region(Path({str(ws)!r}))\n"
    return subprocess.Popen([sys.executable, "-c", prelude + textwrap.dedent(code)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _all_ids(region) -> dict[str, list[str]]:
    icat = open_catalog(region.catalog_url, region.warehouse)
    if (region.zone,) not in icat.list_namespaces():
        return {}
    return {".".join(t): icat.load_table(t).scan(selected_fields=("id",)).to_arrow().column("id").to_pylist()
            for t in icat.list_tables(region.zone)}


def test_two_publishes_of_one_institution_at_once_publish_each_row_once(region):
    code = f"""
        from deid.keys import Keyring
        from hub.pipeline import feed_blocks, run_institution
        r = run_institution(region, {INST!r}, Keyring.load(), lock_wait=120)
        print(sum(c['published'] for c in r.by_resource().values()))
    """
    procs = [_python(code, region.workspace) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-800:] for o in outs]
    ids = _all_ids(region)
    assert ids and all(len(v) == len(set(v)) for v in ids.values()), {k: len(v) - len(set(v)) for k, v in ids.items()}
    engine = runrecord.connect(region.catalog_url)
    with engine.connect() as conn:
        statuses = [s for (s,) in conn.execute(sa.select(runrecord.runs.c.status).where(runrecord.runs.c.institution == INST))]
    assert statuses == ["succeeded", "succeeded"]


def test_a_second_run_is_refused_while_a_live_run_holds_the_lock(region, keys):
    holder = _python(f"""
        import time
        from hub.lineage import runrecord
        runrecord.acquire_lock(runrecord.connect(region.catalog_url), {INST!r}, "holder-run")
        print("locked", flush=True)
        time.sleep(60)
    """, region.workspace)
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.monotonic()
        with pytest.raises(runrecord.InstitutionBusy, match="is being published by run holder-run"):
            run_institution(region, INST, keys, lock_wait=1)
        assert time.monotonic() - start < 10
        assert _all_ids(region) == {}  # nothing was read or written
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_killed_process_is_taken_over_and_its_run_marked_failed(region, keys):
    engine = runrecord.connect(region.catalog_url)
    holder = _python(f"""
        from hub.lineage import runrecord
        engine = runrecord.connect(region.catalog_url)
        runrecord.start_run(engine, "killed-run", {INST!r}, "k", "r", "0")
        runrecord.acquire_lock(engine, {INST!r}, "killed-run")
        print("locked", flush=True)
        import time; time.sleep(60)
    """, region.workspace)
    assert holder.stdout.readline().strip() == "locked"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    report = run_institution(region, INST, keys)
    assert report.abandoned_runs == ["killed-run"]
    with engine.connect() as conn:
        status = conn.execute(sa.select(runrecord.runs.c.status).where(runrecord.runs.c.run_id == "killed-run")).scalar_one()
        locks = conn.execute(sa.select(sa.func.count()).select_from(runrecord.run_locks)).scalar_one()
    assert status == "failed" and locks == 0


def test_kill_minus_9_after_writing_data_files_leaves_no_orphan_and_no_lost_row(region, keys, tmp_path_factory):
    reference = tmp_path_factory.mktemp("reference") / "ws"
    generate_region(reference, patients=12)
    expected = run_institution(load_region(reference), INST, keys).by_resource()
    victim = _python(f"""
        import os, signal
        from deid.keys import Keyring
        from hub.pipeline import InstitutionRun, feed_blocks
        from hub.mapping.run import block_select
        from hub.sources.sql import iter_batches
        run = InstitutionRun(region, {INST!r}, Keyring.load())
        for work in feed_blocks(run.inst):
            compiled = run.pool.local.compiled(str(work.mapping.path), work.index)
            run.publish(work, iter_batches(work.engine, block_select(compiled, work.schema), 5000))
            run.writer(work.block.resource).flush()
        print("written", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # data files on disk, nothing committed
    """, region.workspace)
    out, err = victim.communicate(timeout=300)
    assert victim.returncode == -signal.SIGKILL and out.strip() == "written", err[-800:]
    icat = open_catalog(region.catalog_url, region.warehouse)
    assert find_orphans(icat, [region.zone], INST, older_than=0), "the killed run should have left data files"

    report = run_institution(region, INST, keys)
    assert len(report.abandoned_runs) == 1 and report.orphans_removed > 0
    assert find_orphans(icat, [region.zone], INST, older_than=0) == []
    assert {rt: c["published"] for rt, c in report.by_resource().items()} == {rt: c["published"] for rt, c in expected.items()}
    obs = open_catalog(region.catalog_url, region.warehouse).load_table("recognition.observation").scan().to_arrow()
    assert pc.count_distinct(obs.column("id")).as_py() == obs.num_rows == expected["Observation"]["published"]


def test_processes_opening_a_new_catalog_at_once_all_succeed(tmp_path):
    """The first publishes of a region (one process per institution) all create the catalog's tables."""
    url, warehouse = f"sqlite:///{tmp_path / 'catalog.db'}", tmp_path / "warehouse"
    code = f"""
        import sys, time
        from pathlib import Path
        from hub.lakehouse.tables import ensure_table, open_catalog
        from hub.lineage import runrecord
        time.sleep(max(0.0, float(sys.argv[1]) - time.time()))  # start together
        runrecord.connect({url!r})
        ensure_table(open_catalog({url!r}, Path({str(warehouse)!r})), "recognition", "Observation")
    """
    start = str(time.time() + 3)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), start], env=env, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(6)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, [o[1][-600:] for o in outs if o[1]]


def test_kill_minus_9_with_workers_mid_stream_loses_nothing_duplicates_nothing_and_leaves_no_worker(region, keys, tmp_path_factory):
    """The parent is killed while its workers hold tasks of the next blocks and flushes are on disk:
    the next run publishes exactly what an undisturbed run does, and the killed run's workers go too."""
    reference = tmp_path_factory.mktemp("reference") / "ws"
    generate_region(reference, patients=12)
    expected = run_institution(load_region(reference), INST, keys).by_resource()
    victim = _python(f"""
        import os, signal, time
        import hub.pipeline as pipeline
        import hub.prepare as prepare
        from deid.keys import Keyring
        prepare.TASK_ROWS = 5  # many tasks in flight at once
        staged, stage, prepare_in_worker = [], pipeline._BlockPublish.stage, prepare._prepare_in_worker

        def slow_prepare(task):  # the workers are still at work when the parent dies
            time.sleep(0.05)
            return prepare_in_worker(task)

        prepare._prepare_in_worker = slow_prepare

        def stage_then_die(self, batch):
            stage(self, batch)
            staged.append(self.block.table)
            if len(set(staged)) >= 3 and self.w.written:  # a third block or later staging, the next in the workers, flushes on disk
                print(self.block.table, len(self.run.pool._pool._cache), " ".join(str(p.pid) for p in self.run.pool._pool._pool), flush=True)
                os.kill(os.getpid(), signal.SIGKILL)

        pipeline._BlockPublish.stage = stage_then_die
        pipeline.run_institution(region, {INST!r}, Keyring.load(), workers=2, flush_rows=40)
        print("finished", flush=True)
    """, region.workspace)
    out, err = victim.communicate(timeout=300)
    assert victim.returncode == -signal.SIGKILL, (out, err[-3000:])
    table, in_flight, *pids = out.split()
    workers = [int(p) for p in pids]
    last = [w.block.table for w in feed_blocks(next(i for i in region.institutions if i.id == INST))][-1]
    assert len(workers) == 2 and table != last, out  # killed with blocks still to come
    assert int(in_flight) > 0, out  # and tasks in the workers
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in workers), "the killed run's workers are still running"

    report = run_institution(region, INST, keys, workers=2)
    assert len(report.abandoned_runs) == 1 and report.orphans_removed > 0  # its flushed files, never committed
    assert {rt: c["published"] for rt, c in report.by_resource().items()} == {rt: c["published"] for rt, c in expected.items()}
    assert {rt: c["quarantined"] for rt, c in report.by_resource().items()} == {rt: c["quarantined"] for rt, c in expected.items()}
    ids = _all_ids(region)
    assert all(len(v) == len(set(v)) for v in ids.values()), {k: len(v) - len(set(v)) for k, v in ids.items()}
    assert {t: len(v) for t, v in ids.items()} == {t: len(v) for t, v in _all_ids(load_region(reference)).items()}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False
