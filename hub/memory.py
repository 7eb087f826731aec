"""Giving freed memory back to the system: the allocator choices behind a run's peak resident memory.

A run's peak RSS is not only what it holds at once: it is also what the allocators keep after it
is freed. Two of them kept a lot (docs/performance.md, session of 2026-12-02, fourth):

- **Arrow's memory pool.** pyarrow's wheels allocate through mimalloc by default, which keeps
  freed pages for reuse. ``hub`` makes the system allocator Arrow's default (the
  ``ARROW_DEFAULT_MEMORY_POOL`` variable, read once when pyarrow is first imported), unless the
  environment names a pool already: that choice is left as it is.
- **glibc's heap.** Each flush frees ~20,000 rows' objects (dicts, the resources' bytes, the
  Arrow table); glibc gives back only what lies at the top of its heap, so the pages freed
  below stay resident until reused. ``release_freed_memory`` asks glibc to return every free
  page (``malloc_trim(0)``); the table writer calls it after each flush. Worker processes forked
  later start from the smaller heap too.

Neither changes what a run computes or publishes; both are measured in docs/performance.md.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from functools import cache

#: The environment variable pyarrow reads for its default memory pool, and hub's choice for it.
ARROW_POOL_ENV, ARROW_POOL = "ARROW_DEFAULT_MEMORY_POOL", "system"


def prefer_system_arrow_pool() -> None:
    """Make the system allocator Arrow's default pool, unless the environment names one (call it before
    pyarrow is imported: the variable is read once, at import; child processes inherit it)."""
    os.environ.setdefault(ARROW_POOL_ENV, ARROW_POOL)


@cache
def _malloc_trim():
    """glibc's malloc_trim, or None where the C library is not glibc (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_freed_memory() -> bool:
    """Return the free pages of the C heap to the system (glibc: malloc_trim(0)); False where that is not
    available. Costs a walk of the heap's free lists (~1 ms per 100 MB): call it after large frees,
    not per row."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
