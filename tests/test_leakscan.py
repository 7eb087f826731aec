"""The leak scan: finds identifiers (also written evasively) and canaries, knows code systems, reports masked."""

from __future__ import annotations

import json

import pytest

from deid.ruleset import default_ruleset_path
from hub.demo.generator import canary
from hub.fhir.jsonio import dumps
from hub.leakscan import NO_EXEMPTIONS, Scanner, load_scan_policy, scan_files, scan_text
from hub.yamlio import ConfigError

NDC = "http://hl7.org/fhir/sid/ndc"
LOINC = "http://loinc.org"
DRUG = "13800138000"  # an 11-digit NDC (5-4-2 without dashes) that is also shaped like a mobile number
POLICY = load_scan_policy(default_ruleset_path())


def _medication(system: str, code: str, **extra) -> str:
    return dumps({"resourceType": "MedicationRequest", "id": "f" * 32, "status": "active", "intent": "order",
                  "medicationCodeableConcept": {"coding": [{"system": system, "code": code}]}, **extra})


def _scan(*resources: str, canaries=frozenset(), policy=POLICY):
    return Scanner(canaries, policy).columns({"resource": list(resources)}, "research.medicationrequest",
                                            ids=[f"r{i}" for i in range(len(resources))])


def test_finds_ids_phones_and_canaries_masked():
    hits = scan_text('{"note":"金丝雀 110101199003074610 13800138000"}', "t", frozenset({"金丝雀"}))
    assert sorted(h.kind for h in hits) == ["canary", "mobile", "resident-id"]
    assert all("110101199003074610" not in str(h) and "13800138000" not in str(h) and "金丝雀" not in str(h) for h in hits)


def test_pseudonyms_and_hashes_are_not_phone_numbers_but_a_tel_prefix_is():
    pseudonym = "ab13812345678cd0e1f2a3b4c5d6e7f8"  # 32 hex characters, as hub's keyed pseudonyms are
    assert scan_text(json.dumps({"id": pseudonym, "patient": pseudonym}), "t") == []
    assert [h.kind for h in scan_text('{"note":"tel13812345678"}', "t")] == ["mobile"]


@pytest.mark.parametrize("written", [
    "138 0013 8000", "138-0013-8000", "+86 138 0013 8000", "１３８００１３８０００", "tel:13800138000",
    "110101 19900307 4610", "SFZ110101199003074610",
])
def test_evasive_forms_in_any_leaf_are_blocked_and_located(written):
    result = _scan(dumps({"resourceType": "Observation", "id": "a" * 32, "status": "final",
                          "code": {"coding": [{"system": LOINC, "code": "4548-4"}]}, "note": [{"text": f"回电 {written}"}]}))
    assert len(result.hits) == 1
    assert result.hits[0].path == "Observation.note[0].text"
    assert written not in str(result.hits[0]) and "[id=r0]" in result.hits[0].where


def test_a_json_escape_does_not_hide_digits():
    escaped = '{"resourceType":"Observation","valueString":"' + "".join(f"\\u{ord(c):04x}" for c in "13800138000") + '"}'
    assert [h.kind for h in _scan(escaped).hits] == ["mobile"]


def test_ndc_code_under_the_ndc_system_passes_and_is_reported_as_exempted():
    result = _scan(_medication(NDC, DRUG), _medication(NDC, "13800-1380-00"))
    assert result.hits == []
    assert result.exemptions() == {NDC: {"mobile": 2}}


def test_the_same_number_in_a_value_string_is_blocked_even_beside_an_exempt_code():
    result = _scan(_medication(NDC, DRUG, note=[{"text": DRUG}]))
    assert [(h.kind, h.path) for h in result.hits] == [("mobile", "MedicationRequest.note[0].text")]
    assert result.exemptions() == {NDC: {"mobile": 1}}


@pytest.mark.parametrize("system", [LOINC, "http://hl7.org/fhir/sid/ndc-typo", "urn:hub:vendor-b:drug"])
def test_a_mobile_in_a_coding_code_under_another_system_is_blocked(system):
    result = _scan(_medication(system, DRUG))
    assert [(h.kind, h.path) for h in result.hits] == [("mobile", "MedicationRequest.medicationCodeableConcept.coding[0].code")]
    assert result.exemptions() == {}


