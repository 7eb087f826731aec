"""ViewDefinition throughput on a lakehouse table of at least 1,000,000 Observations, vs a plain pyarrow scan.

Publishes a demo region large enough for the requested number of Observations (default
1,000,000, about 38,000 people), then in the same run times:

  baseline  a plain pyarrow scan of the Observation table (the `resource` column), to Arrow
  view      the labs ViewDefinition (trainsets/views/labs.json) over the same table

Usage: python benchmarks/views.py [--observations 1000000] [--workspace DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from deid.keys import Keyring
from hub.demo.generator import generate_region
from hub.lakehouse.tables import open_catalog
from hub.pipeline import run_institution
from hub.prepare import default_workers
from hub.region import REPO_ROOT, load_region
from hub.views.runner import run_over_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--observations", type=int, default=1_000_000)
    parser.add_argument("--workspace", type=Path, default=None)
    args = parser.parse_args()
    ws = args.workspace or Path(tempfile.mkdtemp(prefix="hub-views-"))
    region_file = ws / "region.yaml"
    if not region_file.exists():
        patients = max(50, args.observations // 26)  # the demo makes about 26 results per person
        t = time.perf_counter()
        generate_region(ws, patients=patients)
        region = load_region(ws)
        keys = Keyring(bytes(range(32)))
        for inst in region.institutions:
            run_institution(region, inst.id, keys, workers=default_workers())
        print(f"published a demo region of {patients} people in {time.perf_counter() - t:.0f}s")
    region = load_region(ws)
    table = open_catalog(region.catalog_url, region.warehouse).load_table("recognition.observation")

    t = time.perf_counter()
    scanned = table.scan(selected_fields=("resource",)).to_arrow()
    base_s = time.perf_counter() - t
    n = scanned.num_rows
    del scanned
    print(f"baseline  plain pyarrow scan: {n:,} Observations in {base_s:.1f}s = {n / base_s:,.0f} resources/s")

    view = json.loads((REPO_ROOT / "trainsets" / "views" / "labs.json").read_text(encoding="utf-8"))
    t = time.perf_counter()
    rows = run_over_table(table, view)
    view_s = time.perf_counter() - t
    print(f"view      labs ViewDefinition: {n:,} Observations -> {rows.num_rows:,} rows in {view_s:.1f}s = {n / view_s:,.0f} resources/s")
    print(f"ratio     view / plain scan (resources/s): {base_s / view_s:.3f}")
    if args.workspace is None:
        shutil.rmtree(ws)


if __name__ == "__main__":
    main()
