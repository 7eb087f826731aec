"""The workspace's own Dagster instance: ``<workspace>/dagster/`` with a dagster.yaml hub writes.

``hub demo`` and ``hub publish`` materialize into it, and ``hub dagster`` starts ``dagster
dev`` with DAGSTER_HOME pointing at it, so the UI shows the partitions, runs and check
results of the command line's runs (a temporary DAGSTER_HOME shows none). The same folder
serves the Dagster command line::

    export DAGSTER_HOME=$PWD/.hub/dagster HUB_WORKSPACE=.hub
    dagster asset materialize -m dagster_project.definitions --select 'recognition/*' --partition beishan-chc

The production profile (deploy/dagster.yaml, docs/deployment.md) is the other instance:
run, event log and schedule storage on PostgreSQL and a run queue that holds each source
database to its ``max_connections`` (region.yaml) through one tag per database on every
run of an institution partition (source_tags, set by the publish job). ``hub deploy
config`` writes it into DAGSTER_HOME with production_config.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import yaml
from dagster import DagsterInstance
from dagster._core.instance.ref import InstanceRef

from dagster_project.partitions import INSTITUTIONS
from hub.region import REPO_ROOT, Region
from hub.yamlio import ConfigError, LineDict, load_yaml

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


#: the production instance's template: PostgreSQL storage, the run queue (docs/deployment.md)
PRODUCTION_TEMPLATE = REPO_ROOT / "deploy" / "dagster.yaml"
#: namespace of the run tags that name the source databases a run pulls from
SOURCE_TAG = "hub-db"


def _tag_key(name: str) -> str:
    """A valid Dagster tag key for a source database (names are at most 63 allowed characters)."""
    clean = re.sub(r"[^A-Za-z0-9_.-]", "-", name)
    if len(clean) > 63:
        clean = clean[:50] + "." + hashlib.sha256(name.encode()).hexdigest()[:12]
    return f"{SOURCE_TAG}/{clean}"


def _database_keys(region: Region) -> dict[str, str]:
    """{feed URL: tag key} of the SQL feeds; feeds naming one database share the first feed's key."""
    keys: dict[str, str] = {}
    for inst in region.institutions:
        for feed in inst.feeds:
            if feed.kind == "sql":
                keys.setdefault(feed.url, _tag_key(f"{inst.id}.{feed.name}"))
    return keys


def source_databases(region: Region) -> dict[str, int]:
    """{tag key: max_connections} for every SQL source database of region.yaml.

    Feeds whose URLs name the same database share one key (the first such feed's
    ``<institution>.<feed>``) and the smallest of their limits. URLs never reach a tag:
    they may carry credentials.
    """
    keys, limits = _database_keys(region), {}
    for inst in region.institutions:
        for feed in inst.feeds:
            if feed.kind == "sql":
                key = keys[feed.url]
                limits[key] = min(limits.get(key, feed.max_connections), feed.max_connections)
    return limits


def source_tags(region: Region, institution_id: str) -> dict[str, str]:
    """The run tags of one institution partition: one per source database it pulls from."""
    keys = _database_keys(region)
    return {keys[f.url]: "pull" for f in region.institution(institution_id).feeds if f.kind == "sql"}


def production_config(region: Region, max_concurrent_runs: int | None = None,
                      template: Path = PRODUCTION_TEMPLATE) -> str:
    """deploy/dagster.yaml with one run-queue limit per source database of region.yaml."""
    doc = load_yaml(template)  # errors name file and line
    coordinator = doc.get("run_coordinator") if isinstance(doc, LineDict) else None
    if not isinstance(coordinator, LineDict) or not isinstance(coordinator.get("config"), LineDict):
        raise ConfigError(str(template), getattr(doc, "line", 1), "run_coordinator.config", "is missing",
                          "the QueuedRunCoordinator and its config (max_concurrent_runs)")
    plain = yaml.safe_load(template.read_text(encoding="utf-8"))
    queue = plain["run_coordinator"]["config"]
    if max_concurrent_runs is not None:
        if max_concurrent_runs < 1:
            raise ValueError(f"max_concurrent_runs {max_concurrent_runs} is not >= 1")
        queue["max_concurrent_runs"] = max_concurrent_runs
    queue["tag_concurrency_limits"] = [
        *(queue.get("tag_concurrency_limits") or []),
        *({"key": key, "limit": limit} for key, limit in sorted(source_databases(region).items())),
    ]
    head = "".join(line for line in template.read_text(encoding="utf-8").splitlines(keepends=True) if line.startswith("#"))
    note = f"# Written by `hub deploy config` from {template.name} and {region.workspace / 'region.yaml'}: one run-queue\n" \
           "# limit per source database (its feeds' max_connections). Run the command again after editing region.yaml.\n"
    return note + head + yaml.safe_dump(plain, sort_keys=False)


def write_production_home(region: Region, home: Path, max_concurrent_runs: int | None = None) -> list[str]:
    """Write the production dagster.yaml into home (``hub deploy config``) and register the
    institution partitions in that instance; returns the partitions added."""
    (home / "dagster.yaml").write_text(production_config(region, max_concurrent_runs), encoding="utf-8")
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        return sync_partitions(instance, region)
