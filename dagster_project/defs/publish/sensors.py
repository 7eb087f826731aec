"""Sensors: pick up institutions newly registered in region.yaml."""

from dagster import RunRequest, SensorEvaluationContext, SensorResult, SkipReason, sensor

from dagster_project.defs.publish.jobs import publish_recognition
from dagster_project.partitions import INSTITUTIONS, institutions
from dagster_project.resources import HubResource


@sensor(job=publish_recognition, minimum_interval_seconds=60, description="Adds a partition and a first run for each institution newly registered in region.yaml.")
def new_institutions(context: SensorEvaluationContext, hub: HubResource):
    registered = set(context.instance.get_dynamic_partitions(INSTITUTIONS))
    configured = [i.id for i in hub.region().institutions]
    new = [i for i in configured if i not in registered]
    if not new:
        return SkipReason(f"no new institutions ({len(registered)} registered)")
    return SensorResult(
        run_requests=[RunRequest(partition_key=i, run_key=f"onboard-{i}") for i in new],
        dynamic_partitions_requests=[institutions.build_add_request(new)],
    )
