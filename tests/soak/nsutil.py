"""Network-namespace plumbing for the soak campaign: a thread pool whose threads live in
one namespace (sockets they open and processes they start belong to it), the campaign's
topology (a hub namespace with a bridge, node namespaces with an uplink into it) and
route dumps with ``ip``."""

from __future__ import annotations

import ctypes
import ipaddress
import json
import os
import subprocess
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from xcluster_cni_lib.testing.netns import add_netns, del_netns, run_in, unique_name
from xcluster_cni_lib.testing.nodes import default_internal_ips

_T = TypeVar("_T")
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

HUB_V4 = "192.168.255.254"
HUB_V6 = "fd00::ffff:fffe"
RouteKey = tuple[str, str]  # (canonical dst, canonical gateway)


def enter_netns(name: str) -> None:
    """Move the calling thread (only it) into namespace ``name``."""
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


class NetnsExecutor:
    """Run callables on threads that live in one network namespace."""

    def __init__(self, ns: str, workers: int = 4) -> None:
        self.ns = ns
        self._pool = ThreadPoolExecutor(
            max_workers=workers,
            thread_name_prefix=f"ns-{ns}",
            initializer=enter_netns,
            initargs=(ns,),
        )

    def call(self, fn: Callable[[], _T], timeout: float | None = 120.0) -> _T:
        return self._pool.submit(fn).result(timeout=timeout)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def canonical(dst: str, gateway: str) -> RouteKey:
    net = ipaddress.ip_network(dst, strict=False)
    gw = str(ipaddress.ip_address(gateway)) if gateway else ""
    return str(net), gw


def kernel_routes(ns: str, protocol: int | str) -> set[RouteKey]:
    """The main table's routes of one protocol, both families, as canonical keys."""
    out: set[RouteKey] = set()
    for family in ("-4", "-6"):
        text = run_in(ns, ["ip", "-j", family, "route", "show", "proto", str(protocol)])
        for r in json.loads(text or "[]"):
            dst = r.get("dst", "")
            if dst == "default":
                continue
            out.add(canonical(dst, r.get("gateway", "")))
    return out


def ip(ns: str, args: Sequence[str], *, check: bool = True) -> str:
    return run_in(ns, ["ip", *args], check=check)


class Topology:
    """A hub namespace holding a bridge (and the API server's address) and ``count``
    node namespaces, each with ``eth1`` on the bridge carrying the node's InternalIPs
    (``make_node`` index k) in 192.168.0.0/16 and fd00::/64, so every ``make_node``
    address is an on-link gateway in every node."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.hub = ""
        self.nodes: list[str] = []
        self._made: list[str] = []

    def build(self) -> Topology:
        self.hub = self._netns("sh")
        ip(self.hub, ["link", "add", "br0", "type", "bridge"])
        ip(self.hub, ["link", "set", "br0", "up"])
        ip(self.hub, ["addr", "add", f"{HUB_V4}/16", "dev", "br0"])
        ip(self.hub, ["addr", "add", f"{HUB_V6}/64", "dev", "br0", "nodad"])
        for k in range(self.count):
            node = self._netns("sn")
            self.nodes.append(node)
            port = f"p{k}"
            subprocess.run(
                [
                    "ip",
                    "link",
                    "add",
                    port,
                    "netns",
                    self.hub,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth1",
                    "netns",
                    node,
                ],
                check=True,
                capture_output=True,
            )
            ip(self.hub, ["link", "set", port, "master", "br0", "up"])
            ip(node, ["link", "set", "eth1", "up"])
            v4, v6 = default_internal_ips(k)
            ip(node, ["addr", "add", f"{v4}/16", "dev", "eth1"])
            ip(node, ["addr", "add", f"{v6}/64", "dev", "eth1", "nodad"])
        return self

    def _netns(self, prefix: str) -> str:
        name = unique_name(prefix)
        self._made.append(name)
        add_netns(name)
        return name

    def destroy(self) -> None:
        for name in reversed(self._made):
            del_netns(name)
        self._made.clear()
