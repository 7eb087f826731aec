"""Assets: one per published table of the recognition zone, all produced by one institution run.

A run for one institution partition pulls every feed of that institution and publishes
every resource type at once, so the tables are one multi-asset. Each table has two checks:
validation rate (mapped resources that FHIR R4 accepts) and quarantine rate.
"""

from collections.abc import Iterator

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    AutomationCondition,
    Config,
    MaterializeResult,
    asset,
    multi_asset,
)
from pyiceberg.exceptions import NoSuchTableError

from dagster_project.partitions import institutions
from dagster_project.resources import HubResource
from hub.fhir.validate import RESOURCE_MODULES
from hub.lakehouse.tables import open_catalog, table_name
from hub.leakscan import Scanner, load_canaries, load_scan_policy, published_files
from hub.lineage.audit import verify_region
from hub.pipeline import run_institution
from hub.progress import reporter
from hub.recognition.index import build as build_index
from hub.recognition.index import connect as connect_index
from hub.recognition.index import index_url

ZONE = "recognition"
MIN_VALIDATION_RATE = 0.99
MAX_QUARANTINE_RATE = 0.05
SOURCES = [AssetSpec(key=AssetKey(["sources", system]), description=f"{system.upper()} databases of each institution (external)", group_name="sources") for system in ("his", "lis")]


def table_key(resource_type: str) -> AssetKey:
    return AssetKey([ZONE, resource_type.lower()])


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
CHECK_SPECS = [
    spec
    for rt in RESOURCE_MODULES
    for spec in (
        AssetCheckSpec("validation_rate", asset=table_key(rt), description=f"at least {MIN_VALIDATION_RATE:.0%} of mapped resources pass FHIR R4 validation"),
        AssetCheckSpec("quarantine_rate", asset=table_key(rt), description=f"at most {MAX_QUARANTINE_RATE:.0%} of source rows are quarantined"),
        AssetCheckSpec("leak_scan", asset=table_key(rt), blocking=True, description="no resident ID number, mobile number or canary value in the partition's Parquet files or this run's logs"),
        AssetCheckSpec("audit_verify", asset=table_key(rt), description="the manifest chain verifies (hashes, links, trusted signatures), every table's live snapshots and files are the ones it records, and the latest manifest's files are intact"),
    )
]


class PublishConfig(Config):
    """full: ignore watermarks and pull every row again (unchanged rows are not rewritten)."""

    full: bool = False


@multi_asset(specs=TABLE_SPECS, check_specs=CHECK_SPECS, partitions_def=institutions, can_subset=False)
def recognition_tables(context: AssetExecutionContext, config: PublishConfig, hub: HubResource) -> Iterator:
    """Pull one institution's feeds (incrementally) and publish every resource type to the recognition zone."""
    region = hub.region()
    report = run_institution(region, context.partition_key, hub.keyring(), progress=reporter(), full=config.full)
    by_resource = report.by_resource()
    scanner = Scanner(load_canaries(region.workspace), load_scan_policy(region.ruleset))  # the sink's scan
    catalog = open_catalog(region.catalog_url, region.warehouse)
    log_text = "\n".join(e.user_message or "" for e in context.instance.all_logs(context.run_id))
    log_hits = scanner.text(log_text, f"run {context.run_id} logs").hits
    audit = verify_region(region, last=1, in_flight_ok=True)  # other institutions may be publishing meanwhile
    manifest = {"manifest_seq": report.manifest[0], "manifest_hash": report.manifest[1]} if report.manifest else {}
    for rt in RESOURCE_MODULES:
        c = by_resource.get(rt, {"read": 0, "published": 0, "quarantined": 0, "failed_validation": 0, "written": 0, "unchanged": 0})
        yield MaterializeResult(
            asset_key=table_key(rt),
            metadata={
                "dagster/row_count": c["published"],
                "rows_read": c["read"], "rows_quarantined": c["quarantined"],
                "rows_written": c["written"], "rows_unchanged": c["unchanged"],
                "run_id": report.run_id, "snapshot_id": str(report.snapshots.get(rt, "")),
                "ruleset": report.ruleset, "key_id": report.key_id,
                "quarantine_causes": {k: v for k, v in report.causes.most_common() if k.startswith(f"{rt}.")},
                **manifest,
            },
        )
        mapped = c["read"] - (c["quarantined"] - c["failed_validation"])
        validation_rate = 1.0 if mapped == 0 else 1 - c["failed_validation"] / mapped
        quarantine_rate = 0.0 if c["read"] == 0 else c["quarantined"] / c["read"]
        yield AssetCheckResult(
            asset_key=table_key(rt), check_name="validation_rate", passed=validation_rate >= MIN_VALIDATION_RATE,
            severity=AssetCheckSeverity.WARN, metadata={"validation_rate": validation_rate, "failed_validation": c["failed_validation"]},
        )
        yield AssetCheckResult(
            asset_key=table_key(rt), check_name="quarantine_rate", passed=quarantine_rate <= MAX_QUARANTINE_RATE,
            severity=AssetCheckSeverity.WARN, metadata={"quarantine_rate": quarantine_rate, "quarantined": c["quarantined"]},
        )
        try:
            files = published_files(catalog.load_table(table_name(ZONE, rt)), context.partition_key)
        except NoSuchTableError:
            files = []
        scanned = scanner.files(files)
        hits = scanned.hits + log_hits
        yield AssetCheckResult(
            asset_key=table_key(rt), check_name="audit_verify", passed=audit.ok, severity=AssetCheckSeverity.ERROR,
            metadata={"manifests": audit.manifests, "files_rehashed": audit.files, "breaks": audit.breaks[:5]},
        )
        yield AssetCheckResult(
            asset_key=table_key(rt), check_name="leak_scan", passed=not hits, severity=AssetCheckSeverity.ERROR,
            metadata={"files_scanned": len(files), "hits": len(hits), "first_hits (masked)": [str(h) for h in hits[:5]],
                      "code_system_exemptions": scanned.exemptions()},
        )


@asset(
    key=AssetKey(["recognition", "index"]),
    deps=[table_key(t) for t in ("Patient", "Observation", "DiagnosticReport")],
    group_name="serving",
    automation_condition=AutomationCondition.eager(),
    description="Recognition index (SQLite in the workspace): latest results per patient, item and institution, for the recognition API",
)
def recognition_index(hub: HubResource) -> MaterializeResult:
    """Add results published since the last build to the recognition index."""
    region = hub.region()
    read = build_index(region, connect_index(index_url(region)))
    return MaterializeResult(metadata={"rows_read": read, "index": index_url(region)})


@asset(
    key=AssetKey(["indicators", "outcomes"]),
    deps=[table_key(t) for t in ("Observation", "Condition", "Organization")],
    group_name="indicators",
    description="Outcome indicators per institution and month (HbA1c, LDL, blood pressure at target), as an Iceberg table",
)
def outcome_indicators(hub: HubResource) -> MaterializeResult:
    """Compute the indicators with ViewDefinitions and replace the indicators.outcomes table."""
    from hub.trainset.indicators import publish

    return MaterializeResult(metadata={"dagster/row_count": publish(hub.region(), hub.keyring())})
