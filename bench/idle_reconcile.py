"""Idle reconcile: a full reconcile when nothing changed, in-process (the library's
``Reconciler`` with a ``NodeCache`` of N realistic nodes and a ``NetlinkRouteTable``
whose routes are already in place), in a throwaway namespace (run by ``run_in_netns``).

Reported: the CPU time of one reconcile (``time.process_time``; median of ``repeats``),
its wall time, the split between the kernel dump (``list_routes``) and the pure planning
(``desired_routes`` + ``plan_routes``), and the netlink writes it made: the route
operations handed to ``apply`` (counted by a wrapper around the table) and the kernel's
change notifications (``ip monitor``). Both should be zero.
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import Json, RouteMonitor, child_main, median, progress, setup_gateways
from bench.nodes import addresses_of, make_nodes, with_new_addresses
from xcluster_cni_lib.core.facts import extract_facts
from xcluster_cni_lib.core.values import Plan, Route, RouteOutcome

PROTOCOL = 202
MOVED = 1 << 15  # a re-addressed node moves past every other node's address


class CountingTable:
    """A ``RouteTable`` wrapper that counts the route operations handed to ``apply``."""

    def __init__(self, table: object) -> None:
        self.table = table
        self.writes = 0
        self.apply_calls = 0

    @property
    def protocol(self) -> int:
        return int(self.table.protocol)  # type: ignore[attr-defined]

    def list_routes(self) -> list[Route]:
        routes: list[Route] = self.table.list_routes()  # type: ignore[attr-defined]
        return routes

    def apply(self, plan: Plan) -> list[RouteOutcome]:
        self.apply_calls += 1
        self.writes += len(plan)
        outcomes: list[RouteOutcome] = self.table.apply(plan)  # type: ignore[attr-defined]
        return outcomes

    def __getattr__(self, name: str) -> Any:
        # Everything else (``changed_destinations``, ``routes_to`` of a tracking table)
        # goes to the real table, so the reconciler sees what it would see in the daemon.
        return getattr(self.table, name)


def _desired(view: Any, find_own: Any, desired_routes: Any) -> list[Route]:
    """The desired routes of a cache view, as the reconciler computes them (the core's
    signatures have moved while the project grew: accept both)."""
    try:
        own = find_own(view.facts, name="node-0", machine_id=None)
        routes, _ = desired_routes(view.networks, own=own.name if own else None)
    except (TypeError, AttributeError):
        own = find_own(view.networks, name="node-0", machine_id=None)
        routes, _ = desired_routes(view.networks, own=own)
    return list(routes)


def run(params: Json) -> Json:
    from xcluster_cni_lib.core.ownnode import find_own
    from xcluster_cni_lib.core.planning import desired_routes, plan_routes
    from xcluster_cni_lib.kernel.routetable import NetlinkRouteTable
    from xcluster_cni_lib.sync.nodecache import NodeCache
    from xcluster_cni_lib.sync.reconciler import Reconciler

    n: int = params["nodes"]
    repeats: int = params.get("repeats", 5)
    nodes = make_nodes(n)
    gateways = [a for node in nodes for a in addresses_of(node)]
    gateways += addresses_of(with_new_addresses(nodes[1], MOVED))
    setup_gateways(addresses_of(nodes[0]), gateways)
    facts = [extract_facts(node) for node in nodes]
    del nodes

    cache = NodeCache()
    cache.replace_all(facts)
    cache.set_healthy(True)
    raw = NetlinkRouteTable(PROTOCOL)
    table = CountingTable(raw)
    result: Json = {"nodes": n}
    try:
        with RouteMonitor(PROTOCOL) as monitor:
            reconciler = Reconciler(cache, table, node_name="node-0")
            t0, c0 = time.perf_counter(), time.process_time()
            first = reconciler.run_once()
            result["initial"] = {
                "wall": time.perf_counter() - t0,
                "cpu": time.process_time() - c0,
                "added": first.added,
                "failures": len(first.failures),
            }
            result["routes"] = first.installed
            monitor.wait(lambda present: len(present) >= first.installed, 30)

            writes0, changes0, calls0 = table.writes, monitor.changes, table.apply_calls
            cpu: list[float] = []
            wall: list[float] = []
            for _ in range(repeats):
                t0, c0 = time.perf_counter(), time.process_time()
                reconciler.run_once()
                cpu.append(time.process_time() - c0)
                wall.append(time.perf_counter() - t0)
            time.sleep(0.2)  # let any kernel notification reach the monitor
            result["cpu"] = median(cpu)
            result["cpu_samples"] = cpu
            result["wall"] = median(wall)
            result["netlink_writes"] = table.writes - writes0
            result["apply_calls"] = table.apply_calls - calls0
            result["kernel_route_changes"] = monitor.changes - changes0

            # one node changed (a re-addressed node): what each convergence costs the daemon
            moved = extract_facts(with_new_addresses(make_nodes(1, start=1)[0], MOVED))
            back = facts[1]
            change_cpu: list[float] = []
            change_wall: list[float] = []
            writes0 = table.writes
            # The daemon's path for a change: incremental where the reconciler can.
            on_change = getattr(reconciler, "run_changes", reconciler.run_once)
            on_change()
            for k in range(repeats):
                cache.upsert(moved if k % 2 == 0 else back)
                t0, c0 = time.perf_counter(), time.process_time()
                on_change()
                change_cpu.append(time.process_time() - c0)
                change_wall.append(time.perf_counter() - t0)
            cache.upsert(back)
            on_change()
            result["change"] = {
                "incremental": on_change is not reconciler.run_once,
                "cpu": median(change_cpu),
                "wall": median(change_wall),
                "writes_per_change": (table.writes - writes0) / (repeats + 1),
            }

            # where the time goes (``desired`` is only recomputed after a node change)
            split: dict[str, list[float]] = {
                "snapshot": [],
                "desired": [],
                "list_routes": [],
                "plan": [],
            }
            for _ in range(repeats):
                c0 = time.process_time()
                view = cache.snapshot()
                c1 = time.process_time()
                desired = _desired(view, find_own, desired_routes)
                c2 = time.process_time()
                present = raw.list_routes()
                c3 = time.process_time()
                plan_routes(desired, present)
                c4 = time.process_time()
                for key, value in zip(split, (c1 - c0, c2 - c1, c3 - c2, c4 - c3), strict=True):
                    split[key].append(value)
            result["split"] = {key: median(values) for key, values in split.items()}
    finally:
        close = getattr(raw, "close", None)
        if callable(close):
            close()
    progress(
        f"idle reconcile N={n}: CPU {result['cpu'] * 1000:.0f} ms, "
        f"{result['netlink_writes']} writes"
    )
    return result


if __name__ == "__main__":
    child_main(run)
