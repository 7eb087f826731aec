"""hub vs cumulus-etl on identical FHIR NDJSON: resources per CPU-second and peak memory, in one run.

Writes one synthetic bulk export (benchmarks/ndjson.py's generator: Patients, one Encounter
each, Observations; no real identifiers), then runs, each as a child process timed with
os.wait4 (wall time, user+system CPU seconds, peak RSS of the child and its descendants):

  cumulus   ``cumulus-etl etl EXPORT OUT PHI --output-format ndjson`` from its own venv under
            the cache folder (created and pip-installed the first time): reads the export,
            de-identifies every resource (its Python scrubber: codebook-hashed ids and
            references, identifying elements dropped) and writes de-identified NDJSON.
            Excluded: its default Delta Lake output (Spark fetches delta-spark and hadoop-aws
            jars from Maven at start, unreachable here) and --philter (off by default).
            cumulus-etl 4.3.6 needs neither Docker nor Microsoft's anonymizer tool (dotnet).
  hub       ``hub publish`` of a region with one NDJSON feed on the same folder: parse,
            validate (hub.fhir.check, fhir.resources on a sample), key ids and references,
            de-identify, leak-scan, write Iceberg with lineage, Dagster asset checks, the
            recognition index.

Prints a table and the ratios hub/cumulus of resources per CPU-second and of peak RSS
(issue 11 asks for >= 2 and <= 0.5). --profile then publishes a fresh copy of the hub
workspace again under py-spy (.venv/bin/pip install py-spy) and prints its stages and
the top functions by cumulative and by own CPU.

Usage: python benchmarks/vs_cumulus.py [--patients 2000] [--observations 100000] [--profile]
       [--workspace DIR] [--cache .bench] [--cumulus-version 4.3.6]
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
import yaml

from hub.demo.generator import generate_region
from hub.lineage import runrecord
from hub.lineage.runrecord import runs
from hub.region import load_region

REPO = Path(__file__).resolve().parents[1]
CUMULUS_VERSION = "4.3.6"
PIP_VERSION = "26.3"  # in cumulus-etl's venv: the pip a venv starts with (23.x) backtracks for many minutes
INSTITUTION = "bulk-clinic"
BENCH_KEY = bytes(range(32)).hex()  # benchmark-only master key
EXPORT_GROUP, EXPORT_TIME = "hub-bench", "2026-01-01T00:00:00Z"
PYSPY_RATE = 100  # samples per second


@dataclass
class Measured:
    name: str
    resources: int  # resources the tool wrote out
    wall: float
    user: float
    system: float
    maxrss_kib: int

    @property
    def cpu(self) -> float:
        return self.user + self.system

    @property
    def per_cpu_second(self) -> float:
        return self.resources / self.cpu

    @property
    def peak_mib(self) -> float:
        return self.maxrss_kib / 1024


def run_child(name: str, cmd: list[str], log: Path, resources_after, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> Measured:
    """Run cmd with its output in log; measure it with os.wait4; resources_after() counts its output."""
    print(f"running {name}: {' '.join(map(str, cmd))}  (load average {os.getloadavg()[0]:.2f}; log {log})", flush=True)
    usage_file = log.with_suffix(".usage.json")
    with log.open("wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", _MEASURE, str(usage_file)] + [str(c) for c in cmd],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        proc.wait()
        wall = time.perf_counter() - start
    code, user, system, maxrss_kib = json.loads(usage_file.read_text())
    if code != 0:
        sys.exit(f"{name} exited with {code}; its output is in {log}")
    return Measured(name, resources_after(), wall, user, system, maxrss_kib)


#: Runs argv[2:] and writes [exit code, user s, system s, peak RSS KiB] of it and its descendants to argv[1].
#: The command is started from this small process, not from the benchmark's: Linux carries a process's
#: peak RSS across exec, so a command started by a big process would report that process's memory.
_MEASURE = ("import json, os, subprocess, sys; p = subprocess.Popen(sys.argv[2:]); _, st, u = os.wait4(p.pid, 0); "
            "open(sys.argv[1], 'w').write(json.dumps([os.waitstatus_to_exitcode(st), u.ru_utime, u.ru_stime, u.ru_maxrss]))")


# ---- the export ------------------------------------------------------------------------

def _generator():
    spec = importlib.util.spec_from_file_location("hub_bench_ndjson", Path(__file__).with_name("ndjson.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_export


def input_counts(export: Path) -> dict[str, int]:
    """Resources per type in the export (one per non-blank line)."""
    import gzip

    counts: dict[str, int] = collections.Counter()
    for f in sorted(export.iterdir()):
        opener = gzip.open if f.name.endswith(".gz") else open
        with opener(f, "rt", encoding="utf-8") as fh:
            counts[f.name.split(".")[0]] += sum(1 for line in fh if line.strip())
    return dict(counts)


# ---- cumulus-etl -------------------------------------------------------------------------

def ensure_cumulus(venv: Path, version: str) -> Path:
    """cumulus-etl==version in its own venv (created the first time); returns its command."""
    exe, python = venv / "bin" / "cumulus-etl", venv / "bin" / "python"
    if exe.exists():
        have = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('cumulus-etl'))"],
                              capture_output=True, text=True).stdout.strip()
        if have == version:
            return exe
    print(f"installing cumulus-etl=={version} into {venv} (once; a few minutes)", flush=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    if not python.exists():
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
    subprocess.run([python, "-m", "pip", "install", "--quiet", f"pip=={PIP_VERSION}"], check=True)
    subprocess.run([python, "-m", "pip", "install", "--quiet", f"cumulus-etl=={version}"], check=True)
    return exe


def cumulus_output_count(out: Path) -> int:
    """De-identified resources cumulus-etl wrote (its ndjson output, one folder per resource type)."""
    n = 0
    for folder in out.iterdir():
        if folder.is_dir() and folder.name in ("patient", "encounter", "observation"):
            for f in folder.glob("*.ndjson"):
                with f.open("rb") as fh:
                    n += sum(1 for line in fh if line.strip())
    return n


def cumulus_command(exe: Path, export: Path, out: Path, phi: Path) -> list:
    return [exe, "etl", export, out, phi, "--output-format", "ndjson",
            "--export-group", EXPORT_GROUP, "--export-timestamp", EXPORT_TIME]


# ---- hub ---------------------------------------------------------------------------------

def hub_workspace(ws: Path, export: Path) -> None:
    """A region with one institution whose only feed is the export folder."""
    generate_region(ws, patients=2)  # region.yaml, signing keys; its SQL institutions are dropped
    doc = yaml.safe_load((ws / "region.yaml").read_text(encoding="utf-8"))
    doc["institutions"] = [{"id": INSTITUTION, "name": "bulk export", "level": "community",
                            "feeds": [{"name": "export", "kind": "ndjson", "path": str(export)}]}]
    (ws / "region.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")


def hub_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HUB_KEY_FILE", "HUB_WORKSPACE")}
    env["HUB_MASTER_KEY"] = BENCH_KEY
    return env


def hub_report(ws: Path) -> dict:
    region = load_region(ws)
    with runrecord.connect(region.catalog_url).connect() as conn:
        row = conn.execute(sa.select(runs.c.report).where(runs.c.institution == INSTITUTION, runs.c.status == "succeeded")
                           .order_by(runs.c.started_at.desc()).limit(1)).one()
    return json.loads(row.report)


def hub_published(ws: Path) -> int:
    by = hub_report(ws)["by_resource"]
    quarantined = sum(c["quarantined"] for c in by.values())
    if quarantined:
        print(f"warning: hub quarantined {quarantined} resources: {hub_report(ws)['quarantine_causes']}")
    return sum(c["published"] for c in by.values())


def hub_command(ws: Path) -> list:
    return [sys.executable, "-m", "hub.cli", "publish", "--workspace", ws]


# ---- profile -----------------------------------------------------------------------------

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
PROJECT = ("hub/", "deid/", "dagster_project/")
#: The command line and the Dagster wiring: the call chain every sample shares, left out of the
#: lists; a library frame counts as "called by hub's code" when the nearest project frame above
#: it is not one of these (so typer, click and Dagster's own plumbing are not listed).
ENTRY = ("hub/cli/", "dagster_project/")
#: Stages of a publish, each the samples whose stack holds that function. Names follow today's
#: code: a renamed function shows 0.0 % here and still appears in the lists. A method of a
#: compiled module (hub/compiled.py) shows under its bare name in py-spy's native frames, so a
#: method is matched with and without its class.
STAGES = (
    ("prepare each resource (parse, keyed ids, validate, de-identify, scan)", "ResourcePreparer.prepare (hub/resources.py)"),
    ("  of which the identifier scan of each resource", "Scanner.record (hub/leakscan.py)"),
    ("  of which validation", "Validator.problems (hub/fhir/check.py)"),
    ("  of which de-identification", "Deidentifier.apply (deid/engine.py)"),
    ("  of which JSON out", "dumps (hub/fhir/jsonio.py)"),
    ("table writer flush (Iceberg write, commit)", "TableWriter.flush (hub/lakehouse/writer.py)"),
    ("  of which the sink's leak scan of each batch", "Publication.scan (hub/lakehouse/sink.py)"),
    ("Dagster checks (leak scan re-reading the published files)", "RunChecks.table (hub/runchecks.py)"),
    ("identifier detection, wherever called", "find_identifiers (hub/identifiers.py)"),
    ("module imports", "_find_and_load (<frozen importlib._bootstrap>)"),
)


def _short(file: str) -> str:
    """A source path without its site-packages, checkout or stdlib prefix."""
    for marker in ("site-packages/", f"{REPO}/", "lib/python3.11/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


#: Native frames of a thread waiting on a lock or a condition (an idle pool thread), which --native
#: sampling reports as running: such samples are left out.
_WAITS = ("PyThread_acquire_lock_timed", "std::condition_variable::wait")


def _inlined(frame: str) -> bool:
    """A native frame of an inlined CPython header function (``Py_DECREF (object.h)``) or a Cython helper
    (``__Pyx_PyObject_GetAttrStr``): part of the function that called it, not a function of its own."""
    m = _FRAME.match(frame)
    return m is not None and (m["file"].endswith(".h") or m["func"].startswith("__Pyx"))


def _frame(frame: str) -> tuple[str, str]:
    """py-spy's ``func (file:line)`` as (``func (file)``, file): one key per function, whatever line ran."""
    m = _FRAME.match(frame)
    if not m:
        return frame, ""
    file = _short(m["file"])
    return f"{m['func']} ({file})", file


