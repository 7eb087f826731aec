"""The checks on what one institution's run published: validation rate, quarantine rate, leak scan, audit.

After a run publishes an institution's partition of the recognition zone, each table gets
four checks: the share of mapped resources FHIR R4 accepts, the share of source rows
quarantined, a leak scan of the Parquet files the run added and the run's log text (resident
ID numbers, mobile numbers, canaries), and a verification of the manifest chain. Files of
earlier runs were scanned by their own runs' checks, and the signed manifests (hub audit
verify) catch any later change to them, so a run that changes nothing reads nothing here. Dagster
attaches them as asset checks (dagster_project/defs/publish/checks.py); they are plain
functions so that any caller can run them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyiceberg.exceptions import NoSuchTableError

from hub.lakehouse.tables import open_catalog, table_name
from hub.leakscan import Hit, Scanner, load_canaries, load_scan_policy, run_files
from hub.lineage.audit import verify_region
from hub.lineage.manifests import VerifyReport
from hub.region import Region
from hub.runreport import RunReport

ZONE = "recognition"
MIN_VALIDATION_RATE = 0.99
MAX_QUARANTINE_RATE = 0.05
NO_ROWS = {"read": 0, "published": 0, "quarantined": 0, "failed_validation": 0, "written": 0, "unchanged": 0}


def validation_rate(counts: dict[str, int]) -> float:
    """Share of mapped resources that passed FHIR R4 validation (1.0 when nothing was mapped).

    Mapped = read minus the rows quarantined for another reason than validation.
    """
    mapped = counts["read"] - (counts["quarantined"] - counts["failed_validation"])
    return 1.0 if mapped == 0 else 1 - counts["failed_validation"] / mapped


def quarantine_rate(counts: dict[str, int]) -> float:
    """Share of source rows quarantined (0.0 when nothing was read)."""
    return 0.0 if counts["read"] == 0 else counts["quarantined"] / counts["read"]


@dataclass
class TableChecks:
    """The checks of one resource type's table for one institution run."""

    resource_type: str
    counts: dict[str, int]
    causes: dict[str, int]  # quarantine causes of this resource type, most common first
    validation_rate: float
    quarantine_rate: float
    files_scanned: int
    hits: list[Hit] = field(default_factory=list)  # leak-scan hits in the files and the run's logs
    exemptions: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def validation_ok(self) -> bool:
        return self.validation_rate >= MIN_VALIDATION_RATE

    @property
    def quarantine_ok(self) -> bool:
        return self.quarantine_rate <= MAX_QUARANTINE_RATE


class RunChecks:
    """Checks for one institution run: scans the run's log text and verifies the chain once,
    then checks each table on demand with ``table(resource_type)``."""

    def __init__(self, region: Region, report: RunReport, log_text: str = "", log_source: str = "run logs"):
        self.report = report
        self.by_resource = report.by_resource()
        self.scanner = Scanner(load_canaries(region.workspace), load_scan_policy(region.ruleset))
        self.catalog = open_catalog(region.catalog_url, region.warehouse)
        self.log_hits = self.scanner.text(log_text, log_source).hits
        # other institutions may be publishing meanwhile: their in-flight runs are not breaks
        self.audit: VerifyReport = verify_region(region, last=1, in_flight_ok=True)

    def table(self, resource_type: str) -> TableChecks:
        counts = self.by_resource.get(resource_type, dict(NO_ROWS))
        try:
            files = run_files(self.catalog.load_table(table_name(ZONE, resource_type)), self.report.run_id)
        except NoSuchTableError:
            files = []
        scanned = self.scanner.files(files)
        return TableChecks(
            resource_type=resource_type, counts=counts,
            causes={k: v for k, v in self.report.causes.most_common() if k.startswith(f"{resource_type}.")},
            validation_rate=validation_rate(counts), quarantine_rate=quarantine_rate(counts),
            files_scanned=len(files), hits=scanned.hits + self.log_hits, exemptions=scanned.exemptions(),
        )
