"""Small per-row costs taken out of the worker path give exactly what they replaced.

- The parent's row screen hashes each row's source key (RowScreen.key_hash) and sends the
  hashes with the rows; the worker used to compute the same hash again. Same inputs, same value.
- Scanner.record returns one shared, read-only result for a clean text (CLEAN).
- Scanner.with_canaries and record sort the canaries once, not per resource.
"""

from __future__ import annotations

from collections import Counter

import pytest

from deid.keys import Keyring
from deid.ruleset import load_ruleset
from hub.fhir.ids import source_key_hash
from hub.leakscan import CLEAN, Hit, Scanner, ScanResult, load_canaries, load_scan_policy
from hub.mapping.run import block_select
from hub.prepare import PreparePool, Preparer, Ready, Rejected, Task
from hub.sources.screen import RowScreen
from hub.sources.sql import iter_batches


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    from hub.demo.generator import generate_region
    from hub.region import load_region

    ws = tmp_path_factory.mktemp("small-costs")
    generate_region(ws, patients=12)
    return load_region(ws)


def _screened_blocks(region, keys: Keyring):
    """(institution, mapping path, block index, rows the screen passes, their screen hashes) of every SQL block."""
    from hub.pipeline import feed_blocks

    ruleset = load_ruleset(region.ruleset, region.zone)
    scanner = Scanner(load_canaries(region.workspace), load_scan_policy(region.ruleset))
    for inst in region.institutions:
        parent = PreparePool(inst.id, keys, ruleset, 1, scanner, region.validation_oracle_every)
        for work in feed_blocks(inst):
            compiled = parent.local.compiled(str(work.mapping.path), work.index)  # as InstitutionRun.publish
            wm = compiled.columns.index(compiled.qualify(work.block.watermark.column)) if work.block.watermark else None
            screen = RowScreen(compiled, keys, inst.id, wm)
            rows = []
            for batch in iter_batches(work.engine, block_select(compiled, work.schema)):
                rows += screen.split(batch)[0]
            work.engine.dispose()
            yield inst.id, ruleset, scanner, str(work.mapping.path), work.index, rows, [screen.key_hash(r) for r in rows]


def _items(batch):
    return [(type(i).__name__, i.source_key_hash, i.text if isinstance(i, Ready) else i.label) for i in batch.items]


def test_the_row_screen_hashes_each_row_as_the_worker_does(region, keys):
    """Same keys, institution, system, table and key: the parent's hash is the worker's, row by row,
    and a batch prepared with the parent's hashes is the batch prepared without them."""
    blocks = 0
    for inst, ruleset, scanner, path, index, rows, hashes in _screened_blocks(region, keys):
        if not rows:
            continue
        blocks += 1
        worker = Preparer(inst, Keyring(keys.master), ruleset, scanner, region.validation_oracle_every)  # as _init_worker
        compiled = worker.compiled(path, index)
        mapping, block = compiled.mapping, compiled.block
        assert hashes == [source_key_hash(worker.keys, inst, mapping.system, block.table, compiled.source_key(r)) for r in rows]
        plain = worker.prepare(path, index, rows)
        again = Preparer(inst, Keyring(keys.master), ruleset, scanner, region.validation_oracle_every)
        sent = again.prepare(path, index, rows, hashes)
        assert [i.source_key_hash for i in plain.items] == hashes
        assert _items(sent) == _items(plain)
        assert sent.items == plain.items and sent.rows == plain.rows
        assert (sent.uncovered, sent.dropped_by_rule, sent.exempted) == (plain.uncovered, plain.dropped_by_rule, plain.exempted)
    assert blocks >= 5


def test_hashes_that_do_not_match_the_rows_are_refused(region, keys):
    inst, ruleset, scanner, path, index, rows, hashes = next(b for b in _screened_blocks(region, keys) if len(b[5]) > 1)
    prep = Preparer(inst, keys, ruleset, scanner)
    with pytest.raises(ValueError, match="source-key hashes"):
        prep.prepare(path, index, rows, hashes[:-1])


def test_worker_processes_get_the_hashes_and_give_back_the_parents_rows(region, keys):
    """The pool sends each task's hashes and keeps its rows (not sent back): same batches as in-process."""
    inst, ruleset, scanner, path, index, rows, hashes = max(_screened_blocks(region, keys), key=lambda b: len(b[5]))
    local = PreparePool(inst, keys, ruleset, 1, scanner)
    pool = PreparePool(inst, keys, ruleset, 2, scanner)
    try:
        small = 7  # several tasks per batch, and a last short one
        import hub.prepare as prepare_module

        old, prepare_module.TASK_ROWS = prepare_module.TASK_ROWS, small
        try:
            pooled = [b for _, b in pool.map_tagged([Task(None, path, index, rows, hashes), Task(None, path, index, rows[:3])])]
        finally:
            prepare_module.TASK_ROWS = old
        expected = [local.local.prepare(path, index, rows[i:i + small], hashes[i:i + small]) for i in range(0, len(rows), small)]
        expected.append(local.local.prepare(path, index, rows[:3]))
        assert len(pooled) == len(expected)
        for got, want in zip(pooled, expected, strict=True):
            assert got.rows == want.rows and all(a is b for a, b in zip(got.rows, want.rows, strict=True))  # the parent's own rows
            assert _items(got) == _items(want)
    finally:
        pool.close()
        local.close()


