"""Assets: one per published table of the recognition zone, all produced by one institution run.

A run for one institution partition pulls every feed of that institution and publishes
every resource type at once, so the tables are one multi-asset, with the checks of
checks.py. The HIS and LIS databases are external source assets.
"""

from collections.abc import Iterator

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    Config,
    MaterializeResult,
    multi_asset,
)

from dagster_project.defs.publish.checks import CHECK_SPECS, check_results, table_key
from dagster_project.partitions import institutions
from dagster_project.resources import HubResource
from hub.fhir.validate import RESOURCE_MODULES
from hub.pipeline import run_institution
from hub.progress import reporter
from hub.runchecks import ZONE, RunChecks

SOURCES = [AssetSpec(key=AssetKey(["sources", system]), description=f"{system.upper()} databases of each institution (external)", group_name="sources") for system in ("his", "lis")]

TABLE_SPECS = [
    AssetSpec(
        key=table_key(rt),
        deps=[s.key for s in SOURCES],
        group_name=ZONE,
        description=f"Iceberg table {ZONE}.{rt.lower()}: de-identified FHIR R4 {rt} with lineage columns",
        metadata={"table": f"{ZONE}.{rt.lower()}", "resource_type": rt},
    )
    for rt in RESOURCE_MODULES
]


class PublishConfig(Config):
    """full: ignore watermarks and pull every row again (unchanged rows are not rewritten)."""

    full: bool = False


@multi_asset(specs=TABLE_SPECS, check_specs=CHECK_SPECS, partitions_def=institutions, can_subset=False)
def recognition_tables(context: AssetExecutionContext, config: PublishConfig, hub: HubResource) -> Iterator:
    """Pull one institution's feeds (incrementally) and publish every resource type to the recognition zone."""
    region = hub.region()
    report = run_institution(region, context.partition_key, hub.keyring(), progress=reporter(), full=config.full)
    log_text = "\n".join(e.user_message or "" for e in context.instance.all_logs(context.run_id))
    checks = RunChecks(region, report, log_text, f"run {context.run_id} logs")
    manifest = {"manifest_seq": report.manifest[0], "manifest_hash": report.manifest[1]} if report.manifest else {}
    for rt in RESOURCE_MODULES:
        table = checks.table(rt)
        c = table.counts
        yield MaterializeResult(
            asset_key=table_key(rt),
            metadata={
                "dagster/row_count": c["published"],
                "rows_read": c["read"], "rows_quarantined": c["quarantined"],
                "rows_written": c["written"], "rows_unchanged": c["unchanged"],
                "run_id": report.run_id, "snapshot_id": str(report.snapshots.get(rt, "")),
                "ruleset": report.ruleset, "key_id": report.key_id,
                "quarantine_causes": table.causes,
                **manifest,
            },
        )
        yield from check_results(table, checks.audit)
