"""Throwaway network namespaces for tests (needs root and iproute2).

Names are unique per process and call, so parallel tests never collide, and every
namespace made here is deleted on exit, also when the test fails.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

_counter = itertools.count()


def unique_name(prefix: str = "xc") -> str:
    """A name unique to this process and call, short enough for an interface (<= 15)."""
    return f"{prefix[:4]}{os.getpid() % 100000}x{next(_counter)}"[:15]


def run_in(ns: str | None, argv: Sequence[str], *, check: bool = True) -> str:
    """Run a command (inside namespace ``ns`` when given) and return its stdout."""
    full = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
    proc = subprocess.run(full, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(full)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def add_netns(name: str) -> None:
    """Create a namespace with its loopback up."""
    run_in(None, ["ip", "netns", "add", name])
    run_in(name, ["ip", "link", "set", "lo", "up"])


def del_netns(name: str) -> None:
    """Delete a namespace (no error when it is already gone)."""
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


@contextmanager
def netns(prefix: str = "xc") -> Iterator[str]:
    """A fresh network namespace, deleted on exit; yields its name."""
    name = unique_name(prefix)
    add_netns(name)
    try:
        yield name
    finally:
        del_netns(name)
