"""The node cache and the reconciler against the in-memory fakes (no root needed)."""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from xcluster_cni_lib.core.values import NodeFacts, Route
from xcluster_cni_lib.metrics import DaemonMetrics
from xcluster_cni_lib.nodecache import NodeCache
from xcluster_cni_lib.reconciler import Reconciler, SyncResult
from xcluster_cni_lib.testing.fakes import FakeRouteTable


def node(i: int, *, gw: str | None = None, cidr: str | None = None) -> NodeFacts:
    return NodeFacts(
        name=f"n{i}",
        pod_cidrs=(cidr or f"10.{i // 256}.{i % 256}.0/24", f"fd00:{i:x}::/64"),
        internal_ips=(gw or f"192.168.{i // 256}.{i % 256 + 1}", f"fc00::{i + 1:x}"),
    )


def route(dst: str, gw: str) -> Route:
    return Route(ipaddress.ip_network(dst), ipaddress.ip_address(gw))


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


def synced_cache(*facts: NodeFacts) -> NodeCache:
    cache = NodeCache(cidr_annotation=None, address_annotation=None)
    cache.replace_all(facts)
    cache.set_healthy(True)
    return cache


@pytest.fixture
def loop() -> Iterator[Callable[[Reconciler], list[SyncResult | None]]]:
    """Runs a reconciler loop in a thread; yields a starter returning its iteration log."""
    stop = threading.Event()
    threads: list[threading.Thread] = []
    recs: list[Reconciler] = []

    def start(rec: Reconciler) -> list[SyncResult | None]:
        recs.append(rec)
        seen: list[SyncResult | None] = []
        rec.on_iteration = seen.append
        rec.cache.subscribe(rec.notify)
        t = threading.Thread(target=rec.run, args=(stop,), daemon=True)
        threads.append(t)
        t.start()
        wait_for(lambda: len(seen) >= 1)
        return seen

    yield start
    stop.set()
    for rec in recs:
        rec.notify()  # wake the loop so that it sees `stop` at once
    for t in threads:
        t.join(timeout=2)
        assert not t.is_alive()


def test_routes_follow_the_cache_in_both_families() -> None:
    cache = synced_cache(node(1), node(2))
    table = FakeRouteTable()
    result = Reconciler(cache, table).run_once()
    assert result.added == 4 and result.ok
    assert table.routes[ipaddress.ip_network("fd00:2::/64")].gateway == ipaddress.ip_address(
        "fc00::3"
    )
    cache.upsert(node(2, gw="192.168.0.99"))
    cache.delete("n1")
    result = Reconciler(cache, table).run_once()
    assert (result.replaced, result.deleted) == (1, 2)
    assert sorted(str(r.gateway) for r in table.routes.values()) == ["192.168.0.99", "fc00::3"]


def test_heartbeat_costs_no_list_no_apply_no_wakeup() -> None:
    cache = synced_cache(node(1), node(2))
    table = FakeRouteTable()
    rec = Reconciler(cache, table)
    cache.subscribe(rec.notify)
    rec.run_once()
    rec._wake.clear()
    calls = (table.list_calls, table.apply_calls, cache.generation)
    for _ in range(100):
        cache.upsert(node(1))  # same routing facts: what a kubelet heartbeat yields
    assert not rec.pending
    assert (table.list_calls, table.apply_calls, cache.generation) == calls
    assert cache.unchanged_events == 100
    cache.upsert(node(1, gw="192.168.9.9"))
    assert rec.pending


def test_a_burst_of_100_changes_costs_few_syncs(loop: Callable[..., list[SyncResult]]) -> None:
    cache = synced_cache()
    table = FakeRouteTable()
    seen = loop(Reconciler(cache, table, resync_interval=3600))
    before = len(seen)
    for i in range(100):
        cache.upsert(node(i))
    wait_for(lambda: len(table.routes) == 200)
    assert len(seen) - before <= 4, f"{len(seen) - before} syncs for one burst"


def test_an_isolated_change_is_applied_at_once(loop: Callable[..., list[SyncResult]]) -> None:
    cache = synced_cache(node(1))
    table = FakeRouteTable()
    # A long window makes the difference plain: held changes would wait ~1 s.
    rec = Reconciler(cache, table, resync_interval=3600, coalesce=1.0)
    seen = loop(rec)
    time.sleep(1.05)  # the window opened by the first sync is over: we are idle
    t0 = time.monotonic()
    cache.upsert(node(2))
    wait_for(lambda: len(table.routes) == 4)
    assert time.monotonic() - t0 < 0.5
    # A second change right after is batched behind the window (trailing edge).
    cache.upsert(node(3))
    cache.upsert(node(4))
    wait_for(lambda: len(table.routes) == 8, timeout=3)
    assert time.monotonic() - t0 > 0.9
    assert len(seen) == 3


def test_nothing_is_deleted_before_the_first_full_list() -> None:
    stale = route("10.9.9.0/24", "192.168.9.9")
    table = FakeRouteTable(routes=[stale])
    cache = NodeCache(cidr_annotation=None, address_annotation=None)
    cache.upsert(node(1))  # an event before the first LIST completed
    cache.set_healthy(True)
    result = Reconciler(cache, table).run_once()
    assert stale.dst in table.routes
    assert result.added == 2 and result.deferred_deletes == 1
    assert not any(p.delete for p in table.plans)
    cache.replace_all([node(1)])
    result = Reconciler(cache, table).run_once()
    assert stale.dst not in table.routes and result.deleted == 1


