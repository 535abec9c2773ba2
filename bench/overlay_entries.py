"""The vxlan overlay's convergence: with ``--peers`` realistic peers installed (dual-stack
pod CIDRs: two neighbour entries and one FDB entry each), the time from one node change
in the cache to its entries applied in the kernel, over ``--changes`` isolated changes
(add a node, change a node's address, delete a node, in turn).

Each change is timed from the cache call (``upsert``/``delete``, which notifies the
reconciler as the node source would) to the end of the reconcile that covered its
generation (every entry operation acknowledged by the kernel), with the reconciler's
loop and the kernel monitor running in threads, as in the daemon. Changes are spaced
by ``--gap`` seconds (more than the coalescing window, so each one is isolated).

Also reported: the first install of every entry, a full resync when nothing changed
(listing every entry), the self-heal of one deleted neighbour entry (measured with
``ip`` polling, which adds a few ms), and of the device deleted by hand (until the
reconcile that made it again and put every entry back has ended).

    .venv/bin/python -m bench.overlay_entries                 # 5,000 peers, 210 changes
    .venv/bin/python -m bench.overlay_entries --peers 1000 --changes 60 --json out.json

Target (issue 14): p99 < 100 ms at 5,000 nodes. Needs root and iproute2.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable as a package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Json, progress, summary
from xcluster_cni_lib.core.overlay import OverlaySettings
from xcluster_cni_lib.core.values import NodeFacts
from xcluster_cni_lib.kernel.vxlan import VxlanKernel
from xcluster_cni_lib.sync.nodecache import NodeCache
from xcluster_cni_lib.sync.overlay import OverlayReconciler, OverlayResult
from xcluster_cni_lib.testing.netns import netns, run_in

DEVICE = "xcvxbench"
OWN_ADDRESS = "10.0.0.1"


def node(i: int, *, moved: bool = False) -> NodeFacts:
    """Peer ``i``: underlay 10.<1-..>.x.y (or 10.200.x.y once ``moved``), pod CIDRs
    10.<128+>.x.0/24 and fd00:10:244:<i>::/64, as a node source would give them."""
    base = 200 if moved else 1
    address = f"10.{base + i // 65536}.{(i // 256) % 256}.{i % 256}"
    return NodeFacts(
        f"node-{i:05d}",
        pod_cidrs=(f"10.{128 + i // 256}.{i % 256}.0/24", f"fd00:10:244:{i:x}::/64"),
        internal_ips=(address,),
    )


def measure(*, peers: int, changes: int, gap: float) -> Json:
    with netns("ovb") as ns:
        run_in(ns, ["ip", "link", "add", "u0", "type", "veth", "peer", "name", "u1"])
        run_in(ns, ["ip", "link", "set", "u0", "up"])
        run_in(ns, ["ip", "link", "set", "u1", "up"])
        run_in(ns, ["ip", "addr", "add", f"{OWN_ADDRESS}/8", "dev", "u0"])
        cache = NodeCache()
        own = NodeFacts("own", pod_cidrs=("10.127.0.0/24",), internal_ips=(OWN_ADDRESS,))
        cache.replace_all([own, *(node(i) for i in range(1, peers + 1))])
        cache.set_healthy(True)
        kernel = VxlanKernel(ns)
        rec = OverlayReconciler(cache, kernel, settings=OverlaySettings(DEVICE, 1), node_name="own")
        out: Json = {"peers": peers, "changes": changes}

        started = time.perf_counter()
        first = rec.run_once()
        out["install_seconds"] = time.perf_counter() - started
        out["entries"] = rec.entries_installed
        assert not first.failures, first.failures[:3]
        rec.run_changes()  # the kernel's events of our own writes
        idle = []
        for _ in range(3):
            cpu = time.process_time()
            t = time.perf_counter()
            result = rec.run_once()
            idle.append((time.perf_counter() - t, time.process_time() - cpu))
            assert result.put == result.deleted == 0
        out["full_resync_seconds"] = min(x[0] for x in idle)
        out["full_resync_cpu_seconds"] = min(x[1] for x in idle)
        progress(
            f"overlay: {out['entries']} entries installed in {out['install_seconds']:.2f} s; "
            f"full resync {out['full_resync_seconds'] * 1000:.0f} ms"
        )

        done = threading.Condition()
        reached = [-1]

        restored: list[float | None] = [None]
        durations: list[float] = []

        def on_iteration(result: OverlayResult | None) -> None:
            if result is not None:
                with done:
                    reached[0] = max(reached[0], result.generation)
                    if not result.full:
                        durations.append(result.duration)
                    if result.device == "created" and not result.failures:
                        restored[0] = time.perf_counter()
                    done.notify_all()

        rec.on_iteration = on_iteration
        cache.subscribe(rec.notify)
        stop = threading.Event()
        assert kernel.monitor is not None
        threads = [
            threading.Thread(target=rec.run, args=(stop,), daemon=True),
            threading.Thread(
                target=kernel.monitor.run, args=(rec.notify_kernel, stop), daemon=True
            ),
        ]
        for th in threads:
            th.start()
        try:
            with done:
                done.wait_for(lambda: reached[0] >= cache.generation, 30)
            kinds: dict[str, list[float]] = {"add": [], "readdress": [], "delete": []}
            extra = peers + 1
            for k in range(changes):
                time.sleep(gap)
                kind = ("add", "readdress", "delete")[k % 3]
                t = time.perf_counter()
                if kind == "add":
                    cache.upsert(node(extra))
                elif kind == "readdress":
                    cache.upsert(node(extra, moved=True))
                else:
                    cache.delete(node(extra).name)
                    extra += 1
                want = cache.generation
                with done:
                    if not done.wait_for(lambda want=want: reached[0] >= want, 10):
                        raise RuntimeError(f"change {k} ({kind}) not applied within 10 s")
                kinds[kind].append(time.perf_counter() - t)
            # self-heal: one neighbour entry deleted by hand
            heal = []
            for i in range(1, 21):
                run_in(
                    ns, ["ip", "neigh", "del", f"10.{128 + i // 256}.{i % 256}.0", "dev", DEVICE]
                )
                deleted = time.perf_counter()
                while f"10.{128 + i // 256}.{i % 256}.0 " not in run_in(
                    ns, ["ip", "neigh", "show", "dev", DEVICE, "nud", "permanent"]
                ):
                    if time.perf_counter() - deleted > 5:
                        raise RuntimeError("neighbour entry not restored within 5 s")
                    time.sleep(0.002)
                heal.append(time.perf_counter() - deleted)
            # self-heal: the device deleted by hand (the kernel drops every entry with it)
            with done:
                restored[0] = None
            run_in(ns, ["ip", "link", "del", DEVICE])
            deleted = time.perf_counter()
            with done:
                if not done.wait_for(lambda: restored[0] is not None, 10):
                    raise RuntimeError("device not restored within 10 s")
                back = restored[0]
            assert back is not None
            out["device_heal_seconds"] = back - deleted
            out["device_heal_entries"] = rec.entries_installed
        finally:
            stop.set()
            for th in threads:
                th.join(5)
            kernel.close()
        every = [x for v in kinds.values() for x in v]
        out["change_seconds"] = summary(every)
        out["by_kind"] = {k: summary(v) for k, v in kinds.items()}
        out["self_heal_seconds"] = summary(heal)
        out["incremental_reconcile_seconds"] = summary(durations)
        out["syncs"] = rec.syncs
        return out


def format_report(out: Json) -> str:
    c = out["change_seconds"]
    lines = [
        f"overlay entries at {out['peers']} peers ({out['entries']} entries):",
        f"  first install         {out['install_seconds'] * 1000:8.1f} ms",
        f"  full resync, no change {out['full_resync_seconds'] * 1000:7.1f} ms "
        f"({out['full_resync_cpu_seconds'] * 1000:.1f} ms CPU)",
        f"  node change -> applied p50 {c['p50'] * 1000:6.2f} ms  p99 {c['p99'] * 1000:6.2f} ms  "
        f"max {c['max'] * 1000:6.2f} ms  (n={c['n']})",
    ]
    for kind, s in out["by_kind"].items():
        lines.append(
            f"    {kind:9s} p50 {s['p50'] * 1000:6.2f} ms  "
            f"p99 {s['p99'] * 1000:6.2f} ms (n={s['n']})"
        )
    r = out["incremental_reconcile_seconds"]
    lines.append(
        f"  (of which the incremental reconcile itself: p50 {r['p50'] * 1000:.2f} ms, "
        f"p99 {r['p99'] * 1000:.2f} ms)"
    )
    h = out["self_heal_seconds"]
    lines.append(
        f"  neighbour deleted by hand -> back (incl. `ip` polling) p50 {h['p50'] * 1000:.1f} ms "
        f"max {h['max'] * 1000:.1f} ms"
    )
    lines.append(
        f"  device deleted by hand -> device and {out['device_heal_entries']} entries back "
        f"{out['device_heal_seconds'] * 1000:.1f} ms"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=5000)
    parser.add_argument("--changes", type=int, default=210)
    parser.add_argument("--gap", type=float, default=0.15, help="seconds between changes")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    out = measure(peers=args.peers, changes=args.changes, gap=args.gap)
    print(format_report(out))
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
