"""The route tracker against the real kernel: the table's tracked view of our routes
(``changed_destinations``/``routes_to``) and the same tracker as the monitor that wakes
a reconciler (``run``), which only wakes for what can change one of our routes."""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.kernel.helpers import GW4, GW4B, GW6, OTHER, PROTO, Counter, route
from xcluster_cni_lib.core.values import Plan
from xcluster_cni_lib.kernel.routetable import NetlinkRouteTable
from xcluster_cni_lib.kernel.tracker import RouteTracker
from xcluster_cni_lib.testing.netns import add_netns, del_netns, run_in, unique_name

pytestmark = pytest.mark.root


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def test_tracking_reports_what_others_change_and_not_our_own_writes(
    gw_netns: str, table: NetlinkRouteTable
) -> None:
    a4, a6, b4 = route("10.1.0.0/24", GW4), route("fd01:1::/64", GW6), route("10.2.0.0/24", GW4)
    assert table.changed_destinations() is None  # starts tracking: list first
    assert table.list_routes() == []
    assert table.apply(Plan(add=(a4, a6, b4)))[0].ok
    assert table.changed_destinations() == set()  # our own writes' events are known
    assert set(table.routes_to([a4.dst, a6.dst, b4.dst])) == {a4, a6, b4}
    table.apply(Plan(replace=(route("10.2.0.0/24", GW4B),), delete=(a6,)))
    assert table.changed_destinations() == set()
    assert table.routes_to([b4.dst, a6.dst]) == [route("10.2.0.0/24", GW4B)]

    run_in(gw_netns, ["ip", "route", "del", "10.1.0.0/24"])
    run_in(gw_netns, f"ip route replace 10.2.0.0/24 via {GW4} proto {PROTO}".split())
    # another protocol's route where we neither hold nor want anything: not a change
    run_in(gw_netns, f"ip -6 route add fd01:5::/64 via {GW6} proto {OTHER}".split())
    assert table.changed_destinations() == {a4.dst, b4.dst}
    assert table.routes_to([a4.dst, b4.dst]) == [b4]
    # another protocol's replace takes our route's place
    run_in(gw_netns, f"ip route replace 10.2.0.0/24 via {GW4B} proto {OTHER}".split())
    assert table.changed_destinations() == {b4.dst}
    assert table.routes_to([b4.dst]) == []
    assert table.changed_destinations() == set()
    # a list made meanwhile (by another user of the table) hides no change from the consumer
    table.apply(Plan(add=(a4,)))
    run_in(gw_netns, ["ip", "route", "del", "10.1.0.0/24"])
    assert table.list_routes() == []
    assert table.changed_destinations() == {a4.dst}
    with pytest.raises(RuntimeError, match="list_routes"):
        NetlinkRouteTable(PROTO, netns=gw_netns).routes_to([a4.dst])


def test_the_tracked_view_counts_our_routes_without_a_dump(
    gw_netns: str, table: NetlinkRouteTable
) -> None:
    """``installed_count`` follows our writes and everyone else's changes, and agrees
    with a dump of the table each time (routes a ``Route`` cannot describe excluded)."""
    with NetlinkRouteTable(PROTO, netns=gw_netns) as observer:
        with pytest.raises(RuntimeError, match="list_routes"):
            observer.installed_count()  # not tracking: no view to count

        def count() -> int:
            table.changed_destinations()  # reads the events so far
            n = table.installed_count()
            assert n == len(observer.list_routes())
            return n

        table.track()
        run_in(gw_netns, f"ip route add 10.9.0.0/24 via {GW4} proto {PROTO}".split())
        table.list_routes()
        assert count() == 1
        a4, a6, b4 = route("10.1.0.0/24", GW4), route("fd01:1::/64", GW6), route("10.2.0.0/24", GW4)
        assert all(o.ok for o in table.apply(Plan(add=(a4, a6, b4))))
        assert count() == 4
        table.apply(Plan(add=(a4,), replace=(route("10.2.0.0/24", GW4B),), delete=(a6,)))
        assert count() == 3  # an add found in place and a replace count once
        run_in(gw_netns, ["ip", "route", "del", "10.1.0.0/24"])
        assert count() == 2
        run_in(gw_netns, f"ip route add 10.3.0.0/24 via {GW4} proto {PROTO}".split())
        run_in(gw_netns, f"ip route append 10.3.0.0/24 via {GW4B} proto {PROTO}".split())
        assert count() == 4  # an append: a second route to the same destination
        run_in(gw_netns, f"ip route del 10.3.0.0/24 via {GW4B} proto {PROTO}".split())
        assert count() == 3
        # a replace after an append rewrites the first route only: the second stays
        run_in(gw_netns, f"ip route append 10.3.0.0/24 via {GW4B} proto {PROTO}".split())
        run_in(gw_netns, f"ip route replace 10.3.0.0/24 via 192.168.77.4 proto {PROTO}".split())
        assert count() == 4
        run_in(gw_netns, f"ip route del 10.3.0.0/24 via {GW4B} proto {PROTO}".split())
        run_in(gw_netns, f"ip route replace 10.3.0.0/24 via {GW4} proto {PROTO}".split())
        assert count() == 3
        multipath = ["nexthop", "via", str(GW4), "nexthop", "via", str(GW4B)]
        run_in(gw_netns, ["ip", "route", "add", "10.6.0.0/24", "proto", str(PROTO), *multipath])
        assert count() == 3  # no single gateway: not a route we list
        # another protocol's replace takes our route's place
        run_in(gw_netns, f"ip route replace 10.2.0.0/24 via {GW4} proto {OTHER}".split())
        assert count() == 2
        run_in(gw_netns, f"ip -6 route add fd01:2::/64 via {GW6} proto {PROTO}".split())
        assert count() == 3


