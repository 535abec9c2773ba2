"""Giving freed memory back to the system.

CPython frees objects to the C allocator, and glibc's ``malloc`` keeps what it got from
the kernel for later: after a burst of short-lived objects (a NetworkPolicy table listed
back and compared, 10,000 pods listed) the process keeps its peak size though its live
heap is small again. ``release_free_memory`` asks glibc to return its free pages
(``malloc_trim(0)``): with 10,000 pods, a full policy reconcile left the agent at
117 MB resident; trimmed, 66 MB (measured: docs/performance.md). Elsewhere (musl, macOS)
it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_memory() -> bool:
    """Return the C allocator's free memory to the system; false where it cannot."""
    trim = _trim()
    if trim is None:
        return False
    trim(0)
    return True
