"""What a lab is made of, as frozen values, and the pure arithmetic that names and
numbers its parts. Nothing here touches the system.

A lab has nodes ``n1``..``nN``. Every node is a network namespace named
``<prefix>-<lab_id>-<node>`` with one uplink per network (``eth1`` for the main network,
``eth2`` for the secondary one) into a bridge in the lab's switch namespace. Node ``i``
gets address number ``i`` in each network's node subnets and subnet number ``i`` of each
network's pod ranges.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from xcluster_cni_lib.core.errors import XclusterError
from xcluster_cni_lib.core.values import Annotations, IPAddress, IPNetwork

DEFAULT_STATE_ROOT = Path("/run/xcluster-cni/lab")
# routed networks: each node's own subnet, cut from the network's node range
ROUTED_PREFIX = {4: 28, 6: 112}
# the "outside" host behind the lab's router (documentation ranges): router, host
OUTSIDE_SUBNETS = ("203.0.113.0/24", "2001:db8:1::/64")
DEFAULT_PREFIX = "xcl"

_NAME = re.compile(r"^[a-z][a-z0-9]{0,7}$")
_POD = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")


class LabError(XclusterError, RuntimeError):
    """The lab could not do what was asked; the message says what and where."""


def _check_name(what: str) -> Callable[[Any, Any, str], None]:
    def check(_inst: Any, _attr: Any, value: str) -> None:
        if not _NAME.match(value):
            raise LabError(
                f"{what} must be 1-8 lowercase letters/digits starting with a letter: {value!r}"
            )

    return check


def check_lab_name(what: str, value: str) -> str:
    """``value`` when it is a valid lab id or prefix (so it can never name a path
    outside the state root), else ``LabError``."""
    _check_name(what)(None, None, value)
    return value


def _path(value: str | os.PathLike[str]) -> Path:
    return Path(value)


def _optional_path(value: str | os.PathLike[str] | None) -> Path | None:
    return None if value is None else Path(value)


def new_lab_id() -> str:
    """A short random lab id (a letter then five hex digits)."""
    return "l" + secrets.token_hex(3)[:5]


@attrs.frozen
class NetworkSpec:
    """One network of the lab: its node segment, its pod ranges, and how its daemon
    and IPAM find it on the Node objects.

    The first network of a lab is the main one: its pod CIDRs go to ``spec.podCIDRs``
    and its node addresses to the InternalIP addresses. Every network with annotation
    names also publishes its CIDRs/addresses under those annotations (the daemon and
    ``kube-node`` of that network are configured to read them)."""

    name: str
    uplink: str  # the node's interface on this network's segment
    node_subnets: tuple[str, str]  # IPv4 and IPv6 node segments, e.g. 192.168.100.0/24
    pod_ranges: tuple[str, str]  # cluster-wide pod ranges; node i gets subnet i
    pod_prefixes: tuple[int, int] = (24, 64)  # size of one node's pod CIDR per family
    protocol: int = 202
    bridge: str = "cbr0"  # the pods' bridge inside each node
    pod_ifname: str = "eth0"
    cidr_annotation: str | None = None
    address_annotation: str | None = None
    http_port: int = 9202  # the daemon's HTTP_ADDRESS port (127.0.0.1 in the node)
    mtu: int | None = None  # the bridge plugin's ``mtu`` (pod and bridge MTU)
    # nodes on separate subnets behind the lab's router, instead of one segment
    routed: bool = False
    overlay: str = "none"  # the daemon's OVERLAY
    masquerade: bool = False  # the daemon's MASQUERADE

    @property
    def annotations(self) -> Annotations:
        """How this network's daemon reads the Node objects (``InputError`` for a bad key)."""
        return Annotations(cidr=self.cidr_annotation, address=self.address_annotation)

    def node_address(self, index: int, family: int) -> IPAddress:
        """Node ``index``'s address of one family on this network's segment (routed: the
        second address of its own subnet, the router having the first)."""
        if self.routed:
            return self.node_segment(index, family).network_address + 2
        net = self.node_subnet(family)
        if not 0 < index < net.num_addresses - 1:
            raise LabError(f"network {self.name}: node number {index} does not fit {net}")
        return net.network_address + index

    def node_subnet(self, family: int) -> IPNetwork:
        """The network's node range: one segment, or (routed) the range the nodes'
        subnets are cut from."""
        return ipaddress.ip_network(self.node_subnets[0 if family == 4 else 1])

    def node_segment(self, index: int, family: int) -> IPNetwork:
        """The subnet node ``index`` is on: the shared segment, or (routed) its own /28
        (IPv4) or /112 (IPv6) of the node range."""
        base = self.node_subnet(family)
        if not self.routed:
            return base
        prefix = ROUTED_PREFIX[family]
        size = 2 ** (base.max_prefixlen - prefix)
        if not 0 < index < 2 ** (prefix - base.prefixlen):
            raise LabError(f"network {self.name}: routed node number {index} does not fit {base}")
        return ipaddress.ip_network((int(base.network_address) + index * size, prefix))

    def router_address(self, index: int, family: int) -> IPAddress:
        """The lab router's address on node ``index``'s segment (its default gateway)."""
        segment = self.node_segment(index, family)
        if self.routed:
            return segment.network_address + 1
        return segment.broadcast_address - 1

    def node_cidr(self, index: int, family: int) -> IPNetwork:
        """Node ``index``'s pod CIDR of one family: subnet ``index`` of the pod range."""
        k = 0 if family == 4 else 1
        base = ipaddress.ip_network(self.pod_ranges[k])
        new_prefix = self.pod_prefixes[k]
        if new_prefix < base.prefixlen or index >= 2 ** (new_prefix - base.prefixlen):
            raise LabError(f"network {self.name}: node number {index} does not fit {base}")
        size = 2 ** (base.max_prefixlen - new_prefix)
        first = int(base.network_address) + index * size
        return ipaddress.ip_network((first, new_prefix))


