"""The production profile on real servers: a backfill of every institution partition runs on
the Celery executor (RabbitMQ broker, Redis results, 3 worker processes) under a Dagster
instance on PostgreSQL, with the Iceberg and lineage catalog on PostgreSQL too. One worker
is killed with SIGKILL in the middle of a step; its step is delivered to another worker, the
backfill completes, and every published table holds the same ids and content hashes as an
in-process run of the same sources. The new_institutions sensor requests a first run of every
institution while the backfill's runs are queued, so each institution has two runs at once:
the second waits in the run queue (its source databases have max_connections 1) and never
overlaps the first, while runs of different institutions do overlap.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import TEST_MASTER_KEY
from tests.deploy.harness import ServerMissing, scratch_servers, stop

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.celery]

BIN = Path(sys.executable).parent
PATIENTS = 12
TIMEOUT = 600  # seconds for the whole backfill, on a loaded 2-core machine



@pytest.fixture()
def servers():
    try:
        with scratch_servers() as urls:
            yield urls
    except ServerMissing as exc:
        pytest.fail(str(exc))


def _table_rows(region) -> dict[str, collections.Counter]:
    """{table: Counter of (id, content_hash)} of the recognition zone."""
    from hub.lakehouse.tables import open_catalog

    catalog = open_catalog(region.catalog_url, region.warehouse)
    out = {}
    for ident in catalog.list_tables(region.zone):
        table = catalog.load_table(ident)
        rows = table.scan(selected_fields=("id", "content_hash")).to_arrow().to_pylist()
        out[".".join(ident)] = collections.Counter((r["id"], r["content_hash"]) for r in rows)
    return out


def _publish_step_on(instance) -> tuple[str, str] | None:
    """(worker name, run id) of a publish step that a Celery worker has been running for 3 s and not finished.

    The worker reports "Executing steps recognition_tables in celery worker" with its name
    (dagster_celery.tasks) before it starts the step.
    """
    from dagster import DagsterRunStatus

    for run in instance.get_runs():
        if run.status != DagsterRunStatus.STARTED:
            continue
        taken, done = None, False
        for record in instance.all_logs(run.run_id):
            event = record.dagster_event
            if event is None or event.step_key != "recognition_tables":
                continue
            if event.is_engine_event and "Executing steps recognition_tables" in (event.message or ""):
                worker = event.engine_event_data.metadata["Celery worker"]
                taken = (str(getattr(worker, "value", worker)).split("@", 1)[0], record.timestamp)
            done = done or event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE")
        if taken and not done and time.time() - taken[1] > 3:
            return taken[0], run.run_id
    return None


def _publish_starts(instance, run_id: str) -> int:
    """How many times the run's publish step started (once per delivery to a worker)."""
    return sum(1 for r in instance.all_logs(run_id) if r.dagster_event and r.dagster_event.event_type_value == "STEP_START"
               and r.dagster_event.step_key == "recognition_tables")


