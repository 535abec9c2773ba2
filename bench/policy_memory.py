"""The daemon's memory with NetworkPolicy on and off (issue 16): RSS after the first sync,
with 10,000 pods, 200 policies and 200 nodes in the cluster.

Runs in a throwaway network namespace (``bench/policy_harness.py``: the daemon's node
``node-0`` with ``cbr0`` and reachable gateways; the API-server double on its loopback,
holding 200 realistic Nodes and the generated cluster of ``bench/policy_cluster.py``:
10,000 pods, 50 per node, 200 policies). ``xcluster-cni daemon`` is started against the
same double ``--repeat`` times with ``NETWORK_POLICY=false`` and with ``true``, alternately
(off, on, on, off, ...), each time on a bare node (the routes and policy tables the last
run left removed first). Each time, once it has synced (its 398 routes installed; with
policy also both policy tables exactly as ``compile_node`` wants them) and gone idle, its
RSS is the median of 2 s of ``VmRSS`` samples; ``VmHWM`` (peak) too.

    .venv/bin/python -m bench.policy_memory                 # 10,000 pods, 3 runs each
    .venv/bin/python -m bench.policy_memory --pods 2000 --nodes 40 --repeat 1

Target: policy on at most 30 MB above policy off. Needs root, iproute2 and nft.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable as a package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import policy_cluster as pc
from bench import policy_harness as ph
from bench.common import (
    RESULTS,
    child_main,
    count_routes,
    daemon_process,
    emit,
    free_port,
    memory_kb,
    progress,
    run_in_netns,
    scrape_metrics,
    wait_until,
)
from bench.daemon_bench import _steady_rss, _wait_idle
from xcluster_cni_lib.core.policynft import delete_document
from xcluster_cni_lib.testing.netns import run_in

Json = dict[str, Any]


def one_run(
    double: Any, kubeconfig: str, *, enabled: bool, wanted: Any, routes: int, log: Path
) -> Json:
    http = f"127.0.0.1:{free_port()}"
    env = ph.policy_env(kubeconfig, http, enabled=enabled)
    # every run starts from a bare node: the last one left its routes and tables in place
    for family in ("-4", "-6"):
        run_in(None, ["ip", family, "route", "flush", "proto", str(ph.PROTOCOL)], check=False)
    ph.apply(delete_document(ph.TABLE))
    t0 = time.monotonic()
    with daemon_process(env, log_path=log) as proc:

        def synced() -> bool:
            if proc.poll() is not None:
                return True
            if count_routes(ph.PROTOCOL) < routes:
                return False
            return not enabled or ph.listed_elements() == wanted

        if not wait_until(synced, 300, interval=0.25) or proc.poll() is not None:
            raise RuntimeError(f"the daemon did not sync (policy {enabled}); see {log}")
        sync_s = time.monotonic() - t0
        _wait_idle(proc.pid, timeout=60)
        rss = _steady_rss(proc.pid, 2.0)
        hwm = memory_kb(proc.pid)["VmHWM"]
        metrics = scrape_metrics(http)
    return {
        "policy": enabled,
        "sync_seconds": round(sync_s, 2),
        "rss_kb": rss,
        "hwm_kb": hwm,
        "policy_metrics": {
            k: v
            for k, v in metrics.items()
            if k.startswith("xcluster_policy_")
            and "_bucket" not in k
            and not k.endswith("_created")
        },
    }


def run(params: Json) -> Json:
    from tests.apiserver import ApiServerDouble

    pods_n, policies_n, nodes_n = params["pods"], params["policies"], params["nodes"]
    repeat = params["repeat"]
    log_dir = Path(params.get("log_dir") or tempfile.gettempdir())
    c = pc.cluster(pods_n=pods_n, policies_n=policies_n, nodes=nodes_n)
    nodes = ph.api_nodes(nodes_n)
    ph.setup_node(nodes)
    mirror = ph.Mirror.of(c)
    wanted = mirror.wanted()
    routes = 2 * (nodes_n - 1)
    runs: list[Json] = []
    load = [os.getloadavg()[0]]
    with (
        ApiServerDouble(history_size=max(4000, 2 * pods_n)) as double,
        tempfile.TemporaryDirectory(prefix="xcbench") as tmp,
    ):
        ph.load(double, c, nodes)
        kubeconfig = double.write_kubeconfig(Path(tmp) / "kubeconfig")
        order = [False, True, True, False] * ((repeat + 1) // 2)
        order = order[: 2 * repeat]
        for i, enabled in enumerate(order):
            r = one_run(
                double,
                kubeconfig,
                enabled=enabled,
                wanted=wanted,
                routes=routes,
                log=log_dir / "policy-memory-daemon.log",
            )
            r["order"] = i
            runs.append(r)
            load.append(os.getloadavg()[0])
            progress(
                f"policy memory: policy {'on ' if enabled else 'off'} RSS "
                f"{r['rss_kb'] / 1024:.1f} MiB, peak {r['hwm_kb'] / 1024:.1f} MiB, "
                f"sync {r['sync_seconds']} s"
            )
    on = [r["rss_kb"] for r in runs if r["policy"]]
    off = [r["rss_kb"] for r in runs if not r["policy"]]
    on_hwm = [r["hwm_kb"] for r in runs if r["policy"]]
    off_hwm = [r["hwm_kb"] for r in runs if not r["policy"]]
    return {
        "benchmark": "policy_memory",
        "pods": pods_n,
        "policies": policies_n,
        "nodes": nodes_n,
        "local_pods": sum(1 for _ in pc.local_pods(c, ph.OWN)),
        "elements": mirror.state().count(),
        "rss_off_kb": statistics.median(off),
        "rss_on_kb": statistics.median(on),
        "rss_difference_mib": round((statistics.median(on) - statistics.median(off)) / 1024, 1),
        "hwm_off_kb": statistics.median(off_hwm),
        "hwm_on_kb": statistics.median(on_hwm),
        "hwm_difference_mib": round(
            (statistics.median(on_hwm) - statistics.median(off_hwm)) / 1024, 1
        ),
        "loadavg_1m": {"min": min(load), "max": max(load)},
        "runs": runs,
    }


def measure(**params: Any) -> Json:
    """Run the scenario in a throwaway namespace (see the module docstring)."""
    return run_in_netns("policy_memory", params, timeout=params.get("outer_timeout", 1800))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=10000)
    parser.add_argument("--policies", type=int, default=200)
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3, help="runs with each setting")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("policy_memory: needs root (network namespaces)", file=sys.stderr)
        return 2
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = measure(
        pods=args.pods,
        policies=args.policies,
        nodes=args.nodes,
        repeat=args.repeat,
        log_dir=str(RESULTS),
    )
    print(
        f"{result['pods']} pods, {result['policies']} policies, {result['nodes']} nodes: "
        f"RSS policy off {result['rss_off_kb'] / 1024:.1f} MiB, on "
        f"{result['rss_on_kb'] / 1024:.1f} MiB (+{result['rss_difference_mib']} MiB); peak "
        f"+{result['hwm_difference_mib']} MiB",
        file=sys.stderr,
    )
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    if "--child" in sys.argv:
        child_main(run)
    else:
        sys.exit(main())
