"""Scale-out: a backfill of every institution partition on the Celery executor with 1, 2, 4 workers.

Generates the demo region once (``--patients`` people; prints the source row count), then
for each configuration, each from a clean lakehouse (a copy of the generated sources, a new
PostgreSQL database for the Iceberg and lineage catalog, a new one for Dagster, a RabbitMQ
vhost of its own):

  in-process  every institution materialized in this process, one after another, as
              `hub publish` does (Dagster's in-process executor, the same assets);
  celery N    the production profile (docs/deployment.md): `hub deploy config`, N Celery
              workers (`hub deploy workers --count N`), `dagster-daemon`, and
              `dagster job backfill --all` of the publish job (the new_institutions sensor
              and the hourly schedule stopped: one run per institution); timed from the
              backfill's submission to the end of its last run.

Prints per configuration: wall time, resources published per second, the speed-up against
1 worker, the CPU utilisation of the machine during the run, and the concurrent-commit
retries (``commit_retries`` of every signed manifest the runs appended).

CPU utilisation is the CPU time of the processes the configuration ran (workers, the per-row
worker processes they start, daemon, code server, run workers; in-process: this process)
divided by wall x cores: 1.0 is every core busy with hub's work. ``machine`` is the same for
all processes of the host (/proc/stat): other load included. On a 2-core machine the
speed-up is bounded by 2 whatever the worker count, and a large institution's run already
spreads its per-row work over every core (hub.pipeline.PARALLEL_FROM_ROWS), so more workers
mostly overlap the per-run overhead (process start-up, Dagster events, commits).

Needs PostgreSQL, RabbitMQ and Redis at their standard ports (`.ci/run` starts them) and
`rabbitmqctl` (the vhosts). The demo region has 3 SQL institutions, so at most 3 steps run
at once: a 4th worker waits.

Usage: python benchmarks/scaleout.py [--patients 2000] [--workers 1,2,4] [--max-runs N] [--workspace DIR]
       1 M source rows: python benchmarks/scaleout.py --patients 16500   (about 61 source rows a person)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
import yaml

from hub.demo.generator import generate_region
from hub.region import load_region

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests package: the Celery test's servers and helpers

from tests.conftest import TEST_MASTER_KEY  # noqa: E402
from tests.deploy.harness import scratch_servers, stop  # noqa: E402

BIN = Path(sys.executable).parent
CORES = os.cpu_count() or 1
TICK = os.sysconf("SC_CLK_TCK")
#: sensors and schedules that would start runs of their own during the measurement
AUTOMATION = (("sensor", "new_institutions"), ("schedule", "hourly_pull"), ("schedule", "nightly_compaction"),
              ("schedule", "daily_orphan_removal"))


# ---- CPU time of a process tree and of the machine, from /proc ------------------------

def _proc_table() -> dict[int, tuple[int, int, int]]:
    """{pid: (ppid, start time, utime + stime in ticks)} of every process."""
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read().decode()
        except OSError:  # ended in between
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        out[int(entry.name)] = (int(fields[1]), int(fields[19]), int(fields[11]) + int(fields[12]))
    return out


def _machine_busy() -> tuple[int, int]:
    """(busy, total) ticks of all cores since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values[:8]) - idle, sum(values[:8])


class CpuMeter:
    """CPU seconds of this process's descendants (and of itself if include_self), sampled every interval.

    A process is counted from the first sample after start() that sees it (its CPU before
    start() is subtracted), to the last sample before it ended: a short-lived process loses
    at most one interval of CPU time.
    """

    def __init__(self, include_self: bool, interval: float = 0.5):
        self.root, self.include_self, self.interval = os.getpid(), include_self, interval
        self.first: dict[tuple[int, int], int] = {}
        self.last: dict[tuple[int, int], int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self, baseline: bool = False) -> None:
        table = _proc_table()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        todo, tree = list(children.get(self.root, [])), []
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo += children.get(pid, [])
        if self.include_self:
            tree.append(self.root)
        for pid in tree:
            if pid not in table:
                continue
            key, ticks = (pid, table[pid][1]), table[pid][2]
            self.first.setdefault(key, ticks if baseline else 0)
            self.last[key] = ticks

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> None:
        self._sample(baseline=True)
        self.machine0 = _machine_busy()
        self._thread.start()

    def stop(self) -> tuple[float, float]:
        """(CPU seconds of the tree, machine busy fraction) since start()."""
        self._stop.set()
        self._thread.join()
        self._sample()
        busy, total = (b - a for a, b in zip(self.machine0, _machine_busy(), strict=True))
        return sum(self.last[k] - self.first[k] for k in self.last) / TICK, busy / total if total else 0.0


