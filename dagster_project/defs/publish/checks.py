"""Asset checks of the recognition-zone tables: their specs, and their results from hub.runchecks.

Each table has four: validation rate and quarantine rate (warnings), leak scan (blocking)
and audit verify. They are partitioned like the tables, so each institution's run records
its own results and the UI shows them per partition.
"""

import warnings

from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetKey, PreviewWarning

from dagster_project.partitions import institutions
from hub.fhir.validate import RESOURCE_MODULES
from hub.lineage.manifests import VerifyReport
from hub.runchecks import MAX_QUARANTINE_RATE, MIN_VALIDATION_RATE, ZONE, TableChecks


def table_key(resource_type: str) -> AssetKey:
    return AssetKey([ZONE, resource_type.lower()])


DESCRIPTIONS = {
    "validation_rate": f"at least {MIN_VALIDATION_RATE:.0%} of mapped resources pass FHIR R4 validation",
    "quarantine_rate": f"at most {MAX_QUARANTINE_RATE:.0%} of source rows are quarantined",
    "leak_scan": "no resident ID number, mobile number or canary value in the partition's Parquet files or this run's logs",
    "audit_verify": "the manifest chain verifies (hashes, links, trusted signatures), every table's live snapshots and files "
                    "are the ones it records, and the latest manifest's files are intact",
}

with warnings.catch_warnings():
    warnings.simplefilter("ignore", PreviewWarning)  # partitioned checks are a preview feature of Dagster 1.x
    CHECK_SPECS = [
        AssetCheckSpec(name, asset=table_key(rt), blocking=name == "leak_scan", description=text, partitions_def=institutions)
        for rt in RESOURCE_MODULES
        for name, text in DESCRIPTIONS.items()
    ]


def check_results(table: TableChecks, audit: VerifyReport) -> list[AssetCheckResult]:
    """The four check results of one table, in the order Dagster has always received them."""
    key = table_key(table.resource_type)
    return [
        AssetCheckResult(
            asset_key=key, check_name="validation_rate", passed=table.validation_ok, severity=AssetCheckSeverity.WARN,
            metadata={"validation_rate": table.validation_rate, "failed_validation": table.counts["failed_validation"]},
        ),
        AssetCheckResult(
            asset_key=key, check_name="quarantine_rate", passed=table.quarantine_ok, severity=AssetCheckSeverity.WARN,
            metadata={"quarantine_rate": table.quarantine_rate, "quarantined": table.counts["quarantined"]},
        ),
        AssetCheckResult(
            asset_key=key, check_name="audit_verify", passed=audit.ok, severity=AssetCheckSeverity.ERROR,
            metadata={"manifests": audit.manifests, "files_rehashed": audit.files, "breaks": audit.breaks[:5]},
        ),
        AssetCheckResult(
            asset_key=key, check_name="leak_scan", passed=not table.hits, severity=AssetCheckSeverity.ERROR,
            metadata={"files_scanned": table.files_scanned, "hits": len(table.hits),
                      "first_hits (masked)": [str(h) for h in table.hits[:5]],
                      "code_system_exemptions": table.exemptions},
        ),
    ]
