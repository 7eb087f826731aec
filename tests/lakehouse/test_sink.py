"""The one sink: every output is leak-scanned before anything of its publication is visible, and signed once.

Each sink (recognition table upsert, research table replace, training-set files, recognition
index rows) is handed a row whose identifier survived de-identification; each must refuse it
with nothing of the publication committed and no manifest appended.
"""

from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
import pytest
import sqlalchemy as sa

from deid.ruleset import default_ruleset_path
from hub.fhir.jsonio import content_hash, dumps
from hub.lakehouse.sink import Publication
from hub.lakehouse.tables import ARROW_SCHEMA, ensure_table, open_catalog, primary_code
from hub.leakscan import LeakBlocked, Scanner, load_scan_policy
from hub.lineage import manifests, runrecord
from hub.lineage.manifests import file_sha256
from hub.lineage.signing import create_key_file

LOINC, NDC = "http://loinc.org", "http://hl7.org/fhir/sid/ndc"
MOBILE = "13800138000"
SURVIVOR = {"valueString": "请回电 138 0013 8000"}  # what a ruleset that keeps a string lets through


@pytest.fixture()
def lake(tmp_path):
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    return open_catalog(url, tmp_path / "warehouse"), runrecord.connect(url), create_key_file(tmp_path / "keys" / "signing.key")


def _publication(lake, kind: str = "run") -> Publication:
    _, engine, signer = lake
    return Publication(engine, signer, kind, scanner=Scanner(frozenset({"金丝雀"}), load_scan_policy(default_ruleset_path())))


def _resource(i: int, rtype: str = "Observation", system: str = LOINC, code: str = "4548-4", **extra) -> dict:
    element = "medicationCodeableConcept" if rtype == "MedicationRequest" else "code"
    return {"resourceType": rtype, "id": f"{i:032x}", "status": "final" if rtype == "Observation" else "active",
            element: {"coding": [{"system": system, "code": code}]}, "subject": {"reference": "Patient/" + "b" * 32}, **extra}


def _row(resource: dict, run_id: str = "r") -> dict:
    text = dumps(resource)
    return {"id": resource["id"], "institution": "inst-a", "resource_type": resource["resourceType"], "patient": "c" * 32,
            "code": primary_code(resource), "effective_time": None, "resource": text, "content_hash": content_hash(text),
            "source_system": "LIS", "source_table": "lab_result", "source_key_hash": resource["id"][::-1], "run_id": run_id,
            "mapping_version": "m@1", "ruleset_version": "r@1", "key_id": "k1", "published_at": dt.datetime.now(dt.UTC),
            "source_updated_at": None}


def _manifest_bodies(engine) -> list[dict]:
    with engine.connect() as conn:
        return [json.loads(b) for (b,) in conn.execute(sa.select(manifests.manifests.c.body).order_by(manifests.manifests.c.seq))]


# ---- each sink refuses the survivor, with nothing committed and no manifest ----------------

def test_recognition_table_upsert_blocks_the_survivor_and_commits_nothing_of_the_run(lake):
    icat, engine, _ = lake
    pub = _publication(lake)
    patients = pub.table_writer(ensure_table(icat, "recognition", "Patient"), "inst-a", "k1")
    patients.add(_row({"resourceType": "Patient", "id": "b" * 32, "gender": "female"}, pub.id))
    patients.flush()  # clean: staged in the run's transaction
    observations = pub.table_writer(ensure_table(icat, "recognition", "Observation"), "inst-a", "k1")
    observations.add(_row(_resource(1, **SURVIVOR), pub.id))
    with pytest.raises(LeakBlocked) as exc:
        observations.flush()
    pub.abort()
    assert [(h.kind, h.path) for h in exc.value.hits] == [("mobile", "Observation.valueString")]
    assert "138 0013 8000" not in str(exc.value) and MOBILE not in str(exc.value)
    assert all(icat.load_table(t).current_snapshot() is None for t in ("recognition.patient", "recognition.observation"))
    assert _manifest_bodies(engine) == []


