"""FHIR NDJSON feeds: a bulk export published like a mapped feed, incrementally, with keyed ids.

The export is written by the test (see _write_export): Patient (plain), Encounter (gzip),
Observation with one invalid resource, one unparseable line and one whose valueString
names the patient and a phone number, a DiagnosticReport referencing them, and a file of a
type hub does not publish. One of its patients is a person of the vendor-A SQL demo feed.
"""

from __future__ import annotations

import gzip
import json
import sqlite3
from pathlib import Path

import pytest
import yaml

from hub.demo.generator import generate_region
from hub.feeds import check_ndjson_feed
from hub.identifiers import find_identifiers
from hub.lakehouse.tables import open_catalog
from hub.lineage import runrecord
from hub.pipeline import run_institution
from hub.quarantine import list_rows
from hub.region import load_region
from hub.sources import ndjson

pytestmark = pytest.mark.slow
SQL_INST, INST, FEED = "city-first", "clinic-bulk", "export"
PHONE = "13912345678"
OTHER_ID, OTHER_NAME = "11010119900307002X", "欧阳娜娜"


def _person(workspace: Path) -> dict:
    """One patient of the vendor-A HIS demo database (city-first): the same person the export sends."""
    conn = sqlite3.connect(workspace / "sources" / f"{SQL_INST}-his.db")
    conn.row_factory = sqlite3.Row
    row = conn.execute("SELECT * FROM patient WHERE id_card_no IS NOT NULL ORDER BY patient_id LIMIT 1").fetchone()
    return dict(row)


def _obs(i: str, patient: str, enc: str, **value) -> dict:
    return {"resourceType": "Observation", "id": i, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7", "display": "Glucose"}]},
            "subject": {"reference": f"Patient/{patient}"}, "encounter": {"reference": f"Encounter/{enc}"},
            "effectiveDateTime": "2026-03-01T08:30:00+08:00", **value}


