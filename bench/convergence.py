"""The daemon's convergence targets in one short run, on the benchmark engineer's scenarios
(nothing here measures on its own; it runs, in order, each in a throwaway namespace):

1. ``bench.daemon_bench`` without storm or churn: ``--changes`` isolated node changes
   (join, re-address, leave, in turn) at ``--nodes`` nodes, each timed from the call on
   the API-server double to the kernel's notification of its last route: p50 and p99.
   ``--storm S`` adds S seconds of heartbeats at 500/s (CPU and netlink writes).
2. ``bench.idle_reconcile``: the CPU time of one full reconcile when nothing changed, at
   the same size, and the netlink writes it made.
3. ``bench.route_install`` at ``--routes`` routes: the library against ``ip -batch``.

    .venv/bin/python -m bench.convergence                 # 5,000 nodes, 200 changes
    .venv/bin/python -m bench.convergence --changes 60 --json out.json

Targets (issue 7): p99 < 100 ms; idle reconcile < 0.5 s CPU and 0 writes; install within
1.5x of ``ip -batch``. Needs root and iproute2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable as a package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, Json, progress, run_in_netns


def measure(
    *,
    nodes: int,
    changes: int,
    routes: int,
    storm: float = 0.0,
    repeats: int = 5,
    overlay: bool = False,
) -> Json:
    """Run the three scenarios; their results under ``daemon``, ``idle``, ``install``."""
    from bench.route_install import measure as measure_install

    RESULTS.mkdir(parents=True, exist_ok=True)
    out: Json = {}
    progress(f"convergence: {changes} changes at {nodes} nodes")
    params: Json = {
        "nodes": nodes,
        "changes": changes,
        "storm_seconds": storm,
        "rate": 500.0,
        "churn_events": 0,
        "client_model": False,
        "idle_seconds": 1.0,
        "log_dir": str(RESULTS),
        "overlay": overlay,
    }
    daemon = run_in_netns("daemon_bench", params, timeout=1800)
    daemon.pop("series", None)
    out["daemon"] = daemon
    progress(f"idle reconcile at {nodes} nodes")
    out["idle"] = run_in_netns("idle_reconcile", {"nodes": nodes, "repeats": repeats}, timeout=900)
    progress(f"route install: {routes} routes")
    out["install"] = measure_install(routes, repeat=repeats, per_process=0)
    return out


def format_summary(out: Json) -> str:
    daemon, idle, install = out["daemon"], out["idle"], out["install"]
    conv = daemon["convergence"]
    lines = [
        f"nodes {daemon['nodes']}, routes {daemon.get('routes')}, "
        f"first sync {daemon.get('sync_seconds', float('nan')):.2f} s",
        f"convergence over {conv['n']} changes: p50 {conv['p50'] * 1000:.1f} ms, "
        f"p90 {conv['p90'] * 1000:.1f} ms, p99 {conv['p99'] * 1000:.1f} ms, "
        f"max {conv['max'] * 1000:.1f} ms  (target p99 < 100 ms)",
    ]
    for kind, s in daemon.get("convergence_by_kind", {}).items():
        lines.append(f"  {kind:<8} p50 {s['p50'] * 1000:.1f} ms, p99 {s['p99'] * 1000:.1f} ms")
    lines.append(
        f"idle full reconcile: CPU {idle['cpu'] * 1000:.0f} ms (median of "
        f"{len(idle.get('cpu_samples', []))}), {idle['netlink_writes']} netlink writes, "
        f"{idle['kernel_route_changes']} kernel changes  (target < 500 ms, 0 writes)"
    )
    if "split" in idle:
        split = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in idle["split"].items())
        lines.append(f"  of which: {split}")
    if "change" in idle:
        change = idle["change"]
        how = "incremental" if change.get("incremental") else "full"
        lines.append(
            f"one node changed ({how} reconcile, in-process): CPU "
            f"{change['cpu'] * 1000:.1f} ms, wall {change['wall'] * 1000:.1f} ms, "
            f"{change['writes_per_change']:.1f} writes"
        )
    storm = daemon.get("storm")
    if storm:
        lines.append(
            f"heartbeats: {storm['rate']:.0f}/s for {storm['seconds']:.0f} s: CPU "
            f"{storm['cpu_percent']:.1f}% of a core, {storm['netlink_writes']:.0f} netlink "
            f"writes, {storm['kernel_route_changes']} kernel changes"
        )
    medians = install["median_seconds"]
    lines.append(
        f"install {install['routes']} routes: library {medians['library'] * 1000:.0f} ms, "
        f"ip -batch {medians['ip -batch'] * 1000:.0f} ms, ratio "
        f"{install['ratio_vs_ip_batch']['library']:.2f}x  (target <= 1.5x)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--routes", type=int, default=10000, help="route install size")
    parser.add_argument("--storm", type=float, default=0.0, help="seconds of heartbeats")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument(
        "--overlay",
        action="store_true",
        help="OVERLAY=vxlan: a change converges when its routes and its neighbour and FDB "
        "entries are in place",
    )
    args = parser.parse_args(argv)
    out = measure(
        nodes=args.nodes,
        changes=args.changes,
        routes=args.routes,
        storm=args.storm,
        repeats=args.repeats,
        overlay=args.overlay,
    )
    print(format_summary(out))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
