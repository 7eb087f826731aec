"""Research releases: `hub research release`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from hub.cli.base import JsonOpt, WorkspaceOpt, app, console, print_json

research_app = typer.Typer(help="The research zone: releases built from the recognition zone behind a risk gate.", no_args_is_help=True)
app.add_typer(research_app, name="research")


@research_app.command("release")
def research_release(
    workspace: Path = WorkspaceOpt,
    name: str = typer.Option(None, "--name", help="Release name, also the Iceberg tag on every research table."),
    k: int = typer.Option(5, "--k", min=2, help="Smallest number of real people sharing each quasi-identifier tuple."),
    max_suppression: float = typer.Option(0.05, "--max-suppression", min=0.0, max=1.0, help="Largest share of people that may be suppressed."),
    purpose: str = typer.Option("research release", "--purpose", help="Why the release is made (written to the access log)."),
    qi: str = typer.Option("birth_year,sex,institution", "--qi", help="Quasi-identifiers, comma-separated: birth_year, sex, institution (always), or a top-level Patient element such as maritalStatus."),
    as_json: bool = JsonOpt,
) -> None:
    """Build a research release: re-key, shift dates, generalize, check k-anonymity, publish or refuse.

    People are counted per real person (resident-ID pseudonym across institutions; people
    without one joined on birth date and sex), over every value their released rows show.
    Birth years are generalized step by step (year, 5-, 10-, 20-year bands) until k holds,
    then people in classes smaller than k are suppressed (every row) within the budget. A
    release that cannot meet k is not published; its risk report is kept either way. The
    release reads one pinned snapshot per table and recounts k from the rows it wrote.
    """
    from deid.keys import Keyring
    from hub.region import load_region
    from hub.research import build_release

    region = load_region(workspace)
    release = build_release(region, Keyring.load(region.key_file), name=name, k=k, max_suppression=max_suppression, purpose=purpose,
                            quasi_identifiers=[q for q in qi.split(",") if q.strip()])
    r = release.report
    if as_json:
        print_json({"release_id": release.release_id, "name": release.name, "status": release.status, "rows": release.rows,
                    "snapshots": release.snapshots, "report": r.as_dict()})
        if release.status != "published":
            raise typer.Exit(1)
        return
    t = Table(title=f"Risk report: release {release.name} ({release.status})")
    for col in ("birth-year band", "smallest class", "classes", "classes below k", "people below k", "share", "records below k"):
        t.add_column(col, justify="right")
    for lv in r.levels:
        t.add_row(f"{lv.band} y", str(lv.k), str(lv.classes), str(lv.classes_below_k), str(lv.people_below_k),
                  f"{lv.share_below_k:.1%}", f"{lv.share_records_below_k:.1%}")
    console.print(t)
    link = r.linkage
    console.print(f"{r.people} people ({link.get('by_resident_id', 0)} patient keys by resident ID, {link.get('without_resident_id', 0)} "
                  f"without, {link.get('unlinkable_keys_left_out', 0)} unlinkable left out), quasi-identifiers "
                  f"{', '.join(r.quasi_identifiers)}; {r.reason}", highlight=False)
    if release.status == "published":
        console.print(f"Recount of the written rows: k={r.k_written}; classes below k: {len(r.classes_below_k)}", highlight=False)
    if release.status != "published":
        raise typer.Exit(1)
    console.print("Published: " + ", ".join(f"research.{t.lower()} {n}" for t, n in release.rows.items()))
