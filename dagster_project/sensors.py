"""Sensors and schedules: pick up newly registered institutions; pull every institution hourly."""

from dagster import (
    RunRequest,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    schedule,
    sensor,
)

from dagster_project.jobs import publish_recognition
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


@schedule(job=publish_recognition, cron_schedule="0 * * * *", description="Hourly incremental pull of every registered institution.")
def hourly_pull(context: ScheduleEvaluationContext):
    for institution in context.instance.get_dynamic_partitions(INSTITUTIONS):
        yield RunRequest(partition_key=institution, run_key=None)
