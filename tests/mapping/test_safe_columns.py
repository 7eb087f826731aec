"""Reasons, row labels and the unmapped-codes summary show source values only from declared
safe columns, and even then never anything identifying; `safe_columns` is validated on load."""

from __future__ import annotations

import shutil

import pytest

from hub.demo.generator import canary
from hub.identifiers import find_identifiers
from hub.mapping.compile import SHOW_MAX, CompiledBlock
from hub.mapping.spec import load_mapping
from hub.yamlio import ConfigError
from tests.conftest import REPO

DOC = """\
mapping: safe
system: HIS
terminology:
  items: terminology/lab_items_vendor_a.json
resources:
  - resource: Patient
    from: patient
    key: [patient_id]
    {key_is_identifier}
    id: {{namespace: patient, key: [mrn]}}
    safe_columns: {safe}
    elements:
      identifier[0].value: {{column: mrn, phi: true}}
      name[0].text: {{column: name, phi: true}}
      gender: {{column: sex}}
  - resource: Observation
    from: lab_result
    key: [result_id]
    join:
      - {{table: lab_order, on: {{order_id: order_id}}}}
    safe_columns: {obs_safe}
    elements:
      status: final
      code: {{codeable: item_code, system: "urn:x", map: items}}
      subject: {{reference: Patient, key: [lab_order.patient_mrn]}}
      issued: {{column: result_time, type: dateTime}}
"""


def _load(tmp_path, safe="[patient_id, sex]", obs_safe="[result_id, item_code]", key_is_identifier=""):
    shutil.copytree(REPO / "mappings" / "terminology", tmp_path / "terminology", dirs_exist_ok=True)
    path = tmp_path / "safe.yaml"
    path.write_text(DOC.format(safe=safe, obs_safe=obs_safe, key_is_identifier=key_is_identifier), encoding="utf-8")
    return load_mapping(path)


def test_declared_columns_are_qualified_with_the_block_table(tmp_path):
    mapping = _load(tmp_path, obs_safe="[result_id, lab_result.item_code]")
    assert mapping.blocks[0].safe_columns == {"patient.patient_id", "patient.sex"}
    assert mapping.blocks[1].safe_columns == {"lab_result.result_id", "lab_result.item_code"}


@pytest.mark.parametrize(("safe", "obs_safe", "key_is_identifier", "problem"), [
    ("patient_id", "[result_id]", "", "is not a list of column names"),
    ("[patient_id, 'sex; drop']", "[result_id]", "", "is not a list of column names"),
    ("[patient_id, nickname]", "[result_id]", "", "'nickname' is not read by this block"),
    ("[patient_id, visit.sex]", "[result_id]", "", "'visit.sex' names a table the block does not read"),
    ("[patient_id, name]", "[result_id]", "", "'name' is identifying (line 14: Patient.name[0].text is phi)"),
    ("[patient_id, mrn]", "[result_id]", "", "'mrn' is identifying"),
    ("[patient_id]", "[result_id, lab_order.patient_mrn]", "", "'lab_order.patient_mrn' is a Patient reference key"),
    ("[patient_id]", "[result_id]", "key_is_identifier: true", "'patient_id' is a key_is_identifier key"),
])
def test_bad_declarations_name_file_line_and_field(tmp_path, safe, obs_safe, key_is_identifier, problem):
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, safe, obs_safe, key_is_identifier)
    err = exc.value
    assert "safe.yaml" in str(err) and err.field.endswith(".safe_columns") and problem in str(err)
    assert err.line == (21 if "lab_order" in problem else 11)  # the block's safe_columns line


# -- the policy, on the shipped LIS mapping ------------------------------------------------

C = canary()
SPACED_ID = f"{C.id_number[:6]} {C.id_number[6:14]} {C.id_number[14:]}"
DASHED_PHONE = f"{C.phone[:3]}-{C.phone[3:7]}-{C.phone[7:]}"
FULL_WIDTH_ID = C.id_number.translate(str.maketrans("0123456789X", "０１２３４５６７８９Ｘ"))


def _observation(keys) -> CompiledBlock:
    mapping = load_mapping(REPO / "mappings" / "lis_vendor_a.yaml")
    block = next(b for b in mapping.blocks if b.resource == "Observation")
    return CompiledBlock(mapping, block, "city-first", keys)


