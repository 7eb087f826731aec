"""Incremental cost: a run after a small fraction of lab results changed, against a full run.

Issue 11's goal: "a run after 1 % of rows changed costs <= 5 % of a full run, at any table
size (upserts must not rewrite or re-read whole tables)". In one process, on one worker:

  full       generate the demo region (--patients people) and run every institution once;
  unchanged  run every institution again, nothing changed at the source;
  change     change --fraction of the lab-result rows of every institution's LIS, spread at
             random over the table (seeded), the way a LIS corrects a result: a new value in
             the result column AND the row's update time (the block's timestamp watermark) set
             to now, written in the mapping's first datetime format and timezone; then run
             every institution again.

The columns come from the mappings (the Observation block with a ``lab_value`` element: its
key, its value column, its ``watermark`` column); the changes are SQLAlchemy UPDATEs on the
SQLite sources. A numeric value moves by one unit of its last decimal; a qualitative one to
the next grade.

Prints CPU seconds (this process and its finished children; parent-only with one worker) and
wall time of each run, the change run's ratio to the full run, what that run committed to
Iceberg (summed over every snapshot of every table carrying its run id: added and deleted
records, data files and bytes, rows masked by position deletes) and so how many rows it rewrote
per row changed (hub masks a replaced row by its position, so this should be 0; with pyiceberg's
own copy-on-write deletes a replaced row rewrote the whole data file that held it), and the
resources it published and wrote.

  --sizes 500,2000    runs each size in a fresh process and prints one line each, so the
                      trend of the ratio with table size shows.
  --profile OUT       py-spy (raw format) of the change run only, attached to this process.

Usage: python benchmarks/incremental.py [--patients 2000] [--fraction 0.01] [--workspace /tmp/hub-incr]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from decimal import Decimal, InvalidOperation
from pathlib import Path

import sqlalchemy as sa

from deid.keys import Keyring
from hub.demo.generator import generate_region
from hub.lakehouse.tables import open_catalog
from hub.mapping.spec import load_mapping
from hub.pipeline import run_institution
from hub.region import Region, load_region

#: qualitative results (the demo's urine protein and CRP below the limit): the next grade
QUALITATIVE = {"阴性": "±", "±": "1+", "1+": "2+", "2+": "1+", "<0.5": "0.6"}
SUMMARY = ("added-records", "deleted-records", "added-data-files", "deleted-data-files", "added-files-size", "removed-files-size",
           "added-position-deletes", "added-delete-files")


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run_all(region: Region, keys: Keyring) -> dict:
    """Run every institution once (one worker); CPU-s, wall, run ids and resource counts."""
    t, cpu = time.perf_counter(), cpu_seconds()
    run_ids, read, published, written, unchanged = [], 0, 0, 0, 0
    for inst in region.institutions:
        report = run_institution(region, inst.id, keys, workers=1)
        run_ids.append(report.run_id)
        for c in report.by_resource().values():
            read += c["read"]
            published += c["published"]
            written += c["written"]
            unchanged += c["unchanged"]
    return {"cpu_s": cpu_seconds() - cpu, "wall_s": time.perf_counter() - t, "run_ids": run_ids,
            "read": read, "published": published, "written": written, "unchanged": unchanged}


def new_value(value: str | None) -> str | None:
    """A corrected result: one unit of the last decimal more, or the next qualitative grade (None: leave it)."""
    if value is None:
        return None
    if value in QUALITATIVE:
        return QUALITATIVE[value]
    try:
        d = Decimal(value)
    except InvalidOperation:
        return None
    return str(d + Decimal(1).scaleb(d.as_tuple().exponent))


def lab_blocks(region: Region) -> list[tuple[str, str, str, str, str, str, str, dt.tzinfo]]:
    """Per institution's lab-result block: (institution, url, table, key, value column, watermark column, format, tz)."""
    out = []
    for inst in region.institutions:
        for feed in inst.feeds:
            if feed.kind != "sql":
                continue
            mapping = load_mapping(feed.mapping)
            for block in mapping.blocks:
                values = [e.source for e in block.elements if e.kind == "lab_value"]
                if block.resource != "Observation" or not values:
                    continue
                if block.watermark is None or block.watermark.kind != "timestamp" or len(block.key) != 1:
                    raise SystemExit(f"{feed.mapping}: {block.table} has no timestamp watermark or no single key")
                fmt = mapping.datetime_formats[0]
                out.append((inst.id, feed.url, block.table, block.key[0], values[0], block.watermark.column,
                            fmt if isinstance(fmt, str) else fmt.format, mapping.timezone))
    return out


