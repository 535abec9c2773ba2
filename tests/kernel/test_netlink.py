"""NetlinkRouteTable, RouteMonitor and the interface queries against the real kernel, each
test in a throwaway network namespace with a veth pair so gateways are reachable."""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from collections.abc import Iterator, Sequence

import pytest

from xcluster_cni_lib.core.values import Plan, Route, RouteOutcome
from xcluster_cni_lib.kernel.netlink import (
    NetlinkError,
    NetlinkRouteTable,
    RouteMonitor,
    interface_mtu,
    list_interface_addresses,
)
from xcluster_cni_lib.testing.netns import run_in

pytestmark = pytest.mark.root

PROTO = 202
OTHER = 99
GW4 = ipaddress.IPv4Address("192.168.77.2")
GW4B = ipaddress.IPv4Address("192.168.77.3")
GW6 = ipaddress.IPv6Address("fd00:77::2")
GW6B = ipaddress.IPv6Address("fd00:77::3")
MTU = 1400


def route(dst: str, gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | str) -> Route:
    return Route(ipaddress.ip_network(dst), ipaddress.ip_address(gateway))


@pytest.fixture
def gw_netns(netns: str) -> Iterator[str]:
    """The ``netns`` namespace with a veth pair up: ``va`` holds 192.168.77.1/24 and
    fd00:77::1/64 and has MTU 1400, so GW4/GW6 (and the B variants) are reachable."""
    for cmd in (
        "ip link add va type veth peer name vb",
        f"ip link set va mtu {MTU} up",
        "ip link set vb up",
        "ip addr add 192.168.77.1/24 dev va",
        "ip addr add fd00:77::1/64 dev va nodad",
    ):
        run_in(netns, cmd.split())
    yield netns


@pytest.fixture
def table(gw_netns: str) -> Iterator[NetlinkRouteTable]:
    with NetlinkRouteTable(PROTO, netns=gw_netns) as t:
        yield t


def kernel_routes(ns: str, *, table: int = 254) -> list[dict[str, str]]:
    """Every route of ``table`` (both families) as ``ip -N -j`` prints it."""
    out: list[dict[str, str]] = []
    for family in ("-4", "-6"):
        text = run_in(ns, ["ip", "-N", "-j", family, "route", "show", "table", str(table)])
        out.extend(json.loads(text or "[]"))
    return out


def routes_of(ns: str, protocol: int, *, table: int = 254) -> set[Route]:
    """The routes of ``protocol`` in ``table`` as the ``ip`` command sees them."""
    return {
        route(r["dst"], r["gateway"])
        for r in kernel_routes(ns, table=table)
        if r.get("protocol") == str(protocol) and "gateway" in r
    }


def statuses(outcomes: Sequence[RouteOutcome]) -> list[tuple[str, str, str]]:
    return [(o.op, str(o.route.dst), o.status) for o in outcomes]


# --- NetlinkRouteTable -----------------------------------------------------------------


def test_apply_and_list_round_trip_both_families(gw_netns: str, table: NetlinkRouteTable) -> None:
    routes = (route("10.1.0.0/24", GW4), route("fd01:1::/64", GW6), route("10.2.0.0/16", GW4))
    outcomes = table.apply(Plan(add=routes))
    assert [o.status for o in outcomes] == ["ok"] * 3
    assert set(table.list_routes()) == set(routes)
    assert routes_of(gw_netns, PROTO) == set(routes)

    changed = (route("10.1.0.0/24", GW4B), route("fd01:1::/64", GW6B))
    outcomes = table.apply(Plan(replace=changed, delete=(routes[2],)))
    assert statuses(outcomes) == [
        ("delete", "10.2.0.0/16", "ok"),
        ("replace", "10.1.0.0/24", "ok"),
        ("replace", "fd01:1::/64", "ok"),
    ]
    assert set(table.list_routes()) == set(changed)
    assert routes_of(gw_netns, PROTO) == set(changed)

    outcomes = table.apply(Plan(delete=changed))
    assert all(o.status == "ok" for o in outcomes)
    assert table.list_routes() == []
    assert routes_of(gw_netns, PROTO) == set()


def test_list_shows_only_own_protocol_and_table(gw_netns: str) -> None:
    run_in(gw_netns, f"ip route add 10.9.0.0/24 via {GW4} proto {OTHER}".split())
    run_in(gw_netns, f"ip route add 10.8.0.0/24 via {GW4} proto {PROTO} table 100".split())
    run_in(gw_netns, f"ip route add fd01:8::/64 via {GW6} proto {PROTO} table 100".split())
    run_in(gw_netns, f"ip route add 10.7.0.0/24 via {GW4} proto {PROTO}".split())
    with NetlinkRouteTable(PROTO, netns=gw_netns) as main:
        assert main.list_routes() == [route("10.7.0.0/24", GW4)]
    with NetlinkRouteTable(PROTO, netns=gw_netns, table=100) as t100:
        assert set(t100.list_routes()) == {route("10.8.0.0/24", GW4), route("fd01:8::/64", GW6)}
        # and what it writes goes to its own table, with its protocol
        assert t100.apply(Plan(add=(route("10.6.0.0/24", GW4),)))[0].ok
    assert route("10.6.0.0/24", GW4) in routes_of(gw_netns, PROTO, table=100)
    assert route("10.6.0.0/24", GW4) not in routes_of(gw_netns, PROTO)


