"""Canonical forms of CIDRs and addresses.

An IPv4-mapped IPv6 value (``::ffff:20.0.0.0/120``, ``::ffff:192.168.1.1``) is IPv4;
IPv6 is printed canonically by ``ipaddress``; host bits of a CIDR are masked off.
"""

from __future__ import annotations

import ipaddress

from xcluster_cni_lib.core.values import IPAddress, IPNetwork

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def parse_address(text: str) -> IPAddress:
    """Parse one address (surrounding whitespace allowed) into its canonical form.

    Raises ValueError with the bad value in the message.
    """
    s = text.strip()
    if not s or "/" in s:
        raise ValueError(f"not an IP address: {text!r}")
    try:
        addr = ipaddress.ip_address(s)
    except ValueError:
        raise ValueError(f"not an IP address: {text!r}") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def parse_cidr(text: str) -> IPNetwork:
    """Parse one CIDR ``address/prefix`` into canonical form (host bits masked off).

    Raises ValueError with the bad value in the message.
    """
    s = text.strip()
    addr_text, sep, prefix_text = s.partition("/")
    if not sep or not prefix_text.isdecimal() or not addr_text:
        raise ValueError(f"not a CIDR: {text!r}")
    try:
        net = ipaddress.ip_network(f"{addr_text}/{int(prefix_text)}", strict=False)
    except ValueError:
        raise ValueError(f"not a CIDR: {text!r}") from None
    # inside ::ffff:0:0/96, the /96 itself included (0.0.0.0/0): IPv4, at every length
    if isinstance(net, ipaddress.IPv6Network) and net.subnet_of(_MAPPED):
        mapped = net.network_address.ipv4_mapped
        assert mapped is not None
        return ipaddress.IPv4Network(f"{mapped}/{net.prefixlen - 96}", strict=False)
    return net


def split_list(text: str) -> list[str]:
    """Split a comma-separated list, tolerating whitespace around items.

    An empty item (``"a,,b"``, a trailing comma, an empty string) is kept as ``""`` so
    that callers can report it.
    """
    return [item.strip() for item in text.split(",")]