def _write_export(folder: Path, person: dict) -> None:
    folder.mkdir(parents=True)
    patients = [
        {"resourceType": "Patient", "id": "pat-1",
         "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": person["id_card_no"].lower()},
                        {"system": "urn:example:clinic:mrn", "value": "MRN-77001"}],
         "name": [{"text": person["name"]}], "telecom": [{"system": "phone", "value": PHONE}],
         "gender": "female", "birthDate": "1990-03-07"},
        {"resourceType": "Patient", "id": "pat-2",
         "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": OTHER_ID}],
         "name": [{"text": OTHER_NAME}], "gender": "female", "birthDate": "1990-03-07"},
    ]
    (folder / "Patient.ndjson").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in patients), encoding="utf-8")
    encounters = [{"resourceType": "Encounter", "id": "enc-1", "status": "finished",
                   "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                   "subject": {"reference": "Patient/pat-1"}, "period": {"start": "2026-03-01T08:00:00+08:00"}}]
    with gzip.open(folder / "Encounter.ndjson.gz", "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(e) + "\n" for e in encounters)
    obs = [
        _obs("obs-1", "pat-1", "enc-1", valueQuantity={"value": 5.60, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"}),
        _obs("obs-2", "pat-1", "enc-1", valueString=f"复查: 患者{person['name']}, 电话 {PHONE}, 阴性"),
        {**_obs("obs-3", "pat-2", "enc-1"), "effectiveDateTime": "yesterday"},
    ]
    text = "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in obs)
    text = text.replace('"value": 5.6,', '"value": 5.60,')  # decimal precision must survive
    (folder / "Observation.ndjson").write_text(text + '{"resourceType": "Observation", "id": "obs-4", \n', encoding="utf-8")
    report = {"resourceType": "DiagnosticReport", "id": "dr-1", "status": "final",
              "code": {"coding": [{"system": "http://loinc.org", "code": "24323-8"}]},
              "subject": {"reference": "Patient/pat-1"}, "encounter": {"reference": "Encounter/enc-1"},
              "effectiveDateTime": "2026-03-01T08:30:00+08:00",
              "result": [{"reference": "Observation/obs-1"}, {"reference": "Observation/obs-2"},
                         {"reference": "Observation/not-in-export"}]}
    (folder / "DiagnosticReport.ndjson").write_text(json.dumps(report) + "\n", encoding="utf-8")
    (folder / "Practitioner.ndjson").write_text(json.dumps({"resourceType": "Practitioner", "id": "doc-1"}) + "\n", encoding="utf-8")


@pytest.fixture()
def region(tmp_path):
    generate_region(tmp_path, patients=4)
    person = _person(tmp_path)
    _write_export(tmp_path / "exports" / "clinic", person)
    doc = yaml.safe_load((tmp_path / "region.yaml").read_text(encoding="utf-8"))
    doc["institutions"] = [i for i in doc["institutions"] if i["id"] == SQL_INST]
    doc["institutions"].append({"id": INST, "name": "Bulk-export clinic", "level": "community",
                                "feeds": [{"name": FEED, "kind": "ndjson", "path": "{workspace}/exports/clinic"}]})
    (tmp_path / "region.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    region = load_region(tmp_path)
    region.person = person  # type: ignore[attr-defined]
    return region


def _rows(region, rtype: str, institution: str = INST) -> list[dict]:
    table = open_catalog(region.catalog_url, region.warehouse).load_table(f"recognition.{rtype.lower()}")
    return table.scan(row_filter=f"institution == '{institution}'").to_arrow().to_pylist()


def test_export_publishes_with_counts_reconciled_per_file(region, keys):
    report = run_institution(region, INST, keys)
    per_file: dict[str, list[int]] = {}
    for c in report.counts:
        agg = per_file.setdefault(c.source_table, [0, 0, 0])
        agg[0] += c.rows_read
        agg[1] += c.published
        agg[2] += c.quarantined
    assert per_file == {
        "Patient.ndjson": [2, 2, 0], "Encounter.ndjson.gz": [1, 1, 0], "Observation.ndjson": [4, 2, 2],
        "DiagnosticReport.ndjson": [1, 1, 0], "Practitioner.ndjson": [1, 0, 1],
    }
    causes = " ".join(report.causes)
    assert "is not valid JSON" in causes and "Practitioner is a resource type hub does not publish" in causes
    assert "Observation.effectiveDateTime" in causes
    reasons = [r["reason"] for r in list_rows(runrecord.connect(region.catalog_url), institution=INST)]
    assert any(r.startswith("Observation.ndjson:3 Observation.effectiveDateTime") for r in reasons)  # file:line and element
    assert any(r.startswith("Observation.ndjson:4 ") for r in reasons)
    assert not any("yesterday" in r for r in reasons)  # never the value
    assert report.sources[FEED]["references_outside_export"] == 1  # Observation/not-in-export, kept


def test_rows_written_by_flushes_inside_a_file_are_counted(region, keys):
    """A file larger than the flush size is staged in several flushes; the report counts them all."""
    report = run_institution(region, INST, keys, flush_rows=1)
    written = {c.source_table: c.written for c in report.counts if c.resource_type in ("Patient", "Observation")}
    assert written == {"Patient.ndjson": 2, "Observation.ndjson": 2}


def test_ids_and_references_are_keyed_and_consistent(region, keys):
    run_institution(region, INST, keys)
    patients = {r["id"]: r for r in _rows(region, "Patient")}
    encounters = {r["id"]: r for r in _rows(region, "Encounter")}
    observations = {r["id"]: r for r in _rows(region, "Observation")}
    (report,) = _rows(region, "DiagnosticReport")
    everything = [*patients, *encounters, *observations, report["id"]]
    assert all(len(i) == 32 and not i.startswith(("pat", "enc", "obs", "dr")) for i in everything)
    dr = json.loads(report["resource"])
    subject = dr["subject"]["reference"].removeprefix("Patient/")
    assert subject in patients and patients[subject]["patient"] == report["patient"] is not None
    assert dr["encounter"]["reference"].removeprefix("Encounter/") in encounters
    results = [r["reference"].removeprefix("Observation/") for r in dr["result"]]
    assert set(results[:2]) == set(observations)
    assert results[2] == ndjson.ResourcePreparer(INST, keys, None, None, FEED, None).keyed_id("Observation", "not-in-export")
    for o in observations.values():
        res = json.loads(o["resource"])
        assert res["subject"]["reference"].removeprefix("Patient/") in patients
        assert o["source_system"] == f"ndjson:{FEED}" and o["source_table"] == "Observation.ndjson"
    assert any('"value":5.60' in o["resource"] for o in observations.values())
    where = ndjson.line_of(runrecord.connect(region.catalog_url), INST, report["id"])
    assert where["file"] == "DiagnosticReport.ndjson" and where["line"] == 1 and len(where["line_hash"]) == 32


def test_same_person_from_sql_and_ndjson_has_one_linkage_pseudonym(region, keys):
    run_institution(region, SQL_INST, keys)
    run_institution(region, INST, keys)
    sql_people = {r["patient"] for r in _rows(region, "Patient", SQL_INST)}
    ndjson_people = {r["patient"] for r in _rows(region, "Patient")}
    assert len(ndjson_people) == 2 and len(sql_people & ndjson_people) == 1


def test_no_identifier_survives(region, keys):
    run_institution(region, INST, keys)
    person = region.person
    planted = [person["name"], person["id_card_no"], person["id_card_no"].lower(), PHONE, OTHER_ID, OTHER_NAME, "MRN-77001"]
    published = [r["resource"] for t in ("Patient", "Encounter", "Observation", "DiagnosticReport") for r in _rows(region, t)]
    assert published
    for text in published:
        assert find_identifiers(text, planted, document=True) == [], text
        assert not any(v in text for v in planted)
    assert any("阴性" in t for t in published)  # the clinical text itself is kept


def test_rerun_reads_nothing_and_an_appended_line_is_read(region, keys):
    first = run_institution(region, INST, keys)
    again = run_institution(region, INST, keys)
    assert sum(c.rows_read for c in again.counts) == 0
    assert {f["state"] for f in again.sources[FEED]["files"].values()} == {"unchanged"}
    folder = region.workspace / "exports" / "clinic"
    with (folder / "Observation.ndjson").open("a", encoding="utf-8") as fh:
        fh.write("\n" + json.dumps(_obs("obs-5", "pat-1", "enc-1", valueString="阳性")) + "\n")
    third = run_institution(region, INST, keys)
    assert [(c.source_table, c.rows_read, c.published) for c in third.counts] == [("Observation.ndjson", 1, 1)]
    assert third.sources[FEED]["files"]["Observation.ndjson"]["state"] == "appended"
    assert len(_rows(region, "Observation")) == 3
    assert first.by_resource()["Observation"]["published"] == 2


def test_rewritten_file_is_read_from_the_start_without_duplicates(region, keys):
    run_institution(region, INST, keys)
    folder = region.workspace / "exports" / "clinic"
    text = (folder / "Patient.ndjson").read_text(encoding="utf-8")
    (folder / "Patient.ndjson").write_text(text.replace('"female"', '"unknown"', 1), encoding="utf-8")
    report = run_institution(region, INST, keys)
    assert report.sources[FEED]["files"]["Patient.ndjson"]["state"] == "rewritten"
    assert [(c.source_table, c.rows_read, c.written) for c in report.counts] == [("Patient.ndjson", 2, 1)]
    assert len(_rows(region, "Patient")) == 2


def test_crash_before_position_advance_rereads_without_duplicates(region, keys, monkeypatch):
    real_advance = ndjson.advance

    def crash(*args, **kwargs):
        raise RuntimeError("killed between publishing and advancing the file positions")

    monkeypatch.setattr(ndjson, "advance", crash)
    with pytest.raises(RuntimeError, match="killed"):
        run_institution(region, INST, keys)
    engine = runrecord.connect(region.catalog_url)
    assert ndjson.get_position(engine, INST, FEED, "Observation.ndjson") is None
    assert len(_rows(region, "Observation")) == 2  # committed before the crash
    monkeypatch.setattr(ndjson, "advance", real_advance)
    again = run_institution(region, INST, keys)
    assert again.by_resource()["Observation"] == {**again.by_resource()["Observation"], "read": 4, "published": 2, "written": 0, "unchanged": 2}
    assert len(_rows(region, "Observation")) == 2
    assert ndjson.get_position(engine, INST, FEED, "Observation.ndjson").line == 4
    assert len(list_rows(engine, institution=INST, status="open")) == 3  # re-rejected lines keep one entry each


def test_oversized_line_is_quarantined_without_being_held(region, keys, monkeypatch):
    monkeypatch.setattr(ndjson, "MAX_LINE_BYTES", 1000)
    folder = region.workspace / "exports" / "clinic"
    with (folder / "Observation.ndjson").open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(_obs("obs-big", "pat-1", "enc-1", valueString="x" * 5000)) + "\n")
    report = run_institution(region, INST, keys)
    assert any("longer than 1,000 bytes" in c for c in report.causes)
    obs = [c for c in report.counts if c.source_table == "Observation.ndjson"]
    assert sum(c.rows_read for c in obs) == 5 and sum(c.quarantined for c in obs) == 3


def test_unpaired_surrogate_escapes_are_quarantined_and_the_run_goes_on(region, keys):
    """A JSON \\uD800 escape without its pair parses to a str no encoder takes: the line is quarantined with its
    element, a paired escape (an emoji) is published, and rows in = published + quarantined."""
    folder = region.workspace / "exports" / "clinic"
    secret = "复查" + PHONE
    with (folder / "Observation.ndjson").open("a", encoding="utf-8") as fh:  # json.dumps writes \\u escapes (ensure_ascii)
        fh.write(json.dumps(_obs("obs-lone", "pat-1", "enc-1", valueString=secret + "\ud800")) + "\n")
        fh.write(json.dumps(_obs("obs-low", "pat-1", "enc-1", note=[{"text": "\udfff" + secret}])) + "\n")
        fh.write(json.dumps({**_obs("obs-key", "pat-1", "enc-1"), "x\udc00": "1"}) + "\n")
        fh.write(json.dumps(_obs("obs-emoji", "pat-1", "enc-1", valueString="阴性 \U0001F600")) + "\n")
    report = run_institution(region, INST, keys)
    obs = [c for c in report.counts if c.source_table == "Observation.ndjson"]
    assert sum(c.rows_read for c in obs) == 8
    assert sum(c.rows_read for c in obs) == sum(c.published + c.quarantined for c in obs)
    assert sum(c.quarantined for c in obs) == 5  # the file's 2 bad lines (3 and 4) and the 3 unpaired escapes
    reasons = [r["reason"] for r in list_rows(runrecord.connect(region.catalog_url), institution=INST)]
    surrogate = sorted(r for r in reasons if "surrogate" in r)
    assert [r.split(":", 2)[:2] for r in surrogate] == [
        ["Observation.ndjson", "5 Observation.valueString"], ["Observation.ndjson", "6 Observation.note[0].text"],
        ["Observation.ndjson", "7 Observation.(name)"]]
    assert all("unpaired UTF-16 surrogate escape" in r for r in surrogate)
    assert not any(PHONE in r or "复查" in r for r in reasons)
    assert any("\U0001F600" in r["resource"] for r in _rows(region, "Observation"))


def test_bulk_export_manifest_with_local_urls(region, keys):
    folder = region.workspace / "exports" / "clinic"
    manifest = {"transactionTime": "2026-03-02T00:00:00+08:00", "request": "[base]/$export", "requiresAccessToken": False,
                "output": [{"type": "Patient", "url": (folder / "Patient.ndjson").as_uri()},
                           {"type": "Encounter", "url": "Encounter.ndjson.gz"}], "error": []}
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    files = ndjson.discover(folder / "manifest.json")
    assert [(f.rel, f.resource_type) for f in files] == [("Patient.ndjson", "Patient"), ("Encounter.ndjson.gz", "Encounter")]
    manifest["output"].append({"type": "Observation", "url": "https://fhir.example.org/out/Observation.ndjson"})
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(ndjson.NdjsonSourceError, match=r"output\[2\].url is a remote URL"):
        ndjson.discover(folder / "manifest.json")


def test_feeds_check_samples_an_ndjson_feed(region, keys):
    feed = region.institution(INST).feeds[0]
    result = check_ndjson_feed(feed, INST, region.ruleset, keys=keys, limit=100)
    by_file = {b.table: (b.rows, b.would_publish, b.would_quarantine) for b in result.blocks}
    assert by_file["Observation.ndjson"] == (4, 2, 2) and by_file["Practitioner.ndjson"] == (1, 0, 1)
    assert any("is not valid JSON" in g.cause for g in result.causes)
    engine = runrecord.connect(region.catalog_url)
    assert ndjson.get_position(engine, INST, FEED, "Observation.ndjson") is None  # a check stores nothing


def test_lineage_trace_names_the_file_and_line(region, keys):
    from hub.lineage.trace import trace

    run_institution(region, INST, keys)
    (report,) = _rows(region, "DiagnosticReport")
    out = trace(region, keys, f"DiagnosticReport/{report['id']}")
    assert out["source_line"]["file"] == "DiagnosticReport.ndjson" and out["source_line"]["line"] == 1
    assert out["mapping"]["file"] is None and out["manifest"]["data_file_intact"] is True
