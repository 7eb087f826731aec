"""Sensors: pick up institutions newly registered in region.yaml (running from the first `dagster dev`)."""

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from dagster_project.defs.publish.checks import table_key
from dagster_project.defs.publish.jobs import publish_recognition
from dagster_project.partitions import INSTITUTIONS, institutions
from dagster_project.resources import HubResource


@sensor(job=publish_recognition, minimum_interval_seconds=60, default_status=DefaultSensorStatus.RUNNING,
        description="Adds a partition and requests a first run for each institution of region.yaml that was never published.")
def new_institutions(context: SensorEvaluationContext, hub: HubResource):
    """An institution is new until its partition has a materialization; its run key makes one first run only.

    Partitions may already exist (the code location adds them on load, see definitions.py),
    so "new" is "never published", not "not registered".
    """
    registered = set(context.instance.get_dynamic_partitions(INSTITUTIONS))
    published = context.instance.get_materialized_partitions(table_key("Patient"))
    configured = [i.id for i in hub.region().institutions]
    new = [i for i in configured if i not in published]
    if not new:
        return SkipReason(f"no new institutions ({len(published)} published)")
    unregistered = [i for i in new if i not in registered]
    return SensorResult(
        run_requests=[RunRequest(partition_key=i, run_key=f"onboard-{i}") for i in new],
        dynamic_partitions_requests=[institutions.build_add_request(unregistered)] if unregistered else [],
    )
