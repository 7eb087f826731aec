"""Shared fixtures: a fixed test key (stable ids and pseudonyms) and a published demo workspace."""

from __future__ import annotations

from pathlib import Path

import pytest

from deid.keys import Keyring

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
TEST_MASTER_KEY = bytes(range(32))  # test-only; real keys come from HUB_MASTER_KEY or a key file


@pytest.fixture(scope="session")
def keys() -> Keyring:
    return Keyring(TEST_MASTER_KEY)


def publish_region(workspace: Path, keys: Keyring, patients: int):
    """Generate a demo region in workspace and publish every institution: (region, counts, reports by institution)."""
    from hub.demo.generator import generate_region
    from hub.pipeline import run_institution
    from hub.region import load_region

    counts = generate_region(workspace, patients=patients)
    region = load_region(workspace)
    reports = {i.id: run_institution(region, i.id, keys) for i in region.institutions}
    return region, counts, reports


@pytest.fixture(scope="session")
def demo(tmp_path_factory, keys):
    """A small demo region, generated and published once per test session."""
    return publish_region(tmp_path_factory.mktemp("demo"), keys, 40)


def with_signing_key(workspace: Path, doc: dict) -> dict:
    """A region.yaml document plus a manifest signing key made for the test workspace (inside it, as the demo does)."""
    from hub.demo.generator import DEMO_KEY_NAME, DEMO_TRUSTED_NAME, ensure_demo_keys

    ensure_demo_keys(Path(workspace))
    return {**doc, "signing_key_file": "{workspace}/keys/" + DEMO_KEY_NAME, "trusted_keys_file": "{workspace}/keys/" + DEMO_TRUSTED_NAME}
