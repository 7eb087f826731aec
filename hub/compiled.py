"""Compiled builds of the per-row modules: built with Cython beside their sources, used only while
they match them.

The modules in MODULES run once or more per source row in the workers (mapping, fast FHIR
checks, de-identification, the identifier detector, the leak scan). Compiled by Cython
from the unchanged Python sources (no type declarations, so the semantics stay Python's), the
same code runs ~1.3× faster and gives byte-identical output (docs/performance.md).

``make demo`` and ``make test`` build them (``hub compiled build``); a plain
``pip install`` does not, and hub then runs the Python sources, only slower. A built module is
used only while its source is the one it was built from (a manifest of SHA-256 digests written
by the build): after an edit, the edited source runs until the next build, so a stale build
never shadows a change, and a build whose source is gone is never imported.
``HUB_PURE_PYTHON=1`` (or true, yes) runs every module from its source (profiling, debugging).
``hub compiled status`` tells which modules run compiled.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from pathlib import Path

#: The modules that are compiled: the workers' per-row path. The parent's per-row modules (the row
#: screen, the pipeline, the table writer, keyed hashes) were tried too and gave nothing measurable:
#: their time is in C already (SQLite, HMAC, Arrow, Parquet).
MODULES = (
    "hub.identifiers",
    "hub.leakscan",
    "hub.prepare",
    "hub.resources",
    "hub.fhir.check",
    "hub.fhir.jsonio",
    "hub.mapping.compile",
    "hub.mapping.values",
    "hub.mapping.transforms",
    "hub.mapping.run",
    "deid.engine",
    "deid.actions",
)
#: The build's record of the sources it compiled ({module: SHA-256 of its source}), beside this file.
MANIFEST = Path(__file__).with_name("_compiled.json")
PURE_ENV = "HUB_PURE_PYTHON"
_ROOT = Path(__file__).resolve().parent.parent  # the folder that holds the hub and deid packages
_PACKAGES = ("hub", "deid")


def source_of(module: str) -> Path:
    return _ROOT.joinpath(*module.split(".")).with_suffix(".py")


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _manifest() -> dict[str, str]:
    try:
        data = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _built(module: str) -> Path | None:
    """The compiled file of module beside its source, if there is one for this interpreter."""
    src = source_of(module)
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = src.with_name(src.stem + suffix)
        if candidate.exists():
            return candidate
    return None


def pure_requested() -> bool:
    """HUB_PURE_PYTHON is 1, true or yes (any case)."""
    return os.environ.get(PURE_ENV, "").strip().lower() in ("1", "true", "yes")


def reason_pure(module: str, manifest: dict[str, str] | None = None) -> str | None:
    """Why module runs from its Python source, or None when its compiled build is used."""
    if pure_requested():
        return f"{PURE_ENV} is set"
    return _stale(module, manifest if manifest is not None else _manifest())


def _stale(module: str, manifest: dict[str, str]) -> str | None:
    """Why module's build (whatever HUB_PURE_PYTHON says) is not the one of its present source, or None."""
    if not source_of(module).exists():
        return "source missing"
    if _built(module) is None:
        return "not built"
    recorded = manifest.get(module)
    if recorded is None or recorded != _digest(source_of(module)):
        return "source changed since the build"
    return None


class _StaleGuard(importlib.abc.MetaPathFinder):
    """Loads a module of MODULES from its source when its compiled build may not be used (Python's own
    finder prefers a compiled file beside a source of the same name). The manifest is read at each
    such import, not once per process: a long-running process (hub listen, a Dagster or Celery
    worker) sees the builds made since it started as they are now."""

    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] not in _PACKAGES:
            return None
        src = source_of(name)
        if not src.exists():
            if _built(name) is not None:  # a build left from a deleted or renamed module: never imported
                raise ModuleNotFoundError(f"No module named {name!r} (only a compiled build of it is left: run `hub compiled clean`)",
                                          name=name)
            return None
        if name not in MODULES:
            # a build left from a module that is no longer compiled (MODULES changed) is never used either
            return importlib.util.spec_from_file_location(name, src) if _built(name) is not None else None
        if reason_pure(name, _manifest()) is None:
            return None
        return importlib.util.spec_from_file_location(name, src)


