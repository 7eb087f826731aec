"""Property: identifiers planted in every human-readable leaf of every published resource type,
written in every evasive form, survive in neither zone.

Each published type has a template in the shape the shipped mappings produce (the mapped demo
resources under tests/data/deid/input), plus the string leaves an attacker or a careless
source would fill: ``code.text``, ``coding.display``, ``Reference.display``, ``valueString``,
``note.text``, ``unit``, ``dosageInstruction.text``... Every leaf whose FHIR datatype is
human-readable (found from the models, not listed by hand) gets an identifier in one of the
forms of issue 10: plain, spaced, dashed, full-width digits, a letter prefix, 15-digit IDs,
+86 mobiles with separators, landlines, and the record's own name, MRN and address (passed
as the record's known values, as hub.prepare does). The output is checked twice: with
hub.identifiers.find_identifiers, and independently by folding every output string (NFKC,
separators removed) and looking for the planted digits and names.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import unicodedata

import phonenumbers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deid.datatypes import elements
from deid.engine import Deidentifier, patient_pseudonym
from deid.keys import Keyring
from deid.ruleset import default_ruleset_path, load_ruleset
from hub.fhir.jsonio import dumps, loads
from hub.fhir.validate import RESOURCE_MODULES, model_for
from hub.identifiers import find_identifiers, resident_id_check_char
from tests.deid.golden import FOLDER

KEYS = Keyring(bytes(range(32)))
RECOGNITION = Deidentifier(load_ruleset(default_ruleset_path(), "recognition"), KEYS)
RESEARCH = Deidentifier(load_ruleset(default_ruleset_path(), "research"), KEYS)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
S = "S"  # a template's human-readable leaf, replaced by planted text
PATIENT_REF = {"reference": "Patient/a0b2c529bdb1672bbd5cb2b3b1dc19ba", "display": S}
CODEABLE = {"coding": [{"system": "urn:hub:test", "code": "C1", "display": S}], "text": S}


def _demo(stem: str, **extra) -> dict:
    resource = loads((FOLDER / "input" / f"{stem}.json").read_text(encoding="utf-8"))
    resource.update(extra)
    return resource


TEMPLATES: dict[str, dict] = {
    "Organization": {
        "resourceType": "Organization", "id": "a2003697157dc094e7d39b1a1335fc80", "active": True,
        "identifier": [{"system": "urn:oid:2.16.156.10011.1.5", "value": "47000001-3"}],
        "name": S, "type": [CODEABLE], "address": [{"text": S, "line": [S], "city": S}],
        "telecom": [{"system": "phone", "value": S}],
    },
    "Patient": _demo("patient", name=[{"text": S, "family": S, "given": [S]}], maritalStatus=CODEABLE,
                     managingOrganization={"reference": "Organization/a2003697157dc094e7d39b1a1335fc80", "display": S},
                     contact=[{"name": {"text": S}, "telecom": [{"system": "phone", "value": S}]}],
                     text={"status": "generated", "div": S}),
    "Encounter": _demo("encounter", **{"class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP", "display": S}},
                       serviceType=CODEABLE, type=[CODEABLE], subject=PATIENT_REF, reasonCode=[CODEABLE],
                       serviceProvider={"reference": "Organization/a2003697157dc094e7d39b1a1335fc80", "display": S}),
    "Condition": {
        "resourceType": "Condition", "id": "c1", "clinicalStatus": CODEABLE, "verificationStatus": CODEABLE,
        "category": [CODEABLE], "code": CODEABLE, "subject": PATIENT_REF, "recordedDate": "2024-03-06T09:20:00+08:00",
        "encounter": {"reference": "Encounter/59a737ec2f3fe05ba29d594f1f9b42b8", "display": S},
        "note": [{"text": S, "authorString": S}],
    },
    "MedicationRequest": _demo(
        "medicationrequest", medicationCodeableConcept=CODEABLE, subject=PATIENT_REF, note=[{"text": S}],
        dosageInstruction=[{"text": S, "patientInstruction": S, "timing": {"code": CODEABLE}, "route": CODEABLE,
                            "doseAndRate": [{"doseQuantity": {"value": 10, "unit": S}}]}],
        dispenseRequest={"expectedSupplyDuration": {"value": 7, "unit": S, "system": "http://unitsofmeasure.org", "code": "d"}},
    ),
    "ServiceRequest": {
        "resourceType": "ServiceRequest", "id": "s1", "status": "completed", "intent": "order",
        "identifier": [{"system": "urn:hub:h1:lab-order", "value": "1000"}], "category": [CODEABLE], "code": CODEABLE,
        "subject": PATIENT_REF, "requester": {"reference": "Practitioner/x", "display": S},
        "authoredOn": "2024-03-05T08:00:00+08:00", "note": [{"text": S}], "patientInstruction": S,
    },
    "Specimen": {
        "resourceType": "Specimen", "id": "sp1", "status": "available", "type": CODEABLE, "subject": PATIENT_REF,
        "identifier": [{"system": "urn:hub:h1:specimen-barcode", "value": "000000000500"}],
        "request": [{"reference": "ServiceRequest/s1", "display": S}], "receivedTime": "2024-03-05T09:30:00+08:00",
        "collection": {"collectedDateTime": "2024-03-05T09:00:00+08:00", "collector": {"reference": "Practitioner/x", "display": S},
                       "quantity": {"value": 2, "unit": S}, "method": CODEABLE},
        "note": [{"text": S}],
    },
    "DiagnosticReport": {
        "resourceType": "DiagnosticReport", "id": "d1", "status": "final", "category": [CODEABLE], "code": CODEABLE,
        "identifier": [{"system": "urn:hub:h1:lab-report", "value": "1000"}], "subject": PATIENT_REF,
        "effectiveDateTime": "2024-03-05T09:00:00+08:00", "issued": "2024-03-05T11:00:00+08:00",
        "performer": [{"reference": "Organization/a2003697157dc094e7d39b1a1335fc80", "display": S}],
        "result": [{"reference": "Observation/o1", "display": S}], "conclusion": S, "conclusionCode": [CODEABLE],
    },
    "Observation": _demo(
        "observation", code=CODEABLE, subject=PATIENT_REF, interpretation=[CODEABLE], method=CODEABLE,
        referenceRange=[{"low": {"value": 4.0, "unit": S}, "high": {"value": 6.0, "unit": S}, "text": S}],
        note=[{"text": S}], performer=[{"reference": "Organization/a2003697157dc094e7d39b1a1335fc80", "display": S}],
        component=[{"code": CODEABLE, "valueString": S}], extension=[{"url": "urn:x", "valueString": S}],
    ),
}
# Observation results are quantities, texts or codes: each shape gets its own template.
TEMPLATES["Observation.valueString"] = {**{k: v for k, v in TEMPLATES["Observation"].items() if k != "valueQuantity"}, "valueString": S}
TEMPLATES["Observation.valueCodeableConcept"] = {
    **{k: v for k, v in TEMPLATES["Observation"].items() if k != "valueQuantity"}, "valueCodeableConcept": CODEABLE,
}
TEMPLATES["Observation"]["valueQuantity"] = {"value": 7.5, "unit": S, "system": "http://unitsofmeasure.org", "code": "%"}


def _slots(node, model) -> int:
    """How many human-readable leaves a template has, by FHIR datatype."""
    count = 0
    for key, value in node.items():
        etype = elements(model).get(key)
        if etype is None:
            continue
        for item in value if isinstance(value, list) else [value]:
            if etype.kind == "complex" and isinstance(item, dict):
                count += _slots(item, etype.model)
            elif etype.human_readable and item == S:
                count += 1
    return count


def _fill(node, model, texts: list[str]):
    for key, value in node.items():
        etype = elements(model).get(key)
        if etype is None:
            continue
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if etype.kind == "complex" and isinstance(item, dict):
                _fill(item, etype.model, texts)
            elif etype.human_readable and item == S:
                if isinstance(value, list):
                    value[i] = texts.pop()
                else:
                    node[key] = texts.pop()


# ---- identifiers and their forms ----------------------------------------------------------------

FULL_WIDTH = str.maketrans("0123456789", "０１２３４５６７８９")
REGIONS = ["110101", "330106", "340104", "440305", "310115"]


def _grouped(draw, digits: str, seps: list[str]) -> str:
    cuts = sorted(draw(st.sets(st.integers(1, len(digits) - 1), max_size=4)))
    sep = draw(st.sampled_from(seps))
    parts = [digits[a:b] for a, b in zip([0, *cuts], [*cuts, len(digits)], strict=True)]
    return sep.join(parts)


@st.composite
def number_form(draw, digits: str, prefixes: list[str]) -> str:
    form = draw(st.sampled_from(["plain", "spaced", "dashed", "full-width", "prefix", "full-width spaced"]))
    if form == "spaced":
        return _grouped(draw, digits, [" ", "  ", "\u3000"])
    if form == "dashed":
        return _grouped(draw, digits, ["-", "–", "_", "/"])
    if form == "full-width":
        return digits.translate(FULL_WIDTH)
    if form == "prefix":
        return draw(st.sampled_from(prefixes)) + digits
    if form == "full-width spaced":
        return _grouped(draw, digits, [" "]).translate(FULL_WIDTH)
    return digits


@st.composite
def resident_id(draw) -> tuple[str, str]:
    """(planted text, digits that must not survive)."""
    born = draw(st.dates(dt.date(1930, 1, 1), dt.date(2015, 12, 31)))
    region, seq = draw(st.sampled_from(REGIONS)), draw(st.integers(0, 999))
    if draw(st.booleans()):
        first17 = f"{region}{born:%Y%m%d}{seq:03d}"
        digits = first17 + resident_id_check_char(first17)
        digits = digits.lower() if digits.endswith("X") and draw(st.booleans()) else digits
    else:  # a 15-digit ID (before 1999): two-digit year, no check character
        digits = f"{region}{born:%y%m%d}{seq:03d}"
    return draw(number_form(digits, ["SFZ", "sfz:", "身份证", "ID", "No."])), digits


@st.composite
def mobile(draw) -> tuple[str, str]:
    digits = "1" + str(draw(st.integers(3, 9))) + f"{draw(st.integers(0, 999_999_999)):09d}"
    head = draw(st.sampled_from(["", "+86", "+86 ", "0086", "(+86)", "+86-"]))
    body = draw(number_form(digits, ["tel", "Tel:", "电话", "手机", "mobile"]))
    return head + body, digits


def _real_landline(area: str, local: str) -> bool:
    """A number in a range the numbering plan assigns (libphonenumber's metadata)."""
    return phonenumbers.is_valid_number(phonenumbers.PhoneNumber(country_code=86, national_number=int(area[1:] + local)))


@st.composite
def landline(draw) -> tuple[str, str]:
    area = draw(st.sampled_from(["010", "021", "0571", "0551", "0755"]))
    local = draw(st.integers(20_000_000, 89_999_999).map(str).filter(lambda n: _real_landline(area, n)))
    written = draw(st.sampled_from([f"{area}-{local}", f"({area}) {local[:4]} {local[4:]}", f"{area} {local}",
                                    f"+86 {area[1:]} {local[:4]} {local[4:]}", f"{area}{local}", f"tel:{area}-{local}"]))
    return written, local


# names are not written with the characters of Chinese numerals (they read as digits when folded)
hanzi = st.text(alphabet=st.characters(min_codepoint=0x4E00, max_codepoint=0x9FA5, exclude_characters="〇一二三四五六七八九十百千万亿零壹贰叁肆伍陆柒捌玖拾佰仟两"),
                min_size=2, max_size=3)


@st.composite
def person(draw) -> dict:
    first17 = f"{draw(st.sampled_from(REGIONS))}{draw(st.dates(dt.date(1930, 1, 1), dt.date(2015, 12, 31))):%Y%m%d}{draw(st.integers(0, 999)):03d}"
    return {
        "name": draw(hanzi), "mrn": f"M{draw(st.integers(1_000_000, 9_999_999))}",
        "address": "浙江省杭州市" + draw(hanzi) + "路" + str(draw(st.integers(1, 999))) + "号",
        "id": first17 + resident_id_check_char(first17),
    }


@st.composite
def planted_resource(draw) -> tuple[str, dict, tuple[str, ...], list[str]]:
    """(template name, resource with every human-readable leaf planted, known values, secrets)."""
    name = draw(st.sampled_from(sorted(TEMPLATES)))
    resource = loads(dumps(TEMPLATES[name]))  # no shared sub-dicts: every leaf is planted
    who = draw(person())
    known = (who["name"], who["mrn"], who["address"], who["id"])
    texts, secrets = [], []
    for _ in range(_slots(resource, model_for(resource["resourceType"]))):
        kind = draw(st.sampled_from(["id", "mobile", "landline", "name", "spaced name", "mrn", "address"]))
        if kind == "id":
            text, secret = draw(resident_id())
        elif kind == "mobile":
            text, secret = draw(mobile())
        elif kind == "landline":
            text, secret = draw(landline())
        elif kind == "name":
            text, secret = who["name"], who["name"]
        elif kind == "spaced name":
            text, secret = " ".join(who["name"]), who["name"]
        elif kind == "mrn":
            text = draw(st.sampled_from(["", "病案号", "MRN:"])) + "M" + draw(number_form(who["mrn"][1:], [""]))
            secret = who["mrn"]
        else:
            text, secret = who["address"], who["address"]
        context = draw(st.sampled_from(["{}", "患者{}复查", "结果: {} 已通知", "{}。"]))
        texts.append(context.format(text))
        secrets.append(secret)
    _fill(resource, model_for(resource["resourceType"]), texts)
    assert not texts
    return name, resource, known, secrets


def _strings(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)
    elif isinstance(node, str):
        yield node


def _fold(text: str) -> str:
    return re.sub(r"[\W_]+", "", unicodedata.normalize("NFKC", text)).lower()


def _assert_nothing_survives(out: dict, known: tuple[str, ...], secrets: list[str], where: str) -> None:
    doc = dumps(out)
    hits = find_identifiers(doc, known=known, document=True)
    assert hits == [], f"{where}: {[(h.kind) for h in hits]} in {doc}"
    for text in _strings(out):
        folded = _fold(text)
        for secret in secrets:
            assert _fold(secret) not in folded, f"{where}: a planted value survives in {text!r}"


def _zones(resource: dict, known: tuple[str, ...]) -> tuple[dict, dict]:
    recognition = RECOGNITION.apply(resource, known_names=known)
    patient = patient_pseudonym(recognition) if resource["resourceType"] == "Patient" else "patient-pseudonym"
    research = RESEARCH.apply(json.loads(dumps(recognition)), patient=patient)
    return recognition, research


def test_every_published_type_has_a_template_with_planted_leaves():
    assert {t["resourceType"] for t in TEMPLATES.values()} == set(RESOURCE_MODULES)
    for name, template in TEMPLATES.items():
        assert _slots(template, model_for(template["resourceType"])) >= 3, name


@SETTINGS
@given(planted_resource())
def test_no_planted_identifier_survives_either_zone(case):
    name, resource, known, secrets = case
    recognition, research = _zones(resource, known)
    _assert_nothing_survives(recognition, known, secrets, f"recognition {name}")
    _assert_nothing_survives(research, known, secrets, f"research {name}")


def test_clinical_content_survives_planting(keys):
    """The property is not met by dropping everything: codes, values, units and texts stay."""
    resource = loads(dumps(TEMPLATES["Observation"]))
    _fill(resource, model_for("Observation"), ["%"] * _slots(resource, model_for("Observation")))
    out = RECOGNITION.apply(resource)
    assert out["code"]["coding"][0]["code"] == "C1" and out["code"]["text"] == "%"
    assert out["valueQuantity"] == {"value": resource["valueQuantity"]["value"], "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}
    assert out["referenceRange"][0]["text"] == "%" and out["interpretation"][0]["coding"][0]["display"] == "%"
