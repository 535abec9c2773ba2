"""Plain-text tables of routes and connectivity (pure: values in, lines out)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from xcluster_cni_lib.core.values import Route
from xcluster_cni_lib.lab.connectivity import Matrix


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """Left-aligned columns separated by two spaces."""
    body = [list(map(str, r)) for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body, strict=False)]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip()
        for row in [list(header), *body]
    ]


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
