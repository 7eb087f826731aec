"""`hub feeds check`: a dry run that tells hospital IT what to fix, and gates on quarantine."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from deid.ruleset import default_ruleset_path
from hub.cli import app
from hub.demo.generator import write_database
from tests.conftest import DATA, REPO

runner = CliRunner()


def _lis_a(tmp_path, mutate=None):
    rows = {t: json.loads((DATA / "vendor_a" / "input" / f"{t}.json").read_text(encoding="utf-8")) for t in ("lab_order", "lab_result")}
    if mutate:
        mutate(rows)
    url = f"sqlite:///{tmp_path / 'lis.db'}"
    write_database(url, "lis_vendor_a", rows)
    return url


def _check(url, *extra):
    return runner.invoke(app, ["feeds", "check", "--url", url, "--mapping", str(REPO / "mappings" / "lis_vendor_a.yaml"), *extra])


def test_check_reports_causes_row_keys_and_unmapped_codes(tmp_path):
    def add_unknown_unit(rows):
        rows["lab_result"][0]["unit"] = "mmol/dL"

    result = _check(_lis_a(tmp_path, add_unknown_unit), "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    obs = next(b for b in report["blocks"] if b["resource"] == "Observation")
    assert (obs["rows"], obs["would_publish"], obs["would_quarantine"]) == (6, 4, 2)
    causes = {c["cause"].split(" ", 1)[1]: c for c in report["causes"]}
    assert causes["Observation.code: has no mapping in lab_items_vendor_a"]["rows"] == ["lab_result(result_id=1004)"]
    assert causes["Observation.issued: is not a date-time in the configured formats"]["rows"] == ["lab_result(result_id=1005)"]
    unmapped = {(u["terminology"], u["value"]): u["count"] for u in report["unmapped"]}
    assert unmapped[("items", "XYZ99")] == 1
    assert unmapped[("units", "mmol/dL")] >= 1


def test_clean_sample_exits_zero(tmp_path):
    def keep_good_rows(rows):
        rows["lab_result"] = [r for r in rows["lab_result"] if r["result_id"] not in (1004, 1005)]

    result = _check(_lis_a(tmp_path, keep_good_rows))
    assert result.exit_code == 0, result.stdout
    assert "all rows would publish" in result.stdout


def test_limit_bounds_the_sample(tmp_path):
    report = json.loads(_check(_lis_a(tmp_path), "--limit", "2", "--json").stdout)
    assert all(b["rows"] <= 2 for b in report["blocks"])


def test_uncovered_elements_are_listed(tmp_path):
    rows = {t: json.loads((DATA / "vendor_b" / "input" / f"{t}.json").read_text(encoding="utf-8")) for t in ("T_JG_YYXX", "T_BR_JBXX", "T_JZ_JZJL", "T_JZ_ZD", "T_JZ_CF")}
    url = f"sqlite:///{tmp_path / 'his.db'}"
    write_database(url, "his_vendor_b", rows)
    mapping = str(REPO / "mappings" / "his_vendor_b.yaml")
    report = json.loads(runner.invoke(app, ["feeds", "check", "--url", url, "--mapping", mapping, "--json"]).stdout)
    assert report["uncovered"] == []  # the default ruleset covers what the shipped mappings produce
    # an operator's ruleset without the marital-status rule: hospital IT sees what would be dropped
    doc = yaml.safe_load(default_ruleset_path().read_text(encoding="utf-8"))
    doc["rules"] = [r for r in doc["rules"] if "Patient.maritalStatus" not in r["paths"]]
    narrow = tmp_path / "operator.yaml"
    narrow.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    report = json.loads(runner.invoke(app, ["feeds", "check", "--url", url, "--mapping", mapping, "--ruleset", str(narrow), "--json"]).stdout)
    assert {"element": "Patient.maritalStatus", "count": 1} in report["uncovered"]
