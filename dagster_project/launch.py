"""Running the main job in-process, for the `hub demo` and `hub publish` commands.

Each institution partition is materialized on an ephemeral Dagster instance (or the one
DAGSTER_HOME names), so the command line runs exactly what `dagster dev` schedules.
"""

import os
from pathlib import Path

from dagster import DagsterExecutionStepExecutionError, DagsterInstance, materialize

from dagster_project.defs.publish.assets import SOURCES, recognition_tables
from dagster_project.partitions import INSTITUTIONS
from dagster_project.resources import HubResource


def materialize_institutions(workspace: Path, institution_ids: list[str], full: bool = False) -> bool:
    """Materialize the recognition tables for each institution; True when every run succeeded.

    A step that fails re-raises the exception hub raised (not Dagster's wrapper), so the
    command line can print it as one line; Dagster's own console logger stays quiet (its
    step-failure event carries the full stack, which the run's event log keeps).
    """
    instance = DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else DagsterInstance.ephemeral()
    known = set(instance.get_dynamic_partitions(INSTITUTIONS))
    instance.add_dynamic_partitions(INSTITUTIONS, [i for i in institution_ids if i not in known])
    for iid in institution_ids:
        try:
            result = materialize(
                [*SOURCES, recognition_tables], partition_key=iid, instance=instance,
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
