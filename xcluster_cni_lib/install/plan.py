"""Pure decisions of the installer: what to write, computed from plain values."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs

from xcluster_cni_lib.core.addresses import parse_address
from xcluster_cni_lib.core.errors import InputError, InvalidNode
from xcluster_cni_lib.core.nodes import parse_addresses
from xcluster_cni_lib.core.ranges import parse_cidr_list, shorten
from xcluster_cni_lib.core.values import IPAddress, IPNetwork, NodeFacts

CONFLIST_NAME = "10-xcluster-cni.conflist"
NETWORK_NAME = "xcluster-cni"
# What earlier versions wrote in the CNI config directory for the plugins (a kubeconfig
# holding a service-account token, the node's name); the served IPAM needs neither, so
# the installer removes them.
KUBECONFIG_NAME = "xcluster-cni-kubeconfig"
NODE_NAME_FILE = "xcluster-cni-node-name"
# The executable the IPAM plugin names point at, and the names (the shim picks the plugin
# type from the name it was started under).
SHIM_NAME = "xcluster-cni-shim"
SHIM_PLUGIN_NAMES = ("kube-node", "node-annotation")
# What earlier versions put in the CNI bin dir: the directory of the CPython bundle.
OLD_BUNDLE_DIR = "xcluster-cni"
# The reference plugins the image ships, installed only on a node that has none.
REFERENCE_PLUGINS = ("bridge", "host-local", "loopback", "portmap")
# platform.machine() values -> the shim's architecture directory.
MACHINE_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
BRIDGE = "cbr0"
CNI_VERSION = "1.0.0"
# The file extensions container runtimes read from the CNI config directory.
CONFIG_SUFFIXES = (".conf", ".conflist", ".json")
# The IPAM types of this project; a config using one of them is an xcluster config.
OUR_IPAM_TYPES = frozenset({"kube-node", "node-annotation"})


@attrs.frozen
class InstallSettings:
    """What ``xcluster-cni install`` does, from its flags and environment.

    ``cluster_cidrs`` (``CLUSTER_CIDRS``) goes into the conflist's IPAM section as
    ``clusterCIDRs``, the kube-node plugin's allow-list (empty: none written).
    ``overlay`` (``OVERLAY``, the daemon's setting): with ``vxlan`` the detected MTU
    leaves room for the encapsulation.
    """

    node_name: str
    install_k8s_net: bool = True
    mtu: int | None = None
    address_annotation: str | None = None
    cluster_cidrs: tuple[IPNetwork, ...] = ()
    overlay: str = "none"


def parse_overlay(name: str, value: str | None) -> str:
    """``OVERLAY``: ``none`` (default) or ``vxlan``; ``InputError`` names anything else."""
    if value is None or not value.strip():
        return "none"
    if value.strip().lower() not in ("none", "vxlan"):
        raise InputError(f"{name}={shorten(value)!r}: use none or vxlan")
    return value.strip().lower()


def shim_arch(machine: str) -> str:
    """The shim's architecture (``amd64``, ``arm64``) for a ``platform.machine()`` value;
    ``InputError`` naming the machine for any other."""
    arch = MACHINE_ARCH.get(machine.strip().lower())
    if arch is None:
        raise InputError(
            f"no host shim for this node's machine {machine!r}: "
            f"only x86-64 (x86_64) and arm64 (aarch64) are built"
        )
    return arch


def parse_cluster_cidrs(name: str, value: str | None) -> tuple[IPNetwork, ...]:
    """``CLUSTER_CIDRS``: a comma list of CIDRs of both families (the daemon's setting
    of the same name); unset or empty = no allow-list. A bad item or a default route (it
    would allow everything) raises ``InputError`` naming the variable."""
    if value is None:
        return ()
    cidrs = parse_cidr_list(value, key=name)
    for cidr in cidrs:
        if cidr.prefixlen == 0:
            raise InputError(
                f"{name}={shorten(value)!r}: {cidr} allows everything: leave it empty instead"
            )
    return cidrs


def parse_yes_no(name: str, value: str | None, *, default: bool) -> bool:
    """``yes``/``no`` (also true/false, 1/0, on/off) of an environment variable."""
    if value is None or value.strip() == "":
        return default
    text = value.strip().lower()
    if text in ("yes", "true", "1", "on"):
        return True
    if text in ("no", "false", "0", "off"):
        return False
    raise InputError(f"{name}={value!r}: expected yes or no")


def parse_mtu(name: str, value: str | None) -> int | None:
    """An MTU setting: None when unset, else an integer in 576..65535 (IPv4's minimum)."""
    if value is None or value.strip() == "":
        return None
    try:
        mtu = int(value.strip())
    except ValueError:
        raise InputError(f"{name}={value!r}: not an integer") from None
    if not 576 <= mtu <= 65535:
        raise InputError(f"{name}={value!r}: an MTU must be between 576 and 65535")
    return mtu


def render_json(value: Mapping[str, Any]) -> bytes:
    """The bytes of a JSON file we write."""
    return (json.dumps(value, indent=2) + "\n").encode()


def conflist(*, mtu: int, cluster_cidrs: tuple[IPNetwork, ...] = ()) -> dict[str, Any]:
    """The main network's conflist: ``bridge`` on cbr0 (gateway, default route, hairpin,
    MTU) with ``kube-node`` IPAM (and ``clusterCIDRs`` when given), then ``portmap``.

    The IPAM section names no node and no kubeconfig: ``kube-node`` on the host is the
    shim, and the node agent it forwards to knows its own node and has its own
    credentials."""
    ipam: dict[str, Any] = {"type": "kube-node"}
    if cluster_cidrs:
        ipam["clusterCIDRs"] = [str(c) for c in cluster_cidrs]
    return {
        "cniVersion": CNI_VERSION,
        "name": NETWORK_NAME,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "isDefaultGateway": True,
                "hairpinMode": True,
                "mtu": mtu,
                "ipam": ipam,
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def _uses_our_ipam(plugin: object) -> bool:
    if not isinstance(plugin, Mapping):
        return False
    ipam = plugin.get("ipam")
    return isinstance(ipam, Mapping) and ipam.get("type") in OUR_IPAM_TYPES


def is_xcluster_config(name: str, content: bytes) -> bool:
    """Whether a file of the CNI config directory is an xcluster config: ours by name, or
    any config or conflist using one of our IPAM plugins (a user's own variant)."""
    if name == CONFLIST_NAME:
        return True
    if not name.endswith(CONFIG_SUFFIXES):
        return False
    try:
        config = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return False
    if not isinstance(config, Mapping):
        return False
    plugins = config.get("plugins")
    if isinstance(plugins, list):
        return any(_uses_our_ipam(p) for p in plugins)
    return _uses_our_ipam(config)


def find_xcluster_config(files: Mapping[str, bytes]) -> str | None:
    """The first (by name) xcluster config among ``files`` (name -> content), if any."""
    return next((n for n in sorted(files) if is_xcluster_config(n, files[n])), None)


def node_address(facts: NodeFacts, *, address_annotation: str | None) -> IPAddress:
    """The address the MTU follows: the first of ``address_annotation``'s value when that
    annotation is configured, else the node's first valid InternalIP."""
    if address_annotation is not None:
        if facts.address_annotation is None:
            raise InvalidNode(
                facts.name, "the address annotation is missing", key=address_annotation
            )
        return parse_addresses(facts.address_annotation, node=facts.name, key=address_annotation)[0]
    for text in facts.internal_ips:
        try:
            return parse_address(text)
        except ValueError:
            continue
    raise InvalidNode(
        facts.name, "the node has no valid InternalIP address", key="status.addresses"
    )
