"""``xcluster-cni plan``: the routes a node would install, from a nodes file, computed by
the daemon's own code (the facts, the own-node choice, the planner)."""

from __future__ import annotations

import os

import attrs

from xcluster_cni_lib.core.ownnode import resolve_own
from xcluster_cni_lib.core.planning import desired_routes_from_facts
from xcluster_cni_lib.core.values import NO_ANNOTATIONS, Annotations, Route
from xcluster_cni_lib.sources.nodesfile import load_node_facts
from xcluster_cni_lib.support.hostinfo import MACHINE_ID_PATH, read_machine_id


@attrs.frozen
class DryRun:
    """The routes (sorted as the daemon installs them) and the warnings: the own-node
    warning first, then every problem of the nodes."""

    routes: tuple[Route, ...]
    warnings: tuple[str, ...]
    own: str | None


def plan_from_file(
    nodes_file: str | os.PathLike[str],
    *,
    annotations: Annotations = NO_ANNOTATIONS,
    node_name: str | None = None,
    machine_id_file: str = MACHINE_ID_PATH,
) -> DryRun:
    """What the daemon on node ``node_name`` (else the node whose machine id is the one in
    ``machine_id_file``) would install for the nodes in ``nodes_file``.

    ``annotations`` is checked when it is built, by the same rule as the daemon's
    settings, so a key the daemon refuses is refused here too (``InputError``). Raises
    ``InputError`` for a bad nodes file and for a machine id several nodes share."""
    facts = load_node_facts(nodes_file, annotations=annotations)
    machine_id = None if node_name else read_machine_id(machine_id_file)
    own, warning = resolve_own(facts, name=node_name, machine_id=machine_id)
    routes, problems = desired_routes_from_facts(facts, own=own)
    warnings = ([warning] if warning else []) + [str(p) for p in problems]
    return DryRun(routes=tuple(routes), warnings=tuple(warnings), own=own)
