"""De-identification throughput on demo data, and its ratio to the mapping stage alone, in one run.

Maps every row of every demo feed once (timed: the mapping stage, map_row only), then
de-identifies the mapped resources for the recognition zone (timed), then the recognition
output for the research zone (timed: re-keying, date shift, generalization). One process.
Usage: python benchmarks/deidentify.py [--patients 3000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

from deid.engine import Deidentifier, patient_pseudonym
from deid.keys import Keyring
from deid.ruleset import default_ruleset_path, load_ruleset
from hub.demo.generator import generate_region
from hub.mapping.compile import CompiledBlock
from hub.mapping.run import block_select
from hub.mapping.spec import load_mapping
from hub.region import load_region
from hub.sources.sql import SourceSchema, iter_batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=3000)
    args = parser.parse_args()
    keys = Keyring(bytes(range(32)))  # benchmark-only key
    with tempfile.TemporaryDirectory() as tmp:
        generate_region(Path(tmp), patients=args.patients)
        region = load_region(Path(tmp))
        rows = []
        for inst in region.institutions:
            for feed in inst.feeds:
                mapping = load_mapping(feed.mapping)
                engine = sa.create_engine(feed.url)
                schema = SourceSchema(engine)
                for block in mapping.blocks:
                    compiled = CompiledBlock(mapping, block, inst.id, keys)
                    for batch in iter_batches(engine, block_select(compiled, schema)):
                        rows.extend((compiled, r) for r in batch)

        t = time.perf_counter()
        mapped = [compiled.map_row(r)[0] for compiled, r in rows]
        map_s = time.perf_counter() - t
        mapped = [m for m in mapped if m is not None]

        recognition = Deidentifier(load_ruleset(default_ruleset_path(), "recognition"), keys)
        t = time.perf_counter()
        rec = [recognition.apply(m) for m in mapped]
        rec_s = time.perf_counter() - t

        patient_of = {p["id"]: patient_pseudonym(p) for p in rec if p["resourceType"] == "Patient"}
        context = [patient_of.get(r.get("subject", {}).get("reference", "/").split("/")[1]) if r["resourceType"] != "Patient" else patient_pseudonym(r) for r in rec]
        research = Deidentifier(load_ruleset(default_ruleset_path(), "research"), keys)
        t = time.perf_counter()
        for r, p in zip(rec, context, strict=True):
            if p is not None or r["resourceType"] == "Organization":
                research.apply(r, patient=p)
        res_s = time.perf_counter() - t

    n = len(mapped)
    print(f"{args.patients} people, {len(rows)} source rows, {n} resources")
    print(f"mapping stage (map_row)      {n / map_s:>10,.0f} resources/s")
    print(f"de-identify, recognition     {n / rec_s:>10,.0f} resources/s   ratio to mapping {map_s / rec_s:.2f}")
    print(f"de-identify, research        {n / res_s:>10,.0f} resources/s   ratio to mapping {map_s / res_s:.2f}")


if __name__ == "__main__":
    main()
