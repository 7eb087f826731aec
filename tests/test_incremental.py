"""Incremental pulls: watermarks advance only after commit; corrections replace under the same id."""

from __future__ import annotations

import json

import pyarrow.compute as pc
import pytest
import sqlalchemy as sa

from hub import watermarks
from hub.demo.generator import generate_region
from hub.lakehouse.tables import open_catalog
from hub.lineage import runrecord
from hub.pipeline import run_institution
from hub.region import load_region

pytestmark = pytest.mark.slow
INST = "city-first"  # vendor A: lab_result carries updated_at


@pytest.fixture()
def region(tmp_path):
    generate_region(tmp_path, patients=15)
    return load_region(tmp_path)


def _observations(region):
    table = open_catalog(region.catalog_url, region.warehouse).load_table("recognition.observation")
    return table.scan(row_filter=f"institution == '{INST}'").to_arrow()


def _lis(region):
    return sa.create_engine(next(f.url for f in region.institution(INST).feeds if f.name == "lis"))


def test_crash_between_publish_and_watermark_loses_and_duplicates_nothing(region, keys, monkeypatch, tmp_path_factory):
    reference = tmp_path_factory.mktemp("reference")
    generate_region(reference, patients=15)
    expected = run_institution(load_region(reference), INST, keys).by_resource()["Observation"]["published"]

    real_advance = watermarks.advance

    def crash(engine, institution, feed, block, *args, **kwargs):
        if block.startswith("Observation"):
            raise RuntimeError("killed between publishing and advancing the watermark")
        return real_advance(engine, institution, feed, block, *args, **kwargs)

    monkeypatch.setattr(watermarks, "advance", crash)
    with pytest.raises(RuntimeError, match="killed"):
        run_institution(region, INST, keys)
    published_before_crash = _observations(region).num_rows
    assert published_before_crash == expected  # the rows were committed ...
    engine = runrecord.connect(region.catalog_url)
    assert watermarks.get(engine, INST, "lis", "Observation:lab_result:observation") is None  # ... the watermark not

    monkeypatch.setattr(watermarks, "advance", real_advance)
    again = run_institution(region, INST, keys)
    obs = _observations(region)
    assert obs.num_rows == expected
    assert pc.count_distinct(obs["id"]).as_py() == expected
    counts = again.by_resource()["Observation"]
    assert counts["read"] == counts["published"] + counts["quarantined"]
    assert counts["written"] == 0  # re-read, nothing new to write
    assert watermarks.get(engine, INST, "lis", "Observation:lab_result:observation") is not None
    with engine.connect() as conn:
        statuses = [r.status for r in conn.execute(sa.select(runrecord.runs.c.status).order_by(runrecord.runs.c.started_at))]
    assert "failed" in statuses and statuses[-1] == "succeeded"


def test_incremental_run_reads_only_rows_past_the_watermark(region, keys):
    first = run_institution(region, INST, keys)
    total = first.by_resource()["Observation"]["read"]
    with _lis(region).begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO lab_result (result_id, order_id, item_code, item_name, result_value, unit, ref_range,"
            " abnormal_flag, result_time, status, updated_at) VALUES (999001, 1, 'GLU', '空腹血糖', '6.30', 'mmol/L',"
            " '3.9-6.1', 'H', '2026-01-02 09:00:00', 'F', '2026-01-02 09:00:00')"
        ))
    second = run_institution(region, INST, keys)
    obs = second.by_resource()["Observation"]
    # the new row, plus the rows sharing the last watermark instant (one order's results
    # share a report time), which are re-read by design and skipped as unchanged
    assert obs["written"] == 1 and obs["unchanged"] == obs["read"] - 1
    assert obs["read"] <= 5 < total
    assert _observations(region).num_rows == first.by_resource()["Observation"]["published"] + 1


def test_corrected_result_replaces_value_under_same_id(region, keys):
    run_institution(region, INST, keys)
    before = _observations(region)
    table = open_catalog(region.catalog_url, region.warehouse).load_table("recognition.observation")
    snapshot_before = table.current_snapshot().snapshot_id
    with _lis(region).connect() as conn:
        rid, old_value = conn.execute(sa.text(
            "SELECT result_id, result_value FROM lab_result WHERE item_code = 'GLU' AND status = 'F' AND result_id > 3 ORDER BY result_id LIMIT 1"
        )).one()
    with _lis(region).begin() as conn:
        conn.execute(sa.text(
            "UPDATE lab_result SET result_value = '9.99', status = 'C', updated_at = '2026-02-01 10:00:00' WHERE result_id = :r"
        ), {"r": rid})

    report = run_institution(region, INST, keys)
    assert report.by_resource()["Observation"]["written"] == 1

    after = _observations(region)
    assert after.num_rows == before.num_rows
    changed = [json.loads(t) for t, old in zip(after["resource"].to_pylist(), after["content_hash"].to_pylist(), strict=True)
               if old not in set(before["content_hash"].to_pylist())]
    assert len(changed) == 1
    new = changed[0]
    assert new["status"] == "corrected" and str(new["valueQuantity"]["value"]) == "9.99"
    assert new["id"] in set(before["id"].to_pylist())  # same id, new version
    old_version = table.scan(snapshot_id=snapshot_before, row_filter=f"id == '{new['id']}'").to_arrow()
    assert json.loads(old_version["resource"][0].as_py())["valueQuantity"]["value"] == float(old_value)
