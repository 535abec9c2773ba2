"""Namespaces and links: the switch, the nodes and their uplinks, and (when asked) the
router and the outside host.

All links are created inside the lab's namespaces (a veth is created in the switch
namespace with its peer directly in the node), so nothing appears in the root namespace
and parallel labs never collide on interface names.

The switch namespace bridges each network's segment. With a routed network
(``NetworkSpec.routed``: every node on its own subnet) or an outside host
(``LabSpec.outside``) it also routes: the switch-side end of a routed node's uplink holds
the router's address on that node's subnet, a bridged segment gets a router address on
its bridge, and the nodes' default routes (main network) point at the router. The
outside host (namespace ``out``) hangs off the router on its own subnet and has no
route to any pod CIDR, as a host on the internet has none.
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
ROUTER_SYSCTLS = {"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1"}


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
    sysctls = {**SWITCH_SYSCTLS, **(ROUTER_SYSCTLS if spec.has_router else {})}
    add_namespace(spec.switch_ns, sysctls=sysctls, record=record)
    lines = []
    for net in spec.networks:
        if net.routed:
            continue
        bridge = switch_bridge(net)
        lines += [f"link add {bridge} type bridge mcast_snooping 0", f"link set {bridge} up"]
    ip_batch(spec.switch_ns, lines)
    if spec.has_router:  # the router's address on each bridged segment
        for net in spec.networks:
            if not net.routed:
                _router_side(spec, switch_bridge(net), net, 1)
    if spec.outside:
        build_outside(spec, record=record)


def _router_side(spec: LabSpec, dev: str, net: NetworkSpec, index: int) -> None:
    """Give the router's side ``dev`` its addresses on node ``index``'s segment."""
    sysctl(spec.switch_ns, {f"net.ipv6.conf.{dev}.disable_ipv6": "0"})
    segment_lines = []
    for family in (4, 6):
        address = net.router_address(index, family)
        plen = net.node_segment(index, family).prefixlen
        nodad = " nodad" if family == 6 else ""
        segment_lines.append(f"address add {address}/{plen} dev {dev}{nodad}")
    ip_batch(spec.switch_ns, segment_lines)


def build_outside(spec: LabSpec, *, record: Callable[[str], None]) -> None:
    """The outside host: its own namespace and subnet behind the router, default routes
    to the router, no route to any pod CIDR."""
    add_namespace(spec.outside_ns, sysctls=POD_SYSCTLS, record=record)
    ip_batch(spec.switch_ns, [f"link add out0 type veth peer name eth0 netns {spec.outside_ns}"])
    sysctl(spec.switch_ns, {"net.ipv6.conf.out0.disable_ipv6": "0"})
    router = [
        f"address add {spec.outside_address(4, router=True)}/24 dev out0",
        f"address add {spec.outside_address(6, router=True)}/64 dev out0 nodad",
        "link set out0 up",
    ]
    ip_batch(spec.switch_ns, router)
    ip_batch(
        spec.outside_ns,
        [
            f"address add {spec.outside_address(4)}/24 dev eth0",
            f"address add {spec.outside_address(6)}/64 dev eth0 nodad",
            "link set eth0 up",
            f"route add default via {spec.outside_address(4, router=True)}",
            f"route add default via {spec.outside_address(6, router=True)}",
        ],
    )


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
    routed_ports = []
    for net in spec.networks:
        port = switch_port(node.name, net)
        switch_lines.append(
            f"link add {port} type veth peer name {net.uplink} netns {node.namespace}"
        )
        if net.routed:
            switch_lines.append(f"link set {port} up")
            routed_ports.append((port, net))
        else:
            switch_lines.append(f"link set {port} master {switch_bridge(net)} up")
        node_lines += [f"link set {net.uplink} up"]
        node_lines += address_lines("add", net.uplink, net, node.addresses[net.name], node.index)
    ip_batch(spec.switch_ns, switch_lines)
    for port, net in routed_ports:
        _router_side(spec, port, net, node.index)
    if spec.has_router:  # default routes (main network) via the router
        main = spec.main
        node_lines += [
            f"route add default via {main.router_address(node.index, f)}" for f in (4, 6)
        ]
    ip_batch(node.namespace, node_lines)


def address_lines(
    verb: str, dev: str, net: NetworkSpec, addresses: tuple[IPAddress, ...], index: int
) -> list[str]:
    lines = []
    for addr in addresses:
        plen = net.node_segment(index, addr.version).prefixlen
        nodad = " nodad" if addr.version == 6 and verb == "add" else ""
        lines.append(f"address {verb} {addr}/{plen} dev {dev}{nodad}")
    return lines


def readdress_uplink(node: LabNode, net: NetworkSpec, new: tuple[IPAddress, ...]) -> None:
    """Replace a node's uplink addresses on one network (add the new ones first)."""
    old = node.addresses[net.name]
    added = tuple(a for a in new if a not in old)
    lines = address_lines("add", net.uplink, net, added, node.index)
    lines += address_lines(
        "del", net.uplink, net, tuple(a for a in old if a not in new), node.index
    )
    ip_batch(node.namespace, lines)
