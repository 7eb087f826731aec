"""Backfills by day: the ``backfill_days`` job runs one institution for one day (institution × day partitions).

A year of one hospital is 365 partitions, which Dagster's backfill fans out over its workers. Each
run is a windowed run of hub.pipeline.run_institution: the blocks with a time column, rows of that
day (the source's local time). What a day does not pull (blocks without a time column, file feeds,
watermarks, deletions) stays with the institution's regular run (``publish_recognition``), which
should run once the backfill is done. Like the regular runs, each run carries one
``hub-db/<institution>.<feed>`` tag per source database, so the production run queue holds each
HIS to its ``max_connections`` however wide the backfill.

An op job, not assets: the recognition tables are partitioned by institution, and an asset has one
partitions definition. The op reports an AssetMaterialization per table it wrote to, for the
institution's partition, with this run's counts and window.
"""

import datetime as dt
from collections.abc import Iterator

from dagster import AssetMaterialization, OpExecutionContext, Output, PartitionedConfig, job, op

from dagster_project.defs.publish.checks import table_key
from dagster_project.defs.publish.jobs import partition_tags
from dagster_project.partitions import institution_days
from dagster_project.resources import HubResource
from hub.pipeline import run_institution
from hub.progress import reporter


def day_and_institution(partition_key: str) -> tuple[dt.date, str]:
    """The day and the institution of a multi-partition key of ``institution_days``."""
    keys = institution_days.get_partition_key_from_str(partition_key).keys_by_dimension
    return dt.date.fromisoformat(keys["day"]), keys["institution"]


def day_tags(partition_key: str) -> dict[str, str]:
    """The source-database tags of the institution the partition key names."""
    return partition_tags(day_and_institution(partition_key)[1])


@op(description="Publish one institution's rows of one day: first its patients (incremental), then the blocks with a "
                "time column, rows of that day.")
def publish_day(context: OpExecutionContext, hub: HubResource) -> Iterator:
    day, institution = day_and_institution(context.partition_key)
    start = dt.datetime.combine(day, dt.time())
    report = run_institution(hub.region(), institution, hub.keyring(), progress=reporter(),
                             window=(start, start + dt.timedelta(days=1)))
    for rt, c in report.by_resource().items():
        if not c["read"]:
            continue
        yield AssetMaterialization(asset_key=table_key(rt), partition=institution, metadata={
            "rows_read": c["read"], "rows_published": c["published"], "rows_quarantined": c["quarantined"],
            "rows_written": c["written"], "rows_unchanged": c["unchanged"],
            "window": f"{report.window[0]} .. {report.window[1]}", "day": day.isoformat(),
            "run_id": report.run_id, "snapshot_id": str(report.snapshots.get(rt, "")),
        })
    yield Output({"run_id": report.run_id, "window": list(report.window), "outside_window": report.outside_window,
                  "referenced_run": report.referenced_run},
                 metadata={"run_id": report.run_id, "outside_window": ", ".join(report.outside_window) or "-",
                           "referenced_run": report.referenced_run or "-"})


@job(description="Backfill one institution's day: the rows of that day of every table with a time column.",
     partitions_def=institution_days,
     config=PartitionedConfig(partitions_def=institution_days, run_config_for_partition_key_fn=lambda _key: {},
                              tags_for_partition_key_fn=day_tags))
def backfill_days():
    publish_day()
