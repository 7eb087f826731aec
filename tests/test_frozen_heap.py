"""A run keeps what was alive at its start out of the collector's full collections, and gives it back.

hub.pipeline.frozen_heap: gc.freeze() at the start of a run (the workers it forks inherit the
frozen heap), gc.unfreeze() at its end, once for nested runs, and nothing at all in a process
that froze its heap itself.
"""

from __future__ import annotations

import gc
import os
import weakref

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
        (tmp_path / f"worker-{os.getpid()}").write_text(f"{gc.get_freeze_count()} {gc.get_threshold()[2]}")

    monkeypatch.setattr(pipeline.InstitutionRun, "commit", commit_and_look)
    monkeypatch.setattr(prepare, "_init_worker", init_and_look)
    report = run_institution(region, region.institutions[0].id, keys, workers=2)
    assert sum(c["published"] for c in report.by_resource().values()) > 0
    assert during and during[0] > IMPORTED
    workers = [tuple(map(int, p.read_text().split())) for p in tmp_path.glob("worker-*")]
    assert len(workers) == 2 and min(frozen for frozen, _ in workers) > IMPORTED
    assert all(full >= pipeline.RUN_GC_THRESHOLDS[2] for _, full in workers)  # the workers run with the run's thresholds
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


def test_a_freeze_left_by_an_interrupted_run_is_taken_back_by_the_next(monkeypatch):
    """An exception between gc.freeze() and the run's bookkeeping (KeyboardInterrupt, a signal handler)
    must not leave the heap frozen for the life of a long-running process."""
    real_freeze = gc.freeze

    def freeze_then_interrupted():
        real_freeze()
        raise KeyboardInterrupt

    @frozen_heap
    def run() -> int:
        return gc.get_freeze_count()

    monkeypatch.setattr(gc, "freeze", freeze_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        run()
    assert gc.get_freeze_count() > IMPORTED  # left frozen by the interrupted run
    monkeypatch.setattr(gc, "freeze", real_freeze)
    assert run() > IMPORTED
    assert gc.get_freeze_count() == 0  # taken back: the next run did not mistake it for the process's own


def test_garbage_from_before_a_run_is_not_kept_while_it_runs():
    class Cycle:
        pass

    def garbage() -> weakref.ref:
        a, b = Cycle(), Cycle()
        a.other, b.other = b, a
        return weakref.ref(a)

    @frozen_heap
    def run(refs: list[weakref.ref]) -> int:
        return sum(r() is not None for r in refs)

    gc.disable()  # no collection may happen by chance before the run
    try:
        refs = [garbage() for _ in range(100)]
        assert sum(r() is not None for r in refs) == 100
        assert run(refs) == 0  # collected before the freeze, not held (frozen) until the run ends
    finally:
        gc.enable()


def test_a_run_raises_the_collectors_thresholds_and_puts_them_back():
    """Full collections walk everything a run holds; during a run they come at most every
    RUN_GC_THRESHOLDS[2] collections of the middle generation. A process's own higher thresholds stay."""
    before = gc.get_threshold()

    @frozen_heap
    def run() -> tuple[int, ...]:
        return gc.get_threshold()

    during = run()
    assert all(d >= max(r, b) for d, r, b in zip(during, pipeline.RUN_GC_THRESHOLDS, before, strict=True))
    assert during != (700, 10, 10)
    assert gc.get_threshold() == before
    gc.set_threshold(50_000, 10, 1_000)
    try:
        assert run() == (50_000, 10, 1_000)  # raised, never lowered
        assert gc.get_threshold() == (50_000, 10, 1_000)
    finally:
        gc.set_threshold(*before)


def test_a_failing_or_interrupted_run_puts_the_thresholds_back(monkeypatch):
    before = gc.get_threshold()

    @frozen_heap
    def fails() -> None:
        raise RuntimeError("a source went away")

    with pytest.raises(RuntimeError):
        fails()
    assert gc.get_threshold() == before

    real_set = gc.set_threshold

    @frozen_heap
    def run() -> tuple[int, ...]:
        return gc.get_threshold()

    # a signal landing just after the thresholds were raised (call 1), or just before they are put back (call 2)
    for interrupted_call in (1, 2):
        calls = []

        def set_interrupted(*args, at=interrupted_call, calls=calls):
            calls.append(args)
            if len(calls) == at == 2:
                raise KeyboardInterrupt
            real_set(*args)
            if len(calls) == at == 1:
                raise KeyboardInterrupt

        monkeypatch.setattr(gc, "set_threshold", set_interrupted)
        with pytest.raises(KeyboardInterrupt):
            run()
        monkeypatch.setattr(gc, "set_threshold", real_set)
        assert gc.get_threshold() != before  # left raised by the interrupted run
        assert run() != before  # the next run raises them again ...
        assert gc.get_threshold() == before  # ... and puts back the process's own, not the raised ones
        assert run() != before and gc.get_threshold() == before  # and so does every run after it
        assert gc.get_freeze_count() == 0


def test_the_publish_command_runs_its_whole_job_frozen(region, monkeypatch):
    """Not only the runs: the job's checks and recognition index after each run walked the whole heap
    in every full collection too (``hub publish`` hands the job to dagster_project.launch)."""
    import dagster_project.launch as launch
    from hub.cli.demo import publish

    seen = []

    class NoInstance(Exception):
        pass

    def instance_for(workspace):
        seen.append((gc.get_freeze_count(), gc.get_threshold()))
        raise NoInstance  # the job stops before Dagster's instance is opened

    monkeypatch.setattr(launch, "instance_for", instance_for)
    before = gc.get_threshold()
    with pytest.raises(NoInstance):
        publish(region.workspace, [region.institutions[0].id])
    assert len(seen) == 1
    frozen, thresholds = seen[0]
    assert frozen > IMPORTED and thresholds[2] >= pipeline.RUN_GC_THRESHOLDS[2]
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == before
