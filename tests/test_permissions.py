"""Files hub creates are readable by their owner only, whatever the umask the operator's shell has."""

from __future__ import annotations

import os
import stat

import pytest
from typer.testing import CliRunner

from hub.cli import app

pytestmark = pytest.mark.slow


def test_a_published_workspace_is_its_owners_alone_under_a_permissive_umask(tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    for var in ("HUB_MASTER_KEY", "HUB_KEY_FILE"):
        monkeypatch.delenv(var, raising=False)  # hub demo writes its own key file
    runner = CliRunner()
    old = os.umask(0o022)  # a usual shell default: group and others may read
    try:
        demo = runner.invoke(app, ["demo", "--patients", "4", "--workspace", str(ws)])
        token = runner.invoke(app, ["recognition", "token", "city-first", "--workspace", str(ws)])
    finally:
        os.umask(old)
    assert demo.exit_code == 0, demo.output
    assert token.exit_code == 0, token.output

    paths = [ws, *ws.rglob("*")]
    names = {p.name for p in paths}
    assert {"catalog.db", "recognition.db", "recognition_tokens.yaml", "region.yaml"} <= names
    assert any(p.suffix == ".parquet" for p in paths) and any(p.name.endswith(".metadata.json") for p in paths)
    assert (ws / "keys" / "master.key").is_file()  # hub demo wrote the master key itself
    loose = sorted(f"{stat.filemode(p.stat().st_mode)} {p.relative_to(tmp_path)}" for p in paths if p.stat().st_mode & 0o077)
    assert loose == []
