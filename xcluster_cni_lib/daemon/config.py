"""The router daemon's configuration: environment variables, each overridable by a flag.

Every invalid value raises ``ConfigError`` naming the variable, so the daemon stops at
start instead of running half-configured. Only the variables in ``SETTINGS`` are read;
all others are ignored (a pod's environment holds many unrelated variables, e.g. the
``*_SERVICE_HOST`` ones Kubernetes injects, so unknown names cannot be an error), except
that ``XCLUSTER_*`` variables get a warning: they look like settings but are not read.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping

import attrs

from xcluster_cni_lib.core.errors import InputError, shorten
from xcluster_cni_lib.core.nodes import LONGEST_POD_CIDR
from xcluster_cni_lib.core.overlay import DEFAULT_VXLAN_PORT, default_device
from xcluster_cni_lib.core.protocols import DEFAULT_PROTOCOL, check_protocol
from xcluster_cni_lib.core.ranges import (
    DEFAULT_MIN_PREFIX_V4,
    DEFAULT_MIN_PREFIX_V6,
    DENIED,
    RangePolicy,
    parse_cidr_list,
)
from xcluster_cni_lib.core.values import (
    Annotations,
    IPNetwork,
    annotation_key_problem,
    is_dns_subdomain,
)
from xcluster_cni_lib.support.jsonlog import LEVELS
from xcluster_cni_lib.support.rtprotos import read_rt_protos

DEFAULT_RESYNC = 60.0
DEFAULT_NODE_FILE = "/var/lib/cni/xcluster-cni/own-node.json"
# the image's host-local (docs/install.md), then Debian's
DEFAULT_IPAM_CNI_PATH = "/opt/xcluster-cni/reference:/usr/lib/cni"
DEFAULT_POLICY_BRIDGE = "cbr0"

# name -> one-line help; the flag is --name-in-kebab-case.
SETTINGS: dict[str, str] = {
    "NODE_NAME": "this node's name; its own pod CIDR gets no route (else machine-id match)",
    "LOG_LEVEL": "error, warning, info, debug or trace, or a zap level number (default info)",
    "CIDR_ANNOTATION": "node annotation holding pod CIDRs (comma-separated), else spec.podCIDRs",
    "ADDRESS_ANNOTATION": "node annotation holding node addresses, else InternalIP addresses",
    "PROTOCOL": "route protocol number 5-255 or a name from rt_protos (default 202)",
    "KUBECONFIG": "kubeconfig file (default: in-cluster config)",
    "NODES_FILE": "read nodes from this file (a Node list, JSON or YAML) instead of the API",
    "RESYNC_INTERVAL": "full reconcile period: seconds or 500ms/30s/5m (default 60s)",
    "HTTP_ADDRESS": "host:port or [v6]:port for /healthz /readyz /metrics; empty = off",
    "CLUSTER_CIDRS": "comma list of the cluster's pod ranges (both families): node CIDRs "
    "outside them get no route; empty = no allow-list (the deny-list still applies)",
    "MIN_POD_PREFIX_V4": "shortest IPv4 pod CIDR a node may claim, 1-30 (default 8)",
    "MIN_POD_PREFIX_V6": "shortest IPv6 pod CIDR a node may claim, 1-126 (default 32)",
    "IPAM_SOCKET": "serve the IPAM verbs to the host shim on this Unix socket path "
    "(e.g. /run/xcluster-cni/ipam.sock); empty = off",
    "OVERLAY": "none (routes via node addresses) or vxlan (the built-in overlay, for nodes "
    "on different subnets); default none",
    "VXLAN_ID": "the overlay's VNI, 1-16777215 (default: the route protocol number)",
    "VXLAN_PORT": f"the overlay's UDP port (default {DEFAULT_VXLAN_PORT})",
    "VXLAN_DEVICE": "the overlay's device name (default xcvx<protocol>)",
    "MASQUERADE": "true: traffic from this node's pods to outside every pod CIDR leaves with "
    "the node's address (nftables); default false",
    "NON_MASQUERADE_CIDRS": "comma list of destinations pods reach with their own address "
    "besides the pod CIDRs (both families)",
    "NETWORK_POLICY": "true: enforce Kubernetes NetworkPolicy for this node's pods (nftables; "
    "watches Pods, Namespaces, NetworkPolicies through the API); default false",
    "POLICY_BRIDGE": "the pods' bridge, whose same-node traffic policy redirects through the "
    "node (default cbr0; empty: pods are not bridged)",
    "POLICY_SAME_NODE": "redirect (same-node traffic of policed pods routed through the node "
    "by a bridge table) or br-netfilter (left bridged, judged through br_netfilter, when the "
    "node has bridge-nf-call-iptables and -ip6tables on; else redirect); default redirect",
    "POLICY_LOG_DENIED": "true: log denied packets to the kernel log (nft log, at most 10/s); "
    "default false",
    "IPAM_NODE_FILE": "where the IPAM server keeps its own Node for restarts without the "
    f"API server (default {DEFAULT_NODE_FILE})",
    "IPAM_CNI_PATH": "directories searched for host-local by served IPAM calls, before the "
    f"caller's CNI_PATH (default {DEFAULT_IPAM_CNI_PATH})",
}


class ConfigError(InputError):
    """A setting is invalid; the message names the variable."""

    def __init__(self, name: str, value: str, reason: str) -> None:
        self.name = name
        self.value = value
        super().__init__(f"{name}={shorten(value)!r}: {reason}")


@attrs.frozen
class DaemonConfig:
    """A validated daemon configuration."""

    node_name: str | None = None
    log_level: str = "info"
    cidr_annotation: str | None = None
    address_annotation: str | None = None
    protocol: int = DEFAULT_PROTOCOL
    kubeconfig: str | None = None
    nodes_file: str | None = None
    resync_interval: float = DEFAULT_RESYNC
    http_address: tuple[str, int] | None = None
    cluster_cidrs: tuple[IPNetwork, ...] = ()
    min_pod_prefix_v4: int = DEFAULT_MIN_PREFIX_V4
    min_pod_prefix_v6: int = DEFAULT_MIN_PREFIX_V6
    ipam_socket: str | None = None
    overlay: str = "none"
    vxlan_id: int | None = None
    vxlan_port: int = DEFAULT_VXLAN_PORT
    vxlan_device: str | None = None
    masquerade: bool = False
    non_masquerade_cidrs: tuple[IPNetwork, ...] = ()
    ipam_node_file: str = DEFAULT_NODE_FILE
    ipam_cni_path: str = DEFAULT_IPAM_CNI_PATH
    network_policy: bool = False
    policy_bridge: str | None = DEFAULT_POLICY_BRIDGE
    policy_log_denied: bool = False
    policy_same_node: str = "redirect"
    warnings: tuple[str, ...] = attrs.field(default=(), eq=False)

    @property
    def range_policy(self) -> RangePolicy:
        """The pod-CIDR rule these settings configure, without the host's subnets (the
        service adds those: ``core.ranges.host_view``)."""
        return RangePolicy(
            cluster_cidrs=self.cluster_cidrs,
            min_prefix_v4=self.min_pod_prefix_v4,
            min_prefix_v6=self.min_pod_prefix_v6,
        )

    @property
    def overlay_device(self) -> str | None:
        """The vxlan device routes go through (OVERLAY=vxlan), else None."""
        if self.overlay != "vxlan":
            return None
        return self.vxlan_device or default_device(self.protocol)

    @property
    def vni(self) -> int:
        return self.vxlan_id if self.vxlan_id is not None else self.protocol

    @property
    def annotations(self) -> Annotations:
        """The annotation configuration, given once to the node source."""
        return Annotations(cidr=self.cidr_annotation, address=self.address_annotation)

    def to_log(self) -> dict[str, object]:
        """The settings as log fields (no secrets exist in them: paths, not contents)."""
        return {
            "node_name": self.node_name,
            "log_level": self.log_level,
            "cidr_annotation": self.cidr_annotation,
            "address_annotation": self.address_annotation,
            "protocol": self.protocol,
            "kubeconfig": self.kubeconfig,
            "nodes_file": self.nodes_file,
            "resync_interval_s": self.resync_interval,
            "http_address": format_address(self.http_address) if self.http_address else None,
            "cluster_cidrs": ",".join(str(c) for c in self.cluster_cidrs) or None,
            "min_pod_prefix_v4": self.min_pod_prefix_v4,
            "min_pod_prefix_v6": self.min_pod_prefix_v6,
            "ipam_socket": self.ipam_socket,
            "overlay": self.overlay,
            "vxlan": (
                f"{self.overlay_device} id {self.vni} port {self.vxlan_port}"
                if self.overlay == "vxlan"
                else None
            ),
            "masquerade": self.masquerade,
            "non_masquerade_cidrs": ",".join(map(str, self.non_masquerade_cidrs)) or None,
            "ipam_node_file": self.ipam_node_file if self.ipam_socket else None,
            "ipam_cni_path": self.ipam_cni_path if self.ipam_socket else None,
            "network_policy": self.network_policy,
            "policy_bridge": self.policy_bridge if self.network_policy else None,
            "policy_log_denied": self.policy_log_denied if self.network_policy else None,
            "policy_same_node": self.policy_same_node if self.network_policy else None,
        }


def format_address(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def load_config(
    env: Mapping[str, str],
    flags: Mapping[str, str | None] | None = None,
    *,
    rt_protos: Mapping[int, str] | None = None,
) -> DaemonConfig:
    """Build a config from ``env`` overridden by ``flags`` (same names; ``None`` = not
    given). ``rt_protos`` (number -> name) defaults to the system's iproute2 files."""
    merged: dict[str, str] = {k: env[k] for k in SETTINGS if k in env}
    for key, value in (flags or {}).items():
        if key not in SETTINGS:
            raise ConfigError(key, str(value), "unknown setting")
        if value is not None:
            merged[key] = value

    def get(name: str) -> str | None:
        value = merged.get(name)
        if value is None:
            return None
        value = value.strip()
        return value or None

    warnings: list[str] = [
        f"{name} is set but not read: the daemon's settings have no prefix ({name[9:]}?)"
        for name in sorted(env)
        if name.startswith("XCLUSTER_")
    ]
    level = parse_log_level(get("LOG_LEVEL"))

    names = rt_protos if rt_protos is not None else read_rt_protos()
    protocol = parse_protocol(get("PROTOCOL"), names, warnings)

    node_name = get("NODE_NAME")
    if node_name is not None and not is_dns_subdomain(node_name):
        raise ConfigError("NODE_NAME", node_name, "not a valid node name (DNS subdomain)")
    if node_name is None:
        warnings.append("NODE_NAME is not set: the own node is found by machine-id only")

    nodes_file = get("NODES_FILE")
    kubeconfig = get("KUBECONFIG")
    network_policy = parse_bool("NETWORK_POLICY", get("NETWORK_POLICY"))
    if nodes_file is not None and kubeconfig is not None and not network_policy:
        warnings.append("NODES_FILE is set: KUBECONFIG is ignored")
        kubeconfig = None
    if network_policy and node_name is None:
        raise ConfigError(
            "NETWORK_POLICY", "true", "policy is enforced for this node's pods: set NODE_NAME"
        )
    if network_policy and nodes_file is not None and kubeconfig is None:
        raise ConfigError(
            "NETWORK_POLICY",
            "true",
            "with NODES_FILE, the policy watches need the API: set KUBECONFIG",
        )
    if kubeconfig is not None and not any(os.path.isfile(p) for p in kubeconfig.split(os.pathsep)):
        raise ConfigError("KUBECONFIG", kubeconfig, "no such file")
    if nodes_file is not None and os.path.isdir(nodes_file):
        raise ConfigError("NODES_FILE", nodes_file, "is a directory")

    ipam_socket = parse_socket_path(get("IPAM_SOCKET"))
    if ipam_socket is not None and node_name is None and nodes_file is None:
        raise ConfigError(
            "IPAM_SOCKET",
            ipam_socket,
            "the IPAM server watches its own node: set NODE_NAME (from the downward API)",
        )

    return DaemonConfig(
        node_name=node_name,
        log_level=level,
        cidr_annotation=parse_annotation("CIDR_ANNOTATION", get("CIDR_ANNOTATION")),
        address_annotation=parse_annotation("ADDRESS_ANNOTATION", get("ADDRESS_ANNOTATION")),
        protocol=protocol,
        kubeconfig=kubeconfig,
        nodes_file=nodes_file,
        resync_interval=parse_duration("RESYNC_INTERVAL", get("RESYNC_INTERVAL")),
        http_address=parse_http_address(get("HTTP_ADDRESS")),
        cluster_cidrs=parse_cluster_cidrs(get("CLUSTER_CIDRS"), warnings),
        min_pod_prefix_v4=parse_prefix("MIN_POD_PREFIX_V4", get("MIN_POD_PREFIX_V4"), family=4),
        min_pod_prefix_v6=parse_prefix("MIN_POD_PREFIX_V6", get("MIN_POD_PREFIX_V6"), family=6),
        ipam_socket=ipam_socket,
        overlay=parse_choice("OVERLAY", get("OVERLAY"), ("none", "vxlan")),
        vxlan_id=parse_int("VXLAN_ID", get("VXLAN_ID"), 1, 0xFFFFFF),
        vxlan_port=parse_int("VXLAN_PORT", get("VXLAN_PORT"), 1, 65535) or DEFAULT_VXLAN_PORT,
        vxlan_device=parse_device("VXLAN_DEVICE", get("VXLAN_DEVICE")),
        masquerade=parse_bool("MASQUERADE", get("MASQUERADE")),
        non_masquerade_cidrs=parse_cidrs("NON_MASQUERADE_CIDRS", get("NON_MASQUERADE_CIDRS")),
        ipam_node_file=parse_absolute("IPAM_NODE_FILE", get("IPAM_NODE_FILE"), DEFAULT_NODE_FILE),
        ipam_cni_path=parse_search_path(get("IPAM_CNI_PATH")),
        network_policy=network_policy,
        policy_bridge=parse_bridge(merged.get("POLICY_BRIDGE")),
        policy_log_denied=parse_bool("POLICY_LOG_DENIED", get("POLICY_LOG_DENIED")),
        policy_same_node=parse_choice(
            "POLICY_SAME_NODE", get("POLICY_SAME_NODE"), ("redirect", "br-netfilter")
        ),
        warnings=tuple(warnings),
    )


