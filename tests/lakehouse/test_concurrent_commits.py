"""Institutions publishing into one Iceberg table at the same moment: every row exactly once, retries counted.

The adversary: N processes (one per institution) each stage a run's upserts (new ids and
changed versions of published ids, so each transaction holds deletes and appends) into the
same table, wait at a barrier, and commit. One commits first and the others are released
only after it did, so each of them commits on a stale base: the catalog refuses it at least
once and the commit is re-planned on the new head (retries > 0, deterministically); the
others race each other as well. The table must then hold, for every institution, exactly
the rows a serial run of the same publications leaves: same ids, same content hashes, no
row twice, none lost. On SQLite (default) and on PostgreSQL (marked postgres).
"""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
import secrets
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa

from hub.fhir.jsonio import content_hash, dumps
from hub.lakehouse.sink import Publication
from hub.lakehouse.tables import ensure_table, open_catalog, primary_code
from hub.lakehouse.writer import (
    CommitConflict,
    RetryPolicy,
    commit_with_retry,
    counting,
    refused_commits,
)
from hub.leakscan import Scanner
from hub.lineage import runrecord
from hub.lineage.signing import Signer, create_key_file, parse_private

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
INSTITUTIONS = [f"inst-{c}" for c in "abcde"]
PER_INSTITUTION = 12


def _row(inst: str, i: int, version: int, run_id: str) -> dict:
    rid = f"{inst}-{i:04d}"
    resource = {"resourceType": "Observation", "id": rid, "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
                "valueQuantity": {"value": f"{6 + version}.{i % 10}0", "unit": "%"}}
    text = dumps(resource)
    return {"id": rid, "institution": inst, "resource_type": "Observation", "patient": f"p{i % 5}",
            "code": primary_code(resource), "effective_time": dt.datetime(2026, 1, 1 + i % 28, tzinfo=dt.UTC),
            "resource": text, "content_hash": content_hash(text), "source_system": "LIS", "source_table": "lab_result",
            "source_key_hash": f"k{inst}{i}", "run_id": run_id, "mapping_version": "m@1", "ruleset_version": "r@1",
            "key_id": "k1", "published_at": dt.datetime.now(dt.UTC), "source_updated_at": None}


def _rows(inst: str, round_: int, run_id: str) -> list[dict]:
    """Round 0: ids 0..11. Round 1: ids 0..3 changed (delete + append), 4..11 unchanged, 12..17 new."""
    if round_ == 0:
        return [_row(inst, i, 0, run_id) for i in range(PER_INSTITUTION)]
    return ([_row(inst, i, 1, run_id) for i in range(4)] + [_row(inst, i, 0, run_id) for i in range(4, PER_INSTITUTION)]
            + [_row(inst, i, 1, run_id) for i in range(PER_INSTITUTION, PER_INSTITUTION + 6)])


def _publish(url: str, warehouse: str, key_hex: str, inst: str, round_: int) -> Publication:
    """Stage one institution's run (flushed: its data files are written) and return the open publication."""
    catalog = open_catalog(url, Path(warehouse))
    table = ensure_table(catalog, "recognition", "Observation")
    pub = Publication(runrecord.connect(url), Signer(parse_private(key_hex, "test"), "test"), "run", scanner=Scanner())
    writer = pub.table_writer(table, inst, "k1")
    for row in _rows(inst, round_, pub.id):
        writer.add(row)
    writer.flush()
    return pub


def _worker(url: str, warehouse: str, key_hex: str, inst: str, barrier, first_done, out) -> None:
    try:
        pub = _publish(url, warehouse, key_hex, inst, 1)
        barrier.wait(timeout=120)
        if inst != INSTITUTIONS[0]:
            first_done.wait(timeout=120)  # commit on a base that is certainly stale
        pub.commit()
        pub.finish({"institution": inst})
        if inst == INSTITUTIONS[0]:
            first_done.set()
        out.put((inst, sum(pub.commit_retries.values()), None))
    except Exception as exc:  # reported to the test, which fails with it
        first_done.set()
        out.put((inst, -1, f"{type(exc).__name__}: {exc}"))


def _contents(url: str, warehouse: Path, name: str = "recognition.observation") -> list[tuple[str, str, str]]:
    table = open_catalog(url, warehouse).load_table(name)
    data = table.scan(selected_fields=("institution", "id", "content_hash")).to_arrow()
    return sorted(zip(*(data.column(c).to_pylist() for c in ("institution", "id", "content_hash")), strict=True))


def _serial(tmp_path: Path, key_hex: str) -> list[tuple[str, str, str]]:
    url = f"sqlite:///{tmp_path / 'serial.db'}"
    for round_ in (0, 1):
        for inst in INSTITUTIONS:
            pub = _publish(url, str(tmp_path / "serial-warehouse"), key_hex, inst, round_)
            pub.commit()
            pub.finish({})
    return _contents(url, tmp_path / "serial-warehouse")


def _race(url: str, warehouse: Path, key_hex: str) -> dict[str, int]:
    for inst in INSTITUTIONS:  # round 0, serially: every institution has published rows to change
        pub = _publish(url, str(warehouse), key_hex, inst, 0)
        pub.commit()
        pub.finish({})
    ctx = mp.get_context("spawn")
    barrier, first_done, out = ctx.Barrier(len(INSTITUTIONS)), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(url, str(warehouse), key_hex, inst, barrier, first_done, out))
             for inst in INSTITUTIONS]
    for p in procs:
        p.start()
    results = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    errors = [f"{inst}: {err}" for inst, _, err in results if err]
    assert not errors, errors
    return {inst: n for inst, n, _ in results}


