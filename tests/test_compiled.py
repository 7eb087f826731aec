"""The compiled builds of the per-row modules (hub/compiled.py): used only while they match their
sources, never with HUB_PURE_PYTHON, and giving exactly what the Python sources give."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hub import compiled
from tests.conftest import REPO

REQUIRE_ENV = "HUB_REQUIRE_COMPILED"  # set by .ci/run: there the build must exist, a skip would hide a failed build


def _need_build() -> None:
    if not compiled.current():
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"the compiled modules are not built or are stale ({compiled.summary()}); `hub compiled build` failed?")
        pytest.skip("the compiled modules are not built (`hub compiled build`, or make test)")


def _loaded_from(env: dict[str, str]) -> dict[str, str]:
    """{module: file it was loaded from} in a fresh interpreter with env."""
    code = ("import importlib, json, sys; from hub import compiled; "
            "print(json.dumps({m: importlib.import_module(m).__file__ for m in compiled.MODULES}))")
    env = env | {"PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)



def _last_json(args: list[str], pure: bool) -> dict:
    """The JSON on the last line a fresh interpreter of this tree prints for args: running its compiled
    modules, or with HUB_PURE_PYTHON=1 its Python sources."""
    env = ({k: v for k, v in os.environ.items() if k != compiled.PURE_ENV} | {"PYTHONPATH": str(REPO)}
           | ({compiled.PURE_ENV: "1"} if pure else {}))
    run = subprocess.run([sys.executable, *args], env=env, cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.splitlines()[-1])

def test_a_build_that_does_not_match_its_source_is_not_used(monkeypatch):
    module = compiled.MODULES[0]
    digest = compiled._digest(compiled.source_of(module))
    monkeypatch.delenv(compiled.PURE_ENV, raising=False)
    monkeypatch.setattr(compiled, "_built", lambda m: compiled.source_of(m).with_suffix(".so"))
    assert compiled.reason_pure(module, {module: digest}) is None
    assert compiled.reason_pure(module, {module: "0" * 64}) == "source changed since the build"
    assert compiled.reason_pure(module, {}) == "source changed since the build"
    guard = compiled._StaleGuard()
    monkeypatch.setattr(compiled, "_manifest", lambda: {module: "0" * 64})
    spec = guard.find_spec(module, None)
    assert spec is not None and spec.origin == str(compiled.source_of(module))
    monkeypatch.setattr(compiled, "_manifest", lambda: {module: digest})  # read again at each import: a new build counts
    assert guard.find_spec(module, None) is None  # Python's own finder takes the build
    # a build left from a module that is no longer in MODULES is not used either
    spec = guard.find_spec("hub.pipeline", None)
    assert spec is not None and spec.origin == str(compiled.source_of("hub.pipeline"))
    monkeypatch.setattr(compiled, "_built", lambda m: None)
    assert guard.find_spec("hub.pipeline", None) is None  # nothing built: Python's own finder
    assert guard.find_spec("json", None) is None


def test_a_build_whose_source_is_gone_is_never_imported(monkeypatch, tmp_path):
    monkeypatch.delenv(compiled.PURE_ENV, raising=False)
    monkeypatch.setattr(compiled, "_built", lambda m: tmp_path / "gone.so")
    monkeypatch.setattr(compiled, "source_of", lambda m: tmp_path / "gone.py")  # renamed or deleted
    with pytest.raises(ModuleNotFoundError, match="only a compiled build of it is left"):
        compiled._StaleGuard().find_spec("hub.gone", None)
    assert compiled.reason_pure("hub.identifiers", {}) == "source missing"


@pytest.mark.parametrize(("value", "pure"), [("1", True), ("true", True), ("YES", True), ("0", False), ("false", False), ("", False)])
def test_pure_python_is_asked_for_explicitly(monkeypatch, value, pure):
    monkeypatch.setenv(compiled.PURE_ENV, value)
    assert compiled.pure_requested() is pure


def test_without_a_build_the_sources_run(monkeypatch):
    monkeypatch.delenv(compiled.PURE_ENV, raising=False)
    monkeypatch.setattr(compiled, "_built", lambda m: None)
    assert compiled.reason_pure("hub.identifiers", {"hub.identifiers": "x"}) == "not built"
    assert not compiled.current()


def test_pure_python_env_loads_every_module_from_its_source():
    files = _loaded_from({**os.environ, compiled.PURE_ENV: "1"})
    assert set(files) == set(compiled.MODULES)
    assert all(f.endswith(".py") for f in files.values()), files


def test_a_current_build_is_what_a_new_process_loads():
    _need_build()
    env = {k: v for k, v in os.environ.items() if k != compiled.PURE_ENV}
    files = _loaded_from(env)
    assert not any(f.endswith(".py") for f in files.values()), files


@pytest.mark.slow
def test_compiled_modules_prepare_exactly_what_the_sources_prepare(tmp_path):
    """Every resource, id, hash, column, quarantine problem and leak finding of a demo region's rows,
    prepared once by the compiled modules and once by the Python sources (benchmarks/hotpath.py's digest)."""
    _need_build()
    from hub.demo.generator import generate_region

    ws = tmp_path / "ws"
    generate_region(ws, patients=80)
    out = {pure: _last_json(["benchmarks/hotpath.py", "--workspace", str(ws), "--one", "total"], pure) for pure in (False, True)}
    assert out[False]["hub"] == out[True]["hub"] == str(REPO / "hub")  # this tree's code, not an installed one
    assert out[False]["compiled"] == len(compiled.MODULES) and out[True]["compiled"] == 0
    assert out[False]["resources"] == out[True]["resources"] > 5000
    assert out[False]["digest"] == out[True]["digest"]


_NDJSON_DIGEST = r'''
import gzip, hashlib, json, sys, datetime as dt
from pathlib import Path
sys.path.insert(0, "benchmarks")
from ndjson import write_export
import hub.resources
from deid.engine import Deidentifier
from deid.keys import Keyring
from deid.ruleset import load_ruleset
from hub.leakscan import Scanner, load_canaries, load_scan_policy
from hub.region import load_region
from hub.resources import ResourcePreparer

region = load_region(Path(sys.argv[1]))
ruleset = load_ruleset(region.ruleset, region.zone)
keys = Keyring(bytes(range(32)))
scanner = Scanner(load_canaries(region.workspace), load_scan_policy(region.ruleset))
prep = ResourcePreparer("city-first", keys, Deidentifier(ruleset, keys), scanner, "bulk", dt.timezone(dt.timedelta(hours=8)), 7)
folder = Path(sys.argv[2])
write_export(folder, 60, 5)
hostile = [
    '{"resourceType": "Observation", "id": "n1", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/p1"},'
    ' "note": [{"text": "call 138 0013 8000 or 330106198001011234"}]}',
    '{"resourceType": "Observation", "id": "bad id!", "status": "final", "code": {"text": "x"}}',
    '{"resourceType": "Basic", "id": "b1"}', 'not json', None,
    '{"resourceType": "Observation", "id": "s1", "status": "final", "code": {"text": "\\ud800"}}',
]
h, n = hashlib.sha256(), 0
for name in sorted(p.name for p in folder.iterdir()):
    opener = gzip.open if name.endswith(".gz") else open
    with opener(folder / name, "rt", encoding="utf-8") as f:
        lines = [(i + 1, line) for i, line in enumerate(f)]
    for p in prep.prepare(name, lines + [(len(lines) + i + 1, t) for i, t in enumerate(hostile)], None):
        h.update(repr((p.line, p.resource_type, p.references, sorted(vars(p.item).items()))).encode())
        n += 1
h.update(repr(sorted(prep.take_exempted().items())).encode())
print(json.dumps({"digest": h.hexdigest(), "lines": n, "resources": hub.resources.__file__}))
'''


@pytest.mark.slow
def test_compiled_ndjson_preparer_gives_exactly_what_its_source_gives(tmp_path):
    """Every line of a bulk export (and hostile lines: an identifier in a note, a bad id, an unknown type,
    broken JSON, an over-long line, a lone surrogate) prepared by hub.resources compiled and from source."""
    _need_build()
    from hub.demo.generator import generate_region

    ws = tmp_path / "ws"
    generate_region(ws, patients=3)
    out = {pure: _last_json(["-c", _NDJSON_DIGEST, str(ws), str(tmp_path / f"export-{pure}")], pure) for pure in (False, True)}
    assert not out[False]["resources"].endswith(".py") and out[True]["resources"].endswith(".py")
    assert out[False]["lines"] == out[True]["lines"] > 400
    assert out[False]["digest"] == out[True]["digest"]