# -- single settings -----------------------------------------------------------------------


def parse_bridge(value: str | None) -> str | None:
    """``POLICY_BRIDGE``: unset = cbr0, empty = no bridge, else an interface name."""
    if value is None:
        return DEFAULT_POLICY_BRIDGE
    value = value.strip()
    return parse_device("POLICY_BRIDGE", value) if value else None


def parse_annotation(var: str, value: str | None) -> str | None:
    """A Kubernetes annotation key (``core.values.annotation_key_problem``)."""
    if value is None:
        return None
    problem = annotation_key_problem(value)
    if problem is not None:
        raise ConfigError(var, value, problem)
    return value


def parse_protocol(value: str | None, names: Mapping[int, str], warnings: list[str]) -> int:
    """A route protocol: a number 1-255 or an rt_protos name; 0-4 (the kernel's) refused."""
    if value is None:
        number, by_name = DEFAULT_PROTOCOL, False
    elif value.isdecimal():
        number, by_name = int(value), False
    else:
        matches = [n for n, name in names.items() if name == value]
        if not matches:
            raise ConfigError(
                "PROTOCOL", value, "not a number and not a name in /etc/iproute2/rt_protos"
            )
        number, by_name = matches[0], True
    try:
        check_protocol(number)  # the rule lives in the core: 0-4 are the kernel's
    except InputError as e:
        raise ConfigError("PROTOCOL", value or str(number), str(e)) from None
    owner = names.get(number)
    if owner is not None and not by_name:
        warnings.append(
            f"PROTOCOL {number} is registered as {owner!r} in rt_protos: make sure that "
            "routing daemon does not run here, or choose another number"
        )
    return number


