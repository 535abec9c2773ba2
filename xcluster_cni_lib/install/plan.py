"""Pure decisions of the installer: what to write, computed from plain values."""

from __future__ import annotations

import base64
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
KUBECONFIG_NAME = "xcluster-cni-kubeconfig"
NODE_NAME_FILE = "xcluster-cni-node-name"
BRIDGE = "cbr0"
CNI_VERSION = "1.0.0"
# The file extensions container runtimes read from the CNI config directory.
CONFIG_SUFFIXES = (".conf", ".conflist", ".json")
# The IPAM types of this project; a config using one of them is an xcluster config.
OUR_IPAM_TYPES = frozenset({"kube-node", "node-annotation"})


@attrs.frozen
class InstallSettings:
    """What ``xcluster-cni install`` does, from its flags and environment.

    ``host_conf_dir`` is the CNI config directory as the host sees it: the plugins run on
    the host, so the paths written into configs use it, not the container's mount path.
    ``cluster_cidrs`` (``CLUSTER_CIDRS``) goes into the conflist's IPAM section as
    ``clusterCIDRs``, the kube-node plugin's allow-list (empty: none written).
    """

    node_name: str
    install_k8s_net: bool = True
    host_conf_dir: str = "/etc/cni/net.d"
    mtu: int | None = None
    address_annotation: str | None = None
    cluster_cidrs: tuple[IPNetwork, ...] = ()


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


def api_server_url(host: str, port: str) -> str:
    """``https://host:port``, with an IPv6 host in brackets (as Kubernetes sets
    ``KUBERNETES_SERVICE_HOST`` to a bare IPv6 address on IPv6 clusters)."""
    host = host.strip()
    port = port.strip()
    if not host or not port:
        raise InputError(
            "KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must both be set "
            f"(got host={host!r}, port={port!r})"
        )
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"KUBERNETES_SERVICE_PORT={port!r}: not a port number")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"https://{host}:{port}"


def kubeconfig(*, server: str, token: str, ca_cert: bytes) -> dict[str, Any]:
    """A kubeconfig for the plugins: the pod's service-account token and the cluster CA
    (inline, so the file stands alone on the host)."""
    token = token.strip()
    if not token:
        raise InputError("the service-account token is empty")
    if b"BEGIN CERTIFICATE" not in ca_cert:
        raise InputError("the service-account ca.crt holds no PEM certificate")
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "local",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_cert).decode("ascii"),
                },
            }
        ],
        "users": [{"name": "xcluster-cni", "user": {"token": token}}],
        "contexts": [
            {"name": "xcluster-cni", "context": {"cluster": "local", "user": "xcluster-cni"}}
        ],
        "current-context": "xcluster-cni",
    }


def render_json(value: Mapping[str, Any]) -> bytes:
    """The bytes of a JSON file we write (JSON is also valid YAML for kubeconfig readers)."""
    return (json.dumps(value, indent=2) + "\n").encode()


def conflist(
    *,
    node_name: str,
    mtu: int,
    host_conf_dir: str,
    cluster_cidrs: tuple[IPNetwork, ...] = (),
) -> dict[str, Any]:
    """The main network's conflist: ``bridge`` on cbr0 (gateway, default route, hairpin,
    MTU) with ``kube-node`` IPAM for this node (and ``clusterCIDRs`` when given), then
    ``portmap``."""
    if not node_name:
        raise InputError("NODE_NAME is empty: the conflist must name this node")
    ipam: dict[str, Any] = {
        "type": "kube-node",
        "nodeName": node_name,
        "kubeconfig": f"{host_conf_dir.rstrip('/')}/{KUBECONFIG_NAME}",
    }
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
