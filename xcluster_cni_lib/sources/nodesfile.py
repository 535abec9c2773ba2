"""Node objects from a file: the node source for the ``plan`` command, the lab and tests.

A nodes file holds what ``kubectl get nodes -o json`` (or ``-o yaml``) prints: a
``NodeList``/``List`` (``{"kind": "NodeList", "items": [...]}``), a plain list of Node
objects, or a single Node. ``FileNodeSource`` watches such a file and feeds its nodes to a
``NodeSink`` whenever the file changes, so the daemon can run without an API server.
Reading the file is ``support.nodelist.load_node_list`` (re-exported here), the reader the
IPAM plugins' ``nodesFile`` uses too.
"""

from __future__ import annotations

import os
import threading
import time

from xcluster_cni_lib.core.errors import InputError
from xcluster_cni_lib.core.facts import extract_facts
from xcluster_cni_lib.core.ports import NodeSink
from xcluster_cni_lib.core.values import NO_ANNOTATIONS, Annotations, NodeFacts
from xcluster_cni_lib.support import jsonlog
from xcluster_cni_lib.support.nodelist import load_node_list

__all__ = ["FileNodeSource", "load_node_facts", "load_node_list"]

log = jsonlog.get_logger(__name__)

# A file modified this shortly before we finished reading it may change again within the
# same timestamp tick (the kernel's file times are coarse, a few ms), which stat cannot
# see: read such a file once more on the next poll.
_RACY_SECONDS = 0.1


def load_node_facts(
    path: str | os.PathLike[str], *, annotations: Annotations = NO_ANNOTATIONS
) -> list[NodeFacts]:
    """``load_node_list`` then ``extract_facts`` on every node; the facts carry
    ``annotations``."""
    return [extract_facts(n, annotations=annotations) for n in load_node_list(path)]


_Signature = tuple[int, int, int, int]  # (st_dev, st_ino, st_mtime_ns, st_size)


def _signature(path: str) -> _Signature | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


class FileNodeSource:
    """A ``NodeSource`` that reads a nodes file on start and again whenever it changes.

    Changes are found by polling ``stat`` (device, inode, mtime, size) every
    ``poll_interval`` seconds, so an in-place write and an atomic rename both count. Each
    good read calls ``sink.replace_all`` (skipped when the nodes' facts did not change). A
    missing or broken file keeps the sink's previous view, logs a warning naming the file
    and the error, and calls ``sink.set_healthy(False)``; the next good read calls
    ``set_healthy(True)``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        annotations: Annotations = NO_ANNOTATIONS,
        poll_interval: float = 0.2,
    ) -> None:
        self.path = os.fspath(path)
        self.annotations = annotations
        self.poll_interval = poll_interval

    def run(self, sink: NodeSink, stop: threading.Event) -> None:
        """Feed ``sink`` until ``stop`` is set; returns within one poll interval of it."""
        last_signature: _Signature | None = None
        read_again = True  # read on start, even when the file is missing (to report it)
        last_facts: list[NodeFacts] | None = None
        healthy: bool | None = None
        last_error: str | None = None

        def set_healthy(value: bool) -> None:
            nonlocal healthy
            if healthy is not value:
                healthy = value
                sink.set_healthy(value)

        while not stop.is_set():
            signature = _signature(self.path)
            if read_again or signature != last_signature:
                last_signature = signature
                read_again = False
                try:
                    facts = load_node_facts(self.path, annotations=self.annotations)
                except InputError as e:
                    if str(e) != last_error:
                        log.warning(
                            "nodes file unusable; keeping the previous nodes",
                            path=self.path,
                            error=str(e),
                        )
                        last_error = str(e)
                    set_healthy(False)
                else:
                    last_error = None
                    if facts != last_facts:
                        last_facts = facts
                        sink.replace_all(facts)
                    set_healthy(True)
                if signature is not None and time.time() - signature[2] / 1e9 < _RACY_SECONDS:
                    read_again = True
            stop.wait(self.poll_interval)
