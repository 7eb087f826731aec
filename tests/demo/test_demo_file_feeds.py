"""The demo's HL7 v2 lab and FHIR NDJSON hospital: drawn from the same people, published clean."""

from __future__ import annotations

import gzip
import json

import pytest

from hub.demo.file_feeds import FILE_INSTITUTIONS
from hub.demo.generator import generate_region
from hub.lakehouse.tables import open_catalog, table_name
from hub.pipeline import run_institution
from hub.region import load_region

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def region(tmp_path_factory, keys):
    ws = tmp_path_factory.mktemp("demo-files")
    generate_region(ws, patients=120, file_feeds=True)
    region = load_region(ws)
    reports = {i.id: run_institution(region, i.id, keys) for i in region.institutions}
    return region, reports


def test_the_file_institutions_are_feeds_of_their_kinds(region):
    region, _ = region
    kinds = {i.id: [f.kind for f in i.feeds] for i in region.institutions}
    assert kinds["gongshu-lab"] == ["hl7v2"] and kinds["binjiang-fhir"] == ["ndjson"]
    lab = region.workspace / "sources" / "gongshu-lab"
    raw = next(lab.glob("*.hl7")).read_bytes()
    assert b"GB 18030-2000" in raw.split(b"\r", 1)[0]  # MSH-18
    text = raw.decode("gb18030")
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")  # really GB18030 bytes, not UTF-8 with a label
    assert "PID|" in text and "OBX|" in text


def test_every_message_and_line_is_published_and_nothing_is_quarantined(region):
    _, reports = region
    for inst in FILE_INSTITUTIONS:
        counts = reports[inst.id].by_resource()
        assert counts["Observation"]["published"] > 0, inst.id
        assert all(c["quarantined"] == 0 for c in counts.values()), (inst.id, reports[inst.id].causes)


def test_the_same_person_links_across_sql_ndjson_and_hl7(region):
    """A resident ID number gives one linkage pseudonym wherever the person's records come from."""
    region, _ = region
    table = open_catalog(region.catalog_url, region.warehouse).load_table(table_name(region.zone, "Patient"))
    rows = table.scan(selected_fields=("institution", "patient")).to_arrow().to_pylist()
    by_inst: dict[str, set[str]] = {}
    for r in rows:
        by_inst.setdefault(r["institution"], set()).add(r["patient"])
    sql = by_inst["city-first"] | by_inst["xihu-second"] | by_inst["beishan-chc"]
    assert by_inst["binjiang-fhir"] & sql
    assert by_inst["gongshu-lab"] & sql


def test_no_name_of_the_export_reaches_the_lakehouse(region):
    region, _ = region
    export = region.workspace / "sources" / "binjiang-fhir" / "Patient.ndjson.gz"
    names = [json.loads(line)["name"][0]["text"] for line in gzip.open(export, "rt", encoding="utf-8")]
    icat = open_catalog(region.catalog_url, region.warehouse)
    published = " ".join(icat.load_table(table_name(region.zone, t)).scan(selected_fields=("resource",)).to_arrow()
                         .column("resource").to_pylist().__str__() for t in ("Patient", "Observation"))
    assert names and not [n for n in names if n in published]
