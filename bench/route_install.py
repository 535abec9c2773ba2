"""Route install benchmark: NetlinkRouteTable.apply vs ``ip -batch`` vs one ``ip`` per route.

In a throwaway network namespace with one reachable gateway per family, installs N routes
(half IPv4 /24, half IPv6 /64) into an empty main table, several times per method, the
methods interleaved so that machine noise hits them alike, and prints medians and ratios
against ``ip -batch``. One ``ip route replace`` process per route is timed on at most
``--per-process`` routes and scaled to N (it is far too slow to run at 10,000).

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
from xcluster_cni_lib.kernel.netlink import NetlinkRouteTable
from xcluster_cni_lib.testing.netns import netns, run_in

PROTOCOL = 202
GW4 = ipaddress.IPv4Address("192.168.77.2")
GW6 = ipaddress.IPv6Address("fd00:77::2")


def make_routes(n: int) -> list[Route]:
    """``n`` routes, IPv4 and IPv6 alternating, distinct destinations."""
    routes: list[Route] = []
    for i in range(n):
        j = i // 2
        if i % 2 == 0:
            dst: ipaddress.IPv4Network | ipaddress.IPv6Network = ipaddress.IPv4Network(
                (0x0A000000 + (j << 8), 24)
            )
            routes.append(Route(dst, GW4))
        else:
            dst = ipaddress.IPv6Network(((0xFD01 << 112) + (j << 64), 64))
            routes.append(Route(dst, GW6))
    return routes


def setup(ns: str) -> None:
    for cmd in (
        "ip link add va type veth peer name vb",
        "ip link set va up",
        "ip link set vb up",
        "ip addr add 192.168.77.1/24 dev va",
        "ip addr add fd00:77::1/64 dev va nodad",
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


def measure(n: int, *, repeat: int, per_process: int) -> dict[str, object]:
    """Median install times (seconds) of each method for ``n`` routes."""
    routes = make_routes(n)
    sample = routes[: min(n, per_process)]
    times: dict[str, list[float]] = {"library": [], "ip -batch": [], "ip per route": []}
    with netns("bri") as ns:
        setup(ns)
        methods: list[tuple[str, Callable[[], float], int]] = [
            ("library", lambda: time_library(ns, routes), n),
            ("ip -batch", lambda: time_ip_batch(ns, routes), n),
        ]
        if per_process > 0:
            methods.append(("ip per route", lambda: time_ip_per_route(ns, sample), len(sample)))
        for rep in range(repeat):
            order = methods if rep % 2 == 0 else methods[::-1]
            for name, run, expected in order:
                flush(ns)
                elapsed = run()
                installed = count(ns)
                if installed != expected:
                    raise RuntimeError(f"{name}: {installed} routes installed, wanted {expected}")
                times[name].append(elapsed * n / expected)  # scaled to n for the sample
        flush(ns)
    medians = {k: statistics.median(v) for k, v in times.items() if v}
    return {
        "routes": n,
        "repeat": repeat,
        "per_process_sample": len(sample) if per_process > 0 else 0,
        "median_seconds": medians,
        "all_seconds": {k: v for k, v in times.items() if v},
        "ratio_vs_ip_batch": {k: v / medians["ip -batch"] for k, v in medians.items()},
    }


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
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    results = [
        measure(n, repeat=args.repeat, per_process=args.per_process)
        for n in (args.routes or [10000])
    ]
    print(f"{'routes':>7} {'method':<14} {'median s':>9} {'us/route':>9} {'vs ip -batch':>12}")
    for res in results:
        n = int(str(res["routes"]))
        medians = res["median_seconds"]
        ratios = res["ratio_vs_ip_batch"]
        assert isinstance(medians, dict) and isinstance(ratios, dict)
        for name, seconds in medians.items():
            note = " (scaled)" if name == "ip per route" else ""
            print(
                f"{n:>7} {name:<14} {seconds:>9.4f} {seconds / n * 1e6:>9.1f}"
                f" {ratios[name]:>11.2f}x{note}"
            )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
