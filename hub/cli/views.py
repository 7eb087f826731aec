"""ViewDefinitions: `hub views run|test`."""

from __future__ import annotations

from pathlib import Path

import typer

from hub.cli.base import WorkspaceOpt, app, console

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

    from hub.errors import CommandFailed
    from hub.fhir.jsonio import loads
    from hub.views.runner import ViewError, run_over_table, run_view, validate

    if bool(table) == bool(ndjson):
        raise typer.BadParameter("give --table or --ndjson")
    try:  # the view is the user's: a problem in it (at load or while it runs) is named with its file
        definition = json.loads(view.read_text(encoding="utf-8"))
        validate(definition)
    except (json.JSONDecodeError, ViewError) as exc:
        raise CommandFailed(f"{view}: {exc}") from None
    region = None
    try:
        if ndjson:
            resources = (loads(line) for line in ndjson.read_text(encoding="utf-8").splitlines() if line.strip())
            result = pa.Table.from_pylist(run_view(definition, resources))
        else:
            from hub.lakehouse.tables import open_catalog
            from hub.region import load_region

            region = load_region(workspace)
            t = open_catalog(region.catalog_url, region.warehouse).load_table(table)
            snapshot = None
            if as_of:
                snapshot = int(as_of) if as_of.isdigit() else t.snapshot_by_name(as_of).snapshot_id
            result = run_over_table(t, definition, snapshot)
    except ViewError as exc:
        raise CommandFailed(f"{view}: {exc}") from None
    if output and table:  # lakehouse data leaves through the sink: leak-scanned, recorded in a manifest
        from deid.keys import Keyring
        from hub.lakehouse.sink import Publication

        with Publication.open(region, Keyring.load(region.key_file), "export") as pub:
            pub.write_parquet(result, output)
            pub.commit()
            pub.finish({"export": str(output), "view": definition.get("name", view.name), "table": table, "as_of": as_of})
        console.print(f"{result.num_rows} rows written to {output}")
        return
    if output:
        _write_local(result, output)
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
    """Run the SQL-on-FHIR v2 conformance tests (the *.json files of FOLDER, e.g. tests/data/sql-on-fhir/tests).

    Exits 1 if any shareable test fails (experimental ones are reported), and when the
    folder holds no test at all: a run that checked nothing has not passed.
    """
    import json

    from hub.errors import CommandFailed
    from hub.views.conformance import run_folder, summary

    result = run_folder(folder)
    if not any(d["tests"] for d in result.values()):
        hint = next((f" (try {sub})" for sub in sorted(folder.iterdir()) if sub.is_dir() and any(sub.glob("*.json"))), "") if folder.is_dir() else ""
        raise CommandFailed(f"no SQL-on-FHIR test found in {folder}: expected *.json test files directly in it{hint}", exit_code=1)
    if report:
        report.write_text(json.dumps({f: {"tests": [{"name": t["name"], "result": t["result"]} for t in d["tests"]]} for f, d in result.items()}, indent=2, ensure_ascii=False))
    for tag, (passed, total) in sorted(summary(result).items()):
        console.print(f"{tag}: {passed}/{total} passed")
    failed = [(f, t["name"]) for f, d in result.items() for t in d["tests"] if not t["result"]["passed"] and "shareable" in t["tags"]]
    for f, name in failed:
        console.print(f"[red]FAILED[/] {f}: {name}", highlight=False)
    if failed:
        raise typer.Exit(1)


def _write_local(result, output: Path) -> None:
    """A view over a local NDJSON file: not lakehouse data, so no publication to record."""
    import pyarrow.parquet as pq

    pq.write_table(result, output)