def test_failed_writes_are_reported_when_they_may_succeed(
    gw_netns: str, table: NetlinkRouteTable
) -> None:
    table.track()
    table.list_routes()
    far = route("10.3.0.0/24", "192.168.80.2")  # its gateway is not on-link
    held = route("10.5.0.0/24", GW4)
    run_in(gw_netns, f"ip route add 10.5.0.0/24 via {GW4B} proto {OTHER}".split())
    outcomes = table.apply(Plan(add=(far, held)))
    assert [o.status for o in outcomes] == ["unreachable", "conflict"]
    run_in(gw_netns, f"ip route add 10.4.0.0/24 via {GW4} proto {OTHER}".split())
    assert table.changed_destinations() == set()  # unrelated to both
    # an address puts the gateway on-link (its connected route appears): try again
    run_in(gw_netns, ["ip", "addr", "add", "192.168.80.1/24", "dev", "va"])
    assert table.changed_destinations() == {far.dst}
    # the conflicting route goes: the destination is free
    run_in(gw_netns, ["ip", "route", "del", "10.5.0.0/24", "proto", str(OTHER)])
    assert table.changed_destinations() == {held.dst}
    assert [o.status for o in table.apply(Plan(add=(far, held)))] == ["ok", "ok"]
    run_in(gw_netns, f"ip route add 10.5.0.0/16 via {GW4B} proto {OTHER}".split())
    assert table.changed_destinations() == set()  # nothing failed any more


def test_only_addresses_and_links_our_routes_use_matter(
    gw_netns: str, table: NetlinkRouteTable
) -> None:
    a4, a6 = route("10.1.0.0/24", GW4), route("fd01:1::/64", GW6)
    table.track()
    table.list_routes()
    assert all(o.ok for o in table.apply(Plan(add=(a4, a6))))
    run_in(gw_netns, ["ip", "link", "add", "vc", "type", "veth", "peer", "name", "vd"])
    run_in(gw_netns, ["ip", "link", "set", "vc", "up"])
    run_in(gw_netns, ["ip", "link", "set", "vd", "up"])
    # another interface's addresses come and go, and it goes down: nothing we use
    run_in(gw_netns, ["ip", "addr", "add", "192.168.79.1/24", "dev", "vc"])
    run_in(gw_netns, ["ip", "addr", "add", "fd00:79::1/64", "dev", "vc", "nodad"])
    run_in(gw_netns, ["ip", "addr", "del", "192.168.79.1/24", "dev", "vc"])
    run_in(gw_netns, ["ip", "link", "set", "vc", "down"])
    # on our interface: an added address drops no route, a link-local one is no gateway's
    run_in(gw_netns, ["ip", "addr", "add", "192.168.78.1/24", "dev", "va"])
    run_in(gw_netns, ["ip", "addr", "add", "fe80::99/64", "dev", "va", "nodad"])
    run_in(gw_netns, ["ip", "addr", "del", "fe80::99/64", "dev", "va"])
    assert table.changed_destinations() == set()
    # an address removed from our routes' interface: IPv4 may have dropped routes silently
    run_in(gw_netns, ["ip", "addr", "del", "192.168.78.1/24", "dev", "va"])
    assert table.changed_destinations() is None
    assert set(table.list_routes()) == {a4, a6}
    assert table.changed_destinations() == set()
    # that interface goes down: the kernel flushes its routes without an event
    run_in(gw_netns, ["ip", "link", "set", "va", "down"])
    assert table.changed_destinations() is None
    assert table.list_routes() == []


# --- the monitor -------------------------------------------------------------------------


@contextmanager
def monitoring(tracker: RouteTracker) -> Iterator[Counter]:
    """The tracker's ``run`` in a thread, counting its calls; stopped (promptly) on exit."""
    stop = threading.Event()
    counter = Counter()
    thread = threading.Thread(target=tracker.run, args=(counter, stop))
    thread.start()
    try:
        yield counter
    finally:
        stopped_at = time.monotonic()
        stop.set()
        thread.join(2.0)
        assert not thread.is_alive()
        assert time.monotonic() - stopped_at < 0.6


