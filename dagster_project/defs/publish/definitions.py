"""The publish domain's definitions: source assets, the recognition-zone tables and their checks, jobs (the regular
run and the backfill by day), sensor, schedule."""

from dagster import Definitions

from dagster_project.defs.publish.assets import SOURCES, recognition_tables
from dagster_project.defs.publish.backfill import backfill_days
from dagster_project.defs.publish.jobs import publish_recognition
from dagster_project.defs.publish.schedules import hourly_pull
from dagster_project.defs.publish.sensors import new_institutions

defs = Definitions(
    assets=[*SOURCES, recognition_tables],
    jobs=[publish_recognition, backfill_days],
    sensors=[new_institutions],
    schedules=[hourly_pull],
)
