"""The ``hub`` command: ``hub demo`` builds a demo region and publishes it; more nouns follow.

Commands are ``hub <noun> <verb>`` where there is a noun; reports are Rich tables and long
work shows progress bars with counts and rates.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from hub.region import DEFAULT_WORKSPACE

app = typer.Typer(
    help="hub: pull HIS/LIS records, map them to FHIR R4, de-identify, and publish a lakehouse.\n\n"
    "Start with `hub demo`, which builds a three-institution demo region in .hub/ and publishes it.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()

WorkspaceOpt = typer.Option(DEFAULT_WORKSPACE, "--workspace", "-w", help="Workspace folder: region.yaml, catalog, warehouse, demo sources.")


class _RichProgress:
    """Adapts the pipeline's progress protocol to a Rich progress display."""

    def __init__(self, progress: Progress):
        self.progress, self.task = progress, None

    def start(self, label: str, total: int) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=self.progress.tasks[-1].total)
        self.task = self.progress.add_task(label, total=total or 1)

    def advance(self, n: int) -> None:
        if self.task is not None:
            self.progress.advance(self.task, n)


def _ensure_key(region) -> None:
    from deid.keys import ENV_KEY, ENV_KEY_FILE, create_key_file

    if not os.environ.get(ENV_KEY) and not os.environ.get(ENV_KEY_FILE) and not region.key_file.exists():
        create_key_file(region.key_file)
        console.print(f"[yellow]Created a new master key at {region.key_file} (mode 600). Keep it out of version control; "
                      f"in production set {ENV_KEY} or {ENV_KEY_FILE} instead.[/]")


def publish(workspace: Path, institution_ids: list[str] | None = None, full: bool = False) -> list:
    """Run the main job for each institution partition through Dagster, in-process, with progress bars.

    hub itself does not depend on Dagster: the launch lives in dagster_project.launch, which
    the command line hands off to.
    """
    import importlib

    from hub import progress as hub_progress
    from hub.lineage import catalog as runcat
    from hub.region import load_region

    os.environ["HUB_WORKSPACE"] = str(workspace)
    launch = importlib.import_module("dagster_project.launch")
    region = load_region(workspace)
    _ensure_key(region)
    ids = institution_ids or [i.id for i in region.institutions]
    reports = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        hub_progress.set_reporter(_RichProgress(bar))
        try:
            if not launch.materialize_institutions(workspace, ids, full):
                raise typer.Exit(1)
        finally:
            hub_progress.set_reporter(None)
    from hub.recognition.index import build, connect, index_url

    build(region, connect(index_url(region)))  # the recognition index follows every publish
    engine = runcat.connect(region.catalog_url)
    for iid in ids:
        reports.append(_latest_report(engine, iid))
    return reports


def _latest_report(engine, institution: str) -> dict:
    import json

    import sqlalchemy as sa

    from hub.lineage.catalog import runs

    with engine.connect() as conn:
        row = conn.execute(
            sa.select(runs.c.report).where(runs.c.institution == institution, runs.c.status == "succeeded").order_by(runs.c.started_at.desc()).limit(1)
        ).one()
    return json.loads(row.report)


