"""The lakehouse: `hub lakehouse snapshots|tag`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from hub.cli.base import WorkspaceOpt, app, console

lakehouse_app = typer.Typer(help="The lakehouse: snapshots, tags, time travel.", no_args_is_help=True)
app.add_typer(lakehouse_app, name="lakehouse")


@lakehouse_app.command("snapshots")
def lakehouse_snapshots(
    table: str = typer.Argument(..., help="Table, e.g. recognition.observation."),
    workspace: Path = WorkspaceOpt,
) -> None:
    """List a table's snapshots: when, which run, how many records, which tags."""
    from hub.lakehouse.snapshots import history
    from hub.lakehouse.tables import open_catalog
    from hub.region import load_region

    region = load_region(workspace)
    t = Table(title=f"Snapshots of {table}")
    for col in ("snapshot id", "at", "operation", "run", "records", "tags"):
        t.add_column(col)
    for h in history(open_catalog(region.catalog_url, region.warehouse), table):
        t.add_row(str(h["snapshot_id"]), h["at"][:19], h["operation"], h["run_id"] or "", str(h["records"]), ", ".join(h["tags"]))
    console.print(t)


@lakehouse_app.command("tag")
def lakehouse_tag(
    name: str = typer.Argument(..., help="Tag name, e.g. 2026-11-release (immutable)."),
    zone: str = typer.Option("recognition", "--zone", help="Zone whose tables to tag."),
    workspace: Path = WorkspaceOpt,
) -> None:
    """Tag the current snapshot of every table of a zone, so training sets can pin to it."""
    from hub.lakehouse.snapshots import tag_zone
    from hub.lakehouse.tables import open_catalog
    from hub.region import load_region

    region = load_region(workspace)
    tagged = tag_zone(open_catalog(region.catalog_url, region.warehouse), zone, name)
    console.print(f"Tagged {len(tagged)} tables as {name}: " + ", ".join(f"{t}@{sid}" for t, sid in tagged.items()))
