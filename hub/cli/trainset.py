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

    The spec's shape decides the files: long (default) writes labels.parquet and one file per
    feature view (one row per result); per_patient writes labels.parquet and patients.parquet
    (one row per patient: results per window and code in canonical units, demographics,
    medication and comorbidity flags). See docs/trainsets.md. The same spec on the same tag
    gives byte-identical Parquet files (see files_sha256 in the datasheet). With --json, the
    datasheet (as in datasheet.json) is printed as one document.
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
        rate = "-" if c["label_rate"] is None else f"{c['label_rate']:.1%}"
        rows = "".join(f", {k} {v}" for k, v in c.items() if k.endswith("_rows"))
        console.print(f"{split}: {c['patients']} patients, label true {c['labels_true']} / false {c['labels_false']} ({rate}){rows}")
    console.print(f"Shape {sheet['shape']}; datasheet: {out / 'datasheet.md'}")


@app.command("indicators")
def indicators(
    workspace: Path = WorkspaceOpt,
    as_of: str = typer.Option(None, "--as-of", help="A lakehouse tag to compute them at."),
    config: Path = typer.Option(None, "--config", exists=True, dir_okay=False,
                                help="Indicator configuration (default: indicators/cn-t2dm-2020.yaml of the checkout)."),
    institution: str = typer.Option(None, "--institution", "-i", help="Only this institution (its id)."),
    measure_report: Path = typer.Option(None, "--measure-report", file_okay=False,
                                        help="Also write FHIR R4 MeasureReports to DIR/MeasureReport.ndjson."),
    as_json: bool = JsonOpt,
) -> None:
    """Guideline indicators per institution and month (docs/indicators.md): HbA1c < 7 %, blood
    pressure < 130/80 (diabetes) and < 140/90 (hypertension), LDL-C < 2.6 (< 1.8 with ASCVD),
    all three together; thresholds and their source from a versioned configuration file.

    The table shows, per indicator, each month's share at target per institution as
    "share numerator/denominator", and all institutions together; "-" where managed patients
    were seen but none measured. With --json, JSON
    Lines: one row per indicator, institution and month (managed, not_measured, denominator,
    numerator, share; share is null when nobody was measured) with the config and its version.
    """
    from hub.region import load_region
    from hub.trainset.indicator_config import DEFAULT_CONFIG, load_config
    from hub.trainset.indicators import compute

    region = load_region(workspace)
    cfg = load_config(config or DEFAULT_CONFIG)
    if institution is not None and institution not in {i.id for i in region.institutions}:
        raise typer.BadParameter(f"{institution!r} is not an institution of the region", param_hint="--institution")
    rows = [r for r in compute(region, as_of, cfg).to_pylist() if institution in (None, r["institution"])]
    if measure_report is not None:
        from hub.trainset.measure_report import write_ndjson

        path = write_ndjson(region, rows, measure_report)
        err_console.print(f"{len(rows)} MeasureReports: {path}", highlight=False)
    if as_json:
        print_json_lines(rows)
        return
    insts = [i.id for i in region.institutions if any(r["institution"] == i.id for r in rows)]
    console.print(f"Indicators {cfg.label}: share of managed patients at target, per month (at target/measured)")
    for ind in cfg.indicators:
        mine = [r for r in rows if r["indicator"] == ind.id]
        console.print(f"\n{ind.id}: {ind.title}", highlight=False)
        table = Table()
        table.add_column("month")
        for inst in insts:
            table.add_column(inst, justify="right")
        table.add_column("all", justify="right", style="bold")
        cells = {(r["month"], r["institution"]): r for r in mine}
        for month in sorted({r["month"] for r in mine}):
            of_month = [r for r in mine if r["month"] == month]
            num, den = sum(r["numerator"] for r in of_month), sum(r["denominator"] for r in of_month)
            total = {"numerator": num, "denominator": den, "share": num / den if den else None}
            table.add_row(month, *[_cell(cells.get((month, inst))) for inst in insts], _cell(total))
        console.print(table)
    if not rows:
        console.print("No managed patients: nothing to report (are the Condition and Encounter tables published?)")


def _cell(row: dict | None) -> str:
    if row is None:
        return ""
    if not row["denominator"]:
        return "-"
    return f"{row['share']:.0%} {row['numerator']}/{row['denominator']}"
