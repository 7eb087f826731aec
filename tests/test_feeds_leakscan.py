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


ID_NUMBER = "110101199003074610"


def _leak_causes(found) -> list[str]:
    return [g.example for g in found.causes if "leak scan" in g.cause]


def test_an_id_number_that_survives_de_identification_quarantines_its_row_masked(tmp_path):
    url = _lis_a(tmp_path, result_value=ID_NUMBER)  # a number is kept as a number: no ruleset scrubs it
    result = runner.invoke(app, ["feeds", "check", "--url", url, "--mapping", str(MAPPING)])
    assert result.exit_code == 1 and ID_NUMBER not in result.stdout
    found = check_feed(MAPPING, url, "new-institution", default_ruleset_path())
    (reason,) = _leak_causes(found)
    assert "Observation.valueQuantity.value" in reason and "a resident ID number" in reason
    assert "lab_result(result_id=1000)" in reason and found.quarantined == 1
    assert ID_NUMBER not in json.dumps(found.as_dict())


def test_a_result_that_looks_like_a_phone_number_is_a_number_and_publishes(tmp_path):
    url = _lis_a(tmp_path, result_value=MOBILE)  # a viral load of 13,800,138,000 IU/mL, say
    found = check_feed(MAPPING, url, "new-institution", default_ruleset_path())
    assert found.quarantined == 0 and found.leaks == [] and not found.blocked


def test_a_code_shaped_like_a_phone_quarantines_its_row_and_a_declared_system_clears_it(tmp_path):
    url = _lis_a(tmp_path, abnormal_flag=MOBILE)
    found = check_feed(MAPPING, url, "new-institution", default_ruleset_path())
    (reason,) = _leak_causes(found)
    assert "Observation.interpretation[0].coding[0].code" in reason and "a mobile number" in reason
    assert MOBILE not in reason

    rules = yaml.safe_load(default_ruleset_path().read_text(encoding="utf-8"))
    rules["leak_scan"]["exempt_code_systems"].append({"system": LOCAL_FLAGS, "patterns": ["mobile"]})
    declared = tmp_path / "rules.yaml"
    declared.write_text(yaml.safe_dump(rules, allow_unicode=True), encoding="utf-8")
    cleared = check_feed(MAPPING, url, "new-institution", declared)
    assert cleared.quarantined == 0 and cleared.leaks == [] and cleared.exempted == {LOCAL_FLAGS: {"mobile": 1}}


def test_a_canary_in_the_sample_quarantines_its_row(tmp_path):
    url = _lis_a(tmp_path, result_value="880123")  # a planted MRN, published as a number
    found = check_feed(MAPPING, url, "new-institution", default_ruleset_path(), canaries=frozenset({"880123"}))
    (reason,) = _leak_causes(found)
    assert "canary" in reason and "880123" not in json.dumps(found.as_dict())
