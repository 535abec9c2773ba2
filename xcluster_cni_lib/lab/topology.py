"""Namespaces and links: the switch, the nodes and their uplinks.

All links are created inside the lab's namespaces (a veth is created in the switch
namespace with its peer directly in the node), so nothing appears in the root namespace
and parallel labs never collide on interface names.
"""

from __future__ import annotations

from collections.abc import Callable

from xcluster_cni_lib.core.values import IPAddress
from xcluster_cni_lib.lab.nodes import LabNode
from xcluster_cni_lib.lab.shell import ip_batch, run, sysctl
from xcluster_cni_lib.lab.spec import LabSpec, NetworkSpec, switch_port

# Inside a node: route between uplinks and pod bridges, no duplicate address detection
# (addresses are usable at once, no fixed waits), no reverse-path filter (the lab's
# address changes must not be dropped by a strict host default inherited by new
# namespaces), and a re-addressed uplink keeps its new address when the old one goes
# (promote_secondaries).
NODE_SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.ipv6.conf.all.forwarding": "1",
    "net.ipv6.conf.all.accept_dad": "0",
    "net.ipv6.conf.default.accept_dad": "0",
    "net.ipv4.conf.all.rp_filter": "0",
    "net.ipv4.conf.default.rp_filter": "0",
    "net.ipv4.conf.all.promote_secondaries": "1",
    "net.ipv4.conf.default.promote_secondaries": "1",
}
POD_SYSCTLS = {
    "net.ipv6.conf.all.accept_dad": "0",
    "net.ipv6.conf.default.accept_dad": "0",
}
SWITCH_SYSCTLS = {"net.ipv6.conf.default.disable_ipv6": "1"}


def add_namespace(name: str, *, sysctls: dict[str, str], record: Callable[[str], None]) -> None:
    """Create a namespace (recorded first, so a crash right after still cleans it), bring
    its loopback up and apply sysctls."""
    record(name)
    run(None, ["ip", "netns", "add", name])
    ip_batch(name, ["link set lo up"])
    if sysctls:
        sysctl(name, sysctls)


def build_switch(spec: LabSpec, *, record: Callable[[str], None]) -> None:
    """The switch namespace with one bridge per network (no multicast snooping, so IPv6
    neighbour discovery floods like on a dumb switch)."""
    add_namespace(spec.switch_ns, sysctls=SWITCH_SYSCTLS, record=record)
    lines = []
    for net in spec.networks:
        lines += [f"link add {switch_bridge(net)} type bridge mcast_snooping 0"]
        lines += [f"link set {switch_bridge(net)} up"]
    ip_batch(spec.switch_ns, lines)


def switch_bridge(net: NetworkSpec) -> str:
    return f"sw-{net.name}"[:15]


def build_node(spec: LabSpec, node: LabNode, *, record: Callable[[str], None]) -> None:
    """A node namespace with one uplink per network into the switch, dual-stack
    addresses on each, forwarding on."""
    add_namespace(node.namespace, sysctls=NODE_SYSCTLS, record=record)
    plug_node(spec, node)


def plug_node(spec: LabSpec, node: LabNode) -> None:
    """Connect an existing node namespace to the switch and address its uplinks."""
    switch_lines = []
    node_lines = []
    for net in spec.networks:
        port = switch_port(node.name, net)
        switch_lines += [
            f"link add {port} type veth peer name {net.uplink} netns {node.namespace}",
            f"link set {port} master {switch_bridge(net)} up",
        ]
        node_lines += [f"link set {net.uplink} up"]
        node_lines += address_lines("add", net.uplink, net, node.addresses[net.name])
    ip_batch(spec.switch_ns, switch_lines)
    ip_batch(node.namespace, node_lines)


def address_lines(
    verb: str, dev: str, net: NetworkSpec, addresses: tuple[IPAddress, ...]
) -> list[str]:
    lines = []
    for addr in addresses:
        plen = net.node_subnet(addr.version).prefixlen
        nodad = " nodad" if addr.version == 6 and verb == "add" else ""
        lines.append(f"address {verb} {addr}/{plen} dev {dev}{nodad}")
    return lines


def readdress_uplink(node: LabNode, net: NetworkSpec, new: tuple[IPAddress, ...]) -> None:
    """Replace a node's uplink addresses on one network (add the new ones first)."""
    old = node.addresses[net.name]
    lines = address_lines("add", net.uplink, net, tuple(a for a in new if a not in old))
    lines += address_lines("del", net.uplink, net, tuple(a for a in old if a not in new))
    ip_batch(node.namespace, lines)
