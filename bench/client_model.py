"""The memory comparison for the daemon: a node watcher that keeps the kubernetes client's
model objects (``V1Node``), as a straightforward client-based controller would.

It lists the nodes in pages of 500 (like client-go's reflector) with the client's default
deserialization (``_preload_content=True``), keeps every ``V1Node`` in a dict, prints
``watching``, then follows a watch from the list's resourceVersion, replacing the kept
object on each event, until ``--events`` events arrived. It reports its RSS after the list
(steady), after the events, and its peak (``VmHWM``), in KiB.

Run by ``bench.daemon_bench`` against the same API-server double as the daemon.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any


def _memory() -> dict[str, int]:
    out: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--events", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import importlib

    kubernetes: Any = importlib.import_module("kubernetes")  # used untyped, as most code does
    client = kubernetes.config.new_client_from_config(config_file=args.kubeconfig)
    api: Any = kubernetes.client.CoreV1Api(client)
    gc.collect()
    result: dict[str, Any] = {"rss_baseline_kb": _memory()["VmRSS"]}

    t0 = time.monotonic()
    nodes: dict[str, Any] = {}
    token: str | None = None
    rv = ""
    while True:
        page = api.list_node(limit=500, _continue=token) if token else api.list_node(limit=500)
        for item in page.items:
            nodes[item.metadata.name] = item
        rv = page.metadata.resource_version
        token = page.metadata._continue
        if not token:
            break
    result["list_seconds"] = time.monotonic() - t0
    result["nodes"] = len(nodes)
    gc.collect()
    result["rss_after_sync_kb"] = _memory()["VmRSS"]
    result["hwm_after_sync_kb"] = _memory()["VmHWM"]
    print("watching", flush=True)

    received = 0
    t0 = time.monotonic()
    cpu0 = time.process_time()
    if args.events > 0:
        w = kubernetes.watch.Watch()
        for event in w.stream(api.list_node, resource_version=rv, timeout_seconds=600):
            obj = event["object"]
            if event["type"] == "DELETED":
                nodes.pop(obj.metadata.name, None)
            else:
                nodes[obj.metadata.name] = obj
            received += 1
            if received >= args.events:
                w.stop()
                break
    result["events"] = received
    result["watch_seconds"] = time.monotonic() - t0
    result["cpu_per_event"] = (time.process_time() - cpu0) / received if received else 0.0
    gc.collect()
    result["rss_after_churn_kb"] = _memory()["VmRSS"]
    result["hwm_kb"] = _memory()["VmHWM"]
    Path(args.out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
