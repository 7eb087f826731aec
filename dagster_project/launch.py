"""Running the main job in-process, for the `hub demo` and `hub publish` commands.

Each institution partition is materialized, with the recognition index after it, on the
workspace's own Dagster instance (``<workspace>/dagster``, dagster_project/instance.py; or
the one DAGSTER_HOME names), so the command line runs exactly what `dagster dev` schedules
and `hub dagster` shows its runs, partitions and check results.

Jobs that Dagster launches (sensor, schedule, backfills, the UI) run on the executor
HUB_EXECUTOR names: unset, Dagster's default (one process per step on the run's host);
``celery``, the dagster-celery executor with deploy/celery.yaml (or the file
HUB_CELERY_CONFIG names), whose steps go to the workers ``hub deploy workers`` starts.
The asset code is the same under both.
"""

import json
import os
from pathlib import Path

from dagster import (
    DagsterExecutionStepExecutionError,
    DagsterInstance,
    ExecutorDefinition,
    materialize,
)

from dagster_project.defs.publish.assets import SOURCES, recognition_tables
from dagster_project.defs.serving.assets import recognition_index
from dagster_project.instance import sync_partitions, workspace_instance
from dagster_project.resources import HubResource
from hub.pipeline import frozen_heap
from hub.region import REPO_ROOT, load_region
from hub.yamlio import ConfigError, LineDict, load_yaml

CELERY_CONFIG = REPO_ROOT / "deploy" / "celery.yaml"
EXECUTORS = ("default", "celery")

#: what one institution run materializes: the publish job's assets (defs/publish/jobs.py)
PUBLISH_ASSETS = [*SOURCES, recognition_tables, recognition_index]


def instance_for(workspace: Path) -> DagsterInstance:
    """The instance DAGSTER_HOME names, else the workspace's own."""
    return DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else workspace_instance(workspace)


@frozen_heap  # the whole job, its checks and recognition index too, with the heap it starts with frozen
def materialize_institutions(workspace: Path, institution_ids: list[str], full: bool = False) -> bool:
    """Materialize the recognition tables and index for each institution; True when every run succeeded.

    A step that fails re-raises the exception hub raised (not Dagster's wrapper), so the
    command line can print it as one line; Dagster's own console logger stays quiet (its
    step-failure event carries the full stack, which the run's event log keeps).
    """
    with instance_for(workspace) as instance:
        sync_partitions(instance, load_region(workspace))
        for iid in institution_ids:
            try:
                result = materialize(
                    PUBLISH_ASSETS, partition_key=iid, instance=instance,
                    resources={"hub": HubResource(workspace=str(workspace))},
                    run_config={
                        "loggers": {"console": {"config": {"log_level": "CRITICAL"}}},
                        "ops": {"recognition_tables": {"config": {"full": full}}},
                    },
                )
            except DagsterExecutionStepExecutionError as exc:
                if exc.user_exception is not None:
                    raise exc.user_exception from None
                raise
            if not result.success:
                return False
    return True


def celery_config() -> dict:
    """The Celery executor's config: deploy/celery.yaml (or HUB_CELERY_CONFIG), with
    HUB_CELERY_BROKER and HUB_CELERY_BACKEND in place of its broker and backend URLs."""
    path = Path(os.environ.get("HUB_CELERY_CONFIG") or CELERY_CONFIG)
    doc = load_yaml(path)
    execution = doc.get("execution") if isinstance(doc, LineDict) else None
    config = execution.get("config") if isinstance(execution, LineDict) else None
    if not isinstance(config, LineDict):
        raise ConfigError(str(path), getattr(execution, "line", 1), "execution.config", "is missing",
                          "execution: {config: {broker: ..., backend: ..., config_source: {...}}}")
    unknown = set(config) - {"broker", "backend", "include", "config_source", "retries"}
    if unknown:
        field = sorted(unknown)[0]
        raise ConfigError(str(path), config.line_of(field), f"execution.config.{field}", "is not a Celery executor setting",
                          "broker, backend, include, config_source or retries")
    out = json.loads(json.dumps(config))  # plain dicts for Dagster's config system
    for key, var in (("broker", "HUB_CELERY_BROKER"), ("backend", "HUB_CELERY_BACKEND")):
        if os.environ.get(var):
            out[key] = os.environ[var]
    return out


def executor_from_env() -> ExecutorDefinition | None:
    """The executor HUB_EXECUTOR names (None: Dagster's default)."""
    kind = (os.environ.get("HUB_EXECUTOR") or "default").strip().lower()
    if kind == "default":
        return None
    if kind == "celery":
        from dagster_celery import celery_executor

        return celery_executor.configured(celery_config(), name="celery")
    raise ValueError(f"HUB_EXECUTOR={kind!r} is not an executor hub knows: {' or '.join(EXECUTORS)}")


def write_celery_module(folder: Path) -> Path:
    """Write dagster_celery_config.py (what `celery -A dagster_celery.app` reads) from the executor's config."""
    config = celery_config()
    lines = ["# Written by `hub deploy workers` from deploy/celery.yaml (or HUB_CELERY_CONFIG).\n"]
    if config.get("broker"):
        lines.append(f"broker_url = {config['broker']!r}\n")
    if config.get("backend"):
        lines.append(f"result_backend = {config['backend']!r}\n")
    lines += [f"{key} = {value!r}\n" for key, value in (config.get("config_source") or {}).items()]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "dagster_celery_config.py"
    path.write_text("".join(lines), encoding="utf-8")
    return path