def test_apply_2000_routes_in_batches(gw_netns: str, table: NetlinkRouteTable) -> None:
    routes = [route(f"10.{i // 256}.{i % 256}.0/24", GW4) for i in range(1000)]
    routes += [route(f"fd01:{i:x}::/64", GW6) for i in range(1000)]
    outcomes = table.apply(Plan(add=tuple(routes)))
    assert len(outcomes) == 2000
    assert [o.route for o in outcomes] == routes
    assert all(o.status == "ok" for o in outcomes)
    assert routes_of(gw_netns, PROTO) == set(routes)
    assert set(table.list_routes()) == set(routes)
    # a second identical plan changes nothing and reports success
    assert all(o.ok for o in table.apply(Plan(add=tuple(routes))))
    assert len(table.apply(Plan(delete=tuple(routes)))) == 2000
    assert routes_of(gw_netns, PROTO) == set()


def test_ipv6_list_is_exact_while_another_protocol_churns_the_table(
    gw_netns: str, table: NetlinkRouteTable
) -> None:
    """The kernel restarts a disturbed IPv6 dump without flagging it, skipping and
    repeating routes; listing must still give each route of ours exactly once (a missed
    route would be re-added, a repeated one could be planned for deletion)."""
    ours = [route(f"fd00:20:{i:x}::/64", GW6) for i in range(2000)]
    assert all(o.ok for o in table.apply(Plan(add=tuple(ours))))
    theirs = tuple(route(f"fd00:10:{i:x}::/64", GW6) for i in range(200))
    stop = threading.Event()

    def churn() -> None:  # a second instance's routes, ahead of ours in the tree, come and go
        with NetlinkRouteTable(PROTO + 1, netns=gw_netns) as other:
            while not stop.is_set():
                other.apply(Plan(add=theirs))
                other.apply(Plan(delete=theirs))

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        wrong = 0
        for _ in range(40):
            listed = table.list_routes()
            wrong += len(listed) != len(ours) or set(listed) != set(ours)
    finally:
        stop.set()
        worker.join()
    assert wrong == 0


def test_other_protocols_route_is_a_conflict_and_left_intact(
    gw_netns: str, table: NetlinkRouteTable
) -> None:
    run_in(gw_netns, f"ip route add 10.9.0.0/24 via {GW4B} proto {OTHER}".split())
    run_in(gw_netns, f"ip route add fd01:9::/64 via {GW6B} proto {OTHER}".split())
    before = routes_of(gw_netns, OTHER)
    wanted = (route("10.9.0.0/24", GW4), route("fd01:9::/64", GW6))
    fine = route("10.10.0.0/24", GW4)

    outcomes = table.apply(Plan(add=(*wanted, fine)))
    assert statuses(outcomes) == [
        ("add", "10.9.0.0/24", "conflict"),
        ("add", "fd01:9::/64", "conflict"),
        ("add", "10.10.0.0/24", "ok"),
    ]
    assert all(str(OTHER) in o.reason for o in outcomes[:2])

    outcomes = table.apply(Plan(replace=wanted))
    assert [o.status for o in outcomes] == ["conflict", "conflict"]
    assert str(OTHER) in outcomes[0].reason

    assert routes_of(gw_netns, OTHER) == before
    assert routes_of(gw_netns, PROTO) == {fine}


def test_delete_never_touches_another_protocols_route(
    gw_netns: str, table: NetlinkRouteTable
) -> None:
    run_in(gw_netns, f"ip route add 10.9.0.0/24 via {GW4} proto {OTHER}".split())
    run_in(gw_netns, f"ip route add fd01:9::/64 via {GW6} proto {OTHER}".split())
    before = routes_of(gw_netns, OTHER)
    outcomes = table.apply(Plan(delete=(route("10.9.0.0/24", GW4), route("fd01:9::/64", GW6))))
    assert [o.status for o in outcomes] == ["gone", "gone"]
    assert all(o.ok for o in outcomes)
    assert routes_of(gw_netns, OTHER) == before


