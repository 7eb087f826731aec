"""`hub deploy config|workers`: the production profile (deploy/, docs/deployment.md).

``hub deploy config`` writes DAGSTER_HOME/dagster.yaml from deploy/dagster.yaml: Dagster's
run, event log and schedule storage on PostgreSQL (HUB_DAGSTER_PG_URL) and a run queue with
one limit per source database (its feeds' ``max_connections`` in region.yaml); it then
registers the institution partitions there. ``hub deploy workers --count N`` starts N Celery
worker processes on this host, with deploy/celery.yaml's broker, result backend and
late acknowledgement, and keeps them running until stopped.
"""

from __future__ import annotations

import importlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import typer

from hub.cli.base import WorkspaceOpt, app, console
from hub.errors import NotFound

deploy_app = typer.Typer(help="The production profile: Dagster on PostgreSQL, steps on Celery workers.", no_args_is_help=True)
app.add_typer(deploy_app, name="deploy")

#: the Celery queue dagster-celery sends steps to
QUEUE = "dagster"


def _dagster(module: str):
    """A dagster_project module, imported by name: hub itself never imports Dagster (tests/test_imports.py)."""
    return importlib.import_module(f"dagster_project.{module}")


def _workspace(workspace: Path) -> Path:
    ws = workspace.resolve()
    if not (ws / "region.yaml").exists():
        raise NotFound(f"no region.yaml in {ws}: name the workspace with --workspace")
    return ws


@deploy_app.command("config")
def deploy_config(
    workspace: Path = WorkspaceOpt,
    home: Path = typer.Option(None, "--home", help="The Dagster home to write dagster.yaml into (default: $DAGSTER_HOME)."),
    max_runs: int = typer.Option(None, "--max-runs", min=1, help="Runs in progress at once (default: deploy/dagster.yaml's)."),
) -> None:
    """Write the production dagster.yaml into DAGSTER_HOME and register the institution partitions.

    Run it again after adding an institution or changing a feed's max_connections: the
    file is regenerated (edit deploy/dagster.yaml, not the copy). Needs HUB_DAGSTER_PG_URL.
    """
    from hub.region import load_region

    ws = _workspace(workspace)
    target = home or (Path(os.environ["DAGSTER_HOME"]) if os.environ.get("DAGSTER_HOME") else None)
    if target is None:
        raise NotFound("no Dagster home: set DAGSTER_HOME or pass --home")
    url = os.environ.get("HUB_DAGSTER_PG_URL", "")
    if not url.startswith("postgresql+psycopg2://"):
        raise NotFound(f"HUB_DAGSTER_PG_URL is {'not set' if not url else 'not a psycopg2 URL'}: "
                       "postgresql+psycopg2://USER@HOST:5432/DATABASE, Dagster's storage "
                       "(dagster-postgres needs the psycopg2 driver)")
    region = load_region(ws)
    target = target.resolve()
    target.mkdir(parents=True, exist_ok=True)
    instance = _dagster("instance")
    added = instance.write_production_home(region, target, max_runs)
    limits = ", ".join(f"{key.split('/', 1)[1]}={limit}" for key, limit in sorted(instance.source_databases(region).items()))
    console.print(f"wrote {target / 'dagster.yaml'}; run-queue limits per source database: {limits or 'none'}; "
                  f"{len(added)} institution partitions added", highlight=False)


def worker_command(name: str, loglevel: str = "INFO") -> list[str]:
    """One Celery worker process that runs one step at a time (solo pool: killing it ends the step)."""
    return [sys.executable, "-m", "celery", "-A", "dagster_celery.app", "worker", "--pool", "solo", "--concurrency", "1",
            "--prefetch-multiplier", "1", "-Q", QUEUE, "-n", f"{name}@{socket.gethostname()}", "--loglevel", loglevel,
            "--without-mingle", "--without-gossip"]


@deploy_app.command("workers")
def deploy_workers(
    workspace: Path = WorkspaceOpt,
    count: int = typer.Option(2, "--count", "-n", min=1, help="Worker processes on this host (one step each at a time)."),
    prefix: str = typer.Option("hub", "--name", help="Worker names: <name>-1@host, <name>-2@host, ..."),
    pid_dir: Path = typer.Option(None, "--pid-dir", help="Write <name>-<i>.pid for each worker here."),
    restart: bool = typer.Option(True, "--restart/--no-restart", help="Start a worker again when its process dies."),
    loglevel: str = typer.Option("INFO", "--loglevel"),
) -> None:
    """Start COUNT Celery workers for the steps of runs on the Celery executor; Ctrl-C stops them.

    Workers need the broker and result backend of deploy/celery.yaml (HUB_CELERY_BROKER,
    HUB_CELERY_BACKEND override them), the workspace (same path on every host) and the
    master key (HUB_MASTER_KEY or HUB_KEY_FILE). A step whose worker dies is delivered
    to another worker and runs again.
    """
    ws = _workspace(workspace)
    config_dir = Path(tempfile.mkdtemp(prefix="hub-celery-"))
    _dagster("launch").write_celery_module(config_dir)
    env = {**os.environ, "HUB_WORKSPACE": str(ws),
           "PYTHONPATH": os.pathsep.join(p for p in (str(config_dir), os.environ.get("PYTHONPATH", "")) if p)}
    names = [f"{prefix}-{i}" for i in range(1, count + 1)]
    procs: dict[str, subprocess.Popen] = {}

    def start(name: str) -> None:
        procs[name] = subprocess.Popen(worker_command(name, loglevel), env=env)
        if pid_dir is not None:
            pid_dir.mkdir(parents=True, exist_ok=True)
            (pid_dir / f"{name}.pid").write_text(f"{procs[name].pid}\n")
        console.print(f"worker {name}@{socket.gethostname()}: process {procs[name].pid}", highlight=False)

    stopping = {"now": False}

    def stop(signum, _frame) -> None:
        stopping["now"] = True
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)  # a step it was running goes back to the queue (acks_late)

    signal.signal(signal.SIGTERM, stop)
    for name in names:
        start(name)
    try:
        while not stopping["now"]:
            for name, p in list(procs.items()):
                if p.poll() is not None and not stopping["now"]:
                    console.print(f"worker {name} ended (exit {p.returncode})" + ("; starting it again" if restart else ""), highlight=False)
                    if restart:
                        start(name)
                    else:
                        del procs[name]
            if not procs:
                break
            time.sleep(1)
    except KeyboardInterrupt:  # Ctrl-C reached the workers too (one process group)
        stopping["now"] = True
    for p in procs.values():
        p.wait()
