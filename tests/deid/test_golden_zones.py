"""Golden input -> recognition -> research, per resource, compared as parsed JSON (decimals exact)."""

from __future__ import annotations

import pytest

from hub.fhir.jsonio import dumps, loads
from tests.deid.golden import FOLDER, run

STEMS = sorted(p.stem for p in (FOLDER / "input").glob("*.json"))


@pytest.fixture(scope="module")
def outputs(keys):
    return run(keys)


@pytest.mark.parametrize("zone", ["recognition", "research"])
@pytest.mark.parametrize("stem", STEMS)
def test_zone_output_matches_golden(outputs, zone, stem):
    expected = loads((FOLDER / "expected" / zone / f"{stem}.json").read_text(encoding="utf-8"))
    assert dumps(outputs[zone][stem]) == dumps(expected)


def test_research_references_follow_research_ids(outputs):
    research = outputs["research"]
    assert research["observation"]["subject"]["reference"] == f"Patient/{research['patient']['id']}"
    assert research["observation"]["encounter"]["reference"] == f"Encounter/{research['encounter']['id']}"
    assert research["patient"]["id"] != outputs["recognition"]["patient"]["id"]


def test_free_text_is_redacted_in_both_zones(outputs):
    for zone in ("recognition", "research"):
        assert "note" not in outputs[zone]["observation"]
        assert "text" not in outputs[zone]["medicationrequest"]["dosageInstruction"][0]


def test_strings_under_kept_elements_are_scrubbed_and_nested_identifiers_dropped(outputs):
    """The issue's resource: a name in subject.display, a mobile in coding.display, a spaced ID in valueString."""
    for zone in ("recognition", "research"):
        out = outputs[zone]["observation-text"]
        assert set(out["subject"]) == {"reference"}
        assert out["code"]["coding"][0]["display"].endswith("[phone]") and out["code"]["coding"][0]["code"] == "U-PRO"
        assert out["valueString"].startswith("阴性") and "[id-number]" in out["valueString"]
