"""End-to-end throughput: hub's pipeline vs a plain copy of the same source rows into Parquet.

Generates a demo region large enough for at least 200,000 lab results (default 8,000
people), then in the same run measures:

  baseline  every source table streamed with SQLAlchemy in the same batch size and written
            to Parquet with pyarrow, no mapping (the I/O floor);
  hub       extract -> map -> validate (fhir.resources) -> de-identify -> publish (Iceberg)
            for every institution, per-row work on one worker process per core.

Prints rows/second for both and their ratio (the machines are noisy, so compare ratios),
hub's rate per CPU-second (the per-core rate: parent and worker processes together) and the
peak resident memory of the parent and of the largest worker. hub runs in a process of its
own, so its peak memory is the pipeline's alone (not the generator's, which holds the whole
region). It also says how many of the per-row modules ran compiled (hub/compiled.py: `hub
compiled build`; HUB_PURE_PYTHON=1 runs the Python sources).

  --sizes 500,2000,8000   runs each size in a fresh process and prints the memory curve
                          (peak RSS against source rows) and the per-core rate of each.

Usage: python benchmarks/pipeline.py [--patients 8000] [--workers N] [--workspace /tmp/hub-bench] [--flush-rows N (default: hub.pipeline.FLUSH_ROWS)]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from deid.keys import Keyring
from hub.demo.generator import generate_region
from hub.memory import with_system_arrow_pool
from hub.pipeline import FLUSH_ROWS, run_institution
from hub.prepare import default_workers
from hub.region import load_region

BATCH = 5000


def plain_copy(region, out: Path) -> int:
    """Stream every source table in batches and write it to Parquet unchanged; return rows copied."""
    rows = 0
    for inst in region.institutions:
        for feed in inst.feeds:
            engine = sa.create_engine(feed.url)
            md = sa.MetaData()
            md.reflect(engine)
            for table in md.sorted_tables:
                writer = None
                with engine.connect() as conn:
                    result = conn.execution_options(stream_results=True, yield_per=BATCH).execute(sa.select(table))
                    for part in result.partitions(BATCH):
                        cols = list(zip(*part, strict=True))
                        batch = pa.table({c.name: pa.array([None if v is None else str(v) for v in col], pa.string()) for c, col in zip(table.columns, cols, strict=True)})
                        if writer is None:
                            writer = pq.ParquetWriter(out / f"{inst.id}-{feed.name}-{table.name}.parquet", batch.schema, compression="zstd")
                        writer.write_table(batch)
                        rows += batch.num_rows
                if writer is not None:
                    writer.close()
            engine.dispose()
    return rows


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (the worker processes)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def peak_rss_mib() -> tuple[float, float]:
    """Peak resident memory of this process and of its largest finished child, in MiB.

    This process's own peak is VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across
    exec, so a process started by a big one (the generator holding the whole region) would report
    its starter's memory as its own."""
    with open("/proc/self/status") as f:
        hwm = next((int(line.split()[1]) for line in f if line.startswith("VmHWM:")), None)
    own = hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (own / 1024, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)


def sizes(spec: str, workers: int | None, flush_rows: int) -> None:
    """Each size in a fresh process (peak RSS is per process): the memory curve."""
    print(f"{'people':>8} {'source rows':>12} {'published':>10} {'res/s':>8} {'res/CPU-s':>10} {'ratio':>6} {'peak RSS MiB (parent/worker)':>30}")
    for n in (int(x) for x in spec.split(",")):
        cmd = [sys.executable, __file__, "--patients", str(n), "--json", "--flush-rows", str(flush_rows)] + (["--workers", str(workers)] if workers else [])
        out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
        print(f"{n:>8} {out['source_rows']:>12,} {out['published']:>10,} {out['rate']:>8,.0f} {out['per_cpu_s']:>10,.0f} "
              f"{out['ratio']:>6.3f} {out['peak_rss_mib']:>20.0f} / {out['peak_worker_rss_mib']:.0f}")


