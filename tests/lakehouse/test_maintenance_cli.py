"""`hub lakehouse compact|expire|orphans` on a demo workspace: rows unchanged, history shortened, verify intact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hub.lineage import manifests

pytestmark = pytest.mark.slow
HUB = [sys.executable, "-m", "hub.cli"]


def _hub(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("HUB_MASTER_KEY", "HUB_KEY_FILE", "DAGSTER_HOME")}
    env["COLUMNS"] = "200"
    return subprocess.run([*HUB, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _rows(ws: Path) -> list[tuple[str, str]]:
    from hub.lakehouse.tables import open_catalog
    from hub.region import load_region

    region = load_region(ws)
    data = open_catalog(region.catalog_url, region.warehouse).load_table("recognition.observation").scan(
        selected_fields=("id", "content_hash")).to_arrow()
    return sorted(zip(data.column("id").to_pylist(), data.column("content_hash").to_pylist(), strict=True))


def _verify(ws: Path):
    from hub.lineage.audit import verify_region
    from hub.region import load_region

    return verify_region(load_region(ws))


def test_compact_expire_and_remove_orphans_from_the_command_line(tmp_path):
    ws = tmp_path / "ws"
    assert _hub("demo", "--patients", "12", "--workspace", str(ws), cwd=tmp_path).returncode == 0
    before = _rows(ws)

    compacted = _hub("lakehouse", "compact", "recognition.observation", "--min-files", "1", "--workspace", str(ws),
                     "--json", cwd=tmp_path)
    assert compacted.returncode == 0, compacted.stderr[-2000:]
    done = [json.loads(line) for line in compacted.stdout.splitlines()]
    assert done and all(d["snapshot_id"] and d["files_after"] >= 1 for d in done)
    assert _rows(ws) == before
    report = _verify(ws)
    assert report.ok, report.breaks

    expired = _hub("lakehouse", "expire", "--older-than-days", "0", "--keep-last", "1", "--workspace", str(ws), "--json",
                   cwd=tmp_path)
    assert expired.returncode == 0, expired.stderr[-2000:]
    by_table = {d["table"]: d for d in map(json.loads, expired.stdout.splitlines())}
    assert by_table["recognition.observation"]["expired"] and by_table["recognition.observation"]["kept"] >= 1
    listed = _hub("lakehouse", "orphans", "--metadata", "--older-than", "0", "--workspace", str(ws), cwd=tmp_path)
    assert listed.returncode == 1 and "orphan file(s)" in listed.stdout  # expired snapshots' files, listed not removed
    removed = _hub("lakehouse", "orphans", "--metadata", "--older-than", "0", "--delete", "--workspace", str(ws), cwd=tmp_path)
    assert removed.returncode == 0 and "removed" in removed.stdout
    assert _rows(ws) == before
    if getattr(manifests, "RECORDS_EXPIRY", False):
        report = _verify(ws)
        assert report.ok, report.breaks


def test_maintenance_jobs_run_in_dagster_and_report_what_they_did(tmp_path):
    from dagster import Definitions

    from dagster_project.defs.maintenance.definitions import defs
    from dagster_project.resources import HubResource

    ws = tmp_path / "ws"
    assert _hub("demo", "--patients", "12", "--workspace", str(ws), cwd=tmp_path).returncode == 0
    before = _rows(ws)
    merged = Definitions.merge(defs, Definitions(resources={"hub": HubResource(workspace=str(ws))}))
    config = {"ops": {"compact_tables": {"config": {"min_files": 1}}}}
    result = merged.resolve_job_def("lakehouse_compaction").execute_in_process(run_config=config)
    assert result.success
    summary = result.output_for_node("compact_tables")
    assert summary["partitions_compacted"] >= 1 and summary["manifest"] is not None
    expiry = merged.resolve_job_def("lakehouse_expiry").execute_in_process(
        run_config={"ops": {"expire_snapshots": {"config": {"older_than_days": 0, "keep_last": 1}}}})
    assert expiry.success and expiry.output_for_node("expire_snapshots")["snapshots_expired"] >= 1
    orphans = merged.resolve_job_def("lakehouse_orphans").execute_in_process(
        run_config={"ops": {"remove_orphans": {"config": {"older_than_seconds": 0}}}})
    assert orphans.success and orphans.output_for_node("remove_orphans")["files_removed"] >= 1
    assert _rows(ws) == before
    assert {s.name: s.default_status.value for s in merged.schedules} == {
        "nightly_compaction": "RUNNING", "daily_orphan_removal": "RUNNING", "weekly_snapshot_expiry": "STOPPED"}
