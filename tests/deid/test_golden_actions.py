"""Golden input -> output for a ruleset that uses every action once (fixed key, fixed patient)."""

from __future__ import annotations

from deid.engine import Deidentifier
from deid.ruleset import load_ruleset
from hub.fhir.jsonio import dumps, loads
from tests.conftest import DATA

FOLDER = DATA / "deid-actions"


def _run(keys):
    resource = loads((FOLDER / "input.json").read_text(encoding="utf-8"))
    deid = Deidentifier(load_ruleset(FOLDER / "ruleset.yaml", "recognition"), keys)
    return deid.apply(resource, patient="patient-pseudonym-1", known_names=("张伟",)), deid.stats


def test_every_action_matches_golden(keys):
    out, _ = _run(keys)
    expected = loads((FOLDER / "expected.json").read_text(encoding="utf-8"))
    assert dumps(out) == dumps(expected)


def test_what_is_dropped_is_counted(keys):
    _, stats = _run(keys)
    assert stats.redacted["Observation.method"] == 1
    assert stats.dropped_by_rule["Observation.device"] == 1
    assert stats.uncovered["Observation.interpretation"] == 1  # deny by default
    assert stats.uncovered["Observation.extension"] == 1  # the extension with another URL
