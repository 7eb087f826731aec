"""The ``hub`` command line: one module per noun (demo, feeds, quarantine, research, keys,
deid, lakehouse, lineage, audit, recognition, views, trainset, deploy, compiled) and ``hub listen``.

Commands are ``hub <noun> <verb>`` where there is a noun; reports are Rich tables, long
work shows progress bars with counts and rates, and ``--json`` is there for machines.
"""

from __future__ import annotations

from hub.cli import (  # noqa: F401  - importing a module registers its commands
    audit,
    compiled,
    dagster,
    deid_rules,
    demo,
    deploy,
    feeds,
    keys,
    lakehouse,
    lineage,
    listen,
    quarantine,
    recognition,
    research,
    trainset,
    views,
)
from hub.cli.base import app

__all__ = ["app", "main"]


def main() -> None:
    """Entry point: any error ends the command with one line on stderr and exit code 1 or 2
    (see hub.cli.errors); ``hub --debug`` adds the traceback."""
    from hub.cli.base import debug
    from hub.cli.errors import report
    from hub.memory import prefer_system_arrow_pool

    prefer_system_arrow_pool()  # the commands import pyarrow when they run, not before (hub/memory.py)
    try:
        app()
    except Exception as exc:  # the last line of defence: one line, never a rich traceback
        raise SystemExit(report(exc, debug["on"])) from None
