"""Quarantine you can act on: show decrypts, replay publishes what now passes, counts reconcile."""

from __future__ import annotations

import json
import shutil

import pytest
import sqlalchemy as sa
import yaml

from hub import quarantine
from hub.demo.generator import generate_region
from hub.lakehouse.tables import open_catalog
from hub.lineage import runrecord
from hub.pipeline import run_institution
from hub.region import load_region
from hub.replay import replay
from tests.conftest import REPO

pytestmark = pytest.mark.slow
INST = "city-first"


@pytest.fixture()
def published(tmp_path, keys):
    shutil.copytree(REPO / "mappings", tmp_path / "mappings")
    generate_region(tmp_path / "ws", patients=15)
    region_file = tmp_path / "ws" / "region.yaml"
    doc = yaml.safe_load(region_file.read_text(encoding="utf-8"))
    doc["mappings_dir"] = str(tmp_path / "mappings")  # a copy we may fix
    region_file.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    region = load_region(tmp_path / "ws")
    run_institution(region, INST, keys)
    return region, runrecord.connect(region.catalog_url)


def _open(engine, resource="Observation"):
    return [e for e in quarantine.list_rows(engine, institution=INST, status="open") if e["resource_type"] == resource]


def _observations(region) -> int:
    table = open_catalog(region.catalog_url, region.warehouse).load_table("recognition.observation")
    return table.scan(row_filter=f"institution == '{INST}'").to_arrow().num_rows


def _lis(region):
    return sa.create_engine(next(f.url for f in region.institution(INST).feeds if f.name == "lis"))


def test_replay_after_a_source_fix_publishes_the_row(published, keys):
    region, engine = published
    bad_date = next(e for e in _open(engine) if "is not a date-time" in e["reason"])
    row = quarantine.open_row(engine, keys, bad_date["id"])
    before = _observations(region)
    with _lis(region).begin() as conn:
        conn.execute(sa.text("UPDATE lab_result SET result_time = '2024-03-01 10:00:00' WHERE result_id = :r"),
                     {"r": row["lab_result.result_id"]})

    result = replay(region, INST, keys, [bad_date["id"]])

    assert (result.published, result.still_quarantined) == (1, 0)
    assert _observations(region) == before + 1
    entry = quarantine.list_rows(engine, ids=[bad_date["id"]])[0]
    assert entry["status"] == "resolved" and entry["closed_by"] == result.run.run_id
    counts = runrecord.counts_for_run(engine, result.run.run_id)
    assert sum(c["rows_read"] for c in counts) == sum(c["published"] + c["quarantined"] for c in counts) == 1


def test_replay_after_a_terminology_fix_publishes_the_row(published, keys, tmp_path):
    region, engine = published
    unknown = next(e for e in _open(engine) if "has no mapping in lab_items_vendor_a" in e["reason"])
    cmap_path = tmp_path / "mappings" / "terminology" / "lab_items_vendor_a.json"
    cmap = json.loads(cmap_path.read_text(encoding="utf-8"))
    local = quarantine.open_row(engine, keys, unknown["id"])["lab_result.item_code"]
    cmap["group"][0]["element"].append({"code": local, "target": [{"code": "2345-7", "display": "Glucose", "equivalence": "equivalent"}]})
    cmap_path.write_text(json.dumps(cmap, ensure_ascii=False), encoding="utf-8")

    result = replay(load_region(region.workspace), INST, keys)

    assert result.published >= 1
    assert not any("has no mapping in lab_items_vendor_a" in e["reason"] for e in _open(engine))


def test_replay_without_a_fix_keeps_one_open_entry_per_row(published, keys):
    region, engine = published
    every = quarantine.list_rows(engine, institution=INST, status="open")
    before = {(e["resource_type"], e["source_key_hash"]): e["id"] for e in every}
    total = len(quarantine.list_rows(engine, institution=INST))
    for _ in range(3):  # a feed re-read every run must not pile up entries
        result = replay(region, INST, keys)
        assert result.published == 0 and result.still_quarantined == len(before)
    after = quarantine.list_rows(engine, institution=INST, status="open")
    assert {(e["resource_type"], e["source_key_hash"]): e["id"] for e in after} == before  # the same entries ...
    assert all(e["run_id"] == result.run.run_id for e in after)  # ... updated by the latest run
    assert len(quarantine.list_rows(engine, institution=INST)) == total


def test_show_needs_the_key(published, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from hub.cli import app

    region, engine = published
    entry = _open(engine)[0]["id"]
    monkeypatch.delenv("HUB_MASTER_KEY", raising=False)
    monkeypatch.delenv("HUB_KEY_FILE", raising=False)
    result = CliRunner().invoke(app, ["quarantine", "show", str(entry), "--workspace", str(region.workspace)])
    assert result.exit_code != 0  # no key file in this workspace: nothing is decrypted
    assert "lab_result." not in result.stdout


def test_a_hostile_row_is_quarantined_with_reasons_free_of_its_values_and_show_reveals_them(published, keys, monkeypatch):
    import datetime as dt

    from typer.testing import CliRunner

    from hub.cli import app
    from hub.demo.generator import canary
    from hub.identifiers import find_identifiers

    region, engine = published
    c = canary()
    spaced_id = f"{c.id_number[:6]} {c.id_number[6:14]} {c.id_number[14:]}"
    dashed_phone = f"{c.phone[:3]}-{c.phone[3:7]}-{c.phone[7:]}"
    with _lis(region).begin() as conn:  # an insider's (or a broken interface's) row: identifiers where codes and dates belong
        target = conn.execute(sa.text("SELECT MIN(result_id) FROM lab_result")).scalar_one()
        conn.execute(sa.text("UPDATE lab_result SET result_time = :name, item_code = :sid, unit = :phone, "
                             "updated_at = :now WHERE result_id = :r"),
                     {"name": c.name, "sid": spaced_id, "phone": dashed_phone, "r": target,
                      "now": dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")})  # changed now: the next pull reads it
    run_institution(region, INST, keys)

    with engine.connect() as conn:  # what anyone with the catalog database reads, unencrypted
        stored = [dict(r._mapping) for r in conn.execute(sa.select(quarantine.quarantine.c.id, quarantine.quarantine.c.reason,
                                                                   quarantine.quarantine.c.cause))]
    hostile = [e for e in stored if "column item_code (value withheld:" in e["reason"]]
    assert len(hostile) == 1 and "column result_time (value withheld: not in safe_columns)" in hostile[0]["reason"]
    text = json.dumps(stored, ensure_ascii=False)
    for value in (c.name, c.id_number, c.phone, spaced_id, dashed_phone):
        assert value not in text
    assert find_identifiers(text, [c.name, c.id_number, c.phone]) == []

    monkeypatch.setenv("HUB_MASTER_KEY", keys.master.hex())
    shown = CliRunner().invoke(app, ["quarantine", "show", str(hostile[0]["id"]), "--workspace", str(region.workspace)])
    assert shown.exit_code == 0, shown.output
    assert c.name in shown.stdout and spaced_id in shown.stdout and dashed_phone in shown.stdout  # with the key, the values are there
