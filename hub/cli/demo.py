"""The demo region and the main job: `hub demo`, `hub publish`, the run report."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Column, Table

from hub.cli.base import JsonOpt, WorkspaceOpt, app, console, err_console, print_json_lines


class _RichProgress:
    """Adapts the pipeline's progress protocol to a Rich progress display.

    The pipeline announces each block with its source table's size, but an incremental run
    reads only the rows changed since the last one. The bar counts the rows actually read:
    when a block ends, its total becomes what was read, and the table's size is named
    beside it when it differs (``... (1 of 220 rows read)  1/1 100%``).
    """

    def __init__(self, progress: Progress):
        self.progress, self.task, self.source_rows = progress, None, 0

    def start(self, label: str, total: int) -> None:
        self.finish()
        self.source_rows = total
        self.task = self.progress.add_task(label, total=total or None)

    def advance(self, n: int) -> None:
        if self.task is not None:
            self.progress.advance(self.task, n)

    def finish(self) -> None:
        """Close the current block's bar at the rows it read."""
        if self.task is None:
            return
        task = next(t for t in self.progress.tasks if t.id == self.task)
        read = int(task.completed)
        label = task.description
        if self.source_rows and read != self.source_rows:
            label += f" ({read} of {self.source_rows} rows read)"
        self.progress.update(self.task, total=read, completed=read, description=label)
        self.task = None


def _ensure_key(region, out: Console = console) -> None:
    from deid.keys import ENV_KEY, ENV_KEY_FILE, create_key_file

    if not os.environ.get(ENV_KEY) and not os.environ.get(ENV_KEY_FILE) and not region.key_file.exists():
        create_key_file(region.key_file)
        out.print(f"[yellow]Created a new master key at {region.key_file} (mode 600). Keep it out of version control; "
                  f"in production set {ENV_KEY} or {ENV_KEY_FILE} instead.[/]")


def publish(workspace: Path, institution_ids: list[str] | None = None, full: bool = False, out: Console = console) -> list:
    """Run the main job for each institution partition through Dagster, in-process, with progress bars on out.

    hub itself does not depend on Dagster: the launch lives in dagster_project.launch, which
    the command line hands off to.
    """
    import importlib

    from hub import progress as hub_progress
    from hub.lineage import runrecord
    from hub.region import load_region

    os.environ["HUB_WORKSPACE"] = str(workspace)
    launch = importlib.import_module("dagster_project.launch")
    region = load_region(workspace)
    _ensure_key(region, out)
    ids = institution_ids or [i.id for i in region.institutions]
    for iid in ids:
        region.institution(iid)  # an unknown id fails here, before any run starts
    reports = []
    columns = (TextColumn("{task.description}", table_column=Column(overflow="fold", ratio=1)), BarColumn(bar_width=10),
               MofNCompleteColumn(), TaskProgressColumn(), TimeElapsedColumn())  # a long label wraps; counts are never cut
    with Progress(*columns, console=out, transient=False) as bar:
        shown = _RichProgress(bar)
        hub_progress.set_reporter(shown)
        try:
            if not launch.materialize_institutions(workspace, ids, full):
                raise typer.Exit(1)
        finally:
            shown.finish()
            hub_progress.set_reporter(None)
    engine = runrecord.connect(region.catalog_url)
    for iid in ids:
        reports.append(_latest_report(engine, iid))
    return reports


def _latest_report(engine, institution: str) -> dict:
    import json

    import sqlalchemy as sa

    from hub.lineage.runrecord import runs

    with engine.connect() as conn:
        row = conn.execute(
            sa.select(runs.c.report).where(runs.c.institution == institution, runs.c.status == "succeeded").order_by(runs.c.started_at.desc()).limit(1)
        ).one()
    return json.loads(row.report)


def print_report(reports: list[dict], workspace: Path) -> None:
    """The run report as tables that stay readable at 80 columns (one section per institution)."""
    from rich import box

    table = Table(title="Run report: rows read = published + quarantined", box=box.SIMPLE_HEAD, show_edge=False)
    table.add_column("institution, resource", no_wrap=True)
    for col in ("read", "published", "quarantined", "written", "unchanged"):
        table.add_column(col, justify="right", min_width=len(col))
    causes: dict[str, int] = {}
    uncovered: dict[str, int] = {}
    for n, rep in enumerate(reports):
        if n:
            table.add_section()
        table.add_row(f"[bold]{rep['institution']}[/]")
        for rt, c in rep["by_resource"].items():
            table.add_row(f"  {rt}", str(c["read"]), str(c["published"]),
                          f"[red]{c['quarantined']}[/]" if c["quarantined"] else "0", str(c["written"]), str(c["unchanged"]))
        for k, v in rep["quarantine_causes"].items():
            causes[k] = causes.get(k, 0) + v
        for k, v in rep["uncovered_elements_dropped"].items():
            uncovered[k] = uncovered.get(k, 0) + v
    console.print(table)
    if causes:
        ct = Table(title="Quarantine causes (each row's reason: `hub quarantine list`; rows stay encrypted)")
        ct.add_column("rows", justify="right")
        ct.add_column("cause", overflow="fold")
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
        if rep.get("window"):
            console.print(f"{rep['institution']}: rows of {rep['window'][0]} to {rep['window'][1]} only; not pulled (the regular "
                          f"run's): {', '.join(rep['outside_window']) or 'nothing'}", highlight=False)
        if rep.get("abandoned_runs"):
            console.print(f"{rep['institution']}: earlier run(s) {', '.join(rep['abandoned_runs'])} had been killed; marked failed, "
                          f"{rep.get('orphan_files_removed', 0)} uncommitted data file(s) removed", highlight=False)
    region_ws = workspace.resolve()
    console.print(f"Lakehouse: Iceberg tables in namespace [bold]recognition[/], catalog {region_ws / 'catalog.db'}, "
                  f"Parquet files under {region_ws / 'warehouse'}")


