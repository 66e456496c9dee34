"""Giving the memory a large request freed back to the system.

A worker that has scored a million rows has freed the arrays, but the allocators keep the memory for
later: glibc's heap (large arrays freed into it, not unmapped) and pyarrow's pool. Measured with one
gevent worker after four clients fetched 1,000,000-row answers, it stayed 74 MiB above its baseline
without ``release_free_memory`` and 3 MiB with it (docs/benchmarks.md, "API memory"). It takes about
2 ms, so it is done only around large requests and after a refusal for size.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable

import pyarrow as pa


@functools.cache
def find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_memory() -> None:
    """Give what the process has freed back to the system: pyarrow's pool's unused memory, and the C library's
    heap where it can be trimmed."""
    pa.default_memory_pool().release_unused()
    trim = find_malloc_trim()
    if trim is not None:
        trim(0)
