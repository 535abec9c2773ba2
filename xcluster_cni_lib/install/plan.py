"""Pure decisions of the installer: what to write, computed from plain values."""

from __future__ import annotations

import hashlib
import ipaddress
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
# The marker the installer puts in the conflist it writes: a top-level key, which the
# runtimes' libcni ignores (it reads only name, cniVersion(s), disableCheck, disableGC,
# loadOnlyInlinedPlugins and plugins) and never passes to a plugin.
MARKER_KEY = "xclusterCNI"
MANAGED_BY = "xcluster-cni install"


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


def content_digest(config: Mapping[str, Any]) -> str:
    """The SHA-256 (hex) of ``config`` rendered as the installer writes it."""
    return hashlib.sha256(render_json(config)).hexdigest()


def managed_conflist(
    *,
    mtu: int,
    cluster_cidrs: tuple[IPNetwork, ...] = (),
    overlay: str = "none",
    version: str,
) -> dict[str, Any]:
    """``conflist`` with the installer's marker (``MARKER_KEY``) last: who wrote it, its
    ``version``, the ``overlay`` the MTU was chosen for, and the digest of the rest, by
    which a later run tells its own untouched file from one edited by hand."""
    config = conflist(mtu=mtu, cluster_cidrs=cluster_cidrs)
    config[MARKER_KEY] = {
        "managedBy": MANAGED_BY,
        "version": version,
        "overlay": overlay,
        "sha256": content_digest(config),
    }
    return config


@attrs.frozen
class Recognised:
    """What ``10-xcluster-cni.conflist`` is: the installer's (``ours``: a run may rewrite
    it) or not (a user's: left alone), and why. For ours, ``config`` is the content
    without the marker and ``marker`` the marker (None for a file an earlier version
    wrote without one)."""

    ours: bool
    reason: str
    config: Mapping[str, Any] | None = None
    marker: Mapping[str, Any] | None = None


def _old_shapes(config: Mapping[str, Any], *, node_name: str) -> list[tuple[str, dict[str, Any]]]:
    """What earlier installers would have written with this file's MTU and clusterCIDRs
    (each with a description), or none when those values are not ones they could write."""
    try:
        bridge = config["plugins"][0]
        mtu, ipam = bridge["mtu"], bridge["ipam"]
    except (KeyError, IndexError, TypeError):
        return []
    if type(mtu) is not int or not 576 <= mtu <= 65535 or not isinstance(ipam, Mapping):
        return []
    cidrs = ipam.get("clusterCIDRs")
    tail: dict[str, Any] = {}
    if cidrs is not None:
        if not isinstance(cidrs, list) or not cidrs or not all(_canonical_cidr(c) for c in cidrs):
            return []
        tail["clusterCIDRs"] = cidrs
    shapes: list[tuple[str, dict[str, Any]]] = []
    kubeconfig = ipam.get("kubeconfig")
    if node_name and isinstance(kubeconfig, str) and kubeconfig.endswith("/" + KUBECONFIG_NAME):
        with_node = {"type": "kube-node", "nodeName": node_name, "kubeconfig": kubeconfig}
        shapes.append(("an earlier version (nodeName and kubeconfig in ipam)", with_node | tail))
    shapes.append(("an earlier version (no marker)", {"type": "kube-node"} | tail))
    out = []
    for description, old_ipam in shapes:
        shape = conflist(mtu=mtu)
        shape["plugins"][0]["ipam"] = old_ipam
        out.append((description, shape))
    return out


