"""Giving freed memory back to the system: the allocator choices behind a run's peak resident memory.

A run's peak RSS is not only what it holds at once: it is also what the allocators keep after it
is freed. Two of them kept a lot (docs/performance.md, session of 2026-12-02, fourth):

- **Arrow's memory pool.** pyarrow's wheels allocate through mimalloc by default, which keeps
  freed pages for reuse. hub's own entry points (the ``hub`` command, the Dagster code location)
  make the system allocator Arrow's default: the ``ARROW_DEFAULT_MEMORY_POOL`` variable, read
  once when pyarrow is first imported, and inherited by the processes they start. A pool the
  environment names is left as it is, and so is a process that imported pyarrow already (its
  children would otherwise run on another pool than it). Importing hub as a library (reading
  the lakehouse from a notebook) changes nothing: there, reads measured faster on mimalloc.
- **glibc's heap.** Each flush frees ~20,000 rows' objects (dicts, the resources' bytes, the
  Arrow table); glibc gives back only what lies at the top of its heap, so the pages freed
  below stay resident until reused. ``release_freed_memory`` asks glibc to return every free
  page (``malloc_trim(0)``); the table writer calls it after each flush. Worker processes forked
  later start from the smaller heap too.

Neither changes what a run computes or publishes; both are measured in docs/performance.md.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Mapping
from functools import cache

#: The environment variable pyarrow reads for its default memory pool, and hub's choice for it.
ARROW_POOL_ENV, ARROW_POOL = "ARROW_DEFAULT_MEMORY_POOL", "system"


def prefer_system_arrow_pool() -> bool:
    """Make the system allocator Arrow's default pool for this process and the ones it starts, unless the
    environment names a pool or pyarrow is imported already (the variable is read once, at its import).
    Returns whether it set the variable."""
    if os.environ.get(ARROW_POOL_ENV) or "pyarrow" in sys.modules:
        return False
    os.environ[ARROW_POOL_ENV] = ARROW_POOL
    return True


def with_system_arrow_pool(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of env (os.environ by default) for a process that runs hub's work: the system pool unless env
    names one (benchmarks/pipeline.py starts its measured run with it, as the ``hub`` command would)."""
    out = dict(os.environ if env is None else env)
    if not out.get(ARROW_POOL_ENV):
        out[ARROW_POOL_ENV] = ARROW_POOL
    return out


@cache
def _malloc_trim():
    """glibc's malloc_trim, or None where the C library is not glibc (musl, macOS, Windows)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the process's own symbols: no library search, no ldconfig
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_freed_memory() -> bool:
    """Return the free pages of the C heap to the system (glibc: malloc_trim(0)); False where that is not
    available. It walks the heap holding glibc's locks (other threads that allocate wait): measured
    ~0 ms when nothing was freed, 5-60 ms after a flush, ~200 ms after freeing 1.4 GB in scattered
    pieces. Call it after large frees, not per row."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
