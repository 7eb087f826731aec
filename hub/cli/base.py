"""What every command module shares: the Typer app, the console, common options."""

from __future__ import annotations

import os
import re

import typer
from rich.console import Console

from hub.region import DEFAULT_WORKSPACE

app = typer.Typer(  # its help is _root's docstring
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # hub.cli.errors prints one line; --debug shows the traceback
    rich_markup_mode="markdown",  # docstrings are hard-wrapped: markdown reflows them to the terminal's width
)
console = Console()
err_console = Console(stderr=True)  # progress and notes of a --json command: stdout carries only JSON
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

    Start with `hub demo`, which builds a five-institution demo region in .hub/ and publishes it.

    Exit codes: 0 success; 1 the command ran and found problems (rows that would be quarantined, a leak blocked, a broken audit chain, a refused release); 2 it could not run (configuration, key, missing file, or an unexpected error: add --debug for the traceback).
    """
    debug["on"] = debug_opt
    os.umask(OWNER_ONLY)  # every file and folder hub creates (catalog, index, warehouse, keys) is its owner's alone

_NUMBER = f"\u0002number{os.urandom(8).hex()}:"  # marks a Decimal's text until it is unquoted; no source text can forge it
_NUMBER_RE = re.compile(r'"\\u0002number' + _NUMBER[7:-1] + r':([-+0-9.eE]+)"')


def _plain(value):
    from decimal import Decimal

    if isinstance(value, Decimal) and value.is_finite():
        return _NUMBER + str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, set | frozenset):
        return sorted(value)
    return str(value)


def json_text(value) -> str:
    """Compact JSON of value: dates as ISO text, decimals as the exact numbers they are (1.50 stays 1.50)."""
    import json

    return _NUMBER_RE.sub(r"\1", json.dumps(value, ensure_ascii=False, default=_plain))


def print_json(document) -> None:
    """One JSON document on stdout (a command's --json output when it reports one thing)."""
    print(json_text(document))


def print_json_lines(rows) -> None:
    """JSON Lines on stdout: one object per line (a command's --json output when it lists things)."""
    for row in rows:
        print(json_text(row))


JsonOpt = typer.Option(False, "--json", help="Print JSON for machines: JSON Lines (one object per line) for a list, one document otherwise; nothing else on stdout.")
WorkspaceOpt = typer.Option(DEFAULT_WORKSPACE, "--workspace", "-w", help="Workspace folder: region.yaml, catalog, warehouse, demo sources.")
