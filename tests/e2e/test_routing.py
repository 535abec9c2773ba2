"""Pods on different nodes reach each other, both families, on the main and the secondary
network, through the routes the real daemons installed; the two networks' daemons keep
to their own protocol; membership and address changes are followed."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from xcluster_cni_lib.lab import Lab, LabError

MAIN, NET2 = "main", "net2"


@pytest.fixture
def cross_node_pods(lab: Lab) -> list[str]:
    pods = sorted(p.name for p in lab.pods.values() if p.k8s_namespace == "default")
    assert len({lab.pod(p).node for p in pods}) == 3
    return pods


def test_every_pod_reaches_every_other_on_both_networks_and_families(
    lab: Lab, cross_node_pods: list[str]
) -> None:
    matrix = lab.connectivity(cross_node_pods)

    # 3 pods, 2 peers each, 2 families, 2 networks: every path expected and working
    assert len(matrix.results) == 3 * 2 * 2 * 2
    assert matrix.failures == ()
    for network in (MAIN, NET2):
        for family in (4, 6):
            assert matrix.get("n1-pod1", "n3-pod1", network, family) is not None


def test_each_network_routes_with_its_own_protocol_and_addresses(lab: Lab) -> None:
    main, net2 = lab.spec.network(MAIN), lab.spec.network(NET2)
    assert main.protocol != net2.protocol
    for node in lab.nodes:
        main_routes, net2_routes = lab.routes(node, MAIN), lab.routes(node, NET2)
        assert main_routes == lab.expected_routes(node, MAIN)
        assert net2_routes == lab.expected_routes(node, NET2)
        assert len(main_routes) == len(net2_routes) == 4  # 2 peers x 2 families
        for route, net in [(r, main) for r in main_routes] + [(r, net2) for r in net2_routes]:
            assert route.gateway in net.node_subnet(route.family)
            pod_range = ipaddress.ip_network(net.pod_ranges[0 if route.family == 4 else 1])
            assert route.dst.subnet_of(pod_range)  # type: ignore[arg-type]


@pytest.fixture
def restore_membership(lab: Lab) -> Iterator[None]:
    yield
    for node in lab.nodes.values():
        if not node.present:
            lab.restore_node(node.name)
    lab.wait_converged(timeout=5.0)


@pytest.mark.usefixtures("restore_membership")
def test_removed_node_loses_its_routes_within_a_second_and_comes_back(lab: Lab) -> None:
    gone = lab.node("n3")
    gone_cidrs = {c for cidrs in gone.cidrs.values() for c in cidrs}

    lab.remove_node("n3")
    took = lab.wait_converged(timeout=1.0)

    for node in ("n1", "n2"):
        for network in (MAIN, NET2):
            assert not {r.dst for r in lab.routes(node, network)} & gone_cidrs
    assert took < 1.0
    assert not lab.ping("n1-pod1", "n3-pod1", family=4, deadline=0.5)

    lab.restore_node("n3")
    lab.wait_converged(timeout=3.0)
    assert lab.connectivity(["n1-pod1", "n2-pod1", "n3-pod1"]).failures == ()


@pytest.mark.parametrize("network", [MAIN, NET2])
def test_traffic_follows_a_readdressed_node(lab: Lab, network: str) -> None:
    other = NET2 if network == MAIN else MAIN
    node = lab.node("n2")
    old = node.addresses[network]
    net = lab.spec.network(network)
    new = [str(net.node_address(50, 4)), str(net.node_address(50, 6))]
    other_routes_before = lab.routes("n1", other)

    try:
        with lab.route_events("n1") as events:
            lab.readdress_node("n2", network, new)
            lab.wait_converged(timeout=3.0)
        to_n2 = [r for r in lab.routes("n1", network) if r.dst in node.cidrs[network]]
        assert {str(r.gateway) for r in to_n2} == set(new)
        for family in (4, 6):
            assert lab.ping("n1-pod1", "n2-pod1", network=network, family=family)
            assert lab.ping("n3-pod1", "n2-pod1", network=network, family=family)
        # the other network's daemon did not touch its routes
        assert lab.routes("n1", other) == other_routes_before
        other_protocol = f"proto {lab.spec.network(other).protocol}"
        assert [e for e in events if other_protocol in e] == []
        assert any(f"proto {net.protocol}" in e for e in events)
    finally:
        lab.readdress_node("n2", network, [str(a) for a in old])
        lab.wait_converged(timeout=5.0)


def test_pod_outside_ipv4_namespaces_gets_only_ipv6_and_is_reachable(lab: Lab) -> None:
    pod = lab.add_pod("n2", name="v6only", k8s_namespace="kube-v6")
    try:
        for network in (MAIN, NET2):
            assert pod.address(network, 4) is None
            assert pod.address(network, 6) is not None
            assert lab.ping("n1-pod1", "v6only", network=network, family=6)
            assert lab.ping("v6only", "n3-pod1", network=network, family=6)
        assert "inet " not in lab.run("v6only", ["ip", "-4", "address", "show", "dev", "eth0"])
    finally:
        lab.delete_pod("v6only")


def test_a_second_lab_with_the_same_id_is_refused_and_harms_nothing(lab: Lab) -> None:
    with pytest.raises(LabError, match="already exists"), Lab(lab.spec):
        pass
    assert lab.wait_converged(timeout=1.0) < 1.0
    assert lab.ping("n1-pod1", "n2-pod1", network=NET2, family=6)
