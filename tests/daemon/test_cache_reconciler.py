"""The node cache and the reconciler against the in-memory fakes (no root needed)."""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator

import pytest

from xcluster_cni_lib.core.values import (
    Annotations,
    IPNetwork,
    NodeFacts,
    Plan,
    Route,
    RouteOutcome,
)
from xcluster_cni_lib.sync.metrics import DaemonMetrics
from xcluster_cni_lib.sync.nodecache import JOURNAL_SIZE, NodeCache
from xcluster_cni_lib.sync.reconciler import Reconciler, SyncResult
from xcluster_cni_lib.testing.fakes import FakeRouteTable


def node(i: int, *, gw: str | None = None, cidr: str | None = None) -> NodeFacts:
    return NodeFacts(
        name=f"n{i}",
        pod_cidrs=(cidr or f"10.{i // 256}.{i % 256}.0/24", f"fd00:{i:x}::/64"),
        internal_ips=(gw or f"192.168.{i // 256}.{i % 256 + 1}", f"fc00::{i + 1:x}"),
    )


def route(dst: str, gw: str) -> Route:
    return Route(ipaddress.ip_network(dst), ipaddress.ip_address(gw))


ip = ipaddress.ip_address


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


def synced_cache(*facts: NodeFacts) -> NodeCache:
    cache = NodeCache()
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
    skipped = [0.0]  # time the reconciler's clock is ahead of the real one

    def clock() -> float:
        return time.monotonic() + skipped[0]

    rec = Reconciler(cache, table, resync_interval=3600, coalesce=1.0, clock=clock)
    seen = loop(rec)
    skipped[0] = 1.05  # the window opened by the first sync is over: we are idle
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
    cache = NodeCache()
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
    failed = [r for r in caplog.records if r.msg == "route operation failed"]
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
    cache = NodeCache()
    config = Annotations(cidr="example.com/cidrs")
    good = NodeFacts(
        "good", internal_ips=("192.168.0.1",), cidr_annotation="10.1.0.0/24", annotations=config
    )
    bad = NodeFacts(
        "bad", internal_ips=("192.168.0.2",), cidr_annotation="10.2.0.0/33", annotations=config
    )
    cache.replace_all([good, bad])
    cache.set_healthy(True)
    table = FakeRouteTable()
    metrics = DaemonMetrics()
    result = Reconciler(cache, table, metrics=metrics).run_once()
    assert {str(d) for d in table.routes} == {"10.1.0.0/24"}
    assert result.skipped_nodes == 1
    skipped = [r for r in caplog.records if r.msg == "node skipped"]
    assert [r.fields["node"] for r in skipped] == ["bad"]  # type: ignore[attr-defined]
    assert skipped[0].fields["key"] == "example.com/cidrs"  # type: ignore[attr-defined]
    assert 'xcluster_nodes_skipped{reason="invalid_annotation"} 1.0' in metrics.render().decode()
    caplog.clear()
    cache.upsert(bad)  # the same bad value again: no new log line
    cache.replace_all([good, bad])
    assert not [r for r in caplog.records if r.msg == "node skipped"]


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


# -- incremental reconciles ---------------------------------------------------------------


class TrackingTable(FakeRouteTable):
    """A ``FakeRouteTable`` that also tracks changes (``TrackingRouteTable``), like
    ``NetlinkRouteTable``: changes by hand or by another protocol are reported by
    destination; its own writes are not."""

    def __init__(self, protocol: int = 202, routes: Iterable[Route] = ()) -> None:
        super().__init__(protocol, routes)
        self.tracking = False
        self.valid = False
        self.changed: set[IPNetwork] = set()
        self.routes_to_calls = 0

    def changed_destinations(self) -> set[IPNetwork] | None:
        if not self.tracking:
            self.tracking = True
            return None
        if not self.valid:
            return None
        out, self.changed = self.changed, set()
        return out

    def routes_to(self, dsts: Iterable[IPNetwork]) -> list[Route]:
        self.routes_to_calls += 1
        return [self.routes[d] for d in dsts if d in self.routes]

    def installed_count(self) -> int:
        return len(self.routes)

    def list_routes(self) -> list[Route]:
        self.valid, self.changed = self.tracking, set()
        return super().list_routes()

    def remove_by_hand(self, dst: IPNetwork) -> None:
        self.changed.add(dst)
        super().remove_by_hand(dst)

    def change_by_hand(self, route: Route) -> None:
        self.changed.add(route.dst)
        super().change_by_hand(route)

    def add_foreign(self, route: Route) -> None:
        self.changed.add(route.dst)
        super().add_foreign(route)


