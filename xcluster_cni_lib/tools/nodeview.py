"""``xcluster-cni nodes``: every node's network view as the daemon parses it."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import attrs

from xcluster_cni_lib.core.errors import InvalidNode
from xcluster_cni_lib.core.nodes import parse_facts
from xcluster_cni_lib.core.values import NO_ANNOTATIONS, Annotations, NodeFacts


@attrs.frozen
class NodeViews:
    """One JSON-ready view per node (sorted by name) and every problem found, as text."""

    views: tuple[dict[str, Any], ...]
    warnings: tuple[str, ...]


def read_node_facts(
    *,
    nodes_file: str | os.PathLike[str] | None = None,
    kubeconfig: str | None = None,
    annotations: Annotations = NO_ANNOTATIONS,
) -> list[NodeFacts]:
    """The nodes of ``nodes_file``, else of the API server (``kubeconfig``, else
    ``$KUBECONFIG``, the in-cluster service account, ``~/.kube/config``). Raises
    ``InputError`` (bad file, no client configuration) or ``TemporaryError`` (the API)."""
    if nodes_file is not None:
        from xcluster_cni_lib.sources.nodesfile import load_node_facts

        return load_node_facts(nodes_file, annotations=annotations)
    from xcluster_cni_lib.sources import kube

    client = kube.load_api_client(kubeconfig)
    try:
        return kube.list_node_facts(client, annotations=annotations)
    finally:
        client.close()


def node_views(facts: Iterable[NodeFacts]) -> NodeViews:
    """``name``, canonical ``podCIDRs`` and ``addresses`` (at most one per family, IPv4
    first), ``machineID`` and ``problems`` of every node; a node that cannot be used has
    empty lists and its reason in ``problems``."""
    views: list[dict[str, Any]] = []
    warnings: list[str] = []
    for f in sorted(facts, key=lambda f: f.name):
        try:
            n = parse_facts(f)
        except InvalidNode as e:
            warnings.append(str(e))
            views.append(
                {
                    "name": f.name,
                    "podCIDRs": [],
                    "addresses": [],
                    "machineID": f.machine_id,
                    "problems": [str(e)],
                }
            )
            continue
        warnings.extend(str(p) for p in n.problems)
        views.append(
            {
                "name": n.name,
                "podCIDRs": [str(c) for c in n.cidrs],
                "addresses": [str(a) for a in n.addresses],
                "machineID": n.machine_id,
                "problems": [str(p) for p in n.problems],
            }
        )
    return NodeViews(views=tuple(views), warnings=tuple(warnings))
