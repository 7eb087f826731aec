"""Importing a Microsoft FHIR anonymizer configuration."""

from __future__ import annotations

import yaml

from deid.engine import Deidentifier
from deid.migrate import as_ruleset, import_anonymizer
from deid.ruleset import load_ruleset

CONFIG = {
    "fhirVersion": "R4",
    "fhirPathRules": [
        {"path": "Resource.id", "method": "cryptoHash"},
        {"path": "nodesByType('HumanName')", "method": "redact"},
        {"path": "Patient.identifier.where(system='urn:oid:2.16.156.10011.1.3').value", "method": "cryptoHash"},
        {"path": "Patient.birthDate", "method": "dateShift"},
        {"path": "Observation.valueQuantity", "method": "perturb", "span": 0.1, "rangeType": "proportional", "roundTo": 2},
        {"path": "Patient.gender", "method": "keep"},
        {"path": "Patient.birthDate", "method": "generalize", "cases": {"$this < @1950": "@1950"}},
        {"path": "Patient.address", "method": "substitute", "replaceWith": {"city": "X"}},
        {"path": "nodesByType('Extension')", "method": "redact"},
        {"path": "Observation.code.coding.where(system='http://loinc.org').display", "method": "redact"},
    ],
    "parameters": {"cryptoHashKey": "123", "dateShiftKey": "abc"},
}


def test_common_forms_translate_and_the_rest_is_reported(tmp_path, keys):
    report = import_anonymizer(CONFIG)
    paths = {p: r["action"]["recognition"] for r in report.rules for p in r["paths"]}
    assert paths["*.id"] == {"pseudonymize": {"key": "identifier"}}
    assert paths["Patient.name"] == "redact"
    assert paths["Patient.identifier(system=urn:oid:2.16.156.10011.1.3)"] == {"pseudonymize": {"key": "identifier"}}
    assert paths["Observation.valueQuantity"] == {"perturb": {"relative": 0.1}}
    assert len(report.untranslated) == 4
    assert any("generalize" in u for u in report.untranslated) and any("substitute" in u for u in report.untranslated)
    assert any("Extension" in u for u in report.untranslated)
    assert any("not imported" in n for n in report.notes)

    out = tmp_path / "imported.yaml"
    out.write_text(yaml.safe_dump(as_ruleset(report), allow_unicode=True), encoding="utf-8")
    ruleset = load_ruleset(out, "recognition")  # the result passes hub's own validation
    patient = {"resourceType": "Patient", "id": "p1", "name": [{"text": "李娜"}], "gender": "female",
               "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": "110101199003074610"}]}
    clean = Deidentifier(ruleset, keys).apply(patient)
    assert "name" not in clean and clean["gender"] == "female" and clean["id"] != "p1"
    assert clean["identifier"][0]["value"] != "110101199003074610"
