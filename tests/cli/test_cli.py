"""The real `hub` command, run as a user would, into a temporary workspace."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hub.demo.generator import build_region
from tests.leakscan import hits, identifiers_of

pytestmark = pytest.mark.slow
HUB = [sys.executable, "-m", "hub.cli"]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("HUB_MASTER_KEY", "HUB_KEY_FILE", "DAGSTER_HOME")}
    env["COLUMNS"] = "200"
    return subprocess.run([*HUB, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_demo_publishes_and_logs_no_identifier(tmp_path):
    ws = tmp_path / "ws"
    first = _run("demo", "--patients", "15", "--workspace", str(ws), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "Run report" in first.stdout and "Observation" in first.stdout
    assert (ws / "keys" / "master.key").exists()
    assert oct((ws / "keys" / "master.key").stat().st_mode & 0o777) == "0o600"

    again = _run("publish", "--workspace", str(ws), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    quarantined = _run("quarantine", "list", "--workspace", str(ws), "--json", cwd=tmp_path)
    assert quarantined.returncode == 0 and "is not a date-time" in quarantined.stdout

    secrets = identifiers_of(build_region(15))
    for proc in (first, again, quarantined):
        assert hits(proc.stdout + proc.stderr, secrets) == []


def test_missing_workspace_says_what_to_do(tmp_path):
    proc = _run("publish", "--workspace", str(tmp_path / "nothing"), cwd=tmp_path)
    assert proc.returncode == 2
    assert "hub demo" in proc.stderr and "Traceback" not in proc.stdout + proc.stderr  # errors go to stderr
