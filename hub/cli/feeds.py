"""Feeds: `hub feeds list|check`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from hub.cli.base import JsonOpt, WorkspaceOpt, app, console, print_json_lines

feeds_app = typer.Typer(help="Feeds: the HIS/LIS sources of each institution and their mappings.", no_args_is_help=True)
app.add_typer(feeds_app, name="feeds")


@feeds_app.command("list")
def feeds_list(workspace: Path = WorkspaceOpt, as_json: bool = JsonOpt) -> None:
    """List the institutions and feeds registered in region.yaml (--json: JSON Lines, one feed per line)."""
    from hub.region import load_region

    region = load_region(workspace)
    if as_json:
        print_json_lines({"feed": f"{inst.id}/{feed.name}", "institution": inst.id, "name": inst.name, "kind": feed.kind,
                          "mappings": [m.name for m in getattr(feed, "mappings", None) or ([feed.mapping] if feed.mapping else [])],
                          "source": str(feed.path) if feed.kind in ("ndjson", "hl7v2") else _safe_url(feed.url)}
                         for inst in region.institutions for feed in inst.feeds)
        return
    table = Table(title=f"Feeds of {region.name}")
    for col in ("feed", "institution", "mapping", "source"):
        table.add_column(col)
    for inst in region.institutions:
        for feed in inst.feeds:
            if feed.kind == "ndjson":
                table.add_row(f"{inst.id}/{feed.name}", inst.name, "(FHIR NDJSON: no mapping)", str(feed.path))
            elif feed.kind == "hl7v2":
                table.add_row(f"{inst.id}/{feed.name}", inst.name, ", ".join(m.name for m in feed.mappings),
                              f"HL7 v2 files: {feed.path}" + (f" (default encoding {feed.encoding})" if feed.encoding else ""))
            else:
                table.add_row(f"{inst.id}/{feed.name}", inst.name, feed.mapping.name, _safe_url(feed.url))
    console.print(table)


def _safe_url(url: str) -> str:
    import sqlalchemy as sa

    return sa.engine.make_url(url).render_as_string(hide_password=True)


@feeds_app.command("check")
def feeds_check(
    feed: str = typer.Argument(None, help="INSTITUTION/FEED as in `hub feeds list`, e.g. city-first/lis."),
    workspace: Path = WorkspaceOpt,
    limit: int = typer.Option(1000, "--limit", "-n", min=1, help="Rows to check per mapping block: every k-th row in key order, spread over the table."),
    mapping: Path = typer.Option(None, "--mapping", "-m", help="Check this mapping file instead of the feed's (e.g. a draft)."),
    url: str = typer.Option(None, "--url", help="Source database URL, for a feed not yet in region.yaml."),
    institution: str = typer.Option("new-institution", "--institution", "-i", help="Institution id to use with --url."),
    ruleset_file: Path = typer.Option(None, "--ruleset", "-r", help="De-identify with this ruleset instead of the region's (e.g. the operator's draft)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Dry-run a feed on a sample: map, validate and de-identify without publishing.

    Prints counts per resource, errors grouped by cause with row keys, unmapped codes and
    units with their frequencies, and elements no de-identification rule covers. Runs the
    leak scan of publication on the rows that would publish and prints its hits (masked)
    and the code-system exemptions it used. Exits 1 when any row would be quarantined or
    the leak scan would block publication, so it can gate a change to a mapping.

    \b
    Examples:
      hub feeds check city-first/lis --limit 500
      hub feeds check city-first/lis --mapping mappings/lis_vendor_a_draft.yaml
      hub feeds check --url "postgresql+psycopg://his@10.0.0.5/his" --mapping mappings/his_new.yaml
    """
    import json

    from deid.keys import Keyring, MasterKeyError
    from deid.ruleset import default_ruleset_path
    from hub.feeds import check_feed
    from hub.leakscan import load_canaries
    from hub.region import load_region

    ruleset, keys, canaries = default_ruleset_path(), None, frozenset()
    if url:
        if mapping is None:
            raise typer.BadParameter("--url needs --mapping")
        source, inst_id = url, institution
    else:
        if not feed or "/" not in feed:
            raise typer.BadParameter("give INSTITUTION/FEED (see `hub feeds list`), or --url with --mapping")
        region = load_region(workspace)
        inst_id, feed_name = feed.split("/", 1)
        found = next((f for f in region.institution(inst_id).feeds if f.name == feed_name), None)
        if found is None:
            raise typer.BadParameter(f"{inst_id} has no feed {feed_name!r}")
        source, mapping, ruleset = found.url, mapping or found.mapping, region.ruleset
        canaries = load_canaries(region.workspace)
        try:
            keys = Keyring.load(region.key_file)
        except MasterKeyError:
            keys = None  # a throwaway key: nothing is stored
    if not url and found.kind == "ndjson":
        from hub.feeds import check_ndjson_feed

        result = check_ndjson_feed(found, inst_id, ruleset_file or ruleset, limit=limit, keys=keys, canaries=canaries)
    elif not url and found.kind == "hl7v2":
        from hub.feeds import check_hl7v2_feed

        if mapping != found.mapping:  # --mapping: check a draft instead of the feed's mapping files
            import dataclasses

            found = dataclasses.replace(found, mapping=mapping, mappings=(mapping,))
        result = check_hl7v2_feed(found, inst_id, ruleset_file or ruleset, limit=limit, keys=keys, canaries=canaries)
    else:
        result = check_feed(mapping, source, inst_id, ruleset_file or ruleset, limit=limit, keys=keys, canaries=canaries)
    failed = bool(result.quarantined or result.blocked)
    if as_json:
        print(json.dumps(result.as_dict(), ensure_ascii=False, indent=2))
        raise typer.Exit(1 if failed else 0)
    _print_feed_check(result, limit)
    raise typer.Exit(1 if failed else 0)


