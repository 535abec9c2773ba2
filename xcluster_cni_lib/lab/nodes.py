"""The lab's nodes as values, as Node objects, and the node list file that the daemons
(``NODES_FILE``) and ``kube-node`` (``nodesFile``) read."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from xcluster_cni_lib.core.addresses import parse_address, parse_cidr, split_list
from xcluster_cni_lib.core.values import IPAddress, IPNetwork
from xcluster_cni_lib.lab.spec import LabSpec, NetworkSpec, node_name
from xcluster_cni_lib.support.atomicfile import write_atomic
from xcluster_cni_lib.testing.nodes import make_node


@attrs.frozen
class LabNode:
    """One node: its namespace and, per network name, its addresses and pod CIDRs
    (IPv4 first). ``annotations`` are extra ones set with ``Lab.annotate_node``; they
    win over the lab's own. ``present`` says whether the node is in the nodes file."""

    name: str
    index: int
    namespace: str
    machine_id: str
    addresses: Mapping[str, tuple[IPAddress, ...]]
    cidrs: Mapping[str, tuple[IPNetwork, ...]]
    annotations: Mapping[str, str] = attrs.field(factory=dict)
    present: bool = True

    def address(self, network: str, family: int) -> IPAddress:
        return next(a for a in self.addresses[network] if a.version == family)

    def cidr(self, network: str, family: int) -> IPNetwork:
        return next(c for c in self.cidrs[network] if c.version == family)


def plan_node(spec: LabSpec, index: int) -> LabNode:
    """Node ``index`` as the spec numbers it."""
    name = node_name(index)
    return LabNode(
        name=name,
        index=index,
        namespace=spec.namespace(name),
        machine_id=uuid.uuid5(uuid.NAMESPACE_DNS, f"{spec.ns_prefix}{name}").hex,
        addresses={
            net.name: (net.node_address(index, 4), net.node_address(index, 6))
            for net in spec.networks
        },
        cidrs={
            net.name: (net.node_cidr(index, 4), net.node_cidr(index, 6)) for net in spec.networks
        },
    )


def _joined(values: Iterable[object]) -> str:
    return ",".join(str(v) for v in values)


def published(node: LabNode, net: NetworkSpec) -> tuple[list[IPNetwork], list[IPAddress]]:
    """The pod CIDRs and addresses of ``net`` that the node object tells that network's
    daemon: the node's own, unless an annotation set with ``Lab.annotate_node`` says else."""
    cidrs = list(node.cidrs[net.name])
    addresses = list(node.addresses[net.name])
    if net.cidr_annotation and net.cidr_annotation in node.annotations:
        cidrs = [parse_cidr(c) for c in split_list(node.annotations[net.cidr_annotation])]
    if net.address_annotation and net.address_annotation in node.annotations:
        addresses = [parse_address(a) for a in split_list(node.annotations[net.address_annotation])]
    return cidrs, addresses


def node_object(node: LabNode, networks: tuple[NetworkSpec, ...]) -> dict[str, Any]:
    """The Node object (a dict shaped like the API's) for one lab node.

    The first network is the main one (``spec.podCIDRs`` and InternalIP addresses); every
    network with annotation names also gets its CIDRs and addresses as annotations. The
    rest of the object is what a kubelet-managed node carries (``testing.nodes``)."""
    annotations: dict[str, str] = {}
    for net in networks:
        cidrs, addresses = published(node, net)
        if net.cidr_annotation:
            annotations[net.cidr_annotation] = _joined(cidrs)
        if net.address_annotation:
            annotations[net.address_annotation] = _joined(addresses)
    annotations.update(node.annotations)
    annotations["xcluster-cni.io/lab-namespace"] = node.namespace
    main = networks[0]
    return make_node(
        node.name,
        pod_cidrs=[str(c) for c in node.cidrs[main.name]],
        internal_ips=[str(a) for a in node.addresses[main.name]],
        annotations=annotations,
        machine_id=node.machine_id,
    )


def node_list(nodes: Iterable[LabNode], networks: tuple[NetworkSpec, ...]) -> dict[str, Any]:
    """A NodeList of the present nodes, as ``kubectl get nodes -o json`` prints it."""
    items = [node_object(n, networks) for n in nodes if n.present]
    return {"apiVersion": "v1", "kind": "NodeList", "metadata": {}, "items": items}


def write_json_atomically(path: Path, doc: object) -> None:
    """Write JSON atomically (temporary file, fsync, rename), so a reader sees the old or
    the new content, never a partial file."""
    write_atomic(path, (json.dumps(doc, indent=1) + "\n").encode(), make_dirs=True)
