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


@lakehouse_app.command("orphans")
def lakehouse_orphans(
    workspace: Path = WorkspaceOpt,
    delete: bool = typer.Option(False, "--delete", help="Remove the files listed (else only list them)."),
    older_than: int = typer.Option(3600, "--older-than", help="Only files older than this many seconds (a live run may be about to commit younger ones)."),
) -> None:
    """List (or remove) data files no snapshot references: left by runs killed before their commit.

    Runs clean their own institution's orphans when they find a killed run; this command is
    for the whole warehouse. Exits 1 when orphans were found and not deleted.
    """
    from hub.lakehouse.orphans import delete_orphans, find_orphans
    from hub.lakehouse.tables import open_catalog
    from hub.region import load_region

    region = load_region(workspace)
    icat = open_catalog(region.catalog_url, region.warehouse)
    namespaces = [ns[0] for ns in icat.list_namespaces()]
    found = find_orphans(icat, namespaces, older_than=older_than)
    for o in found:
        console.print(f"{o.table}  {o.path}  {o.bytes} bytes", highlight=False, soft_wrap=True)
    if delete:
        console.print(f"{delete_orphans(found)} orphan file(s) removed")
    else:
        console.print(f"{len(found)} orphan file(s)" + (" (hub lakehouse orphans --delete removes them)" if found else ""))
        if found:
            raise typer.Exit(1)