def _print_feed_check(result, limit: int) -> None:
    t = Table(title=f"{result.mapping}: a sample of at most {limit} rows per block, spread over each table; nothing published")
    for col, justify in (("table", "left"), ("resource", "left"), ("rows", "right"), ("would publish", "right"), ("would quarantine", "right")):
        t.add_column(col, justify=justify, no_wrap=col != "table")
    for b in result.blocks:
        t.add_row(b.table, b.resource, str(b.rows), str(b.would_publish), f"[red]{b.would_quarantine}[/]" if b.would_quarantine else "0")
    console.print(t)
    for b in result.blocks:
        console.print(f"  {b.table} → {b.resource}: {b.sample}", highlight=False)
    if result.causes:
        console.print("[bold]Errors by cause[/] (row keys of the first rows; the first full reason below each):")
        for g in result.causes:
            console.print(f"  [red]{g.count:>6}[/]  {g.cause}", highlight=False)
            console.print(f"          rows: {', '.join(g.rows)}{' ...' if g.count > len(g.rows) else ''}", highlight=False)
            console.print(f"          e.g.  {g.example}", highlight=False)
    if result.unmapped:
        u = Table(title="Codes and units with no mapping (add them to the terminology file)")
        for col in ("terminology", "local value", "rows"):
            u.add_column(col)
        for tname, value, n in result.unmapped:
            u.add_row(tname, value, str(n))
        console.print(u)
    if result.uncovered:
        console.print("Elements no de-identification rule covers (dropped, deny by default): "
                      + ", ".join(f"{e} ×{n}" for e, n in result.uncovered), highlight=False)
    for system, kinds in result.exempted.items():
        console.print(f"Leak scan exemption used: codes of {system} shaped like "
                      + ", ".join(f"{k} ×{n}" for k, n in kinds.items()) + " (leak_scan in the ruleset)", highlight=False)
    if result.blocked:
        console.print(f"[bold red]Leak scan would block publication[/]: {len(result.leaks)} finding(s), values masked:")
        for hit in result.leaks[:20]:
            console.print(f"  {hit}", highlight=False, markup=False)
        if len(result.leaks) > 20:
            console.print(f"  ... and {len(result.leaks) - 20} more", highlight=False)
        console.print("  An identifier the ruleset lets through (fix the ruleset), or a code shaped like one "
                      "(declare its system under leak_scan.exempt_code_systems in the ruleset).", highlight=False)
    if result.quarantined:
        verdict = "[red]would quarantine rows: fix the causes above[/]"
    elif result.blocked:
        verdict = "[red]the leak scan would block publication: see its findings above[/]"
    else:
        verdict = "[green]all rows would publish[/]"
    console.print(verdict)
