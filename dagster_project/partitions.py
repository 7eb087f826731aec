"""Institution partitions (shared by every domain): dynamic, so registering an institution in region.yaml needs no code.

The ``new_institutions`` sensor (defs/publish/sensors.py) adds a partition for each institution that
appears in region.yaml and requests its first run. ``institution_days`` crosses them with days (from
HUB_BACKFILL_START, default 2024-01-01) for the ``backfill_days`` job: one run per institution and day.
"""

from __future__ import annotations

import os
from pathlib import Path

from dagster import (
    DailyPartitionsDefinition,
    DynamicPartitionsDefinition,
    MultiPartitionsDefinition,
)

from hub.region import DEFAULT_WORKSPACE

INSTITUTIONS = "institutions"
institutions = DynamicPartitionsDefinition(name=INSTITUTIONS)
#: The first day a backfill by day can pull (the environment of the code location sets it).
BACKFILL_START = os.environ.get("HUB_BACKFILL_START", "2024-01-01")
institution_days = MultiPartitionsDefinition({
    "institution": institutions,
    "day": DailyPartitionsDefinition(start_date=BACKFILL_START),
})


def workspace() -> Path:
    return Path(os.environ.get("HUB_WORKSPACE", DEFAULT_WORKSPACE))