def test_a_code_that_is_not_ndc_shaped_is_not_exempt_under_ndc():
    for code in ("tel13800138000", "13800138000 call", "138 0013 8000"):
        assert [h.kind for h in _scan(_medication(NDC, code)).hits] == ["mobile"], code


def test_a_quantity_under_the_ndc_system_is_not_a_coding():
    text = dumps({"resourceType": "Observation", "id": "a" * 32, "valueQuantity": {"value": 1, "system": NDC, "code": DRUG}})
    assert [h.kind for h in _scan(text).hits] == ["mobile"]


def test_canary_values_are_never_exempt():
    phone = canary().phone
    assert _scan(_medication(NDC, phone)).hits == []  # shaped like an NDC code: exempt ...
    result = _scan(_medication(NDC, phone), canaries=frozenset({phone}))
    assert [h.kind for h in result.hits] == ["canary"]  # ... unless it is a planted identity
    assert result.exemptions() == {} and phone not in str(result.hits[0])


def test_exemption_covers_only_the_patterns_named(tmp_path):
    policy = _policy(tmp_path, "leak_scan:\n  exempt_code_systems:\n    - {system: 'urn:hub:local-item', patterns: [mobile]}\n")
    mobile, resident_id = _medication("urn:hub:local-item", DRUG), _medication("urn:hub:local-item", "110101199003074610")
    assert _scan(mobile, policy=policy).hits == []
    assert [h.kind for h in _scan(resident_id, policy=policy).hits] == ["resident-id"]
    assert [h.kind for h in _scan(mobile, policy=NO_EXEMPTIONS).hits] == ["mobile"]


def test_system_code_tokens_and_declared_code_columns_follow_the_policy():
    scanner = Scanner(policy=POLICY)
    tokens = scanner.columns({"code": [f"{NDC}|{DRUG}", f"{LOINC}|{DRUG}"]}, "t")
    assert [h.where for h in tokens.hits] == ["t.code[row 1]"] and tokens.exemptions() == {NDC: {"mobile": 1}}
    columns = scanner.columns({"ndc": [DRUG], "loinc": [DRUG], "other": [DRUG]}, "f", code_columns={"ndc": NDC, "loinc": LOINC})
    assert sorted(h.where for h in columns.hits) == ["f.loinc[row 0]", "f.other[row 0]"]


def test_numbers_in_numeric_columns_are_scanned(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"patient": ["a" * 32], "value": pa.array([13800138000], pa.int64())}), tmp_path / "f.parquet")
    assert [h.kind for h in scan_files([tmp_path / "f.parquet"])] == ["mobile"]


def test_demo_publication_is_clean_and_canary_is_planted(demo):
    region, _, _ = demo
    canaries = frozenset(json.loads((region.workspace / "canary.json").read_text(encoding="utf-8"))["values"])
    assert canary().id_number in canaries and len(canaries) >= 6  # name, ID, phone, address and an MRN per institution
    assert scan_files(sorted(region.warehouse.rglob("*.parquet")), canaries, POLICY) == []


def test_the_default_ruleset_declares_ndc():
    assert POLICY.as_dict()[NDC]["patterns"] == ["landline", "mobile"]


# ---- the leak_scan section: validated, errors name file, line and field -----------------

def _policy(tmp_path, text: str):
    path = tmp_path / "rules.yaml"
    path.write_text("ruleset: t\nversion: '1'\nrules: []\n" + text, encoding="utf-8")
    return load_scan_policy(path)


