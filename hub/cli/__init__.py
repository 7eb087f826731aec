"""The ``hub`` command line: one module per noun (demo, feeds, quarantine, research, keys,
deid, lakehouse, lineage, audit, recognition, views, trainset).

Commands are ``hub <noun> <verb>`` where there is a noun; reports are Rich tables, long
work shows progress bars with counts and rates, and ``--json`` is there for machines.
"""

from __future__ import annotations

from hub.cli import (  # noqa: F401  - importing a module registers its commands
    audit,
    deid_rules,
    demo,
    feeds,
    keys,
    lakehouse,
    lineage,
    quarantine,
    recognition,
    research,
    trainset,
    views,
)
from hub.cli.base import app, console

__all__ = ["app", "main"]


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
