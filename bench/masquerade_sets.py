"""Masquerade set benchmark: what one node change costs with 5,000 nodes in the sets, and
what loading the whole table costs.

In a throwaway network namespace, with the real ``nft`` (through ``kernel.nftables.Nft``,
as the daemon runs it) and the reconciler (``sync.masquerade``) on a real node cache:

- ``full_load``: ``nft -j -f -`` of the whole table (``table_document``) with N nodes;
- ``node_change``: a node added or removed (alternately) in the cache, then
  ``run_changes``: snapshot, desired sets, diff, one element transaction. Reported whole
  and split into the pure part (``compute``: desired sets and diff) and ``nft`` (the
  transaction);
- ``full_compare``: ``run_once`` on an unchanged table (list it, parse, compare: what a
  kernel event or the resync costs).

Two layouts: ``adjacent`` (node i has ``10.244.<i>.0/24``-style CIDRs, as
``testing.nodes`` makes them: neighbours merge, the sets hold a handful of elements) and
``scattered`` (every other /24 and /64: nothing merges, 5,000 elements per cluster set,
the worst case).

    .venv/bin/python bench/masquerade_sets.py                 # N = 5,000, 200 changes
    .venv/bin/python bench/masquerade_sets.py -n 1000 --changes 50 --json out.json

Needs root and nft (Debian package ``nftables``).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from xcluster_cni_lib.core import masquerade as m
from xcluster_cni_lib.core.nodes import parse_facts
from xcluster_cni_lib.core.values import NodeFacts
from xcluster_cni_lib.kernel.nftables import Nft
from xcluster_cni_lib.sync.masquerade import MasqueradeReconciler
from xcluster_cni_lib.sync.nodecache import NodeCache
from xcluster_cni_lib.testing.netns import netns

PROTOCOL = 202
NON_MASQUERADE = (ipaddress.ip_network("172.16.0.0/12"),)


def node(i: int, *, layout: str) -> NodeFacts:
    """Node ``i``: its pod CIDRs (every other block with ``scattered``) and addresses."""
    j = i * 2 if layout == "scattered" else i
    v4 = ipaddress.IPv4Address(int(ipaddress.IPv4Address("10.0.0.0")) + j * 256)
    return NodeFacts(
        name=f"n{i}",
        pod_cidrs=(f"{v4}/24", f"fd00:10:{j >> 16:x}:{j & 0xFFFF:x}::/64"),
        internal_ips=(str(ipaddress.IPv4Address(int(ipaddress.IPv4Address("192.168.0.1")) + i)),),
    )


def percentile(values: Sequence[float], p: float) -> float:
    xs = sorted(values)
    if not xs:
        return math.nan
    k = (len(xs) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def stats_ms(values: Sequence[float]) -> dict[str, Any]:
    ms = [v * 1000 for v in values]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "max_ms": round(max(ms), 3) if ms else math.nan,
    }


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run(n: int, changes: int, loads: int, layout: str) -> dict[str, Any]:
    with netns("mqb") as ns, Nft(netns=ns) as nft:
        cache = NodeCache()
        cache.replace_all(node(i, layout=layout) for i in range(n))
        cache.set_healthy(True)
        r = MasqueradeReconciler(
            cache, nft, node_name="n0", non_masquerade=NON_MASQUERADE, protocol=PROTOCOL
        )
        view = cache.snapshot()
        sets = m.desired_sets(view.networks, own="n0", non_masquerade=NON_MASQUERADE)
        table = r.table
        load = []
        for _ in range(loads):
            nft.apply(m.delete_document(table))
            load.append(timed(lambda: nft.apply(m.table_document(table, sets))))
        first = r.run_once()
        assert first.action == "none", first

        total, compute, apply = [], [], []
        extra = node(n, layout=layout)
        for k in range(changes):
            if k % 2 == 0:
                cache.upsert(extra)
            else:
                cache.delete(extra.name)
            t0 = time.perf_counter()
            result = r.run_changes()
            total.append(time.perf_counter() - t0)
            assert result is not None and result.action == "update", result
            # the pure part of the same change, again (the reconciler's own split)
            t1 = time.perf_counter()
            snap = cache.snapshot()
            want = m.desired_sets(snap.networks, own="n0", non_masquerade=NON_MASQUERADE)
            assert m.diff_sets(sets, want)
            compute.append(time.perf_counter() - t1)
            sets = want
        # the nft transaction alone: add/remove one node's CIDRs
        networks = cache.snapshot().networks
        without = m.desired_sets(networks, own="n0", non_masquerade=NON_MASQUERADE)
        with_extra = m.desired_sets(
            (*networks, parse_facts(extra)), own="n0", non_masquerade=NON_MASQUERADE
        )
        for k in range(changes):
            a, b = (without, with_extra) if k % 2 == 0 else (with_extra, without)
            doc = m.update_document(table, m.diff_sets(a, b))
            apply.append(timed(lambda doc=doc: nft.apply(doc)))  # type: ignore[misc]
        compare = [timed(r.run_once) for _ in range(max(5, changes // 10))]
        # core.masquerade.collapse against the standard library's, on the cluster CIDRs
        cidrs = [c for n in networks for c in n.cidrs]
        ours = [timed(lambda: m.collapse(cidrs)) for _ in range(5)]
        stdlib = [timed(lambda: _stdlib_collapse(cidrs)) for _ in range(5)]
        assert r.last_result is not None and r.last_result.action == "none"
        return {
            "nodes": n,
            "layout": layout,
            "elements": sets.count(),
            "full_load": stats_ms(load),
            "node_change": stats_ms(total),
            "compute": stats_ms(compute),
            "nft_update": stats_ms(apply),
            "full_compare": stats_ms(compare),
            "collapse": stats_ms(ours),
            "collapse_stdlib": stats_ms(stdlib),
        }


def _stdlib_collapse(cidrs: Sequence[Any]) -> list[Any]:
    v4 = [c for c in cidrs if c.version == 4]
    v6 = [c for c in cidrs if c.version == 6]
    return [*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--nodes", type=int, default=5000)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--layout", action="append", choices=("adjacent", "scattered"))
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    version = subprocess.run(["nft", "--version"], capture_output=True, text=True).stdout
    results = [
        run(args.nodes, args.changes, args.loads, layout)
        for layout in (args.layout or ["adjacent", "scattered"])
    ]
    out = {
        "benchmark": "masquerade_sets",
        "nft": version.strip(),
        "python": platform.python_version(),
        "results": results,
    }
    for r in results:
        print(
            f"{r['layout']:>9} {r['nodes']} nodes, {r['elements']} elements: "
            f"full load p50 {r['full_load']['p50_ms']} ms; node change p50 "
            f"{r['node_change']['p50_ms']} ms p99 {r['node_change']['p99_ms']} ms "
            f"(compute p50 {r['compute']['p50_ms']} ms, nft update p50 "
            f"{r['nft_update']['p50_ms']} ms p99 {r['nft_update']['p99_ms']} ms); "
            f"full compare p50 {r['full_compare']['p50_ms']} ms; collapse p50 "
            f"{r['collapse']['p50_ms']} ms (stdlib {r['collapse_stdlib']['p50_ms']} ms)",
            file=sys.stderr,
        )
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
