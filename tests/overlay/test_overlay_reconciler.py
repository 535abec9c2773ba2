"""The overlay reconciler (sync.overlay) with the real kernel adapter in a namespace:
full and incremental reconciles, deferred deletes, self-heal within 1 s, stop."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from tests.overlay.overlay_helpers import (
    LOWER_MTU,
    UNDERLAY4,
    UNDERLAY6,
    entries,
    link,
    same,
    two_nodes,
    wait_for,
)
from xcluster_cni_lib.core.overlay import Entries, OverlaySettings, plan_overlay, vtep_mac
from xcluster_cni_lib.core.values import NodeFacts
from xcluster_cni_lib.kernel.vxlan import VxlanKernel
from xcluster_cni_lib.sync.nodecache import NodeCache
from xcluster_cni_lib.sync.overlay import OverlayMetrics, OverlayReconciler
from xcluster_cni_lib.testing.netns import run_in

pytestmark = pytest.mark.root

ip = ipaddress.ip_address
DEV = "xcvxr"
SETTINGS = OverlaySettings(DEV, 7)


def facts(i: int, *, family: int = 4, name: str | None = None) -> NodeFacts:
    """Node ``n<i>``: pod CIDRs 10.200.<i>.0/24 and fd00:10:244:<i>::/64; node
    ``n0``/``n1`` hold the namespaces' underlay addresses, others made-up ones."""
    if i < 2:
        addr = UNDERLAY4[i] if family == 4 else UNDERLAY6[i]
    else:
        addr = f"192.168.{50 + i // 250}.{i % 250 + 3}" if family == 4 else f"fd50::{i + 3:x}"
    return NodeFacts(
        name or f"n{i}",
        pod_cidrs=(f"10.{200 + i // 256}.{i % 256}.0/24", f"fd00:10:244:{i:x}::/64"),
        internal_ips=(addr,),
    )


@pytest.fixture
def nodes() -> Iterator[tuple[str, str]]:
    with two_nodes() as pair:
        yield pair


class Running:
    """A reconciler with its loop and the kernel monitor in threads."""

    def __init__(self, ns: str, cache: NodeCache) -> None:
        self.kernel = VxlanKernel(ns)
        self.metrics_registry = CollectorRegistry()
        self.metrics = OverlayMetrics(self.metrics_registry)
        self.rec = OverlayReconciler(
            cache, self.kernel, settings=SETTINGS, node_name="n0", metrics=self.metrics
        )
        cache.subscribe(self.rec.notify)
        self.stop = threading.Event()
        assert self.kernel.monitor is not None
        self.threads = [
            threading.Thread(target=self.rec.run, args=(self.stop,), daemon=True),
            threading.Thread(
                target=self.kernel.monitor.run,
                args=(self.rec.notify_kernel, self.stop),
                daemon=True,
            ),
        ]
        for t in self.threads:
            t.start()

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(5)
        self.kernel.close()


def cache_of(*items: NodeFacts, healthy: bool = True) -> NodeCache:
    cache = NodeCache()
    cache.replace_all(items)
    cache.set_healthy(healthy)
    return cache


def wanted(cache: NodeCache, own: str = "n0") -> Entries:
    return plan_overlay(cache.snapshot().networks, own=own, settings=SETTINGS).entries()


def test_full_reconcile_makes_device_and_entries(nodes: tuple[str, str]) -> None:
    ns = nodes[0]
    cache = cache_of(*(facts(i) for i in range(5)))
    k = VxlanKernel(ns, monitor=False)
    try:
        rec = OverlayReconciler(cache, k, settings=SETTINGS, node_name="n0")
        result = rec.run_once()
        assert result.device == "created" and result.put == 4 * 3 and rec.ready
        got = link(ns, DEV)
        assert got is not None
        assert got["address"] == vtep_mac(ip(UNDERLAY4[0])) and got["mtu"] == LOWER_MTU - 50
        assert got["linkinfo"]["info_data"]["id"] == 7
        assert same(entries(ns, DEV), wanted(cache))
        assert rec.entries_installed == 12 and rec.problems == []
        again = rec.run_once()
        assert again.put == again.deleted == 0 and again.device == "unchanged"
    finally:
        k.close()


