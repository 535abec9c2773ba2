"""NetlinkRouteTable against the real kernel: writes, lists, conflicts, protocol rules,
each test in a throwaway network namespace with a veth pair so gateways are reachable."""

from __future__ import annotations

import itertools
import json
import socket
import threading

import pytest

from tests.kernel.helpers import (
    GW4,
    GW4B,
    GW6,
    GW6B,
    OTHER,
    PROTO,
    route,
    routes_of,
    statuses,
)
from xcluster_cni_lib.core.planning import plan_routes
from xcluster_cni_lib.core.values import Plan
from xcluster_cni_lib.kernel import codec as rc
from xcluster_cni_lib.kernel.channel import Channel, NetlinkError
from xcluster_cni_lib.kernel.dumps import as_route, dump_routes, list_protocol_routes, route_key
from xcluster_cni_lib.kernel.routetable import NetlinkRouteTable
from xcluster_cni_lib.testing.netns import run_in

pytestmark = pytest.mark.root


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
    route would be re-added, a repeated one could be planned for deletion). Two dumps
    that agree are no proof: the kernel resumes at the same routes in every dump, so
    dumps disturbed alike miss the same 200 routes; only a dump without a route event
    while it ran is trusted, and under this unending churn the union of the dumps."""
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


def test_disturbed_ipv6_listing_confirms_only_expected_routes_that_are_ours(
    gw_netns: str,
) -> None:
    """When every dump was disturbed, each expected route the union lacks is looked up
    on its own; the answer counts only if it is exactly that route of our protocol and
    table: a route gone, another protocol's, or a shorter prefix of ours is not listed."""
    ours = route("fd00:30::/48", GW6)
    run_in(gw_netns, f"ip route add {ours.dst} via {GW6} proto {PROTO}".split())
    run_in(gw_netns, f"ip route add fd00:31::/64 via {GW6} proto {OTHER}".split())
    expected = [
        route_key(route(dst, GW6))
        for dst in ("fd00:30::/48", "fd00:32::/64", "fd00:31::/64", "fd00:30:1::/64")
    ]
    always_changing = itertools.count().__next__  # no dump counts as clean
    chan = Channel(gw_netns)
    try:
        messages = dump_routes(
            chan,
            socket.AF_INET6,
            table=rc.RT_TABLE_MAIN,
            protocol=PROTO,
            events=always_changing,
            expected=expected,
        )
    finally:
        chan.close()
    assert [as_route(socket.AF_INET6, m) for m in messages] == [ours]


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


def test_bad_arguments_are_refused(netns: str) -> None:
    with pytest.raises(ValueError, match="protocol"):
        NetlinkRouteTable(256, netns=netns)
    with pytest.raises(ValueError, match="table"):
        NetlinkRouteTable(PROTO, netns=netns, table=255)
    with pytest.raises(NetlinkError, match="no-such-ns"):
        NetlinkRouteTable(PROTO, netns="no-such-ns")


@pytest.mark.parametrize(
    ("number", "name"), [(0, "unspec"), (1, "redirect"), (2, "kernel"), (3, "boot"), (4, "static")]
)
def test_the_kernels_own_protocols_are_refused(netns: str, number: int, name: str) -> None:
    # a table bound to "boot" (what `ip route add` uses) would own every hand-made route
    with pytest.raises(ValueError, match=f"kernel's own protocol '{name}'"):
        NetlinkRouteTable(number, netns=netns)


def test_a_hand_made_route_survives_an_empty_desired_state(gw_netns: str) -> None:
    """What a reconciler with no nodes does: list, plan against nothing, apply. Only
    our protocol's routes are listed, so the route `ip route add` made (proto boot)
    is neither planned for deletion nor touched; it can still be read on its own."""
    run_in(gw_netns, ["ip", "route", "add", "10.98.0.0/16", "via", str(GW4)])  # proto boot
    run_in(gw_netns, ["ip", "-6", "route", "add", "fd01:98::/64", "via", str(GW6)])
    hand = {route("10.98.0.0/16", GW4), route("fd01:98::/64", GW6)}
    with NetlinkRouteTable(PROTO, netns=gw_netns) as table:
        plan = plan_routes([], table.list_routes())
        assert not plan
        assert table.apply(plan) == []
    shown = {
        route(r["dst"], r["gateway"])
        for family in ("-4", "-6")
        for r in json.loads(run_in(gw_netns, ["ip", "-j", family, "route", "show", "proto", "3"]))
    }
    assert shown == hand  # (ip leaves "proto boot" out of its output: filter on it instead)
    assert set(list_protocol_routes(3, netns=gw_netns)) == hand
    assert list_protocol_routes(PROTO, netns=gw_netns) == []
