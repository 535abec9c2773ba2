"""Cache misses: find the own Node (nodes file or API server) and build host-local ranges.

Imported only on a cache miss (and by STATUS without a cache). It parses addresses with
``ipaddress`` directly rather than through ``core.addresses``/``core.facts``, because those
import ``attrs`` (about 15 ms), a fifth of the cache-miss budget; the rules are the same:
IPv4-mapped IPv6 counts as IPv4, host bits are masked off.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Mapping

from xcluster_cni_lib.plugin import fastjson as json
from xcluster_cni_lib.plugin.cache import FORMAT, RANGE_KEYS, RangeSet, digest
from xcluster_cni_lib.plugin.config import NODE_NAME_FILE, IpamConfig
from xcluster_cni_lib.plugin.protocol import (
    INVALID_CONFIG,
    NODE_NOT_FOUND,
    NODE_UNUSABLE,
    TRY_AGAIN_LATER,
    CniError,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from xcluster_cni_lib.plugin.log import Log

MACHINE_ID_FILE = "/etc/machine-id"
# Where the installer puts the plugins' kubeconfig (``install.plan``): used when neither the
# config nor KUBECONFIG names one and we are not in a pod, e.g. for a Multus NAD.
DEFAULT_KUBECONFIG = "/etc/cni/net.d/xcluster-cni-kubeconfig"
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_MAX_PREFIX = {4: 30, 6: 126}  # host-local rejects /31, /32, /127, /128


def canonical_cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A CIDR in canonical form (ValueError on anything else)."""
    s = text.strip()
    addr, sep, prefix = s.partition("/")
    if not sep or not prefix.isdecimal() or not addr:
        raise ValueError(f"not a CIDR: {text!r}")
    net = ipaddress.ip_network(f"{addr}/{int(prefix)}", strict=False)
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.subnet_of(_MAPPED):
        mapped = net.network_address.ipv4_mapped
        assert mapped is not None
        return ipaddress.IPv4Network(f"{mapped}/{net.prefixlen - 96}", strict=False)
    return net


def canonical_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address in canonical form (ValueError on anything else)."""
    addr = ipaddress.ip_address(text.strip())
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def validate_ranges(ranges: object) -> list[RangeSet]:
    """Check host-local ``ranges`` fully: one or two range sets, each of one family, at
    most one set per family, every subnet a canonical CIDR (host bits clear, big enough
    for host-local) holding its range's addresses. ValueError says what is wrong."""
    if not isinstance(ranges, list) or not 1 <= len(ranges) <= 2:
        raise ValueError(f"expected one or two range sets: {ranges!r}")
    out: list[RangeSet] = []
    for rangeset in ranges:
        if not isinstance(rangeset, list) or not rangeset:
            raise ValueError(f"a range set must be a non-empty list: {rangeset!r}")
        family = 0
        for r in rangeset:
            if not isinstance(r, dict) or "subnet" not in r or not set(r) <= set(RANGE_KEYS):
                raise ValueError(f"a range needs a subnet and only {RANGE_KEYS}: {r!r}")
            if not all(isinstance(v, str) for v in r.values()):
                raise ValueError(f"range values must be strings: {r!r}")
            net = ipaddress.ip_network(r["subnet"])  # strict: host bits must be clear
            if str(net) != r["subnet"]:
                raise ValueError(f"subnet {r['subnet']} is not in canonical form ({net})")
            if net.prefixlen > _MAX_PREFIX[net.version]:
                raise ValueError(f"subnet {net} is too small")
            for key in ("rangeStart", "rangeEnd", "gateway"):
                if key in r and ipaddress.ip_address(r[key]) not in net:
                    raise ValueError(f"{key} {r[key]} is outside subnet {net}")
            if family and net.version != family:
                raise ValueError(f"range set mixes IPv4 and IPv6: {rangeset!r}")
            family = net.version
        if any(f == family for f, _ in out):
            raise ValueError(f"two range sets of IPv{family}")
        out.append((family, rangeset))
    return out


