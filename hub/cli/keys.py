"""The master key: `hub keys rotate|repseudonymize`."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from hub.cli.base import WorkspaceOpt, app, console

keys_app = typer.Typer(help="The master key: rotation and re-pseudonymization.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("rotate")
def keys_rotate(workspace: Path = WorkspaceOpt) -> None:
    """Retire the workspace's master key and create a new one.

    The old key is kept as keys/retired/<key id>.key, so quarantined rows and encrypted
    values sealed under it stay readable. New pseudonyms use the new key; run
    `hub keys repseudonymize` to re-key what is already published.
    """
    from deid.keys import ENV_KEY, rotate
    from hub.region import load_region

    if os.environ.get(ENV_KEY):
        raise typer.BadParameter(f"the key comes from {ENV_KEY}: rotate it where it is managed, keeping the old value as a retired key file")
    old, new = rotate(load_region(workspace).key_file)
    console.print(f"Rotated master key {old} -> {new}. Published rows still carry key id {old} until re-pseudonymized.")


@keys_app.command("repseudonymize")
def keys_repseudonymize(
    institutions: list[str] = typer.Argument(None, help="Institution ids (default: all)."),
    workspace: Path = WorkspaceOpt,
) -> None:
    """Re-publish under the current key and remove rows made with older keys (old snapshots stay readable)."""
    from deid.keys import Keyring
    from hub.pipeline import repseudonymize
    from hub.region import load_region

    region = load_region(workspace)
    keys = Keyring.load(region.key_file)
    for iid in institutions or [i.id for i in region.institutions]:
        report, removed = repseudonymize(region, iid, keys)
        published = sum(c["published"] for c in report.by_resource().values())
        console.print(f"{iid}: {published} rows published under key {keys.key_id}, {removed} rows under older keys removed")
