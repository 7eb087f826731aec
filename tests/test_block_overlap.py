"""Blocks overlap in the worker processes and still publish one after the other.

InstitutionRun.publish_blocks sends the next block's rows to the workers while the parent
stages the end of the block before (PreparePool.map_tagged reads ahead past a Mark). What
must hold: batches come back in order with their block, a Mark with drain stops the read-ahead
(the next block waits for what the caller does with the one before), each block's progress
display gets exactly its own rows, and a pooled run publishes what one process publishes.
"""

from __future__ import annotations

import pytest

from hub.prepare import Mark, PreparePool, Task
from tests.test_small_costs import _items, _screened_blocks


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    from hub.demo.generator import generate_region
    from hub.region import load_region

    ws = tmp_path_factory.mktemp("overlap")
    generate_region(ws, patients=12)
    return load_region(ws)


def _two_blocks(region, keys):
    """Two blocks of one institution with rows: (institution, ruleset, scanner, [(path, index, rows, hashes), ...])."""
    blocks = [b for b in _screened_blocks(region, keys) if b[0] == region.institutions[0].id and len(b[5]) > 3]
    inst, ruleset, scanner = blocks[0][:3]
    return inst, ruleset, scanner, [b[3:] for b in blocks[:2]]


@pytest.mark.parametrize("workers", [1, 2])
def test_batches_and_marks_come_back_in_order_with_their_tags(region, keys, workers, monkeypatch):
    import hub.prepare as prepare_module

    monkeypatch.setattr(prepare_module, "TASK_ROWS", 2)  # several tasks per batch, in flight at once
    inst, ruleset, scanner, blocks = _two_blocks(region, keys)
    items = []
    for name, (path, index, rows, hashes) in zip("ab", blocks, strict=True):
        items += [Task(name, path, index, rows[:3], hashes[:3]), Task(name, path, index, rows[3:], None), Mark(name)]
    local = PreparePool(inst, keys, ruleset, 1, scanner)
    pool = PreparePool(inst, keys, ruleset, workers, scanner)
    try:
        got = list(pool.map_tagged(items))
    finally:
        pool.close()
    expected = []
    for name, (path, index, rows, hashes) in zip("ab", blocks, strict=True):
        parts = [(rows[:3], hashes[:3]), (rows[3:], None)]
        if workers > 1:  # the pool splits each task into pieces of TASK_ROWS
            parts = [(r[i:i + 2], None if h is None else h[i:i + 2]) for r, h in parts for i in range(0, len(r), 2)]
        expected += [(name, local.local.prepare(path, index, r, h)) for r, h in parts] + [(name, None)]
    local.close()
    assert [tag for tag, _ in got] == [tag for tag, _ in expected]
    for (_, a), (_, b) in zip(got, expected, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.rows == b.rows and _items(a) == _items(b)


def test_the_pool_reads_past_a_mark_and_not_past_a_drain(region, keys, monkeypatch):
    """With workers, the item after a plain Mark is read before the Mark is given back (the next block
    goes on in the workers); the item after a Mark with drain is read only once the Mark was given back."""
    import hub.prepare as prepare_module

    monkeypatch.setattr(prepare_module, "TASK_ROWS", 2)
    inst, ruleset, scanner, blocks = _two_blocks(region, keys)
    (path_a, index_a, rows_a, _), (path_b, index_b, rows_b, _) = blocks
    log: list[str] = []

    def items(drain: bool):
        log.clear()
        for name, path, index, rows in (("a", path_a, index_a, rows_a[:4]), ("b", path_b, index_b, rows_b[:4])):
            log.append(f"read {name}")
            yield Task(name, path, index, rows)
            log.append(f"read end {name}")
            yield Mark(name, drain=drain and name == "a")

    pool = PreparePool(inst, keys, ruleset, 2, scanner)
    try:
        for tag, batch in pool.map_tagged(items(drain=False)):
            if batch is None:
                log.append(f"got end {tag}")
        assert log.index("read b") < log.index("got end a")
        for tag, batch in pool.map_tagged(items(drain=True)):
            if batch is None:
                log.append(f"got end {tag}")
        assert log.index("got end a") < log.index("read b")
    finally:
        pool.close()


class _Recorder:
    def __init__(self):
        self.calls: list[tuple[str, object]] = []

    def start(self, label: str, total: int) -> None:
        self.calls.append(("start", label))

    def advance(self, n: int) -> None:
        self.calls.append(("advance", n))


def test_each_block_display_counts_its_own_rows_when_blocks_overlap(keys, tmp_path):
    """Rows the next block settles while the one before is still staged (quarantined by the screen,
    unchanged) are shown once its own display opens: every display ends at its block's rows read."""
    from hub.demo.generator import generate_region
    from hub.pipeline import run_institution
    from hub.region import load_region

    generate_region(tmp_path, patients=40)
    region = load_region(tmp_path)
    inst = region.institutions[0].id
    for attempt in ("first", "again"):  # the second run settles most rows in the screen (unchanged)
        progress = _Recorder()
        report = run_institution(region, inst, keys, workers=2, progress=progress)
        shown: list[list] = []
        for kind, value in progress.calls:
            if kind == "start":
                shown.append([value, 0])
            else:
                assert shown, f"{attempt}: rows advanced before any display opened"
                shown[-1][1] += value
        sql = report.counts
        assert [label.split(" ", 1)[1] for label, _ in shown] == [f"{c.feed} {c.source_table} → {c.resource_type}" for c in sql], attempt
        assert [n for _, n in shown] == [c.rows_read for c in sql], attempt
        assert sum(c.rows_read for c in sql) > 0


def test_a_block_into_a_resource_still_being_staged_waits_for_it(keys, tmp_path, monkeypatch):
    """Blocks overlap (the next one is fed while the one before is staged), except that a block never
    starts while one writing the same resource is unfinished: its unchanged rows are compared with the
    table's index, which that block's flush updates (two feeds may make the same patient ids)."""
    from hub import pipeline
    from hub.demo.generator import generate_region
    from hub.region import load_region

    log: list[tuple[str, object, str]] = []  # the blocks themselves: alive, so never two alike
    feed, finish = pipeline._BlockPublish.feed, pipeline._BlockPublish.finish

    def logged_feed(self):
        log.append(("feed", self, self.block.resource))
        yield from feed(self)

    def logged_finish(self):
        log.append(("finish", self, self.block.resource))
        return finish(self)

    monkeypatch.setattr(pipeline._BlockPublish, "feed", logged_feed)
    monkeypatch.setattr(pipeline._BlockPublish, "finish", logged_finish)
    generate_region(tmp_path, patients=40)
    region = load_region(tmp_path)
    for inst in region.institutions:
        pipeline.run_institution(region, inst.id, keys, workers=2)
    fed = {b: i for i, (what, b, _) in enumerate(log) if what == "feed"}
    done = {b: i for i, (what, b, _) in enumerate(log) if what == "finish"}
    resource = {b: r for _, b, r in log}
    blocks = sorted(fed, key=fed.get)
    same = [(a, b) for i, a in enumerate(blocks) for b in blocks[i + 1:] if resource[a] == resource[b]]
    assert same, "the demo has two blocks into one resource (vital signs and lab results are Observations)"
    assert all(done[a] < fed[b] for a, b in same)
    assert any(fed[b] < done[a] for a, b in zip(blocks, blocks[1:], strict=False)), "no block was fed while the one before was staged"
