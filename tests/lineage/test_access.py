"""The access log: reads through hub are recorded, filterable, exportable as FHIR AuditEvent, identifier-free."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from hub.cli import app
from hub.fhir.ids import resource_id
from hub.leakscan import load_canaries, scan_text
from hub.lineage import access, runrecord
from hub.research import build_release
from tests.conftest import publish_region

pytestmark = pytest.mark.slow


def test_reads_are_logged_and_exported_as_audit_events(tmp_path, keys, monkeypatch):
    region, _, _ = publish_region(tmp_path, keys, 15)
    monkeypatch.setenv("HUB_ACTOR", "ml-team-a")
    # 15 people over 3 institutions: k=2 over (birth year, sex, institutions) needs much suppression; the log is the point here
    build_release(region, keys, name="r1", k=2, max_suppression=0.9, purpose="diabetes cohort study #12")
    build_release(region, keys, name="r2", k=10_000)  # refused, still logged
    monkeypatch.setenv("HUB_MASTER_KEY", keys.master.hex())
    monkeypatch.setenv("HUB_ACTOR", "operator-li")
    runner = CliRunner()
    assert runner.invoke(app, ["quarantine", "show", "1", "-w", str(tmp_path), "--purpose", "fix date format"]).exit_code == 0
    rid = resource_id(keys, "city-first", "observation", [10])
    assert runner.invoke(app, ["lineage", "trace", f"Observation/{rid}", "-w", str(tmp_path)]).exit_code == 0

    engine = runrecord.connect(region.catalog_url)
    log = access.entries(engine)
    assert [(e["who"], e["action"], e["outcome"]) for e in log] == [
        ("ml-team-a", "research-release", "success"), ("ml-team-a", "research-release", "refused"),
        ("operator-li", "quarantine-show", "success"), ("operator-li", "lineage-trace", "success"),
    ]
    assert log[0]["purpose"] == "diabetes cohort study #12" and log[0]["what"]["rows"]["Observation"] > 0
    assert [e["action"] for e in access.entries(engine, who="operator-li")] == ["quarantine-show", "lineage-trace"]

    ndjson = runner.invoke(app, ["audit", "access", "-w", str(tmp_path), "--fhir"]).stdout.strip().splitlines()
    from fhir.resources.R4B.auditevent import AuditEvent

    events = [AuditEvent.model_validate(json.loads(line)) for line in ndjson]
    assert len(events) == 4 and events[1].outcome == "4"
    assert scan_text("\n".join(ndjson), "access log", load_canaries(tmp_path)) == []
