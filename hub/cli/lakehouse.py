"""The lakehouse: `hub lakehouse snapshots|tag`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich import box
from rich.table import Table

from hub.cli.base import JsonOpt, WorkspaceOpt, app, console, print_json, print_json_lines

lakehouse_app = typer.Typer(help="The lakehouse: snapshots, tags, time travel.", no_args_is_help=True)
app.add_typer(lakehouse_app, name="lakehouse")


@lakehouse_app.command("snapshots")
def lakehouse_snapshots(
    table: str = typer.Argument(..., help="Table, e.g. recognition.observation."),
    workspace: Path = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """List a table's snapshots: when, which run, how many records, which tags.

    Snapshot ids and run ids are printed in full (they wrap rather than being cut), so they
    can be copied into `hub views run --as-of` or `hub audit adopt`. With --json, JSON Lines:
    one snapshot per line.
    """
    from hub.lakehouse.snapshots import history
    from hub.lakehouse.tables import open_catalog
    from hub.region import load_region

    region = load_region(workspace)
    rows = history(open_catalog(region.catalog_url, region.warehouse), table)
    if as_json:
        print_json_lines(rows)
        return
    t = Table(title=f"Snapshots of {table}", box=box.SIMPLE_HEAD, show_edge=False)
    t.add_column("snapshot id", no_wrap=True, min_width=19)  # never cut: it is what --as-of and audit adopt take
    t.add_column("at (UTC)", no_wrap=True, min_width=16)
    t.add_column("operation", no_wrap=True)
    t.add_column("records", justify="right", no_wrap=True)
    t.add_column("run, tags", overflow="fold")  # wraps rather than cuts
    for h in rows:
        at = h["at"][:16].replace("T", " ")
        t.add_row(str(h["snapshot_id"]), at, h["operation"], str(h["records"]),
                  "\n".join([h["run_id"] or "(no run)", *(f"tag: {tag}" for tag in h["tags"])]))
    console.print(t)


@lakehouse_app.command("tag")
def lakehouse_tag(
    name: str = typer.Argument(..., help="Tag name, e.g. 2026-11-release (immutable)."),
    zone: str = typer.Option("recognition", "--zone", help="Zone whose tables to tag."),
    workspace: Path = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Tag the current snapshot of every table of a zone, so training sets can pin to it.

    With --json: one document, {table: snapshot id}.
    """
    from hub.lakehouse.snapshots import tag_zone
    from hub.lakehouse.tables import open_catalog
    from hub.region import load_region

    region = load_region(workspace)
    tagged = tag_zone(open_catalog(region.catalog_url, region.warehouse), zone, name)
    if as_json:
        print_json(tagged)
        return
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
