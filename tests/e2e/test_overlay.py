"""The vxlan overlay recipe of docs/overlay.md, run as written in every lab node: routes
go via the overlay addresses, and full-size packets with don't-fragment pass at the
reduced bridge MTU."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from xcluster_cni_lib.lab import MAIN, Lab, LabSpec
from xcluster_cni_lib.lab.shell import run

from .conftest import PREFIX

DOC = Path(__file__).resolve().parents[2] / "docs" / "overlay.md"
ANNOTATION = "lab.xcluster-cni.io/overlay-addresses"
MTU = 1450


def recipe() -> str:
    text = DOC.read_text()
    m = re.search(r"<!-- overlay-recipe.*?-->\s*```sh\n(.*?)```", text, re.S)
    assert m, f"no overlay-recipe block in {DOC}"
    return m.group(1)


def overlay_addresses(index: int) -> list[str]:
    return [f"172.30.0.{index}", f"fd00:30::{index}"]


@pytest.fixture(scope="module")
def overlay_lab() -> Iterator[Lab]:
    net = attrs.evolve(MAIN, address_annotation=ANNOTATION, mtu=MTU)
    spec = LabSpec(nodes=2, pods_per_node=1, networks=(net,), prefix=PREFIX, start_daemons=False)
    with Lab(spec) as lab:
        script = recipe()
        for node in lab.nodes.values():
            peers = [str(n.address("main", 4)) for n in lab.nodes.values() if n is not node]
            env = {
                "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                "UNDERLAY_DEV": net.uplink,
                "LOCAL": str(node.address("main", 4)),
                "PEERS": " ".join(peers),
                "OVERLAY_ADDRS": f"172.30.0.{node.index}/24 fd00:30::{node.index}/64",
                "MTU": str(MTU),
            }
            run(node.namespace, ["bash", "-euc", script], env=env)
            lab.annotate_node(node.name, {ANNOTATION: ",".join(overlay_addresses(node.index))})
        lab.start_daemons()
        lab.wait_converged(timeout=5.0)
        yield lab


def _vxlan_packets(lab: Lab, node: str) -> int:
    link = json.loads(lab.run(node, ["ip", "-j", "-s", "link", "show", "vxlan0"]))[0]
    return int(link["stats64"]["tx"]["packets"])


def test_routes_point_at_the_overlay_addresses(overlay_lab: Lab) -> None:
    routes = overlay_lab.routes("n1", "main")
    assert {str(r.gateway) for r in routes} == set(overlay_addresses(2))
    assert "dev vxlan0" in overlay_lab.run("n1", ["ip", "route", "show", "proto", "202"])


@pytest.mark.parametrize("family,header", [(4, 28), (6, 48)])
def test_full_size_packets_cross_the_overlay_without_fragmentation(
    overlay_lab: Lab, family: int, header: int
) -> None:
    eth0 = json.loads(overlay_lab.run("n1-pod1", ["ip", "-j", "link", "show", "eth0"]))[0]
    assert eth0["mtu"] == MTU
    before = _vxlan_packets(overlay_lab, "n1")

    for src, dst in (("n1-pod1", "n2-pod1"), ("n2-pod1", "n1-pod1")):
        assert overlay_lab.ping(src, dst, family=family, size=MTU - header, dont_fragment=True)
        # one byte more does not fit the pod's MTU: the overlay's limit is real
        assert not overlay_lab.ping(
            src, dst, family=family, size=MTU - header + 1, dont_fragment=True, deadline=0.5
        )

    assert _vxlan_packets(overlay_lab, "n1") > before