def _check(url: str, warehouse: Path, tmp_path: Path, key_hex: str, retries: dict[str, int]) -> None:
    got = _contents(url, warehouse)
    assert len(got) == len({(inst, rid) for inst, rid, _ in got}), "a row is in the table twice"
    assert {inst for inst, _, _ in got} == set(INSTITUTIONS)
    assert len(got) == len(INSTITUTIONS) * (PER_INSTITUTION + 6)
    assert got == _serial(tmp_path, key_hex)
    assert retries[INSTITUTIONS[0]] == 0
    assert all(retries[inst] >= 1 for inst in INSTITUTIONS[1:]), retries


def test_institutions_committing_at_once_keep_every_row_exactly_once_sqlite(tmp_path):
    key_hex = secrets.token_hex(32)
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    retries = _race(url, tmp_path / "warehouse", key_hex)
    _check(url, tmp_path / "warehouse", tmp_path, key_hex, retries)
    print("retries per institution (sqlite):", retries)


@pytest.fixture()
def pg_schema():
    """A fresh schema in database test, dropped afterwards; the catalog URL points its search_path there."""
    name = f"hub_c_{secrets.token_hex(4)}"
    engine = sa.create_engine(PG)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {name}"))
    except sa.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL not reachable at 127.0.0.1:5432 (start it; .ci/run does): {exc.orig}")
    yield f"{PG}?options=-csearch_path%3D{name}"
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA {name} CASCADE"))
    engine.dispose()


@pytest.mark.postgres
def test_institutions_committing_at_once_keep_every_row_exactly_once_postgres(tmp_path, pg_schema):
    key_hex = secrets.token_hex(32)
    retries = _race(pg_schema, tmp_path / "warehouse", key_hex)
    _check(pg_schema, tmp_path / "warehouse", tmp_path, key_hex, retries)
    print("retries per institution (postgres):", retries)


def _lake(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    return url, open_catalog(url, tmp_path / "warehouse"), create_key_file(tmp_path / "signing.key")


def test_a_commit_on_a_stale_base_is_replanned_and_its_retry_recorded_in_the_manifest(tmp_path):
    url, icat, signer = _lake(tmp_path)
    engine = runrecord.connect(url)
    table = ensure_table(icat, "recognition", "Observation")
    slow = Publication(engine, signer, "run", scanner=Scanner())
    writer = slow.table_writer(table, "inst-a", "k1")
    for row in _rows("inst-a", 0, slow.id):
        writer.add(row)
    writer.flush()
    # another institution commits between this run's staging and its commit
    fast = Publication(engine, signer, "run", scanner=Scanner())
    other = fast.table_writer(icat.load_table("recognition.observation"), "inst-b", "k1")
    for row in _rows("inst-b", 0, fast.id):
        other.add(row)
    fast.commit()
    fast.finish({})
    slow.commit()
    seq, _ = slow.finish({})
    assert slow.commit_retries == {"recognition.observation": 1}
    with engine.connect() as conn:
        body = conn.execute(sa.text("SELECT body FROM hub_manifests WHERE seq = :s"), {"s": seq}).scalar()
    assert '"commit_retries":{"recognition.observation":1}' in body.replace(" ", "")
    got = _contents(url, tmp_path / "warehouse")
    assert [inst for inst, _, _ in got].count("inst-a") == PER_INSTITUTION
    assert [inst for inst, _, _ in got].count("inst-b") == PER_INSTITUTION


def test_a_commit_that_keeps_losing_gives_up_naming_the_table(tmp_path):
    url, icat, _ = _lake(tmp_path)
    table = counting(ensure_table(icat, "recognition", "Observation"))
    stale = table.transaction()
    stale.append(pa.Table.from_pylist(_rows("inst-a", 0, "r1"), schema=table.schema().as_arrow()))
    icat.load_table("recognition.observation").append(
        pa.Table.from_pylist(_rows("inst-b", 0, "r2"), schema=table.schema().as_arrow()))
    # one attempt only: the stale base is refused and there is no second try
    with pytest.raises(CommitConflict, match=r"^recognition\.observation: commit refused 1 time\(s\)"):
        commit_with_retry(table, stale, RetryPolicy(attempts=1))
    assert refused_commits(table) == 1
    assert "commit.retry.num-retries" not in table.refresh().properties  # the policy is never written to the table


def test_a_table_replacement_overtaken_by_another_commit_is_staged_again_and_holds_exactly_its_rows(tmp_path):
    url, icat, signer = _lake(tmp_path)
    engine = runrecord.connect(url)
    table = ensure_table(icat, "research", "Observation")
    release = Publication(engine, signer, "research-release", scanner=Scanner())
    replacement = release.replace_table(table, tag="release-1")
    replacement.append(_rows("inst-a", 0, release.id))
    # meanwhile another publication appends to the table: the staged "delete every row" did not see its rows
    other = Publication(engine, signer, "run", scanner=Scanner())
    writer = other.table_writer(icat.load_table("research.observation"), "inst-b", "k1")
    for row in _rows("inst-b", 0, other.id):
        writer.add(row)
    other.commit()
    other.finish({})
    release.commit()
    release.finish({})
    assert release.commit_retries["research.observation"] >= 1
    got = _contents(url, tmp_path / "warehouse", "research.observation")
    assert got == sorted((r["institution"], r["id"], r["content_hash"]) for r in _rows("inst-a", 0, "x"))
    tagged = icat.load_table("research.observation").snapshot_by_name("release-1").snapshot_id
    assert tagged == replacement.snapshot_id
