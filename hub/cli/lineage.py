"""Lineage: `hub lineage trace`."""

from __future__ import annotations

from pathlib import Path

import typer

from hub.cli.base import WorkspaceOpt, app, console

lineage_app = typer.Typer(help="Lineage: where a published row came from and where it went.", no_args_is_help=True)
app.add_typer(lineage_app, name="lineage")


@lineage_app.command("trace")
def lineage_trace(
    resource: str = typer.Argument(..., help="Type/id of a published resource, e.g. Observation/94c2...."),
    workspace: Path = WorkspaceOpt,
    source_key: list[str] = typer.Option(None, "--source-key", help="Check a candidate source key (repeat for composite keys)."),
    as_json: bool = typer.Option(False, "--json", help="Print the chain as JSON."),
) -> None:
    """Trace a published row back to its source table, run, mapping, rules, key and signed
    manifest, and forward to the research releases that contain it."""
    import json

    from deid.keys import Keyring
    from hub.lineage.trace import trace
    from hub.region import load_region

    region = load_region(workspace)
    chain = trace(region, Keyring.load(region.key_file), resource, source_key or None)
    if as_json:
        print(json.dumps(chain, ensure_ascii=False, indent=2))
        return
    row = chain["row"]
    console.print(f"[bold]{resource}[/] in {chain['table']} ({row['institution']})", highlight=False)
    console.print(f"  source       {row['source_system']} table {row['source_table']}, source-key hash {row['source_key_hash']}", highlight=False)
    if "source_key_matches" in chain:
        console.print(f"  source key   {'matches' if chain['source_key_matches'] else '[red]does not match[/]'} the given key", highlight=False)
    if "run" in chain:
        r = chain["run"]
        console.print(f"  run          {r['run_id']} {r['status']} ({r['started_at']} .. {r['finished_at']}), code {r['code_version']}", highlight=False)
    if "counts" in chain:
        c = chain["counts"]
        console.print(f"  feed         {c['feed']}: {c['rows_read']} read = {c['published']} published + {c['quarantined']} quarantined", highlight=False)
    if "mapping" in chain:
        m = chain["mapping"]
        state = "unchanged since" if m["unchanged"] else f"[yellow]changed since[/] (now {m['current']})"
        console.print(f"  mapping      {m['recorded']} ({state}) {m['file']}", highlight=False)
    console.print(f"  rules, key   {row['ruleset_version']}, key {row['key_id']}", highlight=False)
    if "manifest" in chain:
        m = chain["manifest"]
        console.print(f"  manifest     #{m['seq']} {m['hash'][:16]}… signed with key {m['signed_with_key']}; data file "
                      f"{'intact' if m['data_file_intact'] else '[red]ALTERED[/]'}", highlight=False)
    if chain.get("research_releases") is not None:
        console.print(f"  released in  {', '.join(chain['research_releases']) or '(no research release)'}", highlight=False)
    for ts in chain.get("training_sets") or []:
        console.print(f"  training set {ts['trainset']} ({ts['split']} split, tag {ts['tag']}) in {ts['out']}", highlight=False)
