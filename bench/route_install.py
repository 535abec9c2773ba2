"""Route install benchmark: NetlinkRouteTable.apply vs ``ip -batch`` vs one ``ip`` per route.

In a throwaway network namespace, installs N routes (half IPv4 /24, half IPv6 /64) into
an empty main table, several times per method, the methods interleaved so that machine
noise hits them alike, and prints medians and ratios against ``ip -batch``.

The reported figure is the cluster's case: every node is its own gateway, so each route
has a gateway of its own (node j: its IPv4 CIDR via 192.168.x.y, its IPv6 CIDR via
fd00:77::j, all on-link), and the kernel keeps separate next-hop state per route. The
easier case of the first versions of this benchmark, every route through one gateway per
family (the kernel then shares one next hop), is measured too as a secondary figure
(``one_gateway``; ``--no-one-gateway`` skips it). One ``ip route replace`` process per
route is timed on at most ``--per-process`` routes and scaled to N (it is far too slow to
run at 10,000).

    .venv/bin/python bench/route_install.py               # N = 10,000, 5 repetitions
    .venv/bin/python bench/route_install.py -n 1000 -n 10000 --repeat 7 --json out.json

Needs root and iproute2.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from xcluster_cni_lib.core.values import Plan, Route
from xcluster_cni_lib.kernel.routetable import NetlinkRouteTable
from xcluster_cni_lib.testing.netns import netns, run_in

PROTOCOL = 202
GW4 = ipaddress.IPv4Address("192.168.77.2")
GW6 = ipaddress.IPv6Address("fd00:77::2")
#: the on-link subnets of the gateways (the namespace's own address is the first one)
NET4 = ipaddress.IPv4Network("192.168.0.0/16")
NET6 = ipaddress.IPv6Network("fd00:77::/64")


def make_routes(n: int, *, one_gateway: bool = False) -> list[Route]:
    """``n`` routes, IPv4 and IPv6 alternating, distinct destinations: node j's IPv4
    CIDR via its own IPv4 address and its IPv6 CIDR via its own IPv6 address, or (with
    ``one_gateway``) every route via GW4/GW6."""
    if n // 2 + 2 >= NET4.num_addresses:
        raise ValueError(f"at most {2 * (NET4.num_addresses - 3)} routes")
    routes: list[Route] = []
    for i in range(n):
        j = i // 2
        if i % 2 == 0:
            dst: ipaddress.IPv4Network | ipaddress.IPv6Network = ipaddress.IPv4Network(
                (0x0A000000 + (j << 8), 24)
            )
            routes.append(Route(dst, GW4 if one_gateway else NET4[j + 2]))
        else:
            dst = ipaddress.IPv6Network(((0xFD01 << 112) + (j << 64), 64))
            routes.append(Route(dst, GW6 if one_gateway else NET6[j + 2]))
    return routes


def setup(ns: str) -> None:
    for cmd in (
        "ip link add va type veth peer name vb",
        "ip link set va up",
        "ip link set vb up",
        f"ip addr add {NET4[1]}/{NET4.prefixlen} dev va",
        f"ip addr add {NET6[1]}/{NET6.prefixlen} dev va nodad",
    ):
        run_in(ns, cmd.split())


def flush(ns: str) -> None:
    for family in ("-4", "-6"):
        run_in(ns, ["ip", family, "route", "flush", "proto", str(PROTOCOL)])


def count(ns: str) -> int:
    total = 0
    for family in ("-4", "-6"):
        out = run_in(ns, ["ip", family, "route", "show", "proto", str(PROTOCOL)])
        total += sum(1 for line in out.splitlines() if line.strip())
    return total


def time_library(ns: str, routes: list[Route]) -> float:
    # timed with opening the socket in the namespace, as `ip -n NS -batch` does
    plan = Plan(add=tuple(routes))
    start = time.perf_counter()
    with NetlinkRouteTable(PROTOCOL, netns=ns) as table:
        outcomes = table.apply(plan)
    elapsed = time.perf_counter() - start
    bad = [o for o in outcomes if not o.ok]
    if bad:
        raise RuntimeError(f"{len(bad)} routes failed, e.g. {bad[0]}")
    return elapsed


def time_ip_batch(ns: str, routes: list[Route]) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".batch", delete=False) as f:
        for r in routes:
            f.write(f"route add {r.dst} via {r.gateway} proto {PROTOCOL}\n")
        path = f.name
    try:
        start = time.perf_counter()
        subprocess.run(["ip", "-n", ns, "-batch", path], check=True)
        return time.perf_counter() - start
    finally:
        os.unlink(path)


def time_ip_per_route(ns: str, routes: list[Route]) -> float:
    start = time.perf_counter()
    for r in routes:
        subprocess.run(
            [
                "ip",
                "-n",
                ns,
                "route",
                "replace",
                str(r.dst),
                "via",
                str(r.gateway),
                "proto",
                str(PROTOCOL),
            ],
            check=True,
        )
    return time.perf_counter() - start


def measure(
    n: int, *, repeat: int, per_process: int, one_gateway: bool = True
) -> dict[str, object]:
    """Median install times (seconds) of each method for ``n`` routes, a gateway per
    node (``median_seconds``, ``ratio_vs_ip_batch``); with ``one_gateway`` also for
    every route through one gateway per family (under ``one_gateway``)."""
    routes = make_routes(n)
    shared = make_routes(n, one_gateway=True)
    sample = routes[: min(n, per_process)]
    times: dict[str, list[float]] = {"library": [], "ip -batch": [], "ip per route": []}
    shared_times: dict[str, list[float]] = {"library": [], "ip -batch": []}
    with netns("bri") as ns:
        setup(ns)
        methods: list[tuple[dict[str, list[float]], str, Callable[[], float], int]] = [
            (times, "library", lambda: time_library(ns, routes), n),
            (times, "ip -batch", lambda: time_ip_batch(ns, routes), n),
        ]
        if one_gateway:
            methods += [
                (shared_times, "library", lambda: time_library(ns, shared), n),
                (shared_times, "ip -batch", lambda: time_ip_batch(ns, shared), n),
            ]
        if per_process > 0:
            methods.append(
                (times, "ip per route", lambda: time_ip_per_route(ns, sample), len(sample))
            )
        for rep in range(repeat):
            order = methods if rep % 2 == 0 else methods[::-1]
            for into, name, run, expected in order:
                flush(ns)
                elapsed = run()
                installed = count(ns)
                if installed != expected:
                    raise RuntimeError(f"{name}: {installed} routes installed, wanted {expected}")
                into[name].append(elapsed * n / expected)  # scaled to n for the sample
        flush(ns)
    medians = {k: statistics.median(v) for k, v in times.items() if v}
    out: dict[str, object] = {
        "routes": n,
        "repeat": repeat,
        "gateways": "one per node",
        "per_process_sample": len(sample) if per_process > 0 else 0,
        "median_seconds": medians,
        "all_seconds": {k: v for k, v in times.items() if v},
        "ratio_vs_ip_batch": {k: v / medians["ip -batch"] for k, v in medians.items()},
    }
    if one_gateway:
        shared_medians = {k: statistics.median(v) for k, v in shared_times.items()}
        out["one_gateway"] = {
            "median_seconds": shared_medians,
            "all_seconds": shared_times,
            "ratio_vs_ip_batch": {
                k: v / shared_medians["ip -batch"] for k, v in shared_medians.items()
            },
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--routes", type=int, action="append", help="default: 10000")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--per-process",
        type=int,
        default=300,
        help="time one `ip route replace` per route on at most this many routes, scaled to N"
        " (0: skip)",
    )
    parser.add_argument(
        "--no-one-gateway",
        dest="one_gateway",
        action="store_false",
        help="skip the secondary figure (every route through one gateway per family)",
    )
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    results = [
        measure(n, repeat=args.repeat, per_process=args.per_process, one_gateway=args.one_gateway)
        for n in (args.routes or [10000])
    ]
    print(
        f"{'routes':>7} {'gateways':<13} {'method':<14} {'median s':>9} {'us/route':>9}"
        f" {'vs ip -batch':>12}"
    )
    for res in results:
        n = int(str(res["routes"]))
        layouts: list[tuple[str, object]] = [("one per node", res)]
        if "one_gateway" in res:
            layouts.append(("one", res["one_gateway"]))
        for layout, figures in layouts:
            assert isinstance(figures, dict)
            medians, ratios = figures["median_seconds"], figures["ratio_vs_ip_batch"]
            for name, seconds in medians.items():
                note = " (scaled)" if name == "ip per route" else ""
                print(
                    f"{n:>7} {layout:<13} {name:<14} {seconds:>9.4f} {seconds / n * 1e6:>9.1f}"
                    f" {ratios[name]:>11.2f}x{note}"
                )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
