"""Research releases: `hub research release`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from hub.cli.base import WorkspaceOpt, app, console

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
