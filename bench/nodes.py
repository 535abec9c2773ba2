"""Nodes for the benchmarks: realistic ones (``xcluster_cni_lib.testing.nodes.make_node``,
~13 KB of JSON with 50 ``status.images``) and the routes the daemon should make of them."""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

from xcluster_cni_lib.core.nodes import parse_node

Node = dict[str, Any]


def make_nodes(count: int, *, start: int = 0, images: int = 50) -> list[Node]:
    """``count`` realistic nodes named ``node-<index>``."""
    from xcluster_cni_lib.testing.nodes import make_node

    return [make_node(f"node-{i}", index=i, images=images) for i in range(start, start + count)]


def routes_of(node: Node) -> dict[str, str]:
    """The routes (dst -> gateway, canonical text) another node installs for ``node``."""
    network = parse_node(node)
    out: dict[str, str] = {}
    for family in (4, 6):
        cidr, address = network.cidr(family), network.address(family)
        if cidr is not None and address is not None:
            out[str(cidr)] = str(address)
    return out


def addresses_of(node: Node) -> list[str]:
    network = parse_node(node)
    return [str(a) for a in network.addresses]


def with_new_addresses(node: Node, shift: int) -> Node:
    """A copy of ``node`` whose InternalIPs moved by ``shift`` (a node re-addressed: its
    routes must be replaced)."""
    out = copy.deepcopy(node)
    for entry in out["status"]["addresses"]:
        if entry.get("type") == "InternalIP":
            entry["address"] = str(ipaddress.ip_address(entry["address"]) + shift)
    out["metadata"].pop("resourceVersion", None)
    return out
