"""Quarantine: `hub quarantine list|show|replay`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from hub.cli.base import WorkspaceOpt, app, console
from hub.errors import NotFound

quarantine_app = typer.Typer(help="Rows that could not be published: encrypted, with reasons in clear.", no_args_is_help=True)
app.add_typer(quarantine_app, name="quarantine")


@quarantine_app.command("list")
def quarantine_list(
    workspace: Path = WorkspaceOpt,
    institution: str = typer.Option(None, "--institution", "-i", help="Only this institution."),
    run_id: str = typer.Option(None, "--run", help="Only this run id."),
    cause: str = typer.Option(None, "--cause", "-c", help="Only entries whose cause contains this text (e.g. 'issued', 'no mapping')."),
    rows: bool = typer.Option(False, "--rows", help="One line per entry, with its full reason (default: a summary by cause)."),
    limit: int = typer.Option(50, "--limit", "-n", min=1, help="With --rows: at most this many entries (the newest)."),
    show_all: bool = typer.Option(False, "--all", help="Include entries already resolved or superseded."),
    as_json: bool = typer.Option(False, "--json", help="JSON Lines, one entry per line (all matching entries; --limit applies with --rows)."),
) -> None:
    """Why rows were rejected: a summary by cause, or the entries themselves (--rows).

    By default only open entries: rows not published yet. Fix the cause (mapping,
    terminology or source data), then `hub quarantine replay`. Entries stored by a run that
    then failed are marked "(failed run)": the run published nothing, so the next run reads
    those rows again. The rows themselves stay encrypted: `hub quarantine show ID`.
    """
    import json
    from collections import Counter

    import sqlalchemy as sa

    from hub import quarantine
    from hub.lineage import runrecord
    from hub.region import load_region

    engine = runrecord.connect(load_region(workspace).catalog_url)
    entries = quarantine.list_rows(engine, run_id, institution, None if show_all else "open")
    if cause:
        entries = [e for e in entries if cause.lower() in e["cause"].lower()]
    run_ids = sorted({e["run_id"] for e in entries})
    with engine.connect() as conn:
        status = dict(conn.execute(sa.select(runrecord.runs.c.run_id, runrecord.runs.c.status).where(runrecord.runs.c.run_id.in_(run_ids))).tuples().all()) if run_ids else {}
    for e in entries:
        e["run_status"] = status.get(e["run_id"], "unknown")
    if rows:
        entries = entries[-limit:]
    if as_json:
        for e in entries:
            print(json.dumps({k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in e.items()}, ensure_ascii=False))
        return
    scope = "" if show_all else " open"
    if not rows:
        groups = Counter((e["institution"], e["source_table"], e["cause"]) for e in entries)
        failed = Counter((e["institution"], e["source_table"], e["cause"]) for e in entries if e["run_status"] == "failed")
        table = Table(title=f"{len(entries)}{scope} quarantined rows by cause (`--rows` lists them, `--cause TEXT` filters)")
        for col, justify in (("rows", "right"), ("institution", "left"), ("table", "left"), ("cause", "left")):
            table.add_column(col, justify=justify, overflow="fold")
        for (inst, tbl, why), n in groups.most_common():
            mark = f" ({failed[(inst, tbl, why)]} from a failed run)" if failed[(inst, tbl, why)] else ""
            table.add_row(str(n), inst, tbl, why + mark)
        console.print(table)
        return
    table = Table(title=f"{len(entries)}{scope} quarantined rows" + (f" (the newest {limit}; --limit to see more)" if len(entries) == limit else ""))
    for col in ("id", "institution", "table", "status", "reason"):
        table.add_column(col, overflow="fold")
    for e in entries:
        state = e["status"] + (" (failed run)" if e["run_status"] == "failed" else "")
        table.add_row(str(e["id"]), e["institution"], e["source_table"], state, e["reason"])
    console.print(table)


@quarantine_app.command("show")
def quarantine_show(
    entry: int = typer.Argument(..., help="Entry id from `hub quarantine list`."),
    workspace: Path = WorkspaceOpt,
    purpose: str = typer.Option("fix a quarantined row", "--purpose", help="Why you open identifiable data (written to the access log)."),
) -> None:
    """Decrypt one quarantined source row, for an authorised operator (needs the master key).

    The row holds identifiable source data: view it only to fix the problem, on a trusted screen.
    """
    import json

    from deid.keys import Keyring
    from hub import quarantine
    from hub.lineage import runrecord
    from hub.region import load_region

    region = load_region(workspace)
    keys = Keyring.load(region.key_file)
    engine = runrecord.connect(region.catalog_url)
    meta = quarantine.list_rows(engine, ids=[entry])
    if not meta:
        raise NotFound(f"no quarantine entry {entry}")
    row = quarantine.open_row(engine, keys, entry, region.key_file)
    m = meta[0]
    from hub.lineage import access

    access.record(engine, "quarantine-show", purpose, {"quarantine_entry": entry, "table": m["source_table"], "rows": 1})
    console.print(f"[bold]entry {entry}[/] {m['institution']} {m['feed']} {m['source_table']} → {m['resource_type']} ({m['status']})")
    console.print(f"reason: {m['reason']}", highlight=False)
    console.print("[yellow]source row (identifiable data, decrypted for you):[/]")
    print(json.dumps(row, ensure_ascii=False, indent=2))


@quarantine_app.command("replay")
def quarantine_replay(
    institution: str = typer.Argument(..., help="Institution whose open entries to replay."),
    entries: list[int] = typer.Option(None, "--id", help="Only these entry ids (repeat --id)."),
    workspace: Path = WorkspaceOpt,
) -> None:
    """Re-run open quarantined rows through the current mapping and publish those that pass.

    Rows are read again from the source by their key, so a fix in the mapping, the
    terminology or the source data all take effect. Rows that still fail get a new entry
    with the current reason.
    """
    from deid.keys import Keyring
    from hub.region import load_region
    from hub.replay import replay

    region = load_region(workspace)
    result = replay(region, institution, Keyring.load(region.key_file), entries or None)
    if result.run is None:
        console.print(f"No open quarantine entries for {institution}.")
        return
    console.print(f"Replay run {result.run.run_id}: [green]{result.published} published[/], "
                  f"[red]{result.still_quarantined} still quarantined[/] (see `hub quarantine list`)")
    if result.not_in_source:
        console.print(f"{len(result.not_in_source)} entries no longer have a row in the source: {result.not_in_source[:20]}")
    if result.no_block:
        console.print(f"{len(result.no_block)} entries match no block of the current mappings: {result.no_block[:20]}")