def test_an_unhealthy_source_deletes_nothing_but_keeps_adding() -> None:
    cache = synced_cache(node(1), node(2))
    table = FakeRouteTable()
    rec = Reconciler(cache, table)
    rec.run_once()
    cache.set_healthy(False)
    cache.replace_all([node(1)])  # a view that lost n2 while the source is in trouble
    table.remove_by_hand(ipaddress.ip_network("10.0.1.0/24"))
    result = rec.run_once()
    assert ipaddress.ip_network("10.0.2.0/24") in table.routes  # kept
    assert ipaddress.ip_network("10.0.1.0/24") in table.routes  # restored all the same
    assert result.deferred_deletes == 2 and result.restored == 1
    cache.set_healthy(True)
    assert rec.run_once().deleted == 2


def test_failed_routes_are_logged_and_retried_soon(
    loop: Callable[..., list[SyncResult]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    cache = synced_cache(node(1), node(2))
    table = FakeRouteTable()
    table.unreachable.add(ipaddress.ip_address("192.168.0.2"))
    metrics = DaemonMetrics()
    seen = loop(Reconciler(cache, table, resync_interval=3600, metrics=metrics))
    assert seen[0] is not None and len(seen[0].failures) == 1
    assert len(table.routes) == 3  # the other routes went in
    failed = [r for r in caplog.records if r.getMessage() == "route operation failed"]
    assert failed and failed[0].fields["dst"] == "10.0.1.0/24"  # type: ignore[attr-defined]
    assert failed[0].fields["reason"] == "Network is unreachable"  # type: ignore[attr-defined]
    table.unreachable.clear()  # the gateway became reachable; nobody notifies
    wait_for(lambda: len(table.routes) == 4, timeout=2)
    text = metrics.render().decode()
    assert 'xcluster_route_operation_errors_total{op="add",reason="unreachable"}' in text


def test_conflicts_are_reported_and_retried(
    loop: Callable[..., list[SyncResult]], caplog: pytest.LogCaptureFixture
) -> None:
    cache = synced_cache(node(1))
    table = FakeRouteTable()
    table.add_foreign(route("10.0.1.0/24", "192.168.50.50"))
    metrics = DaemonMetrics()
    loop(Reconciler(cache, table, resync_interval=3600, metrics=metrics))
    assert any("conflict" in r.getMessage() for r in caplog.records)
    assert table.foreign[ipaddress.ip_network("10.0.1.0/24")].gateway == ipaddress.ip_address(
        "192.168.50.50"
    )
    wait_for(lambda: "xcluster_route_conflicts_total 2.0" in metrics.render().decode())
    del table.foreign[ipaddress.ip_network("10.0.1.0/24")]
    wait_for(lambda: ipaddress.ip_network("10.0.1.0/24") in table.routes, timeout=3)


def test_a_route_removed_by_hand_is_restored(loop: Callable[..., list[SyncResult]]) -> None:
    cache = synced_cache(node(1))
    table = FakeRouteTable()
    metrics = DaemonMetrics()
    rec = Reconciler(cache, table, resync_interval=3600, metrics=metrics)
    table.on_change = rec.notify_kernel
    loop(rec)
    dst = ipaddress.ip_network("10.0.1.0/24")
    table.remove_by_hand(dst)
    wait_for(lambda: dst in table.routes, timeout=1)
    wait_for(lambda: "xcluster_routes_restored_total 1.0" in metrics.render().decode())


def test_the_own_node_gets_no_route() -> None:
    cache = synced_cache(node(1), node(2))
    table = FakeRouteTable()
    Reconciler(cache, table, node_name="n1").run_once()
    assert {str(d) for d in table.routes} == {"10.0.2.0/24", "fd00:2::/64"}


def test_a_malformed_node_is_skipped_with_a_log_line_naming_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = NodeCache(cidr_annotation="example.com/cidrs", address_annotation=None)
    good = NodeFacts("good", internal_ips=("192.168.0.1",), cidr_annotation="10.1.0.0/24")
    bad = NodeFacts("bad", internal_ips=("192.168.0.2",), cidr_annotation="10.2.0.0/33")
    cache.replace_all([good, bad])
    cache.set_healthy(True)
    table = FakeRouteTable()
    metrics = DaemonMetrics()
    result = Reconciler(cache, table, metrics=metrics).run_once()
    assert {str(d) for d in table.routes} == {"10.1.0.0/24"}
    assert result.skipped_nodes == 1
    skipped = [r for r in caplog.records if r.getMessage() == "node skipped"]
    assert [r.fields["node"] for r in skipped] == ["bad"]  # type: ignore[attr-defined]
    assert skipped[0].fields["key"] == "example.com/cidrs"  # type: ignore[attr-defined]
    assert 'xcluster_nodes_skipped{reason="invalid_annotation"} 1.0' in metrics.render().decode()
    caplog.clear()
    cache.upsert(bad)  # the same bad value again: no new log line
    cache.replace_all([good, bad])
    assert not [r for r in caplog.records if r.getMessage() == "node skipped"]


def test_the_loop_stops_promptly(loop: Callable[..., list[SyncResult]]) -> None:
    cache = synced_cache(node(1))
    rec = Reconciler(cache, FakeRouteTable(), resync_interval=3600)
    stop = threading.Event()
    t = threading.Thread(target=rec.run, args=(stop,))
    t.start()
    wait_for(lambda: rec.syncs >= 1)
    t0 = time.monotonic()
    stop.set()
    t.join(timeout=2)
    assert not t.is_alive() and time.monotonic() - t0 < 0.7