@dataclass
class Profile:
    samples: int
    hub_cumulative: collections.Counter  # hub's code below the entry chain
    library_cumulative: collections.Counter  # libraries and stdlib called by that code
    own: collections.Counter  # the innermost frame, any code
    anywhere: collections.Counter  # every function, samples whose stack holds it


def read_pyspy(raw: Path) -> Profile:
    """Cumulative and own sample counts per function from py-spy's raw collapsed stacks."""
    prof = Profile(0, collections.Counter(), collections.Counter(), collections.Counter(), collections.Counter())
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        if any(wait in stack for wait in _WAITS):
            continue
        k = int(count)
        prof.samples += k
        frames = [_frame(f) for f in stack.split(";") if not f.startswith("process ") and not _inlined(f)]
        hub_seen, lib_seen, caller = set(), set(), ""
        for key, file in frames:
            if file.startswith(PROJECT):
                caller = file
                if not file.startswith(ENTRY):
                    hub_seen.add(key)
            elif caller and not caller.startswith(ENTRY):
                lib_seen.add(key)
        for seen, counter in ((hub_seen, prof.hub_cumulative), (lib_seen, prof.library_cumulative),
                              ({key for key, _ in frames}, prof.anywhere)):
            for key in seen:
                counter[key] += k
        prof.own[frames[-1][0] if frames else "(no Python frame: start-up, shutdown or native)"] += k
    return prof


