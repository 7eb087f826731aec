"""`hub feeds check` runs the publication's leak scan on its sample: a leak or a false positive shows before publishing."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from deid.ruleset import default_ruleset_path
from hub.cli import app
from hub.demo.generator import write_database
from hub.feeds import check_feed
from tests.conftest import DATA, REPO

runner = CliRunner()
MAPPING = REPO / "mappings" / "lis_vendor_a.yaml"
MOBILE = "13800138000"
LOCAL_FLAGS = "urn:hub:local-flag"  # where lis_vendor_a keeps an abnormal flag it has no mapping for


def _lis_a(tmp_path, **first_result) -> str:
    rows = {t: json.loads((DATA / "vendor_a" / "input" / f"{t}.json").read_text(encoding="utf-8")) for t in ("lab_order", "lab_result")}
    rows["lab_result"] = [r for r in rows["lab_result"] if r["result_id"] not in (1004, 1005)]  # rows that would quarantine
    rows["lab_result"][0].update(first_result)
    url = f"sqlite:///{tmp_path / 'lis.db'}"
    write_database(url, "lis_vendor_a", rows)
    return url


def test_a_phone_number_that_survives_de_identification_fails_the_check_masked(tmp_path):
    url = _lis_a(tmp_path, result_value=MOBILE)  # a number is kept as a number: no ruleset scrubs it
    result = runner.invoke(app, ["feeds", "check", "--url", url, "--mapping", str(MAPPING)])
    assert result.exit_code == 1
    assert "Leak scan would block publication" in result.stdout and "138******00" in result.stdout
    assert "Observation.valueQuantity.value" in result.stdout and "lab_result(result_id=1000)" in result.stdout
    assert MOBILE not in result.stdout

    report = json.loads(runner.invoke(app, ["feeds", "check", "--url", url, "--mapping", str(MAPPING), "--json"]).stdout)
    assert report["would_quarantine"] == 0 and report["leak_scan"]["blocked"] is True
    assert MOBILE not in json.dumps(report)


def test_a_code_shaped_like_a_phone_shows_as_a_false_positive_and_a_declared_system_clears_it(tmp_path):
    url = _lis_a(tmp_path, abnormal_flag=MOBILE)
    found = check_feed(MAPPING, url, "new-institution", default_ruleset_path())
    assert [(h.kind, h.path) for h in found.leaks] == [("mobile", "Observation.interpretation[0].coding[0].code")]

    rules = yaml.safe_load(default_ruleset_path().read_text(encoding="utf-8"))
    rules["leak_scan"]["exempt_code_systems"].append({"system": LOCAL_FLAGS, "patterns": ["mobile"]})
    declared = tmp_path / "rules.yaml"
    declared.write_text(yaml.safe_dump(rules, allow_unicode=True), encoding="utf-8")
    cleared = check_feed(MAPPING, url, "new-institution", declared)
    assert cleared.leaks == [] and cleared.exempted == {LOCAL_FLAGS: {"mobile": 1}}


def test_a_canary_in_the_sample_is_found(tmp_path):
    url = _lis_a(tmp_path, result_value="880123")  # a planted MRN, published as a number
    found = check_feed(MAPPING, url, "new-institution", default_ruleset_path(), canaries=frozenset({"880123"}))
    assert found.blocked and [h.kind for h in found.leaks] == ["canary"]
    assert "880123" not in json.dumps(found.as_dict())
