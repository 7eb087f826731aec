"""What machines and narrow terminals get from the `hub` command: --json output that parses,
with nothing else on stdout; progress that counts rows read; tables readable at 80 columns;
`hub demo` that will not overwrite a workspace."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from rich.progress import Progress

from hub.cli.demo import _RichProgress

HUB = [sys.executable, "-m", "hub.cli"]
CANARY_ID = "330106198001019982"


def _run(*args: str, cwd: Path, columns: int = 200) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUB_", "DAGSTER_"))}
    env["COLUMNS"] = str(columns)
    return subprocess.run([*HUB, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _lines(proc: subprocess.CompletedProcess) -> list[dict]:
    """stdout as JSON Lines: every line one object, nothing else."""
    assert proc.stdout.strip(), proc.stderr[-2000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A 15-person demo, dated as of a pinned day, built with `hub demo --json`."""
    root = tmp_path_factory.mktemp("cli-json")
    proc = _run("demo", "-n", "15", "--as-of", "2026-11-30", "--json", "-w", str(root / "ws"), cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = _lines(proc)
    assert [r["institution"] for r in reports] == ["city-first", "xihu-second", "beishan-chc", "gongshu-lab", "binjiang-fhir"]  # SQL, then HL7 v2 and NDJSON
    assert all(r["by_resource"]["Observation"]["published"] > 0 for r in reports)
    assert "Observation" in proc.stderr and "Demo region" in proc.stderr  # progress and notes went to stderr
    return root / "ws"


def test_progress_ends_at_the_rows_read_not_the_table_size():
    out = io.StringIO()
    with Progress(console=Console(file=out, width=120)) as bar:
        shown = _RichProgress(bar)
        shown.start("city-first lis lab_result → Observation", 220)
        shown.advance(1)  # an incremental run: one changed row
        shown.start("city-first lis lab_order → Specimen", 5)
        shown.advance(5)
        shown.finish()
        first, second = bar.tasks
    assert (first.completed, first.total) == (1, 1) and "(1 of 220 rows read)" in first.description
    assert (second.completed, second.total) == (5, 5) and "rows read" not in second.description
    assert "220/220" not in out.getvalue()


@pytest.mark.slow
def test_publish_json_is_json_lines_and_progress_counts_rows_read(ws, tmp_path):
    proc = _run("publish", "--json", "-w", str(ws), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    reports = _lines(proc)
    assert len(reports) == 5 and all({"run_id", "institution", "by_resource", "quarantine_causes"} <= r.keys() for r in reports)
    observed = reports[0]["by_resource"]["Observation"]
    assert observed["read"] == observed["published"] + observed["quarantined"]
    assert observed["read"] < 20  # incremental: only rows at or after the watermark
    partial = re.findall(r"\((\d+) of (\d+) rows read\)", proc.stderr)
    assert partial and all(int(n) < int(total) for n, total in partial)  # bars say what was read, of how many


@pytest.mark.slow
def test_demo_refuses_an_existing_workspace_and_force_regenerates(tmp_path):
    ws = tmp_path / "ws"
    first = _run("demo", "-n", "3", "--as-of", "2026-11-30", "-w", str(ws), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    registered = (ws / "region.yaml").read_text(encoding="utf-8") + "  - id: my-clinic\n    name: x\n    level: y\n    feeds: []\n"
    (ws / "region.yaml").write_text(registered, encoding="utf-8")  # a user registered an institution
    fixed = (ws / "sources" / "city-first-lis.db").stat().st_mtime_ns

    again = _run("demo", "-n", "3", "-w", str(ws), cwd=tmp_path)
    assert again.returncode == 2 and again.stdout == ""
    (line,) = again.stderr.strip().splitlines()
    assert line.startswith("error: ") and "--force" in line and "region.yaml" in line
    assert (ws / "region.yaml").read_text(encoding="utf-8") == registered  # nothing overwritten
    assert (ws / "sources" / "city-first-lis.db").stat().st_mtime_ns == fixed

    forced = _run("demo", "-n", "3", "--as-of", "2026-11-30", "--force", "-w", str(ws), cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert "my-clinic" not in (ws / "region.yaml").read_text(encoding="utf-8")


@pytest.mark.slow
def test_research_release_json_is_one_document_with_the_exit_code_kept(ws, tmp_path):
    proc = _run("research", "release", "--k", "2", "--max-suppression", "0.9", "--name", "json-release", "--json",
                "-w", str(ws), cwd=tmp_path)
    doc = json.loads(proc.stdout)
    assert doc["name"] == "json-release" and doc["status"] in ("published", "refused")
    assert proc.returncode == (0 if doc["status"] == "published" else 1)
    assert doc["report"]["k_required"] == 2 and isinstance(doc["report"]["levels"], list)


@pytest.mark.slow
def test_recognition_query_json_lines(ws, tmp_path):
    proc = _run("recognition", "query", "-r", "city-first", "--id-number", CANARY_ID, "--at", "2026-11-30", "--json",
                "-w", str(ws), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    verdicts = _lines(proc)
    assert verdicts and all({"loinc", "issuer", "verdict", "recognisable", "age_days", "window_days", "resource"} <= v.keys()
                            for v in verdicts)
    assert any(v["verdict"] == "recognisable" for v in verdicts)  # the demo is recent as of its day
    assert {v["verdict"] for v in verdicts if v["issuer"] == "city-first"} == {"same-institution"}
    assert CANARY_ID not in proc.stdout


@pytest.mark.slow
def test_audit_verify_json_is_one_document(ws, tmp_path):
    proc = _run("audit", "verify", "--json", "-w", str(ws), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True and report["manifests"] >= 3


@pytest.mark.slow
def test_listings_print_json_lines(ws, tmp_path):
    indicators = _lines(_run("indicators", "--json", "-w", str(ws), cwd=tmp_path))
    assert all({"indicator", "institution", "month", "numerator", "denominator", "share"} <= r.keys() for r in indicators)
    feeds = _lines(_run("feeds", "list", "--json", "-w", str(ws), cwd=tmp_path))
    assert [f["feed"] for f in feeds][:2] == ["city-first/his", "city-first/lis"]
    snapshots = _lines(_run("lakehouse", "snapshots", "recognition.observation", "--json", "-w", str(ws), cwd=tmp_path))
    assert len(snapshots) >= 3 and all(isinstance(s["snapshot_id"], int) for s in snapshots)
    access = _lines(_run("audit", "access", "--json", "-w", str(ws), cwd=tmp_path))
    assert all({"at", "who", "action", "outcome"} <= a.keys() for a in access)
    tagged = json.loads(_run("lakehouse", "tag", "json-tag", "--json", "-w", str(ws), cwd=tmp_path).stdout)
    assert tagged["recognition.observation"] == snapshots[-1]["snapshot_id"]


@pytest.mark.slow
def test_tables_at_80_columns_keep_ids_whole_and_headers_uncut(ws, tmp_path):
    snapshots = _lines(_run("lakehouse", "snapshots", "recognition.observation", "--json", "-w", str(ws), cwd=tmp_path))
    shown = _run("lakehouse", "snapshots", "recognition.observation", "-w", str(ws), cwd=tmp_path, columns=80)
    assert shown.returncode == 0 and "…" not in shown.stdout
    assert max(len(line) for line in shown.stdout.splitlines()) <= 80
    for s in snapshots:
        assert str(s["snapshot_id"]) in shown.stdout  # on one line, whole: it can be copied
        assert s["run_id"] in "".join(shown.stdout.replace("│", "").split())  # wrapped, never cut

    report = _run("publish", "city-first", "-w", str(ws), cwd=tmp_path, columns=80)
    assert report.returncode == 0, report.stderr[-2000:]
    assert "…" not in report.stdout and max(len(line) for line in report.stdout.splitlines()) <= 80
    for header in ("read", "published", "quarantined", "written", "unchanged"):
        assert header in report.stdout


def test_views_test_on_a_folder_without_tests_fails(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "basic.json").write_text('{"title": "t", "resources": [], "tests": []}', encoding="utf-8")
    proc = _run("views", "test", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert "no SQL-on-FHIR test found" in line and "Traceback" not in proc.stderr


def test_json_text_keeps_decimal_precision_and_dates():
    import datetime as dt
    from decimal import Decimal

    from hub.cli.base import json_text

    text = json_text({"value": Decimal("1.50"), "at": dt.datetime(2026, 11, 30, 8, 0), "forged": "\u0002number:1"})
    assert text == '{"value": 1.50, "at": "2026-11-30T08:00:00", "forged": "\\u0002number:1"}'
    assert json.loads(text)["value"] == 1.5
