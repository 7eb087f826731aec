"""Audit: `hub audit verify|access`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from hub.cli.base import JsonOpt, WorkspaceOpt, app, console, print_json_lines

audit_app = typer.Typer(help="Audit for the data-exchange operator: signed manifests, verification.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(
    workspace: Path = WorkspaceOpt,
    trusted_keys: Path = typer.Option(None, "--trusted-keys", help="Trusted signing keys file (YAML; keep your copy outside the workspace). Default: HUB_TRUSTED_KEYS_FILE, else trusted_keys_file in region.yaml."),
    public_key: list[str] = typer.Option(None, "--public-key", help="A trusted signing public key (64 hex, `hub keys signing-public`), valid for every manifest; repeatable. Overrides --trusted-keys."),
    expect_head: str = typer.Option(None, "--expect-head", help="SEQ:HASH of the chain head you recorded earlier: the chain must still hold it (catches truncation and rewrites)."),
    last: int = typer.Option(None, "--last", min=1, help="Re-hash the files and Iceberg manifests of only the last N manifests (the chain, every snapshot's accounting, the current files and manifests, table metadata, the index, the access log and release records are always checked in full)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Verify the publication history and the live tables against it.

    Checks manifest hashes, chain links and Ed25519 signatures against the TRUSTED public
    keys (never the key a manifest row carries); that every snapshot of every table is
    recorded by a manifest, that each table's current snapshot is the newest the chain
    records and reads exactly the data files the chain says are live, through the Iceberg
    manifests the chain recorded; that each table's schema, partition spec, sort order,
    properties and tags are the last recorded; and re-hashes every recorded file. Also
    compares the recognition index's whole content with its last build's record, re-walks
    the access log's hash chain against the heads manifests recorded, and compares each
    release's hub_releases row with its manifest. Prints the chain head as SEQ:HASH: record
    it outside the workspace and pass it back with --expect-head.

    Exits 1 and names the table, snapshot, manifest and file of every break.
    """
    import json

    from hub.lineage.audit import verify_region
    from hub.lineage.manifests import parse_head
    from hub.lineage.signing import trusted_for
    from hub.region import load_region

    region = load_region(workspace)
    try:
        expected = parse_head(expect_head) if expect_head else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    trusted = trusted_for(region, trusted_keys, public_key or ())
    report = verify_region(region, trusted, last=last, expect_head=expected)
    if as_json:
        print(json.dumps(report.as_dict(), ensure_ascii=False, indent=2))
    else:
        for b in report.breaks:
            console.print(f"[red]BROKEN[/] {b}", highlight=False, soft_wrap=True)
        for n in report.notes:
            console.print(f"[yellow]note[/] {n}", highlight=False, soft_wrap=True)
        for o in report.orphans[:10]:
            console.print(f"  orphan {o}", highlight=False, soft_wrap=True)
        verdict = "[green]intact[/]" if report.ok else f"[red]{len(report.breaks)} break(s)[/]"
        log = report.access_log
        console.print(f"access log: {log.get('entries', 0)} entries, {log.get('anchored', 0)} anchored by a manifest; "
                      f"releases checked: {report.releases}; stores compared: {', '.join(report.stores) or 'none'}", highlight=False)
        head = f"{report.head[0]}:{report.head[1]}" if report.head else "none (empty chain)"
        console.print(f"{report.manifests} manifests, {report.tables} tables, {report.snapshots} snapshots, "
                      f"{report.files} files re-hashed, signatures checked against {trusted.source}: {verdict}", highlight=False)
        console.print(f"chain head: {head}", highlight=False, soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)


@audit_app.command("adopt")
def audit_adopt(
    table: str = typer.Argument(..., help="Table, e.g. recognition.observation."),
    snapshots: list[int] = typer.Argument(None, help="Snapshot ids `hub audit verify` reports as in no manifest; none to accept only a reviewed metadata change."),
    reason: str = typer.Option(..., "--reason", help="Why these snapshots are legitimate (recorded in the signed manifest)."),
    workspace: Path = WorkspaceOpt,
) -> None:
    """Record snapshots no manifest accounts for, after you reviewed them (a run killed between its commit and its manifest).

    Needs the signing key. The manifest says the snapshots were adopted and why, with their
    files' hashes as they are now, and the table's metadata (schema, spec, sort order,
    properties, tags) as it is now: with no snapshot ids, it only accepts a metadata change
    you reviewed (a property an operator set). verify lists adoptions in its notes.
    """
    from pyiceberg.exceptions import NoSuchTableError

    from hub.errors import NotFound
    from hub.lakehouse.tables import open_catalog
    from hub.lineage import runrecord
    from hub.lineage.manifests import adopt
    from hub.lineage.signing import load_signer
    from hub.region import load_region

    region = load_region(workspace)
    signer = load_signer(region)
    try:
        target = open_catalog(region.catalog_url, region.warehouse).load_table(table)
    except NoSuchTableError:
        raise NotFound(f"no table {table} in the catalog of {workspace}") from None
    try:
        seq, digest = adopt(runrecord.connect(region.catalog_url), signer, target, snapshots or [], reason)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    console.print(f"Adopted {len(snapshots or [])} snapshot(s) and the current metadata of {table} in manifest {seq}; "
                  f"chain head {seq}:{digest}", highlight=False, soft_wrap=True)


@audit_app.command("access")
def audit_access(
    workspace: Path = WorkspaceOpt,
    who: str = typer.Option(None, "--who", help="Only this actor."),
    action: str = typer.Option(None, "--action", help="Only this action (research-release, quarantine-show, lineage-trace ...)."),
    since: str = typer.Option(None, "--since", help="Only from this date (YYYY-MM-DD)."),
    fhir: bool = typer.Option(False, "--fhir", help="Print FHIR R4 AuditEvent NDJSON instead of a table."),
    as_json: bool = JsonOpt,
) -> None:
    """List the access log: who read what through hub, when and why (AuditEvent NDJSON with --fhir, the entries as JSON Lines with --json)."""
    import datetime as dt
    import json

    from hub.lineage import access, runrecord
    from hub.region import load_region

    start = dt.datetime.fromisoformat(since).replace(tzinfo=dt.UTC) if since else None
    rows = access.entries(runrecord.connect(load_region(workspace).catalog_url), who, action, start)
    if fhir:
        for event in access.as_audit_events(rows):
            print(json.dumps(event, ensure_ascii=False))
        return
    if as_json:
        print_json_lines(rows)
        return
    table = Table(title=f"Access log ({len(rows)} entries)")
    for col in ("at", "who", "action", "purpose", "what", "outcome"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["at"].strftime("%Y-%m-%d %H:%M:%S"), r["who"], r["action"], r["purpose"], json.dumps(r["what"], ensure_ascii=False), r["outcome"])
    console.print(table)
