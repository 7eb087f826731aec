"""NDJSON throughput: hub's NDJSON feed vs reading the same bytes plainly (json.loads per line).

Writes a synthetic bulk export (Patient plain, Encounter and Observation gzip), then in the
same run measures:

  baseline  every file read line by line (gzip where it is) and each line json.loads'ed;
  hub       the feed published by run_institution: parse, validate (fhir.resources), key ids
            and references, de-identify, leak-scan, write Iceberg, record positions.

Prints resources/second for both and their ratio; the machines are noisy, so compare ratios.
Usage: python benchmarks/ndjson.py [--patients 1000] [--observations 20] [--workspace /tmp/hub-ndjson-bench]
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from deid.keys import Keyring
from hub.demo.generator import generate_region
from hub.pipeline import run_institution
from hub.region import load_region
from hub.sources.ndjson import _open, discover

LOINC = [("2345-7", "Glucose", "mmol/L"), ("2823-3", "Potassium", "mmol/L"), ("4548-4", "HbA1c", "%"), ("718-7", "Hemoglobin", "g/L")]


def _resident_id(rng: random.Random) -> str:
    first = f"330106{rng.randint(1950, 2005)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}{rng.randint(0, 999):03d}"
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    return first + "10X98765432"[sum(int(d) * w for d, w in zip(first, weights, strict=True)) % 11]


def write_export(folder: Path, patients: int, per_patient: int, seed: int = 7) -> int:
    """A bulk export of patients, one encounter each and per_patient observations each; returns resources written."""
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    n = 0
    with (folder / "Patient.ndjson").open("w", encoding="utf-8") as pf, \
            gzip.open(folder / "Encounter.ndjson.gz", "wt", encoding="utf-8", compresslevel=1) as ef, \
            gzip.open(folder / "Observation.ndjson.gz", "wt", encoding="utf-8", compresslevel=1) as of:
        for p in range(patients):
            pf.write(json.dumps({"resourceType": "Patient", "id": f"p{p}", "gender": rng.choice(["male", "female"]),
                                 "birthDate": f"{rng.randint(1940, 2010)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}",
                                 "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": _resident_id(rng)}],
                                 "name": [{"text": f"患者{p}"}]}, ensure_ascii=False) + "\n")
            ef.write(json.dumps({"resourceType": "Encounter", "id": f"e{p}", "status": "finished",
                                 "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                                 "subject": {"reference": f"Patient/p{p}"}, "period": {"start": "2026-03-01T08:00:00+08:00"}}) + "\n")
            n += 2
            for o in range(per_patient):
                code, name, unit = rng.choice(LOINC)
                of.write(json.dumps({"resourceType": "Observation", "id": f"o{p}-{o}", "status": "final",
                                     "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": name}]},
                                     "subject": {"reference": f"Patient/p{p}"}, "encounter": {"reference": f"Encounter/e{p}"},
                                     "effectiveDateTime": f"2026-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}T08:30:00+08:00",
                                     "valueQuantity": {"value": round(rng.uniform(1, 20), 2), "unit": unit,
                                                       "system": "http://unitsofmeasure.org", "code": unit}}) + "\n")
                n += 1
    return n


def plain_read(folder: Path) -> int:
    n = 0
    for f in discover(folder):
        with _open(f.path) as fh:
            for line in fh:
                json.loads(line)
                n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--observations", type=int, default=20, help="observations per patient")
    parser.add_argument("--workspace", type=Path, default=None)
    args = parser.parse_args()
    ws = args.workspace or Path(tempfile.mkdtemp(prefix="hub-ndjson-bench-"))
    if ws.exists():
        shutil.rmtree(ws)
    generate_region(ws, patients=2)  # region.yaml, keys and signing keys; its SQL institutions are dropped
    doc = yaml.safe_load((ws / "region.yaml").read_text(encoding="utf-8"))
    doc["institutions"] = [{"id": "bulk-clinic", "name": "bulk", "level": "community",
                            "feeds": [{"name": "export", "kind": "ndjson", "path": "{workspace}/export"}]}]
    (ws / "region.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    total = write_export(ws / "export", args.patients, args.observations)
    size = sum(p.stat().st_size for p in (ws / "export").iterdir())
    print(f"export: {total:,} resources, {size / 1e6:.1f} MB on disk")

    t = time.perf_counter()
    assert plain_read(ws / "export") == total
    base = time.perf_counter() - t
    keys = Keyring(bytes(range(32)))
    t = time.perf_counter()
    report = run_institution(load_region(ws), "bulk-clinic", keys)
    hub_s = time.perf_counter() - t
    published = sum(c.published for c in report.counts)
    assert published == total, (published, total, dict(report.causes))
    print(f"baseline (json.loads per line): {total / base:>10,.0f} resources/s  ({base:.2f}s)")
    print(f"hub NDJSON feed (one process):  {total / hub_s:>10,.0f} resources/s  ({hub_s:.2f}s)")
    print(f"ratio baseline/hub: {hub_s / base:.1f}x")


if __name__ == "__main__":
    main()
