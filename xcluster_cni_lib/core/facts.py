"""Extract the compact ``NodeFacts`` from a Node object as the API returns it (a dict).

This never fails on odd shapes: validation happens later, in ``core.nodes``. It keeps
nothing but what routing and IPAM need, so caches never hold raw Node objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from xcluster_cni_lib.core.values import NO_ANNOTATIONS, Annotations, NodeFacts


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _items(value: object) -> list[Any] | tuple[Any, ...]:
    return value if isinstance(value, list | tuple) else ()


def _strings(value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        return ()
    return tuple(v for v in value if isinstance(v, str))


def node_name(node: Mapping[str, Any]) -> str:
    """The node's ``metadata.name``, or ``""`` when missing."""
    name = _mapping(node.get("metadata")).get("name")
    return name if isinstance(name, str) else ""


def node_annotation(node: Mapping[str, Any], key: str | None) -> str | None:
    """The value of annotation ``key`` on the node, or None (no such key, not a string,
    or ``key`` None)."""
    if key is None:
        return None
    value = _mapping(_mapping(node.get("metadata")).get("annotations")).get(key)
    return value if isinstance(value, str) else None


def node_machine_id(node: Mapping[str, Any]) -> str | None:
    """The node's ``status.nodeInfo.machineID``, or None when missing or empty."""
    machine_id = _mapping(_mapping(node.get("status")).get("nodeInfo")).get("machineID")
    return machine_id if isinstance(machine_id, str) and machine_id else None


def extract_facts(
    node: Mapping[str, Any], *, annotations: Annotations = NO_ANNOTATIONS
) -> NodeFacts:
    """The routing-relevant facts of a Node dict.

    ``pod_cidrs`` come from ``spec.podCIDRs`` (or the older ``spec.podCIDR``);
    ``internal_ips`` from ``status.addresses`` of type ``InternalIP``; the two annotation
    values only when ``annotations`` names them. The facts carry ``annotations``.
    """
    spec = _mapping(node.get("spec"))
    status = _mapping(node.get("status"))

    pod_cidrs = _strings(spec.get("podCIDRs"))
    if not pod_cidrs and isinstance(spec.get("podCIDR"), str):
        pod_cidrs = (spec["podCIDR"],)

    internal_ips = tuple(
        a["address"]
        for a in _items(status.get("addresses"))
        if isinstance(a, Mapping)
        and a.get("type") == "InternalIP"
        and isinstance(a.get("address"), str)
    )

    return NodeFacts(
        name=node_name(node),
        pod_cidrs=pod_cidrs,
        internal_ips=internal_ips,
        cidr_annotation=node_annotation(node, annotations.cidr),
        address_annotation=node_annotation(node, annotations.address),
        machine_id=node_machine_id(node),
        annotations=annotations,
    )
