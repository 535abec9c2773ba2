"""How full host-local's ranges are, for STATUS (host-local's allocation rules: a range
runs from ``rangeStart`` (default: subnet + 1) to ``rangeEnd`` (default: the last address,
minus the broadcast address for IPv4), and the gateway (default: subnet + 1) is never
handed out)."""

from __future__ import annotations

import ipaddress

from xcluster_cni_lib.plugin import store
from xcluster_cni_lib.plugin.cache import RangeSet


def _bounds(r: dict[str, str]) -> tuple[int, int, int]:
    net = ipaddress.ip_network(r["subnet"])
    first = int(net.network_address)
    last = int(net.broadcast_address) - (1 if net.version == 4 else 0)
    start = int(ipaddress.ip_address(r["rangeStart"])) if "rangeStart" in r else first + 1
    end = int(ipaddress.ip_address(r["rangeEnd"])) if "rangeEnd" in r else last
    gateway = int(ipaddress.ip_address(r["gateway"])) if "gateway" in r else first + 1
    return start, end, gateway


def exhausted(network_dir: str, ranges: list[RangeSet]) -> list[str]:
    """The subnets (one per full range set) with no free address left."""
    used_by_family: dict[int, set[int]] = {4: set(), 6: set()}
    for address, _, _ in store.reservations(network_dir):
        ip = ipaddress.ip_address(address)
        used_by_family[ip.version].add(int(ip))
    full = []
    for family, rangeset in ranges:
        free = 0
        for r in rangeset:
            start, end, gateway = _bounds(r)
            size = max(0, end - start + 1) - (1 if start <= gateway <= end else 0)
            used = sum(1 for ip in used_by_family[family] if start <= ip <= end and ip != gateway)
            free += max(0, size - used)
        if free == 0:
            full.append(" ".join(r["subnet"] for r in rangeset))
    return full
