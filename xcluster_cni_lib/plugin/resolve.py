"""Cache misses: find the own Node (nodes file or API server) and build host-local ranges.

Imported only on a cache miss (and by STATUS without a cache), never on a cache hit. The
rules come from the core, the same code the router daemon runs, so the two cannot
disagree (``docs/node-data.md``): which pod CIDRs a node has (``core.nodes``: the daemon
routes to exactly the CIDRs ``kube-node`` allocates from, and a node the daemon skips is
refused here with the same reason), canonical CIDRs and addresses (``core.addresses``) and
which node is this one (``core.ownnode``). Importing the core costs ``attrs`` (about
15 ms), paid once per node and network when the cache is built.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Mapping

from xcluster_cni_lib.core.addresses import parse_address, parse_cidr
from xcluster_cni_lib.core.errors import InputError, InvalidNode, shorten
from xcluster_cni_lib.core.facts import node_annotation, node_name
from xcluster_cni_lib.core.nodes import ADDRESSES_KEY, LONGEST_POD_CIDR, parse_node, pod_cidrs
from xcluster_cni_lib.core.ownnode import find_own_object
from xcluster_cni_lib.core.ranges import DEFAULT_POLICY, RangePolicy, parse_cidr_list
from xcluster_cni_lib.core.values import Annotations, annotation_key_problem
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
from xcluster_cni_lib.support.hostinfo import MACHINE_ID_PATH, read_machine_id
from xcluster_cni_lib.support.nodelist import load_node_list

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from xcluster_cni_lib.plugin.log import Log
    from xcluster_cni_lib.plugin.served import OwnNodeLookup

# The standalone plugins' fallback kubeconfig (earlier installers wrote one there; a served
# call reads none): used when neither the config nor KUBECONFIG names one and we are not
# in a pod.
DEFAULT_KUBECONFIG = "/etc/cni/net.d/xcluster-cni-kubeconfig"


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
            if net.prefixlen > LONGEST_POD_CIDR[net.version]:  # host-local needs room
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
    (in-cluster), else ``DEFAULT_KUBECONFIG`` when it exists."""
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


def _pick(
    nodes: Iterable[Mapping[str, Any]], name: str, machine_id: str
) -> Mapping[str, Any] | None:
    """The own node among ``nodes`` by ``core.ownnode``'s rule (the daemon's): the node
    named ``name``, or without a name the one node with this machine id. Streamed: only
    the match is kept. Several nodes with this machine id: ``NODE_NOT_FOUND``."""
    try:
        return find_own_object(nodes, name=name or None, machine_id=machine_id or None)
    except InputError as e:
        raise CniError(NODE_NOT_FOUND, str(e), "set ipam nodeName or NODE_NAME") from None


def _not_found(name: str, source: str, machine_id: str, where: str) -> CniError:
    if name:
        return CniError(NODE_NOT_FOUND, f"node {name} (from {source}) not found in {where}")
    return CniError(
        NODE_NOT_FOUND,
        f"no node with machine-id {machine_id} in {where}",
        "set ipam nodeName, env NODE_NAME or the file "
        f"{NODE_NAME_FILE} beside the kubeconfig to name the own node",
    )


def fetch_own_node(conf: IpamConfig, env: Mapping[str, str], log: Log) -> Mapping[str, Any]:
    """The own Node object. CniError: 101 not found, 11 API unreachable or failing, 7 bad
    kubeconfig, credentials refused (401/403), certificate not verified, or bad nodes
    file; 100 (GET) or 101 (LIST) when the answer exceeds its cap."""
    name, source = own_node_name(conf, env)
    machine_id = ""
    if not name:
        machine_id = read_machine_id() or ""
        if not machine_id:
            raise CniError(
                NODE_NOT_FOUND,
                f"cannot tell the own node: no nodeName, NODE_NAME, {NODE_NAME_FILE} "
                f"file and no {MACHINE_ID_PATH}",
            )
    log.debug(f"own node lookup: node={name or '?'} machine_id={machine_id or '?'} from={source}")

    if conf.nodes_file:
        try:
            nodes = load_node_list(conf.nodes_file)
        except InputError as e:
            raise CniError(INVALID_CONFIG, f"ipam config nodesFile: {e}") from None
        found = _pick(nodes, name, machine_id)
        if found is None:
            raise _not_found(name, source, machine_id, f"nodes file {conf.nodes_file}")
        return found
    return _fetch_from_api(conf, env, log, name=name, source=source, machine_id=machine_id)


