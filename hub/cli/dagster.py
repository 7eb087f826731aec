"""`hub dagster`: the Dagster UI on a workspace, with the workspace's own Dagster instance.

Starts ``dagster dev -m dagster_project.definitions`` with DAGSTER_HOME set to
``<workspace>/dagster`` (a dagster.yaml hub writes there on first use) and HUB_WORKSPACE to
the workspace, so the UI shows the institution partitions, runs and check results of
``hub demo`` and ``hub publish``, with the sensor and the schedule running.
``hub dagster --env`` prints the two variables instead, for the Dagster command line.
"""

from __future__ import annotations

import importlib
import os
import shlex
import subprocess
import sys
from pathlib import Path

import typer

from hub.cli.base import WorkspaceOpt, app, console
from hub.errors import NotFound


@app.command("dagster")
def dagster_ui(
    workspace: Path = WorkspaceOpt,
    host: str = typer.Option("127.0.0.1", help="Address the Dagster UI listens on."),
    port: int = typer.Option(3000, help="Port the Dagster UI listens on."),
    env: bool = typer.Option(False, "--env", help="Print `export DAGSTER_HOME=... HUB_WORKSPACE=...` for the dagster command line, and exit."),
) -> None:
    """Start the Dagster UI (`dagster dev`) on the workspace: asset graph, institution partitions, checks, sensor, schedule.

    Dagster keeps its run history in <workspace>/dagster (DAGSTER_HOME); `hub demo` and
    `hub publish` record their runs there too. Stop it with Ctrl-C.
    """
    ws = workspace.resolve()
    if not (ws / "region.yaml").exists():
        raise NotFound(f"no region.yaml in {ws}: run `hub demo` (or `make demo`) first, or name a workspace with --workspace")
    home = importlib.import_module("dagster_project.instance").ensure_home(ws)
    variables = {"DAGSTER_HOME": str(home), "HUB_WORKSPACE": str(ws)}
    if env:
        print("export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in variables.items()))
        return
    console.print(f"DAGSTER_HOME={home} HUB_WORKSPACE={ws}; the UI will be at http://{host}:{port} (Ctrl-C stops it)", highlight=False)
    proc = subprocess.Popen([sys.executable, "-m", "dagster", "dev", "-m", "dagster_project.definitions", "-h", host, "-p", str(port)],
                            env={**os.environ, **variables})
    try:
        code = proc.wait()
    except KeyboardInterrupt:  # Ctrl-C reached dagster dev too: let it shut its daemon and webserver down
        code = proc.wait()
    if code not in (0, -2, 130):
        raise typer.Exit(2)
