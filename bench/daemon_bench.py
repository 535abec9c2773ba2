"""The daemon, measured as a real process: ``xcluster-cni daemon`` against the API-server
double, in a throwaway network namespace (run by ``run_in_netns``; everything here lives
inside it: the double listens on the namespace's loopback, the gateways are addresses on
a veth pair inside the namespace, nothing leaves it).

Phases, in one daemon lifetime:

1. **sync**: N realistic nodes in the double; start the daemon; wait until the kernel holds
   every route (2 per other node). Resident memory once settled ("steady after sync").
2. **convergence**: ``changes`` isolated node changes (a node joins, a node's addresses
   change, a node leaves, in turn), each timed from the call on the double to the kernel's
   notification of the last of its routes (``ip -ts monitor route``, time-stamped by
   ``ip`` on arrival). Changes are spaced beyond the reconciler's coalescing window, so
   each measures an isolated change.
3. **storm** (optional): ``rate`` heartbeats/s (status-only MODIFIED events, as kubelets
   send) for ``storm_seconds``: daemon CPU (``/proc/<pid>/stat``), netlink writes (the
   daemon's ``xcluster_route_operations_total`` and the kernel's notifications), RSS.
4. **churn** (optional): more heartbeats until ``churn_events`` in all, then RSS again
   ("steady after churn") and the peak (``VmHWM``).
5. **client-model comparison** (optional): ``bench.client_model`` lists the same nodes
   with the kubernetes client (models kept), then follows a watch through ``N`` more
   heartbeats; its RSS and peak.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    Json,
    NeighMonitor,
    RawWatch,
    RouteMonitor,
    Sampler,
    child_main,
    count_routes,
    cpu_seconds,
    daemon_process,
    free_port,
    memory_kb,
    metric_sum,
    progress,
    scrape_metrics,
    setup_gateways,
    stop_process,
    summary,
    wait_until,
)
from bench.nodes import addresses_of, make_nodes, routes_of, with_new_addresses
from xcluster_cni_lib.core.overlay import vtep_mac

PROTOCOL = 202
OPS_METRIC = "xcluster_route_operations_total"
SYNC_COUNT = "xcluster_sync_duration_seconds_count"
SYNC_SUM = "xcluster_sync_duration_seconds_sum"


def _steady_rss(pid: int, seconds: float) -> int:
    """Median RSS (KiB) over ``seconds`` of sampling."""
    values = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        values.append(memory_kb(pid)["VmRSS"])
        time.sleep(0.1)
    values.sort()
    return values[len(values) // 2]


def _wait_idle(pid: int, *, timeout: float, quiet: float = 1.0) -> None:
    """Wait until the process used < 5% CPU over a ``quiet``-second window."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(quiet)
        if cpu_seconds(pid) - before < 0.05 * quiet:
            return


def _heartbeats(double: Any, names: list[str], *, rate: float, count: int, start: int) -> Json:
    """Send ``count`` heartbeats round-robin at ``rate``/s; returns the achieved rate."""
    begin = time.monotonic()
    for k in range(count):
        target = begin + k / rate
        delay = target - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        double.heartbeat(names[(start + k) % len(names)])
    elapsed = time.monotonic() - begin
    return {"events": count, "seconds": elapsed, "rate": count / elapsed if elapsed else 0.0}


_IMPORTS = """
import re
import xcluster_cni_lib.daemon.service, xcluster_cni_lib.kernel.routetable
import xcluster_cni_lib.sync.nodecache, xcluster_cni_lib.sync.reconciler
import xcluster_cni_lib.daemon.http, xcluster_cni_lib.sync.metrics
print(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
import xcluster_cni_lib.sources.kube
print(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
"""


def _overlay_routes(node: Any) -> dict[str, str]:
    """The overlay's routes to ``node``: each pod CIDR via its network address (the VTEP)."""
    return {dst: str(ipaddress.ip_network(dst).network_address) for dst in routes_of(node)}


