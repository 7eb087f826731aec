"""Recognition index builds that run at the same time (several Celery workers, a backfill's runs) take turns.

Before the build lock, three builds started together failed: SQLite with "database is
locked", PostgreSQL with a unique violation on recognition_state. Now each waits for the
one before it and reads only what that one left, so the index ends as one build would
leave it, and `hub audit verify` links the builds' manifests into one chain.
"""

from __future__ import annotations

import multiprocessing as mp

import pytest
import sqlalchemy as sa
import yaml

from deid.keys import Keyring
from hub.lineage.audit import verify_region
from hub.recognition.index import build, connect, index_url, results
from hub.region import load_region
from tests.conftest import TEST_MASTER_KEY, publish_region
from tests.deploy.harness import ServerMissing, scratch_database

pytestmark = pytest.mark.slow
BUILDS = 3


def _build_after(barrier, workspace: str, out) -> None:
    region = load_region(workspace)
    engine = connect(index_url(region))
    barrier.wait(timeout=120)
    try:
        out.put(("ok", build(region, engine, Keyring(TEST_MASTER_KEY))))
    except Exception as exc:  # reported to the test, which fails with it
        out.put(("error", f"{type(exc).__name__}: {exc}"))


def _concurrent_builds(workspace) -> list[tuple[str, object]]:
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(BUILDS), ctx.Queue()
    procs = [ctx.Process(target=_build_after, args=(barrier, str(workspace), out)) for _ in range(BUILDS)]
    for p in procs:
        p.start()
    outcomes = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return outcomes


def _content(url: str) -> list[tuple]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(results.c.patient, results.c.loinc, results.c.institution,
                                      results.c.observation_id).order_by(*results.primary_key.columns)).all()
    engine.dispose()
    return [tuple(r) for r in rows]


@pytest.fixture()
def published(tmp_path, keys):
    region, _, _ = publish_region(tmp_path / "ws", keys, 12)
    return region


@pytest.fixture()
def pg_index():
    try:
        with scratch_database("hub_index") as url:
            yield url
    except ServerMissing as exc:
        pytest.fail(str(exc))


def _check(workspace, keys) -> None:
    outcomes = _concurrent_builds(workspace)
    assert [kind for kind, _ in outcomes] == ["ok"] * BUILDS, outcomes
    reads = sorted(n for _, n in outcomes)
    assert reads[0] == reads[1] == 0 and reads[-1] > 0, "one build reads everything, the others find nothing new"
    region = load_region(workspace)
    concurrent = _content(index_url(region))
    assert len(concurrent) > 20
    report = verify_region(region)
    assert report.ok, report.breaks
    assert "recognition-index" in report.stores

    # the same rows as a single build into an empty index
    single = workspace.parent / f"{workspace.name}-single.db"
    build(region, connect(f"sqlite:///{single}"), keys)
    assert concurrent == _content(f"sqlite:///{single}")


def test_builds_at_once_on_the_default_sqlite_index(published, keys):
    _check(published.workspace, keys)


@pytest.mark.postgres
def test_builds_at_once_on_a_postgresql_index(published, keys, pg_index):
    workspace = published.workspace
    doc = yaml.safe_load((workspace / "region.yaml").read_text(encoding="utf-8"))
    doc["recognition_index"] = pg_index
    (workspace / "region.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    _check(workspace, keys)