def _canonical_cidr(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return str(ipaddress.ip_network(value)) == value
    except ValueError:
        return False


def recognise_conflist(content: bytes, *, node_name: str) -> Recognised:
    """Whether ``content`` (of ``10-xcluster-cni.conflist``) is the installer's own.

    Ours: exactly as the installer renders it, with a marker whose digest matches the
    rest (written by any version that marks its file, untouched since), or byte for byte
    what an earlier, unmarked installer wrote on this node (``nodeName`` = ``node_name``
    and the plugins' ``kubeconfig``, or the plain ``kube-node`` IPAM, with an MTU and
    clusterCIDRs it could have written). Anything else, even our file with one edit, is
    a user's."""
    try:
        parsed = json.loads(content)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return Recognised(False, "not written by the installer (not JSON)")
    if not isinstance(parsed, dict):
        return Recognised(False, "not written by the installer (not a JSON object)")
    marker = parsed.pop(MARKER_KEY, None)
    if marker is None:
        for description, shape in _old_shapes(parsed, node_name=node_name):
            if render_json(shape) == content:
                return Recognised(True, f"written by {description}", config=parsed)
        return Recognised(False, f"not written by the installer (no {MARKER_KEY} marker)")
    if (
        not isinstance(marker, dict)
        or marker.get("managedBy") != MANAGED_BY
        or not isinstance(marker.get("version"), str)
        or not isinstance(marker.get("overlay"), str)
    ):
        return Recognised(False, f"not written by the installer (a foreign {MARKER_KEY} key)")
    if (
        marker.get("sha256") != content_digest(parsed)
        or render_json(parsed | {MARKER_KEY: marker}) != content
    ):
        return Recognised(
            False, "edited since the installer wrote it (the content does not match its digest)"
        )
    return Recognised(
        True, f"written by the installer {marker['version']}", config=parsed, marker=marker
    )


@attrs.frozen
class ConflistChange:
    """What to do with the installer's own conflist: ``rewrite`` it with ``content``
    (False: it already says what this run would write), and why, for the log."""

    rewrite: bool
    reason: str
    content: bytes


def _bridge(config: Mapping[str, Any]) -> Mapping[str, Any]:
    plugins = config.get("plugins")
    first = plugins[0] if isinstance(plugins, list) and plugins else None
    return first if isinstance(first, Mapping) else {}


def _cluster_cidrs(config: Mapping[str, Any]) -> object:
    ipam = _bridge(config).get("ipam")
    return ipam.get("clusterCIDRs") if isinstance(ipam, Mapping) else None


def _without_inputs(config: Mapping[str, Any]) -> Any:
    """``config`` without the marker, the MTU and clusterCIDRs: what is left differs
    between versions only when the format changed."""
    copy = json.loads(render_json(config))
    copy.pop(MARKER_KEY, None)
    plugins = copy.get("plugins")
    if isinstance(plugins, list) and plugins and isinstance(plugins[0], dict):
        plugins[0].pop("mtu", None)
        if isinstance(plugins[0].get("ipam"), dict):
            plugins[0]["ipam"].pop("clusterCIDRs", None)
    return copy


def plan_conflist_change(found: Recognised, desired: Mapping[str, Any]) -> ConflistChange:
    """Compare the installer's own conflist (``found``, ``ours``) with ``desired`` (from
    ``managed_conflist``). Only the marker's version differing is no reason to write: a
    file another version wrote with the same content stays as it is (its marker names
    that version). The reason lists what changed: mtu, overlay, clusterCIDRs, the
    format, or that an earlier version wrote the file without a marker."""
    if not found.ours or found.config is None:
        raise ValueError("plan_conflist_change is for the installer's own conflist")
    content = render_json(desired)
    marker = desired[MARKER_KEY]
    old = found.config
    if found.marker is not None:
        as_found = {**desired, MARKER_KEY: {**marker, "version": found.marker["version"]}}
        if render_json(as_found) == render_json({**old, MARKER_KEY: found.marker}):
            return ConflistChange(False, f"already as wanted ({found.reason})", content)
    changes = []
    if found.marker is None:
        changes.append(f"{found.reason}, now marked as the installer's")
    old_mtu, new_mtu = _bridge(old).get("mtu"), _bridge(desired).get("mtu")
    if old_mtu != new_mtu:
        changes.append(f"mtu {old_mtu} -> {new_mtu}")
    if found.marker is not None and found.marker["overlay"] != marker["overlay"]:
        changes.append(f"overlay {found.marker['overlay']} -> {marker['overlay']}")
    old_cidrs, new_cidrs = _cluster_cidrs(old), _cluster_cidrs(desired)
    if old_cidrs != new_cidrs:
        changes.append(f"clusterCIDRs {_cidrs_text(old_cidrs)} -> {_cidrs_text(new_cidrs)}")
    if found.marker is not None and _without_inputs(old) != _without_inputs(desired):
        changes.append(
            f"the format of {marker['version']} differs from {found.marker['version']}'s"
        )
    if not changes:  # only a key order or the digest's own text: rewrite all the same
        changes.append("the content differs")
    return ConflistChange(True, "; ".join(changes), content)


def _cidrs_text(value: object) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "none"
    return "none" if value is None else shorten(str(value))


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