def _overlay_entries(node: Any) -> list[tuple[str, str]]:
    """(address, MAC) of ``node``'s FDB entry (its IPv4 underlay address) and neighbour
    entries (its VTEP addresses) on the overlay device."""
    underlay = next(a for a in addresses_of(node) if ":" not in a)
    mac = vtep_mac(ipaddress.ip_address(underlay))
    vteps = [str(ipaddress.ip_network(dst).network_address) for dst in routes_of(node)]
    return [(underlay, mac), *((v, mac) for v in vteps)]


def import_baseline() -> Json:
    """RSS (KiB) of a Python process holding the daemon's modules, without and with
    ``kube.py`` (the ``kubernetes`` client): the part of the daemon's RSS that no node
    causes."""
    out = subprocess.run(
        [sys.executable, "-c", _IMPORTS], capture_output=True, text=True, check=True
    ).stdout.split()
    return {"rss_daemon_modules_kb": int(out[0]), "rss_with_kubernetes_kb": int(out[1])}


def run(params: Json) -> Json:
    from tests.apiserver import ApiServerDouble

    n: int = params["nodes"]
    changes: int = params.get("changes", 200)
    storm_seconds: float = params.get("storm_seconds", 0.0)
    rate: float = params.get("rate", 500.0)
    churn_events: int = params.get("churn_events", 0)
    client_model: bool = params.get("client_model", False)
    overlay: bool = params.get("overlay", False)  # OVERLAY=vxlan: routes and entries
    route_targets = _overlay_routes if overlay else routes_of
    log_dir = Path(params.get("log_dir") or tempfile.gettempdir())
    rng = random.Random(7)
    result: Json = {"nodes": n, "changes": changes, **import_baseline()}

    t = time.monotonic()
    joining = max(1, changes // 3 + 1)
    nodes = make_nodes(n + joining)
    existing, spare = nodes[:n], nodes[n:]
    own = existing[0]
    moved_shift = 1 << 15  # re-addressed nodes move past every index's address (make_node)
    all_addresses = [a for node in nodes for a in addresses_of(node)]
    all_addresses += [
        a for node in nodes for a in addresses_of(with_new_addresses(node, moved_shift))
    ]
    setup_gateways(addresses_of(own), all_addresses)
    result["json_bytes_per_node"] = len(json.dumps(existing[1])) if n > 1 else 0
    progress(f"daemon N={n}: {n + joining} nodes made in {time.monotonic() - t:.1f} s")

    with (
        ApiServerDouble(history_size=max(2000, 4 * n)) as double,
        tempfile.TemporaryDirectory(prefix="xcbench") as tmp,
        RouteMonitor(PROTOCOL) as monitor,
    ):
        double.set_nodes(existing)
        kubeconfig = double.write_kubeconfig(Path(tmp) / "kubeconfig")
        http = f"127.0.0.1:{free_port()}"
        want: dict[str, str | None] = {}
        for node in existing[1:]:
            want.update(route_targets(node))
        env = {
            "NODE_NAME": own["metadata"]["name"],
            "PROTOCOL": str(PROTOCOL),
            "KUBECONFIG": kubeconfig,
            "HTTP_ADDRESS": http,
            "LOG_LEVEL": "error",
        }
        if overlay:
            env["OVERLAY"] = "vxlan"
        if params.get("resync_interval"):
            env["RESYNC_INTERVAL"] = str(params["resync_interval"])
        log_path = log_dir / f"daemon-{n}.log"
        started_wall = time.time()
        with daemon_process(env, log_path=log_path) as proc, Sampler(proc.pid) as sampler:
            marks: dict[str, float] = {"start": time.monotonic()}
            # A sync of thousands of routes may overflow the monitor: count by dumps.
            synced = wait_until(
                lambda: proc.poll() is not None or count_routes(PROTOCOL) >= len(want),
                params.get("sync_timeout", 300),
                interval=0.25,
            )
            if not synced or proc.poll() is not None:
                raise RuntimeError(
                    f"daemon did not install {len(want)} routes (has "
                    f"{count_routes(PROTOCOL)}); see {log_path}"
                )
            result["sync_seconds"] = time.time() - started_wall
            monitor.reseed()
            if monitor.wait_routes(want, timeout=5) is None:
                raise RuntimeError("the kernel's routes are not the expected ones")
            result["routes"] = len(want)
            marks["synced"] = time.monotonic()
            progress(f"daemon N={n}: {len(want)} routes in {result['sync_seconds']:.1f} s")
            _wait_idle(proc.pid, timeout=30)
            result["rss_after_sync_kb"] = _steady_rss(proc.pid, 2.0)
            result["hwm_after_sync_kb"] = memory_kb(proc.pid)["VmHWM"]
            idle_cpu0, idle_t0 = cpu_seconds(proc.pid), time.monotonic()
            time.sleep(params.get("idle_seconds", 3.0))
            result["idle_cpu_percent"] = (
                100 * (cpu_seconds(proc.pid) - idle_cpu0) / (time.monotonic() - idle_t0)
            )

            # -- convergence -------------------------------------------------------------
            marks["convergence"] = time.monotonic()
            before = scrape_metrics(http)
            latencies: dict[str, list[float]] = {"add": [], "address": [], "delete": []}
            delivery: list[float] = []
            watch = RawWatch(double.url, double.resource_version)
            neigh = NeighMonitor(f"xcvx{PROTOCOL}") if overlay else None
            with watch, neigh or contextlib.nullcontext():
                removable = [node for node in existing[1:]]
                rng.shuffle(removable)
                movable = list(removable[len(removable) // 2 :])
                removable = removable[: len(removable) // 2]
                kinds = ["add", "address", "delete"]
                for k in range(changes):
                    kind = kinds[k % 3]
                    time.sleep(rng.uniform(0.15, 0.25))  # beyond the 0.1 s coalescing window
                    entries: dict[tuple[str, str], bool] = {}
                    if kind == "add":
                        node = spare.pop()
                        target: dict[str, str | None] = dict(route_targets(node))
                        entries = dict.fromkeys(_overlay_entries(node), True)
                        t0 = time.time()
                        double.add_node(node)
                    elif kind == "address":
                        node = movable.pop()
                        moved = with_new_addresses(node, moved_shift)
                        target = dict(route_targets(moved))
                        entries = dict.fromkeys(_overlay_entries(node), False)
                        entries.update(dict.fromkeys(_overlay_entries(moved), True))
                        t0 = time.time()
                        double.update_node(moved)
                    else:
                        node = removable.pop()
                        target = {dst: None for dst in route_targets(node)}
                        entries = dict.fromkeys(_overlay_entries(node), False)
                        t0 = time.time()
                        double.delete_node(node["metadata"]["name"])
                    done = monitor.wait_routes(target, timeout=10)
                    if neigh is not None and done is not None:  # and the overlay's entries
                        entries_done = neigh.wait(entries, timeout=10)
                        done = None if entries_done is None else max(done, entries_done)
                    event = {"add": "ADDED", "address": "MODIFIED", "delete": "DELETED"}[kind]
                    arrived = watch.wait(event, node["metadata"]["name"], timeout=5)
                    if arrived is not None:
                        delivery.append(max(0.0, arrived - t0))
                    if done is None:
                        latencies[kind].append(10.0)
                        progress(f"change {k} ({kind}) did not converge within 10 s")
                    else:
                        latencies[kind].append(max(0.0, done - t0))
            result["watch_delivery"] = summary(delivery)
            result["watch_delivery_samples"] = delivery
            after = scrape_metrics(http)
            syncs = metric_sum(after, SYNC_COUNT) - metric_sum(before, SYNC_COUNT)
            sync_time = metric_sum(after, SYNC_SUM) - metric_sum(before, SYNC_SUM)
            result["reconciles_per_change"] = syncs / changes if changes else 0.0
            result["reconcile_mean_seconds"] = sync_time / syncs if syncs else 0.0
            every = [x for xs in latencies.values() for x in xs]
            result["convergence"] = summary(every)
            result["convergence_by_kind"] = {k: summary(v) for k, v in latencies.items()}
            result["convergence_samples"] = every
            marks["convergence_done"] = time.monotonic()
            progress(
                f"daemon N={n}: convergence p50 {result['convergence']['p50'] * 1000:.1f} ms,"
                f" p99 {result['convergence']['p99'] * 1000:.1f} ms"
            )

            # -- heartbeat storm ---------------------------------------------------------
            names = double.node_names()
            sent = 0
            if storm_seconds > 0:
                _wait_idle(proc.pid, timeout=10)
                ops0 = metric_sum(scrape_metrics(http), OPS_METRIC)
                changes0 = monitor.changes
                cpu0, t0m = cpu_seconds(proc.pid), time.monotonic()
                marks["storm"] = t0m
                hb = _heartbeats(double, names, rate=rate, count=int(rate * storm_seconds), start=0)
                sent += hb["events"]
                marks["storm_done"] = time.monotonic()
                storm_wall = marks["storm_done"] - t0m
                # CPU over the storm and the drain of whatever is still in flight after it
                # (divided by the storm's duration: conservative).
                _wait_idle(proc.pid, timeout=30, quiet=0.5)
                storm_cpu = cpu_seconds(proc.pid) - cpu0
                ops1 = metric_sum(scrape_metrics(http), OPS_METRIC)
                window = sampler.window(t0m, marks["storm_done"])
                rss = [s[2] for s in window]
                result["storm"] = {
                    **hb,
                    "target_rate": rate,
                    "cpu_percent": 100 * storm_cpu / storm_wall,
                    "cpu_per_event": storm_cpu / hb["events"] if hb["events"] else 0.0,
                    "netlink_writes": ops1 - ops0,
                    "kernel_route_changes": monitor.changes - changes0,
                    "rss_start_kb": rss[0] if rss else None,
                    "rss_end_kb": rss[-1] if rss else None,
                    "rss_max_kb": max(rss) if rss else None,
                }
                progress(
                    f"daemon N={n}: storm {hb['rate']:.0f} ev/s, "
                    f"CPU {result['storm']['cpu_percent']:.1f}% of a core, "
                    f"{result['storm']['netlink_writes']:.0f} netlink writes"
                )

            # -- churn ---------------------------------------------------------------------
            if churn_events > sent:
                marks["churn"] = time.monotonic()
                hb = _heartbeats(
                    double,
                    names,
                    rate=params.get("churn_rate", 1000.0),
                    count=churn_events - sent,
                    start=sent,
                )
                sent += hb["events"]
                marks["churn_done"] = time.monotonic()
            if sent:
                _wait_idle(proc.pid, timeout=20)
                result["churn"] = {"heartbeats": sent, "changes": changes}
                result["rss_after_churn_kb"] = _steady_rss(proc.pid, 2.0)
            result["hwm_kb"] = memory_kb(proc.pid)["VmHWM"]
            metrics = scrape_metrics(http)
            result["netlink_writes_total"] = metric_sum(metrics, OPS_METRIC)
            base = marks["start"]
            result["series"] = [
                [round(s[0] - base, 3), round(s[1], 3), s[2]] for s in sampler.samples
            ]
            result["marks"] = {k: round(v - base, 3) for k, v in marks.items()}

        # -- the client-model comparison -------------------------------------------------
        if client_model:
            result["client_model"] = _client_model(double, kubeconfig, names, n)
    return result


def _client_model(double: Any, kubeconfig: str, names: list[str], events: int) -> Json:
    """Run ``bench.client_model`` (kubernetes client, V1Node objects kept) against the
    same double; drive ``events`` heartbeats while it watches."""
    with tempfile.TemporaryDirectory(prefix="xcbench") as tmp:
        out = Path(tmp) / "client.json"
        argv = [sys.executable, "-m", "bench.client_model", "--kubeconfig", kubeconfig]
        argv += ["--events", str(events), "--out", str(out)]
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # "watching" once the list is held
            if not line.startswith("watching"):
                raise RuntimeError(f"client_model did not start: {line!r}")
            t0 = time.monotonic()
            _heartbeats(double, names, rate=2000.0, count=events, start=0)
            proc.wait(timeout=600)
            result: Json = json.loads(out.read_text())
            result["churn_seconds"] = time.monotonic() - t0
            return result
        finally:
            stop_process(proc)


if __name__ == "__main__":
    child_main(run)