def change_lab_results(region: Region, fraction: float, seed: int) -> tuple[int, int]:
    """Change fraction of every lab-result table's rows (value and update time); return (rows changed, table rows)."""
    changed = total = 0
    for n, (_inst, url, table_name, key, value_col, wm_col, fmt, tz) in enumerate(lab_blocks(region)):
        engine = sa.create_engine(url)
        table = sa.Table(table_name, sa.MetaData(), autoload_with=engine)
        now = dt.datetime.now(tz).replace(tzinfo=None).strftime(fmt)
        with engine.begin() as conn:
            rows = conn.execute(sa.select(table.c[key], table.c[value_col]).order_by(table.c[key])).all()
            k = max(1, round(fraction * len(rows)))
            picked = random.Random(f"{seed}:{n}").sample(rows, k)
            updates = [{"k": r[0], "v": v, "t": now} for r in picked if (v := new_value(r[1])) is not None]
            conn.execute(table.update().where(table.c[key] == sa.bindparam("k")).values({value_col: sa.bindparam("v"), wm_col: sa.bindparam("t")}),
                         updates)
        engine.dispose()
        changed += len(updates)
        total += len(rows)
    return changed, total


def committed(region: Region, run_ids: list[str]) -> dict[str, int]:
    """Summed snapshot summaries of every snapshot of every table of the zone that one of run_ids committed."""
    catalog = open_catalog(region.catalog_url, region.warehouse)
    wanted, sums = set(run_ids), dict.fromkeys(SUMMARY, 0)
    sums["snapshots"] = sums["table-records"] = 0  # table-records: live rows (records less those masked by position deletes)
    for ident in catalog.list_tables(region.zone):
        table = catalog.load_table(ident)
        for snap in table.metadata.snapshots:
            props = snap.summary.additional_properties if snap.summary else {}
            if props.get("hub.run-id") in wanted:
                sums["snapshots"] += 1
                for f in SUMMARY:
                    sums[f] += int(props.get(f, 0))
        current = table.current_snapshot()
        if current is not None and current.summary is not None:
            props = current.summary.additional_properties
            sums["table-records"] += int(props.get("total-records", 0)) - int(props.get("total-position-deletes", 0))
    return sums


def profiler(out: Path | None) -> subprocess.Popen | None:
    if out is None:
        return None
    proc = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-r", "200", "-f", "raw", "-o", str(out),
                             "--pid", str(os.getpid())], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached before the run starts
    return proc


def stop(proc: subprocess.Popen | None) -> None:
    if proc is not None:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)


HEADER = (f"{'people':>7} {'lab rows':>9} {'changed':>8} {'full CPU-s':>10} {'nochg CPU-s':>11} {'chg CPU-s':>9} {'chg wall':>8} "
          f"{'CPU ratio':>9} {'wall ratio':>10} {'res written':>11} {'rows added':>10} {'rows deleted':>12} "
          f"{'rewritten/chg':>13} {'files +/-':>10} {'MB written':>10}")


def line(n: int, r: dict) -> str:
    s = r["committed"]
    return (f"{n:>7} {r['lab_rows']:>9,} {r['changed']:>8,} {r['full']['cpu_s']:>10.1f} {r['unchanged']['cpu_s']:>11.1f} "
            f"{r['change']['cpu_s']:>9.1f} {r['change']['wall_s']:>8.1f} {r['cpu_ratio']:>9.3f} {r['wall_ratio']:>10.3f} "
            f"{r['change']['written']:>11,} {s['added-records']:>10,} {s['deleted-records']:>12,} {r['rewritten_per_change']:>13.1f} "
            f"{s['added-data-files']:>4}/{s['deleted-data-files']:<5} {s['added-files-size'] / 1e6:>10.1f}")