def test_a_text_scanned_upstream_skips_only_its_own_column_of_the_batch_scan(lake):
    """The workers scan each resource text (Scanner.record); the writer then scans every other
    column, and every text not marked as scanned: a mark never hides another column or row."""
    icat, _, _ = lake
    table = ensure_table(icat, "recognition", "Observation")
    pub = _publication(lake)
    marked = pub.table_writer(table, "inst-a", "k1")
    marked.add(_row(_resource(1, **SURVIVOR), pub.id), text_scanned=True)
    marked.flush()  # the resource column of that row was scanned upstream: not again
    unmarked = _row(_resource(2, **SURVIVOR), pub.id)
    marked.add(unmarked)
    with pytest.raises(LeakBlocked):
        marked.flush()
    pub.abort()
    pub = _publication(lake)
    other_column = pub.table_writer(table, "inst-a", "k1")
    other_column.add({**_row(_resource(3), pub.id), "code": f"{LOINC}|{MOBILE}"}, text_scanned=True)
    with pytest.raises(LeakBlocked) as exc:
        other_column.flush()
    pub.abort()
    assert [h.kind for h in exc.value.hits] == ["mobile"]


def test_a_resource_sent_as_utf8_bytes_is_scanned_unless_marked_and_never_hides_a_row(lake):
    """The workers send each resource as its UTF-8 bytes: the writer's scan reads those rows like text,
    a flush of marked and unmarked rows scans exactly the unmarked ones, and the finding names its row."""
    icat, _, _ = lake
    table = ensure_table(icat, "recognition", "Observation")
    pub = _publication(lake)
    writer = pub.table_writer(table, "inst-a", "k1")
    for i in range(1, 40):
        row = _row(_resource(i, valueString=f"结果{i}"), pub.id)
        writer.add({**row, "resource": row["resource"].encode()}, text_scanned=True)
    hidden = _row(_resource(40, **SURVIVOR), pub.id)
    writer.add({**hidden, "resource": hidden["resource"].encode()})  # not scanned upstream
    with pytest.raises(LeakBlocked) as exc:
        writer.flush()
    pub.abort()
    assert [(h.kind, h.where) for h in exc.value.hits] == [("mobile", f"recognition.observation.resource[id={40:032x}]")]


def test_texts_and_their_utf8_bytes_become_the_same_arrow_column():
    """_to_arrow builds the resource column from str or bytes alike, in slices, NUL-free or not, and
    refuses bytes that are not UTF-8; a slice whose text exceeds 32-bit offsets is cut smaller."""
    from hub.lakehouse import writer

    texts = [dumps(_resource(i, valueString="张三\u0000" * (i % 4))) for i in range(300)]
    rows = [{**_row(json.loads(t)), "resource": t.encode() if i % 2 else t} for i, t in enumerate(texts)]
    expected = pa.Table.from_pylist([{**r, "resource": t} for r, t in zip(rows, texts, strict=True)], schema=ARROW_SCHEMA)
    assert writer._to_arrow(list(rows), chunk=64).equals(expected)
    with pytest.raises(pa.ArrowInvalid):
        writer._text_column([b"{}", b"\xff"])
    assert writer._text_column([bytearray(b"{}"), memoryview(b"[]"), "{}"]).to_pylist() == ["{}", "[]", "{}"]
    small = writer._MAX_OFFSET
    try:
        writer._MAX_OFFSET = 3 * max(len(t.encode()) for t in texts)
        assert writer._to_arrow(list(rows), chunk=64).equals(expected)
    finally:
        writer._MAX_OFFSET = small


