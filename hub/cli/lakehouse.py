"""The lakehouse: `hub lakehouse snapshots|tag|compact|expire|orphans`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich import box
from rich.table import Table

from hub.cli.base import JsonOpt, WorkspaceOpt, app, console, print_json, print_json_lines

lakehouse_app = typer.Typer(help="The lakehouse: snapshots, tags, time travel, maintenance.", no_args_is_help=True)
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
    t.add_column("masked", justify="right", no_wrap=True)
    t.add_column("run, tags", overflow="fold")  # wraps rather than cuts
    for h in rows:
        at = h["at"][:16].replace("T", " ")
        t.add_row(str(h["snapshot_id"]), at, h["operation"], str(h["records"]), str(h["masked"]),
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
    metadata: bool = typer.Option(False, "--metadata", help="Also Avro manifest lists and manifests no snapshot reads (left by `hub lakehouse expire`)."),
) -> None:
    """List (or remove) files no snapshot references: data files left by runs killed before their commit,
    and data files only expired snapshots read.

    Runs clean their own institution's orphans when they find a killed run; this command is
    for the whole warehouse. Exits 1 when orphans were found and not deleted.
    """
    from hub.lakehouse.orphans import delete_orphans, find_metadata_orphans, find_orphans
    from hub.lakehouse.tables import open_catalog
    from hub.region import load_region

    region = load_region(workspace)
    icat = open_catalog(region.catalog_url, region.warehouse)
    namespaces = [ns[0] for ns in icat.list_namespaces()]
    found = find_orphans(icat, namespaces, older_than=older_than)
    if metadata:
        found += find_metadata_orphans(icat, namespaces, older_than=older_than)
    for o in found:
        console.print(f"{o.table}  {o.path}  {o.bytes} bytes", highlight=False, soft_wrap=True)
    if delete:
        console.print(f"{delete_orphans(found)} orphan file(s) removed")
    else:
        console.print(f"{len(found)} orphan file(s)" + (" (hub lakehouse orphans --delete removes them)" if found else ""))
        if found:
            raise typer.Exit(1)


@lakehouse_app.command("compact")
def lakehouse_compact(
    tables: list[str] = typer.Argument(None, help="Tables, e.g. recognition.observation (default: every table)."),
    institution: str = typer.Option(None, "--institution", help="Only this institution's partition."),
    small_mb: float = typer.Option(32, "--small-mb", help="Files smaller than this many MiB are rewritten."),
    min_files: int = typer.Option(2, "--min-files", help="Leave a partition with fewer small files than this alone."),
    lock_wait: float = typer.Option(0, "--wait", help="Seconds to wait for a run holding an institution's lock (else that partition is skipped)."),
    workspace: Path = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Rewrite each partition's small data files into fewer files; the rows do not change.

    Holds each institution's run lock while compacting its partition; a partition whose
    institution is being published is skipped (or waited for with --wait). One signed
    manifest records the compaction. With --json, JSON Lines: one partition per line.
    """
    from hub.lakehouse.maintenance import compact_region
    from hub.region import load_region

    done, manifest = compact_region(load_region(workspace), tables or None, institution, small_bytes=int(small_mb * 1024 * 1024),
                                    min_files=min_files, lock_wait=lock_wait)
    if as_json:
        print_json_lines([c.as_dict() for c in done])
        return
    for c in done:
        if c.snapshot_id is None:
            console.print(f"{c.table} {c.institution}: skipped ({c.skipped})", highlight=False)
        else:
            console.print(f"{c.table} {c.institution}: {c.files_before} files ({c.bytes_before} bytes) -> {c.files_after} "
                          f"({c.bytes_after} bytes), {c.rows} rows unchanged, snapshot {c.snapshot_id}, {c.retries} retries",
                          highlight=False, soft_wrap=True)
    console.print(f"manifest {manifest[0]}" if manifest else "nothing compacted", highlight=False)


@lakehouse_app.command("expire")
def lakehouse_expire(
    tables: list[str] = typer.Argument(None, help="Tables, e.g. recognition.observation (default: every table)."),
    older_than_days: float = typer.Option(7, "--older-than-days", help="Expire snapshots older than this many days ..."),
    keep_last: int = typer.Option(10, "--keep-last", help="... except the last this many, and every snapshot a tag or branch points to."),
    workspace: Path = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Remove old snapshots from the tables' history; tagged snapshots (releases, training sets) are kept.

    Metadata only: no file is deleted. The data files only expired snapshots read become
    orphans: `hub lakehouse orphans --metadata --delete` removes them. One signed manifest
    records what was expired. With --json, JSON Lines: one table per line.
    """
    from hub.lakehouse.maintenance import expire_region
    from hub.region import load_region

    done, manifest = expire_region(load_region(workspace), tables or None, older_than_days=older_than_days, keep_last=keep_last)
    if as_json:
        print_json_lines([e.as_dict() for e in done])
        return
    for e in done:
        console.print(f"{e.table}: {len(e.expired)} snapshot(s) expired, {e.kept} kept"
                      + (f" ({len(e.tagged_kept)} old but tagged)" if e.tagged_kept else ""), highlight=False)
    console.print(f"manifest {manifest[0]}" if manifest else "nothing expired", highlight=False)