# ---- one configuration -----------------------------------------------------------------

@dataclass
class Result:
    name: str
    workers: int | None
    wall: float
    resources: int
    cpu: float
    machine: float
    retries: dict[str, int] = field(default_factory=dict)
    runs: int = 0

    @property
    def rate(self) -> float:
        return self.resources / self.wall

    @property
    def utilisation(self) -> float:
        return self.cpu / (self.wall * CORES)


def _workspace_copy(template: Path, target: Path, catalog_url: str) -> Path:
    """The generated sources and keys in a clean workspace whose catalog and recognition index are catalog_url."""
    shutil.copytree(template, target)
    doc = yaml.safe_load((target / "region.yaml").read_text(encoding="utf-8"))
    doc["catalog"] = catalog_url
    doc["recognition_index"] = catalog_url  # as on several hosts: steps of runs at once write it (SQLite: "database is locked")
    (target / "region.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return target


def _published(catalog_url: str) -> tuple[int, int, dict[str, int]]:
    """(resources published by succeeded runs, succeeded runs, commit retries per table from the manifests)."""
    from hub.lineage.schema import manifests, run_counts, runs

    engine = sa.create_engine(catalog_url)
    with engine.connect() as conn:
        ok = sa.select(runs.c.run_id).where(runs.c.status == "succeeded")
        published = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(run_counts.c.published), 0))
                                 .where(run_counts.c.run_id.in_(ok))).scalar_one()
        n_runs = conn.execute(sa.select(sa.func.count()).select_from(ok.subquery())).scalar_one()
        retries: dict[str, int] = {}
        for (body,) in conn.execute(sa.select(manifests.c.body)):
            for table, n in (json.loads(body).get("commit_retries") or {}).items():
                retries[table] = retries.get(table, 0) + n
    engine.dispose()
    return int(published), int(n_runs), retries


def in_process(template: Path, root: Path) -> Result:
    """Every institution, one after another, in this process (`hub publish`'s path), into a clean lakehouse."""
    from dagster_project.launch import materialize_institutions

    with scratch_servers() as srv:
        ws = _workspace_copy(template, root / "in-process", srv["catalog"])
        ids = [i.id for i in load_region(ws).institutions]
        saved = {k: os.environ.pop(k, None) for k in ("DAGSTER_HOME", "HUB_EXECUTOR")}  # the workspace's own instance
        os.environ["HUB_MASTER_KEY"] = TEST_MASTER_KEY.hex()
        try:
            meter = CpuMeter(include_self=True)
            meter.start()
            t = time.perf_counter()
            if not materialize_institutions(ws, ids):
                raise RuntimeError("an in-process run failed")
            wall = time.perf_counter() - t
            cpu, machine = meter.stop()
        finally:
            os.environ.update({k: v for k, v in saved.items() if v is not None})
        resources, n_runs, retries = _published(srv["catalog"])
    return Result("in-process", None, wall, resources, cpu, machine, retries, n_runs)


