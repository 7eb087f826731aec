"""Dagster wiring: the definitions load and match the checked-in snapshot of the asset graph;
the command line's runs land in the workspace's own Dagster instance with partitions, check
results, the recognition index and the partition's row count; the sensor and schedule run
from the first launch; the Dagster command line finds an institution registered since."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from dagster import (
    AssetKey,
    AssetSpec,
    DagsterInstance,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    SensorResult,
    build_sensor_context,
)

from dagster_project.definitions import defs
from dagster_project.defs.publish.checks import table_key
from dagster_project.instance import dagster_home, sync_partitions, workspace_instance
from dagster_project.partitions import INSTITUTIONS
from dagster_project.resources import HubResource
from tests.conftest import DATA, REPO

SNAPSHOT = DATA / "dagster" / "definitions.json"


def _keys(keys) -> list[str]:
    return sorted(k.to_user_string() for k in keys)


def _snapshot() -> dict:
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        checks = sorted((c for c in graph.asset_check_keys if c.asset_key == key), key=lambda c: c.name)
        assets[key.to_user_string()] = {
            "deps": _keys(node.parent_keys),
            "group": node.group_name,
            "partitions": getattr(node.partitions_def, "name", None) if node.partitions_def else None,
            "checks": {c.name: {"blocking": graph.get_check_spec(c).blocking,
                                "partitions": getattr(graph.get_check_spec(c).partitions_def, "name", None)} for c in checks},
        }
    jobs = {j.name: {"assets": _keys(j.asset_layer.executable_asset_keys),
                     "partitions": getattr(j.partitions_def, "name", None) if j.partitions_def else None}
            for j in defs.resolve_all_job_defs() if not j.name.startswith("__")}
    return {
        "assets": assets,
        "jobs": jobs,
        "sensors": {s.name: {"job": s.job_name, "default_status": s.default_status.value} for s in defs.sensors or []},
        "schedules": {s.name: {"job": s.job_name, "cron": s.cron_schedule, "default_status": s.default_status.value}
                      for s in defs.schedules or []},
    }


def test_definitions_match_snapshot():
    """Keys, deps, partitions and checks of every asset, the jobs' selections, sensors and schedules."""
    assert _snapshot() == json.loads(SNAPSHOT.read_text())


def test_graph_has_each_domain_and_feed_specific_deps():
    graph = defs.resolve_asset_graph()

    def deps(key: str) -> list[str]:
        return _keys(graph.get(AssetKey.from_user_string(key)).parent_keys)

    assert deps("recognition/medicationrequest") == ["sources/his"]  # only HIS mappings produce it
    assert set(deps("recognition/observation")) == {"sources/his", "sources/hl7v2", "sources/lis"}  # HIS vital signs, lab results
    assert deps("trainsets/t2dm-hba1c") == ["research/release"]  # its spec reads the research zone
    assert set(deps("research/release")) == {t for t in _keys(graph.get_all_asset_keys()) if t.startswith("recognition/") and t != "recognition/index"}
    publish = defs.resolve_job_def("publish_recognition")
    assert AssetKey(["recognition", "index"]) in publish.asset_layer.executable_asset_keys


def test_sensor_and_schedule_run_from_first_launch():
    assert {s.name: s.default_status for s in defs.sensors} == {"new_institutions": DefaultSensorStatus.RUNNING}
    assert {s.name: s.default_status for s in defs.schedules} == {
        "hourly_pull": DefaultScheduleStatus.RUNNING, "nightly_compaction": DefaultScheduleStatus.RUNNING,
        "daily_orphan_removal": DefaultScheduleStatus.RUNNING, "weekly_snapshot_expiry": DefaultScheduleStatus.STOPPED}


def _region(path, *ids):
    (path / "region.yaml").write_text(yaml.safe_dump({"region": "r", "institutions": [{"id": i, "feeds": []} for i in ids]}), encoding="utf-8")


