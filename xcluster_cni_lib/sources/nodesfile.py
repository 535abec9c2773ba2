"""Node objects from a file: the node source for the ``plan`` command, the lab and tests.

A nodes file holds what ``kubectl get nodes -o json`` (or ``-o yaml``) prints: a
``NodeList``/``List`` (``{"kind": "NodeList", "items": [...]}``), a plain list of Node
objects, or a single Node. ``FileNodeSource`` watches such a file and feeds its nodes to a
``NodeSink`` whenever the file changes, so the daemon can run without an API server.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

from xcluster_cni_lib.core.errors import InputError
from xcluster_cni_lib.core.facts import extract_facts
from xcluster_cni_lib.core.ports import NodeSink
from xcluster_cni_lib.core.values import NodeFacts

log = logging.getLogger(__name__)

# A file modified this shortly before we finished reading it may change again within the
# same timestamp tick (the kernel's file times are coarse, a few ms), which stat cannot
# see: read such a file once more on the next poll.
_RACY_SECONDS = 0.1


def _decode(path: str, text: str) -> object:
    """JSON first (the fast path); YAML when the text is not JSON."""
    try:
        return json.loads(text)
    except ValueError as json_error:
        looks_like_json = text.lstrip()[:1] in ("{", "[")
        import yaml  # lazily: only YAML files pay for it

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as yaml_error:
            if looks_like_json:
                raise InputError(f"nodes file {path}: invalid JSON: {json_error}") from None
            detail = " ".join(str(yaml_error).split())
            raise InputError(f"nodes file {path}: neither JSON nor YAML: {detail}") from None


def _items(path: str, doc: object) -> list[object]:
    if doc is None:
        raise InputError(f"nodes file {path}: empty, expected a NodeList, a list or a Node")
    if isinstance(doc, list):
        return doc
    if not isinstance(doc, Mapping):
        raise InputError(
            f"nodes file {path}: expected a NodeList, a list or a Node, got a {type(doc).__name__}"
        )
    if "items" in doc:
        items = doc["items"]
        if items is None:  # `kubectl get nodes -o yaml` on an empty cluster: "items: []"
            return []
        if not isinstance(items, list):
            raise InputError(f"nodes file {path}: 'items' is a {type(items).__name__}, not a list")
        return items
    kind = doc.get("kind")
    if kind in (None, "Node") and isinstance(doc.get("metadata"), Mapping):
        return [doc]
    if kind is not None and kind != "Node":
        raise InputError(f"nodes file {path}: kind {kind!r} has no 'items' and is not a Node")
    raise InputError(f"nodes file {path}: a mapping without 'items' or 'metadata' is not a Node")


def load_node_list(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The Node objects in a JSON or YAML nodes file, as dicts.

    Raises ``InputError`` naming the file and what is wrong: unreadable, not JSON/YAML,
    not a node list, or an item that is not a Node object.
    """
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise InputError(f"nodes file {name}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise InputError(f"nodes file {name}: not UTF-8 text: {e.reason}") from None
    nodes: list[dict[str, Any]] = []
    for index, item in enumerate(_items(name, _decode(name, text))):
        if not isinstance(item, Mapping):
            raise InputError(
                f"nodes file {name}: item {index} is a {type(item).__name__}, not a Node object"
            )
        kind = item.get("kind")
        if kind is not None and kind != "Node":
            raise InputError(f"nodes file {name}: item {index} is a {kind}, not a Node")
        nodes.append(dict(item))
    return nodes


def load_node_facts(
    path: str | os.PathLike[str],
    *,
    cidr_annotation: str | None = None,
    address_annotation: str | None = None,
) -> list[NodeFacts]:
    """``load_node_list`` then ``extract_facts`` on every node."""
    return [
        extract_facts(n, cidr_annotation=cidr_annotation, address_annotation=address_annotation)
        for n in load_node_list(path)
    ]


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
        cidr_annotation: str | None = None,
        address_annotation: str | None = None,
        poll_interval: float = 0.2,
    ) -> None:
        self.path = os.fspath(path)
        self.cidr_annotation = cidr_annotation
        self.address_annotation = address_annotation
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
                    facts = load_node_facts(
                        self.path,
                        cidr_annotation=self.cidr_annotation,
                        address_annotation=self.address_annotation,
                    )
                except InputError as e:
                    if str(e) != last_error:
                        log.warning("%s; keeping the previous nodes", e)
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
