"""The compact node cache: a ``NodeSink`` that keeps, per node, only the ``NodeFacts`` and
the parsed ``NodeNetwork`` (or the reason the node cannot be used).

An incoming fact is compared with the cached one first: a kubelet heartbeat (nothing
routing-relevant changed) costs one dict lookup and one equality check and notifies
nobody. Only real changes bump ``generation`` and call the listeners (the reconciler's
``notify``, a user's overlay script, ...). Listeners run on the source's thread and must
be quick (set an event, append to a queue).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable

import attrs

from xcluster_cni_lib.core.errors import InvalidNode
from xcluster_cni_lib.core.nodes import parse_facts, problem_of
from xcluster_cni_lib.core.ranges import DEFAULT_POLICY, RangePolicy
from xcluster_cni_lib.core.values import NodeFacts, NodeNetwork, Problem
from xcluster_cni_lib.support import jsonlog

log = jsonlog.get_logger(__name__)

Listener = Callable[[], None]

#: How many per-node changes ``changes_since`` remembers; older ones mean "everything".
JOURNAL_SIZE = 4096


@attrs.frozen
class CachedNode:
    """One node in the cache: its facts and either its network or why it was skipped."""

    facts: NodeFacts
    network: NodeNetwork | None
    problem: Problem | None = None


@attrs.frozen
class CacheView:
    """A consistent snapshot of the cache for one reconcile."""

    networks: tuple[NodeNetwork, ...]
    facts: tuple[NodeFacts, ...]
    skipped: tuple[Problem, ...]
    synced: bool
    healthy: bool
    generation: int


class NodeCache:
    """Implements ``NodeSink``; thread-safe (one writer, any number of readers).

    ``synced`` becomes true with the first complete ``replace_all`` and stays true;
    ``healthy`` follows ``set_healthy`` (initially false: nothing has been heard yet);
    ``health_reason`` is the reason given with the last ``set_healthy(False, reason)``
    (None while healthy).
    Each node is parsed with the annotation configuration its facts carry
    (``NodeFacts.annotations``, set by the node source).
    """

    def __init__(self, *, policy: RangePolicy = DEFAULT_POLICY) -> None:
        self.policy = policy  # the pod-CIDR rule nodes are parsed with (core.ranges)
        self._nodes: dict[str, CachedNode] = {}
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self.synced = False
        self.healthy = False
        self.health_reason: str | None = None
        self.generation = 0
        self.unchanged_events = 0  # upserts that changed nothing (heartbeats)
        # (generation, node name) per change; None as the name: a full list replaced all
        self._journal: deque[tuple[int, str | None]] = deque(maxlen=JOURNAL_SIZE)

    # -- listeners -------------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener()`` after every routing-relevant change, sync and health change."""
        self._listeners.append(listener)

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()

    # -- NodeSink --------------------------------------------------------------------------

    def upsert(self, node: NodeFacts) -> None:
        cached = self._nodes.get(node.name)
        if cached is not None and cached.facts == node:
            self.unchanged_events += 1
            return
        entry = self._parse(node, cached)
        with self._lock:
            self._nodes[node.name] = entry
            self.generation += 1
            self._journal.append((self.generation, node.name))
        log.debug("node changed", node=node.name, new=cached is None)
        self._notify()

    def delete(self, name: str) -> None:
        with self._lock:
            if self._nodes.pop(name, None) is None:
                return
            self.generation += 1
            self._journal.append((self.generation, name))
        log.debug("node deleted", node=name)
        self._notify()

    def replace_all(self, nodes: Iterable[NodeFacts]) -> None:
        fresh: dict[str, CachedNode] = {}
        changed = not self.synced
        old = self._nodes
        for facts in nodes:
            cached = old.get(facts.name)
            if cached is not None and cached.facts == facts:
                fresh[facts.name] = cached
            else:
                fresh[facts.name] = self._parse(facts, cached)
                changed = True
        if len(fresh) != len(old):
            changed = True
        with self._lock:
            self._nodes = fresh
            if changed:
                self.generation += 1
                self._journal.append((self.generation, None))
            first = not self.synced
            self.synced = True
        if first:
            log.info("node list synced", nodes=len(fresh))
        if changed:
            self._notify()

    def set_healthy(self, healthy: bool, reason: str | None = None) -> None:
        reason = None if healthy else reason
        if healthy == self.healthy:
            if reason != self.health_reason and not healthy:
                self.health_reason = reason
                log.debug("node source still unhealthy", reason=reason)
            return
        self.healthy = healthy
        self.health_reason = reason
        if healthy:
            log.info("node source healthy")
        else:
            log.warning("node source unhealthy; keeping routes as they are", reason=reason)
        self._notify()

    # -- readers ---------------------------------------------------------------------------

    def snapshot(self) -> CacheView:
        with self._lock:
            entries = list(self._nodes.values())
            synced, healthy, generation = self.synced, self.healthy, self.generation
        return CacheView(
            networks=tuple(e.network for e in entries if e.network is not None),
            facts=tuple(e.facts for e in entries),
            skipped=tuple(e.problem for e in entries if e.problem is not None),
            synced=synced,
            healthy=healthy,
            generation=generation,
        )

    def changes_since(self, generation: int) -> tuple[int, dict[str, CachedNode | None]] | None:
        """The nodes changed after ``generation`` (an earlier ``generation`` value):
        ``(current generation, {name: its entry now, or None if deleted})``. ``None``
        when that is not known node by node (a full list replaced the view since, or
        the journal does not reach back that far): read a ``snapshot`` instead."""
        with self._lock:
            current = self.generation
            if generation == current:
                return current, {}
            if generation > current:
                return None
            names: set[str] = set()
            reached = False
            for gen, name in reversed(self._journal):
                if gen <= generation:
                    reached = True
                    break
                if name is None:
                    return None
                names.add(name)
            if not reached and (not self._journal or self._journal[0][0] != generation + 1):
                return None
            return current, {name: self._nodes.get(name) for name in names}

    def get(self, name: str) -> CachedNode | None:
        return self._nodes.get(name)

    def names(self) -> list[str]:
        return list(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)

    # -- parsing ---------------------------------------------------------------------------

    def _parse(self, facts: NodeFacts, previous: CachedNode | None) -> CachedNode:
        try:
            network = parse_facts(facts, policy=self.policy)
        except InvalidNode as e:
            problem = problem_of(e)
            if previous is None or previous.problem != problem:
                log.warning(
                    "node skipped",
                    node=problem.node,
                    reason=problem.reason,
                    key=problem.key,
                    value=problem.value,
                )
            return CachedNode(facts=facts, network=None, problem=problem)
        if network.problems and (
            previous is None
            or previous.network is None
            or (previous.network.problems != network.problems)
        ):
            for p in network.problems:
                log.warning(
                    "node partly skipped", node=p.node, reason=p.reason, key=p.key, value=p.value
                )
        return CachedNode(facts=facts, network=network)
