"""Shared by the overlay tests: two "nodes" as namespaces on one underlay subnet, the
device and entries read back with ``ip``/``bridge``, and polling."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

from xcluster_cni_lib.core.overlay import Entries
from xcluster_cni_lib.core.values import IPAddress
from xcluster_cni_lib.testing.netns import netns, run_in

UNDERLAY4 = ("192.168.50.1", "192.168.50.2")
UNDERLAY6 = ("fd50::1", "fd50::2")
LOWER_MTU = 1480


@contextlib.contextmanager
def two_nodes() -> Iterator[tuple[str, str]]:
    """Namespaces A and B joined by a veth (``u0`` in each, MTU 1480) holding
    192.168.50.1/24 + fd50::1/64 (A) and .2 / ::2 (B)."""
    with netns("ova") as a, netns("ovb") as b:
        run_in(a, ["ip", "link", "add", "u0", "type", "veth", "peer", "name", "u0", "netns", b])
        for ns, i in ((a, 0), (b, 1)):
            run_in(ns, ["ip", "link", "set", "u0", "mtu", str(LOWER_MTU), "up"])
            run_in(ns, ["ip", "addr", "add", f"{UNDERLAY4[i]}/24", "dev", "u0"])
            run_in(ns, ["ip", "addr", "add", f"{UNDERLAY6[i]}/64", "dev", "u0", "nodad"])
        yield a, b


def link(ns: str, name: str) -> dict[str, Any] | None:
    out = run_in(ns, ["ip", "-d", "-j", "link", "show", "dev", name], check=False)
    if not out.strip():
        return None
    found: list[dict[str, Any]] = json.loads(out)
    return found[0] if found else None


def entries(ns: str, device: str) -> Entries:
    """The permanent neighbour entries and the FDB entries of ``device``, from iproute2."""
    neighbours: dict[IPAddress, str] = {}
    for fam in ("-4", "-6"):
        for e in json.loads(run_in(ns, ["ip", "-j", fam, "neigh", "show", "dev", device]) or "[]"):
            if "PERMANENT" in e.get("state", []):
                neighbours[ipaddress.ip_address(e["dst"])] = e["lladdr"]
    fdb: dict[str, IPAddress] = {}
    for e in json.loads(run_in(ns, ["bridge", "-j", "fdb", "show", "dev", device]) or "[]"):
        if "dst" in e:
            fdb.setdefault(e["mac"], ipaddress.ip_address(e["dst"]))
    return Entries(neighbours, fdb)


def same(a: Entries, b: Entries) -> bool:
    return dict(a.neighbours) == dict(b.neighbours) and dict(a.fdb) == dict(b.fdb)


def wait_for(cond: Callable[[], bool], timeout: float = 5.0, *, what: str = "") -> float:
    """Poll ``cond`` until true; the seconds it took. Fails after ``timeout``."""
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or cond}")
        time.sleep(0.005)
    return time.monotonic() - start
