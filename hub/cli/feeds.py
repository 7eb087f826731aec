"""Feeds: `hub feeds list|check`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from hub.cli.base import WorkspaceOpt, app, console

feeds_app = typer.Typer(help="Feeds: the HIS/LIS sources of each institution and their mappings.", no_args_is_help=True)
app.add_typer(feeds_app, name="feeds")


@feeds_app.command("list")
def feeds_list(workspace: Path = WorkspaceOpt) -> None:
    """List the institutions and feeds registered in region.yaml."""
    from hub.region import load_region

    region = load_region(workspace)
    table = Table(title=f"Feeds of {region.name}")
    for col in ("feed", "institution", "mapping", "source"):
        table.add_column(col)
    for inst in region.institutions:
        for feed in inst.feeds:
            table.add_row(f"{inst.id}/{feed.name}", inst.name, feed.mapping.name, _safe_url(feed.url))
    console.print(table)


def _safe_url(url: str) -> str:
    import sqlalchemy as sa

    return sa.engine.make_url(url).render_as_string(hide_password=True)


@feeds_app.command("check")
def feeds_check(
    feed: str = typer.Argument(None, help="INSTITUTION/FEED as in `hub feeds list`, e.g. city-first/lis."),
    workspace: Path = WorkspaceOpt,
    limit: int = typer.Option(1000, "--limit", "-n", min=1, help="Rows to check per mapping block."),
    mapping: Path = typer.Option(None, "--mapping", "-m", help="Check this mapping file instead of the feed's (e.g. a draft)."),
    url: str = typer.Option(None, "--url", help="Source database URL, for a feed not yet in region.yaml."),
    institution: str = typer.Option("new-institution", "--institution", "-i", help="Institution id to use with --url."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Dry-run a feed on a sample: map, validate and de-identify without publishing.

    Prints counts per resource, errors grouped by cause with row keys, unmapped codes and
    units with their frequencies, and elements no de-identification rule covers. Exits 1
    when any row would be quarantined, so it can gate a change to a mapping.

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
    from hub.region import load_region

    ruleset, keys = default_ruleset_path(), None
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
        try:
            keys = Keyring.load(region.key_file)
        except MasterKeyError:
            keys = None  # a throwaway key: nothing is stored
    result = check_feed(mapping, source, inst_id, ruleset, limit=limit, keys=keys)
    if as_json:
        print(json.dumps(result.as_dict(), ensure_ascii=False, indent=2))
        raise typer.Exit(1 if result.quarantined else 0)
    _print_feed_check(result, limit)
    raise typer.Exit(1 if result.quarantined else 0)


def _print_feed_check(result, limit: int) -> None:
    t = Table(title=f"{result.mapping}: first {limit} rows per block, nothing published")
    for col, justify in (("table", "left"), ("resource", "left"), ("rows", "right"), ("would publish", "right"), ("would quarantine", "right")):
        t.add_column(col, justify=justify, no_wrap=col != "table")
    for b in result.blocks:
        t.add_row(b.table, b.resource, str(b.rows), str(b.would_publish), f"[red]{b.would_quarantine}[/]" if b.would_quarantine else "0")
    console.print(t)
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
    verdict = "[red]would quarantine rows: fix the causes above[/]" if result.quarantined else "[green]all rows would publish[/]"
    console.print(verdict)