def test_a_clean_record_is_one_shared_result_that_refuses_changes():
    scanner = Scanner(frozenset({"M1000123", "13812345678"}))
    first = scanner.record('{"resourceType":"Observation","status":"final"}', (), "t")
    second = scanner.record('{"resourceType":"Patient","gender":"female"}', ("张伟",), "t")
    assert first is second is CLEAN
    assert not CLEAN.hits and not CLEAN.exempted and CLEAN.rows == 1 and CLEAN.exemptions() == {}
    CLEAN.raise_if_hits()
    total = ScanResult()
    total.add(CLEAN).add(CLEAN)
    assert total.hits == [] and total.exempted == Counter() and total.rows == 2
    counted: Counter = Counter()
    counted.update(CLEAN.exempted)
    assert counted == Counter()
    with pytest.raises(TypeError):
        CLEAN.add(ScanResult([Hit("t", "mobile", "138******78")]))
    with pytest.raises(TypeError):
        CLEAN.rows = 2
    with pytest.raises(TypeError):
        del CLEAN.hits
    with pytest.raises((TypeError, AttributeError)):
        CLEAN.hits.append(Hit("t", "mobile", "138******78"))  # type: ignore[attr-defined]
    with pytest.raises((TypeError, AttributeError)):
        CLEAN.exempted[("http://x", "mobile")] = 1  # type: ignore[index]
    assert not CLEAN.hits and not CLEAN.exempted and CLEAN.rows == 1


def test_a_record_with_a_finding_gets_its_own_result():
    scanner = Scanner(frozenset({"M1000123"}))
    found = scanner.record('{"resourceType":"Observation","note":[{"text":"M1000123"}]}', (), "t")
    assert found is not CLEAN and [h.kind for h in found.hits] == ["canary"]
    again = scanner.record('{"resourceType":"Observation","note":[{"text":"call 13812345678"}]}', ("张伟",), "t")
    assert again is not found and [h.kind for h in again.hits] == ["mobile"] and len(found.hits) == 1


@pytest.mark.parametrize("canaries", [frozenset(), frozenset({"b2", "a1", "张伟", "13812345678"})])
@pytest.mark.parametrize("known", [(), ("a1",), ("x", "张伟", "x"), ("13812345678", "M1000123")])
def test_with_canaries_is_what_it_was(canaries, known):
    scanner = Scanner(canaries)
    expected = tuple(dict.fromkeys((*known, *sorted(canaries)))) if canaries else known
    assert scanner.with_canaries(known) == expected
    for _ in range(2):
        assert scanner.with_canaries(known) == expected  # nothing kept from one call to the next


def test_record_without_known_values_still_looks_for_the_canaries():
    scanner = Scanner(frozenset({"Z9Q8W7E6"}))
    assert [h.kind for h in scanner.record('{"resourceType":"Patient","note":"Z9Q8W7E6"}', (), "t").hits] == ["canary"]
    assert scanner.record('{"resourceType":"Patient","note":"fine"}', (), "t") is CLEAN


def test_a_rejected_row_keeps_the_parents_hash(region, keys):
    """Rows the worker quarantines carry the hash the parent sent (the quarantine's key)."""
    seen = Counter()
    for inst, ruleset, scanner, path, index, rows, hashes in _screened_blocks(region, keys):
        if not rows:
            continue
        batch = Preparer(inst, keys, ruleset, scanner).prepare(path, index, rows, hashes)
        for item, h in zip(batch.items, hashes, strict=True):
            assert item.source_key_hash == h
            seen[type(item)] += 1
    assert seen[Ready] and seen[Rejected]


# ---- Scanner.columns scans each distinct value of a column once -----------------------------

