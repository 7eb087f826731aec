"""The leak scan: finds identifiers and canaries, ignores pseudonyms, and blocks publication."""

from __future__ import annotations

import json

import pytest
import yaml

from hub.demo.generator import canary, generate_region
from hub.leakscan import LeakBlocked, scan_files, scan_text
from hub.pipeline import run_institution
from hub.region import load_region
from tests.conftest import REPO


def test_finds_ids_phones_and_canaries_masked():
    hits = scan_text('{"note":"金丝雀 110101199003074610 13800138000"}', "t", frozenset({"金丝雀"}))
    assert sorted(h.kind for h in hits) == ["canary", "mobile", "resident-id"]
    assert all("110101199003074610" not in str(h) and "13800138000" not in str(h) for h in hits)


def test_hex_pseudonyms_are_not_phone_numbers():
    assert scan_text('{"id":"ab13812345678cd","value":"e13812345678"}', "t") == []


def test_demo_publication_is_clean_and_canary_is_planted(demo):
    region, _, _ = demo
    canaries = frozenset(json.loads((region.workspace / "canary.json").read_text(encoding="utf-8"))["values"])
    assert canary().id_number in canaries and len(canaries) >= 6  # name, ID, phone, address and an MRN per institution
    assert scan_files(sorted(region.warehouse.rglob("*.parquet")), canaries) == []


@pytest.mark.slow
def test_a_ruleset_that_would_publish_names_is_blocked_before_commit(tmp_path, keys):
    generate_region(tmp_path, patients=10)
    rules = yaml.safe_load((REPO / "deid" / "rules" / "default.yaml").read_text(encoding="utf-8"))
    for rule in rules["rules"]:
        if rule["element"] in ("DE02.01.039.00", "DE02.01.010.00"):  # name, phone: a reviewer's mistake
            rule["action"]["recognition"] = "keep"
    (tmp_path / "leaky.yaml").write_text(yaml.safe_dump(rules, allow_unicode=True), encoding="utf-8")
    region_doc = yaml.safe_load((tmp_path / "region.yaml").read_text(encoding="utf-8"))
    region_doc["ruleset"] = str(tmp_path / "leaky.yaml")
    (tmp_path / "region.yaml").write_text(yaml.safe_dump(region_doc, allow_unicode=True), encoding="utf-8")
    region = load_region(tmp_path)

    with pytest.raises(LeakBlocked) as exc:
        run_institution(region, "city-first", keys)
    assert {h.kind for h in exc.value.hits} >= {"mobile", "canary"}
    assert "13000000013" not in str(exc.value)  # the report is masked
    canaries = frozenset(json.loads((tmp_path / "canary.json").read_text(encoding="utf-8"))["values"])
    assert scan_files(sorted(region.warehouse.rglob("*.parquet")), canaries) == []  # nothing was committed
