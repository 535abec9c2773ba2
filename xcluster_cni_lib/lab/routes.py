"""The routes a node has (read from its kernel) and the routes it should have (computed
here independently of the daemon, so the lab is an oracle for it)."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from xcluster_cni_lib.core.addresses import parse_address, parse_cidr
from xcluster_cni_lib.core.values import Route
from xcluster_cni_lib.lab.nodes import LabNode, published
from xcluster_cni_lib.lab.shell import ip_batch, ip_json
from xcluster_cni_lib.lab.spec import LabError, NetworkSpec


def kernel_routes(ns: str, protocol: int) -> frozenset[Route]:
    """The routes of one protocol in a namespace's main table, both families (an
    on-link route carries its device: the overlay's)."""
    routes: set[Route] = set()
    for family in ("-4", "-6"):
        for entry in ip_json(
            ns, [family, "route", "show", "table", "main", "proto", str(protocol)]
        ):
            dst, gw = entry.get("dst"), entry.get("gateway")
            if isinstance(dst, str) and isinstance(gw, str) and dst != "default":
                if "/" not in dst:
                    dst += "/32" if family == "-4" else "/128"
                onlink = "onlink" in entry.get("flags", [])
                device = entry.get("dev") if onlink and isinstance(entry.get("dev"), str) else None
                routes.add(Route(dst=parse_cidr(dst), gateway=parse_address(gw), device=device))
    return frozenset(routes)


def overlay_device(net: NetworkSpec) -> str:
    """The vxlan device of a network's daemon (the daemon's default name)."""
    return f"xcvx{net.protocol}"


def expected_routes(nodes: Iterable[LabNode], me: str, net: NetworkSpec) -> frozenset[Route]:
    """For every present node but ``me``: one route per family from its published pod
    CIDR to its published address of the same family on ``net``. With the vxlan
    overlay, via the network address of that CIDR on the overlay device (when the node
    has an address of ``me``'s underlay family: IPv4 if ``me`` has one). On a routed
    network without the overlay: none (no other node's address is on-link)."""
    nodes = list(nodes)
    mine = next((n for n in nodes if n.name == me), None)
    underlay = 4
    if mine is not None and not any(a.version == 4 for a in published(mine, net)[1]):
        underlay = 6
    routes = set()
    for node in nodes:
        if node.name == me or not node.present:
            continue
        cidrs, addresses = published(node, net)
        for cidr in cidrs:
            if net.overlay == "vxlan":
                if any(a.version == underlay for a in addresses):
                    gateway = cidr.network_address
                    routes.add(Route(cidr, gateway, node=node.name, device=overlay_device(net)))
                continue
            if net.routed:
                continue
            gw = next((a for a in addresses if a.version == cidr.version), None)
            if gw is not None:
                routes.add(Route(dst=cidr, gateway=gw, node=node.name))
    return frozenset(routes)


# Routes of our own, in a documentation range, that tell when the monitor listens and
# when it has read everything up to the end of the block.
_START, _END = "198.51.100.254", "198.51.100.255"


def _mark(ns: str, address: str) -> None:
    ip_batch(ns, [f"route add {address}/32 dev lo proto 99", f"route del {address}/32 dev lo"])


@contextmanager
def route_events(ns: str, *, timeout: float = 5.0) -> Iterator[list[str]]:
    """Collect the kernel's route events in namespace ``ns`` (``ip monitor route``
    lines, e.g. ``Deleted 10.244.2.0/24 via 192.168.100.2 dev eth1 proto 202``) while the
    block runs. Starts only once the monitor listens and ends only once it has read every
    event of the block, so none is missed."""
    proc = subprocess.Popen(["ip", "-n", ns, "monitor", "route"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    stream = proc.stdout
    events: list[str] = []
    started, ended = threading.Event(), threading.Event()

    def read() -> None:
        for line in stream:
            if _START in line:
                started.set()
            elif _END in line:
                ended.set()
            elif started.is_set():
                events.append(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + timeout
        while not started.is_set():
            if time.monotonic() > deadline:
                raise LabError(f"ip monitor route in {ns} did not start within {timeout} s")
            _mark(ns, _START)
            started.wait(0.1)
        yield events
        _mark(ns, _END)
        ended.wait(timeout)
    finally:
        proc.terminate()
        proc.wait()
        reader.join(timeout)
