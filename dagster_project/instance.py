"""The workspace's own Dagster instance: ``<workspace>/dagster/`` with a dagster.yaml hub writes.

``hub demo`` and ``hub publish`` materialize into it, and ``hub dagster`` starts ``dagster
dev`` with DAGSTER_HOME pointing at it, so the UI shows the partitions, runs and check
results of the command line's runs (a temporary DAGSTER_HOME shows none). The same folder
serves the Dagster command line::

    export DAGSTER_HOME=$PWD/.hub/dagster HUB_WORKSPACE=.hub
    dagster asset materialize -m dagster_project.definitions --select 'recognition/*' --partition beishan-chc
"""

from __future__ import annotations

import os
from pathlib import Path

from dagster import DagsterInstance
from dagster._core.instance.ref import InstanceRef

from dagster_project.partitions import INSTITUTIONS
from hub.region import Region

HOME_DIR = "dagster"
CONFIG = """\
# Written by hub (dagster_project/instance.py): the Dagster instance of this workspace.
# `hub dagster` starts `dagster dev` with DAGSTER_HOME set to this folder; edit freely,
# hub does not overwrite an existing file. Run history, event logs and schedules are
# SQLite files here.
telemetry:
  enabled: false
nux:
  enabled: false   # no newsletter dialog over the UI
concurrency:
  runs:
    # institution runs one after the other: each ends with an update of the recognition
    # index, and the hub's runs are CPU-bound (raise it on a larger machine)
    max_concurrent_runs: 1
"""


def dagster_home(workspace: Path) -> Path:
    """The folder of the workspace's Dagster instance (absolute, as DAGSTER_HOME must be)."""
    return (Path(workspace) / HOME_DIR).resolve()


def ensure_home(workspace: Path) -> Path:
    """Create the workspace's Dagster home with its dagster.yaml if missing; returns the folder."""
    home = dagster_home(workspace)
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(CONFIG, encoding="utf-8")
    return home


def workspace_instance(workspace: Path) -> DagsterInstance:
    """The persistent Dagster instance of the workspace (created on first use)."""
    return DagsterInstance.from_ref(InstanceRef.from_dir(str(ensure_home(workspace))))


def is_workspace_home(workspace: Path) -> bool:
    """True when DAGSTER_HOME is this workspace's own instance folder."""
    home = os.environ.get("DAGSTER_HOME")
    return bool(home) and Path(home).resolve() == dagster_home(workspace)


def sync_partitions(instance: DagsterInstance, region: Region) -> list[str]:
    """Add an institution partition for every institution of region.yaml that has none; returns those added."""
    known = set(instance.get_dynamic_partitions(INSTITUTIONS))
    new = [i.id for i in region.institutions if i.id not in known]
    if new:
        instance.add_dynamic_partitions(INSTITUTIONS, new)
    return new
