"""Helpers for the daemon's kernel tests: a namespace whose node addresses are reachable,
routes read back with ``ip``, daemons run in a thread against a namespace, polling."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from xcluster_cni_lib.core.ports import NodeSource
from xcluster_cni_lib.daemon.config import load_config
from xcluster_cni_lib.daemon.service import Daemon
from xcluster_cni_lib.testing.netns import run_in
from xcluster_cni_lib.testing.nodes import default_internal_ips, default_pod_cidrs

RouteSet = set[tuple[str, str]]  # (dst, gateway) as ip prints them


def add_gateways(ns: str) -> None:
    """A veth pair in ``ns`` whose addresses put every ``make_node`` InternalIP
    (192.168.0.0/16, fd00::/64) and the 172.20.0.0/16 test range on-link."""
    for cmd in (
        "ip link add gw0 type veth peer name gw1",
        "ip link set gw0 up",
        "ip link set gw1 up",
        "ip addr add 192.168.255.254/16 dev gw0",
        "ip addr add 172.20.255.254/16 dev gw0",
        "ip addr add fd00::ffff:fffe/64 dev gw0 nodad",
    ):
        run_in(ns, cmd.split())


def routes(ns: str, protocol: int | str) -> RouteSet:
    """Routes of one protocol in the main table, both families."""
    out: RouteSet = set()
    for family in ("-4", "-6"):
        text = run_in(ns, ["ip", "-j", family, "route", "show", "proto", str(protocol)])
        for r in json.loads(text or "[]"):
            out.add((r["dst"], r.get("gateway", "")))
    return out


def expected(indexes: Iterable[int]) -> RouteSet:
    """The routes to ``make_node`` nodes of these indexes, both families."""
    out: RouteSet = set()
    for i in indexes:
        for cidr, ip in zip(default_pod_cidrs(i), default_internal_ips(i), strict=True):
            out.add((cidr, ip))
    return out


def wait_for(
    cond: Callable[[], bool], timeout: float = 5.0, *, what: str = "", every: float = 0.002
) -> float:
    """Poll ``cond`` until true; the seconds it took. Fails after ``timeout``."""
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or cond}")
        time.sleep(every)
    return time.monotonic() - start


def wait_routes(ns: str, protocol: int, want: RouteSet, timeout: float = 5.0) -> float:
    """Wait until the protocol's routes are exactly ``want``; the seconds it took."""
    last: list[RouteSet] = [set()]

    def done() -> bool:
        last[0] = routes(ns, protocol)
        return last[0] == want

    try:
        return wait_for(done, timeout)
    except AssertionError:
        missing, extra = want - last[0], last[0] - want
        raise AssertionError(f"routes of {protocol}: missing {missing}, extra {extra}") from None


@contextmanager
def running_daemon(
    ns: str, source: NodeSource | None = None, /, **settings: str
) -> Iterator[Daemon]:
    """A daemon in a thread whose routes go to namespace ``ns`` (fed by ``source``, else
    by the one the settings ask for); stopped on exit."""
    config = load_config(settings, rt_protos={})
    daemon = Daemon(config, netns=ns, source=source, machine_id="no-such-machine")
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def http_get(daemon: Daemon, path: str) -> tuple[int, str]:
    assert daemon.http is not None
    host, port = daemon.http.address
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(text: str, name: str) -> float:
    """The value of one sample line (``name`` including labels) in Prometheus text."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no metric {name}")


def with_address(node: dict[str, Any], v4: str, v6: str) -> dict[str, Any]:
    node["status"]["addresses"] = [
        {"type": "InternalIP", "address": v4},
        {"type": "InternalIP", "address": v6},
    ]
    return node
