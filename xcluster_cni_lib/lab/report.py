"""Plain-text tables of routes and connectivity (pure: values in, lines out)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from xcluster_cni_lib.core.values import Route
from xcluster_cni_lib.lab.connectivity import Matrix
from xcluster_cni_lib.support.output import render_table

if TYPE_CHECKING:
    from xcluster_cni_lib.lab.cluster import Lab


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """Left-aligned columns separated by two spaces (``support.output.render_table``,
    the renderer of every command, with the header as given)."""
    return render_table(header, [list(map(str, r)) for r in rows], upper=False)


def route_rows(
    network: str, protocol: int, routes: Iterable[Route], owners: dict[str, str]
) -> list[list[str]]:
    """Rows ``network, destination, via, node, protocol``; ``owners`` maps a CIDR to the
    node that owns it."""
    return [
        [network, str(r.dst), str(r.gateway), owners.get(str(r.dst), "?"), str(protocol)]
        for r in sorted(routes, key=lambda r: (r.family, int(r.dst.network_address)))
    ]


ROUTE_HEADER = ("network", "destination", "via", "(node)", "proto")


def matrix_lines(matrix: Matrix, networks: Sequence[str]) -> list[str]:
    """One row per pod pair, one OK/FAIL column per network and family (``-`` when the
    path is not expected, e.g. an IPv6-only pod)."""
    columns = [(n, f) for n in networks for f in (4, 6)]
    pairs = sorted({(r.src, r.dst) for r in matrix.results})
    rows = []
    for src, dst in pairs:
        cells = []
        for network, family in columns:
            result = matrix.get(src, dst, network, family)
            cells.append("-" if result is None else ("OK" if result.ok else "FAIL"))
        rows.append([src, dst, *cells])
    header = ["from", "to", *(f"{n} IPv{f}" for n, f in columns)]
    return table(header, rows)


def summary(matrix: Matrix) -> str:
    failed = len(matrix.failures)
    total = len(matrix.results)
    if not failed:
        return f"all {total} paths OK"
    return f"{failed} of {total} paths FAILED"


def up_lines(lab: Lab) -> list[str]:
    """What ``xcluster-cni lab up`` prints about a lab that is up: where its state is,
    every node and pod with its namespace and addresses, a ping to try, how to stop it."""
    spec = lab.spec
    lines = [f"lab {spec.lab_id} is up; state, nodes file and logs in {spec.state_dir}"]
    for node in lab.nodes.values():
        addrs = "  ".join(f"{net}: {', '.join(map(str, a))}" for net, a in node.addresses.items())
        lines.append(f"  node {node.name:4} netns {node.namespace:20} {addrs}")
    for pod in sorted(lab.pods.values(), key=lambda p: p.name):
        addrs = "  ".join(f"{net}: {', '.join(map(str, a))}" for net, a in pod.addresses.items())
        lines.append(f"  pod  {pod.name:9} netns {pod.netns:20} {addrs}")
    lines.append(f"try: ip netns exec {spec.namespace('n1-pod1')} ping {_first_remote(lab)}")
    lines.append(f"stop it with: {spec.down_command}")
    return lines


def _first_remote(lab: Lab) -> str:
    """The main-network IPv4 address of the first pod not on ``n1``."""
    for pod in lab.pods.values():
        address = pod.address(lab.spec.main.name, 4)
        if pod.node != "n1" and address is not None:
            return str(address)
    return "127.0.0.1"