def stage_samples(prof: Profile, key: str) -> int:
    """Samples whose stack holds the stage's function: ``Class.method (file)`` from Python, or
    ``method (file)`` from a compiled module's native frame (never both in one stack)."""
    name, _, where = key.partition(" ")
    bare = f"{name.rpartition('.')[2]} {where}"
    return prof.anywhere[key] + (prof.anywhere[bare] if bare != key else 0)


def profile_hub(ws: Path, log: Path, n: int) -> None:
    """Publish ws under py-spy (every process; threads running or waiting for a CPU) and print where the time went."""
    pyspy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if not pyspy:
        sys.exit("--profile needs py-spy: .venv/bin/pip install py-spy")
    raw = log.with_suffix(".pyspy.txt")
    # --native: the compiled modules' functions have no Python frame of their own; py-spy reads them from
    # the native stack (and pauses the process for each sample, which --nonblocking would not)
    cmd = [pyspy, "record", "--format", "raw", "--rate", str(PYSPY_RATE), "--subprocesses", "--native",
           "-o", raw, "--", *hub_command(ws)]
    run_child("hub under py-spy", cmd, log, lambda: hub_published(ws), env=hub_env())
    prof = read_pyspy(raw)
    print(f"\nhub profile (py-spy at {PYSPY_RATE}/s, a second publish of a fresh copy): {prof.samples} samples "
          f"(~{prof.samples / PYSPY_RATE:.1f} s of running or runnable threads); raw stacks in {raw}")
    print("stages (share of all samples; nested lines are part of the line above):")
    for label, key in STAGES:
        print(f"  {100 * stage_samples(prof, key) / prof.samples:5.1f}%  {label}")
    for title, counter in (("by cumulative CPU, hub's code below the command line and Dagster wiring", prof.hub_cumulative),
                           ("by cumulative CPU, libraries called by that code", prof.library_cumulative),
                           ("by own CPU (the function itself, any code)", prof.own)):
        print(f"top {n} {title}:")
        for name, v in counter.most_common(n):
            print(f"  {100 * v / prof.samples:5.1f}%  {name}")


