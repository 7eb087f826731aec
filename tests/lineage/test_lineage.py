"""`hub lineage trace`: from a published row back to source, run, mapping, manifest; forward to releases."""

from __future__ import annotations

import pytest

from hub.fhir.ids import resource_id
from hub.lineage.trace import trace
from hub.research import build_release
from tests.conftest import publish_region

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def region(tmp_path_factory, keys):
    region, _, _ = publish_region(tmp_path_factory.mktemp("lineage"), keys, 30)
    build_release(region, keys, name="release-1", k=2, max_suppression=0.5)
    return region


def test_trace_goes_back_to_source_run_mapping_and_manifest(region, keys):
    rid = resource_id(keys, "city-first", "observation", [10])  # lab_result.result_id = 10
    chain = trace(region, keys, f"Observation/{rid}", source_key=["10"])
    assert chain["zone"] == "recognition" and chain["row"]["source_table"] == "lab_result"
    assert chain["source_key_matches"] is True
    assert trace(region, keys, f"Observation/{rid}", source_key=["11"])["source_key_matches"] is False
    assert chain["run"]["status"] == "succeeded" and chain["run"]["run_id"] == chain["row"]["run_id"]
    assert chain["counts"]["rows_read"] == chain["counts"]["published"] + chain["counts"]["quarantined"]
    assert chain["mapping"]["unchanged"] and chain["mapping"]["recorded"].startswith("lis_vendor_a@")
    assert chain["manifest"]["data_file_intact"] is True


def test_trace_goes_forward_to_research_releases(region, keys):
    rid = resource_id(keys, "city-first", "observation", [10])
    assert trace(region, keys, f"Observation/{rid}")["research_releases"] == ["release-1"]


def test_unknown_resource_is_a_clear_error(region, keys):
    with pytest.raises(KeyError, match="is not published"):
        trace(region, keys, "Observation/0000")
