"""The demo region and the main job: `hub demo`, `hub publish`, the run report."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from hub.cli.base import WorkspaceOpt, app, console


class _RichProgress:
    """Adapts the pipeline's progress protocol to a Rich progress display."""

    def __init__(self, progress: Progress):
        self.progress, self.task = progress, None

    def start(self, label: str, total: int) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=self.progress.tasks[-1].total)
        self.task = self.progress.add_task(label, total=total or 1)

    def advance(self, n: int) -> None:
        if self.task is not None:
            self.progress.advance(self.task, n)


def _ensure_key(region) -> None:
    from deid.keys import ENV_KEY, ENV_KEY_FILE, create_key_file

    if not os.environ.get(ENV_KEY) and not os.environ.get(ENV_KEY_FILE) and not region.key_file.exists():
        create_key_file(region.key_file)
        console.print(f"[yellow]Created a new master key at {region.key_file} (mode 600). Keep it out of version control; "
                      f"in production set {ENV_KEY} or {ENV_KEY_FILE} instead.[/]")


def publish(workspace: Path, institution_ids: list[str] | None = None, full: bool = False) -> list:
    """Run the main job for each institution partition through Dagster, in-process, with progress bars.

    hub itself does not depend on Dagster: the launch lives in dagster_project.launch, which
    the command line hands off to.
    """
    import importlib

    from hub import progress as hub_progress
    from hub.lineage import catalog as runcat
    from hub.region import load_region

    os.environ["HUB_WORKSPACE"] = str(workspace)
    launch = importlib.import_module("dagster_project.launch")
    region = load_region(workspace)
    _ensure_key(region)
    ids = institution_ids or [i.id for i in region.institutions]
    for iid in ids:
        region.institution(iid)  # an unknown id fails here, before any run starts
    reports = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        hub_progress.set_reporter(_RichProgress(bar))
        try:
            if not launch.materialize_institutions(workspace, ids, full):
                raise typer.Exit(1)
        finally:
            hub_progress.set_reporter(None)
    from hub.recognition.index import build, connect, index_url

    build(region, connect(index_url(region)))  # the recognition index follows every publish
    engine = runcat.connect(region.catalog_url)
    for iid in ids:
        reports.append(_latest_report(engine, iid))
    return reports


def _latest_report(engine, institution: str) -> dict:
    import json

    import sqlalchemy as sa

    from hub.lineage.catalog import runs

    with engine.connect() as conn:
        row = conn.execute(
            sa.select(runs.c.report).where(runs.c.institution == institution, runs.c.status == "succeeded").order_by(runs.c.started_at.desc()).limit(1)
        ).one()
    return json.loads(row.report)


def print_report(reports: list[dict], workspace: Path) -> None:
    table = Table(title="Run report: rows read = published + quarantined")
    table.add_column("institution", no_wrap=True)
    table.add_column("resource", no_wrap=True)
    for col in ("read", "published", "quarantined", "written", "unchanged"):
        table.add_column(col, justify="right")
    causes: dict[str, int] = {}
    uncovered: dict[str, int] = {}
    for rep in reports:
        for i, (rt, c) in enumerate(rep["by_resource"].items()):
            table.add_row(rep["institution"] if i == 0 else "", rt, str(c["read"]), str(c["published"]),
                          f"[red]{c['quarantined']}[/]" if c["quarantined"] else "0", str(c["written"]), str(c["unchanged"]))
        table.add_section()
        for k, v in rep["quarantine_causes"].items():
            causes[k] = causes.get(k, 0) + v
        for k, v in rep["uncovered_elements_dropped"].items():
            uncovered[k] = uncovered.get(k, 0) + v
    console.print(table)
    if causes:
        ct = Table(title="Quarantine causes (each row's reason: `hub quarantine list`; rows stay encrypted)")
        ct.add_column("rows", justify="right")
        ct.add_column("cause")
        for k, v in sorted(causes.items(), key=lambda kv: -kv[1]):
            ct.add_row(str(v), k)
        console.print(ct)
    if uncovered:
        console.print("Elements no de-identification rule covers (dropped, deny by default): "
                      + ", ".join(f"{k} ×{v}" for k, v in sorted(uncovered.items())))
    for rep in reports:
        for where, n in (rep.get("rows_without_watermark") or {}).items():
            console.print(f"[yellow]{rep['institution']} {where}: {n} row(s) have no update time, so incremental "
                          "pulls cannot see them; `hub publish --full` reads them[/]", highlight=False)
        if rep.get("abandoned_runs"):
            console.print(f"{rep['institution']}: earlier run(s) {', '.join(rep['abandoned_runs'])} had been killed; marked failed, "
                          f"{rep.get('orphan_files_removed', 0)} uncommitted data file(s) removed", highlight=False)
    region_ws = workspace.resolve()
    console.print(f"Lakehouse: Iceberg tables in namespace [bold]recognition[/], catalog {region_ws / 'catalog.db'}, "
                  f"Parquet files under {region_ws / 'warehouse'}")


@app.command()
def demo(
    workspace: Path = WorkspaceOpt,
    patients: int = typer.Option(300, "--patients", "-n", min=1, help="Number of people in the demo population."),
    seed: int = typer.Option(20261122, help="Random seed; the same seed gives the same region."),
) -> None:
    """Generate a demo region (3 institutions, HIS + LIS each, 2 vendor schemas) and publish it.

    Writes SQLite source databases and region.yaml into the workspace, then runs the main
    job (extract, map, validate, de-identify, publish) for each institution through Dagster.
    Running it again regenerates the same sources and publishes nothing new.
    """
    from hub.demo.generator import ONBOARDING, generate_onboarding_sources, generate_region

    with console.status(f"Generating demo region with {patients} people in {workspace}/ ..."):
        counts = generate_region(workspace, patients=patients, seed=seed)
        generate_onboarding_sources(workspace, patients=patients, seed=seed)
    total = sum(sum(t.values()) for t in counts.values())
    console.print(f"Demo region: {len(counts)} source databases, {total} rows, in {workspace}/sources")
    console.print(f"[yellow]Manifest signing key: {workspace}/keys/signing.key (mode 600), inside the workspace for the demo only. "
                  "In production keep it elsewhere (HUB_SIGNING_KEY_FILE; `hub keys signing-create PATH`) and give verifiers "
                  "the public key (`hub keys signing-public`): see docs/lakehouse.md.[/]", highlight=False)
    print_report(publish(workspace), workspace)
    console.print(f"Not yet connected: {ONBOARDING.name} ({ONBOARDING.id}), HIS and a wide-table LIS in "
                  f"{workspace}/sources/onboarding/. docs/onboarding.md walks through connecting it.")


@app.command("publish")
def publish_cmd(
    institutions: list[str] = typer.Argument(None, help="Institution ids (default: all in region.yaml)."),
    workspace: Path = WorkspaceOpt,
    full: bool = typer.Option(False, "--full", help="Ignore watermarks: pull every row again (unchanged rows are not rewritten)."),
) -> None:
    """Run the main job for an existing workspace: pull each institution's feeds and publish.

    Pulls are incremental: blocks with a watermark read only rows changed since the last
    published run. New institutions in region.yaml are picked up automatically.
    """
    print_report(publish(workspace, institutions or None, full), workspace)