def hub_only(ws: Path, workers: int, flush_rows: int) -> None:
    """hub's full run then an incremental re-run of the region in ws, in this (fresh) process; one JSON line of numbers."""
    region = load_region(ws)
    keys = Keyring(bytes(range(32)))  # benchmark-only key
    t = time.perf_counter()
    cpu = cpu_seconds()
    read = published = quarantined = 0
    for inst in region.institutions:
        report = run_institution(region, inst.id, keys, workers=workers, flush_rows=flush_rows)
        for c in report.by_resource().values():
            read += c["read"]
            published += c["published"]
            quarantined += c["quarantined"]
    hub_s, hub_cpu = time.perf_counter() - t, cpu_seconds() - cpu
    parent_rss, worker_rss = peak_rss_mib()
    t = time.perf_counter()
    again = 0
    for inst in region.institutions:
        report = run_institution(region, inst.id, keys, workers=workers, flush_rows=flush_rows)
        again += sum(c["read"] for c in report.by_resource().values())
    from hub import compiled

    print(json.dumps({"read": read, "published": published, "quarantined": quarantined, "wall_s": hub_s, "cpu_s": hub_cpu,
                      "compiled": compiled.summary(),
                      "workers": workers, "peak_rss_mib": parent_rss, "peak_worker_rss_mib": worker_rss,
                      "again_read": again, "again_s": time.perf_counter() - t}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=8000)
    parser.add_argument("--workspace", type=Path, default=None)
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: one per core)")
    parser.add_argument("--sizes", default=None, help="comma-separated people counts: the memory curve, one process each")
    parser.add_argument("--json", action="store_true", help="also print one JSON line of the numbers (used by --sizes)")
    parser.add_argument("--flush-rows", type=int, default=FLUSH_ROWS, help="rows buffered per table before they are staged (run_institution's flush_rows)")
    parser.add_argument("--hub-only", action="store_true", help=argparse.SUPPRESS)  # internal: the hub part, in a fresh process
    args = parser.parse_args()
    if args.hub_only:
        hub_only(args.workspace, args.workers or default_workers(), args.flush_rows)
        return
    if args.sizes:
        sizes(args.sizes, args.workers, args.flush_rows)
        return
    ws = args.workspace or Path(tempfile.mkdtemp(prefix="hub-bench-"))
    if ws.exists():
        shutil.rmtree(ws)

    t = time.perf_counter()
    counts = generate_region(ws, patients=args.patients)
    lab_results = sum(n for feed, tables in counts.items() for table, n in tables.items() if table in ("lab_result", "LIS_JG"))
    source_rows = sum(sum(t.values()) for t in counts.values())
    print(f"demo region: {args.patients} people, {source_rows} source rows, {lab_results} lab results "
          f"(generated in {time.perf_counter() - t:.1f}s)")
    if lab_results < 200_000:
        print("note: fewer than 200,000 lab results; raise --patients for the reference measurement")

    region = load_region(ws)
    copy_dir = ws / "plain-copy"
    copy_dir.mkdir()
    t = time.perf_counter()
    copied = plain_copy(region, copy_dir)
    base_s = time.perf_counter() - t
    print(f"baseline  plain copy to Parquet: {copied} rows in {base_s:.1f}s = {copied / base_s:,.0f} rows/s")

    cmd = [sys.executable, __file__, "--hub-only", "--workspace", str(ws), "--workers", str(args.workers or default_workers()),
           "--flush-rows", str(args.flush_rows)]
    hub = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True,
                                    env=with_system_arrow_pool()).stdout.splitlines()[-1])  # as the hub command runs
    read, published, quarantined, hub_s, hub_cpu = hub["read"], hub["published"], hub["quarantined"], hub["wall_s"], hub["cpu_s"]
    ratio = (read / hub_s) / (copied / base_s)
    print(f"hub       end to end, {hub['workers']} worker(s): {read} source rows -> {published} resources published, "
          f"{quarantined} quarantined, in {hub_s:.1f}s = {published / hub_s:,.0f} resources/s ({read / hub_s:,.0f} rows/s)")
    print(f"per core  {published / hub_cpu:,.0f} resources per CPU-second ({hub_cpu:.1f} CPU-s, parent and workers; {hub['compiled']})")
    print(f"ratio     hub / plain copy (rows/s): {ratio:.3f}  "
          f"(hub reads some tables once per resource type: {read} block rows vs {copied} table rows)")
    parent_rss, worker_rss = hub["peak_rss_mib"], hub["peak_worker_rss_mib"]
    print(f"memory    peak RSS {parent_rss:,.0f} MiB (parent), {worker_rss:,.0f} MiB (largest worker); "
          f"flush every {args.flush_rows:,} rows per table")
    print(f"hub       incremental re-run, sources unchanged: {hub['again_read']} rows read (watermarks), {hub['again_s']:.1f}s")
    if args.workspace is None:
        shutil.rmtree(ws)
    if args.json:
        print(json.dumps({"source_rows": source_rows, "published": published, "rate": published / hub_s,
                          "per_cpu_s": published / hub_cpu, "ratio": ratio, "peak_rss_mib": parent_rss, "peak_worker_rss_mib": worker_rss}))


if __name__ == "__main__":
    main()
