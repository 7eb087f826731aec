"""Key rotation: old sealed data stays readable; re-pseudonymization re-keys what is published."""

from __future__ import annotations

import pyarrow.compute as pc
import pytest

from deid.actions import decrypt, encrypt
from deid.keys import Keyring, create_key_file, rotate
from hub import quarantine
from hub.demo.generator import generate_region
from hub.lakehouse.tables import open_catalog
from hub.lineage import runrecord
from hub.pipeline import KeyMismatch, repseudonymize, run_institution
from hub.region import load_region

pytestmark = pytest.mark.slow
INST = "city-first"


def _region_with_key_file(tmp_path, monkeypatch, institutions: tuple[str, ...] = (INST,)):
    """A 15-person region whose master key is a key file (so it can be rotated), published under it."""
    monkeypatch.delenv("HUB_MASTER_KEY", raising=False)
    monkeypatch.delenv("HUB_KEY_FILE", raising=False)
    generate_region(tmp_path, patients=15)
    region = load_region(tmp_path)
    create_key_file(region.key_file)
    old = Keyring.load(region.key_file)
    for inst in institutions or [i.id for i in region.institutions]:
        run_institution(region, inst, old)
    return region, old


def test_rotation_keeps_old_data_readable_and_repseudonymizes(tmp_path, monkeypatch):
    region, old = _region_with_key_file(tmp_path, monkeypatch)
    sealed = encrypt(old, {"deterministic": True}, "M0000001")
    catalog = open_catalog(region.catalog_url, region.warehouse)
    published_before = sum(catalog.load_table(t).scan().to_arrow().num_rows for t in catalog.list_tables("recognition"))
    table = catalog.load_table("recognition.observation")
    before = table.scan().to_arrow()
    old_snapshot = table.current_snapshot().snapshot_id
    entry = quarantine.list_rows(runrecord.connect(region.catalog_url), institution=INST)[0]["id"]

    old_id, new_id = rotate(region.key_file)
    new = Keyring.load(region.key_file)
    assert (old_id, new_id) == (old.key_id, new.key_id) and old_id != new_id
    assert (region.key_file.parent / "retired" / f"{old_id}.key").stat().st_mode & 0o777 == 0o600

    # sealed under the old key, still readable with the new keyring and the retired file
    assert decrypt(new, sealed, region.key_file) == "M0000001"
    assert quarantine.open_row(runrecord.connect(region.catalog_url), new, entry, region.key_file)

    report, removed = repseudonymize(region, INST, new)
    after = table.refresh().scan().to_arrow()
    assert after.num_rows == before.num_rows and removed == published_before
    assert pc.all(pc.equal(after["key_id"], new_id)).as_py()
    assert set(after["id"].to_pylist()).isdisjoint(before["id"].to_pylist())
    assert set(after["patient"].to_pylist()).isdisjoint(before["patient"].to_pylist())
    # the release as it was stays readable by time travel
    assert sorted(table.scan(snapshot_id=old_snapshot).to_arrow()["id"].to_pylist()) == sorted(before["id"].to_pylist())


def _published(region) -> dict[str, tuple[int | None, int]]:
    """{table: (current snapshot id, metadata commits)} of the recognition zone."""
    catalog = open_catalog(region.catalog_url, region.warehouse)
    out = {}
    for name in catalog.list_tables("recognition"):
        t = catalog.load_table(name)
        out[".".join(name)] = (t.current_snapshot().snapshot_id if t.current_snapshot() else None, len(t.metadata.metadata_log))
    return out


def _runs(region) -> int:
    import sqlalchemy as sa

    with runrecord.connect(region.catalog_url).connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(runrecord.runs)).scalar_one()


@pytest.fixture
def rotated(tmp_path, monkeypatch):
    """A region published under one key, whose key was then rotated: (region, old keyring, new keyring)."""
    monkeypatch.delenv("HUB_MASTER_KEY", raising=False)
    monkeypatch.delenv("HUB_KEY_FILE", raising=False)
    generate_region(tmp_path, patients=12)
    region = load_region(tmp_path)
    create_key_file(region.key_file)
    old = Keyring.load(region.key_file)
    run_institution(region, INST, old)
    rotate(region.key_file)
    return region, old, Keyring.load(region.key_file)


