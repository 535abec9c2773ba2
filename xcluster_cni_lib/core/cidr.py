"""Node CIDR arithmetic in the "double-slash" notation.

``ADDRESS/CLUSTER_PREFIX/NODE_PREFIX`` splits the cluster range ``ADDRESS/CLUSTER_PREFIX``
into subnets of length ``NODE_PREFIX``; node number ``n`` gets the ``n``-th of them
(counting from 0)::

    node_cidr("192.168.0.0/22/25", 5)   -> 192.168.2.128/25
    node_cidr("fd00:1000::/96/112", 5)  -> fd00:1000::5:0/112
    node_cidr("fd00:1000::/48/64", 5)   -> fd00:1000:0:5::/64

Host bits of ADDRESS beyond CLUSTER_PREFIX are masked off, and an IPv4-mapped IPv6
range (``::ffff:10.0.0.0/104/120``) is the IPv4 range (``10.0.0.0/8/24``). Limits: IPv4
CLUSTER_PREFIX >= 8 and NODE_PREFIX <= 32; IPv6 CLUSTER_PREFIX >= 48 and NODE_PREFIX <= 128.
"""

from __future__ import annotations

import ipaddress
import re

from xcluster_cni_lib.core.errors import InputError
from xcluster_cni_lib.core.values import IPNetwork

_DECIMAL = re.compile(r"[0-9]+")
# (smallest cluster prefix, largest node prefix) per family
_LIMITS = {4: (8, 32), 6: (48, 128)}


def parse_node_number(text: str) -> int:
    """A node number: a non-negative decimal integer. Raises ``InputError``."""
    s = text.strip()
    if not _DECIMAL.fullmatch(s):
        raise InputError(f"node number {text!r} is not a non-negative decimal integer")
    return int(s)


def node_cidr(spec: str, number: int) -> IPNetwork:
    """The ``number``-th node subnet of a double-slash spec. Raises ``InputError``."""
    parts = spec.strip().split("/")
    if len(parts) != 3:
        raise InputError(
            f"{spec!r} is not ADDRESS/CLUSTER_PREFIX/NODE_PREFIX (e.g. 192.168.0.0/16/24)"
        )
    addr_text, first_text, second_text = parts
    try:
        if "%" in addr_text:  # a scope id ("fe80::1%eth0") is no range
            raise ValueError(addr_text)
        address = ipaddress.ip_address(addr_text)
    except ValueError:
        raise InputError(f"{spec!r}: malformed address {addr_text!r}") from None
    for text in (first_text, second_text):
        if not _DECIMAL.fullmatch(text):
            raise InputError(f"{spec!r}: prefix length {text!r} is not a decimal number")
    first, second = int(first_text), int(second_text)

    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        if first < 96:
            raise InputError(
                f"{spec!r}: an IPv4-mapped range needs a first prefix length of at least 96"
            )
        address, first, second = address.ipv4_mapped, first - 96, second - 96

    low, high = _LIMITS[address.version]
    family = f"IPv{address.version}"
    if first < low:
        raise InputError(f"{spec!r}: {family} first prefix length {first} is less than {low}")
    if second > high:
        raise InputError(f"{spec!r}: {family} second prefix length {second} is more than {high}")
    if first > second:
        raise InputError(
            f"{spec!r}: first prefix length {first} is larger than the second {second}"
        )
    if number < 0:
        raise InputError(f"node number {number} is negative")
    count = 1 << (second - first)
    if number >= count:
        raise InputError(
            f"node number {number} does not fit in {spec!r} ({count} node subnets: 0..{count - 1})"
        )
    cluster = ipaddress.ip_network(f"{address}/{first}", strict=False)
    start = cluster.network_address + (number << (address.max_prefixlen - second))
    return ipaddress.ip_network(f"{start}/{second}")
