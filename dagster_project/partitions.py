"""Institution partitions (shared by every domain): dynamic, so registering an institution in region.yaml needs no code.

The ``new_institutions`` sensor (defs/publish/sensors.py) adds a partition for each institution that
appears in region.yaml and requests its first run.
"""

from __future__ import annotations

import os
from pathlib import Path

from dagster import DynamicPartitionsDefinition

from hub.region import DEFAULT_WORKSPACE

INSTITUTIONS = "institutions"
institutions = DynamicPartitionsDefinition(name=INSTITUTIONS)


def workspace() -> Path:
    return Path(os.environ.get("HUB_WORKSPACE", DEFAULT_WORKSPACE))