def _report(reports: list[dict], workspace: Path, as_json: bool) -> None:
    if as_json:
        print_json_lines(reports)
    else:
        print_report(reports, workspace)


def _as_of(value: str | None) -> dt.date:
    if value is None:
        return dt.date.today()
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date; expected YYYY-MM-DD", param_hint="--as-of") from None


@app.command()
def demo(
    workspace: Path = WorkspaceOpt,
    patients: int = typer.Option(300, "--patients", "-n", min=1, help="Number of people in the demo population."),
    seed: int = typer.Option(20261122, help="Random seed; the same seed gives the same region."),
    as_of: str = typer.Option(None, "--as-of", help="Date the demo data is recent to (YYYY-MM-DD; default today): the "
                              "latest visits are a week before it. The seed decides people, counts and codes; this only moves dates."),
    force: bool = typer.Option(False, "--force", help="Regenerate region.yaml and the demo sources of an existing workspace "
                               "(institutions you registered there and fixes to its sources are lost)."),
    as_json: bool = JsonOpt,
) -> None:
    """Generate a demo region and publish it: 3 institutions with HIS + LIS databases (2 vendor schemas), a lab sending HL7 v2 files, a hospital exporting FHIR NDJSON.

    Writes SQLite source databases and region.yaml into the workspace, then runs the main
    job (extract, map, validate, de-identify, publish) for each institution through Dagster.
    Refuses a workspace that already has a region.yaml or sources unless --force; run
    `hub publish` to publish an existing workspace again. With --json, stdout carries the
    run reports as JSON Lines (one per institution) and everything else goes to stderr.
    """
    from hub.demo.generator import ONBOARDING, generate_onboarding_sources, generate_region
    from hub.errors import CommandFailed

    day = _as_of(as_of)
    existing = [name for name in ("region.yaml", "sources") if (workspace / name).exists()]
    if existing and not force:
        raise CommandFailed(f"{workspace} already holds a region ({' and '.join(existing)}): `hub demo` would overwrite them; "
                            "add --force to regenerate the demo there, or run `hub publish -w "
                            f"{workspace}` to publish it again")
    out = err_console if as_json else console
    with out.status(f"Generating demo region with {patients} people in {workspace}/ ..."):
        counts = generate_region(workspace, patients=patients, seed=seed, as_of=day, file_feeds=True)
        generate_onboarding_sources(workspace, patients=patients, seed=seed, as_of=day)
    total = sum(sum(t.values()) for t in counts.values())
    out.print(f"Demo region: {len(counts)} sources (SQL databases, an HL7 v2 file drop, a FHIR NDJSON export), {total} rows or "
              f"messages, in {workspace}/sources, dated up to a week before {day}")
    out.print(f"[yellow]Manifest signing key: {workspace}/keys/signing.key (mode 600), inside the workspace for the demo only. "
              "In production keep it elsewhere (HUB_SIGNING_KEY_FILE; `hub keys signing-create PATH`) and give verifiers "
              "the public key (`hub keys signing-public`): see docs/lakehouse.md.[/]", highlight=False)
    _report(publish(workspace, out=out), workspace, as_json)
    out.print(f"Not yet connected: {ONBOARDING.name} ({ONBOARDING.id}), HIS and a wide-table LIS in "
              f"{workspace}/sources/onboarding/. docs/onboarding.md walks through connecting it.")


@app.command("publish")
def publish_cmd(
    institutions: list[str] = typer.Argument(None, help="Institution ids (default: all in region.yaml)."),
    workspace: Path = WorkspaceOpt,
    full: bool = typer.Option(False, "--full", help="Ignore watermarks: pull every row again (unchanged rows are not rewritten)."),
    day: str = typer.Option(None, "--day", help="Only the rows of this day (YYYY-MM-DD, the sources' local time) of the "
                            "tables with an update time, in-process; the regular run pulls the rest (docs/deployment.md)."),
    as_json: bool = JsonOpt,
) -> None:
    """Run the main job for an existing workspace: pull each institution's feeds and publish.

    Pulls are incremental: blocks with a watermark read only rows changed since the last
    published run. New institutions in region.yaml are picked up automatically. With
    --json, stdout carries the run reports as JSON Lines (one per institution: counts per
    resource, quarantine causes, elements dropped); progress goes to stderr.
    """
    if day is not None:
        from deid.keys import Keyring
        from hub.pipeline import run_institution
        from hub.region import load_region

        try:
            start = dt.datetime.combine(dt.date.fromisoformat(day), dt.time())
        except ValueError:
            raise typer.BadParameter(f"{day!r} is not a date; expected YYYY-MM-DD", param_hint="--day") from None
        if full:
            raise typer.BadParameter("a day's run reads one day, never every row: leave out --full", param_hint="--day")
        region = load_region(workspace)
        _ensure_key(region, err_console if as_json else console)
        keys = Keyring.load(region.key_file)
        reports = [run_institution(region, iid, keys, window=(start, start + dt.timedelta(days=1))).as_dict()
                   for iid in institutions or [i.id for i in region.institutions]]
        return _report(reports, workspace, as_json)
    _report(publish(workspace, institutions or None, full, out=err_console if as_json else console), workspace, as_json)
