"""Dagster wiring: definitions load and match the checked-in snapshot; one partition materializes."""

from __future__ import annotations

import json

import pytest
from dagster import DagsterInstance, SensorResult, build_sensor_context, materialize

from dagster_project.definitions import defs
from dagster_project.defs.publish.assets import SOURCES, recognition_tables
from dagster_project.partitions import INSTITUTIONS
from dagster_project.resources import HubResource
from tests.conftest import DATA

SNAPSHOT = DATA / "dagster" / "definitions.json"


def _snapshot() -> dict:
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "deps": sorted(d.to_user_string() for d in node.parent_keys),
            "group": node.group_name,
            "partitioned": node.partitions_def is not None,
            "checks": sorted(c.name for c in graph.asset_check_keys if c.asset_key == key),
        }
    return {
        "assets": assets,
        "jobs": sorted(j.name for j in defs.resolve_all_job_defs() if not j.name.startswith("__")),
        "sensors": sorted(s.name for s in defs.sensors or []),
        "schedules": sorted(s.name for s in defs.schedules or []),
    }


def test_definitions_match_snapshot():
    assert _snapshot() == json.loads(SNAPSHOT.read_text())


@pytest.mark.slow
def test_one_institution_partition_materializes(tmp_path, monkeypatch, keys):
    from hub.demo.generator import generate_region

    generate_region(tmp_path, patients=15)
    monkeypatch.setenv("HUB_MASTER_KEY", keys.master.hex())
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(INSTITUTIONS, ["beishan-chc"])
    result = materialize(
        [*SOURCES, recognition_tables], partition_key="beishan-chc", instance=instance,
        resources={"hub": HubResource(workspace=str(tmp_path))},
    )
    assert result.success
    mats = {m.asset_key.to_user_string(): m for m in result.get_asset_materialization_events()}
    obs = mats["recognition/observation"].step_materialization_data.materialization.metadata
    assert obs["dagster/row_count"].value > 0
    assert obs["rows_read"].value == obs["dagster/row_count"].value + obs["rows_quarantined"].value
    causes = obs["quarantine_causes"].value
    assert sum(causes.values()) >= obs["rows_quarantined"].value  # a row may have several problems
    assert any("has no mapping in lab_items_vendor_a" in c for c in causes)
    checks = {(e.asset_key.to_user_string(), e.check_name): e.passed for e in result.get_asset_check_evaluations()}
    assert checks[("recognition/observation", "validation_rate")] is True
    assert checks[("recognition/observation", "quarantine_rate")] is True
    assert checks[("recognition/patient", "leak_scan")] is True
    assert checks[("recognition/observation", "audit_verify")] is True
    assert len(obs["manifest_hash"].value) == 64


def test_sensor_registers_newly_configured_institutions(tmp_path):
    import yaml

    from dagster_project.defs.publish.sensors import new_institutions

    (tmp_path / "region.yaml").write_text(yaml.safe_dump({"region": "r", "institutions": [
        {"id": "old-hospital", "feeds": []}, {"id": "new-clinic", "feeds": []},
    ]}), encoding="utf-8")
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(INSTITUTIONS, ["old-hospital"])
    hub = HubResource(workspace=str(tmp_path))

    result = new_institutions(build_sensor_context(instance=instance, resources={"hub": hub}))
    assert isinstance(result, SensorResult)
    assert [r.partition_key for r in result.run_requests] == ["new-clinic"]
    assert result.dynamic_partitions_requests[0].partition_keys == ["new-clinic"]

    instance.add_dynamic_partitions(INSTITUTIONS, ["new-clinic"])
    again = new_institutions(build_sensor_context(instance=instance, resources={"hub": hub}))
    assert not isinstance(again, SensorResult)  # a SkipReason: nothing new
