"""`hub deid rules`: what a ruleset does to every leaf, per element and zone, from the engine's own decisions."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from deid.engine import Deidentifier
from deid.report import ruleset_report
from deid.ruleset import default_ruleset_path, load_ruleset
from hub.cli import app

runner = CliRunner()


def _leaves(report: dict, rtype: str, element: str) -> dict[str, dict]:
    (el,) = [e for e in report["resources"][rtype]["elements"] if e["element"] == element]
    return {leaf["leaf"]: leaf for leaf in el["leaves"]}


def test_the_report_says_what_happens_to_each_leaf_of_a_kept_element():
    report = ruleset_report(default_ruleset_path(), ["Observation", "MedicationRequest"])
    code = _leaves(report, "Observation", "code")
    assert code["coding.code"]["recognition"] == code["coding.code"]["research"] == "kept"
    assert code["coding.display"]["recognition"] == "scrubbed (strings: string)"
    subject = _leaves(report, "Observation", "subject")
    assert subject["display"]["research"] == "redacted (strings: Reference.display)"
    assert subject["identifier"]["recognition"] == "dropped: Identifier nested under a rule for another element"
    assert subject["identifier"]["research"] == "pseudonymized (research-id; type kept)"
    assert subject["reference"]["research"] == "pseudonymized (research-id)"
    dosage = _leaves(report, "MedicationRequest", "dosageInstruction")
    assert dosage["text"]["recognition"] == "redacted by rule"  # a rule names the exact leaf
    assert "bodySite" in report["resources"]["Observation"]["uncovered"]
    assert report["strings"]["policy"]["Reference.display"] == {"recognition": "redact", "research": "redact"}


def test_the_report_agrees_with_what_the_engine_does(keys):
    """Every leaf the report calls scrubbed is scrubbed, every leaf it calls redacted is gone."""
    report = ruleset_report(default_ruleset_path(), ["Observation"])
    code = _leaves(report, "Observation", "code")
    obs = {"resourceType": "Observation", "id": "o1", "code": {
        "coding": [{"system": "urn:x", "code": "C1", "display": "电话13800138000", "version": "13800138000"}], "text": "13800138000"}}
    out = Deidentifier(load_ruleset(default_ruleset_path(), "recognition"), keys).apply(obs)
    coding = out["code"]["coding"][0]
    for leaf, value in (("coding.display", coding.get("display")), ("coding.version", coding.get("version")), ("text", out["code"].get("text"))):
        assert code[leaf]["recognition"].startswith("scrubbed") and value is not None and "13800138000" not in value
    assert (coding["system"], coding["code"]) == ("urn:x", "C1") and code["coding.system"]["recognition"] == "kept"


def test_the_command_prints_at_most_100_columns_and_json_on_request():
    result = runner.invoke(app, ["deid", "rules", "--resource", "Observation"])
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.stdout.splitlines()) <= 100
    assert "Observation" in result.stdout and "dropped by deny-by-default (no rule):" in result.stdout
    assert "coding.display" in result.stdout and "modifierExtension" in result.stdout
    data = json.loads(runner.invoke(app, ["deid", "rules", "--resource", "Patient", "--json"]).stdout)
    assert set(data["resources"]) == {"Patient"}
    name = _leaves(data, "Patient", "name")[""]
    assert name["recognition"] == name["research"] == "dropped by rule"


def test_an_unknown_resource_type_is_refused():
    result = runner.invoke(app, ["deid", "rules", "--resource", "Observatoin"])
    assert result.exit_code == 2