def test_ipv6_underlay(nodes: tuple[str, str]) -> None:
    ns = nodes[0]
    cache = cache_of(*(facts(i, family=6) for i in range(3)))
    k = VxlanKernel(ns, monitor=False)
    try:
        rec = OverlayReconciler(cache, k, settings=SETTINGS, node_name="n0")
        assert rec.run_once().device == "created"
        got = link(ns, DEV)
        assert got is not None and got["mtu"] == LOWER_MTU - 70
        assert got["linkinfo"]["info_data"]["local6"] == UNDERLAY6[0]
        assert same(entries(ns, DEV), wanted(cache))
        assert entries(ns, DEV).fdb[vtep_mac(ip(UNDERLAY6[1]))] == ip(UNDERLAY6[1])
    finally:
        k.close()


def test_incremental_touches_only_the_changed_peer(nodes: tuple[str, str]) -> None:
    ns = nodes[0]
    cache = cache_of(*(facts(i) for i in range(20)))
    k = VxlanKernel(ns)
    try:
        rec = OverlayReconciler(cache, k, settings=SETTINGS, node_name="n0")
        rec.run_once()
        echo = rec.run_changes()  # the kernel's events of our own writes: nothing to do
        assert echo is None or (echo.put, echo.deleted, echo.full) == (0, 0, False)
        cache.upsert(facts(30))
        r = rec.run_changes()
        assert r is not None and not r.full and (r.put, r.deleted) == (3, 0)
        moved = NodeFacts("n30", pod_cidrs=facts(30).pod_cidrs, internal_ips=("192.168.50.99",))
        cache.upsert(moved)
        r = rec.run_changes()
        # new MAC: both neighbours re-pointed, the new FDB entry put, the old one deleted
        assert r is not None and not r.full and (r.put, r.deleted) == (3, 1)
        cache.delete("n30")
        r = rec.run_changes()
        assert r is not None and not r.full and (r.put, r.deleted) == (0, 3)
        assert same(entries(ns, DEV), wanted(cache))
        assert rec.entries_restored == 0
    finally:
        k.close()


def test_problem_nodes_are_named(nodes: tuple[str, str]) -> None:
    cache = cache_of(facts(0), facts(1), facts(2, family=6))
    k = VxlanKernel(nodes[0], monitor=False)
    try:
        rec = OverlayReconciler(cache, k, settings=SETTINGS, node_name="n0")
        rec.run_once()
        assert [p.node for p in rec.problems] == ["n2"]
        assert rec.ready  # the others work
        unknown = OverlayReconciler(cache, k, settings=SETTINGS, node_name="zz")
        r = unknown.run_once()
        assert r.device == "none" and not unknown.ready
        assert "not among the nodes" in unknown.problems[0].reason
    finally:
        k.close()


def test_no_deletes_before_sync_or_while_unhealthy(nodes: tuple[str, str]) -> None:
    ns = nodes[0]
    cache = cache_of(*(facts(i) for i in range(4)))
    k = VxlanKernel(ns, monitor=False)
    try:
        OverlayReconciler(cache, k, settings=SETTINGS, node_name="n0").run_once()
        before = entries(ns, DEV)
        # a new daemon whose list has not come yet: keeps everything
        fresh = NodeCache()
        fresh.upsert(facts(0))
        r = OverlayReconciler(fresh, k, settings=SETTINGS, node_name="n0").run_once()
        assert r.deferred_deletes == 9 and r.deleted == 0
        assert same(entries(ns, DEV), before)
        # the source is unhealthy: a deleted node's entries stay
        sick = cache_of(*(facts(i) for i in range(3)), healthy=False)
        r = OverlayReconciler(sick, k, settings=SETTINGS, node_name="n0").run_once()
        assert r.deferred_deletes == 3 and same(entries(ns, DEV), before)
        sick.set_healthy(True)
        r = OverlayReconciler(sick, k, settings=SETTINGS, node_name="n0").run_once()
        assert r.deleted == 3
    finally:
        k.close()