def parse_cluster_cidrs(value: str | None, warnings: list[str]) -> tuple[IPNetwork, ...]:
    """The allow-list: a comma list of CIDRs of both families; empty = none. An entry
    overlapping the deny-list gets a warning (the deny-list wins); a default route is
    refused (it would allow everything: leave the setting empty instead)."""
    if value is None:
        return ()
    try:
        cidrs = parse_cidr_list(value, key="CLUSTER_CIDRS")
    except InputError as e:
        raise ConfigError("CLUSTER_CIDRS", value, str(e)) from None
    for cidr in cidrs:
        if cidr.prefixlen == 0:
            raise ConfigError(
                "CLUSTER_CIDRS", value, f"{cidr} allows everything: leave it empty instead"
            )
        for denied, what in DENIED:
            if cidr.version == denied.version and cidr.overlaps(denied):
                warnings.append(
                    f"CLUSTER_CIDRS entry {cidr} overlaps {what} {denied}: "
                    "no pod CIDR there is routed"
                )
    return cidrs


def parse_prefix(var: str, value: str | None, *, family: int) -> int:
    """A minimum pod-CIDR prefix length: 1 up to the longest pod CIDR of the family."""
    default = DEFAULT_MIN_PREFIX_V4 if family == 4 else DEFAULT_MIN_PREFIX_V6
    if value is None:
        return default
    longest = LONGEST_POD_CIDR[family]
    if not value.isdecimal() or not 1 <= int(value) <= longest:
        raise ConfigError(var, value, f"must be a prefix length 1-{longest} (default {default})")
    return int(value)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)?")
