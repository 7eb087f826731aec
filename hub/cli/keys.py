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
    console.print(f"Rotated master key {old} -> {new}. Published rows still carry key id {old}: publishing is refused "
                  "until `hub keys repseudonymize` has re-keyed every institution.", highlight=False)


@keys_app.command("repseudonymize")
def keys_repseudonymize(
    institutions: list[str] = typer.Argument(None, help="Institution ids (default: all)."),
    workspace: Path = WorkspaceOpt,
) -> None:
    """Re-publish under the current key and remove rows made with older keys (old snapshots stay readable).

    Per institution one full run: in each table the re-keyed rows arrive and the old-key
    rows leave in the same commit, so no reader ever sees a person twice or not at all.
    """
    from deid.keys import Keyring
    from hub.pipeline import repseudonymize
    from hub.region import load_region

    region = load_region(workspace)
    keys = Keyring.load(region.key_file)
    for iid in institutions or [i.id for i in region.institutions]:
        report, removed = repseudonymize(region, iid, keys)
        published = sum(c["published"] for c in report.by_resource().values())
        console.print(f"{iid}: {published} rows published under key {keys.key_id}, {removed} rows under older keys removed")


@keys_app.command("signing-public")
def keys_signing_public(workspace: Path = WorkspaceOpt) -> None:
    """Print the public half of the manifest signing key (64 hex characters) for verifiers' trusted-keys files."""
    from hub.lineage.signing import load_signer
    from hub.region import load_region

    print(load_signer(load_region(workspace)).public_hex)


@keys_app.command("signing-create")
def keys_signing_create(
    path: Path = typer.Argument(..., help="Where to write the new private key (mode 600); outside the workspace in production."),
    trusted_keys: Path = typer.Option(None, "--trusted-keys", help="Also add the new public key to this trusted-keys file, retiring the keys it trusts now."),
    workspace: Path = WorkspaceOpt,
) -> None:
    """Create a manifest signing key (Ed25519), e.g. to move it out of the workspace or to rotate it.

    The new key may sign from the next manifest on; with --trusted-keys the file gets that
    entry and its open keys are retired at the current head, so older manifests keep
    verifying under the key that signed them. Then point HUB_SIGNING_KEY_FILE (or
    signing_key_file in region.yaml) at PATH.
    """
    from hub.lineage import runrecord
    from hub.lineage.manifests import head
    from hub.lineage.signing import add_trusted, create_key_file
    from hub.region import load_region

    if path.exists():
        raise typer.BadParameter(f"{path} exists; signing keys are never overwritten")
    region = load_region(workspace)
    current = head(runrecord.connect(region.catalog_url))
    from_seq = current[0] + 1 if current else 1
    signer = create_key_file(path)
    console.print(f"Created signing key {signer.key_id} at {path} (mode 600); it may sign manifests from {from_seq} on.", highlight=False)
    if trusted_keys is not None:
        add_trusted(trusted_keys, signer.public_hex, from_seq, region.workspace)
        console.print(f"Trusted it in {trusted_keys}; keys trusted before are retired after manifest {from_seq - 1}.", highlight=False)
    console.print(f"Public key: {signer.public_hex}\nNext: set HUB_SIGNING_KEY_FILE={path} (or signing_key_file in region.yaml) "
                  "and give verifiers the public key.", highlight=False, soft_wrap=True)
