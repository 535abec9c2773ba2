"""Shared by the kernel tests: a namespace whose gateways are reachable, routes read back
with ``ip``, and a callback that counts its calls."""

from __future__ import annotations

import ipaddress
import json
import threading
from collections.abc import Sequence

from xcluster_cni_lib.core.values import Route, RouteOutcome
from xcluster_cni_lib.testing.netns import run_in

PROTO = 202
OTHER = 99
GW4 = ipaddress.IPv4Address("192.168.77.2")
GW4B = ipaddress.IPv4Address("192.168.77.3")
GW6 = ipaddress.IPv6Address("fd00:77::2")
GW6B = ipaddress.IPv6Address("fd00:77::3")
MTU = 1400


def route(dst: str, gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | str) -> Route:
    return Route(ipaddress.ip_network(dst), ipaddress.ip_address(gateway))


def add_gateways(netns: str) -> None:
    """A veth pair up in ``netns``: ``va`` holds 192.168.77.1/24 and fd00:77::1/64 and
    has MTU 1400, so GW4/GW6 (and the B variants) are reachable."""
    for cmd in (
        "ip link add va type veth peer name vb",
        f"ip link set va mtu {MTU} up",
        "ip link set vb up",
        "ip addr add 192.168.77.1/24 dev va",
        "ip addr add fd00:77::1/64 dev va nodad",
    ):
        run_in(netns, cmd.split())


def kernel_routes(ns: str, *, table: int = 254) -> list[dict[str, str]]:
    """Every route of ``table`` (both families) as ``ip -N -j`` prints it."""
    out: list[dict[str, str]] = []
    for family in ("-4", "-6"):
        text = run_in(ns, ["ip", "-N", "-j", family, "route", "show", "table", str(table)])
        out.extend(json.loads(text or "[]"))
    return out


def routes_of(ns: str, protocol: int, *, table: int = 254) -> set[Route]:
    """The routes of ``protocol`` in ``table`` as the ``ip`` command sees them."""
    return {
        route(r["dst"], r["gateway"])
        for r in kernel_routes(ns, table=table)
        if r.get("protocol") == str(protocol) and "gateway" in r
    }


def statuses(outcomes: Sequence[RouteOutcome]) -> list[tuple[str, str, str]]:
    return [(o.op, str(o.route.dst), o.status) for o in outcomes]


class Counter:
    """An ``on_change`` callback that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.event = threading.Event()

    def __call__(self) -> None:
        self.calls += 1
        self.event.set()

    def wait_for_call(self, timeout: float) -> bool:
        fired = self.event.wait(timeout)
        self.event.clear()
        return fired