def _columns_as_before(scanner: Scanner, columns: dict, where: str, ids=None, json_columns=("resource",),
                       token_columns=("code",), code_columns=None) -> ScanResult:
    """Scanner.columns as it was: every value in the joined text, repeats too."""
    import bisect
    import re

    from hub.leakscan import _JOIN, detect

    code_columns = dict(code_columns or {})
    result = ScanResult()
    for name, values in columns.items():
        rows = [i for i, v in enumerate(values) if v is not None]
        texts = [values[i] if isinstance(values[i], str) else str(values[i]) for i in rows]
        starts, pos = [], 0
        for t in texts:
            starts.append(pos)
            pos += len(t) + len(_JOIN)
        joined = _JOIN.join(texts)
        spans = [(a, b) for _, _, a, b in detect(joined, scanner.known)]
        if name in json_columns and "\\u" in joined:
            spans += [(m.start(), m.end()) for m in re.finditer(r"\\u", joined)]
        touched = {k for a, b in spans for k in range(bisect.bisect_right(starts, a) - 1, bisect.bisect_right(starts, b - 1))}
        for k in sorted(touched):
            i, text = rows[k], texts[k]
            at = f"{where}.{name}" + (f"[id={ids[i]}]" if ids is not None and ids[i] is not None else f"[row {i}]")
            if name in json_columns:
                result.add(scanner.resource(text, at))
            elif name in token_columns:
                result.add(scanner.token(text, at))
            elif name in code_columns:
                result.add(scanner.code(code_columns[name], text, at))
            else:
                result.add(scanner.text(text, at))
    result.rows = max((len(v) for v in columns.values()), default=0)
    return result


_CANARIES = frozenset({"M1000123", "13912345678", "欧阳娜娜", "浙江省杭州市西湖区文三路12号"})
_PIECES = ["13812345678", "11010519491231002X", "138 1234 5678", "0571-87654321", "330106198001011234", "M1000", "123", "1391234", "5678",
           "欧阳", "娜娜", "欧阳娜娜", "张伟", "6a0e9eefa4a06b64f2b7c91fe625da5c", "hub-20261201", "http://loinc.org|2345-7",
           "http://hl7.org/fhir/sid/ndc|13812345678", '{"resourceType":"Observation","note":[{"text":"', '"}]}',
           "\\u0031\\u0033", "１３８", " ", "-", ".", "\n", "0"]


def _value_strategy():
    from hypothesis import strategies as st

    return st.lists(st.sampled_from(_PIECES), min_size=0, max_size=4).map("".join)


def test_scanning_distinct_values_finds_what_scanning_every_value_found():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from hub.leakscan import EXEMPTABLE, Exemption, ScanPolicy

    ndc = "http://hl7.org/fhir/sid/ndc"
    policy = ScanPolicy({ndc: Exemption(ndc, frozenset(EXEMPTABLE))})
    scanner = Scanner(_CANARIES, policy)
    pool = st.lists(_value_strategy(), min_size=1, max_size=5)  # few values, many rows: repeats

    @settings(max_examples=300, deadline=None)
    @given(pool.flatmap(lambda vals: st.fixed_dictionaries({
        name: st.lists(st.one_of(st.none(), st.sampled_from(vals), _value_strategy()), max_size=12)
        for name in ("text", "code", "resource", "ndc")})))
    def check(columns):
        n = max(len(v) for v in columns.values())
        columns = {k: v + [None] * (n - len(v)) for k, v in columns.items()}
        ids = [f"r{i}" if i % 3 else None for i in range(n)]
        kw = {"ids": ids, "code_columns": {"ndc": ndc}}
        got, want = scanner.columns(columns, "t", **kw), _columns_as_before(scanner, columns, "t", **kw)
        assert got.hits == want.hits
        assert got.exempted == want.exempted and got.rows == want.rows

    check()


def test_a_repeated_value_with_a_finding_is_reported_on_every_row():
    scanner = Scanner(_CANARIES)
    column = ["run-1", "M1000123", None, "run-1", "M1000123", "call 13812345678", "M1000123"]
    result = scanner.columns({"note": column}, "t", ids=[f"r{i}" for i in range(len(column))])
    assert [(h.where, h.kind) for h in result.hits] == [
        ("t.note[id=r1]", "canary"), ("t.note[id=r4]", "canary"), ("t.note[id=r5]", "mobile"), ("t.note[id=r6]", "canary")]
    assert result.hits == _columns_as_before(scanner, {"note": column}, "t", ids=[f"r{i}" for i in range(len(column))]).hits


def test_the_pipeline_hands_its_loaded_mapping_to_the_preparer(region, keys, monkeypatch):
    """Preparer.compiled takes the mapping feed_blocks loaded instead of parsing the file again."""
    import hub.prepare as prepare_module
    from hub.mapping.spec import load_mapping

    inst = region.institutions[0]
    path = next(f.mapping for f in inst.feeds if f.kind == "sql")
    mapping = load_mapping(path)
    monkeypatch.setattr(prepare_module, "load_mapping", lambda p: pytest.fail("the mapping was parsed again"))
    prep = Preparer(inst.id, keys, load_ruleset(region.ruleset, region.zone))
    compiled = prep.compiled(str(mapping.path), 0, mapping)
    assert compiled.mapping is mapping and prep.compiled(str(mapping.path), 0) is compiled
    assert prep.compiled(str(mapping.path), len(mapping.blocks) - 1).mapping is mapping
