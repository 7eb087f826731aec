"""All Dagster definitions of hub: one folder per domain under defs/, merged here with the shared resource.

Run ``dagster dev -m dagster_project.definitions`` with HUB_WORKSPACE pointing at a
workspace (default ``.hub``, as ``make demo`` creates) to see the asset graph.
"""

import os

from dagster import Definitions

from dagster_project.defs.indicators.definitions import defs as indicators
from dagster_project.defs.publish.definitions import defs as publish
from dagster_project.defs.serving.definitions import defs as serving
from dagster_project.partitions import workspace
from dagster_project.resources import HubResource

os.umask(0o077)  # as the `hub` command does: files the code location writes are their owner's alone

defs = Definitions.merge(
    publish, serving, indicators,
    Definitions(resources={"hub": HubResource(workspace=str(workspace()))}),
)