def install_guard() -> None:
    """Put the guard in front of Python's finders, once (hub/__init__.py calls this)."""
    if not any(isinstance(f, _StaleGuard) for f in sys.meta_path):
        sys.meta_path.insert(0, _StaleGuard())


def status() -> dict[str, str]:
    """{module: "compiled" or "source (why)"} as a new process would load them; and for modules this
    process has loaded, how it loaded them."""
    manifest = _manifest()
    out = {}
    for module in MODULES:
        loaded = sys.modules.get(module)
        if loaded is not None:
            is_compiled = not str(getattr(loaded, "__file__", "")).endswith(".py")
            out[module] = "compiled" if is_compiled else f"source ({reason_pure(module, manifest) or 'loaded before the build'})"
        else:
            why = reason_pure(module, manifest)
            out[module] = "compiled" if why is None else f"source ({why})"
    return out


def current() -> bool:
    """Every module of MODULES has a build made from its present source."""
    manifest = _manifest()
    return all(_stale(m, manifest) is None for m in MODULES)


def summary() -> str:
    """One line for benchmarks and run logs: how many of MODULES run compiled."""
    states = status()
    n = sum(v == "compiled" for v in states.values())
    return f"compiled modules: {n} of {len(states)}" + ("" if n == len(states) else
                                                        f" ({next(v for v in states.values() if v != 'compiled')})")


#: Where the C sources Cython writes live, with the digests of the Python sources they were made from.
BUILD_DIR = _ROOT / "build" / "cython"


def build(jobs: int = 2) -> list[str]:
    """Compile MODULES in place (C sources and objects under build/) and write the manifest; the
    names of the modules built. Raises ImportError without Cython, and the compiler's error on a
    failed build (the Python sources still run). One build at a time per tree (a file lock); only in
    a source checkout (an editable install), never inside site-packages."""
    import fcntl

    from Cython.Build import cythonize
    from setuptools import Distribution, Extension

    if not (_ROOT / "pyproject.toml").exists():
        raise RuntimeError(f"the modules are built in a source checkout (pip install -e), not in {_ROOT}")
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    with open(BUILD_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        digests = {m: _digest(source_of(m)) for m in MODULES}
        clean()  # a build that fails half-way leaves no module marked current; and a loaded build is never overwritten in place
        # Cython and build_ext go by file times, which a copy (cp -p, tar, rsync -a) keeps: a C source made
        # from other content than the present source's is removed, so it is made again, newer than its old
        # object (which is then compiled again; the unchanged modules are only copied back into place).
        record = BUILD_DIR / "sources.json"
        try:
            made_from = json.loads(record.read_text())
        except (OSError, ValueError):
            made_from = {}
        for m in MODULES:
            if made_from.get(m) != digests[m]:
                BUILD_DIR.joinpath(*m.split(".")).with_suffix(".c").unlink(missing_ok=True)
        record.unlink(missing_ok=True)
        extensions = [Extension(m, [str(source_of(m).relative_to(_ROOT))], extra_compile_args=["-O2", "-w"]) for m in MODULES]
        cwd = os.getcwd()
        os.chdir(_ROOT)
        try:
            modules = cythonize(extensions, build_dir=str(BUILD_DIR.relative_to(_ROOT)), quiet=True,
                                compiler_directives={"language_level": 3, "binding": True, "annotation_typing": False})
            record.write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")
            dist = Distribution({"ext_modules": modules, "script_name": "hub.compiled"})
            cmd = dist.get_command_obj("build_ext")
            cmd.inplace, cmd.parallel, cmd.build_temp = True, max(1, jobs), "build/temp"
            dist.run_command("build_ext")
        finally:
            os.chdir(cwd)
        if {m: _digest(source_of(m)) for m in MODULES} != digests:
            clean()  # a source changed while it was compiled: no build is marked current
            raise RuntimeError("a source changed during the build")
        MANIFEST.write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")
    return list(MODULES)


def clean() -> None:
    """Remove every compiled module of the hub and deid packages and the manifest (hub runs its sources)."""
    MANIFEST.unlink(missing_ok=True)
    for package in _PACKAGES:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            for built in (_ROOT / package).rglob(f"*{suffix}"):
                built.unlink()