def test_tampering_is_repaired_within_a_second(nodes: tuple[str, str]) -> None:
    ns = nodes[0]
    cache = cache_of(*(facts(i) for i in range(10)))
    run = Running(ns, cache)
    try:
        want = wanted(cache)
        wait_for(lambda: run.rec.ready and same(entries(ns, DEV), want), what="first sync")
        b_mac = vtep_mac(ip(UNDERLAY4[1]))
        # one neighbour entry
        run_in(ns, ["ip", "neigh", "del", "10.200.1.0", "dev", DEV])
        took = wait_for(lambda: same(entries(ns, DEV), want), 1.0, what="neighbour back")
        # one changed behind our back
        run_in(ns, ["ip", "neigh", "replace", "10.200.2.0", "lladdr", b_mac, "dev", DEV])
        took = max(took, wait_for(lambda: same(entries(ns, DEV), want), 1.0, what="nb fixed"))
        # one FDB entry
        run_in(ns, ["bridge", "fdb", "del", b_mac, "dev", DEV])
        took = max(took, wait_for(lambda: same(entries(ns, DEV), want), 1.0, what="fdb back"))
        # the device itself
        run_in(ns, ["ip", "link", "del", DEV])
        took = max(
            took,
            wait_for(
                lambda: link(ns, DEV) is not None and same(entries(ns, DEV), want),
                1.0,
                what="device back",
            ),
        )
        # its MTU
        run_in(ns, ["ip", "link", "set", DEV, "mtu", "1200"])
        wait_for(lambda: (link(ns, DEV) or {}).get("mtu") == LOWER_MTU - 50, 1.0, what="mtu back")
        assert took < 1.0
        wait_for(lambda: run.rec.entries_restored >= 3, 1.0, what="restores counted")
        assert run.rec.device_restored >= 1
        sample = run.metrics_registry.get_sample_value
        assert (sample("xcluster_overlay_entries_restored_total") or 0) >= 3
        assert sample("xcluster_overlay_device_restored_total") == run.rec.device_restored
        assert sample("xcluster_overlay_entries_installed") == 27
        # a stray entry of ours is removed
        run_in(ns, ["ip", "neigh", "add", "10.99.0.0", "lladdr", b_mac, "dev", DEV])
        wait_for(lambda: same(entries(ns, DEV), want), 1.0, what="stray entry gone")
    finally:
        run.close()


def test_running_follows_nodes_and_stop_leaves_everything(nodes: tuple[str, str]) -> None:
    ns = nodes[0]
    cache = cache_of(*(facts(i) for i in range(3)))
    run_in(ns, ["ip", "neigh", "add", "192.168.50.77", "lladdr", "02:00:00:00:00:77", "dev", "u0"])
    run = Running(ns, cache)
    try:
        wait_for(lambda: same(entries(ns, DEV), wanted(cache)), what="first sync")
        cache.upsert(facts(3))
        wait_for(lambda: same(entries(ns, DEV), wanted(cache)), 1.0, what="node added")
        cache.delete("n2")
        wait_for(lambda: same(entries(ns, DEV), wanted(cache)), 1.0, what="node deleted")
        # the source goes away: nothing is deleted
        cache.set_healthy(False)
        cache.delete("n1")
        wait_for(lambda: not run.rec.pending, 1.0)
        assert len(entries(ns, DEV).fdb) == 2
    finally:
        run.close()
    left = entries(ns, DEV)
    assert link(ns, DEV) is not None and len(left.fdb) == 2
    assert "192.168.50.77" in run_in(ns, ["ip", "neigh", "show", "dev", "u0"])
