"""Tamper evidence against an insider: each test tampers as someone with write access to the
workspace would (pyiceberg, SQL, editing files), then shows `hub audit verify` names the break.

Every test publishes its own small region (three institutions, one manifest each), because
it tampers with it.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pyiceberg.expressions import EqualTo

from hub.lakehouse.tables import ARROW_SCHEMA, open_catalog
from hub.lineage import manifests as mf
from hub.lineage import runrecord
from hub.lineage.audit import verify_region
from hub.lineage.manifests import adopt, head, manifests
from hub.lineage.signing import (
    Signer,
    add_trusted,
    create_key_file,
    load_trusted,
    trusted_for,
    trusted_yaml,
)
from tests.conftest import publish_region

pytestmark = pytest.mark.slow
PATIENTS = 20
INSTITUTIONS = ("city-first", "xihu-second", "beishan-chc")


@pytest.fixture(autouse=True)
def _no_signing_env(monkeypatch):
    for var in ("HUB_SIGNING_KEY", "HUB_SIGNING_KEY_FILE", "HUB_TRUSTED_KEYS_FILE"):
        monkeypatch.delenv(var, raising=False)


class Published:
    """A freshly published region, with a copy of its trusted keys kept outside the workspace."""

    def __init__(self, tmp_path, keys):
        self.region, _, self.reports = publish_region(tmp_path / "ws", keys, PATIENTS)
        self.engine = runrecord.connect(self.region.catalog_url)
        self.icat = open_catalog(self.region.catalog_url, self.region.warehouse)
        self.outside = tmp_path / "operator" / "trusted.yaml"  # the operator's own copy
        self.outside.parent.mkdir()
        shutil.copy(self.region.trusted_keys_file, self.outside)
        self.recorded_head = head(self.engine)

    def verify(self, **kw):
        return verify_region(self.region, trusted_for(self.region, self.outside), **kw)

    def table(self, name: str):
        return self.icat.load_table(name)

    def body(self, seq: int) -> dict:
        with self.engine.connect() as conn:
            return json.loads(conn.execute(sa.select(manifests.c.body).where(manifests.c.seq == seq)).scalar_one())

    def run_of(self, institution: str) -> str:
        return self.reports[institution].run_id


@pytest.fixture()
def published(tmp_path, keys) -> Published:
    return Published(tmp_path, keys)


def breaks_about(report, *words: str) -> list[str]:
    return [b for b in report.breaks if all(w in b for w in words)]


# ---- the clean case ----------------------------------------------------------------------------


def test_clean_multi_institution_history_verifies_intact_even_when_manifests_come_out_of_commit_order(tmp_path, keys, monkeypatch):
    """city-first commits first but appends its manifest after xihu-second's: no false alarm."""
    deferred = []
    real_append = mf.append

    def late_for_city_first(engine, signer, run_id, tables, summary, files=None, **kw):
        if "-city-first-" in run_id and not deferred:
            deferred.append((engine, signer, run_id, tables, summary, files, kw))
            return (0, "0" * 64)
        return real_append(engine, signer, run_id, tables, summary, files, **kw)

    from hub.demo.generator import generate_region
    from hub.pipeline import run_institution
    from hub.region import load_region

    generate_region(tmp_path, patients=PATIENTS)
    region = load_region(tmp_path)
    monkeypatch.setattr(mf, "append", late_for_city_first)
    first = run_institution(region, "city-first", keys)
    second = run_institution(region, "xihu-second", keys)
    monkeypatch.setattr(mf, "append", real_append)
    engine, signer, run_id, tables, summary, files, kw = deferred[0]
    assert real_append(engine, signer, run_id, tables, summary, files, **kw)[0] == 2  # after xihu-second's manifest 1
    run_institution(region, "beishan-chc", keys)
    run_institution(region, "city-first", keys)  # incremental: nothing new, no manifest

    patient = open_catalog(region.catalog_url, region.warehouse).load_table("recognition.patient")
    assert patient.snapshot_by_id(second.snapshots["Patient"]).parent_snapshot_id == first.snapshots["Patient"]
    report = verify_region(region)
    assert report.ok, report.breaks
    assert (report.manifests, report.tables) == (3, 9)
    assert report.snapshots == 27 and report.files >= 30 and report.orphans == []  # one append per table and run; Observation: LIS results and HIS vital signs in 2+ files


# ---- the signing key ---------------------------------------------------------------------------


