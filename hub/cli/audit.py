"""Audit: `hub audit verify|access`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from hub.cli.base import WorkspaceOpt, app, console

audit_app = typer.Typer(help="Audit for the data-exchange operator: signed manifests, verification.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(
    workspace: Path = WorkspaceOpt,
    last: int = typer.Option(None, "--last", help="Re-hash data files of only the last N manifests (the chain and signatures are always checked in full)."),
) -> None:
    """Verify the publication history: manifest hashes, chain links, Ed25519 signatures, data file hashes.

    Run it after every publication (the Dagster check does) and before handing data over.

    Exits 1 and names the manifest and file of every break.
    """
    from deid.keys import Keyring
    from hub.lineage import catalog as runcat
    from hub.lineage.manifests import verify
    from hub.region import load_region

    region = load_region(workspace)
    report = verify(runcat.connect(region.catalog_url), Keyring.load(region.key_file), region.key_file, last)
    for b in report.breaks:
        console.print(f"[red]BROKEN[/] {b}", highlight=False, soft_wrap=True)
    verdict = "[green]intact[/]" if report.ok else f"[red]{len(report.breaks)} break(s)[/]"
    console.print(f"{report.manifests} manifests, {report.files} data files re-hashed: {verdict}")
    if not report.ok:
        raise typer.Exit(1)


@audit_app.command("access")
def audit_access(
    workspace: Path = WorkspaceOpt,
    who: str = typer.Option(None, "--who", help="Only this actor."),
    action: str = typer.Option(None, "--action", help="Only this action (research-release, quarantine-show, lineage-trace ...)."),
    since: str = typer.Option(None, "--since", help="Only from this date (YYYY-MM-DD)."),
    fhir: bool = typer.Option(False, "--fhir", help="Print FHIR R4 AuditEvent NDJSON instead of a table."),
) -> None:
    """List the access log: who read what through hub, when and why (AuditEvent NDJSON with --fhir)."""
    import datetime as dt
    import json

    from hub.lineage import access
    from hub.lineage import catalog as runcat
    from hub.region import load_region

    start = dt.datetime.fromisoformat(since).replace(tzinfo=dt.UTC) if since else None
    rows = access.entries(runcat.connect(load_region(workspace).catalog_url), who, action, start)
    if fhir:
        for event in access.as_audit_events(rows):
            print(json.dumps(event, ensure_ascii=False))
        return
    table = Table(title=f"Access log ({len(rows)} entries)")
    for col in ("at", "who", "action", "purpose", "what", "outcome"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["at"].strftime("%Y-%m-%d %H:%M:%S"), r["who"], r["action"], r["purpose"], json.dumps(r["what"], ensure_ascii=False), r["outcome"])
    console.print(table)
