"""What every command module shares: the Typer app, the console, common options."""

from __future__ import annotations

import os

import typer
from rich.console import Console

from hub.region import DEFAULT_WORKSPACE

app = typer.Typer(  # its help is _root's docstring
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # hub.cli.errors prints one line; --debug shows the traceback
)
console = Console()
debug = {"on": False}
OWNER_ONLY = 0o077  # umask: no group or other permission on anything hub creates


def _version(value: bool) -> None:
    if value:
        import hub

        print(f"hub {hub.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug_opt: bool = typer.Option(False, "--debug", help="On an error, print the full traceback (else one line on stderr)."),
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_version, help="Print hub's version and exit."),
) -> None:
    """hub: pull HIS/LIS records, map them to FHIR R4, de-identify, and publish a lakehouse.

    Start with `hub demo`, which builds a three-institution demo region in .hub/ and publishes it.

    Exit codes: 0 success; 1 the command ran and found problems (rows that would be quarantined, a leak blocked, a broken audit chain, a refused release); 2 it could not run (configuration, key, missing file, or an unexpected error: add --debug for the traceback).
    """
    debug["on"] = debug_opt
    os.umask(OWNER_ONLY)  # every file and folder hub creates (catalog, index, warehouse, keys) is its owner's alone

WorkspaceOpt = typer.Option(DEFAULT_WORKSPACE, "--workspace", "-w", help="Workspace folder: region.yaml, catalog, warehouse, demo sources.")
