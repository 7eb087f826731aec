"""A copied workspace never writes into the original's warehouse: publishing into the copy is refused."""

from __future__ import annotations

import shutil

import pytest

from hub.lakehouse.tables import WarehouseMismatch, open_catalog
from hub.pipeline import run_institution
from hub.region import load_region
from tests.conftest import publish_region

pytestmark = pytest.mark.slow


def _files(root):
    return sorted(p.relative_to(root) for p in (root / "warehouse").rglob("*") if p.is_file())


def test_publishing_into_a_copied_workspace_is_refused_and_leaves_the_original_alone(tmp_path, keys):
    original = tmp_path / "original"
    publish_region(original, keys, 8)
    before = _files(original)
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    region = load_region(copy)
    with pytest.raises(WarehouseMismatch, match="the workspace was probably copied"):
        run_institution(region, "city-first", keys)
    assert _files(original) == before
    with pytest.raises(WarehouseMismatch):
        open_catalog(region.catalog_url, region.warehouse)
