"""Assets: one per published table of the recognition zone, all produced by one institution run.

A run for one institution partition pulls every feed of that institution and publishes
every resource type at once, so the tables are one multi-asset, with the checks of
checks.py. The feeds are external source assets, one per source system the mapping files
in mappings/ declare (HIS, LIS, HL7v2); a table depends on the systems whose mappings
produce its resource type. FHIR NDJSON feeds carry resources of any type and have no
mapping: they are not drawn.
"""

from collections.abc import Iterator
from functools import cache

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    Config,
    MaterializeResult,
    multi_asset,
)
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.expressions import EqualTo

from dagster_project.defs.publish.checks import CHECK_SPECS, check_results, table_key
from dagster_project.partitions import institutions
from dagster_project.resources import HubResource
from hub.fhir.validate import RESOURCE_MODULES
from hub.lakehouse.tables import table_name
from hub.mapping.spec import load_mapping
from hub.pipeline import run_institution
from hub.progress import reporter
from hub.region import REPO_ROOT
from hub.runchecks import ZONE, RunChecks

SYSTEM_DESCRIPTIONS = {
    "his": "HIS databases of each institution (external)",
    "lis": "LIS databases of each institution (external)",
    "hl7v2": "HL7 v2 message folders of each institution (external)",
}


@cache
def produced_by_system() -> dict[str, frozenset[str]]:
    """{source system (lower case): resource types its mapping files produce}, from mappings/*.yaml."""
    out: dict[str, set[str]] = {}
    for path in sorted((REPO_ROOT / "mappings").glob("*.yaml")):
        mapping = load_mapping(path)
        out.setdefault(mapping.system.lower(), set()).update(b.resource for b in mapping.blocks)
    return {system: frozenset(types) for system, types in sorted(out.items())}


def source_key(system: str) -> AssetKey:
    return AssetKey(["sources", system])


SOURCES = [
    AssetSpec(key=source_key(system), group_name="sources",
              description=SYSTEM_DESCRIPTIONS.get(system, f"{system} feeds of each institution (external)"))
    for system in produced_by_system()
]

TABLE_SPECS = [
    AssetSpec(
        key=table_key(rt),
        deps=[source_key(system) for system, types in produced_by_system().items() if rt in types],
        group_name=ZONE,
        description=f"Iceberg table {ZONE}.{rt.lower()}: de-identified FHIR R4 {rt} with lineage columns",
        metadata={"table": f"{ZONE}.{rt.lower()}", "resource_type": rt},
    )
    for rt in RESOURCE_MODULES
]


class PublishConfig(Config):
    """full: ignore watermarks and pull every row again (unchanged rows are not rewritten)."""

    full: bool = False


def partition_rows(catalog, resource_type: str, institution: str, snapshot_id: int | None) -> int:
    """Rows of the institution's partition of the table, at snapshot_id (else the current snapshot)."""
    try:
        table = catalog.load_table(table_name(ZONE, resource_type))
    except NoSuchTableError:
        return 0
    return table.scan(row_filter=EqualTo("institution", institution), snapshot_id=snapshot_id, selected_fields=("id",)).count()


@multi_asset(specs=TABLE_SPECS, check_specs=CHECK_SPECS, partitions_def=institutions, can_subset=False)
def recognition_tables(context: AssetExecutionContext, config: PublishConfig, hub: HubResource) -> Iterator:
    """Pull one institution's feeds (incrementally) and publish every resource type to the recognition zone.

    dagster/row_count is the partition's rows in the table after the run; rows_read and the
    other rows_* counts are this run's.
    """
    region = hub.region()
    report = run_institution(region, context.partition_key, hub.keyring(), progress=reporter(), full=config.full)
    log_text = "\n".join(e.user_message or "" for e in context.instance.all_logs(context.run_id))
    checks = RunChecks(region, report, log_text, f"run {context.run_id} logs")
    manifest = {"manifest_seq": report.manifest[0], "manifest_hash": report.manifest[1]} if report.manifest else {}
    for rt in RESOURCE_MODULES:
        table = checks.table(rt)
        c = table.counts
        snapshot = report.snapshots.get(rt)
        yield MaterializeResult(
            asset_key=table_key(rt),
            metadata={
                "dagster/row_count": partition_rows(checks.catalog, rt, report.institution, snapshot),
                "rows_read": c["read"], "rows_published": c["published"], "rows_quarantined": c["quarantined"],
                "rows_written": c["written"], "rows_unchanged": c["unchanged"],
                "run_id": report.run_id, "snapshot_id": str(snapshot or ""),
                "ruleset": report.ruleset, "key_id": report.key_id,
                "quarantine_causes": table.causes,
                **manifest,
            },
        )
        yield from check_results(table, checks.audit)
