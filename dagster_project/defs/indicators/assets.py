"""Assets: the guideline indicators table, computed with ViewDefinitions from the published tables."""

from dagster import AssetKey, MaterializeResult, asset

from dagster_project.defs.publish.checks import table_key
from dagster_project.resources import HubResource


@asset(
    key=AssetKey(["indicators", "outcomes"]),
    deps=[table_key(t) for t in ("Observation", "Condition", "Encounter")],
    group_name="indicators",
    description="Guideline indicators per institution and month (HbA1c, blood pressure, LDL-C, all three at target; "
                "indicators/cn-t2dm-2020.yaml), as an Iceberg table",
)
def outcome_indicators(hub: HubResource) -> MaterializeResult:
    """Compute the indicators with ViewDefinitions and replace the indicators.outcomes table."""
    from hub.trainset.indicator_config import load_config
    from hub.trainset.indicators import publish

    config = load_config()
    return MaterializeResult(metadata={"dagster/row_count": publish(hub.region(), hub.keyring(), config),
                                       "config": config.label})