MAIN = NetworkSpec(
    name="main",
    uplink="eth1",
    node_subnets=("192.168.100.0/24", "fd00:100::/64"),
    pod_ranges=("10.244.0.0/16", "fd00:10:244::/48"),
    protocol=202,
    bridge="cbr0",
    pod_ifname="eth0",
    http_port=9202,
)

SECONDARY = NetworkSpec(
    name="net2",
    uplink="eth2",
    node_subnets=("192.168.200.0/24", "fd00:200::/64"),
    pod_ranges=("10.245.0.0/16", "fd00:10:245::/48"),
    protocol=200,
    bridge="cbr1",
    pod_ifname="net1",
    cidr_annotation="lab.xcluster-cni.io/net2-cidrs",
    address_annotation="lab.xcluster-cni.io/net2-addresses",
    http_port=9200,
)


@attrs.frozen
class LabSpec:
    """How to build a lab. Defaults: 3 nodes, 2 pods each, main and secondary network,
    the real daemon and the ``kube-node`` IPAM. The directories (``state_root``,
    ``bin_dir``, ``cni_bin_dir``) may be given as ``str`` or ``Path``; they are ``Path``."""

    nodes: int = attrs.field(default=3)
    pods_per_node: int = 2
    networks: tuple[NetworkSpec, ...] = (MAIN, SECONDARY)
    lab_id: str = attrs.field(factory=new_lab_id, validator=_check_name("lab id"))
    prefix: str = attrs.field(default=DEFAULT_PREFIX, validator=_check_name("prefix"))
    state_root: Path = attrs.field(default=DEFAULT_STATE_ROOT, converter=_path)
    start_daemons: bool = True
    ipam: str = "kube-node"  # or "host-local": the same ranges without the node file
    ipv4_namespaces: tuple[str, ...] | None = None  # kube-node's ``ipv4-namespaces``
    # where ``xcluster-cni`` and ``kube-node`` are; default: beside python
    bin_dir: Path | None = attrs.field(default=None, converter=_optional_path)
    cni_bin_dir: Path = attrs.field(default=Path("/usr/lib/cni"), converter=_path)
    log_level: str = "debug"
    resync_interval: float = 60.0
    cni_version: str = "1.0.0"
    # a host outside the cluster (namespace ``out``, OUTSIDE_SUBNETS) behind the lab's
    # router, which then also routes the nodes' default traffic
    outside: bool = False

    @nodes.validator
    def _check_nodes(self, _attr: object, value: int) -> None:
        if not 1 <= value <= 99:
            raise LabError(f"a lab has 1 to 99 nodes, not {value}")

    @property
    def down_command(self) -> str:
        """The command that removes this lab."""
        prefix = f" --prefix {self.prefix}" if self.prefix != DEFAULT_PREFIX else ""
        return f"xcluster-cni lab down --id {self.lab_id}{prefix}"

    @property
    def main(self) -> NetworkSpec:
        return self.networks[0]

    @property
    def state_dir(self) -> Path:
        return self.state_root / f"{self.prefix}-{self.lab_id}"

    @property
    def ns_prefix(self) -> str:
        """Every namespace of this lab starts with this."""
        return f"{self.prefix}-{self.lab_id}-"

    def namespace(self, name: str) -> str:
        """The network namespace of a node, pod or the switch."""
        return f"{self.ns_prefix}{name}"

    @property
    def switch_ns(self) -> str:
        return self.namespace("switch")

    @property
    def outside_ns(self) -> str:
        return self.namespace("out")

    @property
    def has_router(self) -> bool:
        """The switch namespace also routes: a routed network or an outside host."""
        return self.outside or any(n.routed for n in self.networks)

    def outside_address(self, family: int, *, router: bool = False) -> IPAddress:
        """The outside host's address of one family (``router``: the router's side)."""
        net = ipaddress.ip_network(OUTSIDE_SUBNETS[0 if family == 4 else 1])
        return net.network_address + (1 if router else 10)

    def network(self, name: str) -> NetworkSpec:
        for net in self.networks:
            if net.name == name:
                return net
        raise LabError(f"no network {name!r} in this lab (have: {[n.name for n in self.networks]})")


def node_name(index: int) -> str:
    return f"n{index}"


def node_index(name: str) -> int:
    if not re.fullmatch(r"n[1-9][0-9]?", name):
        raise LabError(f"not a lab node name: {name!r} (n1..n99)")
    return int(name[1:])


def check_pod_name(name: str) -> str:
    if not _POD.match(name):
        raise LabError(f"a pod name is lowercase letters, digits and '-', at most 31: {name!r}")
    return name


def switch_port(node: str, net: NetworkSpec) -> str:
    """The switch-side name of a node's uplink (fits the 15-character limit)."""
    return f"{node}-{net.uplink}"


def state_file(state_dir: Path) -> Path:
    return state_dir / "state.json"