def test_unreachable_gateway_fails_alone(gw_netns: str, table: NetlinkRouteTable) -> None:
    good = (route("10.1.0.0/24", GW4), route("fd01:1::/64", GW6))
    bad4 = route("10.2.0.0/24", "192.0.2.1")
    bad6 = route("fd01:2::/64", "fd00:99::1")
    outcomes = table.apply(Plan(add=(bad4, good[0], bad6, good[1])))
    assert statuses(outcomes) == [
        ("add", "10.2.0.0/24", "unreachable"),
        ("add", "10.1.0.0/24", "ok"),
        ("add", "fd01:2::/64", "unreachable"),
        ("add", "fd01:1::/64", "ok"),
    ]
    assert "gateway" in outcomes[0].reason.lower()  # the kernel's text
    assert outcomes[2].reason
    assert routes_of(gw_netns, PROTO) == set(good)


def test_add_over_own_stale_route_updates_it(gw_netns: str, table: NetlinkRouteTable) -> None:
    run_in(gw_netns, f"ip route add 10.1.0.0/24 via {GW4B} proto {PROTO}".split())
    outcomes = table.apply(Plan(add=(route("10.1.0.0/24", GW4),)))
    assert outcomes[0].status == "ok"
    assert routes_of(gw_netns, PROTO) == {route("10.1.0.0/24", GW4)}


def test_writes_resolve_conflicts_without_dumping_the_table(
    gw_netns: str, table: NetlinkRouteTable
) -> None:
    run_in(gw_netns, f"ip route add 10.9.0.0/24 via {GW4B} proto {OTHER}".split())
    run_in(gw_netns, f"ip -6 route add fd01:9::/64 via {GW6B} proto {OTHER}".split())
    run_in(gw_netns, f"ip route add 10.1.0.0/24 via {GW4B} proto {PROTO}".split())
    run_in(gw_netns, f"ip -6 route add fd01:1::/64 via {GW6} proto {PROTO}".split())
    ours = (route("10.1.0.0/24", GW4), route("fd01:1::/64", GW6))  # stale; in place
    theirs = (route("10.9.0.0/24", GW4), route("fd01:9::/64", GW6))
    free = (route("10.3.0.0/24", GW4), route("fd01:3::/64", GW6))
    outcomes = table.apply(Plan(add=(*ours, *theirs)))
    assert [o.status for o in outcomes] == ["ok", "ok", "conflict", "conflict"]
    assert all(str(OTHER) in o.reason for o in outcomes[2:])
    outcomes = table.apply(Plan(replace=(*theirs, *free)))
    assert [o.status for o in outcomes] == ["conflict", "conflict", "ok", "ok"]
    assert table.full_dumps == 0  # one lookup per destination instead
    assert routes_of(gw_netns, PROTO) == {*ours, *free}
    assert routes_of(gw_netns, OTHER) == {route("10.9.0.0/24", GW4B), route("fd01:9::/64", GW6B)}


def test_lookups_that_cannot_tell_fall_back_to_the_dump(gw_netns: str) -> None:
    # table 100 has no policy rule: lookups answer from the main table, so they cannot tell
    run_in(gw_netns, f"ip route add 10.9.0.0/24 via {GW4B} proto {OTHER} table 100".split())
    with NetlinkRouteTable(PROTO, netns=gw_netns, table=100) as t100:
        wanted = route("10.9.0.0/24", GW4)
        assert [o.status for o in t100.apply(Plan(add=(wanted,)))] == ["conflict"]
        assert [o.status for o in t100.apply(Plan(replace=(wanted,)))] == ["conflict"]
        assert t100.full_dumps == 2
    assert run_in(gw_netns, ["ip", "-N", "route", "show", "table", "100"]).split() == (
        f"10.9.0.0/24 via {GW4B} dev va proto {OTHER}".split()
    )


def test_a_readdressed_destination_is_rewritten_in_place(
    gw_netns: str, table: NetlinkRouteTable
) -> None:
    old = (route("10.1.0.0/24", GW4), route("fd01:1::/64", GW6))
    new = (route("10.1.0.0/24", GW4B), route("fd01:1::/64", GW6B))
    table.apply(Plan(add=old))
    outcomes = table.apply(Plan(replace=new, delete=old))  # what the planner makes of it
    # the replace went first and rewrote the route: the old gateway's delete found it gone
    assert statuses(outcomes) == [
        ("delete", "10.1.0.0/24", "gone"),
        ("delete", "fd01:1::/64", "gone"),
        ("replace", "10.1.0.0/24", "ok"),
        ("replace", "fd01:1::/64", "ok"),
    ]
    assert routes_of(gw_netns, PROTO) == set(new)


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
    run_in(gw_netns, f"ip -6 route add fd01:5::/64 via {GW6} proto {OTHER}".split())
    assert table.changed_destinations() == {a4.dst, b4.dst, ipaddress.ip_network("fd01:5::/64")}
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
    # an added address drops no route; a removed one may, silently: unknown until a list
    run_in(gw_netns, ["ip", "addr", "add", "192.168.78.1/24", "dev", "va"])
    run_in(gw_netns, ["ip", "addr", "add", "fe80::99/64", "dev", "va", "nodad"])
    run_in(gw_netns, ["ip", "addr", "del", "fe80::99/64", "dev", "va"])
    assert table.changed_destinations() == {ipaddress.ip_network("192.168.78.0/24")}
    run_in(gw_netns, ["ip", "addr", "del", "192.168.78.1/24", "dev", "va"])
    assert table.changed_destinations() is None
    assert table.list_routes() == []
    assert table.changed_destinations() == set()
    with pytest.raises(RuntimeError, match="list_routes"):
        NetlinkRouteTable(PROTO, netns=gw_netns).routes_to([a4.dst])


