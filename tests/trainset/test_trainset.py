"""Training sets: cohort logic on golden rows, disjoint patient-level splits, both shapes built and reproducible on a tag, loaders.

The indicators are tested in tests/trainset/test_indicators.py."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import sqlalchemy as sa

from deid.keys import Keyring
from hub.pipeline import run_institution
from hub.region import REPO_ROOT
from hub.research import build_release
from hub.trainset.build import SPLITS, assign_split, build, cohort, features, labels, load_spec
from tests.conftest import publish_region

SPEC = REPO_ROOT / "trainsets" / "t2dm-hba1c.yaml"
PATIENT_SPEC = REPO_ROOT / "trainsets" / "t2dm-hba1c-patient.yaml"


def test_cohort_label_and_feature_windows_on_golden_rows():
    spec = load_spec(SPEC)
    rows = {
        "conditions": [
            {"patient": "a", "code": "E11.900"}, {"patient": "b", "code": "E11.900"},
            {"patient": "c", "code": "I10.x00"}, {"patient": "d", "code": "E11.900"},
        ],
        "hba1c": [
            {"patient": "a", "value": 8.1, "time": "2024-01-01T09:00:00+08:00"},
            {"patient": "a", "value": 6.5, "time": "2024-06-01T09:00:00+08:00"},  # a: last is at target
            {"patient": "b", "value": 7.9, "time": "2024-02-01T09:00:00+08:00"},
            {"patient": "b", "value": 7.4, "time": "2024-05-01T09:00:00+08:00"},  # b: not at target
            {"patient": "c", "value": 6.0, "time": "2024-02-01T09:00:00+08:00"},
            {"patient": "c", "value": 6.1, "time": "2024-03-01T09:00:00+08:00"},  # c: no diabetes diagnosis
            {"patient": "d", "value": 6.2, "time": "2024-03-01T09:00:00+08:00"},  # d: only one HbA1c
        ],
        "labs": [
            {"patient": "a", "loinc": "4548-4", "value": 8.1, "time": "2024-01-01T09:00:00+08:00"},  # in window
            {"patient": "a", "loinc": "4548-4", "value": 6.5, "time": "2024-06-01T09:00:00+08:00"},  # the label itself: excluded
            {"patient": "a", "loinc": "2823-3", "value": 4.1, "time": "2022-01-01T09:00:00+08:00"},  # too old
            {"patient": "b", "loinc": "14771-0", "value": 7.0, "time": "2024-04-30T09:00:00+08:00"},
        ],
    }
    people = cohort(spec, rows)
    assert people == {"a", "b"}
    lab = labels(spec, rows, people)
    assert (lab["a"]["label"], lab["b"]["label"]) == (True, False)
    assert lab["a"]["label_time"] == dt.datetime(2024, 6, 1, 9, tzinfo=dt.timezone(dt.timedelta(hours=8)))
    feats = features(spec, rows, lab)["labs"]
    assert sorted((r["patient"], r["value"]) for r in feats) == [("a", 8.1), ("b", 7.0)]


def test_splits_follow_fractions_and_are_stable(keys):
    fractions = {"train": 0.7, "validation": 0.15, "test": 0.15}
    assigned = {f"p{i}": assign_split(keys, f"p{i}", fractions) for i in range(3000)}
    share = {s: sum(v == s for v in assigned.values()) / 3000 for s in SPLITS}
    assert abs(share["train"] - 0.7) < 0.04 and abs(share["test"] - 0.15) < 0.03
    assert all(assign_split(keys, p, fractions) == s for p, s in list(assigned.items())[:100])
    assert any(assign_split(Keyring(bytes(32)), p, fractions) != s for p, s in list(assigned.items())[:100])


@pytest.mark.slow
def test_build_is_disjoint_by_patient_and_reproducible_on_its_tag(tmp_path, keys):
    import pyarrow.parquet as pq

    region, _, _ = publish_region(tmp_path / "ws", keys, 150)
    assert build_release(region, keys, name="demo-release", k=2, max_suppression=0.2).status == "published"

    first = build(region, keys, SPEC, tmp_path / "a")
    patients = {s: set(pq.read_table(tmp_path / "a" / s / "labels.parquet")["patient"].to_pylist()) for s in SPLITS}
    assert sum(len(p) for p in patients.values()) == first["labelled_patients"] > 10
    assert all(patients[x].isdisjoint(patients[y]) for x in SPLITS for y in SPLITS if x < y)
    for s in SPLITS:
        if patients[s]:
            assert set(pq.read_table(tmp_path / "a" / s / "labs.parquet")["patient"].to_pylist()) <= patients[s]
    # typed times in the long shape; the datasheet summarises per code and unit and states the balance per split
    assert str(pq.read_schema(tmp_path / "a" / "train" / "labs.parquet").field("time").type) == "timestamp[us, tz=UTC]"
    assert str(pq.read_schema(tmp_path / "a" / "train" / "labels.parquet").field("label_time").type) == "timestamp[us, tz=UTC]"
    by = first["features"]["labs"]["by_code_and_unit"]
    assert len({(b["code"], b["unit"]) for b in by}) == len(by) and {"code": "4548-4", "unit": "%"}.items() <= next(
        b for b in by if b["code"] == "4548-4").items()
    for s in SPLITS:
        c = first["splits"][s]
        assert c["labels_true"] + c["labels_false"] == c["patients"] == len(patients[s])
    assert "HbA1c (LOINC 4548-4)" in first["label"]["definition"]

    # the per-patient shape on the same tag: one row per labelled patient, the same people and splits
    wide = build(region, keys, PATIENT_SPEC, tmp_path / "p")
    for s in SPLITS:
        table = pq.read_table(tmp_path / "p" / s / "patients.parquet")
        assert set(table["patient"].to_pylist()) == patients[s] and table.num_rows == len(patients[s])
        assert str(table.schema.field("label_time").type) == "timestamp[us, tz=UTC]"
        assert {"hba1c_4548_4_last_365d", "glucose_14771_0_slope_90d", "sex", "birth_year_band", "label_institution",
                "med_metformin", "dx_hypertension"} <= set(table.column_names)
    cols = wide["matrix"]["columns"]
    assert cols["sex"]["missing_share"] == 0.0 and 0 < cols["hba1c_4548_4_last_365d"]["missing_share"] < 1
    assert cols["med_metformin"]["true"] > 0 and cols["n_institutions"]["min"] >= 1
    assert {b["code"] for b in wide["matrix"]["results_by_code_and_unit"]} == {"4548-4", "14771-0", "22748-8", "14682-9"}
    assert "## Columns (per-patient table)" in (tmp_path / "p" / "datasheet.md").read_text()

    # later publishes and a newer release do not change a build pinned to the tag
    lis = sa.create_engine(next(f.url for f in region.institution("city-first").feeds if f.name == "lis"))
    with lis.begin() as conn:
        conn.execute(sa.text("UPDATE lab_result SET result_value = '5.10', updated_at = '2026-09-01 00:00:00' WHERE item_code = 'HBA1C'"))
    run_institution(region, "city-first", keys)
    assert build_release(region, keys, name="later-release", k=2, max_suppression=0.2).status == "published"
    again = build(region, keys, SPEC, tmp_path / "b")
    assert again["files_sha256"] == first["files_sha256"]  # byte-for-byte
    assert json.loads((tmp_path / "b" / "datasheet.json").read_text()) == json.loads((tmp_path / "a" / "datasheet.json").read_text())
    assert build(region, keys, PATIENT_SPEC, tmp_path / "p2")["files_sha256"] == wide["files_sha256"]
    assert (tmp_path / "p2" / "datasheet.json").read_bytes() == (tmp_path / "p" / "datasheet.json").read_bytes()
    assert "## Risk report of the release" in (tmp_path / "a" / "datasheet.md").read_text()

    # loading recipes: pyarrow, polars, DuckDB, and a streaming iterable
    import duckdb
    import polars as pl

    from hub.trainset.loaders import ParquetBatches

    train = tmp_path / "a" / "train" / "labs.parquet"
    arrow = pq.read_table(train)
    frame = pl.read_parquet(train)
    n = duckdb.sql(f"SELECT count(*) FROM read_parquet('{train}')").fetchall()[0][0]
    batches = list(ParquetBatches(train, batch_size=50))
    assert arrow.num_rows == frame.height == n == sum(len(b["patient"]) for b in batches) == len(ParquetBatches(train))
    assert len(batches) == -(-arrow.num_rows // 50)

    from hub.lineage import access, runrecord

    assert [e["action"] for e in access.entries(runrecord.connect(region.catalog_url), action="trainset-build")] == ["trainset-build"] * 4

    # lineage goes forward from a published result to the training sets that include its patient
    from hub.lakehouse.tables import open_catalog
    from hub.lineage.trace import trace

    member = next(iter(patients["train"]))
    obs = open_catalog(region.catalog_url, region.warehouse).load_table("recognition.observation").scan(
        selected_fields=("id", "patient")).to_arrow().to_pylist()
    from deid.actions import pseudonym

    row = next(o for o in obs if pseudonym(keys, "research-linkage", o["patient"]) == member)
    chain = trace(region, keys, f"Observation/{row['id']}")
    assert {"trainset": "t2dm-hba1c", "tag": "demo-release", "split": "train", "out": str((tmp_path / "a").resolve())} in chain["training_sets"]