def test_monitor_reports_hand_deletion_and_takeover(
    gw_netns: str, table: NetlinkRouteTable
) -> None:
    tracker = table.track()
    table.list_routes()
    ours = (route("10.1.0.0/24", GW4), route("fd01::/64", GW6), route("10.2.0.0/24", GW4))
    assert all(o.ok for o in table.apply(Plan(add=ours)))
    with monitoring(tracker) as counter:
        run_in(gw_netns, ["ip", "route", "del", "10.1.0.0/24"])
        assert counter.wait_for_call(1.0), "deleting our IPv4 route was not reported"
        run_in(gw_netns, ["ip", "-6", "route", "del", "fd01::/64"])
        assert counter.wait_for_call(1.0), "deleting our IPv6 route was not reported"
        run_in(gw_netns, f"ip route replace 10.2.0.0/24 via {GW4B} proto {OTHER}".split())
        assert counter.wait_for_call(1.0), "another protocol taking our route was not reported"
        assert table.changed_destinations() == {net("10.1.0.0/24"), net("fd01::/64"), ours[2].dst}
        # our own writes are never reported
        calls = counter.calls
        assert all(o.ok for o in table.apply(Plan(add=ours[:2])))
        run_in(gw_netns, ["ip", "route", "del", "10.1.0.0/24"])  # a marker after them
        assert counter.wait_for_call(1.0)
        assert counter.calls == calls + 1


def test_monitor_ignores_other_tables_and_protocols(netns: str) -> None:
    # a bare namespace: no addresses appearing late (IPv6 DAD) to make noise
    run_in(netns, f"ip route add 10.4.0.0/24 dev lo proto {OTHER} table 100".split())
    run_in(netns, f"ip route add 10.5.0.0/24 dev lo proto {PROTO} table 100".split())
    run_in(netns, f"ip route add 10.6.0.0/24 dev lo proto {OTHER}".split())
    with NetlinkRouteTable(PROTO, netns=netns) as table:
        tracker = table.track()
        table.list_routes()
        with monitoring(tracker) as counter:
            run_in(netns, ["ip", "route", "del", "10.4.0.0/24", "table", "100"])
            run_in(netns, ["ip", "route", "del", "10.5.0.0/24", "table", "100"])
            run_in(netns, ["ip", "route", "del", "10.6.0.0/24"])  # not ours
            run_in(netns, f"ip route add 10.6.0.0/24 dev lo proto {PROTO}".split())  # ours
            assert counter.wait_for_call(1.0)
            assert counter.calls == 1
            assert table.changed_destinations() == {net("10.6.0.0/24")}


def test_pods_coming_and_going_wake_nobody(gw_netns: str, table: NetlinkRouteTable) -> None:
    """Pod veths as the ptp plugin makes them (IPv6 link-local address after DAD, a /32
    gateway address, a host route; their fe80::/64 routes in our table) come and go on
    the node: no call. Our route deleted by hand afterwards: one call."""
    tracker = table.track()
    table.list_routes()
    ours = (route("10.1.0.0/24", GW4), route("fd01::/64", GW6))
    assert all(o.ok for o in table.apply(Plan(add=ours)))
    with monitoring(tracker) as counter:
        pods = [unique_name("pod") for _ in range(3)]
        veths = [unique_name("vp") for _ in range(3)]
        try:
            for i, (pod, veth) in enumerate(zip(pods, veths, strict=True)):
                add_netns(pod)
                peer = ["peer", "eth0", "netns", pod]
                run_in(gw_netns, ["ip", "link", "add", veth, "type", "veth", *peer])
                run_in(gw_netns, ["ip", "link", "set", veth, "up"])
                run_in(pod, ["ip", "link", "set", "eth0", "up"])
                run_in(gw_netns, ["ip", "addr", "add", "10.244.0.1/32", "dev", veth])
                run_in(gw_netns, ["ip", "route", "add", f"10.244.0.{10 + i}/32", "dev", veth])
            deadline = time.monotonic() + 10
            while not all(_link_local_ready(gw_netns, v) for v in veths):
                assert time.monotonic() < deadline, "no link-local addresses on the veths"
                time.sleep(0.05)
        finally:
            for pod in pods:
                del_netns(pod)
        deadline = time.monotonic() + 10
        while any(v in run_in(gw_netns, ["ip", "-o", "link", "show"]) for v in veths):
            assert time.monotonic() < deadline, "pod veths not gone"
            time.sleep(0.05)
        run_in(gw_netns, ["ip", "route", "del", "10.1.0.0/24"])  # a marker after them
        assert counter.wait_for_call(1.0)
        assert counter.calls == 1, "pod veths woke the monitor"
        assert table.changed_destinations() == {ours[0].dst}


def _link_local_ready(ns: str, dev: str) -> bool:
    text = run_in(ns, ["ip", "-6", "-j", "addr", "show", "dev", dev])
    infos = [a for link in json.loads(text or "[]") for a in link.get("addr_info", [])]
    return any(a.get("scope") == "link" and not a.get("tentative") for a in infos)