def test_bad_arguments_are_refused(netns: str) -> None:
    with pytest.raises(ValueError, match="protocol"):
        NetlinkRouteTable(0, netns=netns)
    with pytest.raises(NetlinkError, match="no-such-ns"):
        NetlinkRouteTable(PROTO, netns="no-such-ns")


# --- RouteMonitor ----------------------------------------------------------------------


class Counter:
    def __init__(self) -> None:
        self.calls = 0
        self.event = threading.Event()

    def __call__(self) -> None:
        self.calls += 1
        self.event.set()

    def wait_for_call(self, timeout: float) -> bool:
        fired = self.event.wait(timeout)
        self.event.clear()
        return fired


def test_monitor_reports_hand_deletion_and_takeover_and_stops_promptly(
    gw_netns: str, table: NetlinkRouteTable
) -> None:
    assert all(
        o.ok for o in table.apply(Plan(add=(route("10.1.0.0/24", GW4), route("fd01::/64", GW6))))
    )
    stop = threading.Event()
    counter = Counter()
    with RouteMonitor(PROTO, netns=gw_netns) as monitor:
        thread = threading.Thread(target=monitor.run, args=(counter, stop))
        thread.start()
        try:
            counter.wait_for_call(0.3)  # let setup noise (if any) pass
            run_in(gw_netns, ["ip", "route", "del", "10.1.0.0/24"])
            assert counter.wait_for_call(1.0), "deleting our IPv4 route was not reported"
            run_in(gw_netns, ["ip", "-6", "route", "del", "fd01::/64"])
            assert counter.wait_for_call(1.0), "deleting our IPv6 route was not reported"
            run_in(gw_netns, f"ip route add 10.3.0.0/24 via {GW4} proto {OTHER}".split())
            assert counter.wait_for_call(1.0), "a new route in our table was not reported"
        finally:
            stopped_at = time.monotonic()
            stop.set()
            thread.join(2.0)
        assert not thread.is_alive()
        assert time.monotonic() - stopped_at < 0.6


def test_monitor_ignores_other_tables_and_protocols(netns: str) -> None:
    # a bare namespace: no addresses appearing late (IPv6 DAD) to make noise
    run_in(netns, f"ip route add 10.4.0.0/24 dev lo proto {OTHER} table 100".split())
    run_in(netns, f"ip route add 10.5.0.0/24 dev lo proto {PROTO} table 100".split())
    run_in(netns, f"ip route add 10.6.0.0/24 dev lo proto {OTHER}".split())
    stop = threading.Event()
    counter = Counter()
    with RouteMonitor(PROTO, netns=netns) as monitor:
        thread = threading.Thread(target=monitor.run, args=(counter, stop))
        thread.start()
        try:
            run_in(netns, ["ip", "route", "del", "10.4.0.0/24", "table", "100"])
            run_in(netns, ["ip", "route", "del", "10.5.0.0/24", "table", "100"])
            run_in(netns, ["ip", "route", "del", "10.6.0.0/24"])  # not ours
            assert not counter.wait_for_call(0.5)
            run_in(netns, f"ip route add 10.6.0.0/24 dev lo proto {PROTO}".split())
            run_in(netns, ["ip", "route", "del", "10.6.0.0/24"])  # ours: reported
            assert counter.wait_for_call(1.0)
        finally:
            stop.set()
            thread.join(2.0)
        assert not thread.is_alive()


# --- interfaces ------------------------------------------------------------------------


def test_interface_addresses_and_mtu(gw_netns: str) -> None:
    found = {
        (a.interface, a.mtu, str(a.network), str(a.address))
        for a in list_interface_addresses(gw_netns)
    }
    assert ("va", MTU, "192.168.77.0/24", "192.168.77.1") in found
    assert ("va", MTU, "fd00:77::/64", "fd00:77::1") in found
    assert ("lo", 65536, "127.0.0.0/8", "127.0.0.1") in found
    assert interface_mtu("va", netns=gw_netns) == MTU
    with pytest.raises(LookupError, match="nope"):
        interface_mtu("nope", netns=gw_netns)
