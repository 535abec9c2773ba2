"""kube-node's subnets from a CIDR annotation (``plugin.resolve.node_subnets``) are the
core's strict ``core.nodes.parse_subnets`` (the router daemon's rule), and a node refused
names the node."""

from __future__ import annotations

import pytest

from xcluster_cni_lib.core.errors import InvalidNode
from xcluster_cni_lib.core.nodes import parse_subnets
from xcluster_cni_lib.plugin.protocol import CniError
from xcluster_cni_lib.plugin.resolve import node_subnets

VALUES = [
    "10.0.0.0/24",
    "10.0.0.0/24,fd00::/64",
    "fd00::/64, 10.0.0.0/24",
    "10.0.0.7/24",
    "::ffff:10.7.0.0/120,fd00:7::/64",
    "192.168.55.0/26,fd00:5::1:0/112",
    "10.0.0.0/24,10.1.0.0/24",
    "fd00::/64,fd01::/64",
    "10.0.0.0/24,fd00::/64,10.2.0.0/24",
    "10.0.0.0/24,",
    ",10.0.0.0/24",
    "",
    "banana",
    "10.0.0.0/33",
    "10.0.0.0",
    "0.0.0.0/0",
    "10.0.0.0/-1",
    "fd00::/129",
    "1.2.3.4/24/5",
    "10.0.0.0/31",
    "10.0.0.0/30",
    "fd00::/127",
    "::ffff:10.0.0.0/126",
]


@pytest.mark.parametrize("value", VALUES)
def test_annotation_rules_agree(value: str) -> None:
    node = {"metadata": {"name": "n1", "annotations": {"a": value}}}
    try:
        expected = [str(s) for s in parse_subnets(value, node="n1", key="a")]
    except InvalidNode:
        expected = None
    try:
        got = [str(s) for s in node_subnets(node, "a")]
    except CniError as e:
        assert e.code == 100 and "n1" in e.msg
        got = None
    assert got == expected
