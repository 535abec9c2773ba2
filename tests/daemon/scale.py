"""Measure the daemon at scale (run as root: ``.venv/bin/python -m tests.daemon.scale``).

Starts the API-server double with N realistic nodes (~13 KB each), runs a daemon in a
thread against a throwaway namespace, and prints: the time to the first full sync (all
routes in the kernel), the latency of an isolated node change at that size, the CPU time
of one idle reconcile (nothing to change: list, plan, no write), the cost of heartbeats,
and the daemon's CPU use while idle. ``test_scale.py`` runs a smaller size in CI."""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from typing import Any

from tests.apiserver import ApiServerDouble
from tests.daemon.harness import add_gateways, running_daemon, wait_for
from xcluster_cni_lib.testing.netns import netns, run_in
from xcluster_cni_lib.testing.nodes import make_node


def count_routes(ns: str) -> int:
    total = 0
    for family in ("-4", "-6"):
        total += len(json.loads(run_in(ns, ["ip", "-j", family, "route", "show", "proto", "202"])))
    return total


def measure(nodes: int, *, idle_seconds: float = 5.0, samples: int = 5) -> dict[str, Any]:
    out: dict[str, Any] = {"nodes": nodes}
    with ApiServerDouble(bookmark_interval=1.0) as api, netns("sc") as ns:
        add_gateways(ns)
        t = time.monotonic()
        api.set_nodes(make_node(f"n{i}", index=i) for i in range(nodes))
        out["api_fill_s"] = round(time.monotonic() - t, 3)
        kubeconfig = api.write_kubeconfig(os.path.join(tempfile.mkdtemp(), "kc"))
        want = 2 * (nodes - 1)
        t0 = time.monotonic()
        with running_daemon(ns, KUBECONFIG=kubeconfig, NODE_NAME="n0") as daemon:
            wait_for(
                lambda: (
                    daemon.reconciler.last_result is not None
                    and daemon.reconciler.last_result.installed == want
                ),
                timeout=120,
            )
            out["first_full_sync_s"] = round(time.monotonic() - t0, 3)
            assert count_routes(ns) == want
            first = next(r for r in [daemon.reconciler.last_result] if r is not None)
            out["routes"] = want

            # Isolated change latency at this size.
            time.sleep(0.3)
            lat = []
            marks: list[float] = []
            daemon.cache.subscribe(lambda: marks.append(time.monotonic()))
            event_lat = []
            runs: list[tuple[float, float, int]] = []
            rec0 = daemon.reconciler
            orig = rec0.run_changes

            def timed_run_changes(**kwargs: Any) -> Any:
                t = time.monotonic()
                r = orig(**kwargs)
                if r is not None:
                    runs.append((t, time.monotonic(), len(r.plan)))
                return r

            rec0.run_changes = timed_run_changes  # type: ignore[method-assign]
            for k in range(samples):
                node = make_node("n1", index=1, internal_ips=[f"192.168.200.{k + 1}", "fd00::1:1"])
                t = time.monotonic()
                api.update_node(node)
                via = f"via 192.168.200.{k + 1}"

                def moved(via: str = via) -> bool:
                    return via in run_in(ns, ["ip", "route", "show", "10.244.1.0/24"])

                wait_for(moved, timeout=10, every=0.02)
                lat.append(time.monotonic() - t)
                event_lat.append(marks[-1] - t if marks else -1)
                time.sleep(0.3)
            out["change_latency_ms"] = [round(x * 1000, 1) for x in sorted(lat)]
            out["api_write_to_cache_ms"] = [round(x * 1000, 1) for x in sorted(event_lat)]
            out["runs"] = [(round(a - t0, 3), round(b - a, 3), n) for a, b, n in runs]
            rec0.run_changes = orig  # type: ignore[method-assign]

            # One idle reconcile (what every resync costs): CPU of the calling thread.
            rec = daemon.reconciler
            cpu, wall = [], []
            for _ in range(5):
                c, w = time.thread_time(), time.monotonic()
                result = rec.run_once()
                cpu.append(time.thread_time() - c)
                wall.append(time.monotonic() - w)
                assert not result.plan, result.plan
            out["idle_reconcile_cpu_ms"] = round(min(cpu) * 1000, 1)
            out["idle_reconcile_wall_ms"] = round(min(wall) * 1000, 1)

            # Heartbeats: events that change nothing routing uses.
            seen, syncs = daemon.cache.unchanged_events, rec.syncs
            t = time.monotonic()
            for i in range(200):
                api.heartbeat(f"n{i + 1}")
            wait_for(lambda: daemon.cache.unchanged_events >= seen + 200, timeout=30)
            out["200_heartbeats_s"] = round(time.monotonic() - t, 3)
            out["syncs_caused_by_heartbeats"] = rec.syncs - syncs

            # Idle: the whole process's CPU over a few seconds with no change.
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            time.sleep(idle_seconds)
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            used = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
            out["idle_process_cpu_percent"] = round(100 * used / idle_seconds, 2)
            out["first_sync_reconcile_s"] = round(first.duration, 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=5000)
    args = parser.parse_args()
    print(json.dumps(measure(args.nodes), indent=1))


if __name__ == "__main__":
    main()
