"""The agent's own Node, for the IPAM verbs it serves (``daemon.ipamserver``).

A served call never reads the API server: on a cache miss (and for STATUS) the verbs ask
the agent for its own Node object, whole (any annotation a network's config names).

``OwnNode`` is fed by a watch on that one node (``KubeNodeSource`` with the field
selector ``metadata.name=<node>``, whole objects). Every change is persisted atomically
to ``IPAM_NODE_FILE``, and the file is read at start: an agent restarted while the API
server is unreachable serves from the last known object, as a running agent does while
the API is down. A deleted node is forgotten (and its file removed): its pod CIDRs are
about to go to another node.

``NodesFileOwnNode`` reads the own node from the daemon's nodes file at each call (the
lab and tests run the agent on a nodes file).

Both are callables that return the object or raise ``CniError`` 11 (try again later)
naming the node and why it is unknown.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from xcluster_cni_lib.core.errors import InputError, shorten
from xcluster_cni_lib.core.facts import node_name
from xcluster_cni_lib.core.ownnode import find_own_object
from xcluster_cni_lib.plugin.protocol import TRY_AGAIN_LATER, CniError
from xcluster_cni_lib.support import jsonlog
from xcluster_cni_lib.support.atomicfile import write_atomic
from xcluster_cni_lib.support.nodelist import load_node_list

log = jsonlog.get_logger(__name__)

MAX_FILE_BYTES = 4 * 1024 * 1024  # the watch's own cap on one object


def node_selector(name: str) -> str:
    """The field selector of the one-node watch."""
    return f"metadata.name={name}"


def _whole(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """``KubeNodeSource``'s ``convert``: keep the object as it came."""
    return obj


class OwnNode:
    """The last known Node object named ``name``; a ``NodeSink`` of whole objects (the
    methods take what ``KubeNodeSource(convert=keep_whole)`` delivers). ``path``: where
    it is persisted (None: not persisted)."""

    keep_whole = staticmethod(_whole)

    def __init__(self, name: str, path: str | None) -> None:
        self.name = name
        self.path = path
        self._lock = threading.Lock()
        self._node: Mapping[str, Any] | None = None
        self._version: object = None
        self._why = "not listed yet"
        self.listed = False  # the API answered at least once since start
        self.healthy = False
        self.reason: str | None = "not listed yet"
        self._load()

    # -- what the verbs call ----------------------------------------------------------------

    def __call__(self) -> Mapping[str, Any]:
        with self._lock:
            node, why = self._node, self._why
        if node is None:
            raise CniError(
                TRY_AGAIN_LATER,
                f"the agent does not know its node {self.name} yet: {why}",
                "the runtime retries; see the agent's log and /readyz",
            )
        return node

    @property
    def known(self) -> bool:
        return self._node is not None

    # -- NodeSink --------------------------------------------------------------------------

    def replace_all(self, nodes: Iterable[Any]) -> None:
        own = next((n for n in nodes if node_name(n) == self.name), None)
        self.listed = True
        if own is None:
            self._forget("the API server has no such node")
        else:
            self._keep(own)

    def upsert(self, node: Any) -> None:
        if node_name(node) == self.name:
            self._keep(node)

    def delete(self, name: str) -> None:
        if name == self.name:
            self._forget("the node was deleted")

    def set_healthy(self, healthy: bool, reason: str | None = None) -> None:
        self.healthy = healthy
        self.reason = None if healthy else reason
        if not healthy and self._node is None:
            with self._lock:
                self._why = f"the API server cannot be read ({reason})"

    # -- state -----------------------------------------------------------------------------

    def _keep(self, node: Mapping[str, Any]) -> None:
        metadata = node.get("metadata")
        version = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
        with self._lock:
            changed = version is None or version != self._version
            self._node, self._version = node, version
        if changed:
            self._persist(node)

    def _forget(self, why: str) -> None:
        with self._lock:
            had = self._node is not None
            self._node, self._version, self._why = None, None, why
        if had:
            log.warning("own node unknown: served IPAM answers try-again", node=self.name, why=why)
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def _persist(self, node: Mapping[str, Any]) -> None:
        if self.path is None:
            return
        try:
            os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
            write_atomic(self.path, json.dumps(node).encode(), mode=0o600)
        except OSError as e:  # serving goes on from memory
            log.warning("own node not persisted", path=self.path, error=str(e))

    def _load(self) -> None:
        if self.path is None:
            return
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return
        except OSError as e:
            log.warning("persisted own node not read", path=self.path, error=str(e))
            return
        try:
            if len(data) > MAX_FILE_BYTES:
                raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
            node = json.loads(data)
            if not isinstance(node, dict) or node_name(node) != self.name:
                raise ValueError(f"not a Node object named {self.name}")
        except ValueError as e:
            log.warning("persisted own node ignored", path=self.path, error=shorten(str(e)))
            return
        metadata = node.get("metadata")
        self._node = node
        self._version = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
        log.info("own node loaded from file", node=self.name, path=self.path)


class NodesFileOwnNode:
    """The own node read from a nodes file at each call (by name, else by machine id)."""

    def __init__(self, path: str, name: str | None, machine_id: str | None) -> None:
        self.path = path
        self.name = name
        self.machine_id = machine_id

    def __call__(self) -> Mapping[str, Any]:
        try:
            found = find_own_object(
                load_node_list(self.path), name=self.name, machine_id=self.machine_id
            )
        except InputError as e:
            raise CniError(TRY_AGAIN_LATER, f"own node: {e}", self.path) from None
        if found is None:
            who = f"node {self.name}" if self.name else f"a node with machine-id {self.machine_id}"
            raise CniError(TRY_AGAIN_LATER, f"{who} is not in the nodes file", self.path)
        return found

    @property
    def known(self) -> bool:
        try:
            self()
        except CniError:
            return False
        return True
