"""In-memory fakes of the I/O protocols, for this project's tests and users' own.

``FakeRouteTable`` behaves like a kernel route table bound to one protocol: it keeps our
routes, knows about *foreign* routes (another protocol's) that make adds conflict, can
refuse gateways as unreachable, and counts calls so a test can assert that nothing
happened. ``FakeNodeSource`` feeds a sink from a script the test drives from any thread.

Example::

    from xcluster_cni_lib.core.values import NodeFacts
    from xcluster_cni_lib.sync.nodecache import NodeCache
    from xcluster_cni_lib.sync.reconciler import Reconciler
    from xcluster_cni_lib.testing.fakes import FakeRouteTable

    cache = NodeCache()
    cache.replace_all([NodeFacts("a", ("10.0.1.0/24",), ("192.168.1.1",))])
    cache.set_healthy(True)
    table = FakeRouteTable(202)
    Reconciler(cache, table).run_once()
    assert [str(r.dst) for r in table.list_routes()] == ["10.0.1.0/24"]
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable

from xcluster_cni_lib.core.ports import NodeSink
from xcluster_cni_lib.core.values import (
    IPAddress,
    IPNetwork,
    NodeFacts,
    Plan,
    Route,
    RouteOutcome,
)


class FakeRouteTable:
    """Implements ``RouteTable`` in memory. Thread-safe.

    Attributes a test reads: ``list_calls``, ``apply_calls``, ``plans`` (every applied
    plan), ``routes`` (ours, by destination), ``foreign`` (other protocols' routes, by
    destination), ``unreachable`` (gateways the "kernel" refuses).
    """

    def __init__(self, protocol: int = 202, routes: Iterable[Route] = ()) -> None:
        self._protocol = protocol
        self.routes: dict[IPNetwork, Route] = {r.dst: r for r in routes}
        self.foreign: dict[IPNetwork, Route] = {}
        self.unreachable: set[IPAddress] = set()
        self.list_calls = 0
        self.apply_calls = 0
        self.plans: list[Plan] = []
        self.on_change: Callable[[], None] | None = None
        self._lock = threading.Lock()

    @property
    def protocol(self) -> int:
        return self._protocol

    def list_routes(self) -> list[Route]:
        with self._lock:
            self.list_calls += 1
            return sorted(self.routes.values(), key=_key)

    def apply(self, plan: Plan) -> list[RouteOutcome]:
        with self._lock:
            self.apply_calls += 1
            self.plans.append(plan)
            out = [self._one("add", r) for r in plan.add]
            out += [self._one("replace", r) for r in plan.replace]
            out += [self._delete(r) for r in plan.delete]
            return out

    def close(self) -> None:
        pass

    # -- what a test does to the "kernel" ------------------------------------------------------

    def remove_by_hand(self, dst: IPNetwork) -> None:
        """Someone deleted our route (``ip route del``); calls ``on_change`` like a monitor."""
        with self._lock:
            self.routes.pop(dst, None)
        if self.on_change is not None:
            self.on_change()

    def change_by_hand(self, route: Route) -> None:
        """Someone rewrote our route to ``route.dst`` (``ip route replace ... proto``
        with our protocol) or made one; calls ``on_change`` like a monitor."""
        with self._lock:
            self.routes[route.dst] = route
        if self.on_change is not None:
            self.on_change()

    def add_foreign(self, route: Route) -> None:
        """A route of another protocol now holds ``route.dst``."""
        with self._lock:
            self.foreign[route.dst] = route

    def _one(self, op: str, route: Route) -> RouteOutcome:
        if route.dst in self.foreign:
            return RouteOutcome(op, route, "conflict", "File exists (route of another protocol)")
        if route.gateway in self.unreachable:
            return RouteOutcome(op, route, "unreachable", "Network is unreachable")
        if op == "add" and route.dst in self.routes:
            return RouteOutcome(op, route, "error", "File exists")
        self.routes[route.dst] = route
        return RouteOutcome(op, route)

    def _delete(self, route: Route) -> RouteOutcome:
        if self.routes.get(route.dst) != route:
            return RouteOutcome("delete", route, "gone", "No such process")
        del self.routes[route.dst]
        return RouteOutcome("delete", route)


def _key(route: Route) -> tuple[int, int, int]:
    return (route.family, int(route.dst.network_address), route.dst.prefixlen)


class FakeNodeSource:
    """Implements ``NodeSource``: the test scripts what the "API server" says.

    ``run`` first delivers a full list of ``initial`` (unless ``list_ok`` is false, in
    which case it waits for :meth:`relist`), marks the sink healthy, then replays the
    events a test queues with :meth:`upsert`, :meth:`delete`, :meth:`set_healthy` and
    :meth:`relist`, until ``stop`` is set.
    """

    def __init__(self, initial: Iterable[NodeFacts] = (), *, list_ok: bool = True) -> None:
        self.nodes: dict[str, NodeFacts] = {n.name: n for n in initial}
        self.list_ok = list_ok
        self.restarts = 0
        self.relists = 0
        self._events: queue.Queue[Callable[[NodeSink], None]] = queue.Queue()
        self.idle = threading.Event()  # set whenever the event queue has been drained

    def upsert(self, node: NodeFacts) -> None:
        self.nodes[node.name] = node
        self._events.put(lambda sink: sink.upsert(node))

    def delete(self, name: str) -> None:
        self.nodes.pop(name, None)
        self._events.put(lambda sink: sink.delete(name))

    def set_healthy(self, healthy: bool) -> None:
        self._events.put(lambda sink: sink.set_healthy(healthy))

    def relist(self) -> None:
        """Deliver the current node set as a full list (as after a 410 Gone)."""
        self.relists += 1
        self._events.put(lambda sink: sink.replace_all(list(self.nodes.values())))

    def run(self, sink: NodeSink, stop: threading.Event) -> None:
        if self.list_ok:
            sink.replace_all(list(self.nodes.values()))
            sink.set_healthy(True)
        while not stop.is_set():
            try:
                event = self._events.get(timeout=0.05)
            except queue.Empty:
                self.idle.set()
                continue
            self.idle.clear()
            event(sink)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Block until every queued event has been delivered."""
        self.idle.clear()
        return self.idle.wait(timeout)