def sizes(spec: str, fraction: float) -> None:
    """Each size in a fresh process: the trend of the ratio with table size."""
    print(HEADER)
    for n in (int(x) for x in spec.split(",")):
        cmd = [sys.executable, __file__, "--patients", str(n), "--fraction", str(fraction), "--json"]
        out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
        print(line(n, out), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=2000)
    parser.add_argument("--fraction", type=float, default=0.01, help="share of lab-result rows changed (default 0.01)")
    parser.add_argument("--seed", type=int, default=11, help="which rows change")
    parser.add_argument("--workspace", type=Path, default=None)
    parser.add_argument("--sizes", default=None, help="comma-separated people counts, one process each")
    parser.add_argument("--profile", type=Path, default=None, help="py-spy raw profile of the change run to this file")
    parser.add_argument("--json", action="store_true", help="also print one JSON line of the numbers (used by --sizes)")
    args = parser.parse_args()
    if args.sizes:
        sizes(args.sizes, args.fraction)
        return
    ws = args.workspace or Path(tempfile.mkdtemp(prefix="hub-incr-"))
    if ws.exists():
        shutil.rmtree(ws)
    t = time.perf_counter()
    counts = generate_region(ws, patients=args.patients)
    source_rows = sum(sum(c.values()) for c in counts.values())
    print(f"demo region: {args.patients} people, {source_rows:,} source rows (generated in {time.perf_counter() - t:.1f}s)", flush=True)
    region = load_region(ws)
    keys = Keyring(bytes(range(32)))  # benchmark-only key

    full = run_all(region, keys)
    print(f"full       {full['cpu_s']:.1f} CPU-s, {full['wall_s']:.1f}s wall: {full['published']:,} resources published", flush=True)
    same = run_all(region, keys)
    print(f"unchanged  {same['cpu_s']:.1f} CPU-s, {same['wall_s']:.1f}s wall: {same['read']:,} rows read, {same['written']:,} written", flush=True)
    changed, lab_rows = change_lab_results(region, args.fraction, args.seed)
    print(f"changed    {changed:,} of {lab_rows:,} lab-result rows ({changed / lab_rows:.2%}): value and update time", flush=True)
    spy = profiler(args.profile)
    try:
        change = run_all(region, keys)
    finally:
        stop(spy)
    sums = committed(region, change["run_ids"])
    rewritten = sums["added-records"] - change["written"]  # rows copied into new files beside the new versions
    result = {"source_rows": source_rows, "lab_rows": lab_rows, "changed": changed, "full": full, "unchanged": same, "change": change,
              "committed": sums, "cpu_ratio": change["cpu_s"] / full["cpu_s"], "wall_ratio": change["wall_s"] / full["wall_s"],
              "rewritten_per_change": rewritten / max(1, changed)}
    print(f"change     {change['cpu_s']:.1f} CPU-s, {change['wall_s']:.1f}s wall = {result['cpu_ratio']:.3f} of the full run's CPU "
          f"({result['wall_ratio']:.3f} of its wall); {change['read']:,} rows read, {change['published']:,} published, "
          f"{change['written']:,} resources written, {change['unchanged']:,} unchanged")
    print(f"committed  {sums['snapshots']} snapshot(s): {sums['added-records']:,} records added, {sums['deleted-records']:,} deleted "
          f"(tables now hold {sums['table-records']:,}); data files +{sums['added-data-files']} -{sums['deleted-data-files']}, "
          f"{sums['added-files-size'] / 1e6:.1f} MB written, {sums['removed-files-size'] / 1e6:.1f} MB removed; "
          f"{sums['added-position-deletes']:,} rows masked by position in {sums['added-delete-files']} delete file(s)")
    print(f"rewritten  {rewritten:,} unchanged rows copied into new files = {result['rewritten_per_change']:.1f} per row changed")
    print(HEADER)
    print(line(args.patients, result))
    if args.workspace is None:
        shutil.rmtree(ws)
    if args.json:
        for r in (full, same, change):
            r.pop("run_ids")
        print(json.dumps(result))


if __name__ == "__main__":
    main()