# --- the own node ---------------------------------------------------------------------


def _read_first_line(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().strip()
    except (OSError, UnicodeDecodeError):
        return ""


def kubeconfig_path(conf: IpamConfig, env: Mapping[str, str]) -> str | None:
    """The kubeconfig to use: ipam ``kubeconfig``, else ``KUBECONFIG``, else none in a pod
    (in-cluster), else the installer's ``DEFAULT_KUBECONFIG`` when it exists."""
    if conf.kubeconfig:
        return conf.kubeconfig
    if env.get("KUBERNETES_SERVICE_HOST"):
        return None
    return DEFAULT_KUBECONFIG if os.path.exists(DEFAULT_KUBECONFIG) else None


def own_node_name(conf: IpamConfig, env: Mapping[str, str]) -> tuple[str, str]:
    """(name, where it came from); name ``""`` means: search by machine-id."""
    if conf.node_name:
        return conf.node_name, "config nodeName"
    if env.get("NODE_NAME"):
        return env["NODE_NAME"], "env NODE_NAME"
    kubeconfig = kubeconfig_path(conf, env)
    if kubeconfig:
        path = os.path.join(os.path.dirname(os.path.abspath(kubeconfig)), NODE_NAME_FILE)
        name = _read_first_line(path)
        if name:
            return name, path
    return "", "machine-id"


def _machine_id(node: Mapping[str, Any]) -> str:
    info = (node.get("status") or {}).get("nodeInfo") or {}
    value = info.get("machineID") if isinstance(info, Mapping) else None
    return value if isinstance(value, str) else ""


def _name(node: Mapping[str, Any]) -> str:
    name = (node.get("metadata") or {}).get("name")
    return name if isinstance(name, str) else ""


def _pick(nodes: Iterable[dict[str, Any]], name: str, machine_id: str) -> dict[str, Any] | None:
    """The node named ``name``, or (without a name) the one node with this machine-id,
    compared as ``core.ownnode.find_own`` does (stripped, any case; several: an error).
    Only the match is kept while ``nodes`` streams by."""
    if name:
        return next((n for n in nodes if _name(n) == name), None)
    wanted = machine_id.strip().lower()
    found: dict[str, Any] | None = None
    for node in nodes:
        if wanted and _machine_id(node).strip().lower() == wanted:
            if found is not None:
                raise CniError(
                    NODE_NOT_FOUND,
                    f"machine-id {wanted} belongs to several nodes "
                    f"({_name(found)}, {_name(node)}, ...)",
                    "set ipam nodeName or NODE_NAME",
                )
            found = node
    return found


def _not_found(name: str, source: str, machine_id: str, where: str) -> CniError:
    if name:
        return CniError(NODE_NOT_FOUND, f"node {name} (from {source}) not found in {where}")
    return CniError(
        NODE_NOT_FOUND,
        f"no node with machine-id {machine_id} in {where}",
        "set ipam nodeName, env NODE_NAME or the file "
        f"{NODE_NAME_FILE} beside the kubeconfig to name the own node",
    )


def fetch_own_node(conf: IpamConfig, env: Mapping[str, str], log: Log) -> dict[str, Any]:
    """The own Node object. CniError: 101 not found, 11 API unreachable, 7 bad kubeconfig."""
    name, source = own_node_name(conf, env)
    machine_id = ""
    if not name:
        machine_id = _read_first_line(MACHINE_ID_FILE)
        if not machine_id:
            raise CniError(
                NODE_NOT_FOUND,
                f"cannot tell the own node: no nodeName, NODE_NAME, {NODE_NAME_FILE} "
                f"file and no {MACHINE_ID_FILE}",
            )
    log.debug(f"own node {name or 'machine-id ' + machine_id} (from {source})")

    if conf.nodes_file:
        from xcluster_cni_lib.core.errors import InputError
        from xcluster_cni_lib.sources.nodesfile import load_node_list

        try:
            nodes = load_node_list(conf.nodes_file)
        except InputError as e:
            raise CniError(INVALID_CONFIG, f"ipam config nodesFile: {e}") from None
        found = _pick(nodes, name, machine_id)
        if found is None:
            raise _not_found(name, source, machine_id, f"nodes file {conf.nodes_file}")
        return found
    return _fetch_from_api(conf, env, name, source, machine_id)


def _fetch_from_api(
    conf: IpamConfig, env: Mapping[str, str], name: str, source: str, machine_id: str
) -> dict[str, Any]:
    from xcluster_cni_lib.plugin import kubelite

    try:
        ep = kubelite.endpoint(kubeconfig_path(conf, env), env)
    except kubelite.Unsupported:
        if not name:
            raise CniError(
                NODE_NOT_FOUND,
                "the machine-id search needs a kubeconfig without exec/auth-provider",
                "name the node with ipam nodeName or NODE_NAME",
            ) from None
        return _fetch_with_full_client(conf, env, name, source)
    except (kubelite.ConfigError, OSError, ValueError) as e:
        raise CniError(
            INVALID_CONFIG, f"kubeconfig: {e}", conf.kubeconfig or "in-cluster"
        ) from None
    try:
        if name:
            found = kubelite.get_node(ep, name, timeout=conf.timeout)
        else:
            found = _pick(kubelite.iter_nodes(ep, timeout=conf.timeout), "", machine_id)
    except kubelite.ApiError as e:
        raise CniError(TRY_AGAIN_LATER, f"API server: {e}", ep.server) from None
    if found is None:
        raise _not_found(name, source, machine_id, f"the API server {ep.server}")
    return found


def _fetch_with_full_client(
    conf: IpamConfig, env: Mapping[str, str], name: str, source: str
) -> dict[str, Any]:
    import importlib

    kube: Any = importlib.import_module("xcluster_cni_lib.sources.kube")
    try:
        client = kube.load_api_client(kubeconfig_path(conf, env), timeout=conf.timeout)
        found = kube.get_node(client, name)
    except Exception as e:  # the full client raises many types; all mean "not now"
        raise CniError(TRY_AGAIN_LATER, f"API server: {e}") from None
    if found is None:
        raise _not_found(name, source, "", "the API server")
    return dict(found)


# --- ranges ---------------------------------------------------------------------------


def _unusable(node: str, reason: str, key: str, value: object) -> CniError:
    return CniError(NODE_UNUSABLE, f"node {node}: {reason}", f"{key}={value!r}")


def _annotation(node: Mapping[str, Any], key: str) -> str | None:
    annotations = (node.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(key) if isinstance(annotations, Mapping) else None
    return value if isinstance(value, str) else None


def node_subnets(
    node: Mapping[str, Any], annotation: str | None
) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """kube-node: the node's subnets (annotation or ``spec.podCIDRs``), validated: at most
    one per family, at most two, big enough for host-local. IPv4 first."""
    name = _name(node) or "?"
    if annotation:
        text = _annotation(node, annotation)
        if text is None:
            raise _unusable(name, f"has no annotation {annotation}", "annotation", annotation)
        items, key = text.split(","), f"annotation {annotation}"
        value: object = text
    else:
        spec = node.get("spec") or {}
        raw = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
        if not isinstance(raw, list) or not raw:
            raise _unusable(name, "has no pod CIDRs", "spec.podCIDRs", raw)
        items, key, value = raw, "spec.podCIDRs", raw
    subnets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for item in items:
        try:
            net = canonical_cidr(item if isinstance(item, str) else "")
        except ValueError:
            raise _unusable(name, f"invalid subnet {item!r} in {key}", key, value) from None
        if net.prefixlen > _MAX_PREFIX[net.version]:
            raise _unusable(name, f"subnet {net} in {key} is too small", key, value)
        if net.prefixlen == 0:
            raise _unusable(name, f"{net} in {key} is a default route", key, value)
        if any(s.version == net.version for s in subnets):
            raise _unusable(name, f"two IPv{net.version} subnets in {key}", key, value)
        subnets.append(net)
    return sorted(subnets, key=lambda s: s.version)


def kube_node_ranges(node: Mapping[str, Any], conf: IpamConfig) -> list[list[dict[str, str]]]:
    """host-local ranges from the node's subnets plus the per-family config keys."""
    subnets = node_subnets(node, conf.annotation)
    ranges = [[{"subnet": str(s)}] for s in subnets]
    for key, values in conf.per_family.items():
        for text in values:
            try:
                addr = canonical_address(text)
            except ValueError:
                raise CniError(
                    INVALID_CONFIG, f"ipam config: {key} is not an address", text
                ) from None
            i = next((i for i, s in enumerate(subnets) if s.version == addr.version), None)
            if i is None or addr not in subnets[i]:
                raise CniError(
                    INVALID_CONFIG,
                    f"ipam config: {key} {addr} is not in node {_name(node)}'s subnets",
                    ", ".join(map(str, subnets)),
                )
            ranges[i][0][key] = str(addr)
    return ranges


def annotation_ranges(node: Mapping[str, Any], annotation: str) -> list[list[dict[str, str]]]:
    """node-annotation: host-local ranges from the JSON in the annotation, validated and
    put in canonical form (``{"ranges": [...]}`` or the bare list)."""
    name = _name(node) or "?"
    text = _annotation(node, annotation)
    if text is None:
        raise _unusable(name, f"has no annotation {annotation}", "annotation", annotation)
    key = f"annotation {annotation}"
    try:
        doc = json.loads(text)
    except ValueError:
        raise _unusable(name, f"{key} is not JSON", key, text) from None
    ranges = doc.get("ranges") if isinstance(doc, dict) else doc
    try:
        if not isinstance(ranges, list):
            raise ValueError('expected {"ranges": [...]} or a list of range sets')
        out: list[list[dict[str, str]]] = []
        for rangeset in ranges:
            if not isinstance(rangeset, list):
                raise ValueError(f"a range set must be a list: {rangeset!r}")
            canon = []
            for r in rangeset:
                if not isinstance(r, dict) or not isinstance(r.get("subnet"), str):
                    raise ValueError(f"a range needs a subnet string: {r!r}")
                c = {"subnet": str(canonical_cidr(r["subnet"]))}
                for k, v in r.items():
                    if k != "subnet":
                        if not isinstance(v, str):
                            raise ValueError(f"{k} must be a string: {v!r}")
                        c[k] = str(canonical_address(v))
                canon.append(c)
            out.append(canon)
        validate_ranges(out)
    except ValueError as e:
        raise _unusable(name, f"invalid {key}: {e}", key, text) from None
    return sorted(out, key=lambda rs: ipaddress.ip_network(rs[0]["subnet"]).version)


def build_cache(conf: IpamConfig, env: Mapping[str, str], log: Log) -> dict[str, Any]:
    """Resolve the own node and return the cache document for it."""
    node = fetch_own_node(conf, env, log)
    if conf.plugin == "node-annotation":
        assert conf.annotation is not None
        ranges = annotation_ranges(node, conf.annotation)
    else:
        ranges = kube_node_ranges(node, conf)
    try:
        validate_ranges(ranges)
    except ValueError as e:
        raise CniError(NODE_UNUSABLE, f"node {_name(node)}: unusable ranges: {e}") from None
    return {
        "format": FORMAT,
        "plugin": conf.plugin,
        "node": _name(node),
        "inputs": conf.inputs(),
        "ranges": ranges,
        "digest": digest(ranges),
    }
