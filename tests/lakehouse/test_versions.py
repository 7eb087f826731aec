"""Versions: an older version never overwrites a newer one; deletions at the source are recorded; one commit per table per run."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from hub.demo.generator import generate_region
from hub.fhir.ids import resource_id
from hub.lakehouse.tables import open_catalog
from hub.lineage import runrecord
from hub.pipeline import deletions, run_institution
from hub.region import load_region

pytestmark = pytest.mark.slow
INST = "city-first"


@pytest.fixture()
def region(tmp_path, keys):
    generate_region(tmp_path, patients=15)
    region = load_region(tmp_path)
    run_institution(region, INST, keys)
    return region


def _lis(region):
    return sa.create_engine(next(f.url for f in region.institution(INST).feeds if f.name == "lis"))


def _observation(region, keys, result_id: int):
    rid = resource_id(keys, INST, "observation", [result_id])
    table = open_catalog(region.catalog_url, region.warehouse).load_table("recognition.observation")
    rows = table.scan(row_filter=f"id == '{rid}'").to_arrow().to_pylist()
    return rows, table


def test_an_older_version_never_overwrites_a_newer_one(region, keys):
    with _lis(region).begin() as conn:
        conn.execute(sa.text("UPDATE lab_result SET result_value = '8.88', status = 'C', updated_at = '2026-06-01 00:00:00' WHERE result_id = 12"))
    run_institution(region, INST, keys)
    newer, _ = _observation(region, keys, 12)
    assert str(json.loads(newer[0]["resource"])["valueQuantity"]["value"]) == "8.88"

    # the source is restored from an old backup: an older version of the same row arrives
    with _lis(region).begin() as conn:
        conn.execute(sa.text("UPDATE lab_result SET result_value = '5.55', status = 'F', updated_at = '2025-01-01 00:00:00' WHERE result_id = 12"))
    report = run_institution(region, INST, keys, full=True)
    after, _ = _observation(region, keys, 12)
    assert len(after) == 1 and str(json.loads(after[0]["resource"])["valueQuantity"]["value"]) == "8.88"
    obs = report.by_resource()["Observation"]
    assert obs["read"] == obs["published"] + obs["quarantined"]


def test_a_row_deleted_at_the_source_is_removed_and_recorded(region, keys):
    before, table = _observation(region, keys, 15)
    assert len(before) == 1
    snapshot = table.current_snapshot().snapshot_id
    with _lis(region).begin() as conn:
        conn.execute(sa.text("DELETE FROM lab_result WHERE result_id = 15"))

    incremental = run_institution(region, INST, keys)
    assert incremental.deleted == {}  # an incremental pull cannot see deletions
    full = run_institution(region, INST, keys, full=True)
    assert full.deleted == {"Observation": 1}

    gone, table = _observation(region, keys, 15)
    assert gone == []
    with runrecord.connect(region.catalog_url).connect() as conn:
        recorded = conn.execute(sa.select(deletions)).all()
    assert [(r.resource_type, r.resource_id, r.run_id) for r in recorded] == [("Observation", before[0]["id"], full.run_id)]
    old = table.scan(snapshot_id=snapshot, row_filter=f"id == '{before[0]['id']}'").to_arrow()
    assert old.num_rows == 1  # the deleted row stays readable as it was


def test_each_run_is_one_commit_per_table(region, keys):
    table = open_catalog(region.catalog_url, region.warehouse).load_table("recognition.observation")
    before = len(table.metadata.metadata_log)
    with _lis(region).begin() as conn:
        conn.execute(sa.text("UPDATE lab_result SET result_value = '7.77', updated_at = '2026-07-01 00:00:00' WHERE result_id IN (20, 21, 22)"))
        conn.execute(sa.text(
            "INSERT INTO lab_result (result_id, order_id, item_code, item_name, result_value, unit, ref_range, abnormal_flag,"
            " result_time, status, updated_at) VALUES (999002, 1, 'GLU', '空腹血糖', '6.00', 'mmol/L', '3.9-6.1', 'N',"
            " '2026-07-01 09:00:00', 'F', '2026-07-01 09:00:00')"))
    report = run_institution(region, INST, keys, flush_rows=1)  # many staged flushes ...
    assert report.by_resource()["Observation"]["written"] == 4
    table = table.refresh()
    assert len(table.metadata.metadata_log) == before + 1  # ... one commit
