"""Institution partitions, read from the workspace's region.yaml (the demo's ids if there is none)."""

from __future__ import annotations

import os
from pathlib import Path

from dagster import StaticPartitionsDefinition

from hub.demo.generator import INSTITUTIONS
from hub.region import DEFAULT_WORKSPACE, load_region


def workspace() -> Path:
    return Path(os.environ.get("HUB_WORKSPACE", DEFAULT_WORKSPACE))


def institution_ids() -> list[str]:
    try:
        return [i.id for i in load_region(workspace()).institutions]
    except FileNotFoundError:
        return [i.id for i in INSTITUTIONS]


institutions = StaticPartitionsDefinition(institution_ids())