def net(text: str) -> IPNetwork:
    return ipaddress.ip_network(text)


def test_a_node_change_is_planned_alone_without_listing_the_table() -> None:
    cache = synced_cache(*(node(i) for i in range(1, 50)))
    table = TrackingTable()
    rec = Reconciler(cache, table)
    assert rec.run_changes() is not None  # the first reconcile is a full one
    assert table.list_calls == 1 and len(table.routes) == 98
    assert rec.run_changes() is None  # nothing changed: nothing done
    cache.upsert(node(7, gw="192.168.7.7"))
    cache.upsert(node(60))
    cache.delete("n3")
    result = rec.run_changes()
    assert result is not None and not result.full
    assert table.list_calls == 1  # no dump
    assert table.plans[-1] == Plan(
        add=(route("10.0.60.0/24", "192.168.0.61"), route("fd00:3c::/64", "fc00::3d")),
        replace=(route("10.0.7.0/24", "192.168.7.7"),),
        delete=(
            route("10.0.3.0/24", "192.168.0.4"),
            route("10.0.7.0/24", "192.168.0.8"),
            route("fd00:3::/64", "fc00::4"),
        ),
    )
    assert (result.added, result.replaced, result.deleted) == (2, 1, 2)
    assert (result.desired, result.installed) == (98, 98)
    assert rec.run_once().plan == Plan()  # the full view agrees


def test_kernel_changes_are_fixed_incrementally_and_counted_as_restored() -> None:
    cache = synced_cache(node(1), node(2))
    table = TrackingTable()
    rec = Reconciler(cache, table)
    rec.run_once()
    table.remove_by_hand(net("10.0.1.0/24"))
    result = rec.run_changes()
    assert result is not None and not result.full and result.restored == 1
    assert table.list_calls == 1 and net("10.0.1.0/24") in table.routes
    # a foreign route on a destination we route: a conflict, retried with `retry` only
    table.routes.pop(net("10.0.2.0/24"))
    table.add_foreign(route("10.0.2.0/24", "192.168.50.50"))
    result = rec.run_changes()
    assert result is not None and result.conflicts == 1
    assert rec.run_changes() is None
    applies = table.apply_calls
    del table.foreign[net("10.0.2.0/24")]
    result = rec.run_changes(retry=True)
    assert result is not None and result.ok and table.apply_calls == applies + 1
    assert net("10.0.2.0/24") in table.routes and table.list_calls == 1