def test_sensor_requests_a_first_run_for_each_institution_never_published(tmp_path):
    from dagster import AssetMaterialization

    from dagster_project.defs.publish.sensors import new_institutions

    _region(tmp_path, "old-hospital", "new-clinic", "synced-clinic")
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(INSTITUTIONS, ["old-hospital", "synced-clinic"])  # synced-clinic: registered on load, never run
    instance.report_runless_asset_event(AssetMaterialization(table_key("Patient"), partition="old-hospital"))
    hub = HubResource(workspace=str(tmp_path))

    result = new_institutions(build_sensor_context(instance=instance, resources={"hub": hub}))
    assert isinstance(result, SensorResult)
    assert [r.partition_key for r in result.run_requests] == ["new-clinic", "synced-clinic"]
    assert [r.run_key for r in result.run_requests] == ["onboard-new-clinic", "onboard-synced-clinic"]
    assert result.dynamic_partitions_requests[0].partition_keys == ["new-clinic"]  # only the one not registered yet

    instance.add_dynamic_partitions(INSTITUTIONS, ["new-clinic"])
    for iid in ("new-clinic", "synced-clinic"):
        instance.report_runless_asset_event(AssetMaterialization(table_key("Patient"), partition=iid))
    again = new_institutions(build_sensor_context(instance=instance, resources={"hub": hub}))
    assert not isinstance(again, SensorResult)  # a SkipReason: nothing new


def test_workspace_instance_lives_in_the_workspace_and_syncs_partitions(tmp_path):
    from hub.region import load_region

    _region(tmp_path, "a-hospital", "b-clinic")
    with workspace_instance(tmp_path) as instance:
        assert (dagster_home(tmp_path) / "dagster.yaml").is_file()
        assert not instance.is_ephemeral
        assert sync_partitions(instance, load_region(tmp_path)) == ["a-hospital", "b-clinic"]
        assert sync_partitions(instance, load_region(tmp_path)) == []
    with workspace_instance(tmp_path) as again:  # persistent: a later process sees the partitions
        assert again.get_dynamic_partitions(INSTITUTIONS) == ["a-hospital", "b-clinic"]


def test_definitions_register_partitions_on_load_under_the_workspace_instance(tmp_path):
    """What `dagster asset materialize --partition <new institution>` needs: the code location
    adds region.yaml's institutions when it loads under the workspace's DAGSTER_HOME."""
    _region(tmp_path, "a-hospital", "new-clinic")
    home = dagster_home(tmp_path)
    env = {**os.environ, "DAGSTER_HOME": str(home), "HUB_WORKSPACE": str(tmp_path)}
    with workspace_instance(tmp_path):
        pass  # creates the folder and dagster.yaml, as `hub dagster` does
    subprocess.run([sys.executable, "-c", "import dagster_project.definitions"], env=env, cwd=REPO, check=True, capture_output=True)
    with workspace_instance(tmp_path) as instance:
        assert instance.get_dynamic_partitions(INSTITUTIONS) == ["a-hospital", "new-clinic"]


@pytest.fixture(scope="module")
def published(tmp_path_factory, keys):
    """A 30-person demo region published by launch (as `hub demo` does) into its own Dagster instance."""
    from dagster_project.launch import materialize_institutions
    from hub.demo.generator import generate_region
    from hub.region import load_region

    ws = tmp_path_factory.mktemp("dagster-ws")
    generate_region(ws, patients=30)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HUB_MASTER_KEY", keys.master.hex())
        mp.delenv("DAGSTER_HOME", raising=False)
        assert materialize_institutions(ws, [i.id for i in load_region(ws).institutions])
        yield ws


