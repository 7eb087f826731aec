"""Assets: the outcome indicators table, computed with ViewDefinitions from the published tables."""

from dagster import AssetKey, MaterializeResult, asset

from dagster_project.defs.publish.checks import table_key
from dagster_project.resources import HubResource


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
