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
        "communication": [{"language": {"text": "汉语"}}],
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
    assert "communication" not in out
    assert deid.stats.uncovered["Patient.communication"] == 1
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


# ---- leaf-level decisions by datatype -------------------------------------------------------

SPACED_ID = "110101 19900307 4610"  # a valid resident ID number written with spaces


def observation(**extra) -> dict:
    return {
        "resourceType": "Observation", "id": "o1", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4", "display": "HbA1c 电话13800138000"}], "text": "糖化血红蛋白"},
        "subject": {"reference": "Patient/p1", "display": "张伟"},
        **extra,
    }


def test_strings_under_a_kept_element_are_scrubbed_or_redacted_but_codes_kept(deid):
    # the example: a name in subject.display, a mobile in coding.display, a spaced ID in valueString
    out = deid.apply(observation(valueString=f"身份证 {SPACED_ID}"))
    assert out["subject"] == {"reference": "Patient/p1"}  # Reference.display redacted
    coding = out["code"]["coding"][0]
    assert (coding["system"], coding["code"]) == ("http://loinc.org", "4548-4")  # coded leaves follow keep
    assert "13800138000" not in coding["display"] and coding["display"].startswith("HbA1c")  # scrubbed, not dropped
    assert out["code"]["text"] == "糖化血红蛋白"
    assert "4610" not in out["valueString"] and out["valueString"].startswith("身份证")
    assert deid.stats.redacted["Observation.subject.display"] == 1


def test_a_rule_on_value_x_does_not_name_value_string_but_an_exact_rule_does(tmp_path, keys):
    def run(paths: str) -> dict:
        f = tmp_path / "r.yaml"
        f.write_text(
            "ruleset: t\nversion: '1'\nstrings: {policy: {string: {recognition: redact}}}\nrules:\n"
            f"  - {{element: t.v, category: health status, level: 3, paths: [{paths}], action: {{recognition: keep}}}}\n",
            encoding="utf-8",
        )
        return Deidentifier(load_ruleset(f, "recognition"), keys).apply({"resourceType": "Observation", "valueString": "阴性"})

    assert "valueString" not in run('"Observation.value[x]"')  # redacted by the strings policy
    assert run("Observation.valueString")["valueString"] == "阴性"  # a rule names the exact leaf


def test_an_identifier_nested_in_a_kept_reference_loses_its_value(deid):
    obs = observation()
    obs["subject"]["identifier"] = {"system": ID_SYSTEM, "value": "110101199003074610"}
    out = deid.apply(obs)
    assert out["subject"] == {"reference": "Patient/p1"}  # the reference follows the rule naming subject
    assert deid.stats.dropped_by_rule["Observation.subject.identifier"] == 1


def test_a_reference_nested_in_a_kept_element_is_dropped_whole(deid):
    specimen = {"resourceType": "Specimen", "id": "s1", "collection": {
        "collectedDateTime": "2024-03-05T09:00:00+08:00", "collector": {"reference": "Practitioner/13800138000", "display": "张伟"}}}
    out = deid.apply(specimen)
    assert out["collection"] == {"collectedDateTime": "2024-03-05T09:00:00+08:00"}


def test_research_pseudonymizes_a_nested_identifier_instead_of_keeping_it(keys):
    research = Deidentifier(load_ruleset(default_ruleset_path(), "research"), keys)
    obs = observation(effectiveDateTime="2024-03-05T09:00:00+08:00")
    obs["subject"]["identifier"] = {"system": ID_SYSTEM, "value": "110101199003074610"}
    out = research.apply(obs, patient="pp")
    assert "110101199003074610" not in repr(out) and out["subject"]["identifier"]["system"] == PSEUDONYM_SYSTEM + "research-id"
    assert out["subject"]["reference"].startswith("Patient/") and out["subject"]["reference"] != "Patient/p1"


def test_known_values_of_the_record_are_scrubbed_from_kept_strings(deid):
    out = deid.apply(observation(valueString="患者 张 伟 复查"), known_names=("张伟", "M0000001"))
    assert "张" not in out["valueString"] and out["valueString"].startswith("患者")


def test_a_ruleset_without_a_strings_section_publishes_no_free_text(tmp_path, keys):
    f = tmp_path / "r.yaml"
    f.write_text("ruleset: t\nversion: '1'\nrules:\n"
                 "  - {element: t.code, category: health status, level: 2, paths: [Observation.code], action: {recognition: keep}}\n",
                 encoding="utf-8")
    out = Deidentifier(load_ruleset(f, "recognition"), keys).apply(observation())
    assert out["code"] == {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]}


# ---- modifier extensions ---------------------------------------------------------------------

def test_an_unknown_modifier_extension_is_refused_naming_path_and_url(deid):
    from deid.engine import UnknownModifierExtension

    url = "http://example.org/fhir/StructureDefinition/not-performed"
    with pytest.raises(UnknownModifierExtension) as exc:
        deid.apply(observation(modifierExtension=[{"url": url, "valueBoolean": True}]))
    assert exc.value.path == "Observation.modifierExtension" and exc.value.url == url
    assert url in str(exc.value)


def test_a_modifier_extension_inside_a_dropped_element_is_refused_too(deid):
    from deid.engine import UnknownModifierExtension

    rx = {"resourceType": "MedicationRequest", "id": "m1", "status": "active", "intent": "order",
          "substitution": {"allowedBoolean": True, "modifierExtension": [{"url": "urn:x:never", "valueBoolean": True}]}}
    with pytest.raises(UnknownModifierExtension) as exc:  # substitution is uncovered, but its meaning is changed
        deid.apply(rx)
    assert exc.value.path == "MedicationRequest.substitution.modifierExtension"


def test_a_modifier_extension_a_rule_names_by_url_is_published(tmp_path, keys):
    f = tmp_path / "r.yaml"
    f.write_text(
        "ruleset: t\nversion: '1'\nrules:\n"
        "  - {element: t.mod, category: medical application, level: 2, action: {recognition: keep},\n"
        "     paths: ['Observation.modifierExtension(url=urn:hub:ext:retracted)']}\n",
        encoding="utf-8",
    )
    deid = Deidentifier(load_ruleset(f, "recognition"), keys)
    out = deid.apply({"resourceType": "Observation", "modifierExtension": [{"url": "urn:hub:ext:retracted", "valueBoolean": True}]})
    assert out["modifierExtension"] == [{"url": "urn:hub:ext:retracted", "valueBoolean": True}]


# ---- identifying values ----------------------------------------------------------------------

def test_identifying_values_are_the_strings_under_personal_attribute_rules(deid):
    p = patient("110101199003074610", "M0000001")
    p["name"] = [{"family": "张", "given": ["伟"], "text": "张伟"}]
    values = deid.identifying_values(p)
    assert set(values) == {"110101199003074610", "M0000001", "张", "伟", "张伟", "13800138000", "浙江省杭州市西湖区文三路1号"}
    assert deid.identifying_values(observation()) == ()  # no identifying rule for Observation: nothing walked
