"""The training-set domain's definitions: one asset per spec in trainsets/."""

from dagster import Definitions

from dagster_project.defs.trainsets.assets import TRAINSETS

defs = Definitions(assets=TRAINSETS)
