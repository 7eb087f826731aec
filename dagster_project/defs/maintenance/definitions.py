"""The maintenance domain's definitions: compaction, expiry and orphan-removal jobs and their schedules."""

from dagster import Definitions

from dagster_project.defs.maintenance.jobs import (
    lakehouse_compaction,
    lakehouse_expiry,
    lakehouse_orphans,
)
from dagster_project.defs.maintenance.schedules import (
    daily_orphan_removal,
    nightly_compaction,
    weekly_snapshot_expiry,
)

defs = Definitions(
    jobs=[lakehouse_compaction, lakehouse_expiry, lakehouse_orphans],
    schedules=[nightly_compaction, daily_orphan_removal, weekly_snapshot_expiry],
)
