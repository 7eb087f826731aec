"""All Dagster definitions of hub: one folder per domain under defs/, merged here with the shared resource.

``hub dagster`` starts ``dagster dev`` on a workspace (default ``.hub``, as ``make demo``
creates) with DAGSTER_HOME set to the workspace's own instance (dagster_project/instance.py).
When the definitions load under that instance, every institution of region.yaml gets its
partition at once, so ``dagster asset materialize --partition <institution>`` works for an
institution registered since the last run; the ``new_institutions`` sensor then gives it
its first run.
"""

import os

from dagster import Definitions

# the domains are imported as modules: a Definitions object at this module's scope other than
# `defs` stops `dagster dev -m dagster_project.definitions` ("more than one Definitions object")
from dagster_project.defs.indicators import definitions as indicators
from dagster_project.defs.maintenance import definitions as maintenance
from dagster_project.defs.publish import definitions as publish
from dagster_project.defs.research import definitions as research
from dagster_project.defs.serving import definitions as serving
from dagster_project.defs.trainsets import definitions as trainsets
from dagster_project.instance import is_workspace_home, sync_partitions
from dagster_project.launch import executor_from_env
from dagster_project.partitions import workspace
from dagster_project.resources import HubResource

os.umask(0o077)  # as the `hub` command does: files the code location writes are their owner's alone

defs = Definitions.merge(
    publish.defs, serving.defs, research.defs, trainsets.defs, indicators.defs, maintenance.defs,
    # HUB_EXECUTOR=celery: steps run on Celery workers (deploy/, docs/deployment.md); unset: Dagster's default
    Definitions(resources={"hub": HubResource(workspace=str(workspace()))}, executor=executor_from_env()),
)

if is_workspace_home(workspace()) and (workspace() / "region.yaml").exists():
    from dagster import DagsterInstance

    from hub.region import load_region

    sync_partitions(DagsterInstance.get(), load_region(workspace()))