def test_research_table_replace_blocks_the_survivor_and_keeps_the_previous_release(lake):
    icat, engine, _ = lake
    table = ensure_table(icat, "research", "Observation")
    with _publication(lake, "research-release") as first:
        first.replace_table(table, tag="release-1").append([_row(_resource(1), first.id)])
        first.commit()
        first.finish({"release": "release-1"})
    before = table.current_snapshot().snapshot_id

    with pytest.raises(LeakBlocked), _publication(lake, "research-release") as second:
        replacement = second.replace_table(table, tag="release-2")
        replacement.append([_row(_resource(2), second.id)])
        replacement.append([_row(_resource(3, **SURVIVOR), second.id)])
        second.commit()
    table.refresh()
    assert table.current_snapshot().snapshot_id == before and table.scan().to_arrow().num_rows == 1
    assert "release-2" not in table.metadata.refs
    assert [b["run_id"] for b in _manifest_bodies(engine)] == [first.id]


def _schema(**columns) -> pa.Schema:
    return pa.schema([("patient", pa.string()), *columns.items()])


def test_training_set_files_are_all_or_nothing(lake, tmp_path):
    from hub.trainset.build import _write

    out = tmp_path / "trainset"
    with pytest.raises(LeakBlocked), _publication(lake, "trainset") as pub:
        _write(pub, [{"patient": "c" * 32, "value": 7.1}], _schema(value=pa.float64()), out / "train" / "labels.parquet")
        _write(pub, [{"patient": "c" * 32, "note": "金丝雀"}], _schema(note=pa.string()), out / "test" / "labels.parquet")  # a canary name
    assert [p for p in out.rglob("*") if p.is_file()] == []  # the clean file is not kept either, nor any staged leftover
    assert _manifest_bodies(lake[1]) == []


def test_a_number_in_a_numeric_training_set_column_is_blocked(lake, tmp_path):
    from hub.trainset.build import _write

    with pytest.raises(LeakBlocked) as exc, _publication(lake, "trainset") as pub:
        _write(pub, [{"patient": "c" * 32, "value": int(MOBILE)}], _schema(value=pa.int64()), tmp_path / "labs.parquet")
    assert exc.value.hits[0].kind == "mobile" and not (tmp_path / "labs.parquet").exists()


def test_recognition_index_build_blocks_a_survivor_in_the_zone_and_writes_nothing(tmp_path):
    from hub.demo.generator import generate_region
    from hub.recognition import index
    from hub.region import load_region

    generate_region(tmp_path, patients=3)
    region = load_region(tmp_path)
    icat = open_catalog(region.catalog_url, region.warehouse)
    for rtype in ("Patient", "DiagnosticReport"):
        ensure_table(icat, region.zone, rtype)
    # a row published before the scan knew this form (or put there by an insider): the index must not serve it
    observation = _resource(1, effective=None, **SURVIVOR)
    observation.pop("effective")
    ensure_table(icat, region.zone, "Observation").append(pa.Table.from_pylist([_row(observation)], schema=ARROW_SCHEMA))
    engine = index.connect(f"sqlite:///{tmp_path / 'recognition.db'}")
    with pytest.raises(LeakBlocked) as exc:
        index.build(region, engine)
    assert exc.value.hits[0].where.startswith("recognition_results.resource")
    with engine.connect() as conn:
        assert [conn.execute(sa.select(sa.func.count()).select_from(t)).scalar() for t in (index.results, index.builds)] == [0, 0]
    assert _manifest_bodies(runrecord.connect(region.catalog_url)) == []


# ---- a clean publication: one signed manifest listing everything written ------------------

