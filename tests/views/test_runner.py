"""The ViewDefinition runner: the SQL-on-FHIR v2 conformance suite, the CLI, and views over the lakehouse."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from hub.cli import app
from hub.views.conformance import run_folder, summary
from tests.conftest import DATA

SUITE = DATA / "sql-on-fhir" / "tests"


def test_every_shareable_conformance_test_passes():
    report = run_folder(SUITE)
    failed = [(f, t["name"], t["result"].get("reason")) for f, d in report.items() for t in d["tests"]
              if "shareable" in t["tags"] and not t["result"]["passed"]]
    assert failed == []
    passed, total = summary(report)["shareable"]
    assert passed == total >= 90


def test_cli_writes_the_report_and_fails_on_a_failing_shareable_test(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(app, ["views", "test", str(SUITE), "--report", str(tmp_path / "test_report.json")])
    assert ok.exit_code == 0 and "shareable: " in ok.stdout
    report = json.loads((tmp_path / "test_report.json").read_text())
    assert report["basic.json"]["tests"][0] == {"name": "basic attribute", "result": {"passed": True}}

    broken = json.loads((SUITE / "basic.json").read_text())
    broken["tests"] = broken["tests"][:1]
    broken["tests"][0]["expect"] = [{"id": "nobody"}]
    (tmp_path / "suite").mkdir()
    (tmp_path / "suite" / "basic.json").write_text(json.dumps(broken))
    bad = runner.invoke(app, ["views", "test", str(tmp_path / "suite")])
    assert bad.exit_code == 1 and "FAILED basic.json: basic attribute" in bad.stdout


@pytest.mark.slow
def test_a_view_over_the_lakehouse(demo):
    from hub.lakehouse.tables import open_catalog
    from hub.views.runner import run_over_table

    region, _, _ = demo
    view = {
        "resource": "Observation", "status": "active",
        "where": [{"path": "code.coding.where(system = 'http://loinc.org').code = '4548-4'"}],
        "select": [{"column": [
            {"name": "id", "path": "getResourceKey()"},
            {"name": "patient", "path": "subject.getReferenceKey(Patient)"},
            {"name": "value", "path": "value.ofType(Quantity).value"},
            {"name": "unit", "path": "value.ofType(Quantity).code"},
            {"name": "time", "path": "effective.ofType(dateTime)"},
        ]}],
    }
    table = run_over_table(open_catalog(region.catalog_url, region.warehouse).load_table("recognition.observation"), view)
    assert table.num_rows > 0 and table.column_names == ["id", "patient", "value", "unit", "time"]
    assert set(table["unit"].to_pylist()) == {"%"}
    assert all(3 < v < 15 for v in table["value"].to_pylist())


def test_cli_runs_a_view_over_an_ndjson_file_and_writes_parquet(tmp_path):
    import pyarrow.parquet as pq

    view = {"resource": "Patient", "select": [{"column": [{"name": "id", "path": "getResourceKey()"},
                                                          {"name": "gender", "path": "gender"}]}]}
    (tmp_path / "view.json").write_text(json.dumps(view))
    (tmp_path / "p.ndjson").write_text("\n".join(json.dumps(r) for r in [
        {"resourceType": "Patient", "id": "p1", "gender": "female"},
        {"resourceType": "Patient", "id": "p2", "gender": "male"},
        {"resourceType": "Observation", "id": "o1", "status": "final"},
    ]) + "\n")
    runner = CliRunner()
    printed = runner.invoke(app, ["views", "run", str(tmp_path / "view.json"), "--ndjson", str(tmp_path / "p.ndjson")])
    assert printed.exit_code == 0 and "2 rows" in printed.stdout
    written = runner.invoke(app, ["views", "run", str(tmp_path / "view.json"), "--ndjson", str(tmp_path / "p.ndjson"),
                                  "-o", str(tmp_path / "rows.parquet")])
    assert written.exit_code == 0 and "2 rows written to" in written.stdout
    assert pq.read_table(tmp_path / "rows.parquet").to_pylist() == [{"id": "p1", "gender": "female"}, {"id": "p2", "gender": "male"}]


@pytest.mark.slow
def test_cli_runs_a_view_over_a_lakehouse_table(demo, tmp_path):
    region, _, _ = demo
    view = {"resource": "Patient", "select": [{"column": [{"name": "id", "path": "getResourceKey()"}]}]}
    (tmp_path / "view.json").write_text(json.dumps(view))
    result = CliRunner().invoke(app, ["views", "run", str(tmp_path / "view.json"), "--table", "recognition.patient",
                                      "--workspace", str(region.workspace), "--limit", "3"])
    assert result.exit_code == 0, result.output
    assert int(result.stdout.strip().splitlines()[-1].split()[0]) > 0  # "<n> rows"