def test_backfill_on_celery_survives_a_killed_worker_and_matches_in_process(servers, tmp_path, monkeypatch):
    from dagster import DagsterInstance, DagsterRunStatus
    from dagster._core.instance.ref import InstanceRef

    from deid.keys import Keyring
    from hub.demo.generator import generate_region
    from hub.pipeline import run_institution
    from hub.region import load_region

    ws, ref, home, pids = tmp_path / "ws", tmp_path / "ref", tmp_path / "dagster", tmp_path / "pids"
    generate_region(ws, patients=PATIENTS)
    shutil.copytree(ws, ref)  # the same sources, keys and region, published in-process with the SQLite catalog
    doc = yaml.safe_load((ws / "region.yaml").read_text(encoding="utf-8"))
    doc["catalog"] = servers["catalog"]  # Iceberg catalog and lineage on PostgreSQL
    (ws / "region.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    institutions = [i.id for i in load_region(ws).institutions]
    assert len(institutions) >= 3

    env = {**os.environ, "DAGSTER_HOME": str(home), "HUB_WORKSPACE": str(ws), "HUB_EXECUTOR": "celery",
           "HUB_MASTER_KEY": TEST_MASTER_KEY.hex(),
           "HUB_DAGSTER_PG_URL": servers["dagster"].replace("+psycopg:", "+psycopg2:"),
           "HUB_CELERY_BROKER": f"pyamqp://guest:guest@127.0.0.1:5672/{servers['vhost']}"}
    for key in ("DAGSTER_HOME", "HUB_DAGSTER_PG_URL"):
        monkeypatch.setenv(key, env[key])
    hub = [str(BIN / "hub")]
    out = subprocess.run([*hub, "deploy", "config", "-w", str(ws), "--max-runs", "3"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "hub-db/city-first.his" in (home / "dagster.yaml").read_text()

    procs = []
    try:
        procs.append(subprocess.Popen([*hub, "deploy", "workers", "-w", str(ws), "--count", "3", "--pid-dir", str(pids), "--no-restart"],
                                      env=env, stdout=open(tmp_path / "workers.log", "w"), stderr=subprocess.STDOUT, start_new_session=True))
        procs.append(subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-m", "dagster_project.definitions"], cwd=tmp_path,
                                      env=env, stdout=open(tmp_path / "daemon.log", "w"), stderr=subprocess.STDOUT, start_new_session=True))
        submit = subprocess.run([str(BIN / "dagster"), "job", "backfill", "-m", "dagster_project.definitions", "-j", "publish_recognition",
                                 "--all", "--noprompt"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert submit.returncode == 0 and "Launched backfill" in submit.stdout, submit.stderr[-3000:]

        instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
        worker_pids = {p.stem: int(p.read_text()) for p in pids.glob("*.pid")}
        assert len(worker_pids) == 3
        killed, deadline = None, time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if killed is None and (busy := _publish_step_on(instance)):
                os.kill(worker_pids[busy[0]], signal.SIGKILL)  # mid-step: the step has run for 3 s
                killed = busy
            runs = instance.get_runs()
            backfill = [r for r in runs if "dagster/backfill" in r.tags]
            if len(backfill) == len(institutions) and all(r.is_finished for r in runs):
                break
            time.sleep(2)
        else:
            pytest.fail(f"backfill not finished in {TIMEOUT} s: {[(r.tags.get('dagster/partition'), r.status.value) for r in runs]}")

        assert killed is not None, "no worker was killed"
        assert {r.status for r in runs} == {DagsterRunStatus.SUCCESS}, [(r.tags.get("dagster/partition"), r.status.value) for r in runs]
        assert _publish_starts(instance, killed[1]) == 2  # delivered again after the kill, and finished

        # the run queue held each institution's source databases to one run at a time ...
        spans = collections.defaultdict(list)
        for run in runs:
            record = instance.get_run_record_by_id(run.run_id)
            spans[run.tags["dagster/partition"]].append((record.start_time, record.end_time))
            assert f"hub-db/{run.tags['dagster/partition']}.his" in run.tags
        assert max(len(s) for s in spans.values()) >= 2, f"no institution had two runs: {dict(spans)}"
        for inst, s in spans.items():
            s.sort()
            assert all(a1 <= b0 for (_, a1), (b0, _) in zip(s, s[1:], strict=False)), f"runs of {inst} overlapped: {s}"
        # ... while runs of different institutions ran at the same time
        flat = [(inst, s0, s1) for inst, s in spans.items() for s0, s1 in s]
        assert any(i != j and s0 < t1 and t0 < s1 for i, s0, s1 in flat for j, t0, t1 in flat), f"no two runs overlapped: {dict(spans)}"
        instance.dispose()
    finally:
        for proc in reversed(procs):
            stop(proc)
    assert f"worker {killed[0]} ended (exit -9)" in (tmp_path / "workers.log").read_text()  # it stayed dead (--no-restart)

    keys = Keyring(TEST_MASTER_KEY)
    ref_region = load_region(ref)
    for iid in institutions:
        run_institution(ref_region, iid, keys)
    on_celery, in_process = _table_rows(load_region(ws)), _table_rows(ref_region)
    assert set(on_celery) == set(in_process) and on_celery["recognition.observation"]
    for table, rows in in_process.items():
        assert on_celery[table] == rows, f"{table}: {len(on_celery[table])} rows on Celery, {len(rows)} in-process"
