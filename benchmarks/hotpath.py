"""The per-row hot path alone: what one worker spends per resource, stage by stage.

Generates a small demo region (or reuses --workspace), reads every row of every SQL feed
once (not timed), then times the work hub.prepare.Preparer does per row, in one process:

  total   Preparer.prepare over every block in batches of TASK_ROWS, exactly as a worker
          does it: resources per CPU-second (time.process_time), and a digest of everything
          it produced (ids, JSON, hashes, columns, quarantine problems and leak findings),
          so two code trees can be shown to give the same output;
  stages  the same loop unrolled with a CPU clock around each stage (ids: the source-key
          hash, resource ids being made while mapping; map, fast check, known values,
          de-identify, of which scrub, JSON, leak scan, columns: content hash, code, times,
          references): µs per resource. Timing adds overhead, so the stages sum to a little
          more than total.

Each measurement runs in a fresh process (module caches start cold, as in a new worker).
--trees runs the same measurements for several code trees, interleaved, and prints the
medians and the ratio to the first tree: e.g. the unmodified code in a git worktree first.

The modules of hub.compiled run compiled when built (`hub compiled build`); a tree given as
DIR+pure runs its Python sources (HUB_PURE_PYTHON=1): `--trees .+pure,.` measures the build.

Usage: python benchmarks/hotpath.py [--patients 600] [--repeat 3] [--workspace DIR] [--trees A,B]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PURE = "+pure"  # a tree given as DIR+pure runs with HUB_PURE_PYTHON=1: its Python sources, not its compiled modules
STAGES = ("ids", "map", "check", "known", "deid", "scrub", "json", "scan", "columns")


def load_rows(ws: Path):
    """(region, [(institution, [(mapping path, block index, rows)])]): the rows the pipeline
    would send to its workers in a full run (after the parent's row screen)."""
    from deid.keys import Keyring
    from hub.mapping.run import block_select
    from hub.pipeline import feed_blocks
    from hub.region import load_region
    from hub.sources.screen import RowScreen
    from hub.sources.sql import iter_batches

    region = load_region(ws)
    keys = Keyring(bytes(range(32)))
    out = []
    for inst in region.institutions:
        blocks = []
        prep = _preparer(region, inst.id, keys)
        for work in feed_blocks(inst):
            compiled = prep.compiled(str(work.mapping.path), work.index)
            screen = RowScreen(compiled, keys, inst.id, None)
            rows = []
            for batch in iter_batches(work.engine, block_select(compiled, work.schema)):
                rows += screen.split(batch)[0]
            blocks.append((str(work.mapping.path), work.index, rows))
            work.engine.dispose()
        out.append((inst.id, blocks))
    return region, keys, out


def _preparer(region, institution: str, keys):
    from deid.ruleset import load_ruleset
    from hub.leakscan import Scanner, load_canaries, load_scan_policy
    from hub.prepare import Preparer

    ruleset = load_ruleset(region.ruleset, region.zone)
    scanner = Scanner(load_canaries(region.workspace), load_scan_policy(region.ruleset))
    return Preparer(institution, keys, ruleset, scanner, region.validation_oracle_every)


def _digest(h, batch) -> None:
    from hub.prepare import Ready

    for item in batch.items:
        if isinstance(item, Ready):
            h.update(repr((item.id, item.text, item.hash, item.code, item.effective_time, item.patient_ref, item.pseudonym,
                           item.source_key_hash, item.source_updated_at, item.birth_times, item.scanned)).encode())
        else:
            h.update(repr((item.problems, item.failed_validation, item.label, item.source_key_hash)).encode())
    h.update(repr((sorted(batch.uncovered.items()), sorted(batch.dropped_by_rule.items()), sorted(batch.exempted.items()))).encode())


def measure_total(ws: Path) -> dict:
    from hub.prepare import TASK_ROWS, Ready

    region, keys, insts = load_rows(ws)
    h = hashlib.sha256()
    rows = published = 0
    cpu = 0.0
    for inst, blocks in insts:
        prep = _preparer(region, inst, keys)
        batches = []
        t = time.process_time()
        for path, index, block_rows in blocks:
            for i in range(0, len(block_rows), TASK_ROWS):
                batches.append(prep.prepare(path, index, block_rows[i:i + TASK_ROWS]))
        cpu += time.process_time() - t
        for batch in batches:
            _digest(h, batch)
            rows += len(batch.rows)
            published += sum(isinstance(x, Ready) for x in batch.items)
    return {"rows": rows, "resources": published, "cpu_s": cpu, "per_cpu_s": published / cpu, "digest": h.hexdigest()[:16]}


def measure_stages(ws: Path) -> dict:
    """Preparer.prepare's loop with a clock around each stage (keep in step with hub/prepare.py)."""
    import deid.actions
    from deid.engine import UnknownModifierExtension, patient_pseudonym
    from hub.fhir.ids import source_key_hash
    from hub.fhir.jsonio import content_hash, dumps
    try:  # the JSON in UTF-8, as prepare makes it since 2026-12-02 (third); a tree from before makes text
        from hub.fhir.jsonio import dump_bytes as serialise
    except ImportError:
        serialise = dumps
    from hub.lakehouse.tables import effective_time, primary_code
    from hub.prepare import TASK_ROWS, _patient_ref, _updated_at

    clock = time.process_time
    spent = dict.fromkeys(STAGES, 0.0)
    redact = deid.actions.redact_identifiers

    def timed_redact(value, known):
        t = clock()
        try:
            return redact(value, known)
        finally:
            spent["scrub"] += clock() - t

    deid.actions.redact_identifiers = timed_redact
    region, keys, insts = load_rows(ws)
    resources = 0
    for inst, blocks in insts:
        prep = _preparer(region, inst, keys)
        for path, index, block_rows in blocks:
            for i in range(0, len(block_rows), TASK_ROWS):
                compiled = prep.compiled(path, index)
                mapping, block = compiled.mapping, compiled.block
                wm = block.watermark
                wm_index = compiled.columns.index(compiled.qualify(wm.column)) if wm is not None and wm.kind == "timestamp" else None
                for row in block_rows[i:i + TASK_ROWS]:
                    t0 = clock()
                    source_key_hash(keys, inst, mapping.system, block.table, compiled.source_key(row))
                    t1 = clock()
                    resource, problems = compiled.map_row(row)
                    t2 = clock()
                    spent["ids"] += t1 - t0
                    spent["map"] += t2 - t1
                    if resource is None:
                        continue
                    invalid = prep.validator.problems(resource)
                    t3 = clock()
                    spent["check"] += t3 - t2
                    if invalid:
                        continue
                    known = prep.scanner.with_canaries(prep.known_values(compiled, resource, row))
                    t4 = clock()
                    spent["known"] += t4 - t3
                    try:
                        clean = prep.deid.apply(resource, known_names=known)
                    except UnknownModifierExtension:
                        continue
                    t5 = clock()
                    spent["deid"] += t5 - t4
                    data = serialise(clean)
                    text = data.decode() if isinstance(data, bytes) else data
                    t6 = clock()
                    spent["json"] += t6 - t5
                    found = prep.scanner.record(text, prep._must_not_appear(compiled, known, row), block.table)
                    t7 = clock()
                    spent["scan"] += t7 - t6
                    if found.hits:
                        continue
                    is_patient = block.resource == "Patient"
                    (clean["id"], content_hash(data), primary_code(clean), effective_time(clean, mapping.timezone),
                     None if is_patient else _patient_ref(clean), patient_pseudonym(clean) if is_patient else None,
                     _updated_at(row[wm_index], mapping) if wm_index is not None else None,
                     compiled.birth_times(clean) if compiled.birth_checked and not is_patient else ())
                    spent["columns"] += clock() - t7
                    resources += 1
    deid.actions.redact_identifiers = redact
    spent["deid"] -= spent["scrub"]  # scrub is timed inside de-identification; shown apart
    return {"resources": resources, **{k: v / resources * 1e6 for k, v in spent.items()}}


def _child(tree: str, ws: Path, mode: str) -> dict:
    tree, pure = (tree[: -len(PURE)], True) if tree.endswith(PURE) else (tree, False)
    env = {**os.environ, "PYTHONPATH": tree} | ({"HUB_PURE_PYTHON": "1"} if pure else {})
    cmd = [sys.executable, str(Path(__file__).resolve()), "--workspace", str(ws), "--one", mode]
    out = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{tree} {mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=600)
    parser.add_argument("--workspace", type=Path, default=None, help="reuse this demo region (generated when missing)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--trees", default=None, help="comma-separated code trees (default: this one); ratios are to the first")
    parser.add_argument("--one", choices=("total", "stages"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        import hub
        from hub import compiled

        result = measure_total(args.workspace) if args.one == "total" else measure_stages(args.workspace)
        states = compiled.status()  # after the run: how the modules were loaded
        print(json.dumps({**result, "hub": str(Path(hub.__file__).parent), "compiled": sum(v == "compiled" for v in states.values())}))
        return
    ws = args.workspace or Path(tempfile.mkdtemp(prefix="hub-hotpath-")) / "ws"
    if not (ws / "region.yaml").exists():
        from hub.demo.generator import generate_region

        counts = generate_region(ws, patients=args.patients)
        print(f"demo region: {args.patients} people, {sum(sum(t.values()) for t in counts.values())} source rows, in {ws}")
    trees = [str(Path(t.removesuffix(PURE)).resolve()) + (PURE if t.endswith(PURE) else "")
             for t in (args.trees.split(",") if args.trees else [str(Path(__file__).resolve().parents[1])])]
    totals: dict[str, list[dict]] = {t: [] for t in trees}
    stages: dict[str, list[dict]] = {t: [] for t in trees}
    for r in range(args.repeat):
        for tree in trees:
            totals[tree].append(_child(tree, ws, "total"))
            stages[tree].append(_child(tree, ws, "stages"))
            t, s = totals[tree][-1], stages[tree][-1]
            assert t["hub"].startswith(tree.removesuffix(PURE)), f"{tree} ran the code of {t['hub']}: set up PYTHONPATH"
            print(f"run {r + 1} {tree}: {t['resources']} resources of {t['rows']} rows, {t['per_cpu_s']:,.0f} per CPU-second, "
                  f"{t['compiled']} compiled modules, "
                  f"digest {t['digest']}; stages µs: " + " ".join(f"{k} {s[k]:.1f}" for k in STAGES), flush=True)
    print(f"\nmedians of {args.repeat} runs (µs per published resource; deid excludes scrub)")
    print(f"{'tree':<28} {'res/CPU-s':>10} {'ratio':>6} " + " ".join(f"{k:>7}" for k in STAGES) + f" {'digest':>17}")
    first = statistics.median(x["per_cpu_s"] for x in totals[trees[0]])
    for tree in trees:
        rate = statistics.median(x["per_cpu_s"] for x in totals[tree])
        digests = {x["digest"] for x in totals[tree]}
        print(f"{tree[-28:]:<28} {rate:>10,.0f} {rate / first:>6.2f} "
              + " ".join(f"{statistics.median(x[k] for x in stages[tree]):>7.1f}" for k in STAGES)
              + f" {'/'.join(sorted(digests)):>17}")
    if len({x["digest"] for tree in trees for x in totals[tree]}) > 1:
        print("OUTPUT DIFFERS between trees (see digests)")
    if args.workspace is None:
        shutil.rmtree(ws.parent)


if __name__ == "__main__":
    main()