def print_report(reports: list[dict], workspace: Path) -> None:
    table = Table(title="Run report: rows read = published + quarantined")
    table.add_column("institution", no_wrap=True)
    table.add_column("resource", no_wrap=True)
    for col in ("read", "published", "quarantined", "written", "unchanged"):
        table.add_column(col, justify="right")
    causes: dict[str, int] = {}
    uncovered: dict[str, int] = {}
    for rep in reports:
        for i, (rt, c) in enumerate(rep["by_resource"].items()):
            table.add_row(rep["institution"] if i == 0 else "", rt, str(c["read"]), str(c["published"]),
                          f"[red]{c['quarantined']}[/]" if c["quarantined"] else "0", str(c["written"]), str(c["unchanged"]))
        table.add_section()
        for k, v in rep["quarantine_causes"].items():
            causes[k] = causes.get(k, 0) + v
        for k, v in rep["uncovered_elements_dropped"].items():
            uncovered[k] = uncovered.get(k, 0) + v
    console.print(table)
    if causes:
        ct = Table(title="Quarantine causes (each row's reason: `hub quarantine list`; rows stay encrypted)")
        ct.add_column("rows", justify="right")
        ct.add_column("cause")
        for k, v in sorted(causes.items(), key=lambda kv: -kv[1]):
            ct.add_row(str(v), k)
        console.print(ct)
    if uncovered:
        console.print("Elements no de-identification rule covers (dropped, deny by default): "
                      + ", ".join(f"{k} ×{v}" for k, v in sorted(uncovered.items())))
    region_ws = workspace.resolve()
    console.print(f"Lakehouse: Iceberg tables in namespace [bold]recognition[/], catalog {region_ws / 'catalog.db'}, "
                  f"Parquet files under {region_ws / 'warehouse'}")


@app.command()
def demo(
    workspace: Path = WorkspaceOpt,
    patients: int = typer.Option(300, "--patients", "-n", min=1, help="Number of people in the demo population."),
    seed: int = typer.Option(20261122, help="Random seed; the same seed gives the same region."),
) -> None:
    """Generate a demo region (3 institutions, HIS + LIS each, 2 vendor schemas) and publish it.

    Writes SQLite source databases and region.yaml into the workspace, then runs the main
    job (extract, map, validate, de-identify, publish) for each institution through Dagster.
    Running it again regenerates the same sources and publishes nothing new.
    """
    from hub.demo.generator import ONBOARDING, generate_onboarding_sources, generate_region

    with console.status(f"Generating demo region with {patients} people in {workspace}/ ..."):
        counts = generate_region(workspace, patients=patients, seed=seed)
        generate_onboarding_sources(workspace, patients=patients, seed=seed)
    total = sum(sum(t.values()) for t in counts.values())
    console.print(f"Demo region: {len(counts)} source databases, {total} rows, in {workspace}/sources")
    print_report(publish(workspace), workspace)
    console.print(f"Not yet connected: {ONBOARDING.name} ({ONBOARDING.id}), HIS and a wide-table LIS in "
                  f"{workspace}/sources/onboarding/. docs/onboarding.md walks through connecting it.")


@app.command("publish")
def publish_cmd(
    institutions: list[str] = typer.Argument(None, help="Institution ids (default: all in region.yaml)."),
    workspace: Path = WorkspaceOpt,
    full: bool = typer.Option(False, "--full", help="Ignore watermarks: pull every row again (unchanged rows are not rewritten)."),
) -> None:
    """Run the main job for an existing workspace: pull each institution's feeds and publish.

    Pulls are incremental: blocks with a watermark read only rows changed since the last
    published run. New institutions in region.yaml are picked up automatically.
    """
    print_report(publish(workspace, institutions or None, full), workspace)


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


quarantine_app = typer.Typer(help="Rows that could not be published: encrypted, with reasons in clear.", no_args_is_help=True)
app.add_typer(quarantine_app, name="quarantine")


