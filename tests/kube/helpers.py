"""Helpers for the Kubernetes adapter tests: polling with a deadline, a recording sink,
and a runner that drives a node source in a thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from xcluster_cni_lib.core.values import NodeFacts
from xcluster_cni_lib.sources.watching import KubeNodeSource


def wait_until(predicate: Callable[[], object], timeout: float = 5.0, what: str = "") -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(0.01)


class RecordingSink:
    """A NodeSink that records every call and keeps the resulting view."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, Any]] = []
        self.nodes: dict[str, NodeFacts] = {}
        self.healthy: bool | None = None
        self.reason: str | None = None

    def replace_all(self, nodes: Iterable[NodeFacts]) -> None:
        with self.lock:
            self.nodes = {n.name: n for n in nodes}
            self.calls.append(("replace_all", len(self.nodes)))

    def upsert(self, node: NodeFacts) -> None:
        with self.lock:
            self.calls.append(("upsert", node))
            self.nodes[node.name] = node

    def delete(self, name: str) -> None:
        with self.lock:
            self.calls.append(("delete", name))
            self.nodes.pop(name, None)

    def set_healthy(self, healthy: bool, reason: str | None = None) -> None:
        with self.lock:
            self.calls.append(("healthy", healthy))
            self.healthy = healthy
            self.reason = None if healthy else reason

    def count(self, kind: str) -> int:
        with self.lock:
            return sum(1 for call in self.calls if call[0] == kind)

    def get(self, name: str) -> NodeFacts | None:
        with self.lock:
            return self.nodes.get(name)


@contextmanager
def running(source: KubeNodeSource, sink: RecordingSink) -> Iterator[threading.Event]:
    """Run ``source`` in a thread; on exit set the stop event and require a prompt return."""
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(sink, stop), daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(timeout=3)
        assert not thread.is_alive(), "KubeNodeSource.run did not return after stop"
