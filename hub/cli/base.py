"""What every command module shares: the Typer app, the console, common options."""

from __future__ import annotations

import typer
from rich.console import Console

from hub.region import DEFAULT_WORKSPACE

app = typer.Typer(
    help="hub: pull HIS/LIS records, map them to FHIR R4, de-identify, and publish a lakehouse.\n\n"
    "Start with `hub demo`, which builds a three-institution demo region in .hub/ and publishes it.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()

WorkspaceOpt = typer.Option(DEFAULT_WORKSPACE, "--workspace", "-w", help="Workspace folder: region.yaml, catalog, warehouse, demo sources.")
