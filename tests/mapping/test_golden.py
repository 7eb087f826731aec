"""Each vendor mapping against golden input -> expected output folders (compared as parsed JSON)."""

from __future__ import annotations

import json

import pytest

from hub.fhir.jsonio import dumps, loads
from tests.conftest import DATA
from tests.mapping.golden import run_scenario

SCENARIOS = {
    "vendor_a": ["his_vendor_a", "lis_vendor_a"],
    "vendor_b": ["his_vendor_b", "lis_vendor_b"],
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_vendor_mapping_matches_golden_output(scenario, tmp_path, keys):
    folder = DATA / scenario
    resources, reasons = run_scenario(folder, SCENARIOS[scenario], tmp_path, keys)
    expected_types = sorted(p.stem for p in (folder / "expected").glob("*.ndjson"))
    assert sorted(resources) == expected_types
    for rtype in expected_types:
        lines = (folder / "expected" / f"{rtype}.ndjson").read_text(encoding="utf-8").splitlines()
        # canonical re-serialisation keeps decimal text, so 7.50 must stay 7.50
        expected = sorted(dumps(loads(line)) for line in lines if line.strip())
        assert resources[rtype] == expected, rtype
    assert reasons == json.loads((folder / "expected" / "quarantine.json").read_text(encoding="utf-8"))


def test_decimal_precision_survives_mapping(tmp_path, keys):
    resources, _ = run_scenario(DATA / "vendor_a", SCENARIOS["vendor_a"], tmp_path, keys)
    hba1c = next(line for line in resources["Observation"] if "4548-4" in line)
    assert '"value":7.50' in hba1c


def test_every_mapped_row_is_published_or_quarantined(tmp_path, keys):
    resources, reasons = run_scenario(DATA / "vendor_b", SCENARIOS["vendor_b"], tmp_path, keys)
    inputs = {p.stem: len(json.loads(p.read_text(encoding="utf-8"))) for p in (DATA / "vendor_b" / "input").glob("*.json")}
    # one resource per source row per block: T_BR_JBXX -> Patient, LIS_SQD -> 3 resources, ...
    expected_rows = (
        inputs["T_JG_YYXX"] + inputs["T_BR_JBXX"] + inputs["T_JZ_JZJL"] + inputs["T_JZ_ZD"]
        + inputs["T_JZ_CF"] + 3 * inputs["LIS_SQD"] + inputs["LIS_JG"]
    )
    assert sum(len(v) for v in resources.values()) + len(reasons) == expected_rows
