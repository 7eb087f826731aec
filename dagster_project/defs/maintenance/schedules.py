"""Schedules: compaction nightly and orphan removal daily (running), snapshot expiry weekly (stopped).

Expiry ends time travel to the snapshots it removes, so how long history is kept is the
operator's decision: its schedule starts stopped; turn it on in the UI (Automation) or with
``dagster schedule start weekly_snapshot_expiry`` once the retention (ExpiryConfig) is agreed.
Compaction and orphan removal change no row anyone reads, so they run from the start.
"""

from dagster import DefaultScheduleStatus, ScheduleDefinition

from dagster_project.defs.maintenance.jobs import (
    lakehouse_compaction,
    lakehouse_expiry,
    lakehouse_orphans,
)

nightly_compaction = ScheduleDefinition(
    name="nightly_compaction", job=lakehouse_compaction, cron_schedule="30 2 * * *",
    default_status=DefaultScheduleStatus.RUNNING, description="Compact small files every night at 02:30.")
daily_orphan_removal = ScheduleDefinition(
    name="daily_orphan_removal", job=lakehouse_orphans, cron_schedule="30 4 * * *",
    default_status=DefaultScheduleStatus.RUNNING, description="Remove files no snapshot reads every day at 04:30.")
weekly_snapshot_expiry = ScheduleDefinition(
    name="weekly_snapshot_expiry", job=lakehouse_expiry, cron_schedule="0 4 * * 0",
    default_status=DefaultScheduleStatus.STOPPED,
    description="Expire snapshots older than 7 days (last 10 and tagged ones kept), Sundays at 04:00; stopped until an operator starts it.")
