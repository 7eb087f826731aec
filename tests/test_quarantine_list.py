"""`hub quarantine list` stays usable at any size: a summary by cause, filters, a limit, JSON Lines."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from hub import quarantine
from hub.cli import app
from hub.lineage import runrecord


def _list(demo, *args: str) -> str:
    region = demo[0]
    result = CliRunner().invoke(app, ["quarantine", "list", "-w", str(region.workspace), *args], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def test_default_is_one_line_per_cause_not_per_row(demo):
    entries = quarantine.list_rows(runrecord.connect(demo[0].catalog_url), status="open")
    out = _list(demo)
    assert f"{len(entries)} open quarantined rows by cause" in out
    assert "is not a date-time in the configured formats" in out
    assert "row " not in out  # full reasons (with row keys) only with --rows


def test_json_is_one_parseable_object_per_line_with_the_run_status(demo):
    lines = _list(demo, "--json").strip().splitlines()
    records = [json.loads(line) for line in lines]
    assert records and all(r["run_status"] == "succeeded" and r["status"] == "open" for r in records)
    assert len(records) == len(quarantine.list_rows(runrecord.connect(demo[0].catalog_url), status="open"))


def test_cause_filter_and_limit(demo):
    dates = [json.loads(x) for x in _list(demo, "--json", "--cause", "DATE-TIME").strip().splitlines()]
    assert dates and all("date-time" in r["cause"] for r in dates)
    limited = [json.loads(x) for x in _list(demo, "--json", "--rows", "--limit", "2").strip().splitlines()]
    assert len(limited) == 2


def test_entries_from_a_failed_run_are_marked(demo):
    engine = runrecord.connect(demo[0].catalog_url)
    entry = quarantine.list_rows(engine, status="open")[0]
    with engine.begin() as conn:
        conn.execute(runrecord.runs.update().where(runrecord.runs.c.run_id == entry["run_id"]).values(status="failed"))
    try:
        assert "from a failed run" in _list(demo)
        assert "(failed run)" in _list(demo, "--rows", "--limit", "1000")
    finally:
        with engine.begin() as conn:
            conn.execute(runrecord.runs.update().where(runrecord.runs.c.run_id == entry["run_id"]).values(status="succeeded"))