@pytest.mark.parametrize("tracking", [True, False], ids=["incremental", "full"])
def test_only_a_route_taken_away_counts_as_restored_and_only_once(tracking: bool) -> None:
    """Restored: a route the last reconcile had in place, as still wanted, that someone
    removed or rewrote. Not at start, not for node changes, not after a failure; once."""
    n1v4, n2v6 = net("10.0.1.0/24"), net("fd00:2::/64")
    # an earlier run left one route (one it wants) and someone removed another
    table = TrackingTable() if tracking else FakeRouteTable()
    table.routes[n1v4] = route("10.0.1.0/24", "192.168.0.2")
    cache = synced_cache(node(1), node(2), node(3))
    metrics = DaemonMetrics()
    rec = Reconciler(cache, table, metrics=metrics)

    def reconcile() -> SyncResult:
        result = rec.run_changes(retry=True)  # a full reconcile for a table that does not track
        assert result is not None and result.full is not tracking
        assert result.installed == len(table.routes)
        return result

    # at start: whatever is missing is added, nothing counts as restored
    first = rec.run_once()
    assert (first.added, first.restored, first.installed) == (5, 0, 6)
    # removed by hand: restored, once
    table.remove_by_hand(n1v4)
    result = reconcile()
    assert (result.added, result.restored) == (1, 1) and n1v4 in table.routes
    if tracking:
        assert rec.run_changes() is None
    assert rec.run_once().restored == 0
    # rewritten by hand: replaced, restored
    table.change_by_hand(route("fd00:2::/64", "fc00::99"))
    result = reconcile()
    assert (result.replaced, result.restored) == (1, 1)
    # a node's CIDR changes: a new route, not a restored one
    cache.upsert(node(3, cidr="10.0.33.0/24"))
    result = reconcile()
    assert (result.added, result.deleted, result.restored, result.installed) == (1, 1, 0, 6)
    # a node's gateway changes while its route was removed by hand: new routes, not restored
    table.remove_by_hand(n1v4)
    cache.upsert(node(1, gw="192.168.7.7"))
    result = reconcile()
    assert (result.added, result.restored) == (1, 0) and table.routes[n1v4].gateway == ip(
        "192.168.7.7"
    )
    # a route that failed to go in is not restored when it finally does
    table.unreachable.add(ip("fc00::3"))
    table.remove_by_hand(n2v6)
    assert reconcile().failures
    table.unreachable.clear()
    result = reconcile()
    assert (result.added, result.restored) == (1, 0) and n2v6 in table.routes
    # the same for a node added back after its routes were deleted
    cache.delete("n2")
    assert reconcile().deleted == 2
    cache.upsert(node(2))
    result = reconcile()
    assert (result.added, result.restored, result.installed) == (2, 0, 6)
    assert "xcluster_routes_restored_total 2.0" in metrics.render().decode()


def test_after_a_reconcile_that_raised_a_full_one_applies_what_it_took_along() -> None:
    class Flaky(TrackingTable):
        down = False

        def apply(self, plan: Plan) -> list[RouteOutcome]:
            if self.down:
                raise OSError("netlink is down")
            return super().apply(plan)

    cache = synced_cache(node(1), node(2))
    table = Flaky()
    rec = Reconciler(cache, table)
    rec.run_once()
    table.down = True
    cache.upsert(node(2, gw="192.168.7.7"))
    with pytest.raises(OSError):
        rec.run_changes()
    table.down = False
    result = rec.run_changes()  # the node change the failed reconcile took along is not lost
    assert result is not None and result.full
    assert (result.replaced, result.restored) == (1, 0)
    assert table.routes[net("10.0.2.0/24")].gateway == ip("192.168.7.7")
    # one that raised on a change in the kernel: that change is not lost either, and the
    # route taken away counts as restored (the desired routes did not change meanwhile)
    table.down = True
    table.remove_by_hand(net("10.0.1.0/24"))
    with pytest.raises(OSError):
        rec.run_changes()
    table.down = False
    result = rec.run_changes()
    assert result is not None and result.full and result.restored == 1
    assert net("10.0.1.0/24") in table.routes
    # the same for full reconciles: a node change is not restored, a hand deletion is
    table.down = True
    cache.upsert(node(2, gw="192.168.8.8"))
    with pytest.raises(OSError):
        rec.run_once()
    table.down = False
    result = rec.run_once()
    assert (result.replaced, result.restored) == (1, 0)
    table.down = True
    table.remove_by_hand(net("10.0.1.0/24"))
    with pytest.raises(OSError):
        rec.run_once()
    table.down = False
    assert rec.run_once().restored == 1


def test_whatever_cannot_be_done_incrementally_falls_back_to_a_full_reconcile() -> None:
    cache = synced_cache(node(1), node(2), node(3))
    table = TrackingTable()
    rec = Reconciler(cache, table, node_name="n1")
    rec.run_once()
    lists = table.list_calls

    def full_after(change: Callable[[], None]) -> SyncResult:
        nonlocal lists
        change()
        result = rec.run_changes()
        assert result is not None and result.full and table.list_calls == lists + 1
        lists = table.list_calls
        return result

    # an overlap: n4 claims n2's CIDR (contested: neither gets it)
    result = full_after(lambda: cache.upsert(node(4, cidr="10.0.2.0/24")))
    assert result.skipped_nodes == 2 and net("10.0.2.0/24") not in table.routes
    full_after(lambda: cache.upsert(node(1, gw="192.168.1.1")))  # the own node
    full_after(lambda: cache.replace_all([node(1), node(2)]))  # a full list
    cache.set_healthy(False)
    assert full_after(lambda: cache.delete("n2")).deferred_deletes == 2
    assert full_after(lambda: cache.set_healthy(True)).deleted == 2
    table.valid = False  # the table lost track (events lost)
    full_after(lambda: None)


