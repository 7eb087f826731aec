"""Running the main job in-process, for the `hub demo` and `hub publish` commands.

Each institution partition is materialized, with the recognition index after it, on the
workspace's own Dagster instance (``<workspace>/dagster``, dagster_project/instance.py; or
the one DAGSTER_HOME names), so the command line runs exactly what `dagster dev` schedules
and `hub dagster` shows its runs, partitions and check results.
"""

import os
from pathlib import Path

from dagster import DagsterExecutionStepExecutionError, DagsterInstance, materialize

from dagster_project.defs.publish.assets import SOURCES, recognition_tables
from dagster_project.defs.serving.assets import recognition_index
from dagster_project.instance import sync_partitions, workspace_instance
from dagster_project.resources import HubResource
from hub.region import load_region

#: what one institution run materializes: the publish job's assets (defs/publish/jobs.py)
PUBLISH_ASSETS = [*SOURCES, recognition_tables, recognition_index]


def instance_for(workspace: Path) -> DagsterInstance:
    """The instance DAGSTER_HOME names, else the workspace's own."""
    return DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else workspace_instance(workspace)


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
