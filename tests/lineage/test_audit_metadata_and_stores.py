"""Tamper evidence beyond snapshots and data files: each test tampers as an insider with write access
would (pyiceberg on the tables, SQL on the catalog and index databases) with what verify did not
cover before, table metadata, Iceberg manifests, the recognition index, the access log and the
release records, then shows `hub audit verify` names the break; a clean history stays intact.

Every test publishes its own small region (three institutions, an index build, a research
release, access-log entries), because it tampers with it.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import sqlalchemy as sa
from pyiceberg.expressions import EqualTo
from pyiceberg.manifest import write_manifest
from pyiceberg.types import StringType

from hub.lakehouse.tables import open_catalog
from hub.lineage import access, runrecord
from hub.lineage.audit import verify_region
from hub.lineage.manifests import append, local_path, manifests
from hub.lineage.signing import load_signer, trusted_for
from hub.recognition import index
from hub.research import build_release, releases

pytestmark = pytest.mark.slow
PATIENTS = 20


@pytest.fixture(autouse=True)
def _no_signing_env(monkeypatch):
    for var in ("HUB_SIGNING_KEY", "HUB_SIGNING_KEY_FILE", "HUB_TRUSTED_KEYS_FILE"):
        monkeypatch.delenv(var, raising=False)


class History:
    """A region with the history the operator vouches for: runs, an index build, a release, reads."""

    def __init__(self, tmp_path, keys, institutions: tuple[str, ...] | None = None):
        from hub.demo.generator import generate_region
        from hub.pipeline import run_institution
        from hub.region import load_region

        generate_region(tmp_path / "ws", patients=PATIENTS)
        self.region, self.keys = load_region(tmp_path / "ws"), keys
        for inst in institutions or [i.id for i in self.region.institutions]:
            run_institution(self.region, inst, keys)
        self.engine = runrecord.connect(self.region.catalog_url)
        self.icat = open_catalog(self.region.catalog_url, self.region.warehouse)
        self.index = index.connect(index.index_url(self.region))
        self.outside = tmp_path / "operator" / "trusted.yaml"
        self.outside.parent.mkdir()
        shutil.copy(self.region.trusted_keys_file, self.outside)

    def build_index(self) -> int:
        return index.build(self.region, self.index, self.keys)

    def release(self, name: str = "cohort-1"):
        return build_release(self.region, self.keys, name=name, k=2, max_suppression=0.9)

    def verify(self, **kw):
        return verify_region(self.region, trusted_for(self.region, self.outside), **kw)

    def table(self, name: str):
        return self.icat.load_table(name)


@pytest.fixture()
def history(tmp_path, keys) -> History:
    h = History(tmp_path, keys)
    h.build_index()
    assert h.release().status == "published"
    access.record(h.engine, "lineage-trace", "audit: trace a published row", {"table": "recognition.observation", "rows": 1})
    h.build_index()  # nothing new: no manifest, the entry above stays unanchored
    return h


def breaks_about(report, *words: str) -> list[str]:
    return [b for b in report.breaks if all(w in b for w in words)]


def test_a_clean_history_with_index_release_and_reads_verifies_intact(history):
    report = history.verify()
    assert report.ok, report.breaks
    assert report.stores == ["recognition-index"] and report.releases == 1
    assert report.access_log == {"entries": 2, "anchored": 1, "unanchored": 1}  # the release's read is anchored by its manifest
    assert any("1 entr(ies) after the newest head" in n for n in report.notes)
    # the index manifest recorded the whole index, and it is what the index holds
    with history.engine.connect() as conn:
        bodies = [json.loads(b) for (b,) in conn.execute(sa.select(manifests.c.body).order_by(manifests.c.seq))]
    state = next(b for b in bodies if b["summary"].get("kind") == "recognition-index")["summary"]["store_states"]["recognition-index"]
    with history.index.connect() as conn:
        assert state["after"]["recognition_results"]["rows"] == conn.execute(sa.select(sa.func.count()).select_from(index.results)).scalar() > 0
    assert all(t["rows"] == 0 for t in state["before"].values())
    assert all("state" in entry for b in bodies for entry in b["tables"].values())


# ---- table metadata (F5) -----------------------------------------------------------------------


def test_swapping_two_column_names_with_update_schema_is_named(history):
    """A metadata-only commit, no snapshot: readers of `patient` get the source key hashes."""
    t = history.table("recognition.observation")
    before = t.scan(selected_fields=("patient",)).to_arrow()["patient"].to_pylist()
    with t.update_schema() as u:
        u.rename_column("patient", "tmp_x")
    with t.update_schema() as u:
        u.rename_column("source_key_hash", "patient")
    with t.update_schema() as u:
        u.rename_column("tmp_x", "source_key_hash")
    assert history.table("recognition.observation").scan(selected_fields=("patient",)).to_arrow()["patient"].to_pylist() != before
    report = history.verify()
    assert breaks_about(report, "recognition.observation: live metadata differs", "column patient (field 4) renamed to source_key_hash",
                        "column source_key_hash (field 11) renamed to patient", "outside a publication")
    assert len(report.breaks) == 1


def test_a_later_publication_does_not_launder_a_renamed_column(history):
    """The next commit records the tampered schema: the step between the two recorded states is still named."""
    t = history.table("recognition.patient")
    with t.update_schema() as u:
        u.rename_column("institution", "source_system_x")
    run_id = "20990101T000000Z-later-run"
    t = history.table("recognition.patient")
    t.append(t.scan(limit=1).to_arrow(), snapshot_properties={"hub.run-id": run_id})
    append(history.engine, load_signer(history.region), run_id, {"recognition.patient": t}, {})
    report = history.verify()
    assert breaks_about(report, "recognition.patient: metadata recorded by manifest", "column institution (field 2) renamed to source_system_x")
    assert not breaks_about(report, "live metadata")  # the live table is what the last manifest says


def test_a_name_mapping_property_a_retyped_column_and_a_moved_tag_are_named(history):
    t = history.table("recognition.encounter")
    with t.transaction() as tx:
        tx.set_properties({"schema.name-mapping.default": json.dumps([{"field-id": 4, "names": ["code"]}])})
    assert history.release("cohort-2").status == "published"
    research = history.table("research.observation")
    first, later = research.metadata.refs["cohort-1"].snapshot_id, research.metadata.refs["cohort-2"].snapshot_id
    research.manage_snapshots().remove_tag("cohort-1").create_tag(later, "cohort-1").commit()
    report = history.verify()
    assert breaks_about(report, "recognition.encounter", "table properties changed: schema.name-mapping.default")
    assert breaks_about(report, "research.observation", f"tag cohort-1 moved from snapshot {first} to {later}")


def test_an_added_column_is_a_note_and_an_adopted_property_change_verifies(history):
    t = history.table("recognition.condition")
    with t.update_schema() as u:
        u.add_column("note_x", StringType())
    with t.transaction() as tx:
        tx.set_properties({"write.target-file-size-bytes": "1048576"})
    report = history.verify()
    assert [b for b in report.breaks if "recognition.condition" in b] == [
        b for b in report.breaks if "table properties changed: write.target-file-size-bytes" in b] != []
    assert any("column note_x (field" in n and "added outside a publication (older files read it as null)" in n for n in report.notes)

    from typer.testing import CliRunner

    from hub.cli import app

    adopted = CliRunner().invoke(app, ["audit", "adopt", "recognition.condition", "--reason", "operator set the target file size",
                                       "--workspace", str(history.region.workspace)])
    assert adopted.exit_code == 0, adopted.stdout
    assert "Adopted 0 snapshot(s) and the current metadata of recognition.condition" in adopted.stdout
    report = history.verify()
    assert report.ok, report.breaks
    assert any("accepted by adopt manifest" in n and "write.target-file-size-bytes" in n for n in report.notes)


def test_editing_column_bounds_in_an_iceberg_manifest_hides_rows_from_filtered_reads_and_is_named(history):
    """The data files and the file list are unchanged; only the stats readers prune by are rewritten."""
    t = history.table("recognition.observation")
    pid = t.scan(selected_fields=("patient",)).to_arrow()["patient"][0].as_py()
    assert t.scan(row_filter=EqualTo("patient", pid)).to_arrow().num_rows > 0
    for mf in t.current_snapshot().manifests(t.io):
        entries = list(mf.fetch_manifest_entry(t.io, discard_deleted=False))
        for e in entries:
            e.data_file.lower_bounds[4] = e.data_file.upper_bounds[4] = b"zzzz"
        with write_manifest(format_version=2, spec=t.spec(), schema=t.schema(), output_file=t.io.new_output(mf.manifest_path + ".x"),
                            snapshot_id=mf.added_snapshot_id, avro_compression="deflate") as w:
            for e in entries:
                w.add_entry(e)
        os.replace(local_path(mf.manifest_path + ".x"), local_path(mf.manifest_path))
    assert history.table("recognition.observation").scan(row_filter=EqualTo("patient", pid)).to_arrow().num_rows == 0
    report = history.verify()
    named = breaks_about(report, "recognition.observation: Iceberg manifest", "is not the one manifest", "column bounds edited")
    assert len(named) == len(t.current_snapshot().manifests(t.io)) >= 1
    assert not breaks_about(report, "data file")  # no data file changed: only the manifests' check sees this


# ---- the recognition index (F6) ----------------------------------------------------------------


def test_editing_deleting_and_finalising_index_rows_is_named(history):
    with history.index.begin() as conn:
        conn.execute(sa.text("update recognition_results set resource = replace(resource, :a, :b) "
                             "where rowid in (select rowid from recognition_results limit 5)"), {"a": '"value":', "b": '"value":9'})
    report = history.verify()
    assert breaks_about(report, "recognition-index: live content differs from what build manifest",
                        "table recognition_results content differs", "edited outside a build")

    with history.index.begin() as conn:
        conn.execute(sa.text("update recognition_results set status = 'final'"))
        conn.execute(sa.text("delete from recognition_results where rowid in (select rowid from recognition_results limit 3)"))
        conn.execute(sa.text("delete from recognition_patient_ids"))
    report = history.verify()
    [b] = breaks_about(report, "recognition-index")
    assert "recognition_results holds" in b and "recognition_patient_ids holds 0 rows" in b


def test_an_index_edit_before_a_later_build_is_not_laundered_by_it(tmp_path, keys):
    from hub.pipeline import run_institution

    h = History(tmp_path, keys, institutions=("city-first", "xihu-second"))
    assert h.build_index() > 0
    with h.index.begin() as conn:
        conn.execute(sa.text("update recognition_results set status = 'final' where status != 'final'"))
    run_institution(h.region, "beishan-chc", keys)
    assert h.build_index() > 0  # records the whole (tampered) index as it leaves it
    report = h.verify()
    assert breaks_about(report, "recognition-index: between build manifests", "recognition_results content differs", "changed outside a build")
    assert not breaks_about(report, "live content")


def test_a_deleted_index_database_is_named(history):
    history.index.dispose()
    (history.region.workspace / "recognition.db").unlink()
    assert breaks_about(history.verify(), "recognition-index: recorded by manifest", "the store is gone")


# ---- the access log (F6) -----------------------------------------------------------------------


def _log(history) -> list:
    with history.engine.connect() as conn:
        return list(conn.execute(sa.select(access.access_log).order_by(access.access_log.c.id)))


def test_emptying_editing_or_deleting_access_log_entries_is_named(history):
    for i in range(3):
        access.record(history.engine, "quarantine-show", "data quality review", {"quarantine_entry": i, "rows": 1})
    history.build_index()  # no manifest (nothing new): these stay unanchored
    anchored = history.release("cohort-2")  # anchors them
    assert anchored.status == "published"
    rows = _log(history)
    assert history.verify().ok

    with history.engine.begin() as conn:
        conn.execute(access.access_log.update().where(access.access_log.c.id == rows[2].id).values(purpose="routine"))
    assert breaks_about(history.verify(), f"access log entry {rows[2].id} does not match its hash (edited)")

    with history.engine.begin() as conn:
        conn.execute(access.access_log.update().where(access.access_log.c.id == rows[2].id).values(purpose=rows[2].purpose))
        conn.execute(access.access_log.delete().where(access.access_log.c.id == rows[3].id))
    assert breaks_about(history.verify(), f"access log entry {rows[4].id} does not link to entry {rows[2].id}")

    with history.engine.begin() as conn:
        conn.execute(access.access_log.delete())
    assert breaks_about(history.verify(), "the head manifest", "recorded, is gone (log emptied)")


def test_a_consistently_rehashed_rewrite_of_the_access_log_is_caught_by_the_heads_manifests_recorded(history):
    """An insider who knows the hash rule rewrites an entry and re-chains everything after it."""
    rows = _log(history)
    with history.engine.begin() as conn:
        conn.execute(access.access_log.delete())
        prev = access.GENESIS
        for r in rows:
            purpose = "routine maintenance" if r.id == rows[0].id else r.purpose
            digest = access.entry_hash(r.id, r.at, r.who, r.action, purpose, r.what, r.outcome, prev)
            conn.execute(access.access_log.insert().values(id=r.id, at=r.at, who=r.who, action=r.action, purpose=purpose,
                                                           what=r.what, outcome=r.outcome, prev_hash=prev, hash=digest))
            prev = digest
    report = history.verify()
    assert [b for b in report.breaks if b.startswith("access log")] == [
        f"access log entry {rows[0].id} differs from the one manifest {_release_manifest(history)} recorded (the log was rewritten up to there)"]


def _release_manifest(history) -> int:
    with history.engine.connect() as conn:
        return max(r.seq for r in conn.execute(sa.select(manifests.c.seq, manifests.c.body))
                   if json.loads(r.body)["summary"].get("kind") == "research-release")


def test_access_log_entries_chain_even_when_written_concurrently(history):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: access.record(history.engine, "recognition-query", "recognition", {"n": i}), range(24)))
    check = access.check(history.engine, [])
    assert check.breaks == [] and check.entries == 26


# ---- the release records (F6) ------------------------------------------------------------------


def test_changing_a_releases_k_risk_report_or_status_is_named(history):
    with history.engine.begin() as conn:
        conn.execute(releases.update().values(k=50, risk_report=sa.func.replace(releases.c.risk_report, '"k_required": 2', '"k_required": 50')))
    [b] = breaks_about(history.verify(), "release cohort-1")
    assert "k, risk_report in hub_releases differ from what manifest" in b

    with history.engine.begin() as conn:
        row = conn.execute(sa.select(releases)).first()
        conn.execute(releases.update().values(k=row.k, status="refused"))
    assert breaks_about(history.verify(), "release cohort-1", "status")


def test_a_release_row_inserted_as_published_or_deleted_is_named(history):
    with history.engine.begin() as conn:
        row = conn.execute(sa.select(releases)).first()
        conn.execute(releases.insert().values({**row._asdict(), "release_id": "20990101T000000Z-research-fake", "name": "cohort-x"}))
    assert breaks_about(history.verify(), "release cohort-x", "marked published in hub_releases but no manifest records it")
    with history.engine.begin() as conn:
        conn.execute(releases.delete())
    assert breaks_about(history.verify(), "release cohort-1", "is gone from hub_releases")


def test_cli_names_index_and_log_breaks_and_exits_1(history):
    from typer.testing import CliRunner

    from hub.cli import app

    with history.engine.begin() as conn:
        conn.execute(access.access_log.delete())
    with history.index.begin() as conn:
        conn.execute(sa.text("delete from recognition_builds"))
    result = CliRunner().invoke(app, ["audit", "verify", "--workspace", str(history.region.workspace),
                                      "--trusted-keys", str(history.outside), "--json"])
    assert result.exit_code == 1
    out = json.loads(result.stdout)
    assert any("recognition_builds holds 0 rows" in b for b in out["breaks"])
    assert any("log emptied" in b for b in out["breaks"])
    assert out["access_log"] == {"entries": 0, "anchored": 0, "unanchored": 0}



def test_index_builds_whose_manifests_are_appended_out_of_build_order_verify_intact(tmp_path, keys, monkeypatch):
    from hub.lineage import manifests as mf
    from hub.pipeline import run_institution

    h = History(tmp_path, keys, institutions=("city-first", "xihu-second"))
    deferred, real_append = [], mf.append

    def late_first_build(engine, signer, run_id, tables, summary, files=None, **kw):
        if summary.get("kind") == "recognition-index" and not deferred:
            deferred.append((engine, signer, run_id, tables, summary, files, kw))
            return (0, "0" * 64)
        return real_append(engine, signer, run_id, tables, summary, files, **kw)

    monkeypatch.setattr(mf, "append", late_first_build)
    assert h.build_index() > 0
    run_institution(h.region, "beishan-chc", keys)
    assert h.build_index() > 0
    engine, signer, run_id, tables, summary, files, kw = deferred[0]
    real_append(engine, signer, run_id, tables, summary, files, **kw)
    report = h.verify()
    assert report.ok, report.breaks
    assert report.stores == ["recognition-index"]
