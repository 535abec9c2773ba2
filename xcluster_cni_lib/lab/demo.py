"""The demo: a 3-node dual-stack cluster with a secondary network, its routes, a
connectivity matrix, a node leaving and coming back, then tear-down. Returns the exit
status (non-zero when any expected path or convergence failed)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

from xcluster_cni_lib.lab.cluster import Lab
from xcluster_cni_lib.lab.connectivity import PingResult
from xcluster_cni_lib.lab.report import ROUTE_HEADER, matrix_lines, route_rows, summary, table
from xcluster_cni_lib.lab.shell import list_netns
from xcluster_cni_lib.lab.spec import LabError, LabSpec


def _printer(out: TextIO) -> Callable[..., None]:
    def say(*parts: object) -> None:
        print(*parts, file=out, flush=True)

    return say


def print_routes(lab: Lab, say: Callable[..., None], nodes: list[str] | None = None) -> None:
    owners = {str(c): n.name for n in lab.nodes.values() for cs in n.cidrs.values() for c in cs}
    for node in nodes or list(lab.nodes):
        rows = []
        for net in lab.spec.networks:
            rows += route_rows(net.name, net.protocol, lab.routes(node, net.name), owners)
        say(f"\n  routes on {node} ({lab.node(node).namespace}):")
        for line in table(ROUTE_HEADER, rows) if rows else ["(none)"]:
            say("    " + line)


def run_demo(out: TextIO, *, spec: LabSpec | None = None) -> int:
    """Run the demo, printing to ``out``; 0 when every step worked."""
    say = _printer(out)
    spec = spec or LabSpec(nodes=3, pods_per_node=2)
    nets = ", ".join(
        f"{n.name} (pod interface {n.pod_ifname}, bridge {n.bridge}, route protocol {n.protocol})"
        for n in spec.networks
    )
    started = time.monotonic()
    failed = False
    say(f"xcluster-cni lab {spec.lab_id}: {spec.nodes} nodes, {spec.pods_per_node} pods each,")
    say(f"  networks: {nets}")
    say(f"  state and daemon logs: {spec.state_dir}")
    lab = Lab(spec)
    try:
        with lab:
            say(f"\n[1] built nodes, pods and daemons; routes converged ({_since(started)})")
            print_routes(lab, say)

            nets_names = [n.name for n in spec.networks]
            matrix = lab.connectivity()
            say(f"\n[2] connectivity, every pod to every other pod ({summary(matrix)}):")
            for line in matrix_lines(matrix, nets_names):
                say("    " + line)
            failed |= not matrix.ok

            leaving = lab.names()[-1]
            lab.remove_node(leaving)
            took = lab.wait_converged(timeout=5.0)
            ms = f"{took * 1000:.0f} ms"
            say(f"\n[3] node {leaving} removed from the node list: routes converged in {ms}")
            print_routes(lab, say, [n for n in lab.names() if n != leaving][:1])
            matrix = lab.connectivity(deadline=0.3, workers=32)  # most time out
            cut = [r for r in matrix.results if _crosses(lab, r, leaving)]
            rest = [r for r in matrix.results if not _crosses(lab, r, leaving)]
            say(
                f"\n    paths between {leaving}'s pods and other nodes' pods: "
                f"{sum(r.ok for r in cut)} of {len(cut)} OK (expected 0: no routes); "
                f"other paths: {sum(r.ok for r in rest)} of {len(rest)} OK"
            )
            failed |= any(r.ok for r in cut) or not all(r.ok for r in rest)

            lab.restore_node(leaving)
            took = lab.wait_converged(timeout=5.0)
            matrix = lab.connectivity()
            say(
                f"\n[4] node {leaving} added back: routes converged in {took * 1000:.0f} ms; "
                f"connectivity: {summary(matrix)}"
            )
            for r in matrix.failures:
                say(f"    FAIL {r.src} -> {r.dst} {r.network} IPv{r.family} ({r.address})")
            failed |= not matrix.ok
            if spec.outside:
                failed |= show_egress(lab, say)
            say("\n[5] tearing down")
    except LabError as e:
        say(f"\nFAILED: {e}")
        failed = True
    except KeyboardInterrupt:
        say("\ninterrupted: lab torn down")
        return 130
    leftovers = [n for n in list_netns() if n.startswith(spec.ns_prefix)]
    if leftovers:
        say(f"left behind: {', '.join(leftovers)}")
        failed = True
    verdict = "FAILED" if failed else "OK"
    say(f"\n{verdict}: demo finished in {_since(started)}, {len(leftovers)} namespaces left")
    return 1 if failed else 0


def show_egress(lab: Lab, say: Callable[..., None]) -> bool:
    """Ask the outside host who it sees from the first pod, per family; True when that
    is not what the main network's masquerade setting calls for."""
    lab.serve_whoami("out")
    pod = next(iter(lab.pods.values()))
    masquerade = lab.spec.main.masquerade
    say(f"\n[4b] egress from {pod.name} to the outside host (masquerade {masquerade}):")
    failed = False
    for family in (4, 6):
        outside = lab.spec.outside_address(family)
        seen = lab.whoami(pod.name, outside, deadline=3.0 if masquerade else 1.0)
        node_address = str(lab.node(pod.node).address(lab.spec.main.name, family))
        want = node_address if masquerade else None
        verdict = "OK" if seen == want else "FAIL"
        failed |= seen != want
        what = f"sees {seen}" if seen else "no answer (it has no route to pod CIDRs)"
        say(f"    {verdict} IPv{family} {outside}: {what}")
    return failed


def _crosses(lab: Lab, result: PingResult, node: str) -> bool:
    """Whether a path runs between ``node``'s pods and another node's pods."""
    nodes = {lab.pod(result.src).node, lab.pod(result.dst).node}
    return node in nodes and len(nodes) == 2


def _since(start: float) -> str:
    return f"{time.monotonic() - start:.1f} s"
