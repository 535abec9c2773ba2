"""Giving freed memory back to the system.

CPython frees objects to the C allocator, and glibc's ``malloc`` keeps what it got from
the kernel for later: after a burst of short-lived objects (a NetworkPolicy table listed
back and compared, 10,000 pods listed) the process keeps its peak size though its live
heap is small again. ``release_free_memory`` asks glibc to return its free pages
(``malloc_trim(0)``): with 10,000 pods, a full policy reconcile left the agent at
117 MB resident; trimmed, 66 MB (measured: docs/performance.md). The daemon trims after
every LIST of any kind (2,000 nodes re-listed left ~15 MB above the steady size until
the next trim) and after a full policy reconcile. Elsewhere (musl, macOS) it does
nothing.

``limit_arenas`` caps glibc's per-thread malloc arenas (``mallopt(M_ARENA_MAX)``, what
``MALLOC_ARENA_MAX`` sets). glibc gives threads that allocate at the same time arenas of
their own, up to eight per core, and freed memory stays with its arena: with
NetworkPolicy on, four watches re-list at once after a 410 Gone and the agent grew by
about 7 MB at each re-list, to stay (Python's traced heap flat, resident size growing:
docs/reliability.md, finding 6); with two arenas it stays flat, and starts smaller.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from collections.abc import Callable

#: The environment variable that picks Python's object allocator at start-up.
ALLOCATOR_ENV = "PYTHONMALLOC"

#: ``mallopt``'s parameter number for the arena cap (glibc's ``malloc.h``).
M_ARENA_MAX = -8
#: Arenas the daemon allows: its threads mostly wait; two keep contention low.
DEFAULT_ARENAS = 2
#: ``mallopt``'s parameter number for the size from which blocks are mapped on their own.
M_MMAP_THRESHOLD = -3
#: Blocks from this size get their own mapping, unmapped when freed (glibc's initial
#: value, which it would otherwise raise after each large free, up to 32 MiB).
MMAP_THRESHOLD = 128 * 1024


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):  # not glibc
        return None
    return libc


def _trim() -> Callable[[int], int] | None:
    libc = _libc()
    return None if libc is None else libc.malloc_trim


def _mallopt(param: int, value: int, *, unless_env: str) -> bool:
    """``mallopt(param, value)`` unless the environment sets ``unless_env`` (glibc's own
    variable for it, which then wins); false where it cannot."""
    libc = _libc()
    if libc is None or unless_env in os.environ:
        return False
    return bool(libc.mallopt(param, value))


def limit_arenas(arenas: int = DEFAULT_ARENAS) -> bool:
    """Cap glibc's malloc arenas (call before starting threads); false where it cannot.
    An explicit ``MALLOC_ARENA_MAX`` in the environment wins."""
    return _mallopt(M_ARENA_MAX, arenas, unless_env="MALLOC_ARENA_MAX")


def map_large_blocks(threshold: int = MMAP_THRESHOLD) -> bool:
    """Keep glibc from raising its mmap threshold (call before starting threads); false
    where it cannot. glibc raises the threshold to the size of each large block freed,
    so after the first LIST the pages of every later one (megabytes) come from the heap,
    among long-lived objects, and leave holes there; with a fixed threshold each large
    block is unmapped when freed. An explicit ``MALLOC_MMAP_THRESHOLD_`` wins."""
    return _mallopt(M_MMAP_THRESHOLD, threshold, unless_env="MALLOC_MMAP_THRESHOLD_")


def release_free_memory() -> bool:
    """Return the C allocator's free memory to the system; false where it cannot."""
    trim = _trim()
    if trim is None:
        return False
    trim(0)
    return True


def restart_with_c_malloc() -> None:
    """Start this program again in this process (``execve``: same pid, same arguments)
    with Python's objects allocated by the C allocator (``PYTHONMALLOC=malloc``), then
    never returns; returns at once where that is already so, where the environment
    chose an allocator itself, or without glibc. Call it first thing, before threads.

    Why: pymalloc gives a 1 MiB arena back only once every object in it is gone, and a
    NetworkPolicy compile of 10,000 pods leaves most of its arenas holding a few
    long-lived objects among freed pools (6.7 MB of empty pools in 24 arenas, measured);
    no ``malloc_trim`` reaches them. With the C allocator, ``release_free_memory`` gives
    the freed pages back: the agent with 10,000 pods held +24.0 MiB over policy off
    instead of +32.1 MiB (docs/performance.md, 6d), its first sync no slower."""
    if ALLOCATOR_ENV in os.environ or _libc() is None or not sys.executable:
        return
    env = dict(os.environ)
    env[ALLOCATOR_ENV] = "malloc"
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.execve(sys.executable, sys.orig_argv, env)
