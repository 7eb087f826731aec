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


ROW_INDEX_PATIENT = {"resourceType": "Patient", "id": "pt1", "name": [
    {"family": "Smith", "given": ["John", "James"]}, {"family": "Jones", "given": ["Jane"]}],
    "contact": [{"telecom": [{"system": "phone"}, {"system": "email"}]}, {"telecom": [{"system": "phone"}]}]}


def test_row_index_in_foreach_and_nested_foreach_follows_the_spec_examples():
    from hub.views.runner import run_view

    view = {"resource": "Patient", "select": [
        {"column": [{"name": "id", "path": "id"}, {"name": "top", "path": "%rowIndex"}]},
        {"forEach": "contact", "column": [{"name": "contact_index", "path": "%rowIndex"}],
         "select": [{"forEach": "telecom", "column": [{"name": "telecom_index", "path": "%rowIndex"},
                                                       {"name": "system", "path": "system"}]}]}]}
    assert run_view(view, [ROW_INDEX_PATIENT]) == [
        {"id": "pt1", "top": 0, "contact_index": 0, "telecom_index": 0, "system": "phone"},
        {"id": "pt1", "top": 0, "contact_index": 0, "telecom_index": 1, "system": "email"},
        {"id": "pt1", "top": 0, "contact_index": 1, "telecom_index": 0, "system": "phone"},
    ]


def test_row_index_in_union_all_branches_inherits_or_restarts_as_the_spec_says():
    from hub.views.runner import run_view

    view = {"resource": "Patient", "select": [
        {"column": [{"name": "id", "path": "id"}]},
        {"forEach": "name", "column": [{"name": "name_index", "path": "%rowIndex"}],
         "select": [{"unionAll": [
             {"forEach": "given", "column": [{"name": "given_index", "path": "%rowIndex"}, {"name": "value", "path": "$this"}]},
             {"column": [{"name": "given_index", "path": "%rowIndex"}, {"name": "value", "path": "family"}]}]}]}]}
    rows = [(r["name_index"], r["given_index"], r["value"]) for r in run_view(view, [ROW_INDEX_PATIENT])]
    assert rows == [(0, 0, "John"), (0, 1, "James"), (0, 0, "Smith"), (1, 0, "Jane"), (1, 1, "Jones")]


def test_row_index_is_0_in_the_null_row_of_an_empty_for_each_or_null():
    from hub.views.runner import run_view

    view = {"resource": "Patient", "select": [{"forEachOrNull": "address", "column": [
        {"name": "i", "path": "%rowIndex"}, {"name": "city", "path": "city"}]}]}
    assert run_view(view, [ROW_INDEX_PATIENT]) == [{"i": 0, "city": None}]


def test_a_view_with_an_unsupported_path_is_refused_naming_the_path_and_part():
    from hub.views.runner import ViewError, validate

    view = {"resource": "Patient", "select": [{"column": [{"name": "org", "path": "managingOrganization.resolve().name"}]}]}
    with pytest.raises(ViewError, match=r"FHIRPath 'managingOrganization.resolve\(\).name': function resolve\(\) is not supported"):
        validate(view)


def test_a_choice_element_is_never_matched_by_prefix_in_a_view():
    from hub.views.runner import run_view

    view = {"resource": "Encounter", "select": [{"column": [
        {"name": "has_class", "path": "class.exists()"}, {"name": "history", "path": "classHistory.class.code"}]}]}
    rows = run_view(view, [{"resourceType": "Encounter", "id": "e", "classHistory": [{"class": {"code": "AMB"}}]}])
    assert rows == [{"has_class": False, "history": "AMB"}]