_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(var: str, value: str | None, default: float = DEFAULT_RESYNC) -> float:
    """Seconds (``60``, ``1.5``) or with a unit (``500ms``, ``30s``, ``5m``, ``1h``);
    between 100 ms and 24 h."""
    if value is None:
        return default
    m = _DURATION.fullmatch(value)
    if m is None:
        raise ConfigError(var, value, "not a duration (e.g. 60, 30s, 500ms, 5m)")
    seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if not 0.1 <= seconds <= 86400:
        raise ConfigError(var, value, "must be between 100ms and 24h")
    return seconds


def parse_socket_path(value: str | None) -> str | None:
    """``IPAM_SOCKET``: an absolute path that fits a Unix socket address (107 bytes);
    empty = off."""
    if value is None:
        return None
    if not value.startswith("/"):
        raise ConfigError("IPAM_SOCKET", value, "must be an absolute path")
    if len(os.fsencode(value)) > 107 or "\0" in value:
        raise ConfigError("IPAM_SOCKET", value, "too long for a Unix socket (at most 107 bytes)")
    if os.path.isdir(value):
        raise ConfigError("IPAM_SOCKET", value, "is a directory")
    return value


# zap's numeric levels (the upstream project's manifests): -1 debug, 0 info, 1 warn,
# 2 error and up (dpanic, panic, fatal); below -1: the more verbose V-levels
_ZAP_LEVELS = {-1: "debug", 0: "info", 1: "warning", 2: "error", 3: "error", 4: "error", 5: "error"}
_LEVEL_NAMES = {"warn": "warning"}