@quarantine_app.command("list")
def quarantine_list(
    workspace: Path = WorkspaceOpt,
    institution: str = typer.Option(None, "--institution", "-i", help="Only this institution."),
    run_id: str = typer.Option(None, "--run", help="Only this run id."),
    show_all: bool = typer.Option(False, "--all", help="Include entries already resolved or superseded."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON lines for machines."),
) -> None:
    """List quarantined rows with their reasons (the rows themselves stay encrypted).

    By default only open entries: rows not published yet. Fix the cause (mapping,
    terminology or source data), then `hub quarantine replay`.
    """
    import json

    from hub import quarantine
    from hub.lineage import catalog as runcat
    from hub.region import load_region

    rows = quarantine.list_rows(runcat.connect(load_region(workspace).catalog_url), run_id, institution, None if show_all else "open")
    if as_json:
        for r in rows:
            console.print_json(json.dumps({k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r.items()}, ensure_ascii=False))
        return
    table = Table(title=f"{len(rows)} quarantined rows" + ("" if show_all else " (open)"))
    for col in ("id", "institution", "table", "resource", "status", "reason"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(str(r["id"]), r["institution"], r["source_table"], r["resource_type"], r["status"], r["reason"])
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
    from hub.lineage import catalog as runcat
    from hub.region import load_region

    region = load_region(workspace)
    keys = Keyring.load(region.key_file)
    engine = runcat.connect(region.catalog_url)
    meta = quarantine.list_rows(engine, ids=[entry])
    if not meta:
        raise KeyError(f"no quarantine entry {entry}")
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


research_app = typer.Typer(help="The research zone: releases built from the recognition zone behind a risk gate.", no_args_is_help=True)
app.add_typer(research_app, name="research")


@research_app.command("release")
def research_release(
    workspace: Path = WorkspaceOpt,
    name: str = typer.Option(None, "--name", help="Release name, also the Iceberg tag on every research table."),
    k: int = typer.Option(5, "--k", min=2, help="Smallest class size required over the quasi-identifiers (birth year, sex)."),
    max_suppression: float = typer.Option(0.05, "--max-suppression", min=0.0, max=1.0, help="Largest share of people that may be suppressed."),
    purpose: str = typer.Option("research release", "--purpose", help="Why the release is made (written to the access log)."),
) -> None:
    """Build a research release: re-key, shift dates, generalize, check k-anonymity, publish or refuse.

    Birth years are generalized step by step (year, 5-, 10-, 20-year bands) until k holds,
    then people in classes smaller than k are suppressed within the budget. A release that
    cannot meet k is not published; its risk report is kept either way.
    """
    from deid.keys import Keyring
    from hub.region import load_region
    from hub.research import build_release

    region = load_region(workspace)
    release = build_release(region, Keyring.load(region.key_file), name=name, k=k, max_suppression=max_suppression, purpose=purpose)
    r = release.report
    t = Table(title=f"Risk report: release {release.name} ({release.status})")
    for col in ("birth-year band", "smallest class", "classes", "people below k", "share"):
        t.add_column(col, justify="right")
    for lv in r.levels:
        t.add_row(f"{lv.band} y", str(lv.k), str(lv.classes), str(lv.people_below_k), f"{lv.share_below_k:.1%}")
    console.print(t)
    console.print(f"{r.people} people, quasi-identifiers {', '.join(r.quasi_identifiers)}; {r.reason}", highlight=False)
    if release.status != "published":
        raise typer.Exit(1)
    console.print("Published: " + ", ".join(f"research.{t.lower()} {n}" for t, n in release.rows.items()))


deid_app = typer.Typer(help="De-identification rulesets.", no_args_is_help=True)
app.add_typer(deid_app, name="deid")


@deid_app.command("import-anonymizer")
def deid_import_anonymizer(
    config: Path = typer.Argument(..., exists=True, help="A Microsoft FHIR anonymizer configuration (JSON)."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the hub ruleset (YAML)."),
) -> None:
    """Translate a Microsoft FHIR anonymizer configuration into a hub ruleset.

    Common path forms and the keep, redact, cryptoHash, encrypt, dateShift and perturb
    methods translate; everything else is listed so a reviewer can write it by hand.
    The result is validated like any ruleset before it is written.
    """
    import json

    import yaml

    from deid.migrate import as_ruleset, import_anonymizer
    from deid.ruleset import load_ruleset

    report = import_anonymizer(json.loads(config.read_text(encoding="utf-8")))
    output.write_text("# Imported from " + config.name + " by `hub deid import-anonymizer`; review every rule.\n"
                      + yaml.safe_dump(as_ruleset(report), allow_unicode=True, sort_keys=False), encoding="utf-8")
    load_ruleset(output, "recognition")
    console.print(f"Wrote {len(report.rules)} rules to {output}")
    for line in report.untranslated:
        console.print(f"[yellow]not translated:[/] {line}", highlight=False)
    for note in report.notes:
        console.print(f"note: {note}", highlight=False)


keys_app = typer.Typer(help="The master key: rotation and re-pseudonymization.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("rotate")
def keys_rotate(workspace: Path = WorkspaceOpt) -> None:
    """Retire the workspace's master key and create a new one.

    The old key is kept as keys/retired/<key id>.key, so quarantined rows and encrypted
    values sealed under it stay readable. New pseudonyms use the new key; run
    `hub keys repseudonymize` to re-key what is already published.
    """
    from deid.keys import ENV_KEY, rotate
    from hub.region import load_region

    if os.environ.get(ENV_KEY):
        raise typer.BadParameter(f"the key comes from {ENV_KEY}: rotate it where it is managed, keeping the old value as a retired key file")
    old, new = rotate(load_region(workspace).key_file)
    console.print(f"Rotated master key {old} -> {new}. Published rows still carry key id {old} until re-pseudonymized.")


@keys_app.command("repseudonymize")
def keys_repseudonymize(
    institutions: list[str] = typer.Argument(None, help="Institution ids (default: all)."),
    workspace: Path = WorkspaceOpt,
) -> None:
    """Re-publish under the current key and remove rows made with older keys (old snapshots stay readable)."""
    from deid.keys import Keyring
    from hub.pipeline import repseudonymize
    from hub.region import load_region

    region = load_region(workspace)
    keys = Keyring.load(region.key_file)
    for iid in institutions or [i.id for i in region.institutions]:
        report, removed = repseudonymize(region, iid, keys)
        published = sum(c["published"] for c in report.by_resource().values())
        console.print(f"{iid}: {published} rows published under key {keys.key_id}, {removed} rows under older keys removed")


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


recognition_app = typer.Typer(help="Mutual recognition of lab results: index, tokens, queries.", no_args_is_help=True)
app.add_typer(recognition_app, name="recognition")


def _recognition(workspace: Path):
    from deid.keys import Keyring
    from hub.recognition.catalog import load_catalog
    from hub.recognition.index import connect, index_url
    from hub.region import load_region

    region = load_region(workspace)
    return region, Keyring.load(region.key_file), connect(index_url(region)), load_catalog()


@recognition_app.command("build-index")
def recognition_build_index(workspace: Path = WorkspaceOpt) -> None:
    """Add results published since the last build to the recognition index (run after each publish)."""
    from hub.recognition.index import build

    region, _, index, _ = _recognition(workspace)
    console.print(f"Recognition index: {build(region, index)} new rows read from {region.zone}.observation and .diagnosticreport")


@recognition_app.command("token")
def recognition_token(institution: str = typer.Argument(..., help="Institution id."), workspace: Path = WorkspaceOpt) -> None:
    """Issue a bearer token for an institution's HIS (shown once; only its hash is kept)."""
    from hub.recognition.api import issue_token
    from hub.region import load_region

    print(issue_token(load_region(workspace), institution))


@recognition_app.command("query")
def recognition_query(
    requester: str = typer.Option(..., "--requester", "-r", help="The requesting institution's id."),
    id_number: str = typer.Option(None, "--id-number", help="The patient's resident ID number."),
    mrn: str = typer.Option(None, "--mrn", help="Or the requester's own MRN for the patient."),
    code: list[str] = typer.Option(None, "--code", help="LOINC codes to ask about (repeat); default all."),
    at: str = typer.Option(None, "--at", help="Judge as of this date (YYYY-MM-DD); default now."),
    workspace: Path = WorkspaceOpt,
) -> None:
    """The recognition verdict of each of a patient's results, as the API gives it."""
    import datetime as dt

    from hub.lineage import access
    from hub.lineage import catalog as runcat
    from hub.recognition.query import patient_for, query

    region, keys, index, catalog = _recognition(workspace)
    if bool(id_number) == bool(mrn):
        raise typer.BadParameter("give --id-number or --mrn")
    system, value = ("urn:oid:2.16.156.10011.1.3", id_number) if id_number else (f"urn:hub:{requester}:mrn", mrn)
    patient = patient_for(index, keys, system, value)
    when = dt.datetime.fromisoformat(at).replace(tzinfo=dt.UTC) if at else None
    verdicts = query(index, catalog, patient, requester, code or None, at=when) if patient else []
    access.record(runcat.connect(region.catalog_url), "recognition-query", "recognition (command line)",
                  {"requester": requester, "codes": code or None, "results": len(verdicts)})
    table = Table(title=f"{len(verdicts)} results for the patient, as seen by {requester}")
    for col in ("item (LOINC)", "issuer", "time", "value", "verdict", "reason / mark"):
        table.add_column(col, overflow="fold")
    for v in verdicts:
        o = v.observation
        value = o.get("valueQuantity", {}).get("value", o.get("valueString", (o.get("valueCodeableConcept") or {}).get("text", "")))
        unit = o.get("valueQuantity", {}).get("unit", "")
        table.add_row(v.loinc, v.institution, str(o.get("effectiveDateTime", ""))[:16], f"{value} {unit}".strip(),
                      "[green]recognisable[/]" if v.recognisable else f"[red]{v.code}[/]", v.mark or v.reason)
    console.print(table)


@app.command("serve")
def serve(
    workspace: Path = WorkspaceOpt,
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
) -> None:
    """Start the recognition FHIR API (FastAPI + uvicorn). OpenAPI at /docs, CapabilityStatement at /fhir/metadata.

    uvicorn's access log is off: it would print query strings, which carry patient identifiers.
    """
    import logging

    import uvicorn

    from hub.recognition.api import create_app

    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s %(message)s")
    region, keys, index, catalog = _recognition(workspace)
    uvicorn.run(create_app(region, keys, index, catalog), host=host, port=port, access_log=False, log_level="info")


views_app = typer.Typer(help="SQL-on-FHIR v2 ViewDefinitions: run them, test the runner.", no_args_is_help=True)
app.add_typer(views_app, name="views")


@views_app.command("run")
def views_run(
    view: Path = typer.Argument(..., exists=True, help="A ViewDefinition (JSON)."),
    table: str = typer.Option(None, "--table", help="A lakehouse table, e.g. recognition.observation."),
    ndjson: Path = typer.Option(None, "--ndjson", help="Or an NDJSON file of FHIR resources."),
    output: Path = typer.Option(None, "--output", "-o", help="Write Parquet here instead of printing."),
    as_of: str = typer.Option(None, "--as-of", help="A tag or snapshot id of the table."),
    limit: int = typer.Option(20, "--limit", help="Rows to print."),
    workspace: Path = WorkspaceOpt,
) -> None:
    """Flatten FHIR resources into a table with a ViewDefinition (print it, or write Parquet)."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from hub.fhir.jsonio import loads
    from hub.trainset.views import run_over_table, run_view

    definition = json.loads(view.read_text(encoding="utf-8"))
    if bool(table) == bool(ndjson):
        raise typer.BadParameter("give --table or --ndjson")
    if ndjson:
        result = pa.Table.from_pylist(run_view(definition, (loads(line) for line in ndjson.read_text(encoding="utf-8").splitlines() if line.strip())))
    else:
        from hub.lakehouse.tables import open_catalog
        from hub.region import load_region

        region = load_region(workspace)
        t = open_catalog(region.catalog_url, region.warehouse).load_table(table)
        snapshot = None
        if as_of:
            snapshot = int(as_of) if as_of.isdigit() else t.snapshot_by_name(as_of).snapshot_id
        result = run_over_table(t, definition, snapshot)
    if output:
        pq.write_table(result, output)
        console.print(f"{result.num_rows} rows written to {output}")
        return
    console.print(result.slice(0, limit).to_pandas().to_string() if result.num_rows and _has_pandas() else result.slice(0, limit).to_pylist())
    console.print(f"{result.num_rows} rows")


def _has_pandas() -> bool:
    try:
        import pandas  # noqa: F401
    except ImportError:
        return False
    return True


@views_app.command("test")
def views_test(
    folder: Path = typer.Argument(..., exists=True, help="A folder of SQL-on-FHIR conformance test files."),
    report: Path = typer.Option(None, "--report", help="Write the report here (the spec repository's test_report.json format)."),
) -> None:
    """Run the SQL-on-FHIR v2 conformance tests; exits 1 if any shareable test fails (experimental ones are reported)."""
    import json

    from hub.trainset.conformance import run_folder, summary

    result = run_folder(folder)
    if report:
        report.write_text(json.dumps({f: {"tests": [{"name": t["name"], "result": t["result"]} for t in d["tests"]]} for f, d in result.items()}, indent=2, ensure_ascii=False))
    for tag, (passed, total) in sorted(summary(result).items()):
        console.print(f"{tag}: {passed}/{total} passed")
    failed = [(f, t["name"]) for f, d in result.items() for t in d["tests"] if not t["result"]["passed"] and "shareable" in t["tags"]]
    for f, name in failed:
        console.print(f"[red]FAILED[/] {f}: {name}", highlight=False)
    if failed:
        raise typer.Exit(1)


trainset_app = typer.Typer(help="Training sets for ML teams: specs, builds, datasheets.", no_args_is_help=True)
app.add_typer(trainset_app, name="trainset")


@trainset_app.command("build")
def trainset_build(
    spec: Path = typer.Argument(..., exists=True, help="A training-set spec (YAML), e.g. trainsets/t2dm-hba1c.yaml."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for train/validation/test Parquet files and the datasheet."),
    purpose: str = typer.Option("training set", "--purpose", help="Why the set is built (written to the access log)."),
    workspace: Path = WorkspaceOpt,
) -> None:
    """Build a training set pinned to a lakehouse tag: Parquet per split plus datasheet.md and .json.

    The same spec on the same tag gives byte-identical Parquet files (see files_sha256 in the datasheet).
    """
    from deid.keys import Keyring
    from hub.region import load_region
    from hub.trainset.build import build

    region = load_region(workspace)
    sheet = build(region, Keyring.load(region.key_file), spec, out, purpose)
    for split, c in sheet["splits"].items():
        console.print(f"{split}: {c['patients']} patients, " + ", ".join(f"{k} {v}" for k, v in c.items() if k != "patients"))
    console.print(f"Datasheet: {out / 'datasheet.md'}")


@app.command("indicators")
def indicators(
    workspace: Path = WorkspaceOpt,
    as_of: str = typer.Option(None, "--as-of", help="A lakehouse tag to compute them at."),
) -> None:
    """Outcome indicators per institution and month: HbA1c, LDL and blood pressure at target."""
    from hub.region import load_region
    from hub.trainset.indicators import compute

    rows = compute(load_region(workspace), as_of).to_pylist()
    table = Table(title="Outcome indicators (share of patients at target)")
    for col in ("indicator", "institution", "month", "at target", "patients", "share"):
        table.add_column(col, justify="right" if col in ("at target", "patients", "share") else "left")
    for r in rows:
        table.add_row(r["indicator"], r["institution"] or "-", r["month"] or "-", str(r["numerator"]), str(r["denominator"]),
                      f"{r['share']:.0%}" if r["share"] is not None else "no data")
    console.print(table)


def main() -> None:
    """Entry point: user errors (configuration, keys, missing files) print one clear line, exit 2."""
    from deid.keys import MasterKeyError
    from hub.yamlio import ConfigError

    try:
        app()
    except (ConfigError, MasterKeyError, FileNotFoundError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        console.print(f"[red]error:[/] {message}", highlight=False)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