def _fetch_from_api(
    conf: IpamConfig,
    env: Mapping[str, str],
    log: Log,
    *,
    name: str,
    source: str,
    machine_id: str,
) -> Mapping[str, Any]:
    from xcluster_cni_lib.plugin import kubelite

    kubeconfig = kubeconfig_path(conf, env)
    try:
        ep = kubelite.endpoint(kubeconfig, env)
    except kubelite.ConfigError as e:  # names the file and what in it is unsupported or wrong
        raise CniError(INVALID_CONFIG, str(e), kubeconfig or "in-cluster") from None
    except (OSError, ValueError) as e:
        where = f"kubeconfig {kubeconfig}" if kubeconfig else "in-cluster configuration"
        raise CniError(INVALID_CONFIG, f"{where}: {e}", kubeconfig or "in-cluster") from None
    where = f"kubeconfig {kubeconfig}" if kubeconfig else "in-cluster service account"
    if ep.insecure:
        log.warning(
            f"{where}: insecure-skip-tls-verify is true: the API server {ep.server} is "
            "not authenticated (anyone on the path can answer for it)"
        )
    found: Mapping[str, Any] | None
    try:
        if name:
            found = kubelite.get_node(ep, name, timeout=conf.timeout)
        else:
            found = _pick(kubelite.iter_nodes(ep, timeout=conf.timeout), "", machine_id)
    except kubelite.ResponseTooLarge as e:  # the same answer next time: not transient
        raise CniError(NODE_UNUSABLE if name else NODE_NOT_FOUND, str(e), ep.server) from None
    except kubelite.ApiError as e:
        if e.status in (401, 403):  # the credentials are wrong or lack rights: configuration
            raise CniError(
                INVALID_CONFIG,
                f"API server {ep.server} refused the credentials of {where} (HTTP {e.status}): {e}",
                where,
            ) from None
        if e.tls:
            raise CniError(INVALID_CONFIG, f"{where}: {e}", where) from None
        raise CniError(TRY_AGAIN_LATER, f"API server: {e}", ep.server) from None
    if found is None:
        raise _not_found(name, source, machine_id, f"the API server {ep.server}")
    return found


# --- ranges ---------------------------------------------------------------------------


def _unusable(node: str, reason: str, key: str, value: object) -> CniError:
    return CniError(NODE_UNUSABLE, f"node {node}: {reason}", f"{key}={shorten(repr(value))}")


def _refused(e: InvalidNode) -> CniError:
    """A node the daemon skips, refused with the daemon's reason."""
    details = (
        "" if e.key is None else e.key if e.value is None else f"{e.key}={shorten(repr(e.value))}"
    )
    return CniError(NODE_UNUSABLE, f"node {e.node}: {e.reason}", details)


def _annotation_key(key: str) -> str:
    problem = annotation_key_problem(key)
    if problem is not None:
        raise CniError(INVALID_CONFIG, f"ipam config: annotation {key!r}: {problem}")
    return key


def range_policy(conf: IpamConfig) -> RangePolicy:
    """The core's pod-range rule (``core.ranges``, the daemon's) with the config's
    ``clusterCIDRs`` as allow-list. No host subnets: the node's own pod CIDR is a subnet
    connected to this host (the bridge), by design."""
    if conf.cluster_cidrs is None:
        return DEFAULT_POLICY
    try:
        return RangePolicy(
            cluster_cidrs=parse_cidr_list(",".join(conf.cluster_cidrs), key="clusterCIDRs")
        )
    except InputError as e:
        raise CniError(
            INVALID_CONFIG,
            f"ipam config: {e}",
            f"clusterCIDRs={shorten(repr(list(conf.cluster_cidrs)))}",
        ) from None


def node_subnets(
    node: Mapping[str, Any],
    annotation: str | None,
    log: Log | None = None,
    *,
    policy: RangePolicy = DEFAULT_POLICY,
) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """kube-node: the node's pod CIDRs (the annotation, else ``spec.podCIDRs``), IPv4
    first, decided by ``core.nodes`` exactly as the router daemon decides them. A node
    the daemon skips (or routes nothing to) raises ``NODE_UNUSABLE`` with its reason;
    entries the daemon ignores are ignored here too (and logged)."""
    annotations = Annotations(cidr=_annotation_key(annotation) if annotation else None)
    try:
        network = parse_node(node, annotations=annotations, policy=policy)
    except InvalidNode as e:
        raise _refused(e) from None
    ignored = [str(p) for p in network.problems if p.key != ADDRESSES_KEY]
    try:
        subnets = pod_cidrs(network)
    except InvalidNode as e:
        raise CniError(NODE_UNUSABLE, f"node {e.node}: {e.reason}", "; ".join(ignored)) from None
    if log is not None:
        for text in ignored:
            log.warning(f"node partly skipped: {text}")
    return list(subnets)


