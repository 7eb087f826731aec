"""Schedules: pull every registered institution hourly (running from the first `dagster dev`)."""

from dagster import DefaultScheduleStatus, RunRequest, ScheduleEvaluationContext, schedule

from dagster_project.defs.publish.jobs import publish_recognition
from dagster_project.partitions import INSTITUTIONS


@schedule(job=publish_recognition, cron_schedule="0 * * * *", default_status=DefaultScheduleStatus.RUNNING,
          description="Hourly incremental pull of every registered institution.")
def hourly_pull(context: ScheduleEvaluationContext):
    for institution in context.instance.get_dynamic_partitions(INSTITUTIONS):
        yield RunRequest(partition_key=institution, run_key=None)