def _resign(engine, private: Ed25519PrivateKey, edit) -> None:
    """Rewrite the chain as an insider: edit bodies, recompute every hash and link, sign with private."""
    public = private.public_key().public_bytes_raw().hex()
    with engine.begin() as conn:
        rows = list(conn.execute(sa.select(manifests).order_by(manifests.c.seq)))
        prev = mf.GENESIS
        for row in rows:
            body = json.loads(row.body)
            edit(body)
            body["prev_hash"] = prev
            text = mf._canonical(body)
            digest = hashlib.sha256(text.encode()).hexdigest()
            conn.execute(manifests.update().where(manifests.c.seq == row.seq).values(
                body=text, hash=digest, signature=private.sign(bytes.fromhex(digest)).hex(), public_key=public))
            prev = digest


def test_a_chain_resigned_with_a_key_derived_from_the_workspace_master_key_is_refused(published, keys):
    victim = published.body(2)["tables"]["recognition.observation"]["files"][0]["path"]

    def forget_victim(body):  # hide a file the insider is about to rewrite
        for entry in body["tables"].values():
            entry["files"] = [f for f in entry["files"] if f["path"] != victim]

    _resign(published.engine, Ed25519PrivateKey.from_private_bytes(keys.key("manifest-signing")), forget_victim)
    report = published.verify()
    for seq in (1, 2, 3):
        assert breaks_about(report, f"manifest {seq} ", "signature does not verify under any trusted key")


def test_replacing_the_trusted_keys_inside_the_workspace_is_caught_by_the_operators_copy(published):
    insider = Ed25519PrivateKey.generate()
    _resign(published.engine, insider, lambda body: body["summary"].update(forged=True))
    published.region.trusted_keys_file.write_text(trusted_yaml([(insider.public_key().public_bytes_raw().hex(), 1, None)]))

    against_operator_copy = published.verify()
    assert len(breaks_about(against_operator_copy, "signature does not verify under any trusted key")) == 3
    # what is not promised: trusting keys read from the workspace trusts the insider, and verify says so
    against_workspace = verify_region(published.region)
    assert against_workspace.ok
    assert any("inside the workspace" in n and "--trusted-keys" in n for n in against_workspace.notes)


def test_manifests_stay_verifiable_after_a_signing_key_rotation_and_the_retired_key_cannot_sign_later_ones(tmp_path, keys, monkeypatch):
    from hub.demo.generator import generate_region
    from hub.pipeline import run_institution
    from hub.region import load_region

    generate_region(tmp_path / "ws", patients=PATIENTS)
    region = load_region(tmp_path / "ws")
    run_institution(region, "city-first", keys)  # manifest 1, demo key
    new_key = tmp_path / "vault" / "signing.key"
    signer = create_key_file(new_key)
    assert new_key.stat().st_mode & 0o777 == 0o600
    add_trusted(region.trusted_keys_file, signer.public_hex, 2, region.workspace)
    monkeypatch.setenv("HUB_SIGNING_KEY_FILE", str(new_key))
    run_institution(region, "xihu-second", keys)  # manifest 2, new key
    trusted = load_trusted(region.trusted_keys_file)
    assert [(k.from_seq, k.until_seq) for k in trusted.keys] == [(1, 1), (2, None)]
    assert verify_region(region).ok

    monkeypatch.setenv("HUB_SIGNING_KEY_FILE", str(region.signing_key_file))  # the retired key, still in the workspace
    run_institution(region, "beishan-chc", keys)  # manifest 3, signed by the retired key
    report = verify_region(region)
    assert breaks_about(report, "manifest 3 ", "trusted only for manifests 1..1")
    assert not breaks_about(report, "manifest 1 ") and not breaks_about(report, "manifest 2 ")


# ---- snapshots outside any run -----------------------------------------------------------------


def test_a_snapshot_appended_outside_any_run_is_named(published):
    table = published.table("recognition.observation")
    row = table.scan(limit=1).to_arrow().to_pylist()[0]
    row.update(id="forged-0001", content_hash="0" * 64)
    table.append(pa.Table.from_pylist([row], schema=ARROW_SCHEMA))
    forged = table.current_snapshot().snapshot_id

    report = published.verify()
    assert breaks_about(report, f"recognition.observation: snapshot {forged} ", "in no manifest", "committed outside any publication")
    assert len(report.breaks) == 1