def _wait_ready(log: Path, count: int, instance, timeout: float) -> None:
    """Until `count` Celery workers said "ready." in log and the daemon's backfill and queue daemons beat."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = log.read_text(errors="replace").count(" ready.") if log.exists() else 0
        beats = instance.get_daemon_heartbeats()
        if ready >= count and {"BACKFILL", "QUEUED_RUN_COORDINATOR"} <= set(beats):
            return
        time.sleep(1)
    raise RuntimeError(f"workers or daemon not ready in {timeout:.0f} s: see {log} and {log.parent / 'daemon.log'}")


def on_celery(template: Path, root: Path, count: int, max_runs: int, timeout: float) -> Result:
    """A backfill of every institution partition on `count` Celery workers, from a clean lakehouse and Dagster database."""
    from dagster import DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    folder = root / f"celery-{count}"
    folder.mkdir()
    with scratch_servers() as srv:
        ws = _workspace_copy(template, folder / "ws", srv["catalog"])
        institutions = [i.id for i in load_region(ws).institutions]
        home = folder / "dagster"
        env = {**os.environ, "DAGSTER_HOME": str(home), "HUB_WORKSPACE": str(ws), "HUB_EXECUTOR": "celery",
               "HUB_MASTER_KEY": TEST_MASTER_KEY.hex(),
               "HUB_DAGSTER_PG_URL": srv["dagster"].replace("+psycopg:", "+psycopg2:"),
               "HUB_CELERY_BROKER": f"pyamqp://guest:guest@127.0.0.1:5672/{srv['vhost']}"}
        os.environ["HUB_DAGSTER_PG_URL"] = env["HUB_DAGSTER_PG_URL"]  # dagster.yaml reads it, in this process too
        hub = [str(BIN / "hub")]
        subprocess.run([*hub, "deploy", "config", "-w", str(ws), "--max-runs", str(max_runs)], env=env, check=True,
                       capture_output=True, text=True, timeout=300)
        # only the backfill runs: the sensor's first runs of each institution and the hourly pull stay off
        stops = [subprocess.Popen([str(BIN / "dagster"), kind, "stop", name, "-m", "dagster_project.definitions"], env=env, cwd=folder,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for kind, name in AUTOMATION]
        for stopping, (kind, name) in zip(stops, AUTOMATION, strict=True):
            if stopping.wait(300):
                raise RuntimeError(f"dagster {kind} stop {name}: {stopping.stderr.read()[-2000:]}")
        instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
        procs = []
        try:
            log = folder / "workers.log"
            procs.append(subprocess.Popen([*hub, "deploy", "workers", "-w", str(ws), "--count", str(count), "--no-restart"],
                                          env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True))
            procs.append(subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-m", "dagster_project.definitions"], cwd=folder,
                                          env=env, stdout=open(folder / "daemon.log", "w"), stderr=subprocess.STDOUT,
                                          start_new_session=True))
            _wait_ready(log, count, instance, 300)
            meter = CpuMeter(include_self=False)
            meter.start()
            t0 = time.time()
            submit = subprocess.run([str(BIN / "dagster"), "job", "backfill", "-m", "dagster_project.definitions", "-j",
                                     "publish_recognition", "--all", "--noprompt"], env=env, cwd=folder, capture_output=True,
                                    text=True, timeout=300)
            if submit.returncode or "Launched backfill" not in submit.stdout:
                raise RuntimeError(f"backfill not submitted: {submit.stderr[-2000:]}")
            deadline = time.monotonic() + timeout
            while True:
                runs = [r for r in instance.get_runs() if "dagster/backfill" in r.tags]  # not a maintenance run
                if len(runs) >= len(institutions) and all(r.is_finished for r in runs):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"backfill not finished in {timeout:.0f} s: "
                                       f"{[(r.tags.get('dagster/partition'), r.status.value) for r in runs]}")
                time.sleep(1)
            cpu, machine = meter.stop()
            failed = [r.tags.get("dagster/partition") for r in runs if r.status.value != "SUCCESS"]
            if failed or len(runs) != len(institutions) or not all("dagster/backfill" in r.tags for r in runs):
                raise RuntimeError(f"not one successful backfill run per institution: "
                                   f"{[(r.tags.get('dagster/partition'), r.status.value) for r in runs]}; see {folder}")
            end = max(instance.get_run_record_by_id(r.run_id).end_time for r in runs)
            wall = end - t0
            instance.dispose()
        finally:
            for proc in reversed(procs):
                stop(proc)
        resources, n_runs, retries = _published(srv["catalog"])
    return Result(f"celery {count}", count, wall, resources, cpu, machine, retries, n_runs)


# ---- the benchmark ---------------------------------------------------------------------

def report(results: list[Result], source_rows: int, patients: int) -> None:
    one = next((r for r in results if r.workers == 1), None)
    print(f"\n{patients:,} people, {source_rows:,} source rows, {CORES} cores "
          f"(on {CORES} cores the speed-up is bounded by {CORES}, whatever the worker count)")
    print(f"{'configuration':<14} {'wall s':>8} {'resources':>10} {'res/s':>8} {'speed-up':>9} {'CPU util':>9} {'machine':>8} "
          f"{'commit retries':>15}")
    for r in results:
        speedup = f"{one.wall / r.wall:.2f}x" if one and r.workers else "-"
        retries = sum(r.retries.values())
        detail = ", ".join(f"{t.rsplit('.', 1)[-1]} {n}" for t, n in sorted(r.retries.items()))
        print(f"{r.name:<14} {r.wall:>8.1f} {r.resources:>10,} {r.rate:>8,.0f} {speedup:>9} {r.utilisation:>9.0%} "
              f"{r.machine:>8.0%} {retries:>15}" + (f" ({detail})" if detail else ""))
    if len({r.resources for r in results}) > 1:
        print("note: the configurations published different resource counts: " + ", ".join(f"{r.name} {r.resources:,}" for r in results))
    print("CPU util: CPU time of the configuration's processes / (wall x cores); machine: every process of the host "
          "(/proc/stat), other load included.\nspeed-up: wall of 1 worker / wall; commit retries: Iceberg commits "
          "refused because another run committed first, each retried (summed over the runs' manifests).")


@contextlib.contextmanager
def _root(path: Path | None) -> Iterator[Path]:
    root = path or Path(tempfile.mkdtemp(prefix="hub-scaleout-"))
    if path is not None:
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
    try:
        yield root
    finally:
        if path is None:
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=2000, help="people in the demo region (16,500: about 1 M source rows)")
    parser.add_argument("--workers", default="1,2,4", help="comma-separated Celery worker counts")
    parser.add_argument("--max-runs", type=int, default=None, help="runs in progress at once (default: one per institution)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the in-process configuration")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds for one backfill")
    parser.add_argument("--workspace", type=Path, default=None, help="keep everything here (default: a temporary folder, removed)")
    args = parser.parse_args()
    counts = [int(x) for x in args.workers.split(",")]

    with _root(args.workspace) as root:
        template = root / "sources"
        t = time.perf_counter()
        generated = generate_region(template, patients=args.patients)
        source_rows = sum(sum(tables.values()) for tables in generated.values())
        institutions = len(load_region(template).institutions)
        print(f"demo region: {args.patients:,} people, {institutions} institutions, {source_rows:,} source rows "
              f"(generated in {time.perf_counter() - t:.1f}s)", flush=True)
        results = []
        if not args.no_baseline:
            results.append(in_process(template, root))
            print(f"{results[-1].name}: {results[-1].wall:.1f}s, {results[-1].resources:,} resources, CPU {results[-1].utilisation:.0%}, "
                  f"machine {results[-1].machine:.0%}, commit retries {sum(results[-1].retries.values())}", flush=True)
        for n in counts:
            results.append(on_celery(template, root, n, args.max_runs or institutions, args.timeout))
            print(f"{results[-1].name}: {results[-1].wall:.1f}s, {results[-1].resources:,} resources, CPU {results[-1].utilisation:.0%}, "
                  f"machine {results[-1].machine:.0%}, commit retries {sum(results[-1].retries.values())}", flush=True)
        report(results, source_rows, args.patients)


if __name__ == "__main__":
    main()