def _row(compiled: CompiledBlock, **values) -> tuple:
    base = {"lab_result.result_id": 1, "lab_result.order_id": 10, "lab_result.item_code": "GLU", "lab_result.status": "F",
            "lab_result.result_time": "2024-03-05 08:30:00", "lab_result.result_value": "5.6", "lab_result.unit": "mmol/L",
            "lab_order.patient_mrn": "M0000001", "lab_order.collect_time": "2024-03-05 08:00:00"}
    base.update({k if "." in k else f"lab_result.{k}": v for k, v in values.items()})
    base.update({k.replace("__", "."): v for k, v in values.items() if "__" in k})
    return tuple(base.get(c) for c in compiled.columns)


def _everything_shown(compiled: CompiledBlock, row: tuple) -> tuple[str, list[str]]:
    resource, problems = compiled.map_row(row)
    assert resource is None and problems
    label = compiled.row_label(row)
    return label, [p.reason(label) for p in problems]


def test_a_hostile_row_leaves_no_value_in_reasons_labels_or_the_unmapped_summary(keys):
    compiled = _observation(keys)
    hostile = _row(
        compiled,
        result_id=FULL_WIDTH_ID,  # a key holding an ID number in full-width digits
        result_time=C.name,  # a date column holding a name
        lab_order__collect_time=DASHED_PHONE,  # a phone in another date column
        item_code=SPACED_ID,  # a spaced ID number in a column declared safe
        unit=C.phone,  # a phone in a safe unit column
    )
    label, reasons = _everything_shown(compiled, hostile)
    text = " | ".join([label, *reasons, *(v for _, v in compiled.unmapped)])
    for value in (C.name, C.id_number, C.phone, SPACED_ID, DASHED_PHONE, FULL_WIDTH_ID):
        assert value not in text
    assert find_identifiers(text, [C.name, C.id_number, C.phone]) == []
    assert label.startswith("lab_result(key#")  # the key is hashed, not shown
    assert "column result_time (value withheld: not in safe_columns)" in text
    assert "column item_code (value withheld: not code-like)" in text  # 18 digits: more than a code shows
    assert ("units", "(value withheld: unit not code-like)") in compiled.unmapped


def test_codes_from_safe_columns_stay_visible(keys):
    compiled = _observation(keys)
    label, reasons = _everything_shown(compiled, _row(compiled, result_id=1004, item_code="XYZ99", unit="mmol/dL"))
    assert label == "lab_result(result_id=1004)"
    assert "column item_code: 'XYZ99' has no mapping in lab_items_vendor_a" in reasons[0]
    assert ("items", "XYZ99") in compiled.unmapped and ("units", "mmol/dL") in compiled.unmapped


def test_a_long_value_from_a_safe_column_is_withheld(keys):
    compiled = _observation(keys)
    long_code = "X" * (SHOW_MAX + 1)
    _, reasons = _everything_shown(compiled, _row(compiled, item_code=long_code))
    assert long_code not in reasons[0] and "(value withheld: too long to show)" in reasons[0]


def test_a_patients_own_name_in_a_safe_column_is_withheld(tmp_path, keys):
    mapping = _load(tmp_path)
    compiled = CompiledBlock(mapping, mapping.blocks[0], "city-first", keys)
    by_column = {"patient.patient_id": C.name, "patient.mrn": "M0000001", "patient.name": C.name, "patient.sex": "M"}
    row = tuple(by_column.get(c) for c in compiled.columns)
    assert C.name not in compiled.row_label(row)  # a key that equals the row's own name is hashed


def test_a_safe_column_shows_codes_only():
    from hub.mapping.compile import withheld

    safe = frozenset({"t.status"})
    for code in ("2001", "E11.9", "4548-4", "HBA1C", "mmol/L", "10^9/L", "N"):
        assert withheld("t.status", code, safe) is None, code
    for hostile in ("赵秀兰 191~8745~2685", "M1000001 幺九一八七四五二六八五", "138 0013 8000", "Zhang~138~0013~8000", "阴性"):
        assert withheld("t.status", hostile, safe) in ("not code-like", "looks identifying"), hostile
