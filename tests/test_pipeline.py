"""The whole path on a small demo region: counts reconcile, re-runs are idempotent, nothing leaks."""

from __future__ import annotations

from collections import Counter

import pyarrow.compute as pc
import pytest
import sqlalchemy as sa

from hub import quarantine
from hub.demo.generator import build_region
from hub.lakehouse.tables import open_catalog
from hub.lineage import runrecord
from hub.pipeline import run_institution
from tests.leakscan import hits, identifiers_of, parquet_text

pytestmark = pytest.mark.slow
TYPES = ["organization", "patient", "encounter", "condition", "medicationrequest", "servicerequest", "specimen", "diagnosticreport", "observation"]


def _tables(region):
    cat = open_catalog(region.catalog_url, region.warehouse)
    return {t: cat.load_table(f"recognition.{t}").scan().to_arrow() for t in TYPES}


def test_rows_in_equal_published_plus_quarantined_per_institution(demo):
    region, _, reports = demo
    tables = _tables(region)
    engine = runrecord.connect(region.catalog_url)
    for inst, report in reports.items():
        q = Counter(r["resource_type"] for r in quarantine.list_rows(engine, report.run_id))
        for rtype, c in report.by_resource().items():
            table = tables[rtype.lower()]
            in_lake = pc.sum(pc.equal(table["institution"], inst)).as_py() or 0
            assert c["read"] == in_lake + q[rtype], (inst, rtype)
            assert c["quarantined"] == q[rtype]


def test_every_demo_institution_has_each_kind_of_bad_row(demo):
    _, _, reports = demo
    for report in reports.values():
        causes = " ".join(report.causes)
        assert "is not a date-time" in causes
        assert "has no mapping in lab_items" in causes
        assert "refers to a patient this institution has not published" in causes


def test_second_run_changes_no_row_count_and_no_id(demo, keys):
    region, _, _ = demo
    before = {t: sorted(tab["id"].to_pylist()) for t, tab in _tables(region).items()}
    for inst in region.institutions:
        report = run_institution(region, inst.id, keys)
        assert all(c["written"] == 0 for c in report.by_resource().values())
    after = {t: sorted(tab["id"].to_pylist()) for t, tab in _tables(region).items()}
    assert after == before


def test_the_same_person_is_linked_across_institutions(demo):
    region, _, _ = demo
    patients = _tables(region)["patient"]
    institutions_per_person: dict[str, set[str]] = {}
    for pseudonym, inst in zip(patients["patient"].to_pylist(), patients["institution"].to_pylist(), strict=True):
        institutions_per_person.setdefault(pseudonym, set()).add(inst)
    assert max(len(v) for v in institutions_per_person.values()) >= 2
    results = _tables(region)["observation"]
    assert pc.all(pc.is_valid(results["patient"])).as_py()


def test_no_identifier_in_any_published_file_or_catalog(demo):
    region, _, _ = demo
    secrets = identifiers_of(build_region(40))
    assert len(secrets) > 100
    # positive control: the same scan finds them in a source database
    source = next(region.workspace.glob("sources/*-his.db")).read_bytes().decode("utf-8", errors="ignore")
    assert len(hits(source, secrets)) > 50
    parquet = sorted(region.warehouse.rglob("*.parquet"))
    assert parquet
    for f in parquet:
        assert hits(parquet_text(f), secrets) == [], f
    # raw bytes of everything else hub wrote: Iceberg metadata and manifests (column bounds),
    # the catalog database with run reports and quarantine (encrypted rows, reasons in clear)
    # (canary.json is the demo's tripwire list, written with the sources on purpose)
    written = [p for p in region.workspace.rglob("*") if p.is_file() and "sources" not in p.parts
               and p.suffix != ".parquet" and p.name != "canary.json"]
    assert any(p.name == "catalog.db" for p in written)
    for f in written:
        data = f.read_bytes().decode("utf-8", errors="ignore")
        assert hits(data, secrets) == [], f


def test_quarantined_rows_are_encrypted_and_openable_with_the_key(demo, keys):
    region, _, reports = demo
    engine = runrecord.connect(region.catalog_url)
    entries = quarantine.list_rows(engine, reports["city-first"].run_id)
    assert entries and all("payload" not in e for e in entries)
    with engine.connect() as conn:
        payload = conn.execute(sa.select(quarantine.quarantine.c.payload).limit(1)).scalar_one()
    assert b"lab_result" not in payload
    row = quarantine.open_row(engine, keys, entries[-1]["id"])
    assert any(k.endswith("result_time") or k.endswith("patient_mrn") or k.endswith("item_code") for k in row)


def test_lineage_columns_name_the_run_mapping_rules_and_key(demo, keys):
    region, _, reports = demo
    rows = _tables(region)["observation"].to_pylist()
    assert all("@" in r["mapping_version"] and r["key_id"] == keys.key_id for r in rows)
    obs = next(r for r in rows if r["source_system"] == "LIS")  # the HIS maps vital signs to Observations too
    assert obs["mapping_version"].startswith(("lis_vendor_a@", "lis_vendor_b@"))
    assert obs["ruleset_version"].startswith("hub-default@")
    assert obs["key_id"] == keys.key_id
    assert obs["source_system"] == "LIS" and len(obs["source_key_hash"]) == 32
    assert obs["code"].startswith("http://loinc.org|")
    assert obs["effective_time"] is not None


def test_run_counts_are_recorded_in_the_catalog(demo):
    region, _, reports = demo
    engine = runrecord.connect(region.catalog_url)
    rows = runrecord.counts_for_run(engine, reports["xihu-second"].run_id)
    assert rows and all(r["rows_read"] == r["published"] + r["quarantined"] for r in rows)


def test_worker_processes_publish_exactly_what_one_process_publishes(demo, keys, tmp_path):
    from hub.demo.generator import generate_region
    from hub.region import load_region

    region, _, reports = demo
    generate_region(tmp_path, patients=40)  # same seed, same sources as the demo fixture
    parallel = load_region(tmp_path)
    for inst in parallel.institutions:
        report = run_institution(parallel, inst.id, keys, workers=2)
        assert {k: (v["published"], v["quarantined"]) for k, v in report.by_resource().items()} == {
            k: (v["published"], v["quarantined"]) for k, v in reports[inst.id].by_resource().items()
        }
    one, two = _tables(region), _tables(parallel)
    for t in TYPES:
        assert sorted(zip(one[t]["id"].to_pylist(), one[t]["content_hash"].to_pylist(), strict=True)) == sorted(
            zip(two[t]["id"].to_pylist(), two[t]["content_hash"].to_pylist(), strict=True)
        ), t
