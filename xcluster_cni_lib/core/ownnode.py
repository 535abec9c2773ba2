"""Which node is this one: by name (``NODE_NAME``), or else by machine id."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar

from xcluster_cni_lib.core.errors import InputError


class _Identified(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def machine_id(self) -> str | None: ...


_N = TypeVar("_N", bound=_Identified)


def find_own(nodes: Iterable[_N], *, name: str | None, machine_id: str | None) -> _N | None:
    """This node among ``nodes`` (``NodeFacts`` or ``NodeNetwork``), or None.

    With a ``name``, the node of that name (the machine id is not looked at). Without
    one, the node whose ``status.nodeInfo.machineID`` equals ``machine_id`` (compared
    without surrounding whitespace and case). Several nodes with this machine id (cloned
    VMs) raise ``InputError``: guessing could route this node's own pods away.
    """
    if name:
        return next((n for n in nodes if n.name == name), None)
    wanted = (machine_id or "").strip().lower()
    if not wanted:
        return None
    matches = [n for n in nodes if n.machine_id and n.machine_id.strip().lower() == wanted]
    if len(matches) > 1:
        names = ", ".join(sorted(n.name for n in matches))
        raise InputError(
            f"machine id {wanted} belongs to several nodes ({names}); set the node name"
        )
    return matches[0] if matches else None


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