# ---- main --------------------------------------------------------------------------------

def print_table(results: list[Measured], total_in: int) -> None:
    print(f"\nidentical input: {total_in:,} resources")
    print(f"{'tool':<10}{'resources':>11}{'wall s':>9}{'CPU s':>9}{'res/CPU-s':>11}{'res/wall-s':>12}{'peak RSS MiB':>14}")
    for m in results:
        print(f"{m.name:<10}{m.resources:>11,}{m.wall:>9.1f}{m.cpu:>9.1f}{m.per_cpu_second:>11,.0f}"
              f"{m.resources / m.wall:>12,.0f}{m.peak_mib:>14,.0f}")
    by = {m.name: m for m in results}
    if "hub" in by and "cumulus" in by:
        rate = by["hub"].per_cpu_second / by["cumulus"].per_cpu_second
        mem = by["hub"].maxrss_kib / by["cumulus"].maxrss_kib
        print(f"hub/cumulus rate (resources per CPU-second): {rate:.2f}  (goal >= 2: {'met' if rate >= 2 else 'not met'})")
        print(f"hub/cumulus peak memory (max RSS):           {mem:.2f}  (goal <= 0.5: {'met' if mem <= 0.5 else 'not met'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=2000)
    parser.add_argument("--observations", type=int, default=100_000, help="total, a multiple of --patients")
    parser.add_argument("--workspace", type=Path, default=None, help="scratch folder (default: a temporary one, removed after)")
    parser.add_argument("--cache", type=Path, default=REPO / ".bench", help="where cumulus-etl's venv is kept")
    parser.add_argument("--cumulus-version", default=CUMULUS_VERSION)
    parser.add_argument("--only", choices=("hub", "cumulus"), default=None, help="measure one tool only")
    parser.add_argument("--profile", action="store_true", help="then profile a second hub publish of a fresh copy")
    parser.add_argument("--top", type=int, default=10, help="functions listed by --profile")
    args = parser.parse_args()
    if args.patients < 1 or args.observations < 0 or args.observations % args.patients:
        parser.error("--observations must be a multiple of --patients (the generator writes the same number per patient)")

    ws = args.workspace or Path(tempfile.mkdtemp(prefix="hub-vs-cumulus-"))
    if ws.exists():
        shutil.rmtree(ws)
    ws.mkdir(parents=True)
    ws = ws.resolve()
    export = ws / "export"
    t = time.perf_counter()
    _generator()(export, args.patients, args.observations // args.patients)
    counts = input_counts(export)
    total_in = sum(counts.values())
    size = sum(p.stat().st_size for p in export.iterdir())
    print(f"export: {counts} = {total_in:,} resources, {size / 1e6:.1f} MB on disk, in {export} "
          f"(written in {time.perf_counter() - t:.1f}s)", flush=True)

    results = []
    if args.only in (None, "cumulus"):
        exe = ensure_cumulus(args.cache.resolve() / "cumulus-venv", args.cumulus_version)
        out, phi = ws / "cumulus-out", ws / "cumulus-phi"
        results.append(run_child("cumulus", cumulus_command(exe, export, out, phi), ws / "cumulus.log",
                                 lambda: cumulus_output_count(out), cwd=ws))
    if args.only in (None, "hub"):
        hub_ws = ws / "hub"
        hub_workspace(hub_ws, export)
        if args.profile:
            shutil.copytree(hub_ws, ws / "hub-profile", symlinks=True)
        results.append(run_child("hub", hub_command(hub_ws), ws / "hub.log", lambda: hub_published(hub_ws), env=hub_env()))
    for m in results:
        if m.resources != total_in:
            print(f"warning: {m.name} wrote {m.resources:,} of {total_in:,} resources (see its log in {ws})")
    print_table(results, total_in)
    if args.profile and args.only in (None, "hub"):
        profile_hub(ws / "hub-profile", ws / "hub-profile.log", args.top)
    if args.workspace is None:
        shutil.rmtree(ws)
        print(f"removed the scratch folder {ws} (pass --workspace to keep the logs, outputs and profile stacks)")


if __name__ == "__main__":
    main()
