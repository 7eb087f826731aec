"""The indicators domain's definitions: the outcome indicators table."""

from dagster import Definitions

from dagster_project.defs.indicators.assets import outcome_indicators

defs = Definitions(assets=[outcome_indicators])
