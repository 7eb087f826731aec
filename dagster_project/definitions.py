"""All Dagster definitions of hub, composed from one module per concern.

Run ``dagster dev -m dagster_project.definitions`` with HUB_WORKSPACE pointing at a
workspace (default ``.hub``, as ``make demo`` creates) to see the asset graph.
"""

import os

from dagster import Definitions

from dagster_project.assets import (
    SOURCES,
    outcome_indicators,
    recognition_index,
    recognition_tables,
)
from dagster_project.jobs import publish_recognition
from dagster_project.partitions import workspace
from dagster_project.resources import HubResource
from dagster_project.sensors import hourly_pull, new_institutions

os.umask(0o077)  # as the `hub` command does: files the code location writes are their owner's alone

defs = Definitions(
    assets=[*SOURCES, recognition_tables, recognition_index, outcome_indicators],
    jobs=[publish_recognition],
    sensors=[new_institutions],
    schedules=[hourly_pull],
    resources={"hub": HubResource(workspace=str(workspace()))},
)
