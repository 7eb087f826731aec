"""The hub resource: where the workspace is and how to reach the master key."""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource

from deid.keys import Keyring
from hub.region import Region, load_region


class HubResource(ConfigurableResource):
    """Workspace folder (region.yaml, catalog, warehouse). The master key comes from
    HUB_MASTER_KEY or HUB_KEY_FILE, else the workspace key file; never from config."""

    workspace: str = ".hub"

    def region(self) -> Region:
        return load_region(Path(self.workspace))

    def keyring(self) -> Keyring:
        return Keyring.load(self.region().key_file)
