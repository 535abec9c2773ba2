"""Nodes on different subnets behind a router (the lab's routed network), dual-stack, a
pod on each: direct routes cannot reach the other node's pods, the built-in vxlan
overlay can; with masquerade, pods reach an outside host (which has no route to any pod
CIDR) with the node's address, while pod-to-pod traffic keeps the pod's address."""

from __future__ import annotations

import json
from collections.abc import Iterator

import attrs
import pytest

from tests.daemon.harness import wait_for
from xcluster_cni_lib.lab import MAIN, Lab, LabSpec
from xcluster_cni_lib.lab.shell import ip_json, run

pytestmark = pytest.mark.root

PREFIX = "xct"
DEV = "xcvx202"


def _spec(**main: object) -> LabSpec:
    net = attrs.evolve(MAIN, routed=True, **main)
    return LabSpec(nodes=2, pods_per_node=1, prefix=PREFIX, networks=(net,), outside=True)


@pytest.fixture
def direct() -> Iterator[Lab]:
    with Lab(_spec()) as lab:
        yield lab


@pytest.fixture
def vxlan() -> Iterator[Lab]:
    with Lab(_spec(overlay="vxlan", mtu=1450)) as lab:
        yield lab


@pytest.fixture
def vxlan_masq() -> Iterator[Lab]:
    with Lab(_spec(overlay="vxlan", mtu=1450, masquerade=True)) as lab:
        yield lab


def _cross_node(lab: Lab) -> dict[tuple[str, str, int], bool]:
    matrix = lab.connectivity(deadline=1.5)
    return {(r.src, r.dst, r.family): r.ok for r in matrix.results}


def test_direct_routes_cannot_cross_subnets(direct: Lab) -> None:
    assert direct.routes("n1", "main") == frozenset()  # no other node is on-link
    results = _cross_node(direct)
    assert results and not any(results.values()), results
    # the pods themselves are up: each reaches its own node
    for pod, node in (("n1-pod1", "n1"), ("n2-pod1", "n2")):
        address = direct.node(node).address("main", 4)
        assert direct.run(pod, ["ping", "-c1", "-W2", str(address)], check=False)


def _entries(lab: Lab, node: str, family: str) -> list[dict[str, object]]:
    return ip_json(lab.node(node).namespace, [family, "neigh", "show", "dev", DEV])


def _fdb(lab: Lab, node: str) -> list[dict[str, object]]:
    out = run(lab.node(node).namespace, ["bridge", "-j", "fdb", "show", "dev", DEV]).stdout
    return list(json.loads(out or "[]"))


def test_vxlan_overlay_reaches_every_pod_and_forgets_a_deleted_node(vxlan: Lab) -> None:
    results = _cross_node(vxlan)
    assert results and all(results.values()), results  # both directions, both families
    routes = vxlan.routes("n1", "main")
    assert {r.device for r in routes} == {DEV} and len(routes) == 2
    n2 = vxlan.node("n2")
    fdb = _fdb(vxlan, "n1")
    assert any(e.get("dst") == str(n2.address("main", 4)) for e in fdb), fdb
    vxlan.remove_node("n2")
    vxlan.wait_converged(timeout=5.0, nodes=["n1"])

    def forgotten() -> bool:
        fdb = _fdb(vxlan, "n1")
        neigh = _entries(vxlan, "n1", "-4") + _entries(vxlan, "n1", "-6")
        return not [e for e in fdb if e.get("dst")] and not neigh

    wait_for(forgotten, timeout=5.0, what="n2's overlay entries removed on n1")
    assert vxlan.routes("n1", "main") == frozenset()


def test_masquerade_to_the_outside_keeps_pod_addresses_between_pods(vxlan_masq: Lab) -> None:
    lab = vxlan_masq
    lab.serve_whoami("out")
    lab.serve_whoami("n2-pod1")
    for family in (4, 6):
        outside = lab.spec.outside_address(family)
        node_address = str(lab.node("n1").address("main", family))
        # the outside host sees the node's address (it has no route to pod CIDRs)
        assert lab.whoami("n1-pod1", outside, deadline=5.0) == node_address
        # a pod on another node sees the client pod's own address
        peer = lab.pod("n2-pod1").address("main", family)
        client = lab.pod("n1-pod1").address("main", family)
        assert peer is not None and client is not None
        assert lab.whoami("n1-pod1", peer, deadline=5.0) == str(client)


def test_without_masquerade_the_outside_is_unreachable(vxlan: Lab) -> None:
    vxlan.serve_whoami("out")
    for family in (4, 6):
        outside = vxlan.spec.outside_address(family)
        assert vxlan.whoami("n1", outside) == str(vxlan.node("n1").address("main", family))
        assert vxlan.whoami("n1-pod1", outside, deadline=1.5) is None


def test_switching_between_none_and_vxlan_leaves_nothing_behind() -> None:
    """On one segment both modes work: restart the daemons with the overlay on, then off."""
    spec = LabSpec(nodes=2, pods_per_node=1, prefix=PREFIX, networks=(MAIN,))
    with Lab(spec) as lab:
        direct = lab.routes("n1", "main")
        assert direct and {r.device for r in direct} == {None}

        def restart(**env: str) -> None:
            for node in ("n1", "n2"):
                lab.stop_daemon(node, "main")
                lab.start_daemon(node, "main", extra_env=env)

        def devices(node: str) -> set[str]:
            return {e["ifname"] for e in ip_json(lab.node(node).namespace, ["link", "show"])}

        restart(OVERLAY="vxlan")
        wait_for(
            lambda: (
                {r.device for r in lab.routes("n1", "main")} == {DEV}
                and len(lab.routes("n1", "main")) == len(direct)
            ),
            timeout=10,
            what="overlay routes",
        )
        assert DEV in devices("n1") and lab.connectivity(deadline=3.0).ok
        restart(OVERLAY="none")
        wait_for(lambda: lab.routes("n1", "main") == direct, timeout=10, what="direct routes")
        wait_for(lambda: DEV not in devices("n1"), timeout=10, what="the device removed")
        assert lab.connectivity(deadline=3.0).ok
