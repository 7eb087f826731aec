"""Key rotation: old sealed data stays readable; re-pseudonymization re-keys what is published."""

from __future__ import annotations

import pyarrow.compute as pc
import pytest

from deid.actions import decrypt, encrypt
from deid.keys import Keyring, create_key_file, rotate
from hub import quarantine
from hub.demo.generator import generate_region
from hub.lakehouse.tables import open_catalog
from hub.lineage import catalog as runcat
from hub.pipeline import repseudonymize, run_institution
from hub.region import load_region

pytestmark = pytest.mark.slow
INST = "city-first"


def test_rotation_keeps_old_data_readable_and_repseudonymizes(tmp_path, monkeypatch):
    monkeypatch.delenv("HUB_MASTER_KEY", raising=False)
    monkeypatch.delenv("HUB_KEY_FILE", raising=False)
    generate_region(tmp_path, patients=15)
    region = load_region(tmp_path)
    create_key_file(region.key_file)
    old = Keyring.load(region.key_file)
    run_institution(region, INST, old)
    sealed = encrypt(old, {"deterministic": True}, "M0000001")
    catalog = open_catalog(region.catalog_url, region.warehouse)
    published_before = sum(catalog.load_table(t).scan().to_arrow().num_rows for t in catalog.list_tables("recognition"))
    table = catalog.load_table("recognition.observation")
    before = table.scan().to_arrow()
    old_snapshot = table.current_snapshot().snapshot_id
    entry = quarantine.list_rows(runcat.connect(region.catalog_url), institution=INST)[0]["id"]

    old_id, new_id = rotate(region.key_file)
    new = Keyring.load(region.key_file)
    assert (old_id, new_id) == (old.key_id, new.key_id) and old_id != new_id
    assert (region.key_file.parent / "retired" / f"{old_id}.key").stat().st_mode & 0o777 == 0o600

    # sealed under the old key, still readable with the new keyring and the retired file
    assert decrypt(new, sealed, region.key_file) == "M0000001"
    assert quarantine.open_row(runcat.connect(region.catalog_url), new, entry, region.key_file)

    report, removed = repseudonymize(region, INST, new)
    after = table.refresh().scan().to_arrow()
    assert after.num_rows == before.num_rows and removed == published_before
    assert pc.all(pc.equal(after["key_id"], new_id)).as_py()
    assert set(after["id"].to_pylist()).isdisjoint(before["id"].to_pylist())
    assert set(after["patient"].to_pylist()).isdisjoint(before["patient"].to_pylist())
    # the release as it was stays readable by time travel
    assert sorted(table.scan(snapshot_id=old_snapshot).to_arrow()["id"].to_pylist()) == sorted(before["id"].to_pylist())