def parse_log_level(value: str | None) -> str:
    """``LOG_LEVEL``: a name (error, warning or warn, info, debug, trace) or one of zap's
    numbers (-1 debug, 0 info, 1 warn, 2-5 error, below -1 trace); unset = info."""
    if value is None:
        return "info"
    text = value.strip().lower()
    text = _LEVEL_NAMES.get(text, text)
    if text in LEVELS:
        return text
    try:
        number = int(text)
    except ValueError:
        number = None
    if number is not None:
        return _ZAP_LEVELS.get(number, "trace" if number < -1 else "error")
    raise ConfigError(
        "LOG_LEVEL",
        value,
        "use one of error, warning (warn), info, debug, trace, or a zap level number "
        "(-1 debug, 0 info, 1 warn, 2 error)",
    )


def parse_choice(var: str, value: str | None, choices: tuple[str, ...]) -> str:
    """One of ``choices`` (the first is the default)."""
    if value is None:
        return choices[0]
    if value.lower() not in choices:
        raise ConfigError(var, value, f"use one of {', '.join(choices)}")
    return value.lower()


def parse_int(var: str, value: str | None, low: int, high: int) -> int | None:
    """An integer from ``low`` to ``high``; None when unset."""
    if value is None:
        return None
    if not value.isdecimal() or not low <= int(value) <= high:
        raise ConfigError(var, value, f"must be a number {low}-{high}")
    return int(value)