@pytest.mark.parametrize(("section", "line", "field", "problem"), [
    ("leak_scan:\n  exempt: []\n", 5, "leak_scan.exempt", "is not a leak_scan setting"),
    ("leak_scan:\n  exempt_code_systems:\n    - {system: ndc, patterns: [mobile]}\n", 6,
     "leak_scan.exempt_code_systems[0].system", "is not a code system URI"),
    ("leak_scan:\n  exempt_code_systems:\n    - system: http://x.org/a\n      patterns: [canary]\n", 7,
     "leak_scan.exempt_code_systems[0].patterns", "names no exemptable pattern"),
    ("leak_scan:\n  exempt_code_systems:\n    - system: http://x.org/a\n      patterns: [mobile]\n      format: '(['\n", 8,
     "leak_scan.exempt_code_systems[0].format", "is not a regular expression"),
    ("leak_scan:\n  exempt_code_systems:\n    - {system: 'http://x.org/a', patterns: [mobile]}\n"
     "    - {system: 'http://x.org/a', patterns: [landline]}\n", 7, "leak_scan.exempt_code_systems[1].system", "declared twice"),
    ("leak_scan:\n  exempt_code_systems:\n    - {system: 'http://x.org/a', patterns: [mobile], why: x}\n", 6,
     "leak_scan.exempt_code_systems[0].why", "is not a setting of an exemption"),
])
def test_a_bad_leak_scan_section_names_file_line_and_field(tmp_path, section, line, field, problem):
    with pytest.raises(ConfigError) as exc:
        _policy(tmp_path, section)
    assert (exc.value.file, exc.value.line, exc.value.field) == (str(tmp_path / "rules.yaml"), line, field)
    assert problem in exc.value.problem


def test_no_leak_scan_section_means_no_exemptions(tmp_path):
    assert _policy(tmp_path, "").exemptions == {}


# ---- property: an identifier planted in any leaf, in any form, is found there -------------

_FORMS = {
    "mobile": ["{m}", "{m1} {m2} {m3}", "{m1}-{m2}-{m3}", "+86{m}", "tel{m}", "{fw}"],
    "resident-id": ["{i}", "{i1} {i2} {i3}", "SFZ{i}"],
}


def _plant_tree():
    from hypothesis import strategies as st

    key = st.sampled_from(["text", "display", "valueString", "note", "comment", "line", "family", "given", "div"])
    leaf = st.text(alphabet="abcdefgh 血糖正常ＡＢ.,:/", max_size=12)
    return st.recursive(leaf, lambda inner: st.dictionaries(key, inner, min_size=1, max_size=3) | st.lists(inner, min_size=1, max_size=3),
                        max_leaves=8)


def _leaf_paths(node, path):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaf_paths(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaf_paths(v, f"{path}[{i}]")
    else:
        yield path


def _set(node, path, value, root):
    import re as _re

    parts = _re.findall(r"\.([A-Za-z]+)|\[(\d+)\]", path[len(root):])
    for key, index in parts[:-1]:
        node = node[key] if key else node[int(index)]
    key, index = parts[-1]
    if key:
        node[key] = f"{node[key]} {value} "
    else:
        node[int(index)] = f"{node[int(index)]} {value} "


def test_an_identifier_planted_in_any_leaf_in_any_form_is_found_at_that_leaf():
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(tree=_plant_tree(), kind=st.sampled_from(sorted(_FORMS)), form=st.integers(0, 5), pick=st.integers(0, 50),
           system=st.sampled_from([NDC, LOINC]))
    def check(tree, kind, form, pick, system):
        mobile, resident_id = DRUG, "110101199003074610"
        written = _FORMS[kind][form % len(_FORMS[kind])].format(
            m=mobile, m1=mobile[:3], m2=mobile[3:7], m3=mobile[7:], i=resident_id, i1=resident_id[:6], i2=resident_id[6:14],
            i3=resident_id[14:], fw=mobile.translate(str.maketrans("0123456789", "０１２３４５６７８９")))
        doc = {"resourceType": "Observation", "id": "a" * 32, "code": {"coding": [{"system": system, "code": DRUG}]},
               "extension": [{"url": "http://x.org/e", "valueString": "x"}], "contained": [tree]}
        leaves = [p for p in _leaf_paths(doc, "Observation") if ".code.coding" not in p and not p.endswith((".id", ".url", ".resourceType"))]
        target = leaves[pick % len(leaves)]
        _set(doc, target, written, "Observation")
        result = _scan(json.dumps(doc, ensure_ascii=False))
        blocking = [h for h in result.hits if h.path == target]
        assert [h.kind for h in blocking] == [kind], (target, written)
        assert written not in str(result.hits) and mobile not in str(result.hits)
        # the coding's own code is exempt under NDC only
        assert [h.path for h in result.hits if h.path != target] == ([] if system == NDC else ["Observation.code.coding[0].code"])

    check()