def kube_node_ranges(
    node: Mapping[str, Any], conf: IpamConfig, log: Log | None = None
) -> list[list[dict[str, str]]]:
    """host-local ranges from the node's subnets plus the per-family config keys."""
    subnets = node_subnets(node, conf.annotation, log, policy=range_policy(conf))
    ranges = [[{"subnet": str(s)}] for s in subnets]
    for key, values in conf.per_family.items():
        for text in values:
            try:
                addr = parse_address(text)
            except ValueError:
                raise CniError(
                    INVALID_CONFIG, f"ipam config: {key} is not an address", text
                ) from None
            i = next((i for i, s in enumerate(subnets) if s.version == addr.version), None)
            if i is None or addr not in subnets[i]:
                raise CniError(
                    INVALID_CONFIG,
                    f"ipam config: {key} {addr} is not in node {node_name(node)}'s subnets",
                    ", ".join(map(str, subnets)),
                )
            ranges[i][0][key] = str(addr)
    return ranges


def annotation_ranges(
    node: Mapping[str, Any], annotation: str, *, policy: RangePolicy = DEFAULT_POLICY
) -> list[list[dict[str, str]]]:
    """node-annotation: host-local ranges from the JSON in the annotation, validated and
    put in canonical form (``{"ranges": [...]}`` or the bare list). Every subnet must
    pass ``policy`` (the daemon's pod-range rule), or the node is refused."""
    name = node_name(node) or "?"
    text = node_annotation(node, _annotation_key(annotation))
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
                subnet = parse_cidr(r["subnet"])
                refusal = policy.refusal(subnet)
                if refusal is not None:
                    raise ValueError(f"subnet refused: {refusal}")
                c = {"subnet": str(subnet)}
                for k, v in r.items():
                    if k != "subnet":
                        if not isinstance(v, str):
                            raise ValueError(f"{k} must be a string: {v!r}")
                        c[k] = str(parse_address(v))
                canon.append(c)
            out.append(canon)
        validate_ranges(out)
    except ValueError as e:
        raise _unusable(name, f"invalid {key}: {shorten(str(e))}", key, text) from None
    return sorted(out, key=lambda rs: ipaddress.ip_network(rs[0]["subnet"]).version)


def served_node(conf: IpamConfig, own_node: OwnNodeLookup) -> Mapping[str, Any]:
    """The agent's own node for a served call; a config ``nodeName`` must name it (the
    agent allocates only for its own node). The config's ``kubeconfig`` is not used."""
    node = own_node()
    if conf.node_name and conf.node_name != node_name(node):
        raise CniError(
            INVALID_CONFIG,
            f"ipam config nodeName {conf.node_name} is not this node: the agent serves "
            f"node {node_name(node)}",
            "remove nodeName from the config (a served call always allocates for the "
            "agent's own node)",
        )
    return node


def build_cache(
    conf: IpamConfig,
    env: Mapping[str, str],
    log: Log,
    *,
    own_node: OwnNodeLookup | None = None,
) -> dict[str, Any]:
    """Resolve the own node (the agent's, when ``own_node`` is given) and return the
    cache document for it."""
    node = served_node(conf, own_node) if own_node is not None else fetch_own_node(conf, env, log)
    if conf.plugin == "node-annotation":
        assert conf.annotation is not None
        ranges = annotation_ranges(node, conf.annotation, policy=range_policy(conf))
    else:
        ranges = kube_node_ranges(node, conf, log)
    try:
        validate_ranges(ranges)
    except ValueError as e:
        raise CniError(NODE_UNUSABLE, f"node {node_name(node)}: unusable ranges: {e}") from None
    return {
        "format": FORMAT,
        "plugin": conf.plugin,
        "node": node_name(node),
        "inputs": conf.inputs(),
        "ranges": ranges,
        "digest": digest(ranges),
    }
