"""Assets: the recognition index, rebuilt incrementally whenever the tables it reads change."""

from dagster import AssetKey, AutomationCondition, MaterializeResult, asset

from dagster_project.defs.publish.checks import table_key
from dagster_project.resources import HubResource
from hub.recognition.index import build as build_index
from hub.recognition.index import connect as connect_index
from hub.recognition.index import index_url


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
