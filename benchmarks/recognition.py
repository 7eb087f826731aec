"""Recognition API latency over HTTP with at least 1,000,000 indexed results, on one server process.

Builds a workspace whose recognition index holds N results (default 1,000,000: 100,000
people x 10 items), starts `hub serve` as its own process on a local port, and queries it
by resident ID number: sequentially (p50, p99 latency) and with 8 concurrent clients
(requests per second), with the server process's CPU time per request in each phase (Linux).
Each query also writes its access-log entry, as in production; at the end the log must hold
one entry per query answered.
Usage: python benchmarks/recognition.py [--results 1000000] [--requests 2000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import yaml

from deid.actions import pseudonym
from deid.keys import Keyring, create_key_file
from hub.identifiers import resident_id_check_char
from hub.lineage import access, runrecord
from hub.recognition.api import issue_token
from hub.recognition.index import connect, index_url, results
from hub.recognition.rules import load_rules
from hub.region import load_region

INSTITUTIONS = ["city-first", "xihu-second", "beishan-chc"]


def id_number(i: int) -> str:
    """A distinct, valid resident ID number per i (up to 21.9 million people)."""
    born = dt.date(1940, 1, 1) + dt.timedelta(days=i % 21_900)
    first17 = f"330106{born:%Y%m%d}{i // 21_900 % 1000:03d}"
    return first17 + resident_id_check_char(first17)


def build_workspace(ws: Path, n_results: int) -> tuple[list[str], str]:
    (ws / "region.yaml").write_text(yaml.safe_dump({"region": "bench", "institutions": [{"id": i, "feeds": []} for i in INSTITUTIONS],
        # a load test, not a client: the per-token limits would throttle it after a burst
        "recognition_limits": {"lookups_per_minute": 1_000_000, "burst": 100_000, "misses_per_hour": 1_000_000}}))
    region = load_region(ws)
    create_key_file(region.key_file)
    keys = Keyring.load(region.key_file)
    engine = connect(index_url(region))
    loincs = list(load_rules().items)[:10]
    people = n_results // len(loincs)
    now = dt.datetime.now(dt.UTC)
    rng = random.Random(1)
    ids = []
    chunk = []
    with engine.begin() as conn:
        for p in range(people):
            number = id_number(p)
            ids.append(number)
            patient = pseudonym(keys, "patient-linkage", number)
            for loinc in loincs:
                rid = f"{p:08d}{loinc.replace('-', '')}"
                chunk.append({"patient": patient, "resource_type": "Observation", "loinc": loinc, "institution": INSTITUTIONS[p % 3],
                              "observation_id": rid, "effective_time": now - dt.timedelta(days=rng.randint(0, 90)), "status": "final",
                              "resource": json.dumps({"resourceType": "Observation", "id": rid, "status": "final",
                                                      "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
                                                      "valueQuantity": {"value": round(rng.uniform(1, 10), 2), "unit": "mmol/L"}})})
            if len(chunk) >= 50_000:
                conn.execute(results.insert(), chunk)
                chunk = []
        if chunk:
            conn.execute(results.insert(), chunk)
    return ids, issue_token(region, "beishan-chc")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        t = time.perf_counter()
        ids, token = build_workspace(ws, args.results)
        print(f"index: {len(ids) * 10:,} results for {len(ids):,} people, built in {time.perf_counter() - t:.1f}s")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k not in ("HUB_MASTER_KEY", "HUB_KEY_FILE")}
        server = subprocess.Popen([sys.executable, "-m", "hub.cli", "serve", "--workspace", str(ws), "--port", str(port)],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(200):
                try:
                    httpx.get(f"{base}/fhir/metadata", timeout=0.5)
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            headers = {"Authorization": f"Bearer {token}"}
            rng = random.Random(2)

            def ask(client: httpx.Client) -> float:
                number = ids[rng.randrange(len(ids))]
                t0 = time.perf_counter()
                r = client.get(f"{base}/fhir/Observation", params={"patient.identifier": f"urn:oid:2.16.156.10011.1.3|{number}"}, headers=headers)
                assert r.status_code == 200 and r.json()["total"] == 10, r.text[:200]
                return time.perf_counter() - t0

            with httpx.Client() as client:
                for _ in range(50):
                    ask(client)  # warm-up
                cpu = cpu_seconds(server.pid)
                lat = [ask(client) for _ in range(args.requests)]
                cpu = cpu_seconds(server.pid) - cpu
            q = statistics.quantiles(lat, n=100)
            print(f"sequential: {args.requests} queries, p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms, "
                  f"{args.requests / sum(lat):.0f} requests/s, server CPU {cpu / args.requests * 1000:.2f} ms/request")

            def worker(n: int) -> int:
                with httpx.Client() as c:
                    for _ in range(n):
                        ask(c)
                return n

            t, cpu = time.perf_counter(), cpu_seconds(server.pid)
            with ThreadPoolExecutor(8) as pool:
                done = sum(pool.map(worker, [args.requests // 8] * 8))
            took, cpu = time.perf_counter() - t, cpu_seconds(server.pid) - cpu
            print(f"8 concurrent clients: {done} queries in {took:.1f}s = {done / took:.0f} requests/s (one server process), "
                  f"server CPU {cpu / done * 1000:.2f} ms/request")
        finally:
            server.terminate()
            server.wait(timeout=10)
        logged = len(access.entries(runrecord.connect(load_region(ws).catalog_url), action="recognition-query"))
        asked = 50 + args.requests + done
        print(f"access log: {logged} recognition-query entries for {asked} queries answered")
        assert logged == asked, "the access log lost or duplicated entries"


if __name__ == "__main__":
    main()