def test_deleting_every_row_of_one_institution_is_named_even_under_a_borrowed_run_id(published):
    table = published.table("recognition.patient")
    before = table.scan(row_filter=EqualTo("institution", "xihu-second")).to_arrow().num_rows
    table.delete(EqualTo("institution", "xihu-second"), snapshot_properties={"hub.run-id": published.run_of("xihu-second")})
    assert before > 0 and table.scan(row_filter=EqualTo("institution", "xihu-second")).to_arrow().num_rows == 0
    deleted = table.current_snapshot().snapshot_id

    report = published.verify()
    assert breaks_about(report, f"recognition.patient: snapshot {deleted} ", "removed", "in no manifest")


# ---- manifests removed -------------------------------------------------------------------------


def test_deleting_the_newest_manifest_is_named_by_the_tables_it_accounted_for(published):
    newest = published.body(3)
    with published.engine.begin() as conn:
        conn.execute(manifests.delete().where(manifests.c.seq == 3))

    report = published.verify()
    for name, entry in newest["tables"].items():
        for snap in entry["snapshots"]:
            assert breaks_about(report, f"{name}: snapshot {snap['id']} ", "in no manifest")
    assert verify_region(published.region).head[0] == 2
    with_head = published.verify(expect_head=published.recorded_head)
    assert breaks_about(with_head, "manifest 3, the head you recorded, is gone")


def test_a_truncated_chain_with_the_tables_rolled_back_to_match_is_caught_only_by_the_recorded_head(published):
    """The insider deletes manifests 2 and 3 and puts back every table's metadata from after run 1."""
    kept = {name: entry["snapshots"][-1]["id"] for name, entry in published.body(1)["tables"].items()}
    with published.engine.begin() as conn:
        conn.execute(manifests.delete().where(manifests.c.seq > 1))
    for name, snapshot_id in kept.items():
        _put_back_metadata(published, name, snapshot_id)

    truncated = published.verify()
    assert truncated.ok  # consistent with the shorter chain: what is not promised without a recorded head
    assert truncated.orphans and any("belong to no snapshot" in n for n in truncated.notes)  # runs 2 and 3's files
    report = published.verify(expect_head=published.recorded_head)
    assert report.breaks == ["manifest 3, the head you recorded, is gone: the chain ends at 1 (truncated)"]


def test_truncating_the_chain_leaves_the_later_runs_snapshots_unaccounted(published):
    with published.engine.begin() as conn:
        conn.execute(manifests.delete().where(manifests.c.seq > 1))
    report = published.verify()
    for inst in ("xihu-second", "beishan-chc"):
        assert breaks_about(report, "recognition.observation: snapshot", f"labelled run {published.run_of(inst)}", "in no manifest")


# ---- history rolled back or edited -------------------------------------------------------------


def test_rolling_a_table_back_to_an_older_snapshot_is_named(published):
    table = published.table("recognition.patient")
    older = published.reports["xihu-second"].snapshots["Patient"]
    newest = table.current_snapshot().snapshot_id
    table.manage_snapshots().set_current_snapshot(older).commit()

    report = published.verify()
    assert breaks_about(report, f"recognition.patient: snapshot {newest} (manifest 3) is not in the current history",
                        f"readers see snapshot {older}")


def _put_back_metadata(published, name: str, snapshot_id: int) -> None:
    """Point the SQL catalog at the table's older metadata file whose current snapshot is snapshot_id."""
    table = published.table(name)
    for entry in reversed(table.metadata.metadata_log):
        old = json.loads(mf.local_path(entry.metadata_file).read_text())
        if old.get("current-snapshot-id") == snapshot_id:
            namespace, table_name = name.split(".")
            with published.engine.begin() as conn:
                conn.execute(sa.text("UPDATE iceberg_tables SET metadata_location = :m WHERE table_namespace = :n AND table_name = :t"),
                             {"m": entry.metadata_file, "n": namespace, "t": table_name})
            return
    raise AssertionError(f"no older metadata of {name} has snapshot {snapshot_id} current")


def test_putting_back_an_older_metadata_file_in_the_catalog_is_named(published):
    newest = published.reports["beishan-chc"].snapshots["Observation"]
    _put_back_metadata(published, "recognition.observation", published.reports["city-first"].snapshots["Observation"])

    report = published.verify()
    assert breaks_about(report, f"recognition.observation: snapshot {newest}, recorded by manifest 3, is missing from the table's history")


