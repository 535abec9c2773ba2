"""The I/O interfaces that services take as parameters. Implementations: ``kernel``
(``routetable.NetlinkRouteTable``, ``tracker.RouteTracker``), ``sources`` (Kubernetes
and file node sources), ``testing`` (in-memory fakes)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Protocol, runtime_checkable

from xcluster_cni_lib.core.values import IPNetwork, NodeFacts, Plan, Route, RouteOutcome


class NodeSink(Protocol):
    """Receives what a node source learns. ``replace_all`` is called after each complete
    LIST (the first one marks the view as synced); ``upsert``/``delete`` for watch events;
    ``set_healthy(False, reason=...)`` while the source cannot reach its backend or its
    answers cannot be used (the reason says which, for ``/readyz``)."""

    def replace_all(self, nodes: Iterable[NodeFacts]) -> None: ...

    def upsert(self, node: NodeFacts) -> None: ...

    def delete(self, name: str) -> None: ...

    def set_healthy(self, healthy: bool, reason: str | None = None) -> None: ...


class NodeSource(Protocol):
    """Feeds a sink until ``stop`` is set; returns soon after it is."""

    def run(self, sink: NodeSink, stop: threading.Event) -> None: ...


class RouteTable(Protocol):
    """A kernel route table bound to one route protocol number."""

    @property
    def protocol(self) -> int: ...

    def list_routes(self) -> list[Route]:
        """Routes of this protocol, both families."""
        ...

    def apply(self, plan: Plan) -> list[RouteOutcome]:
        """Apply a plan in batches; one outcome per planned route."""
        ...


@runtime_checkable
class TrackingRouteTable(RouteTable, Protocol):
    """A route table that also follows the kernel's changes, so that a reconciler can
    work on the destinations that changed instead of dumping the table
    (``kernel.routetable.NetlinkRouteTable``, whose tracker holds the one copy of our
    installed routes; a reconciler keeps none of its own)."""

    def changed_destinations(self) -> set[IPNetwork] | None:
        """Destinations whose routes changed since the last call or ``list_routes``, not
        counting this table's own writes; ``None`` when unknown (call ``list_routes``)."""
        ...

    def routes_to(self, dsts: Iterable[IPNetwork]) -> list[Route]:
        """Routes of this protocol to these destinations, as tracked (no dump)."""
        ...

    def installed_count(self) -> int:
        """How many routes of this protocol the table holds, as tracked: what
        ``list_routes`` would return, counted without a dump (O(1))."""
        ...


class KernelMonitor(Protocol):
    """Wakes a reconciler when the kernel changed something that can change our routes
    (``kernel.tracker.RouteTracker``, the tracker of a ``NetlinkRouteTable``, from
    ``table.track()``): calls ``on_change()`` until ``stop`` is set, returning soon after."""

    def run(self, on_change: Callable[[], None], stop: threading.Event) -> None: ...
