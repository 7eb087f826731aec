"""Training sets and indicators: `hub trainset build`, `hub indicators`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from hub.cli.base import (
    JsonOpt,
    WorkspaceOpt,
    app,
    console,
    err_console,
    print_json,
    print_json_lines,
)

trainset_app = typer.Typer(help="Training sets for ML teams: specs, builds, datasheets.", no_args_is_help=True)
app.add_typer(trainset_app, name="trainset")


@trainset_app.command("build")
def trainset_build(
    spec: Path = typer.Argument(..., exists=True, help="A training-set spec (YAML), e.g. trainsets/t2dm-hba1c.yaml."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for train/validation/test Parquet files and the datasheet."),
    purpose: str = typer.Option("training set", "--purpose", help="Why the set is built (written to the access log)."),
    workspace: Path = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Build a training set pinned to a lakehouse tag: Parquet per split plus datasheet.md and .json.

    The same spec on the same tag gives byte-identical Parquet files (see files_sha256 in the
    datasheet). With --json, the datasheet (as in datasheet.json) is printed as one document.
    """
    from deid.keys import Keyring
    from hub.region import load_region
    from hub.trainset.build import build

    region = load_region(workspace)
    sheet = build(region, Keyring.load(region.key_file), spec, out, purpose)
    if as_json:
        print_json(sheet)
        err_console.print(f"Datasheet: {out / 'datasheet.md'}", highlight=False)
        return
    for split, c in sheet["splits"].items():
        console.print(f"{split}: {c['patients']} patients, " + ", ".join(f"{k} {v}" for k, v in c.items() if k != "patients"))
    console.print(f"Datasheet: {out / 'datasheet.md'}")


@app.command("indicators")
def indicators(
    workspace: Path = WorkspaceOpt,
    as_of: str = typer.Option(None, "--as-of", help="A lakehouse tag to compute them at."),
    as_json: bool = JsonOpt,
) -> None:
    """Outcome indicators per institution and month: HbA1c, LDL and blood pressure at target.

    With --json, JSON Lines: one row per indicator, institution and month (numerator,
    denominator, share; share is null when there is no data).
    """
    from hub.region import load_region
    from hub.trainset.indicators import compute

    rows = compute(load_region(workspace), as_of).to_pylist()
    if as_json:
        print_json_lines(rows)
        return
    table = Table(title="Outcome indicators (share of patients at target)")
    for col in ("indicator", "institution", "month", "at target", "patients", "share"):
        table.add_column(col, justify="right" if col in ("at target", "patients", "share") else "left")
    for r in rows:
        table.add_row(r["indicator"], r["institution"] or "-", r["month"] or "-", str(r["numerator"]), str(r["denominator"]),
                      f"{r['share']:.0%}" if r["share"] is not None else "no data")
    console.print(table)