def parse_bool(var: str, value: str | None) -> bool:
    """true/false (also yes/no, 1/0, on/off); unset = false."""
    if value is None:
        return False
    lowered = value.lower()
    if lowered in ("true", "yes", "1", "on"):
        return True
    if lowered in ("false", "no", "0", "off"):
        return False
    raise ConfigError(var, value, "use true or false")


def parse_device(var: str, value: str | None) -> str | None:
    """An interface name: 1-15 bytes, no '/', ':' or white space."""
    if value is None:
        return None
    if len(value.encode()) > 15 or not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
        raise ConfigError(var, value, "not an interface name (1-15 of A-Z a-z 0-9 _ . -)")
    return value


def parse_cidrs(var: str, value: str | None) -> tuple[IPNetwork, ...]:
    """A comma list of CIDRs of both families; unset = none."""
    if value is None:
        return ()
    try:
        return parse_cidr_list(value, key=var)
    except InputError as e:
        raise ConfigError(var, value, str(e)) from None


def parse_absolute(var: str, value: str | None, default: str) -> str:
    """An absolute file path (not a directory)."""
    if value is None:
        return default
    if not value.startswith("/") or "\0" in value:
        raise ConfigError(var, value, "must be an absolute path")
    if os.path.isdir(value):
        raise ConfigError(var, value, "is a directory")
    return value


def parse_search_path(value: str | None) -> str:
    """``IPAM_CNI_PATH``: absolute directories separated by ``:``."""
    if value is None:
        return DEFAULT_IPAM_CNI_PATH
    parts = [p for p in value.split(":") if p]
    bad = [p for p in parts if not p.startswith("/")]
    if bad or not parts:
        raise ConfigError("IPAM_CNI_PATH", value, "expected absolute directories joined by ':'")
    return ":".join(parts)


def parse_http_address(value: str | None) -> tuple[str, int] | None:
    """``host:port``, ``[v6]:port`` or ``:port`` (all IPv4 addresses); empty = off."""
    if value is None:
        return None
    if value.startswith("["):
        # [ipv6]:port, and also [ipv4]:port: a manifest can then write "[$(HOST_IP)]:9202"
        # whatever the node's family
        host, sep, port = value[1:].partition("]:")
        if not sep or not host:
            raise ConfigError("HTTP_ADDRESS", value, "expected [address]:port")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError("HTTP_ADDRESS", value, f"{host} is not an IP address") from None
    else:
        host, sep, port = value.rpartition(":")
        if not sep or ":" in host:
            raise ConfigError(
                "HTTP_ADDRESS", value, "expected host:port or [ipv6]:port (e.g. 127.0.0.1:9202)"
            )
    if not port.isdecimal() or not 0 <= int(port) <= 65535:
        raise ConfigError("HTTP_ADDRESS", value, "port must be a number 0-65535")
    if host and not re.fullmatch(r"[A-Za-z0-9.:%_-]+", host):
        raise ConfigError("HTTP_ADDRESS", value, "not a host name or address")
    return (host, int(port))
