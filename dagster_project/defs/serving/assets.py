"""Assets: the recognition index, updated by every publish run.

The publish job (defs/publish/jobs.py) selects it after the institution's tables, so each
run that publishes an institution also adds its results to the index the recognition API
serves; it is not partitioned (one index for the region) and its update is incremental.
"""

from dagster import AssetKey, MaterializeResult, asset

from dagster_project.defs.publish.checks import table_key
from dagster_project.resources import HubResource
from hub.recognition.index import build as build_index
from hub.recognition.index import connect as connect_index
from hub.recognition.index import index_url

INDEX_KEY = AssetKey(["recognition", "index"])


@asset(
    key=INDEX_KEY,
    deps=[table_key(t) for t in ("Patient", "Observation", "DiagnosticReport")],
    group_name="serving",
    description="Recognition index (SQLite in the workspace): latest results per patient, item and institution, for the recognition API",
)
def recognition_index(hub: HubResource) -> MaterializeResult:
    """Add results published since the last build to the recognition index (rebuilt after a re-key or deletions)."""
    region = hub.region()
    read = build_index(region, connect_index(index_url(region)), hub.keyring())
    return MaterializeResult(metadata={"rows_read": read, "index": index_url(region)})