@pytest.mark.slow
def test_command_line_runs_land_in_the_workspace_instance(published, monkeypatch, keys):
    """`hub demo`/`hub publish` go through launch: partitions, per-partition check results,
    the index and the table's row count are in <workspace>/dagster for `dagster dev` to show."""
    from dagster import DagsterEventType, EventRecordsFilter
    from pyiceberg.expressions import EqualTo

    from dagster_project.launch import PUBLISH_ASSETS, materialize_institutions
    from hub.lakehouse.tables import open_catalog
    from hub.region import load_region

    monkeypatch.setenv("HUB_MASTER_KEY", keys.master.hex())
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    launched = {k for a in PUBLISH_ASSETS if not isinstance(a, AssetSpec) for k in a.keys}  # the specs: external sources
    assert launched == set(defs.resolve_job_def("publish_recognition").asset_layer.executable_asset_keys)

    region = load_region(published)
    obs_table = open_catalog(region.catalog_url, region.warehouse).load_table("recognition.observation")
    in_table = len(obs_table.scan(row_filter=EqualTo("institution", "beishan-chc"), selected_fields=("id",)).to_arrow())
    assert in_table > 0
    with workspace_instance(published) as instance:
        assert instance.get_dynamic_partitions(INSTITUTIONS) == [i.id for i in region.institutions]
        assert instance.get_materialized_partitions(table_key("Observation")) == {i.id for i in region.institutions}
        obs = instance.get_latest_materialization_event(table_key("Observation")).asset_materialization
        assert obs.partition == "beishan-chc"  # the last one launched
        meta = {k: v.value for k, v in obs.metadata.items()}
        assert meta["dagster/row_count"] == in_table
        assert meta["rows_read"] == meta["rows_published"] + meta["rows_quarantined"]
        assert any("has no mapping in lab_items_vendor_a" in c for c in meta["quarantine_causes"])
        assert len(meta["manifest_hash"]) == 64
        index = instance.get_latest_materialization_event(AssetKey(["recognition", "index"])).asset_materialization
        assert index.partition is None and "rows_read" in index.metadata
        evals = instance.get_event_records(EventRecordsFilter(DagsterEventType.ASSET_CHECK_EVALUATION), limit=1000)
        checks: dict[tuple[str, str, str], bool] = {}
        for e in evals:
            data = e.event_log_entry.dagster_event.event_specific_data
            checks[(data.partition, data.asset_key.to_user_string(), data.check_name)] = data.passed
        assert len(checks) == 3 * 9 * 4  # per partition, per table, four checks
        assert checks[("beishan-chc", "recognition/observation", "validation_rate")] is True
        assert checks[("beishan-chc", "recognition/observation", "quarantine_rate")] is True
        assert checks[("city-first", "recognition/patient", "leak_scan")] is True
        assert checks[("xihu-second", "recognition/observation", "audit_verify")] is True

    assert materialize_institutions(published, ["beishan-chc"])  # incremental: reads only rows it cannot skip
    with workspace_instance(published) as instance:
        again = {k: v.value for k, v in instance.get_latest_materialization_event(table_key("Observation")).asset_materialization.metadata.items()}
    assert again["rows_read"] < in_table
    assert again["dagster/row_count"] == in_table  # the table's rows, not the run's


@pytest.mark.slow
def test_research_release_and_training_set_assets(published, monkeypatch, keys):
    from dagster import materialize

    from dagster_project.defs.research.assets import research_release
    from dagster_project.defs.trainsets.assets import TRAINSETS

    monkeypatch.setenv("HUB_MASTER_KEY", keys.master.hex())
    hub = HubResource(workspace=str(published))
    refused = materialize([research_release], resources={"hub": hub}, raise_on_error=False,
                          run_config={"ops": {"research__release": {"config": {"name": "too-strict", "k": 1000, "max_suppression": 0.0}}}})
    assert not refused.success
    failure = next(e for e in refused.all_events if e.is_step_failure)
    assert "release 'too-strict' refused" in failure.event_specific_data.error.message

    result = materialize([research_release, *TRAINSETS], resources={"hub": hub},
                         run_config={"ops": {"research__release": {"config": {"name": "demo-release", "k": 2, "max_suppression": 0.5}}}})
    mats = {m.asset_key.to_user_string(): {k: v.value for k, v in m.metadata.items()}
            for m in (e.step_materialization_data.materialization for e in result.get_asset_materialization_events())}
    release = mats["research/release"]
    assert release["release"] == "demo-release" and release["k_achieved"] >= 2
    assert release["dagster/row_count"] == sum(release["rows"].values()) > 0
    trainset = mats["trainsets/t2dm-hba1c"]
    assert trainset["tag"] == "demo-release"
    assert trainset["dagster/row_count"] == sum(c["patients"] for c in trainset["splits"].values())
    assert (published / "trainsets" / "t2dm-hba1c" / "datasheet.json").is_file()
    assert set(trainset["files_sha256"]) >= {"train/labels.parquet", "test/labels.parquet"}
