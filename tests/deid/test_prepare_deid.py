"""hub.prepare under the engine: unknown modifier extensions are quarantined, known values reach scrub."""

from __future__ import annotations

import json

import pytest

from deid.ruleset import default_ruleset_path, load_ruleset
from hub.prepare import Preparer, Ready, Rejected

MAPPING = """\
mapping: test_results
version: "1"
system: LIS
timezone: "+08:00"
datetime_formats: ["%Y-%m-%d %H:%M:%S"]
resources:
  - resource: Observation
    from: lab_result
    key: [result_id]
    elements:
      status: final
      code: {codeable: item_code, system: "urn:hub:test:item", text: item_name, required: true}
      subject: {reference: Patient, key: [mrn], required: true}
      subject.display: {column: patient_name, phi: true}
      value[x]: {lab_value: result_value}
      modifierExtension[0].url: {column: modifier_url}
      modifierExtension[0].valueBoolean: true
"""


@pytest.fixture()
def preparer(tmp_path, keys):
    (tmp_path / "results.yaml").write_text(MAPPING, encoding="utf-8")
    return Preparer("h1", keys, load_ruleset(default_ruleset_path(), "recognition")), str(tmp_path / "results.yaml")


def _row(preparer: Preparer, path: str, **values) -> tuple:
    compiled = preparer.compiled(path, 0)
    base = {"result_id": 7, "item_code": "HBA1C", "item_name": "糖化血红蛋白", "mrn": "M0000001",
            "patient_name": "欧阳娜娜", "result_value": "7.5", "modifier_url": None}
    base.update(values)
    return tuple(base[c.split(".")[1]] for c in compiled.columns)


def test_a_row_with_an_unknown_modifier_extension_is_quarantined_with_a_reason(preparer):
    prep, path = preparer
    url = "http://example.org/fhir/StructureDefinition/entered-in-error"
    batch = prep.prepare(path, 0, [_row(prep, path, modifier_url=url), _row(prep, path, result_id=8)])
    rejected, ready = batch.items
    assert isinstance(rejected, Rejected) and isinstance(ready, Ready)
    reason = rejected.problems[0].reason(rejected.label)
    assert reason == (
        f"results.yaml:16 Observation.modifierExtension: row {rejected.label}: has a modifierExtension "
        f"hub's ruleset does not know: {url}; expected no modifierExtension, or a rule for it in default.yaml"
    )
    assert "欧阳娜娜" not in reason and "M0000001" not in reason


def test_the_rows_phi_values_are_scrubbed_from_kept_strings(preparer):
    prep, path = preparer
    # the name from the row's phi column, written with spaces inside a text result and an item name
    batch = prep.prepare(path, 0, [_row(prep, path, result_value="欧阳 娜娜 复查", item_name="HbA1c（欧阳娜娜）")])
    (ready,) = batch.items
    out = json.loads(ready.text)
    assert "娜" not in ready.text and "欧阳" not in ready.text
    assert out["valueString"].endswith("复查") and out["code"]["text"].startswith("HbA1c")
    assert out["subject"] == {"reference": out["subject"]["reference"]}  # the display is redacted


def test_the_rows_identifying_columns_include_the_patient_key(preparer):
    prep, path = preparer
    compiled = prep.compiled(path, 0)
    row = _row(prep, path)
    assert sorted(compiled.known_values(row)) == sorted([row[compiled.columns.index("lab_result.mrn")], "欧阳娜娜"])
    assert prep.deid.identifying_values({"resourceType": "Observation", "valueString": "x"}) == ()


def test_an_mrn_written_into_a_result_text_is_scrubbed(preparer):
    prep, path = preparer
    mrn = _row(prep, path)[prep.compiled(path, 0).columns.index("lab_result.mrn")]
    (ready,) = prep.prepare(path, 0, [_row(prep, path, result_value=f"see chart {mrn}")]).items
    assert mrn not in ready.text and "[identifier]" in ready.text
