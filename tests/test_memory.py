"""hub.memory: Arrow's default pool is the system allocator unless the user chose one, and freed C heap
pages go back to the system after a flush."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hub import memory
from hub.lakehouse.tables import ensure_table
from tests.lakehouse import test_sink
from tests.lakehouse.test_sink import _publication, _resource, _row

lake = test_sink.lake  # the fixture: a catalog, a run record and a signing key in tmp_path

_POOL = "import pyarrow; print(pyarrow.default_memory_pool().backend_name)"


def _run(code: str, env: dict[str, str] | None = None) -> list[str]:
    if env is None:
        env = {k: v for k, v in os.environ.items() if k != memory.ARROW_POOL_ENV}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.split()


_CLI = "import sys; from hub import cli; sys.argv = ['hub', 'compiled', 'status']\ntry:\n    cli.main()\nexcept SystemExit:\n    pass\n"


def test_the_hub_command_makes_the_system_allocator_arrows_pool():
    assert _run(_CLI + _POOL)[-1] == "system"


def test_the_dagster_code_location_makes_the_system_allocator_arrows_pool():
    assert _run("import dagster_project.definitions; " + _POOL) == ["system"]


def test_hub_imported_as_a_library_leaves_the_pool_alone():
    """Reading the lakehouse from a notebook: no variable set, Arrow's own default (reads measured faster there)."""
    assert _run("import os, hub.lakehouse.tables, hub.pipeline; print(os.environ.get('ARROW_DEFAULT_MEMORY_POOL')); " + _POOL) \
        == ["None", _run(_POOL)[0]]


def test_a_pool_the_environment_names_is_kept_and_an_empty_one_is_not_a_choice():
    assert _run(_CLI + _POOL, {**os.environ, memory.ARROW_POOL_ENV: "mimalloc"})[-1] == "mimalloc"
    assert _run(_CLI + _POOL, {**os.environ, memory.ARROW_POOL_ENV: ""})[-1] == "system"


def test_a_process_that_imported_pyarrow_already_is_left_as_it_is():
    """Its pool is chosen; setting the variable then would put the processes it starts on another pool."""
    code = "import os, pyarrow\nfrom hub import memory\nprint(memory.prefer_system_arrow_pool(), os.environ.get('ARROW_DEFAULT_MEMORY_POOL'))"
    assert _run(code) == ["False", "None"]


def test_the_variable_reaches_child_processes():
    code = _CLI + f"import subprocess; subprocess.run([sys.executable, '-c', {_POOL!r}], check=True)"
    assert _run(code)[-1] == "system"


def test_a_measured_run_gets_the_pool_the_command_would():
    env = {k: v for k, v in os.environ.items() if k != memory.ARROW_POOL_ENV}
    assert memory.with_system_arrow_pool(env)[memory.ARROW_POOL_ENV] == "system"
    assert memory.with_system_arrow_pool({**env, memory.ARROW_POOL_ENV: "jemalloc"})[memory.ARROW_POOL_ENV] == "jemalloc"
    assert memory.ARROW_POOL_ENV not in env  # a copy


_TRIM = """
import json, sys
from hub import memory

def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024

junk = [bytes(2000) for _ in range(100_000)]  # ~200 MB of malloc'd objects (over pymalloc's 512 bytes)
kept = junk[::100]  # one in a hundred stays: the heap's top is not free, so glibc keeps the rest resident
del junk
before = rss()
released = memory.release_freed_memory()
print(json.dumps({"released": released, "before": before, "after": rss(), "kept": len(kept)}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or memory._malloc_trim() is None, reason="glibc's malloc_trim")
def test_freed_pages_go_back_to_the_system():
    import json

    out = json.loads(subprocess.run([sys.executable, "-c", _TRIM], capture_output=True, text=True, check=True).stdout)
    assert out["released"] is True and out["kept"] == 1000
    assert out["before"] - out["after"] > 100, out  # of ~200 MB freed, at least 100 MB left the process


def test_without_glibc_it_says_so(monkeypatch):
    monkeypatch.setattr(memory, "_malloc_trim", lambda: None)
    assert memory.release_freed_memory() is False


def test_a_flush_gives_its_pages_back_once_its_rows_are_staged(lake, monkeypatch):
    """TableWriter.flush releases what it freed after the rows are written and indexed, once per flush."""
    from hub.lakehouse import writer

    calls = []
    icat, _, _ = lake
    pub = _publication(lake)
    w = pub.table_writer(ensure_table(icat, "recognition", "Observation"), "inst-a", "k1")
    monkeypatch.setattr(writer, "release_freed_memory", lambda: calls.append((w.written, w.pending)) or True)
    for i in range(1, 51):
        w.add(_row(_resource(i), pub.id))
    w.flush()
    assert calls == [(50, 0)]  # after the rows were written and the buffer emptied
    w.flush()  # nothing buffered: nothing freed
    assert calls == [(50, 0)]
    pub.abort()
