"""End-to-end throughput: hub's pipeline vs a plain copy of the same source rows into Parquet.

Generates a demo region large enough for at least 200,000 lab results (default 8,000
people), then in the same run measures:

  baseline  every source table streamed with SQLAlchemy in the same batch size and written
            to Parquet with pyarrow, no mapping (the I/O floor);
  hub       extract -> map -> validate (fhir.resources) -> de-identify -> publish (Iceberg)
            for every institution, per-row work on one worker process per core.

Prints rows/second for both and their ratio; the machines are noisy, so compare ratios.
Usage: python benchmarks/pipeline.py [--patients 8000] [--workspace /tmp/hub-bench]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from deid.keys import Keyring
from hub.demo.generator import generate_region
from hub.pipeline import run_institution
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=8000)
    parser.add_argument("--workspace", type=Path, default=None)
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: one per core)")
    args = parser.parse_args()
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

    keys = Keyring(bytes(range(32)))  # benchmark-only key
    t = time.perf_counter()
    read = published = quarantined = 0
    for inst in region.institutions:
        report = run_institution(region, inst.id, keys, workers=args.workers or default_workers())
        for c in report.by_resource().values():
            read += c["read"]
            published += c["published"]
            quarantined += c["quarantined"]
    hub_s = time.perf_counter() - t
    print(f"hub       end to end, {args.workers or default_workers()} worker(s): {read} source rows -> {published} resources published, "
          f"{quarantined} quarantined, in {hub_s:.1f}s = {published / hub_s:,.0f} resources/s ({read / hub_s:,.0f} rows/s)")
    print(f"ratio     hub / plain copy (rows/s): {(read / hub_s) / (copied / base_s):.3f}  "
          f"(hub reads some tables once per resource type: {read} block rows vs {copied} table rows)")
    t = time.perf_counter()
    again = 0
    for inst in region.institutions:
        report = run_institution(region, inst.id, keys, workers=args.workers or default_workers())
        again += sum(c["read"] for c in report.by_resource().values())
    print(f"hub       incremental re-run, sources unchanged: {again} rows read (watermarks), {time.perf_counter() - t:.1f}s")
    if args.workspace is None:
        shutil.rmtree(ws)


if __name__ == "__main__":
    main()