def test_a_publication_appends_one_manifest_listing_snapshots_files_stores_and_exemptions(lake, tmp_path):
    icat, engine, _ = lake
    with _publication(lake, "export") as pub:
        writer = pub.table_writer(ensure_table(icat, "recognition", "MedicationRequest"), "inst-a", "k1")
        writer.add(_row(_resource(1, "MedicationRequest", NDC, MOBILE), pub.id))  # an NDC code shaped like a mobile
        staged = pub.write_parquet([{"patient": "c" * 32, "drug": MOBILE}], tmp_path / "drugs.parquet", code_columns={"drug": NDC})
        pub.write_text("# Datasheet\n", tmp_path / "datasheet.md")
        pub.record_rows("an_index", [{"patient": "c" * 32, "n": 1}])
        assert not (tmp_path / "drugs.parquet").exists()  # staged, not visible before commit
        pub.commit()
        seq, digest = pub.finish({"what": "test"})

    (body,) = _manifest_bodies(engine)
    assert body["seq"] == seq and body["run_id"] == pub.id
    table = icat.load_table("recognition.medicationrequest")
    assert [s["id"] for s in body["tables"]["recognition.medicationrequest"]["snapshots"]] == [table.current_snapshot().snapshot_id]
    files = {f["path"]: f for f in body["files"]}
    assert files[str((tmp_path / "drugs.parquet").resolve())]["sha256"] == file_sha256(tmp_path / "drugs.parquet") == staged.sha256
    assert files[str((tmp_path / "drugs.parquet").resolve())]["rows"] == 1 and len(files) == 2
    summary = body["summary"]
    assert summary["kind"] == "export" and summary["what"] == "test" and summary["stores"]["an_index"]["rows"] == 1
    assert summary["leak_scan"]["exempted"] == {NDC: {"mobile": 3}}  # the row's resource and code columns, the file's column
    assert not list(tmp_path.glob(".*.staged"))


def test_a_publication_that_wrote_nothing_appends_no_manifest(lake):
    with _publication(lake) as pub:
        pub.table_writer(ensure_table(lake[0], "recognition", "Observation"), "inst-a")
        pub.commit()
        assert pub.finish({}) is None
    assert _manifest_bodies(lake[1]) == []


def test_nothing_can_be_staged_after_commit(lake, tmp_path):
    with _publication(lake) as pub:
        pub.commit()
        with pytest.raises(RuntimeError, match="committed"):
            pub.write_text("x", tmp_path / "late.txt")


def test_the_ndc_exemption_holds_only_under_ndc_in_the_upsert(lake):
    icat, _, _ = lake
    table = ensure_table(icat, "recognition", "MedicationRequest")
    for resource in (
        _resource(1, "MedicationRequest", NDC, MOBILE, note=[{"text": MOBILE}]),  # the same number as text
        _resource(2, "MedicationRequest", LOINC, MOBILE),  # under another system
    ):
        pub = _publication(lake)
        writer = pub.table_writer(table, "inst-a")
        writer.add(_row(resource, pub.id))
        with pytest.raises(LeakBlocked):
            writer.flush()
        pub.abort()
    assert table.current_snapshot() is None


# ---- the institution run goes through the sink -------------------------------------------

@pytest.mark.slow
def test_a_row_whose_result_is_an_id_number_is_quarantined_and_the_run_publishes_the_rest(tmp_path, keys):
    """The workers scan each prepared resource as the sink would: a hostile row waits in
    quarantine with its reason, and cannot block its institution's publication."""
    from hub import quarantine
    from hub.demo.generator import generate_region
    from hub.pipeline import run_institution
    from hub.region import load_region

    generate_region(tmp_path, patients=10)
    region = load_region(tmp_path)
    id_number = "110101199003074610"
    lis = sa.create_engine(next(f.url for f in region.institution("city-first").feeds if f.name == "lis"))
    with lis.begin() as conn:  # a number is a coded leaf: no ruleset scrubs it
        conn.execute(sa.text(f"UPDATE lab_result SET result_value = '{id_number}' WHERE result_id = (SELECT min(result_id) FROM lab_result)"))
    report = run_institution(region, "city-first", keys)
    leaks = [k for k in report.causes if "leak scan" in k]
    assert leaks == ["Observation.valueQuantity.value: the leak scan finds a resident ID number here after de-identification"]
    engine = runrecord.connect(region.catalog_url)
    reasons = [e["reason"] for e in quarantine.list_rows(engine, institution="city-first") if "leak scan" in e["reason"]]
    assert len(reasons) == 1 and id_number not in reasons[0]
    assert report.by_resource()["Observation"]["published"] > 0 and report.manifest is not None
    obs = open_catalog(region.catalog_url, region.warehouse).load_table("recognition.observation").scan().to_arrow()
    assert all(id_number not in r for r in obs.column("resource").to_pylist())