def test_editing_a_tables_metadata_json_is_named_by_the_files_readers_no_longer_see(published):
    """The current snapshot keeps its id, but its manifest list is swapped for its parent's: readers lose rows."""
    table = published.table("recognition.observation")
    rows_before = table.scan().to_arrow().num_rows
    meta_path = mf.local_path(table.metadata_location)
    meta = json.loads(meta_path.read_text())
    by_id = {s["snapshot-id"]: s for s in meta["snapshots"]}
    current = by_id[meta["current-snapshot-id"]]
    current["manifest-list"] = by_id[current["parent-snapshot-id"]]["manifest-list"]
    meta_path.write_text(json.dumps(meta))
    assert published.table("recognition.observation").scan().to_arrow().num_rows < rows_before

    report = published.verify()
    entry = published.body(3)["tables"]["recognition.observation"]
    added = {s["id"]: s["added"] for s in entry["snapshots"]}[current["snapshot-id"]]  # the run's HIS and LIS commits
    lost = [f for f in entry["files"] if f["path"] in added]
    assert lost
    for f in lost:
        assert breaks_about(report, f"recognition.observation: snapshot {current['snapshot-id']} no longer reads data file",
                            str(mf.local_path(f["path"])), "manifest 3 records as live")


def test_a_data_file_injected_with_add_files_is_named(published):
    table = published.table("recognition.observation")
    rows = table.scan(limit=2).to_arrow().to_pylist()
    for i, row in enumerate(rows):
        row.update(id=f"injected-{i}", content_hash="1" * 64)
    injected = published.region.warehouse / "recognition" / "observation" / "data" / "injected.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=ARROW_SCHEMA), injected)
    table.add_files([str(injected)], snapshot_properties={"hub.run-id": published.run_of("beishan-chc")})
    snap = table.current_snapshot().snapshot_id

    report = published.verify()
    assert breaks_about(report, f"recognition.observation: snapshot {snap} (append, 1 file(s) added", "in no manifest")


def test_rewriting_a_data_file_is_named_with_its_manifest(published):
    body = published.body(2)
    victim = mf.local_path(body["tables"]["recognition.observation"]["files"][0]["path"])
    data = pq.read_table(victim)
    pq.write_table(data.slice(1), victim)  # a valid Parquet file, one row short

    report = published.verify()
    assert report.breaks == [f"manifest 2 (run {body['run_id']}): recognition.observation data file altered: {victim}"]


# ---- runs that die -----------------------------------------------------------------------------


def test_a_run_killed_after_its_commit_is_a_break_until_adopted(tmp_path, keys, monkeypatch):
    from hub.demo.generator import generate_region
    from hub.lineage.signing import load_signer
    from hub.pipeline import run_institution
    from hub.region import load_region

    generate_region(tmp_path, patients=PATIENTS)
    region = load_region(tmp_path)
    run_institution(region, "city-first", keys)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies between its commits and its manifest

    monkeypatch.setattr(mf, "append", killed)
    with pytest.raises(KeyboardInterrupt):
        run_institution(region, "xihu-second", keys)
    monkeypatch.undo()

    report = verify_region(region)
    orphaned = breaks_about(report, "recognition.observation: snapshot", "in no manifest", "its run")
    assert orphaned and "hub audit adopt recognition.observation" in orphaned[0]
    # a check that tolerates runs in flight (the Dagster check) cannot tell a killed run from a running one
    assert any("in flight" in n for n in verify_region(region, in_flight_ok=True).notes)

    icat = open_catalog(region.catalog_url, region.warehouse)
    engine = runrecord.connect(region.catalog_url)
    signer = load_signer(region)
    for name in [".".join(t) for t in icat.list_tables("recognition")]:
        table = icat.load_table(name)
        recorded = {s["id"] for s in json.loads(_body(engine, 1))["tables"].get(name, {}).get("snapshots", [])}
        stray = [s.snapshot_id for s in table.snapshots() if s.snapshot_id not in recorded]
        if stray:
            adopt(engine, signer, table, stray, "xihu-second run killed after commit; reviewed")
    after = verify_region(region)
    assert after.ok, after.breaks
    assert any("adopted by manifest" in n for n in after.notes)
    with pytest.raises(ValueError, match="already recorded"):
        adopt(engine, signer, icat.load_table("recognition.observation"),
              [icat.load_table("recognition.observation").current_snapshot().snapshot_id], "again")


def _body(engine, seq: int) -> str:
    with engine.connect() as conn:
        return conn.execute(sa.select(manifests.c.body).where(manifests.c.seq == seq)).scalar_one()


