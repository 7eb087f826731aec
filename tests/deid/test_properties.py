"""Property tests: identifiers never survive, output is a function of input and key, keys unlink, one shift per patient."""

from __future__ import annotations

import datetime as dt
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deid.actions import shift_days
from deid.engine import Deidentifier, patient_pseudonym
from deid.keys import Keyring
from deid.ruleset import default_ruleset_path, load_ruleset
from hub.fhir.jsonio import dumps
from hub.identifiers import resident_id_check_char

RECOGNITION = load_ruleset(default_ruleset_path(), "recognition")
RESEARCH = load_ruleset(default_ruleset_path(), "research")
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

hanzi = st.text(alphabet=st.characters(min_codepoint=0x4E00, max_codepoint=0x9FA5), min_size=2, max_size=4)
birth = st.dates(min_value=dt.date(1920, 1, 1), max_value=dt.date(2020, 12, 31))


@st.composite
def resident_ids(draw):
    region = draw(st.sampled_from(["110101", "330106", "340104", "440305"]))
    day = draw(birth)
    seq = draw(st.integers(0, 999))
    first17 = f"{region}{day:%Y%m%d}{seq:03d}"
    return first17 + resident_id_check_char(first17)


@st.composite
def patients(draw):
    id_number = draw(resident_ids())
    return {
        "resourceType": "Patient", "id": draw(st.text(alphabet="0123456789abcdef", min_size=32, max_size=32)),
        "identifier": [
            {"system": "urn:oid:2.16.156.10011.1.3", "value": id_number},
            {"system": "urn:hub:h1:mrn", "value": "M" + str(draw(st.integers(10_000, 9_999_999)))},
        ],
        "name": [{"text": draw(hanzi)}],
        "telecom": [{"system": "phone", "value": "1" + str(draw(st.integers(3, 9))) + str(draw(st.integers(100_000_000, 999_999_999)))}],
        "address": [{"text": "浙江省杭州市" + draw(hanzi) + "路" + str(draw(st.integers(1, 999))) + "号"}],
        "gender": draw(st.sampled_from(["male", "female", "unknown"])),
        "birthDate": draw(birth).isoformat(),
        "maritalStatus": {"text": draw(hanzi)},
    }


def direct_identifiers(p: dict) -> list[str]:
    return [i["value"] for i in p["identifier"]] + [p["name"][0]["text"], p["telecom"][0]["value"], p["address"][0]["text"]]


@SETTINGS
@given(patients())
def test_no_direct_identifier_survives_either_zone(patient):
    keys = Keyring(bytes(range(32)))
    engine = Deidentifier(RECOGNITION, keys)  # as the pipeline does: the record's own values are known
    recognition = engine.apply(patient, known_names=engine.identifying_values(patient))
    research = Deidentifier(RESEARCH, keys).apply(recognition, patient=patient_pseudonym(recognition))
    for out in (recognition, research):
        text = json.dumps(out, ensure_ascii=False)
        for value in direct_identifiers(patient):
            assert value not in text


@SETTINGS
@given(patients())
def test_same_input_and_key_give_the_same_output(patient):
    a = Deidentifier(RECOGNITION, Keyring(bytes(range(32)))).apply(patient)
    b = Deidentifier(RECOGNITION, Keyring(bytes(range(32)))).apply(patient)
    assert dumps(a) == dumps(b)


@SETTINGS
@given(patients(), st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_different_keys_give_unlinkable_pseudonyms(patient, k1, k2):
    if k1 == k2:
        return
    one = Deidentifier(RECOGNITION, Keyring(k1)).apply(patient)
    two = Deidentifier(RECOGNITION, Keyring(k2)).apply(patient)
    pseudonyms_one = {i["value"] for i in one["identifier"]}
    assert pseudonyms_one.isdisjoint(i["value"] for i in two["identifier"])
    assert not any(p in dumps(two) for p in pseudonyms_one)


@SETTINGS
@given(
    st.text(alphabet="0123456789abcdef", min_size=32, max_size=32),
    st.lists(st.datetimes(min_value=dt.datetime(2015, 1, 1), max_value=dt.datetime(2030, 1, 1)), min_size=2, max_size=8),
)
def test_one_patients_resources_share_one_date_shift(patient, times):
    keys = Keyring(bytes(range(32)))
    deid = Deidentifier(RESEARCH, keys)
    tz = dt.timezone(dt.timedelta(hours=8))
    shifts = set()
    for n, t in enumerate(times):
        original = t.replace(microsecond=0, tzinfo=tz)
        obs = {"resourceType": "Observation", "id": f"o{n}", "status": "final", "code": {"text": "x"},
               "subject": {"reference": f"Patient/{patient}"}, "effectiveDateTime": original.isoformat()}
        out = deid.apply(obs, patient=patient)
        shifts.add((dt.datetime.fromisoformat(out["effectiveDateTime"]) - original).days)
    assert shifts == {shift_days(keys, patient, 50)}
    assert 0 < abs(next(iter(shifts))) <= 50
