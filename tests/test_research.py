"""Research releases: built from the recognition zone, unlinkable to it, gated on k-anonymity."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import sqlalchemy as sa

from deid.actions import pseudonym, shift_days
from hub.lakehouse.tables import open_catalog
from hub.lineage import runrecord
from hub.research import build_release, releases
from tests.conftest import publish_region

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def published(tmp_path_factory, keys):
    return publish_region(tmp_path_factory.mktemp("research"), keys, 120)[0]


def _table(region, name, **scan):
    return open_catalog(region.catalog_url, region.warehouse).load_table(name).scan(**scan).to_arrow()


def test_refused_release_publishes_nothing_and_keeps_its_report(published, keys):
    release = build_release(published, keys, name="too-strict", k=500)
    assert release.status == "refused" and "cannot be met" in release.report.reason
    with runrecord.connect(published.catalog_url).connect() as conn:
        row = conn.execute(sa.select(releases).where(releases.c.release_id == release.release_id)).one()
    assert row.status == "refused" and json.loads(row.risk_report)["passed"] is False
    catalog = open_catalog(published.catalog_url, published.warehouse)
    assert "research" not in [n[0] for n in catalog.list_namespaces()] or all(
        catalog.load_table(t).current_snapshot() is None for t in catalog.list_tables("research")
    )


def test_published_release_meets_k_and_is_unlinkable_to_recognition(published, keys):
    release = build_release(published, keys, name="r1", k=3, max_suppression=0.3)
    assert release.status == "published" and release.report.k_achieved >= 3

    rec_obs, res_obs = _table(published, "recognition.observation"), _table(published, "research.observation")
    assert res_obs.num_rows > 0
    for column in ("id", "patient", "source_key_hash", "content_hash"):
        assert set(rec_obs[column].to_pylist()).isdisjoint(res_obs[column].to_pylist()), column
    res_text = "\n".join(res_obs["resource"].to_pylist())
    assert not any(pid in res_text for pid in set(rec_obs["id"].to_pylist()))

    # every research person meets k over (birth year band, sex)
    patients = [json.loads(r) for r in _table(published, "research.patient")["resource"].to_pylist()]
    assert all(len(p["birthDate"]) == 4 for p in patients)


def test_dates_are_shifted_by_one_offset_per_patient(published, keys):
    build_release(published, keys, name="r2", k=3, max_suppression=0.3)
    rec = _table(published, "recognition.observation").to_pylist()
    res = {r["id"]: r for r in _table(published, "research.observation").to_pylist()}
    checked = 0
    for row in rec:
        twin = res.get(pseudonym(keys, "research-id", row["id"]))
        if twin is None:
            continue  # a suppressed person
        before = dt.datetime.fromisoformat(json.loads(row["resource"])["effectiveDateTime"])
        after = dt.datetime.fromisoformat(json.loads(twin["resource"])["effectiveDateTime"])
        assert (after - before).days == shift_days(keys, row["patient"], 50)
        checked += 1
    assert checked > 100


def test_release_is_tagged_and_readable_by_name(published, keys):
    release = build_release(published, keys, name="for-ml-team", k=3, max_suppression=0.3)
    table = open_catalog(published.catalog_url, published.warehouse).load_table("research.patient")
    tagged = table.scan(snapshot_id=table.snapshot_by_name("for-ml-team").snapshot_id).to_arrow()
    assert tagged.num_rows == release.rows["Patient"]
