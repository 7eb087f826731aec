"""A third vendor schema (wide results table, item dictionary, lookup table, text times) with a mapping file only."""

from __future__ import annotations

import json

import pyarrow.compute as pc
import pytest
import sqlalchemy as sa
import yaml

from hub import quarantine
from hub.demo import vendors
from hub.demo.generator import generate_onboarding_sources, generate_region
from hub.feeds import check_feed
from hub.lakehouse.tables import open_catalog
from hub.lineage import runrecord
from hub.pipeline import run_institution
from hub.region import load_region
from hub.replay import replay
from tests.conftest import REPO

pytestmark = pytest.mark.slow
NEW = "xixi-chc"


@pytest.fixture()
def region(tmp_path):
    generate_region(tmp_path, patients=10)
    urls = generate_onboarding_sources(tmp_path, patients=60)
    doc = yaml.safe_load((tmp_path / "region.yaml").read_text(encoding="utf-8"))
    # onboarding is configuration only: one more institution with two feeds
    doc["institutions"].append({"id": NEW, "name": "西溪街道社区卫生服务中心", "level": "community health centre", "feeds": [
        {"name": "his", "mapping": "his_vendor_a", "url": urls["his"]},
        {"name": "lis", "mapping": "lis_vendor_c", "url": urls["lis"]},
    ]})
    (tmp_path / "region.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return load_region(tmp_path)


def _lis(region):
    return sa.create_engine(region.institution(NEW).feeds[1].url)


def _cells(region) -> tuple[int, int]:
    """(non-empty item cells, of which CRP) in the wide table."""
    with _lis(region).connect() as conn:
        total = sum(conn.execute(sa.text(f'SELECT COUNT("{c}") FROM jy_report_wide')).scalar_one() for c in vendors.WIDE_ITEMS)
        crp = conn.execute(sa.text('SELECT COUNT("CRP") FROM jy_report_wide')).scalar_one()
    return total, crp


def test_wide_table_vendor_is_published_through_its_mapping_file(region, keys):
    cells, crp = _cells(region)
    assert crp > 0

    check = check_feed(REPO / "mappings" / "lis_vendor_c.yaml", region.institution(NEW).feeds[1].url, NEW, region.ruleset, keys=keys)
    assert [c.cause.split(" ", 1)[1] for c in check.causes] == ["Observation.code: has no standard code in jy_item.loinc"]

    report = run_institution(region, NEW, keys)
    obs = report.by_resource()["Observation"]
    assert obs["read"] == cells  # one row per non-empty cell
    assert (obs["published"], obs["quarantined"]) == (cells - crp, crp)

    table = open_catalog(region.catalog_url, region.warehouse).load_table("recognition.observation")
    published = table.scan(row_filter=f"institution == '{NEW}'").to_arrow()
    hba1c = [json.loads(r) for r in published.filter(pc.equal(published["code"], "http://loinc.org|4548-4"))["resource"].to_pylist()]
    assert hba1c, "HbA1c results from the wide table"
    sample = hba1c[0]
    assert sample["effectiveDateTime"].endswith("+08:00")  # "2024年03月05日 08时30分" read in the source's zone
    assert sample["status"] in ("final", "preliminary", "corrected")  # from the lookup table
    assert sample["valueQuantity"]["code"] == "%"
    assert {c["system"] for c in sample["code"]["coding"]} == {"http://loinc.org", "urn:hub:vendor-c:lab-item"}

    # the gap the check showed is fixed in the vendor's dictionary, then replayed
    with _lis(region).begin() as conn:
        conn.execute(sa.text("UPDATE jy_item SET loinc = '1988-5', loinc_name = 'C reactive protein' WHERE col_name = 'CRP'"))
    result = replay(region, NEW, keys)
    assert (result.published, result.still_quarantined) == (crp, 0)
    assert quarantine.list_rows(runrecord.connect(region.catalog_url), institution=NEW, status="open") == []
    assert table.refresh().scan(row_filter=f"institution == '{NEW}'").to_arrow().num_rows == cells
