"""The ``ipam`` section of a network config, parsed and checked for types (no I/O).

Values are checked for shape only here; addresses are validated on a cache miss, when the
ranges are built (``resolve``), so a cache hit costs no address parsing beyond the cache's.
"""

from __future__ import annotations

import os

from xcluster_cni_lib.plugin.protocol import INVALID_CONFIG, UNSUPPORTED_FIELD, CniError

TYPE_CHECKING = False
if TYPE_CHECKING:  # (collections.abc imports all of collections)
    from collections.abc import Mapping
    from typing import Any

DEFAULT_DATA_DIR = "/var/lib/cni/networks"  # host-local's default
DEFAULT_TIMEOUT = 10.0
NODE_NAME_FILE = "xcluster-cni-node-name"  # beside the kubeconfig: the own node, standalone
CACHE_NAMES = {"kube-node": "kube-node.json", "node-annotation": "node-annotation.json"}
PER_FAMILY_KEYS = ("rangeStart", "rangeEnd", "gateway")


class IpamConfig:
    """The parsed config of one call. ``network_dir`` is host-local's directory for this
    network (``<dataDir>/<name>``), where the cache lives too."""

    __slots__ = (
        "annotation",
        "cache_path",
        "cluster_cidrs",
        "cni_version",
        "data_dir",
        "ipv4_namespaces",
        "kubeconfig",
        "logfile",
        "loglevel",
        "name",
        "network_dir",
        "node_name",
        "nodes_file",
        "per_family",
        "plugin",
        "resolv_conf",
        "routes",
        "timeout",
    )

    def __init__(self, **values: Any) -> None:
        for key in self.__slots__:
            setattr(self, key, values[key])

    plugin: str
    cni_version: str
    name: str
    data_dir: str | None
    network_dir: str
    cache_path: str
    kubeconfig: str | None
    annotation: str | None
    ipv4_namespaces: tuple[str, ...] | None
    logfile: str
    loglevel: str
    timeout: float
    routes: list[Any] | None
    resolv_conf: str | None
    per_family: dict[str, list[str]]
    node_name: str | None
    nodes_file: str | None
    cluster_cidrs: tuple[str, ...] | None

    def inputs(self) -> dict[str, Any]:
        """What the cached ranges were built from, besides the node: a change means rebuild."""
        out = {
            "annotation": self.annotation,
            "nodesFile": self.nodes_file,
            **{k: self.per_family.get(k) for k in PER_FAMILY_KEYS},
        }
        if self.cluster_cidrs is not None:  # absent: caches of older versions stay valid
            out["clusterCIDRs"] = list(self.cluster_cidrs)
        return out


def _bad(key: str, value: object, why: str) -> CniError:
    return CniError(INVALID_CONFIG, f"ipam config: {key} {why}", f"{key}={_short(repr(value))}")


def _opt_str(ipam: Mapping[str, Any], key: str) -> str | None:
    value = ipam.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise _bad(key, value, "must be a non-empty string")
    if "\x00" in value:  # a path or name: the kernel refuses NUL bytes
        raise _bad(key, value, "must not contain NUL bytes")
    return value


def _short(value: str) -> str:
    """At most 200 characters of a value, with its length when cut."""
    return value if len(value) <= 200 else f"{value[:200]}... ({len(value)} characters)"


def parse_config(
    netconf: Mapping[str, Any], *, plugin: str, cni_version: str, env: Mapping[str, str]
) -> IpamConfig:
    """Parse and type-check the config; CniError code 7 (or 2) names the key and value."""
    name = netconf.get("name")
    if (
        not isinstance(name, str)
        or not name
        or "/" in name
        or "\x00" in name
        or name in (".", "..")
    ):
        raise _bad("name", name, "must be a network name usable as a directory name")
    ipam = netconf.get("ipam")
    if not isinstance(ipam, dict):
        raise _bad("ipam", ipam, "must be an object")

    data_dir = _opt_str(ipam, "dataDir")
    network_dir = os.path.join(data_dir or DEFAULT_DATA_DIR, name)

    namespaces = ipam.get("ipv4-namespaces")
    if namespaces is not None and (
        not isinstance(namespaces, list) or not all(isinstance(n, str) and n for n in namespaces)
    ):
        raise _bad("ipv4-namespaces", namespaces, "must be a list of namespace names")

    timeout = ipam.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise _bad("timeout", timeout, "must be a positive number of seconds")

    routes = ipam.get("routes")
    if routes is not None and not (
        isinstance(routes, list) and all(isinstance(r, dict) for r in routes)
    ):
        raise _bad("routes", routes, "must be a list of route objects")

    per_family: dict[str, list[str]] = {}
    for key in PER_FAMILY_KEYS:
        value = ipam.get(key)
        if value is None:
            continue
        if plugin == "node-annotation":
            raise CniError(
                UNSUPPORTED_FIELD,
                f"ipam config: {key} is not supported by node-annotation "
                "(the annotation's ranges carry it)",
                f"{key}={value!r}",
            )
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items or not all(isinstance(v, str) for v in items):
            raise _bad(key, value, "must be an address or a list of addresses (one per family)")
        per_family[key] = list(items)

    annotation = _opt_str(ipam, "annotation")
    if plugin == "node-annotation" and annotation is None:
        raise _bad("annotation", None, "is required: the node annotation holding the ranges")

    cluster_cidrs = ipam.get("clusterCIDRs")
    if cluster_cidrs is not None and (
        not isinstance(cluster_cidrs, list)
        or not all(isinstance(c, str) and c and "\x00" not in c for c in cluster_cidrs)
    ):
        raise _bad("clusterCIDRs", cluster_cidrs, "must be a list of CIDR strings")

    loglevel = ipam.get("loglevel", "warning")
    if not isinstance(loglevel, str):
        raise _bad("loglevel", loglevel, "must be one of debug, info, warning, error")

    return IpamConfig(
        plugin=plugin,
        cni_version=cni_version,
        name=name,
        data_dir=data_dir,
        network_dir=network_dir,
        cache_path=os.path.join(network_dir, CACHE_NAMES[plugin]),
        kubeconfig=_opt_str(ipam, "kubeconfig") or env.get("KUBECONFIG") or None,
        annotation=annotation,
        ipv4_namespaces=tuple(namespaces) if namespaces is not None else None,
        logfile=_opt_str(ipam, "logfile") or "",
        loglevel=loglevel,
        timeout=float(timeout),
        routes=routes,
        resolv_conf=_opt_str(ipam, "resolvConf"),
        per_family=per_family,
        node_name=_opt_str(ipam, "nodeName"),
        nodes_file=_opt_str(ipam, "nodesFile"),
        cluster_cidrs=tuple(cluster_cidrs) if cluster_cidrs is not None else None,
    )
