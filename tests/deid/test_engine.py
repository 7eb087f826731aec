"""De-identification under the default ruleset: deny by default, keyed pseudonyms, counted drops."""

from __future__ import annotations

import pytest

from deid.engine import PSEUDONYM_SYSTEM, Deidentifier, patient_pseudonym
from deid.keys import Keyring
from deid.ruleset import default_ruleset_path, load_ruleset

ID_SYSTEM = "urn:oid:2.16.156.10011.1.3"


@pytest.fixture()
def deid(keys):
    return Deidentifier(load_ruleset(default_ruleset_path(), "recognition"), keys)


def patient(id_number: str | None, mrn: str, institution: str = "a") -> dict:
    identifiers = [{"system": f"urn:hub:{institution}:mrn", "value": mrn}]
    if id_number:
        identifiers.insert(0, {"system": ID_SYSTEM, "value": id_number})
    return {
        "resourceType": "Patient", "id": "p1", "identifier": identifiers,
        "name": [{"text": "张伟"}], "telecom": [{"system": "phone", "value": "13800138000"}],
        "address": [{"text": "浙江省杭州市西湖区文三路1号"}], "gender": "male", "birthDate": "1990-03-07",
        "maritalStatus": {"text": "已婚"},
    }


def test_direct_identifiers_are_removed(deid):
    out = deid.apply(patient("110101199003074610", "M0000001"))
    text = repr(out)
    for secret in ("110101199003074610", "M0000001", "张伟", "13800138000", "文三路"):
        assert secret not in text
    assert out["gender"] == "male" and out["birthDate"] == "1990-03-07"
    assert set(out) == {"resourceType", "id", "identifier", "gender", "birthDate"}


def test_uncovered_element_is_dropped_and_counted(deid):
    out = deid.apply(patient("110101199003074610", "M1"))
    assert "maritalStatus" not in out
    assert deid.stats.uncovered["Patient.maritalStatus"] == 1
    assert deid.stats.dropped_by_rule["Patient.name"] == 1


def test_linkage_pseudonym_is_the_same_across_institutions(deid):
    a = deid.apply(patient("11010119900307002X", "M1", "a"))
    b = deid.apply(patient("11010119900307002x", "BA9", "b"))  # lower-case check char normalised
    assert patient_pseudonym(a) == patient_pseudonym(b)
    assert a["identifier"][0]["system"] == PSEUDONYM_SYSTEM + "patient-linkage"


def test_mrn_pseudonyms_are_scoped_by_institution(deid):
    a = deid.apply(patient(None, "M1", "a"))
    b = deid.apply(patient(None, "M1", "b"))
    assert patient_pseudonym(a) != patient_pseudonym(b)


def test_pseudonyms_depend_on_the_key():
    rules = load_ruleset(default_ruleset_path(), "recognition")
    p = patient("110101199003074610", "M1")
    one = patient_pseudonym(Deidentifier(rules, Keyring(bytes(32))).apply(p))
    two = patient_pseudonym(Deidentifier(rules, Keyring(bytes([1]) * 32)).apply(p))
    assert one != two


def test_free_text_is_removed_and_clinical_values_kept(deid):
    rx = {
        "resourceType": "MedicationRequest", "id": "m1", "status": "completed", "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {"text": "二甲双胍片"},
        "dosageInstruction": [{"text": "张伟 遵医嘱", "doseAndRate": [{"doseQuantity": {"value": 0.5, "unit": "g"}}]}],
    }
    out = deid.apply(rx)
    assert "text" not in out["dosageInstruction"][0]
    assert out["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 0.5
    assert out["subject"] == {"reference": "Patient/p1"}


def test_observation_values_and_dates_are_kept_exactly(deid):
    from decimal import Decimal

    obs = {
        "resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "HbA1c"},
        "effectiveDateTime": "2024-03-05T09:00:00+08:00", "valueQuantity": {"value": Decimal("7.50"), "unit": "%"},
        "note": [{"text": "free text"}],
    }
    out = deid.apply(obs)
    assert out["valueQuantity"]["value"] == Decimal("7.50") and str(out["valueQuantity"]["value"]) == "7.50"
    assert out["effectiveDateTime"] == obs["effectiveDateTime"]
    assert "note" not in out