def test_publish_after_rotation_is_refused_until_repseudonymized(rotated):
    region, old, new = rotated
    before, runs = _published(region), _runs(region)
    with pytest.raises(KeyMismatch) as exc:
        run_institution(region, INST, new)
    message = str(exc.value)
    assert "\n" not in message and f"hub keys repseudonymize {INST}" in message and old.key_id in message
    assert _published(region) == before and _runs(region) == runs  # nothing written, no run started

    _, removed = repseudonymize(region, INST, new)
    catalog = open_catalog(region.catalog_url, region.warehouse)
    total = 0
    for name, (_, commits) in before.items():
        table = catalog.load_table(name)
        rows = table.scan().to_arrow()
        assert rows.num_rows == len(set(rows["id"].to_pylist())), name  # exactly one row per resource
        assert set(rows["key_id"].to_pylist()) <= {new.key_id}, name
        assert len(table.metadata.metadata_log) == commits + 1, name  # re-keyed rows in, old rows out: one commit
        total += rows.num_rows
    assert removed == total > 0
    report = run_institution(region, INST, new)  # the hourly publish works again and changes nothing
    assert sum(c["written"] for c in report.by_resource().values()) == 0


def test_a_different_master_key_is_refused_and_writes_nothing(tmp_path, monkeypatch, keys):
    monkeypatch.delenv("HUB_MASTER_KEY", raising=False)
    monkeypatch.delenv("HUB_KEY_FILE", raising=False)
    generate_region(tmp_path, patients=8)
    region = load_region(tmp_path)
    run_institution(region, INST, keys)
    run_institution(region, "beishan-chc", keys)
    before, runs = _published(region), _runs(region)
    stranger = Keyring(bytes(range(1, 33)))
    with pytest.raises(KeyMismatch) as exc:
        run_institution(region, INST, stranger)
    message = str(exc.value)
    assert f"is not the one published rows of beishan-chc, {INST} were published with" in message
    assert "hub keys rotate" in message and "hub keys repseudonymize" in message
    assert _published(region) == before and _runs(region) == runs
    # nor may an institution with nothing published yet start under it: linkage would split people
    with pytest.raises(KeyMismatch, match=f"published rows of beishan-chc, {INST} were published with"):
        run_institution(region, "xihu-second", stranger)
    assert _published(region) == before


def test_release_over_mixed_key_ids_is_refused(rotated):
    import hub.pipeline
    from hub.research import ReleaseError, build_release

    region, old, new = rotated
    with pytest.MonkeyPatch.context() as mp:  # as a hub without the key check published
        mp.setattr(hub.pipeline, "published_key_ids", lambda *a, **kw: {})
        run_institution(region, "xihu-second", new)
    with pytest.raises(ReleaseError) as exc:
        build_release(region, new, name="mixed", k=2, max_suppression=1.0)
    assert "mixes rows made with key ids" in str(exc.value) and "hub keys repseudonymize" in str(exc.value)
    catalog = open_catalog(region.catalog_url, region.warehouse)
    assert "research" not in [n[0] for n in catalog.list_namespaces()] or all(
        catalog.load_table(t).current_snapshot() is None for t in catalog.list_tables("research"))


def test_cli_publish_after_rotation_exits_nonzero_with_one_line(rotated):
    import os
    import subprocess
    import sys

    region, old, _ = rotated
    env = {k: v for k, v in os.environ.items() if k not in ("HUB_MASTER_KEY", "HUB_KEY_FILE", "DAGSTER_HOME")}
    proc = subprocess.run([sys.executable, "-m", "hub.cli", "publish", INST, "--workspace", str(region.workspace)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"`hub keys repseudonymize {INST}`" in lines[0]
    assert old.key_id in lines[0] and "Traceback" not in proc.stdout + proc.stderr


def test_the_recognition_index_holds_each_person_once_after_rekeying(tmp_path, monkeypatch):
    import sqlalchemy as sa

    from hub.recognition.index import build, connect, index_url, results

    region, old = _region_with_key_file(tmp_path, monkeypatch, institutions=())
    index = connect(index_url(region))
    build(region, index, old)

    def people_and_rows() -> tuple[int, int]:
        with index.connect() as conn:
            return (conn.execute(sa.select(sa.func.count(sa.distinct(results.c.patient)))).scalar_one(),
                    conn.execute(sa.select(sa.func.count()).select_from(results)).scalar_one())

    before = people_and_rows()
    rotate(region.key_file)
    new = Keyring.load(region.key_file)
    for inst in region.institutions:
        repseudonymize(region, inst.id, new)
    build(region, index, new)
    assert people_and_rows() == before  # the same people and results, under the new key only
    with index.connect() as conn:
        patients = set(conn.execute(sa.select(results.c.patient)).scalars())
    published = set(open_catalog(region.catalog_url, region.warehouse).load_table("recognition.observation")
                    .scan(selected_fields=("patient",)).to_arrow().column("patient").to_pylist())
    assert patients <= published