def test_files_of_a_run_killed_before_its_commit_are_orphans_not_breaks(tmp_path, keys, monkeypatch):
    from pyiceberg.table import Transaction

    from hub.demo.generator import generate_region
    from hub.pipeline import run_institution
    from hub.region import load_region

    generate_region(tmp_path, patients=PATIENTS)
    region = load_region(tmp_path)
    run_institution(region, "city-first", keys)

    def killed(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Transaction, "commit_transaction", killed)
    with pytest.raises(KeyboardInterrupt):
        run_institution(region, "xihu-second", keys)
    monkeypatch.undo()

    report = verify_region(region)
    assert report.ok, report.breaks
    assert report.orphans and all(p.endswith(".parquet") for p in report.orphans)
    assert any("died before it committed" in n for n in report.notes)


# ---- the command line --------------------------------------------------------------------------


def test_cli_verifies_against_the_operators_keys_and_head_and_exits_1_on_a_break(published):
    from typer.testing import CliRunner

    from hub.cli import app

    ws = str(published.region.workspace)
    runner = CliRunner()
    public = runner.invoke(app, ["keys", "signing-public", "--workspace", ws])
    assert public.exit_code == 0
    assert public.stdout.strip() == load_trusted(published.outside).keys[0].public_hex
    seq, digest = published.recorded_head
    ok = runner.invoke(app, ["audit", "verify", "--workspace", ws, "--trusted-keys", str(published.outside),
                             "--expect-head", f"{seq}:{digest}"])
    assert ok.exit_code == 0, ok.stdout
    assert "intact" in ok.stdout and f"chain head: {seq}:{digest}" in ok.stdout

    wrong = runner.invoke(app, ["audit", "verify", "--workspace", ws, "--public-key", Signer(Ed25519PrivateKey.generate(), "x").public_hex, "--json"])
    assert wrong.exit_code == 1
    assert len(json.loads(wrong.stdout)["breaks"]) == 3

    with published.engine.begin() as conn:
        conn.execute(manifests.delete().where(manifests.c.seq == 3))
    broken = runner.invoke(app, ["audit", "verify", "--workspace", ws, "--trusted-keys", str(published.outside),
                                 "--expect-head", f"{seq}:{digest}"])
    assert broken.exit_code == 1
    assert "manifest 3, the head you recorded, is gone" in broken.stdout and "in no manifest" in broken.stdout


def test_snapshots_a_publication_rolled_back_itself_are_recorded_as_withdrawn(published):
    """E.g. a research release whose recount failed: it commits, rolls back, and still appends its manifest."""
    from hub.lineage.signing import load_signer

    table = published.table("recognition.observation")
    before = table.current_snapshot().snapshot_id
    row = table.scan(limit=1).to_arrow().to_pylist()[0]
    table.append(pa.Table.from_pylist([row | {"id": "withdrawn-1"}], schema=ARROW_SCHEMA),
                 snapshot_properties={"hub.run-id": "release-x"})
    withdrawn = table.current_snapshot().snapshot_id
    table.manage_snapshots().set_current_snapshot(before).commit()
    mf.append(published.engine, load_signer(published.region), "release-x", {"recognition.observation": table},
              {"release": "x", "status": "rolled back"}, snapshots={"recognition.observation": [withdrawn]})
    assert published.body(4)["tables"]["recognition.observation"]["snapshots"][0]["withdrawn"] is True
    assert published.verify().ok

    table.manage_snapshots().set_current_snapshot(withdrawn).commit()  # an insider puts it back
    report = published.verify()
    assert breaks_about(report, f"recognition.observation: snapshot {withdrawn}, withdrawn by its publication (manifest 4)")


def test_a_run_without_a_signing_key_refuses_to_start_and_writes_nothing(tmp_path, keys):
    from hub.demo.generator import generate_region
    from hub.lineage.signing import SigningKeyError
    from hub.pipeline import run_institution
    from hub.region import load_region

    generate_region(tmp_path, patients=PATIENTS)
    region = load_region(tmp_path)
    region.signing_key_file.unlink()
    with pytest.raises(SigningKeyError, match="signing-create"):
        run_institution(region, "city-first", keys)
    icat = open_catalog(region.catalog_url, region.warehouse)
    assert all(icat.load_table(t).current_snapshot() is None for ns in icat.list_namespaces() for t in icat.list_tables(ns))
