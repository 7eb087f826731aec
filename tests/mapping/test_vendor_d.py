"""Vendor D, a schema unlike the demo vendors (tests/data/vendor_d): tables without primary
keys, two-digit years, New York time, "no result" texts, dose ranges, ICD-9 codes without
their dot, rows excluded on purpose and a query over two tables. Golden output, then one test
per construct that tries to break it."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

from hub.fhir.jsonio import dumps, loads
from hub.mapping.compile import CompiledBlock
from hub.mapping.run import mapped_batches
from hub.mapping.spec import load_mapping
from hub.sources.sql import SourceSchema
from tests.conftest import DATA

FOLDER = DATA / "vendor_d"
INSTITUTION = "golden-hospital"


def build_source(path: Path, extra_sql: str = "") -> str:
    """The vendor D source database, written from its readable SQL (plus extra statements)."""
    conn = sqlite3.connect(path)
    conn.executescript((FOLDER / "source.sql").read_text(encoding="utf-8") + extra_sql)
    conn.commit()
    conn.close()
    return f"sqlite:///{path}"


def run(url: str, keys, mapping_path: Path = FOLDER / "vendor_d.yaml") -> tuple[dict[str, list[dict]], list[dict]]:
    """Map every block: resources by type (parsed), and quarantine reasons per rejected row."""
    mapping = load_mapping(mapping_path)
    engine = sa.create_engine(url)
    schema = SourceSchema(engine)
    resources: dict[str, list[dict]] = {}
    reasons: list[dict] = []
    try:
        for block in mapping.blocks:
            compiled = CompiledBlock(mapping, block, INSTITUTION, keys)
            for batch in mapped_batches(compiled, engine, schema):
                for m in batch:
                    if m.resource is not None:
                        resources.setdefault(block.resource, []).append(loads(dumps(m.resource)))
                    else:
                        label = compiled.row_label(m.row)
                        reasons.append({"resource": block.resource, "row": label, "reasons": [p.reason(label) for p in m.problems]})
    finally:
        engine.dispose()
    return resources, reasons


@pytest.fixture(scope="module")
def mapped(tmp_path_factory, keys):
    return run(build_source(tmp_path_factory.mktemp("vendor_d") / "src.db"), keys)


def _by(resources: list[dict], path: tuple, value) -> dict:
    found = []
    for r in resources:
        node = r
        for step in path:
            node = node[step] if isinstance(node, dict | list) and (isinstance(step, int) or step in node) else None
        if node == value:
            found.append(r)
    assert len(found) == 1, (path, value, len(found))
    return found[0]


def test_vendor_d_mapping_matches_golden_output(mapped):
    resources, reasons = mapped
    expected_types = sorted(p.stem for p in (FOLDER / "expected").glob("*.ndjson"))
    assert sorted(resources) == expected_types
    for rtype in expected_types:
        lines = (FOLDER / "expected" / f"{rtype}.ndjson").read_text(encoding="utf-8").splitlines()
        assert sorted(dumps(r) for r in resources[rtype]) == sorted(dumps(loads(line)) for line in lines if line.strip()), rtype
    assert reasons == json.loads((FOLDER / "expected" / "quarantine.json").read_text(encoding="utf-8"))


def _reasons(reasons: list[dict], resource: str) -> list[str]:
    return [r for q in reasons if q["resource"] == resource for r in q["reasons"]]


def test_two_digit_years_follow_the_declared_pivot_not_pythons(mapped):
    patients = mapped[0]["Patient"]
    # Python's own %y reads 64 as 2064; the mapping's pivot 1920 reads it as 1964
    assert _by(patients, ("identifier", 0, "value"), "101")["birthDate"] == "1964-10-23"
    assert _by(patients, ("identifier", 0, "value"), "102")["birthDate"] == "2005-07-04"
    assert _by(patients, ("identifier", 0, "value"), "106")["birthDate"] == "2000-02-29"


def test_implausible_and_shifted_dates_are_quarantined_with_a_reason(mapped):
    resources, reasons = mapped
    assert "103" not in {p["identifier"][0]["value"] for p in resources["Patient"]}  # born 9999-12-31
    assert any("Patient.birthDate" in r and "implausible date, after now + 1 day" in r for r in _reasons(reasons, "Patient"))
    assert "2008" not in {e["identifier"][0]["value"] for e in resources["Encounter"]}  # discharged in 2151
    assert any("ADMISSIONS(HADM_ID=2008)" in r and "Encounter.period.end" in r for r in _reasons(reasons, "Encounter"))
    assert not any("9999" in r or "2151" in r for q in reasons for r in q["reasons"])  # the values are withheld


def test_clinical_times_before_birth_are_quarantined(mapped):
    resources, reasons = mapped
    assert "105" not in {p["identifier"][0]["value"] for p in resources["Patient"]}  # died before being born
    assert any("Patient.deceasedDateTime" in r and "before the patient's birth date" in r for r in _reasons(reasons, "Patient"))
    # admitted in 2004, born 2005: the Encounter block sees the birth date through its join
    assert any("HADM_ID=2004" in r and "before the patient's birth date (PATIENTS.DOB)" in r for r in _reasons(reasons, "Encounter"))


def test_iana_time_zone_applies_daylight_saving(mapped):
    encounters = {e["identifier"][0]["value"]: e for e in mapped[0]["Encounter"]}
    assert encounters["2001"]["period"]["start"] == "2024-01-15T08:30:00-05:00"  # EST
    assert encounters["2002"]["period"]["start"] == "2024-07-04T23:15:00-04:00"  # EDT
    assert encounters["2005"]["period"]["start"] == "2024-11-03T01:30:00-04:00"  # the repeated hour: its first occurrence
    assert "2003" not in encounters  # 02:30 on 10 March 2024 never happened in New York
    assert any("HADM_ID=2003" in r and "does not exist in America/New_York" in r for r in _reasons(mapped[1], "Encounter"))


def test_where_excludes_rows_on_purpose_and_keeps_nulls_for_ne(mapped):
    resources, reasons = mapped
    encounters = {e["identifier"][0]["value"] for e in resources["Encounter"]}
    assert "2006" not in encounters and not any("2006" in q["row"] for q in reasons)  # DELETED = 1: never read
    assert "2007" in encounters  # DELETED is NULL: `ne: 1` keeps it
    assert not any(o["code"]["coding"][-1]["code"] == "99999" for o in resources["Observation"])  # QC item


def test_table_without_primary_key_is_keyed_by_natural_key_and_occurrence(mapped):
    resources, reasons = mapped
    creatinine = [o for o in resources["Observation"] if o["code"]["text"] == "Creatinine" and o["effectiveDateTime"].startswith("2024-01")]
    assert len({o["id"] for o in creatinine}) == len(creatinine) == 2  # HADM 2001, item 50912: occurrences 1 and 2
    # rows sharing natural key and order cannot be numbered stably: both quarantined, never one id for two rows
    ties = [q for q in reasons if "HADM_ID=2002, ITEMID=50912" in q["row"]]
    assert [q["row"].split("occurrence=")[1] for q in ties] == ["1)", "2)"]
    assert all("occurrence number is not stable" in q["reasons"][0] for q in ties)


def test_dose_range_and_thousands_separator_fall_back_in_order(mapped):
    requests = {r["identifier"][0]["value"]: r["dosageInstruction"][0]["doseAndRate"][0] for r in mapped[0]["MedicationRequest"]}
    assert requests["000123"]["doseRange"]["low"]["value"] == 325 and requests["000123"]["doseRange"]["high"]["value"] == 650
    assert requests["000124"] == {"doseQuantity": {"value": 25000, "unit": "U", "system": "http://unitsofmeasure.org", "code": "[U]"}}
    assert "doseQuantity" in requests["000125"]
    reasons = _reasons(mapped[1], "MedicationRequest")
    assert any("fits none of the alternatives (1: is not a number; 2: is not a range)" in r for r in reasons)
    assert not any("see chart" in r for r in reasons)


def test_string_transforms(mapped):
    codes = {c["code"].get("text"): c["code"].get("coding", [{}])[0].get("code") for c in mapped[0]["Condition"]}
    assert codes["Acute respiratory failure"] == "518.81"
    assert codes["Unspecified essential hypertension"] == "401.9"
    assert codes["Accidents occurring in other specified places"] == "E849.7"
    assert codes["Aortocoronary bypass status"] == "V45.81"
    assert codes["Diabetes mellitus"] == "250"
    request = _by(mapped[0]["MedicationRequest"], ("identifier", 0, "value"), "000123")  # extract
    assert request["medicationCodeableConcept"]["coding"][0]["code"] == "00904198861"  # pad
    assert request["dosageInstruction"][0]["route"]["text"] == "PO"  # split


def test_codeable_with_an_empty_code_keeps_its_text(mapped):
    chest = _by(mapped[0]["Condition"], ("code", "text"), "Chest pain, unspecified")
    assert chest["code"] == {"text": "Chest pain, unspecified"}


def test_no_result_texts_become_data_absent_reason_and_status(mapped):
    obs = {o["code"]["text"]: o for o in mapped[0]["Observation"]}
    assert obs["Magnesium"]["dataAbsentReason"]["coding"][0]["code"] == "temp-unknown" and obs["Magnesium"]["status"] == "final"
    assert obs["Phosphate"]["dataAbsentReason"]["coding"][0]["code"] == "not-performed" and obs["Phosphate"]["status"] == "cancelled"
    assert obs["Potassium"]["dataAbsentReason"]["coding"][0]["code"] == "error" and obs["Potassium"]["status"] == "cancelled"
    assert obs["Sodium"]["dataAbsentReason"]["coding"][0]["code"] == "unknown"
    for name in ("Magnesium", "Phosphate", "Potassium", "Sodium"):
        assert not any(k.startswith("value") for k in obs[name])  # never published as a final value


def test_comparators_in_words(mapped):
    obs = {o["code"]["text"]: o["valueQuantity"] for o in mapped[0]["Observation"] if "valueQuantity" in o}
    assert (obs["Urea Nitrogen"]["comparator"], obs["Urea Nitrogen"]["value"]) == (">", 2000)  # GREATER THAN 2000
    assert (obs["Glucose"]["comparator"], obs["Glucose"]["value"]) == (">", 2000)  # 大于2000
    assert (obs["C-Reactive Protein"]["comparator"], str(obs["C-Reactive Protein"]["value"])) == ("<", "0.1")  # 小于0.1


def test_values_beyond_their_datatype_are_quarantined(mapped):
    resources, reasons = mapped
    assert not any(o["code"]["text"] == "Vitamin B12" for o in resources["Observation"])
    assert any("has 5,000 digits, more than a FHIR decimal carries" in r for r in _reasons(reasons, "Observation"))
    assert not any("7777" in r for q in reasons for r in q["reasons"])
    assert any("too large for a FHIR integer" in r for r in _reasons(reasons, "MedicationRequest"))


def test_query_source_reads_both_tables(mapped):
    ids = {r["identifier"][0]["value"] for r in mapped[0]["MedicationRequest"]}
    assert "000088" in ids  # from PRESCRIPTIONS_ARCHIVE


def _lab_ids(url: str, keys, mapping_path: Path = FOLDER / "vendor_d.yaml") -> dict[str, str]:
    resources, _ = run(url, keys, mapping_path)
    return {o["effectiveDateTime"] + " " + o["code"]["text"]: o["id"] for o in resources["Observation"]}


def _content_keyed(tmp_path: Path) -> Path:
    """vendor_d.yaml with the lab table keyed by its content instead of natural key + occurrence."""
    text = (FOLDER / "vendor_d.yaml").read_text(encoding="utf-8").replace("../../../mappings/", str(DATA.parents[1] / "mappings") + "/")
    text = text.replace("    key: [HADM_ID, ITEMID]                       # the natural key; not unique on its own\n"
                        "    occurrence: {order_by: [CHARTTIME]}          # the key is (HADM_ID, ITEMID, occurrence)\n",
                        "    key: [HADM_ID, ITEMID, CHARTTIME, VALUE]\n")
    text = text.replace("safe_columns: [HADM_ID, ITEMID, occurrence, VALUEUOM]", "safe_columns: [HADM_ID, ITEMID, VALUEUOM]")
    path = tmp_path / "vendor_d_content.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_corrected_value_keeps_its_id_under_an_occurrence_key_but_not_under_a_content_key(tmp_path, keys):
    fix = "UPDATE LABEVENTS SET VALUE = '1.25' WHERE ITEMID = 50912 AND CHARTTIME = '2024-01-15 09:00:00';"
    before, after = build_source(tmp_path / "a.db"), build_source(tmp_path / "b.db", fix)
    row = "2024-01-15T09:00:00-05:00 Creatinine"
    assert _lab_ids(before, keys)[row] == _lab_ids(after, keys)[row]
    content = _content_keyed(tmp_path)
    assert _lab_ids(before, keys, content)[row] != _lab_ids(after, keys, content)[row]


def test_a_row_inserted_earlier_in_the_order_renumbers_the_later_ones(tmp_path, keys):
    """The documented price of an occurrence key: numbers follow the order, so an inserted
    earlier row takes the first number and each later row moves up one."""
    early = "INSERT INTO LABEVENTS VALUES (101, 2001, 50912, '2024-01-14 09:00:00', '1.4', 'mg/dL', '2024-01-14 10:00:00');"
    before, after = _lab_ids(build_source(tmp_path / "a.db"), keys), _lab_ids(build_source(tmp_path / "b.db", early), keys)
    assert after["2024-01-14T09:00:00-05:00 Creatinine"] == before["2024-01-15T09:00:00-05:00 Creatinine"]
    assert after["2024-01-15T09:00:00-05:00 Creatinine"] == before["2024-01-16T09:00:00-05:00 Creatinine"]
