"""A run keeps what was alive at its start out of the collector's full collections, and gives it back.

hub.pipeline.frozen_heap: gc.freeze() at the start of a run (the workers it forks inherit the
frozen heap), gc.unfreeze() at its end, once for nested runs, and nothing at all in a process
that froze its heap itself.
"""

from __future__ import annotations

import gc
import os

import pytest

import hub.pipeline as pipeline
import hub.prepare as prepare
from hub.pipeline import frozen_heap, run_institution

#: More objects than a bare interpreter holds: the run froze the modules it imported, not a few strays.
IMPORTED = 20_000


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    from hub.demo.generator import generate_region
    from hub.region import load_region

    ws = tmp_path_factory.mktemp("frozen-heap")
    generate_region(ws, patients=12)
    return load_region(ws)


def test_a_pooled_run_and_its_workers_leave_the_heap_out_and_the_run_gives_it_back(region, keys, monkeypatch, tmp_path):
    assert gc.get_freeze_count() == 0
    during = []
    commit = pipeline.InstitutionRun.commit

    def commit_and_look(self):
        during.append(gc.get_freeze_count())
        commit(self)

    init = prepare._init_worker

    def init_and_look(*args):
        init(*args)
        (tmp_path / f"worker-{os.getpid()}").write_text(str(gc.get_freeze_count()))

    monkeypatch.setattr(pipeline.InstitutionRun, "commit", commit_and_look)
    monkeypatch.setattr(prepare, "_init_worker", init_and_look)
    report = run_institution(region, region.institutions[0].id, keys, workers=2)
    assert sum(c["published"] for c in report.by_resource().values()) > 0
    assert during and during[0] > IMPORTED
    workers = [int(p.read_text()) for p in tmp_path.glob("worker-*")]
    assert len(workers) == 2 and min(workers) > IMPORTED
    assert gc.get_freeze_count() == 0  # given back: collectable again


def test_nested_runs_give_the_heap_back_once_at_the_outermost_end():
    @frozen_heap
    def inner() -> int:
        return gc.get_freeze_count()

    @frozen_heap
    def outer() -> tuple[int, int]:
        return inner(), gc.get_freeze_count()

    in_inner, after_inner = outer()
    assert in_inner > IMPORTED and after_inner == in_inner
    assert gc.get_freeze_count() == 0


def test_a_process_that_froze_its_heap_itself_is_left_as_it_is(region, keys):
    gc.freeze()
    try:
        assert gc.get_freeze_count() > IMPORTED
        run_institution(region, region.institutions[1].id, keys, workers=1)
        assert gc.get_freeze_count() > IMPORTED  # still frozen: the run did not unfreeze it
    finally:
        gc.unfreeze()


def test_a_failing_run_gives_the_heap_back_too():
    @frozen_heap
    def fails() -> None:
        raise RuntimeError("a source went away")

    with pytest.raises(RuntimeError):
        fails()
    assert gc.get_freeze_count() == 0
