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

_POOL = "import hub, pyarrow; print(pyarrow.default_memory_pool().backend_name)"


def _pool(env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-c", _POOL], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_importing_hub_makes_the_system_allocator_arrows_pool():
    env = {k: v for k, v in os.environ.items() if k != memory.ARROW_POOL_ENV}
    assert _pool(env) == "system"


def test_a_pool_the_environment_names_is_kept():
    assert _pool({**os.environ, memory.ARROW_POOL_ENV: "mimalloc"}) == "mimalloc"


def test_the_variable_reaches_child_processes():
    env = {k: v for k, v in os.environ.items() if k != memory.ARROW_POOL_ENV}
    code = f"import hub, os, subprocess, sys; subprocess.run([sys.executable, '-c', {_POOL!r}], check=True)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "system"


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
    monkeypatch.setattr(writer, "release_freed_memory", lambda: calls.append(True) or True)
    icat, _, _ = lake
    pub = _publication(lake)
    w = pub.table_writer(ensure_table(icat, "recognition", "Observation"), "inst-a", "k1")
    for i in range(1, 51):
        w.add(_row(_resource(i), pub.id))
    w.flush()
    assert calls == [True] and w.written == 50
    w.flush()  # nothing buffered: nothing freed
    assert calls == [True]
    pub.abort()
