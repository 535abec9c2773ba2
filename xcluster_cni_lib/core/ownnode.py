"""Which node is this one: by name (``NODE_NAME``), or else by machine id.

The one rule for the router daemon (``sync.reconciler``), the ``plan`` command and the
IPAM plugins (``plugin.resolve``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol, TypeVar

from xcluster_cni_lib.core.errors import InputError
from xcluster_cni_lib.core.facts import node_machine_id, node_name


class _Identified(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def machine_id(self) -> str | None: ...


_N = TypeVar("_N", bound=_Identified)


def machine_id_key(machine_id: str | None) -> str:
    """A machine id as it is compared: without surrounding whitespace, lower case
    (``""`` for none)."""
    return (machine_id or "").strip().lower()


def several_nodes_message(machine_id: str, names: Iterable[str]) -> str:
    """The error text for cloned machines: several nodes report ``machine_id``."""
    return (
        f"machine id {machine_id_key(machine_id)} belongs to several nodes "
        f"({', '.join(sorted(names))}); set the node name"
    )


def find_own(nodes: Iterable[_N], *, name: str | None, machine_id: str | None) -> _N | None:
    """This node among ``nodes`` (``NodeFacts`` or ``NodeNetwork``), or None.

    With a ``name``, the node of that name (the machine id is not looked at). Without
    one, the node whose ``status.nodeInfo.machineID`` equals ``machine_id`` (compared
    without surrounding whitespace and case). Several nodes with this machine id (cloned
    VMs) raise ``InputError``: guessing could route this node's own pods away.
    """
    if name:
        return next((n for n in nodes if n.name == name), None)
    wanted = machine_id_key(machine_id)
    if not wanted:
        return None
    matches = [n for n in nodes if n.machine_id and machine_id_key(n.machine_id) == wanted]
    if len(matches) > 1:
        raise InputError(several_nodes_message(wanted, (n.name for n in matches)))
    return matches[0] if matches else None


class _Object:
    """A Node dict seen through ``_Identified``."""

    __slots__ = ("machine_id", "name", "node")

    def __init__(self, node: Mapping[str, Any]) -> None:
        self.node = node
        self.name = node_name(node)
        self.machine_id = node_machine_id(node)


def find_own_object(
    nodes: Iterable[Mapping[str, Any]], *, name: str | None, machine_id: str | None
) -> Mapping[str, Any] | None:
    """``find_own`` over Node dicts as the API returns them (streamed: only matches are
    kept). Raises ``InputError`` like ``find_own``."""

    def seen() -> Iterator[_Object]:
        for node in nodes:
            yield _Object(node)

    found = find_own(seen(), name=name, machine_id=machine_id)
    return found.node if found is not None else None


def resolve_own(
    nodes: Iterable[_Identified], *, name: str | None, machine_id: str | None
) -> tuple[str | None, str | None]:
    """``(own node name or None, warning or None)`` for planning.

    The name of ``find_own``'s node; a ``name`` that is not among ``nodes`` is still
    returned (the node may join later, and it must never get a route to itself), with a
    warning. Without a name and without a machine id match: ``None`` and a warning, since
    then every node gets a route. Raises ``InputError`` like ``find_own``.
    """
    nodes = list(nodes)
    found = find_own(nodes, name=name, machine_id=machine_id)
    if found is not None:
        return found.name, None
    if name:
        return name, f"node {name} is not among the nodes"
    if machine_id:
        return None, (
            f"no node has this machine's id {machine_id.strip()} and no node name was "
            "given: routes to every node"
        )
    return (
        None,
        "no node name was given and the machine id is unknown: routes to every node",
    )
