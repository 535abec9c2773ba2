"""Route planning with the vxlan overlay on: every route via the node's VTEP address on the
overlay device; a node without an address of the underlay family gets none, named."""

from __future__ import annotations

import ipaddress

from xcluster_cni_lib.core.overlay import vtep_mac
from xcluster_cni_lib.core.planning import desired_routes
from xcluster_cni_lib.core.values import NodeNetwork, Route

net = ipaddress.ip_network
addr = ipaddress.ip_address


def node(name: str, cidrs: tuple[str, ...], addresses: tuple[str, ...]) -> NodeNetwork:
    return NodeNetwork(name, tuple(map(net, cidrs)), tuple(map(addr, addresses)))


NODES = [
    node("a", ("10.244.0.0/24", "fd00:10:244::/64"), ("192.168.1.1", "fd00:1::1")),
    node("b", ("10.244.1.0/24", "fd00:10:244:1::/64"), ("192.168.2.1", "fd00:2::1")),
    node("c", ("10.244.2.0/24", "fd00:10:244:2::/64"), ("fd00:3::1",)),  # no IPv4 underlay
]


def test_overlay_routes_go_via_the_vtep_on_the_device() -> None:
    routes, problems = desired_routes(NODES, own="a", overlay="xcvx202")
    assert routes == [
        Route(net("10.244.1.0/24"), addr("10.244.1.0"), device="xcvx202"),
        Route(net("fd00:10:244:1::/64"), addr("fd00:10:244:1::"), device="xcvx202"),
    ]
    assert [str(p) for p in problems] == [
        f"node c: no IPv4 address for the vxlan underlay; no route to its pod CIDR {c}"
        for c in ("10.244.2.0/24", "fd00:10:244:2::/64")
    ]


def test_ipv6_underlay_when_the_own_node_has_no_ipv4_address() -> None:
    routes, problems = desired_routes(NODES, own="c", overlay="xcvx202")
    assert {r.dst for r in routes} == {net(c) for n in NODES[:2] for c in map(str, n.cidrs)}
    assert all(r.device == "xcvx202" for r in routes) and not problems


def test_without_overlay_routes_stay_direct() -> None:
    routes, _ = desired_routes(NODES, own="a")
    assert all(r.device is None for r in routes)
    assert Route(net("10.244.1.0/24"), addr("192.168.2.1")) in routes


def test_vtep_mac_derivation() -> None:
    assert vtep_mac(addr("192.168.2.1")) == "0e:04:c0:a8:02:01"
    mac = vtep_mac(addr("fd00:2::1"))
    assert mac.startswith("0e:06:") and len(mac) == 17
    first = int(mac[:2], 16)
    assert first & 0x02 and not first & 0x01  # locally administered, unicast


def test_a_missing_own_node_keeps_the_overlay_routes() -> None:
    """Deleted (or not yet listed), the own node's underlay family is unknown: the routes
    stay planned for IPv4 while any node has an IPv4 address, instead of going away."""
    routes, _ = desired_routes(NODES[1:], own="a", overlay="xcvx202")
    assert {r.dst for r in routes} == {net("10.244.1.0/24"), net("fd00:10:244:1::/64")}
    v6_only = [node("x", ("10.244.9.0/24",), ("fd00:9::1",))]
    routes, _ = desired_routes(v6_only, own="a", overlay="xcvx202")
    assert [r.gateway for r in routes] == [addr("10.244.9.0")]
