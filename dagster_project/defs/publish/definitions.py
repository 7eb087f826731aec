"""The publish domain's definitions: source assets, the recognition-zone tables and their checks, job, sensor, schedule."""

from dagster import Definitions

from dagster_project.defs.publish.assets import SOURCES, recognition_tables
from dagster_project.defs.publish.jobs import publish_recognition
from dagster_project.defs.publish.schedules import hourly_pull
from dagster_project.defs.publish.sensors import new_institutions

defs = Definitions(
    assets=[*SOURCES, recognition_tables],
    jobs=[publish_recognition],
    sensors=[new_institutions],
    schedules=[hourly_pull],
)
