"""The serving domain's definitions: the recognition index."""

from dagster import Definitions

from dagster_project.defs.serving.assets import recognition_index

defs = Definitions(assets=[recognition_index])