def test_the_own_node_found_by_machine_id_changing_reconciles_fully() -> None:
    me = NodeFacts("me", ("10.9.0.0/24",), ("192.168.9.9",), machine_id="ABC")
    cache = synced_cache(node(1), me)
    table = TrackingTable()
    rec = Reconciler(cache, table, machine_id="abc")
    rec.run_once()
    assert {str(d) for d in table.routes} == {"10.0.1.0/24", "fd00:1::/64"}
    cache.upsert(NodeFacts("me", ("10.9.0.0/24",), ("192.168.9.9",), machine_id="other"))
    result = rec.run_changes()
    assert result is not None and result.full
    assert net("10.9.0.0/24") in table.routes  # no longer this node: routed like others


def test_the_loop_reconciles_incrementally_between_resyncs(
    loop: Callable[..., list[SyncResult]],
) -> None:
    cache = synced_cache(node(1))
    table = TrackingTable()
    rec = Reconciler(cache, table, resync_interval=0.5, coalesce=0.0)
    table.on_change = rec.notify_kernel
    seen = loop(rec)
    assert seen[0].full
    cache.upsert(node(2))
    wait_for(lambda: len(table.routes) == 4)
    table.remove_by_hand(net("10.0.1.0/24"))
    wait_for(lambda: net("10.0.1.0/24") in table.routes)
    assert table.list_calls == 1 and not any(r.full for r in seen[1:])
    wait_for(lambda: table.list_calls >= 2, timeout=2)  # the resync is a full one
    assert any(r.full for r in seen[1:])


# -- the cache's journal ---------------------------------------------------------------------


def test_the_cache_tells_which_nodes_changed_since_a_generation() -> None:
    cache = synced_cache(node(1), node(2))
    start = cache.generation
    assert cache.changes_since(start) == (start, {})
    cache.upsert(node(1))  # a heartbeat: no change
    cache.upsert(node(2, gw="192.168.2.2"))
    cache.upsert(node(3))
    cache.delete("n1")
    gen, changed = cache.changes_since(start) or (0, {})
    assert gen == cache.generation == start + 3
    assert changed == {"n1": None, "n2": cache.get("n2"), "n3": cache.get("n3")}
    assert cache.changes_since(gen - 1) == (gen, {"n1": None})
    cache.replace_all([node(2)])
    assert cache.changes_since(gen) is None  # a full list: not known node by node
    gen = cache.generation
    for i in range(JOURNAL_SIZE + 1):
        cache.upsert(node(5, gw=f"10.1.{i // 256}.{i % 256}"))
    assert cache.changes_since(gen) is None  # the journal does not reach back that far
    assert cache.changes_since(cache.generation - 2) == (cache.generation, {"n5": cache.get("n5")})
    assert cache.changes_since(cache.generation + 1) is None


def test_a_failing_table_is_retried_with_backoff(loop: Callable[..., list[SyncResult]]) -> None:
    class Broken(TrackingTable):
        def list_routes(self) -> list[Route]:
            self.list_calls += 1
            raise OSError("netlink is down")

    table = Broken()
    rec = Reconciler(synced_cache(node(1)), table, resync_interval=3600, retry_min=0.1)
    started = time.monotonic()
    seen = loop(rec)
    assert seen[0] is None
    # retries after 0.1, then 0.2 s more: retried, and not in a tight loop
    wait_for(lambda: table.list_calls >= 3, timeout=3)
    assert time.monotonic() - started >= 0.29
    assert rec.failed_syncs >= 3
